-- 0006 ordered delivery: endpoints that receive one ordering key's deliveries in order, and
-- what the claim needs to keep that order (SQLite).
--
-- A delivery to an ordered endpoint carries its event's ordering_key; its place in the store
-- order is its rowid (SQLite gives each inserted row a larger one than any present, and VACUUM
-- keeps their order). The claim skips a row while an earlier one of the same endpoint and key
-- is pending; the partial index (rowid is its last column) holds only such pending ordered
-- rows, so without ordered endpoints it stays empty and costs nothing.

ALTER TABLE kmsg_webhook_endpoints ADD COLUMN ordered INTEGER NOT NULL DEFAULT 0;
ALTER TABLE kmsg_webhook_deliveries ADD COLUMN ordering_key TEXT;

CREATE INDEX idx_kmsg_webhook_deliveries_ordering
    ON kmsg_webhook_deliveries (endpoint_id, ordering_key)
    WHERE status = 'pending' AND ordering_key IS NOT NULL;
