-- The PostgreSQL tracking store (messaging/tracking_sql.py) runs tracking.sqlite.sql with the
-- queries here in place of those of the same name: the ones Postgres words differently (row
-- locks, JSON arrays). Named parameters; timestamps are timestamptz. kmsg_webhook_* identifiers
-- are replaced by the configured (validated, quoted, schema-qualified) names when the store
-- loads this file.

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

-- name: release
-- Give back the leases :worker_id holds on the message ids of the JSON array :message_ids.
UPDATE kmsg_webhook_message_tracking SET lease_owner = NULL, lease_expires_at = NULL
WHERE lease_owner = :worker_id
  AND message_id IN (SELECT json_array_elements_text(CAST(:message_ids AS json)));

-- name: filter
-- tracking.sqlite.sql's filter, with :statuses read by json_array_elements_text.
message_id = :message_id
provider_id = :provider_id
provider_message_id = :provider_message_id
type = :type
status IN (SELECT json_array_elements_text(CAST(:statuses AS json)))
recipient = :recipient
recipient_hash = :recipient_hash
requested_at >= :requested_from
requested_at < :requested_before
status_updated_at >= :updated_from
status_updated_at < :updated_before
(fallback_status IS NOT DISTINCT FROM 'attempting') = CAST(:fallback_in_flight AS integer)::boolean;

-- name: purge
-- tracking.sqlite.sql's purge: delete the records matching the store's purge filter.
DELETE FROM kmsg_webhook_message_tracking{where};
