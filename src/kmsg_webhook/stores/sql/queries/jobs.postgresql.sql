-- The PostgreSQL job queue (messaging/jobs_sql.py) runs jobs.sqlite.sql with the queries here in
-- place of those of the same name: the ones Postgres words differently (row locks, JSON arrays).
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

-- name: filter
-- jobs.sqlite.sql's filter, with the JSON arrays read by json_array_elements_text.
batch_id = :batch_id
status IN (SELECT json_array_elements_text(CAST(:statuses AS json)))
id IN (SELECT json_array_elements_text(CAST(:job_ids AS json)));
