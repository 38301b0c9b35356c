-- kmsg-webhook schema, postgresql, version 9: migrations 0001 to 0009, then their version rows.

-- 0001 initial: endpoints, the delivery outbox and the schema-version table (PostgreSQL).
--
-- Table and index names are the defaults; the migration runner substitutes configured names
-- (validated and quoted) for every kmsg_webhook_* identifier.
-- The version table is shared by every table pair of a schema (rows keyed by scope), so it
-- may exist already.

CREATE TABLE IF NOT EXISTS "kmsg_webhook_schema_version" (
    scope       text        NOT NULL,
    version     integer     NOT NULL,
    description text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, version)
);

CREATE TABLE "kmsg_webhook_endpoints" (
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

CREATE UNIQUE INDEX "idx_kmsg_webhook_endpoints_url" ON "kmsg_webhook_endpoints" (url);

CREATE TABLE "kmsg_webhook_deliveries" (
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

-- 0002 lookup hashes: keyed hashes of the payload's recipient and sender numbers (PostgreSQL).
--
-- Field crypto (docs/field-crypto.md) stores HMAC-SHA256 hashes of the normalised `to` and
-- `from` numbers of a delivery's payload, so deliveries can be listed by recipient without
-- decrypting any payload. NULL when field crypto does not hash (or the payload has no number);
-- the partial indexes stay empty then.

ALTER TABLE "kmsg_webhook_deliveries" ADD COLUMN to_hash text;
ALTER TABLE "kmsg_webhook_deliveries" ADD COLUMN from_hash text;

CREATE INDEX "idx_kmsg_webhook_deliveries_to_hash"
    ON "kmsg_webhook_deliveries" (to_hash) WHERE to_hash IS NOT NULL;
CREATE INDEX "idx_kmsg_webhook_deliveries_from_hash"
    ON "kmsg_webhook_deliveries" (from_hash) WHERE from_hash IS NOT NULL;

-- 0003 client certificates: a certificate and key an endpoint presents over https (PostgreSQL).
--
-- For receivers that require mutual TLS. Both PEM text, both NULL when unused; the key is
-- sealed like the signing secrets when field crypto encrypts them (docs/field-crypto.md).

ALTER TABLE "kmsg_webhook_endpoints" ADD COLUMN client_cert text;
ALTER TABLE "kmsg_webhook_endpoints" ADD COLUMN client_key text;

-- 0004 finished index: deliveries by completion time (PostgreSQL).
--
-- Finished rows only (completed_at is NULL while pending), so claiming and retrying
-- pending rows never touch it; a row enters it once, when it finishes.

-- The console's overview and endpoint health: deliveries finished since a time, by minute,
-- outcome and endpoint, with their last-attempt latency, read from the index alone.
CREATE INDEX "idx_kmsg_webhook_deliveries_completed_at"
    ON "kmsg_webhook_deliveries" (completed_at, status, endpoint_id, last_latency_ms)
    WHERE completed_at IS NOT NULL;

-- 0005 endpoint verification: an endpoint may wait for its receiver to answer a challenge
-- (status 'pending_verification'; it receives nothing until then) (PostgreSQL).

ALTER TABLE "kmsg_webhook_endpoints" DROP CONSTRAINT "kmsg_webhook_endpoints_status_check";
ALTER TABLE "kmsg_webhook_endpoints" ADD CONSTRAINT "kmsg_webhook_endpoints_status_check"
    CHECK (status IN ('active', 'inactive', 'error', 'suspended', 'pending_verification'));

-- 0006 ordered delivery: endpoints that receive one ordering key's deliveries in order, and
-- what the claim needs to keep that order (PostgreSQL).
--
-- A delivery to an ordered endpoint carries its event's ordering_key and a place in the store
-- order (ordering_seq, drawn from a sequence when the row is inserted). The claim skips a row
-- while an earlier one of the same endpoint and key is pending; the partial index holds only
-- such pending ordered rows, so without ordered endpoints it stays empty and costs nothing.
-- Both new delivery columns are NULL for every other row; adding them rewrites nothing.

ALTER TABLE "kmsg_webhook_endpoints" ADD COLUMN ordered boolean NOT NULL DEFAULT false;
ALTER TABLE "kmsg_webhook_deliveries" ADD COLUMN ordering_key text;
ALTER TABLE "kmsg_webhook_deliveries" ADD COLUMN ordering_seq bigint;

CREATE SEQUENCE "kmsg_webhook_deliveries_ordering_seq"
    OWNED BY "kmsg_webhook_deliveries".ordering_seq;

CREATE INDEX "idx_kmsg_webhook_deliveries_ordering"
    ON "kmsg_webhook_deliveries" (endpoint_id, ordering_key, ordering_seq)
    WHERE status = 'pending' AND ordering_key IS NOT NULL;

-- 0007 message tracking: delivery-status tracking of sent messages (PostgreSQL).
--
-- One row per message the messaging module sent: the reconciler claims due checks under a
-- lease, polls the vendor and records the status; fallback_status 'attempting' marks an
-- ALIMTALK -> SMS fallback in flight. With field crypto on, recipient, sender, custom_fields
-- and failover (which holds the fallback text) are sealed envelopes and recipient_hash is the
-- keyed lookup hash. Timestamps are timestamptz.
-- One tracking table per database (or Postgres schema), shared by every table pair in it, so
-- it may exist already.

CREATE TABLE IF NOT EXISTS "kmsg_webhook_message_tracking" (
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

-- 0008 message jobs: the durable queue of scheduled and bulk sends (PostgreSQL).
--
-- One row per message, stored before anything is sent (id = the message id, so a message is
-- queued once); workers claim due rows under a lease, send, and record the result. options is
-- the typed send options as JSON text, a sealed envelope with field crypto on (it holds the
-- recipient and the text). Timestamps are timestamptz. One table per database (or Postgres
-- schema), shared by every table pair in it, so it may exist already.

CREATE TABLE IF NOT EXISTS "kmsg_webhook_message_jobs" (
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
    ON "kmsg_webhook_message_jobs" (run_at, id) WHERE status = 'pending';
-- A bulk send's jobs.
CREATE INDEX IF NOT EXISTS idx_kmsg_webhook_message_jobs_batch
    ON "kmsg_webhook_message_jobs" (batch_id) WHERE batch_id IS NOT NULL;

-- 0009 endpoint due index: each endpoint's pending rows, oldest due first (PostgreSQL).
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
