-- 0006 ordered delivery: endpoints that receive one ordering key's deliveries in order, and
-- what the claim needs to keep that order (PostgreSQL).
--
-- A delivery to an ordered endpoint carries its event's ordering_key and a place in the store
-- order (ordering_seq, drawn from a sequence when the row is inserted). The claim skips a row
-- while an earlier one of the same endpoint and key is pending; the partial index holds only
-- such pending ordered rows, so without ordered endpoints it stays empty and costs nothing.
-- Both new delivery columns are NULL for every other row; adding them rewrites nothing.

ALTER TABLE kmsg_webhook_endpoints ADD COLUMN ordered boolean NOT NULL DEFAULT false;
ALTER TABLE kmsg_webhook_deliveries ADD COLUMN ordering_key text;
ALTER TABLE kmsg_webhook_deliveries ADD COLUMN ordering_seq bigint;

CREATE SEQUENCE kmsg_webhook_deliveries_ordering_seq
    OWNED BY kmsg_webhook_deliveries.ordering_seq;

CREATE INDEX idx_kmsg_webhook_deliveries_ordering
    ON kmsg_webhook_deliveries (endpoint_id, ordering_key, ordering_seq)
    WHERE status = 'pending' AND ordering_key IS NOT NULL;
