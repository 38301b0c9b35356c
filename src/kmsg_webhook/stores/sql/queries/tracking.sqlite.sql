-- Queries of the SQLite tracking store (messaging/tracking_sql.py), run through SQLAlchemy with
-- named parameters; timestamps bind as epoch milliseconds. kmsg_webhook_* identifiers are
-- replaced by the configured (validated, quoted) names when the store loads this file.

-- name: claim_due
-- Lease up to :limit records the reconciler must look at to :worker_id until :lease_until:
-- still polled and due, or with a fallback left 'attempting' by a worker that died. Expired
-- leases are claimable. One statement: SQLite takes the write lock when it starts, so two
-- processes never claim the same row.
UPDATE kmsg_webhook_message_tracking
SET lease_owner = :worker_id, lease_expires_at = :lease_until
WHERE message_id IN (
    SELECT message_id
    FROM kmsg_webhook_message_tracking
    WHERE ((status IN ('PENDING', 'SENT') AND next_check_at <= :now)
           OR fallback_status = 'attempting')
      AND (lease_expires_at IS NULL OR lease_expires_at <= :now)
    ORDER BY next_check_at, message_id
    LIMIT :limit)
RETURNING *;
