-- 0001 initial: endpoints, the delivery outbox and the schema-version table (PostgreSQL).
--
-- Table and index names are the defaults; the migration runner substitutes configured names
-- (validated and quoted) for every kmsg_webhook_* identifier.
-- The version table is shared by every table pair of a schema (rows keyed by scope), so it
-- may exist already.

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
        CHECK (status IN ('active', 'inactive', 'error', 'suspended')),
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
    last_success_at       timestamptz
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
    lease_expires_at timestamptz
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
