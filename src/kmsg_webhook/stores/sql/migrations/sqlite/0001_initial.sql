-- 0001 initial: endpoints, the delivery outbox and the schema-version table (SQLite).
--
-- Timestamps are INTEGER epoch milliseconds (UTC), as in the original D1 adapter; nested values
-- are JSON text. Table and index names are the defaults; the migration runner substitutes
-- configured names (validated and quoted) for every kmsg_webhook_* identifier.
-- The version table is shared by every table pair of a schema (rows keyed by scope), so it
-- may exist already.

CREATE TABLE IF NOT EXISTS kmsg_webhook_schema_version (
    scope       TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    description TEXT    NOT NULL,
    applied_at  INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    PRIMARY KEY (scope, version)
);

CREATE TABLE kmsg_webhook_endpoints (
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

CREATE UNIQUE INDEX idx_kmsg_webhook_endpoints_url ON kmsg_webhook_endpoints (url);

CREATE TABLE kmsg_webhook_deliveries (
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
CREATE UNIQUE INDEX idx_kmsg_webhook_deliveries_endpoint_event
    ON kmsg_webhook_deliveries (endpoint_id, event_id);
-- The claim query: due pending rows, oldest due first.
CREATE INDEX idx_kmsg_webhook_deliveries_due
    ON kmsg_webhook_deliveries (next_attempt_at, id) WHERE status = 'pending';
-- Listings, newest first, overall and per endpoint / status / event type; purge by age.
CREATE INDEX idx_kmsg_webhook_deliveries_created_at
    ON kmsg_webhook_deliveries (created_at DESC, id DESC);
CREATE INDEX idx_kmsg_webhook_deliveries_endpoint_id
    ON kmsg_webhook_deliveries (endpoint_id, created_at DESC, id DESC);
CREATE INDEX idx_kmsg_webhook_deliveries_status
    ON kmsg_webhook_deliveries (status, created_at DESC, id DESC);
CREATE INDEX idx_kmsg_webhook_deliveries_event_type
    ON kmsg_webhook_deliveries (event_type, created_at DESC, id DESC);
