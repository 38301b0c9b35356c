-- The PostgreSQL job queue (messaging/jobs_sql.py) runs jobs.sqlite.sql with the queries here in
-- place of those of the same name: the ones Postgres words differently (row locks, JSON arrays,
-- reading a batch of rows).
-- Named parameters; timestamps are timestamptz. kmsg_webhook_* identifiers are replaced by the
-- configured names when the store loads this file.

-- name: claim_jobs
-- Lease up to :limit pending jobs due at :now (earliest first) to :worker_id until :lease_until,
-- counting the attempt; only the jobs of batch :batch_id when it is not NULL. Expired leases
-- are claimable.
UPDATE kmsg_webhook_message_jobs AS j
SET lease_owner = :worker_id, lease_expires_at = :lease_until, attempts = j.attempts + 1
FROM (
    SELECT id
    FROM kmsg_webhook_message_jobs
    WHERE status = 'pending'
      AND run_at <= :now
      AND (lease_expires_at IS NULL OR lease_expires_at <= :now)
      AND (CAST(:batch_id AS text) IS NULL OR batch_id = :batch_id)
    ORDER BY run_at, id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED) AS due
WHERE j.id = due.id
RETURNING j.*;

-- name: enqueue
-- Store the pending jobs of :jobs, a JSON array of rows (objects keyed by column, timestamps
-- RFC 3339), in one statement, skipping ids that exist; returns the ids it stored.
INSERT INTO kmsg_webhook_message_jobs (
    id, batch_id, options, status, run_at, created_at, attempts, lease_owner, lease_expires_at,
    provider_id, provider_message_id, error_code, error_message, completed_at)
SELECT r.id, r.batch_id, r.options, r.status, r.run_at, r.created_at, r.attempts, r.lease_owner,
       r.lease_expires_at, r.provider_id, r.provider_message_id, r.error_code, r.error_message,
       r.completed_at
FROM json_to_recordset(CAST(:jobs AS json))
     AS r(id text, batch_id text, options text, status text, run_at timestamptz,
          created_at timestamptz, attempts int4, lease_owner text, lease_expires_at timestamptz,
          provider_id text, provider_message_id text, error_code text, error_message text,
          completed_at timestamptz)
ON CONFLICT (id) DO NOTHING
RETURNING id;

-- name: filter
-- jobs.sqlite.sql's filter, with the JSON arrays read by json_array_elements_text.
batch_id = :batch_id
status IN (SELECT json_array_elements_text(CAST(:statuses AS json)))
id IN (SELECT json_array_elements_text(CAST(:job_ids AS json)));
