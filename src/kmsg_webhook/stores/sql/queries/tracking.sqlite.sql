-- Queries of the tracking store in SQLite's dialect, with named parameters; timestamps are epoch
-- milliseconds. The SQL store (messaging/tracking_sql.py) runs every query here on SQLite, and on
-- Postgres those its .postgresql.sql does not replace; the D1 store (messaging/tracking_d1.py) runs
-- every query here, its parameters made positional.
-- kmsg_webhook_* identifiers are replaced by the configured (validated, quoted) names when a
-- store loads this file.

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

-- name: upsert
-- Insert a record, or replace the one with this message id; the lease columns are left alone
-- (the lease belongs to the reconciler).
INSERT INTO kmsg_webhook_message_tracking (
    message_id, provider_id, provider_message_id, type, recipient, recipient_hash, sender,
    status, requested_at, status_updated_at, next_check_at, scheduled_at, attempt_count,
    last_checked_at, sent_at, delivered_at, failed_at, provider_status_code,
    provider_status_message, last_error_code, last_error_message, template_id, correlation_id,
    custom_fields, failover, fallback_status)
VALUES (
    :message_id, :provider_id, :provider_message_id, :type, :recipient, :recipient_hash,
    :sender, :status, :requested_at, :status_updated_at, :next_check_at, :scheduled_at,
    :attempt_count, :last_checked_at, :sent_at, :delivered_at, :failed_at,
    :provider_status_code, :provider_status_message, :last_error_code, :last_error_message,
    :template_id, :correlation_id, :custom_fields, :failover, :fallback_status)
ON CONFLICT (message_id) DO UPDATE SET
    provider_id = excluded.provider_id,
    provider_message_id = excluded.provider_message_id,
    type = excluded.type,
    recipient = excluded.recipient,
    recipient_hash = excluded.recipient_hash,
    sender = excluded.sender,
    status = excluded.status,
    requested_at = excluded.requested_at,
    status_updated_at = excluded.status_updated_at,
    next_check_at = excluded.next_check_at,
    scheduled_at = excluded.scheduled_at,
    attempt_count = excluded.attempt_count,
    last_checked_at = excluded.last_checked_at,
    sent_at = excluded.sent_at,
    delivered_at = excluded.delivered_at,
    failed_at = excluded.failed_at,
    provider_status_code = excluded.provider_status_code,
    provider_status_message = excluded.provider_status_message,
    last_error_code = excluded.last_error_code,
    last_error_message = excluded.last_error_message,
    template_id = excluded.template_id,
    correlation_id = excluded.correlation_id,
    custom_fields = excluded.custom_fields,
    failover = excluded.failover,
    fallback_status = excluded.fallback_status;

-- name: get
SELECT * FROM kmsg_webhook_message_tracking WHERE message_id = :message_id;

-- name: save
-- Write a record only while :worker_id holds its lease; the lease stays when :keep_lease is 1,
-- else it goes (the right-hand sides read the row as it was).
UPDATE kmsg_webhook_message_tracking SET
    provider_id = :provider_id,
    provider_message_id = :provider_message_id,
    type = :type,
    recipient = :recipient,
    recipient_hash = :recipient_hash,
    sender = :sender,
    status = :status,
    requested_at = :requested_at,
    status_updated_at = :status_updated_at,
    next_check_at = :next_check_at,
    scheduled_at = :scheduled_at,
    attempt_count = :attempt_count,
    last_checked_at = :last_checked_at,
    sent_at = :sent_at,
    delivered_at = :delivered_at,
    failed_at = :failed_at,
    provider_status_code = :provider_status_code,
    provider_status_message = :provider_status_message,
    last_error_code = :last_error_code,
    last_error_message = :last_error_message,
    template_id = :template_id,
    correlation_id = :correlation_id,
    custom_fields = :custom_fields,
    failover = :failover,
    fallback_status = :fallback_status,
    lease_owner = CASE WHEN :keep_lease THEN lease_owner END,
    lease_expires_at = CASE WHEN :keep_lease THEN lease_expires_at END
WHERE message_id = :message_id AND lease_owner = :worker_id;

-- name: release
-- Give back the leases :worker_id holds on the message ids of the JSON array :message_ids.
UPDATE kmsg_webhook_message_tracking SET lease_owner = NULL, lease_expires_at = NULL
WHERE lease_owner = :worker_id AND message_id IN (SELECT value FROM json_each(:message_ids));

-- name: filter
-- One condition per line, for the filter field whose parameter it binds: a listing below holds
-- {where}, which the store replaces with " WHERE " and the conditions of the fields set, joined
-- by AND (nothing when none is set), so each listing uses the indexes of what it filters on.
-- :statuses is a JSON array; the *_from bounds are inclusive, the *_before bounds exclusive;
-- :fallback_in_flight is 1 (only fallbacks being sent) or 0 (every other record).
message_id = :message_id
provider_id = :provider_id
provider_message_id = :provider_message_id
type = :type
status IN (SELECT value FROM json_each(:statuses))
recipient = :recipient
recipient_hash = :recipient_hash
requested_at >= :requested_from
requested_at < :requested_before
status_updated_at >= :updated_from
status_updated_at < :updated_before
(fallback_status IS 'attempting') = :fallback_in_flight;

-- name: list_records
-- A page of the records matching a filter; {order} is the sort key then message_id, both in one
-- direction.
SELECT * FROM kmsg_webhook_message_tracking{where}
ORDER BY {order}
LIMIT :limit OFFSET :offset;

-- name: count_records
SELECT COUNT(*) AS n FROM kmsg_webhook_message_tracking{where};

-- name: count_by
-- Matching records per provider, type and status (the store sums them into the groups asked).
SELECT provider_id, type, status, COUNT(*) AS n FROM kmsg_webhook_message_tracking{where}
GROUP BY provider_id, type, status;

-- name: purge
-- Delete the records matching a filter (the store's purge filter: finished, old enough, no
-- fallback in flight), so a count with that filter says what a purge takes.
DELETE FROM kmsg_webhook_message_tracking{where};
