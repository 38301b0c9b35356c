-- 0004 finished index: deliveries by completion time (PostgreSQL).
--
-- Finished rows only (completed_at is NULL while pending), so claiming and retrying
-- pending rows never touch it; a row enters it once, when it finishes.

-- The console's overview and endpoint health: deliveries finished since a time, by minute,
-- outcome and endpoint, with their last-attempt latency, read from the index alone.
CREATE INDEX idx_kmsg_webhook_deliveries_completed_at
    ON kmsg_webhook_deliveries (completed_at, status, endpoint_id, last_latency_ms)
    WHERE completed_at IS NOT NULL;
