-- The relay a row was handed to in memory by the send that wrote it (NULL: none; a claim
-- publishes it). Other instances' claims leave such a row to that relay unless it is old,
-- so one conversation's events are published by one relay, in order, and marked once.
ALTER TABLE outbox ADD COLUMN relay UUID;
