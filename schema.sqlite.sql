-- kmsg-webhook schema, sqlite, version 9: migrations 0001 to 0009, then their version rows.

-- 0001 initial: endpoints, the delivery outbox and the schema-version table (SQLite).
--
-- Timestamps are INTEGER epoch milliseconds (UTC), as in the original D1 adapter; nested values
-- are JSON text. Table and index names are the defaults; the migration runner substitutes
-- configured names (validated and quoted) for every kmsg_webhook_* identifier.
-- The version table is shared by every table pair of a schema (rows keyed by scope), so it
-- may exist already.

CREATE TABLE IF NOT EXISTS "kmsg_webhook_schema_version" (
    scope       TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    description TEXT    NOT NULL,
    applied_at  INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    PRIMARY KEY (scope, version)
);

CREATE TABLE "kmsg_webhook_endpoints" (
    id                    TEXT    NOT NULL PRIMARY KEY,
    url                   TEXT    NOT NULL,
    name                  TEXT,
    description           TEXT,
    status                TEXT    NOT NULL
        CHECK (status IN ('active', 'inactive', 'error', 'suspended')),
    events_json           TEXT    NOT NULL,
    headers_json          TEXT    NOT NULL DEFAULT '{}',
    secret                TEXT,
    previous_secrets_json TEXT    NOT NULL DEFAULT '[]',
    retry_config_json     TEXT,
    filters_json          TEXT,
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL,
    last_triggered_at     INTEGER,
    disabled_reason       TEXT,
    consecutive_failures  INTEGER NOT NULL DEFAULT 0,
    failing_since         INTEGER,
    last_success_at       INTEGER
);

CREATE UNIQUE INDEX "idx_kmsg_webhook_endpoints_url" ON "kmsg_webhook_endpoints" (url);

CREATE TABLE "kmsg_webhook_deliveries" (
    id               TEXT    NOT NULL PRIMARY KEY,
    endpoint_id      TEXT    NOT NULL,
    event_id         TEXT    NOT NULL,
    event_type       TEXT    NOT NULL,
    url              TEXT    NOT NULL,
    payload          TEXT    NOT NULL,
    status           TEXT    NOT NULL
        CHECK (status IN ('pending', 'success', 'failed', 'exhausted')),
    attempts_json    TEXT    NOT NULL DEFAULT '[]',
    attempt_count    INTEGER NOT NULL DEFAULT 0,
    last_latency_ms  REAL,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    next_attempt_at  INTEGER,
    completed_at     INTEGER,
    lease_owner      TEXT,
    lease_expires_at INTEGER
);

-- One delivery per (endpoint, event): re-emitting an event is a no-op.
CREATE UNIQUE INDEX "idx_kmsg_webhook_deliveries_endpoint_event"
    ON "kmsg_webhook_deliveries" (endpoint_id, event_id);
-- The claim query: due pending rows, oldest due first.
CREATE INDEX "idx_kmsg_webhook_deliveries_due"
    ON "kmsg_webhook_deliveries" (next_attempt_at, id) WHERE status = 'pending';
-- Listings, newest first, overall and per endpoint / status / event type; purge by age.
CREATE INDEX "idx_kmsg_webhook_deliveries_created_at"
    ON "kmsg_webhook_deliveries" (created_at DESC, id DESC);
CREATE INDEX "idx_kmsg_webhook_deliveries_endpoint_id"
    ON "kmsg_webhook_deliveries" (endpoint_id, created_at DESC, id DESC);
CREATE INDEX "idx_kmsg_webhook_deliveries_status"
    ON "kmsg_webhook_deliveries" (status, created_at DESC, id DESC);
CREATE INDEX "idx_kmsg_webhook_deliveries_event_type"
    ON "kmsg_webhook_deliveries" (event_type, created_at DESC, id DESC);

-- 0002 lookup hashes: keyed hashes of the payload's recipient and sender numbers (SQLite).
--
-- Field crypto (docs/field-crypto.md) stores HMAC-SHA256 hashes of the normalised `to` and
-- `from` numbers of a delivery's payload, so deliveries can be listed by recipient without
-- decrypting any payload. NULL when field crypto does not hash (or the payload has no number);
-- the partial indexes stay empty then.

ALTER TABLE "kmsg_webhook_deliveries" ADD COLUMN to_hash TEXT;
ALTER TABLE "kmsg_webhook_deliveries" ADD COLUMN from_hash TEXT;

CREATE INDEX "idx_kmsg_webhook_deliveries_to_hash"
    ON "kmsg_webhook_deliveries" (to_hash) WHERE to_hash IS NOT NULL;
CREATE INDEX "idx_kmsg_webhook_deliveries_from_hash"
    ON "kmsg_webhook_deliveries" (from_hash) WHERE from_hash IS NOT NULL;

-- 0003 client certificates: a certificate and key an endpoint presents over https (SQLite).
--
-- For receivers that require mutual TLS. Both PEM text, both NULL when unused; the key is
-- sealed like the signing secrets when field crypto encrypts them (docs/field-crypto.md).

ALTER TABLE "kmsg_webhook_endpoints" ADD COLUMN client_cert TEXT;
ALTER TABLE "kmsg_webhook_endpoints" ADD COLUMN client_key TEXT;

-- 0004 finished index: deliveries by completion time (SQLite).
--
-- Finished rows only (completed_at is NULL while pending), so claiming and retrying
-- pending rows never touch it; a row enters it once, when it finishes.

-- The console's overview and endpoint health: deliveries finished since a time, by minute,
-- outcome and endpoint, with their last-attempt latency, read from the index alone.
CREATE INDEX "idx_kmsg_webhook_deliveries_completed_at"
    ON "kmsg_webhook_deliveries" (completed_at, status, endpoint_id, last_latency_ms)
    WHERE completed_at IS NOT NULL;

-- 0005 endpoint verification: an endpoint may wait for its receiver to answer a challenge
-- (status 'pending_verification'; it receives nothing until then) (SQLite).
--
-- SQLite cannot change a CHECK constraint in place: the endpoint table is rebuilt with the
-- same columns in the same order, its rows copied, and its index made again.

CREATE TABLE "kmsg_webhook_endpoints_rebuild" (
    id                    TEXT    NOT NULL PRIMARY KEY,
    url                   TEXT    NOT NULL,
    name                  TEXT,
    description           TEXT,
    status                TEXT    NOT NULL
        CHECK (status IN ('active', 'inactive', 'error', 'suspended', 'pending_verification')),
    events_json           TEXT    NOT NULL,
    headers_json          TEXT    NOT NULL DEFAULT '{}',
    secret                TEXT,
    previous_secrets_json TEXT    NOT NULL DEFAULT '[]',
    retry_config_json     TEXT,
    filters_json          TEXT,
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL,
    last_triggered_at     INTEGER,
    disabled_reason       TEXT,
    consecutive_failures  INTEGER NOT NULL DEFAULT 0,
    failing_since         INTEGER,
    last_success_at       INTEGER,
    client_cert           TEXT,
    client_key            TEXT
);

INSERT INTO "kmsg_webhook_endpoints_rebuild" SELECT * FROM "kmsg_webhook_endpoints";
DROP TABLE "kmsg_webhook_endpoints";
ALTER TABLE "kmsg_webhook_endpoints_rebuild" RENAME TO "kmsg_webhook_endpoints";

CREATE UNIQUE INDEX "idx_kmsg_webhook_endpoints_url" ON "kmsg_webhook_endpoints" (url);

-- 0006 ordered delivery: endpoints that receive one ordering key's deliveries in order, and
-- what the claim needs to keep that order (SQLite).
--
-- A delivery to an ordered endpoint carries its event's ordering_key; its place in the store
-- order is its rowid (SQLite gives each inserted row a larger one than any present, and VACUUM
-- keeps their order). The claim skips a row while an earlier one of the same endpoint and key
-- is pending; the partial index (rowid is its last column) holds only such pending ordered
-- rows, so without ordered endpoints it stays empty and costs nothing.

ALTER TABLE "kmsg_webhook_endpoints" ADD COLUMN ordered INTEGER NOT NULL DEFAULT 0;
ALTER TABLE "kmsg_webhook_deliveries" ADD COLUMN ordering_key TEXT;

CREATE INDEX "idx_kmsg_webhook_deliveries_ordering"
    ON "kmsg_webhook_deliveries" (endpoint_id, ordering_key)
    WHERE status = 'pending' AND ordering_key IS NOT NULL;

-- 0007 message tracking: delivery-status tracking of sent messages (SQLite).
--
-- One row per message the messaging module sent: the reconciler claims due checks under a
-- lease, polls the vendor and records the status; fallback_status 'attempting' marks an
-- ALIMTALK -> SMS fallback in flight. With field crypto on, recipient, sender, custom_fields
-- and failover (which holds the fallback text) are sealed envelopes and recipient_hash is the
-- keyed lookup hash. Timestamps are INTEGER epoch milliseconds.
-- One tracking table per database (or Postgres schema), shared by every table pair in it, so
-- it may exist already.

CREATE TABLE IF NOT EXISTS "kmsg_webhook_message_tracking" (
    message_id              TEXT NOT NULL PRIMARY KEY,
    provider_id             TEXT NOT NULL,
    provider_message_id     TEXT,
    type                    TEXT NOT NULL,
    recipient               TEXT NOT NULL,
    recipient_hash          TEXT,
    sender                  TEXT,
    status                  TEXT NOT NULL
        CHECK (status IN ('PENDING', 'SENT', 'DELIVERED', 'FAILED', 'CANCELLED', 'UNKNOWN')),
    requested_at            INTEGER NOT NULL,
    status_updated_at       INTEGER NOT NULL,
    next_check_at           INTEGER NOT NULL,
    scheduled_at            INTEGER,
    attempt_count           INTEGER NOT NULL DEFAULT 0,
    last_checked_at         INTEGER,
    sent_at                 INTEGER,
    delivered_at            INTEGER,
    failed_at               INTEGER,
    provider_status_code    TEXT,
    provider_status_message TEXT,
    last_error_code         TEXT,
    last_error_message      TEXT,
    template_id             TEXT,
    correlation_id          TEXT,
    custom_fields           TEXT,
    failover                TEXT,
    fallback_status         TEXT,
    lease_owner             TEXT,
    lease_expires_at        INTEGER
);

-- The reconciler's claim: checks still to make, earliest due first.
CREATE INDEX IF NOT EXISTS idx_kmsg_webhook_message_tracking_due
    ON "kmsg_webhook_message_tracking" (next_check_at, message_id)
    WHERE status IN ('PENDING', 'SENT');
-- Fallbacks whose sender may have died mid-send (claimed again once the lease expires).
CREATE INDEX IF NOT EXISTS idx_kmsg_webhook_message_tracking_fallback
    ON "kmsg_webhook_message_tracking" (message_id) WHERE fallback_status = 'attempting';
-- Listings and retention by age; lookups by the vendor's id and by recipient hash.
CREATE INDEX IF NOT EXISTS idx_kmsg_webhook_message_tracking_requested_at
    ON "kmsg_webhook_message_tracking" (requested_at);
CREATE INDEX IF NOT EXISTS idx_kmsg_webhook_message_tracking_provider_message
    ON "kmsg_webhook_message_tracking" (provider_id, provider_message_id);
CREATE INDEX IF NOT EXISTS idx_kmsg_webhook_message_tracking_recipient_hash
    ON "kmsg_webhook_message_tracking" (recipient_hash) WHERE recipient_hash IS NOT NULL;

-- 0008 message jobs: the durable queue of scheduled and bulk sends (SQLite).
--
-- One row per message, stored before anything is sent (id = the message id, so a message is
-- queued once); workers claim due rows under a lease, send, and record the result. options is
-- the typed send options as JSON text, a sealed envelope with field crypto on (it holds the
-- recipient and the text). Timestamps are INTEGER epoch milliseconds. One table per database (or Postgres
-- schema), shared by every table pair in it, so it may exist already.

CREATE TABLE IF NOT EXISTS "kmsg_webhook_message_jobs" (
    id                  TEXT NOT NULL PRIMARY KEY,
    batch_id            TEXT,
    options             TEXT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    run_at              INTEGER NOT NULL,
    created_at          INTEGER NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    lease_owner         TEXT,
    lease_expires_at    INTEGER,
    provider_id         TEXT,
    provider_message_id TEXT,
    error_code          TEXT,
    error_message       TEXT,
    completed_at        INTEGER
);

-- The claim: pending jobs due, earliest first.
CREATE INDEX IF NOT EXISTS idx_kmsg_webhook_message_jobs_due
    ON "kmsg_webhook_message_jobs" (run_at, id) WHERE status = 'pending';
-- A bulk send's jobs.
CREATE INDEX IF NOT EXISTS idx_kmsg_webhook_message_jobs_batch
    ON "kmsg_webhook_message_jobs" (batch_id) WHERE batch_id IS NOT NULL;

-- 0009 endpoint due index: each endpoint's pending rows, oldest due first (SQLite).
--
-- A claim that leaves saturated endpoints alone reads the due rows of every other endpoint
-- through this index (a few of each, earliest first) instead of walking the due index past
-- the rows it must leave, so its cost does not grow with their backlog.

CREATE INDEX "idx_kmsg_webhook_deliveries_endpoint_due"
    ON "kmsg_webhook_deliveries" (endpoint_id, next_attempt_at, id) WHERE status = 'pending';

INSERT INTO "kmsg_webhook_schema_version" (scope, version, description)
VALUES ('kmsg_webhook_endpoints,kmsg_webhook_deliveries', 1, 'initial'),
       ('kmsg_webhook_endpoints,kmsg_webhook_deliveries', 2, 'lookup_hashes'),
       ('kmsg_webhook_endpoints,kmsg_webhook_deliveries', 3, 'client_certificates'),
       ('kmsg_webhook_endpoints,kmsg_webhook_deliveries', 4, 'finished_index'),
       ('kmsg_webhook_endpoints,kmsg_webhook_deliveries', 5, 'endpoint_verification'),
       ('kmsg_webhook_endpoints,kmsg_webhook_deliveries', 6, 'ordered_delivery'),
       ('kmsg_webhook_endpoints,kmsg_webhook_deliveries', 7, 'message_tracking'),
       ('kmsg_webhook_endpoints,kmsg_webhook_deliveries', 8, 'message_jobs'),
       ('kmsg_webhook_endpoints,kmsg_webhook_deliveries', 9, 'endpoint_due');
