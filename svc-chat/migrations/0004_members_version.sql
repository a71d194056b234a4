-- A send batch may build its events from what svc-chat remembers of a conversation (its last
-- seq, its members) and commit in one round trip, if that is still true: the batch's write
-- checks `last_seq` and `members_version` under the row lock and fails as a whole otherwise.
-- Every membership change bumps the version.
ALTER TABLE conversations ADD COLUMN members_version BIGINT NOT NULL DEFAULT 0;

-- Fails the statement (and so its transaction) unless `ok`.
CREATE FUNCTION expect_remembered(ok boolean) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT ok THEN
        RAISE EXCEPTION 'a remembered conversation changed' USING ERRCODE = 'TC001';
    END IF;
    RETURN ok;
END
$$;
