-- kmsg-webhook schema, SQLite: the reviewed source of truth (schema version 6).
--
-- The same tables the numbered migrations in src/kmsg_webhook/sql/migrations/sqlite/ build;
-- a test applies both to empty databases and compares the results. Apply this file yourself
-- (sqlite3 app.db < schema.sqlite.sql) when you manage DDL with your own tooling, then open
-- stores with initialize_schema=False; otherwise the store (or `kmsg-webhook migrate`) applies
-- the migrations. Timestamps are INTEGER epoch milliseconds (UTC, as in the original D1
-- adapter), nested values JSON text.
--
-- Names are the defaults. kmsg_webhook.sql.schema_sql("sqlite", endpoint_table=...,
-- delivery_table=...) renders this file for other names.

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
    client_key            TEXT,
    ordered               INTEGER NOT NULL DEFAULT 0
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
    lease_expires_at INTEGER,
    to_hash          TEXT,
    from_hash        TEXT,
    ordering_key     TEXT
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
-- Field crypto lookups by keyed recipient / sender hash (docs/field-crypto.md); NULL otherwise.
CREATE INDEX idx_kmsg_webhook_deliveries_to_hash
    ON kmsg_webhook_deliveries (to_hash) WHERE to_hash IS NOT NULL;
CREATE INDEX idx_kmsg_webhook_deliveries_from_hash
    ON kmsg_webhook_deliveries (from_hash) WHERE from_hash IS NOT NULL;
-- The console's overview and endpoint health: deliveries finished since a time, by minute,
-- outcome and endpoint, with their last-attempt latency, read from the index alone.
CREATE INDEX idx_kmsg_webhook_deliveries_completed_at
    ON kmsg_webhook_deliveries (completed_at, status, endpoint_id, last_latency_ms)
    WHERE completed_at IS NOT NULL;
-- Ordered delivery: pending rows of ordered endpoints by key, in rowid (store) order; empty
-- without ordered endpoints.
CREATE INDEX idx_kmsg_webhook_deliveries_ordering
    ON kmsg_webhook_deliveries (endpoint_id, ordering_key)
    WHERE status = 'pending' AND ordering_key IS NOT NULL;

-- The version rows a fresh database gets (scope: "<endpoint table>,<delivery table>").
INSERT INTO kmsg_webhook_schema_version (scope, version, description)
VALUES ('kmsg_webhook_endpoints,kmsg_webhook_deliveries', 1, 'initial'),
       ('kmsg_webhook_endpoints,kmsg_webhook_deliveries', 2, 'lookup_hashes'),
       ('kmsg_webhook_endpoints,kmsg_webhook_deliveries', 3, 'client_certificates'),
       ('kmsg_webhook_endpoints,kmsg_webhook_deliveries', 4, 'finished_index'),
       ('kmsg_webhook_endpoints,kmsg_webhook_deliveries', 5, 'endpoint_verification'),
       ('kmsg_webhook_endpoints,kmsg_webhook_deliveries', 6, 'ordered_delivery');
