-- Queries of the PostgreSQL tracking store (messaging/tracking_sql.py), run through SQLAlchemy
-- with named parameters. kmsg_webhook_* identifiers are replaced by the configured (validated,
-- quoted, schema-qualified) names when the store loads this file.

-- name: claim_due
-- Lease up to :limit records the reconciler must look at to :worker_id until :lease_until:
-- still polled and due, or with a fallback left 'attempting' by a worker that died. Expired
-- leases are claimable. SKIP LOCKED lets concurrent claimers take disjoint rows without
-- waiting for each other.
UPDATE kmsg_webhook_message_tracking AS t
SET lease_owner = :worker_id, lease_expires_at = :lease_until
FROM (
    SELECT message_id
    FROM kmsg_webhook_message_tracking
    WHERE ((status IN ('PENDING', 'SENT') AND next_check_at <= :now)
           OR fallback_status = 'attempting')
      AND (lease_expires_at IS NULL OR lease_expires_at <= :now)
    ORDER BY next_check_at, message_id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED) AS due
WHERE t.message_id = due.message_id
RETURNING t.*;
