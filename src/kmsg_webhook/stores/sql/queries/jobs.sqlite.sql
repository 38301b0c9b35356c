-- Queries of the job queue in SQLite's dialect, with named parameters; timestamps are epoch
-- milliseconds. The SQL store (messaging/jobs_sql.py) runs every query here on SQLite, and on
-- Postgres those its .postgresql.sql does not replace; the D1 store (messaging/jobs_d1.py) runs
-- every query here, its parameters made positional.
-- kmsg_webhook_* identifiers are replaced by the configured names when a store loads this file.

-- name: claim_jobs
-- Lease up to :limit pending jobs due at :now (earliest first) to :worker_id until :lease_until,
-- counting the attempt; only the jobs of batch :batch_id when it is not NULL. Expired leases
-- are claimable.
UPDATE kmsg_webhook_message_jobs
SET lease_owner = :worker_id, lease_expires_at = :lease_until, attempts = attempts + 1
WHERE id IN (
    SELECT id
    FROM kmsg_webhook_message_jobs
    WHERE status = 'pending'
      AND run_at <= :now
      AND (lease_expires_at IS NULL OR lease_expires_at <= :now)
      AND (:batch_id IS NULL OR batch_id = :batch_id)
    ORDER BY run_at, id
    LIMIT :limit)
RETURNING *;

-- name: enqueue
-- Store the pending jobs of :jobs, a JSON array of rows (objects keyed by column, timestamps
-- epoch milliseconds), in one statement, skipping ids that exist; returns the ids it stored.
-- "WHERE true": without it SQLite would read ON CONFLICT as the join constraint of json_each.
INSERT INTO kmsg_webhook_message_jobs (
    id, batch_id, options, status, run_at, created_at, attempts, lease_owner, lease_expires_at,
    provider_id, provider_message_id, error_code, error_message, completed_at)
SELECT json_extract(value, '$.id'), json_extract(value, '$.batch_id'),
       json_extract(value, '$.options'), json_extract(value, '$.status'),
       json_extract(value, '$.run_at'), json_extract(value, '$.created_at'),
       json_extract(value, '$.attempts'), json_extract(value, '$.lease_owner'),
       json_extract(value, '$.lease_expires_at'), json_extract(value, '$.provider_id'),
       json_extract(value, '$.provider_message_id'), json_extract(value, '$.error_code'),
       json_extract(value, '$.error_message'), json_extract(value, '$.completed_at')
FROM json_each(:jobs)
WHERE true
ON CONFLICT (id) DO NOTHING
RETURNING id;

-- name: complete
-- Record a job's result while :worker_id still holds its lease, dropping the lease.
UPDATE kmsg_webhook_message_jobs
SET status = :status, completed_at = :completed_at, provider_id = :provider_id,
    provider_message_id = :provider_message_id, error_code = :error_code,
    error_message = :error_message, lease_owner = NULL, lease_expires_at = NULL
WHERE id = :job_id AND lease_owner = :worker_id;

-- name: get
SELECT * FROM kmsg_webhook_message_jobs WHERE id = :id;

-- name: filter
-- One condition per line, for the filter whose parameter it binds: a listing below holds
-- {where}, which the store replaces with " WHERE " and the conditions of the filters set, joined
-- by AND (nothing when none is set). :statuses is a JSON array.
batch_id = :batch_id
status IN (SELECT value FROM json_each(:statuses))
id IN (SELECT value FROM json_each(:job_ids));

-- name: list_jobs
-- A page of jobs, earliest run_at first.
SELECT * FROM kmsg_webhook_message_jobs{where}
ORDER BY run_at, id
LIMIT :limit OFFSET :offset;

-- name: count_by_status
SELECT status, COUNT(*) AS n FROM kmsg_webhook_message_jobs{where}
GROUP BY status;

-- name: requeue
-- Make the jobs the filters choose (failed ones: :statuses) pending again, due at :run_at, their
-- result cleared and their attempts kept.
UPDATE kmsg_webhook_message_jobs
SET status = 'pending', run_at = :run_at, completed_at = NULL, provider_id = NULL,
    provider_message_id = NULL, error_code = NULL, error_message = NULL, lease_owner = NULL,
    lease_expires_at = NULL{where};
