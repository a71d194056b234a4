-- Conversations, members, messages and the transactional outbox.

CREATE TABLE conversations (
    conversation_id  UUID PRIMARY KEY,
    kind             TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    title            TEXT NOT NULL DEFAULT '',
    creator_id       UUID NOT NULL,
    -- "<smaller id>:<larger id>" for direct conversations, so a pair has exactly one.
    direct_key       TEXT UNIQUE,
    -- The seq of the newest message; the row lock on it serialises sends per conversation,
    -- which is what makes seq gap-free.
    last_seq         BIGINT NOT NULL DEFAULT 0,
    last_activity_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE members (
    conversation_id UUID NOT NULL REFERENCES conversations (conversation_id) ON DELETE CASCADE,
    user_id         UUID NOT NULL,
    -- Read position: never moves backwards.
    read_seq        BIGINT NOT NULL DEFAULT 0,
    joined_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX members_by_user ON members (user_id);

CREATE TABLE messages (
    conversation_id UUID NOT NULL REFERENCES conversations (conversation_id) ON DELETE CASCADE,
    seq             BIGINT NOT NULL,
    message_id      UUID NOT NULL UNIQUE,
    sender_id       UUID NOT NULL,
    client_msg_id   TEXT NOT NULL,
    text            TEXT NOT NULL,
    sent_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    edited_at       TIMESTAMPTZ,
    deleted         BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (conversation_id, seq),
    -- Idempotent sends: a retried client_msg_id finds the first message.
    UNIQUE (conversation_id, sender_id, client_msg_id)
);

-- Events committed with the change they describe; the relay publishes them to JetStream and
-- marks them only after the publish is acknowledged.
CREATE TABLE outbox (
    event_id     UUID PRIMARY KEY,
    -- Subject without the deployment namespace, e.g. chat.v1.conv.<id>.message.
    subject      TEXT NOT NULL,
    payload      BYTEA NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ
);
CREATE INDEX outbox_pending ON outbox (created_at, event_id) WHERE published_at IS NULL;
