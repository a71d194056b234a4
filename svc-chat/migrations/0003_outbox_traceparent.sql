-- The W3C traceparent of the call that committed the event, so the relay's publish joins
-- the sender's trace (NULL when traces are not exported).
ALTER TABLE outbox ADD COLUMN traceparent TEXT;
