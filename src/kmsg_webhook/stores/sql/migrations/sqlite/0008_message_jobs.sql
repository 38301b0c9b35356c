-- 0008 message jobs: the durable queue of scheduled and bulk sends (SQLite).
--
-- One row per message, stored before anything is sent (id = the message id, so a message is
-- queued once); workers claim due rows under a lease, send, and record the result. options is
-- the typed send options as JSON text, a sealed envelope with field crypto on (it holds the
-- recipient and the text). Timestamps are INTEGER epoch milliseconds. One table per database (or Postgres
-- schema), shared by every table pair in it, so it may exist already.

CREATE TABLE IF NOT EXISTS kmsg_webhook_message_jobs (
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
    ON kmsg_webhook_message_jobs (run_at, id) WHERE status = 'pending';
-- A bulk send's jobs.
CREATE INDEX IF NOT EXISTS idx_kmsg_webhook_message_jobs_batch
    ON kmsg_webhook_message_jobs (batch_id) WHERE batch_id IS NOT NULL;
