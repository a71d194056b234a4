-- v2 content: a message is text or a reference to a catalog video (then `text` is empty).
ALTER TABLE messages ADD COLUMN video_id UUID;

-- v2 reactions: one row per (message, emoji, user); the order of `reacted_at` is the order
-- in which users appear under an emoji.
CREATE TABLE reactions (
    message_id  UUID NOT NULL REFERENCES messages (message_id) ON DELETE CASCADE,
    emoji       TEXT NOT NULL,
    user_id     UUID NOT NULL,
    reacted_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (message_id, emoji, user_id)
);
