-- Users, contacts, refresh-token families, signing keys and login throttling.

CREATE TABLE users (
    user_id       UUID PRIMARY KEY,
    -- "C" collation: a plain btree index then serves prefix LIKE searches.
    username      TEXT COLLATE "C" NOT NULL UNIQUE,
    display_name  TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE contacts (
    owner_id   UUID NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    contact_id UUID NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (owner_id, contact_id)
);

-- A family is one login: every refresh token rotated from it belongs to it, and presenting
-- a spent one revokes the whole family.
CREATE TABLE token_families (
    family_id  UUID PRIMARY KEY,
    user_id    UUID NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at TIMESTAMPTZ
);

CREATE TABLE refresh_tokens (
    -- SHA-256 of the token: a database leak does not leak usable tokens.
    token_hash BYTEA PRIMARY KEY,
    family_id  UUID NOT NULL REFERENCES token_families (family_id) ON DELETE CASCADE,
    issued_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL,
    spent_at   TIMESTAMPTZ
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    -- PKCS#8 DER of the Ed25519 private key.
    private_der BYTEA NOT NULL,
    public_raw  BYTEA NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Retired keys stay published until every token they signed has expired.
    retired_at  TIMESTAMPTZ
);

-- Fixed-window counters of login attempts, shared by every svc-auth instance.
CREATE TABLE login_throttle (
    throttle_key TEXT PRIMARY KEY,
    window_start TIMESTAMPTZ NOT NULL,
    attempts     INTEGER NOT NULL
);
