-- Queries of the SQLite job queue (messaging/jobs_sql.py), run through SQLAlchemy with named
-- parameters. kmsg_webhook_* identifiers are replaced by the configured names when the store loads
-- this file.

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
