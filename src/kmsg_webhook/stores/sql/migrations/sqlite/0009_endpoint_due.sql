-- 0009 endpoint due index: each endpoint's pending rows, oldest due first (SQLite).
--
-- A claim that leaves saturated endpoints alone reads the due rows of every other endpoint
-- through this index (a few of each, earliest first) instead of walking the due index past
-- the rows it must leave, so its cost does not grow with their backlog.

CREATE INDEX idx_kmsg_webhook_deliveries_endpoint_due
    ON kmsg_webhook_deliveries (endpoint_id, next_attempt_at, id) WHERE status = 'pending';
