-- 0008 message jobs: the durable queue of scheduled and bulk sends (PostgreSQL).
--
-- One row per message, stored before anything is sent (id = the message id, so a message is
-- queued once); workers claim due rows under a lease, send, and record the result. options is
-- the typed send options as JSON text, a sealed envelope with field crypto on (it holds the
-- recipient and the text). Timestamps are timestamptz. One table per database (or Postgres
-- schema), shared by every table pair in it, so it may exist already.

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
