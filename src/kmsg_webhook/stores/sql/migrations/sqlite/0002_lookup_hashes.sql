-- 0002 lookup hashes: keyed hashes of the payload's recipient and sender numbers (SQLite).
--
-- Field crypto (docs/field-crypto.md) stores HMAC-SHA256 hashes of the normalised `to` and
-- `from` numbers of a delivery's payload, so deliveries can be listed by recipient without
-- decrypting any payload. NULL when field crypto does not hash (or the payload has no number);
-- the partial indexes stay empty then.

ALTER TABLE kmsg_webhook_deliveries ADD COLUMN to_hash TEXT;
ALTER TABLE kmsg_webhook_deliveries ADD COLUMN from_hash TEXT;

CREATE INDEX idx_kmsg_webhook_deliveries_to_hash
    ON kmsg_webhook_deliveries (to_hash) WHERE to_hash IS NOT NULL;
CREATE INDEX idx_kmsg_webhook_deliveries_from_hash
    ON kmsg_webhook_deliveries (from_hash) WHERE from_hash IS NOT NULL;
