-- kmsg-webhook schema, PostgreSQL: the reviewed source of truth (schema version 6).
--
-- The same tables the numbered migrations in src/kmsg_webhook/stores/sql/migrations/postgresql/ build;
-- a test applies both to empty databases and compares the results. Apply this file yourself
-- (psql -f schema.sql) when you manage DDL with your own tooling, then open stores with
-- initialize_schema=False; otherwise the store (or `kmsg-webhook migrate`) applies the
-- migrations. Timestamps are timestamptz, nested values jsonb.
--
-- Names are the defaults. kmsg_webhook.stores.sql.schema_sql("postgresql", endpoint_table=...,
-- delivery_table=..., schema=...) renders this file for other names.

CREATE TABLE IF NOT EXISTS kmsg_webhook_schema_version (
    scope       text        NOT NULL,
    version     integer     NOT NULL,
    description text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, version)
);

CREATE TABLE kmsg_webhook_endpoints (
    id                    text        NOT NULL PRIMARY KEY,
    url                   text        NOT NULL,
    name                  text,
    description           text,
    status                text        NOT NULL
        CHECK (status IN ('active', 'inactive', 'error', 'suspended', 'pending_verification')),
    events_json           jsonb       NOT NULL,
    headers_json          jsonb       NOT NULL DEFAULT '{}',
    secret                text,
    previous_secrets_json jsonb       NOT NULL DEFAULT '[]',
    retry_config_json     jsonb,
    filters_json          jsonb,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    last_triggered_at     timestamptz,
    disabled_reason       text,
    consecutive_failures  integer     NOT NULL DEFAULT 0,
    failing_since         timestamptz,
    last_success_at       timestamptz,
    client_cert           text,
    client_key            text,
    ordered               boolean     NOT NULL DEFAULT false
);

CREATE UNIQUE INDEX idx_kmsg_webhook_endpoints_url ON kmsg_webhook_endpoints (url);

CREATE TABLE kmsg_webhook_deliveries (
    id               text             NOT NULL PRIMARY KEY,
    endpoint_id      text             NOT NULL,
    event_id         text             NOT NULL,
    event_type       text             NOT NULL,
    url              text             NOT NULL,
    payload          text             NOT NULL,
    status           text             NOT NULL
        CHECK (status IN ('pending', 'success', 'failed', 'exhausted')),
    attempts_json    jsonb            NOT NULL DEFAULT '[]',
    attempt_count    integer          NOT NULL DEFAULT 0,
    last_latency_ms  double precision,
    last_error       text,
    created_at       timestamptz      NOT NULL,
    next_attempt_at  timestamptz,
    completed_at     timestamptz,
    lease_owner      text,
    lease_expires_at timestamptz,
    to_hash          text,
    from_hash        text,
    ordering_key     text,
    ordering_seq     bigint
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
-- Ordered delivery: pending rows of ordered endpoints by key, in store order (empty otherwise).
CREATE INDEX idx_kmsg_webhook_deliveries_ordering
    ON kmsg_webhook_deliveries (endpoint_id, ordering_key, ordering_seq)
    WHERE status = 'pending' AND ordering_key IS NOT NULL;
-- The store order of ordered deliveries (drawn by the insert only for rows with a key).
CREATE SEQUENCE kmsg_webhook_deliveries_ordering_seq
    OWNED BY kmsg_webhook_deliveries.ordering_seq;

-- Delivery tracking of sent messages (one table per database or schema).
CREATE TABLE IF NOT EXISTS kmsg_webhook_message_tracking (
    message_id              text NOT NULL PRIMARY KEY,
    provider_id             text NOT NULL,
    provider_message_id     text,
    type                    text NOT NULL,
    recipient               text NOT NULL,
    recipient_hash          text,
    sender                  text,
    status                  text NOT NULL
        CHECK (status IN ('PENDING', 'SENT', 'DELIVERED', 'FAILED', 'CANCELLED', 'UNKNOWN')),
    requested_at            timestamptz NOT NULL,
    status_updated_at       timestamptz NOT NULL,
    next_check_at           timestamptz NOT NULL,
    scheduled_at            timestamptz,
    attempt_count           integer NOT NULL DEFAULT 0,
    last_checked_at         timestamptz,
    sent_at                 timestamptz,
    delivered_at            timestamptz,
    failed_at               timestamptz,
    provider_status_code    text,
    provider_status_message text,
    last_error_code         text,
    last_error_message      text,
    template_id             text,
    correlation_id          text,
    custom_fields           text,
    failover                text,
    fallback_status         text,
    lease_owner             text,
    lease_expires_at        timestamptz
);

-- The reconciler's claim: checks still to make, earliest due first.
CREATE INDEX IF NOT EXISTS idx_kmsg_webhook_message_tracking_due
    ON kmsg_webhook_message_tracking (next_check_at, message_id)
    WHERE status IN ('PENDING', 'SENT');
-- Fallbacks whose sender may have died mid-send (claimed again once the lease expires).
CREATE INDEX IF NOT EXISTS idx_kmsg_webhook_message_tracking_fallback
    ON kmsg_webhook_message_tracking (message_id) WHERE fallback_status = 'attempting';
-- Listings and retention by age; lookups by the vendor's id and by recipient hash.
CREATE INDEX IF NOT EXISTS idx_kmsg_webhook_message_tracking_requested_at
    ON kmsg_webhook_message_tracking (requested_at);
CREATE INDEX IF NOT EXISTS idx_kmsg_webhook_message_tracking_provider_message
    ON kmsg_webhook_message_tracking (provider_id, provider_message_id);
CREATE INDEX IF NOT EXISTS idx_kmsg_webhook_message_tracking_recipient_hash
    ON kmsg_webhook_message_tracking (recipient_hash) WHERE recipient_hash IS NOT NULL;

-- The queue of scheduled and bulk sends (one table per database or schema).
CREATE TABLE IF NOT EXISTS kmsg_webhook_message_jobs (
    id                  text NOT NULL PRIMARY KEY,
    batch_id            text,
    options             text NOT NULL,
    status              text NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    run_at              timestamptz NOT NULL,
    created_at          timestamptz NOT NULL,
    attempts            integer NOT NULL DEFAULT 0,
    lease_owner         text,
    lease_expires_at    timestamptz,
    provider_id         text,
    provider_message_id text,
    error_code          text,
    error_message       text,
    completed_at        timestamptz
);

-- The claim: pending jobs due, earliest first.
CREATE INDEX IF NOT EXISTS idx_kmsg_webhook_message_jobs_due
    ON kmsg_webhook_message_jobs (run_at, id) WHERE status = 'pending';
-- A bulk send's jobs.
CREATE INDEX IF NOT EXISTS idx_kmsg_webhook_message_jobs_batch
    ON kmsg_webhook_message_jobs (batch_id) WHERE batch_id IS NOT NULL;

-- The version rows a fresh database gets (scope: "<endpoint table>,<delivery table>").
INSERT INTO kmsg_webhook_schema_version (scope, version, description)
VALUES ('kmsg_webhook_endpoints,kmsg_webhook_deliveries', 1, 'initial'),
       ('kmsg_webhook_endpoints,kmsg_webhook_deliveries', 2, 'lookup_hashes'),
       ('kmsg_webhook_endpoints,kmsg_webhook_deliveries', 3, 'client_certificates'),
       ('kmsg_webhook_endpoints,kmsg_webhook_deliveries', 4, 'finished_index'),
       ('kmsg_webhook_endpoints,kmsg_webhook_deliveries', 5, 'endpoint_verification'),
       ('kmsg_webhook_endpoints,kmsg_webhook_deliveries', 6, 'ordered_delivery'),
       ('kmsg_webhook_endpoints,kmsg_webhook_deliveries', 7, 'message_tracking'),
       ('kmsg_webhook_endpoints,kmsg_webhook_deliveries', 8, 'message_jobs');
