-- The cold queries of the SQLite, PostgreSQL and D1 stores whose text is the same in both
-- dialects (queries/<dialect>.sql holds the ones that differ, and may override a name here).
-- Each query sits under a "-- name: <name>" header; kmsg_webhook_* identifiers are replaced by
-- the configured (validated, quoted) names when a store loads it. Timestamps bind as the
-- dialect stores them (SQLite: epoch milliseconds; PostgreSQL: timestamptz), JSON as text.
--
-- {where} stands for a delivery filter: nothing, or " WHERE " and the where_* fragments a
-- DeliveryFilter asks for, joined by AND (stores/filters.py). The fragments are fixed text
-- with named parameters, each an indexed column compared with a value.

-- name: where_endpoint_id
endpoint_id = :endpoint_id

-- name: where_event_type
event_type = :event_type

-- name: where_event_id
event_id = :event_id

-- name: where_created_after
created_at >= :created_after

-- name: where_created_before
created_at < :created_before

-- name: where_to_hash
to_hash = :to_hash

-- name: where_from_hash
from_hash = :from_hash

-- name: where_finished
status <> 'pending'

-- name: where_before_cursor
-- Keyset paging: the rows after the page's last one in (created_at DESC, id DESC) order.
(created_at, id) < (:cursor_at, :cursor_id)

-- name: endpoint_clashes
-- Rows that would clash with an endpoint being added: same id, or same URL.
SELECT * FROM kmsg_webhook_endpoints WHERE id = :id OR url = :url;

-- name: endpoint_insert
-- Add an endpoint unless its id or URL is taken; returns the id when it was added.
INSERT INTO kmsg_webhook_endpoints (
    id, url, name, description, status, events_json, headers_json, secret,
    previous_secrets_json, retry_config_json, filters_json, created_at, updated_at,
    last_triggered_at, disabled_reason, consecutive_failures, failing_since, last_success_at,
    client_cert, client_key, ordered)
VALUES (
    :id, :url, :name, :description, :status, :events_json, :headers_json, :secret,
    :previous_secrets_json, :retry_config_json, :filters_json, :created_at, :updated_at,
    :last_triggered_at, :disabled_reason, :consecutive_failures, :failing_since,
    :last_success_at, :client_cert, :client_key, :ordered)
ON CONFLICT DO NOTHING
RETURNING id;

-- name: endpoint_exists
SELECT id FROM kmsg_webhook_endpoints WHERE id = :id;

-- name: endpoint_url_owner
-- Which other endpoint uses this URL?
SELECT id FROM kmsg_webhook_endpoints WHERE url = :url AND id <> :id;

-- name: endpoint_update
-- Replace an endpoint's fields unless another endpoint holds its URL; returns the id if done.
-- The health columns are left as stored (only the health queries write them), unless
-- :reset_health (re-enabling an endpoint) clears the failure counters.
UPDATE kmsg_webhook_endpoints
SET url = :url, name = :name, description = :description, status = :status,
    events_json = :events_json, headers_json = :headers_json, secret = :secret,
    previous_secrets_json = :previous_secrets_json, retry_config_json = :retry_config_json,
    filters_json = :filters_json, created_at = :created_at, updated_at = :updated_at,
    last_triggered_at = :last_triggered_at,
    disabled_reason = :disabled_reason, client_cert = :client_cert, client_key = :client_key,
    ordered = :ordered,
    consecutive_failures = CASE WHEN :reset_health THEN 0 ELSE consecutive_failures END,
    failing_since = CASE WHEN :reset_health THEN NULL ELSE failing_since END
WHERE id = :id
  AND NOT EXISTS (SELECT 1 FROM kmsg_webhook_endpoints AS other
                  WHERE other.url = :url AND other.id <> :id)
RETURNING id;

-- name: endpoint_delete
-- Delete an endpoint; returns its id when it existed.
DELETE FROM kmsg_webhook_endpoints WHERE id = :id RETURNING id;

-- name: endpoint_get
SELECT * FROM kmsg_webhook_endpoints WHERE id = :id;

-- name: endpoint_list
-- All endpoints, most recently updated first.
SELECT * FROM kmsg_webhook_endpoints ORDER BY updated_at DESC, id DESC;

-- name: endpoint_health_success
-- A success heals the endpoint's health counters.
UPDATE kmsg_webhook_endpoints
SET consecutive_failures = 0, failing_since = NULL, last_success_at = :at
WHERE id = :id
RETURNING *;

-- name: endpoint_health_failure
-- Failures add up; the failing period starts at the first one.
UPDATE kmsg_webhook_endpoints
SET consecutive_failures = consecutive_failures + :failures,
    failing_since = coalesce(failing_since, :at)
WHERE id = :id
RETURNING *;

-- name: delivery_get
SELECT * FROM kmsg_webhook_deliveries WHERE id = :id;

-- name: delivery_list
-- A page of deliveries matching {where}, newest first, :limit rows.
SELECT * FROM kmsg_webhook_deliveries{where} ORDER BY created_at DESC, id DESC LIMIT :limit;

-- name: delivery_stats
-- Counts by status, attempts and mean last-attempt latency of the rows matching {where}.
SELECT count(*) AS total,
       coalesce(sum(CASE WHEN status = 'pending' THEN 1 ELSE 0 END), 0) AS pending,
       coalesce(sum(CASE WHEN status = 'success' THEN 1 ELSE 0 END), 0) AS success,
       coalesce(sum(CASE WHEN status = 'failed' THEN 1 ELSE 0 END), 0) AS failed,
       coalesce(sum(CASE WHEN status = 'exhausted' THEN 1 ELSE 0 END), 0) AS exhausted,
       coalesce(sum(attempt_count), 0) AS total_attempts,
       avg(last_latency_ms) AS average_latency_ms
FROM kmsg_webhook_deliveries{where};

-- name: delivery_stats_by_type
-- Counts by event type of the rows matching {where}.
SELECT event_type, count(*) AS n FROM kmsg_webhook_deliveries{where} GROUP BY event_type;

-- name: queue_stats
-- Pending rows at :now: due and claimable, scheduled later, under a live lease.
SELECT coalesce(sum(CASE WHEN due THEN 1 ELSE 0 END), 0) AS due,
       coalesce(sum(CASE WHEN later THEN 1 ELSE 0 END), 0) AS scheduled,
       coalesce(sum(CASE WHEN leased THEN 1 ELSE 0 END), 0) AS leased,
       min(CASE WHEN due THEN next_attempt_at END) AS oldest_due_at,
       min(CASE WHEN later THEN next_attempt_at END) AS next_due_at
FROM (SELECT next_attempt_at,
             (lease_expires_at IS NOT NULL AND lease_expires_at > :now) AS leased,
             ((lease_expires_at IS NULL OR lease_expires_at <= :now)
              AND next_attempt_at <= :now) AS due,
             ((lease_expires_at IS NULL OR lease_expires_at <= :now)
              AND next_attempt_at > :now) AS later
      FROM kmsg_webhook_deliveries
      WHERE status = 'pending') AS pending_rows;

-- name: latency_percentiles
-- Last-attempt latencies of the newest :sample rows finished in the window, at the nearest-rank
-- positions of p50, p95 and p99, with the sample count.
SELECT samples, position, latency
FROM (SELECT latency, row_number() OVER (ORDER BY latency) AS position,
             count(*) OVER () AS samples
      FROM (SELECT last_latency_ms AS latency
            FROM kmsg_webhook_deliveries
            WHERE status <> 'pending' AND completed_at >= :since AND completed_at <= :now
              AND last_latency_ms IS NOT NULL
            ORDER BY completed_at DESC
            LIMIT :sample) AS newest) AS ranked
WHERE position IN ((50 * samples + 99) / 100, (95 * samples + 99) / 100,
                   (99 * samples + 99) / 100);

-- name: requeue
-- Put rows matching {where} (where_finished among them) back to pending, due at :now
-- (attempts kept).
UPDATE kmsg_webhook_deliveries
SET status = 'pending', next_attempt_at = :now, completed_at = NULL,
    lease_owner = NULL, lease_expires_at = NULL{where};

-- name: purge
-- Delete finished rows created before :before.
DELETE FROM kmsg_webhook_deliveries WHERE status <> 'pending' AND created_at < :before;

-- name: purge_finished
-- Delete up to :limit rows of :status created before :before, oldest first (retention). The
-- (status, created_at) index finds them.
DELETE FROM kmsg_webhook_deliveries
WHERE id IN (SELECT id FROM kmsg_webhook_deliveries
             WHERE status = :status AND created_at < :before
             ORDER BY created_at, id
             LIMIT :limit);

-- name: scan
-- Up to :limit rows with an id after :after ('' for the start), in id order.
SELECT * FROM kmsg_webhook_deliveries WHERE id > :after ORDER BY id LIMIT :limit;

-- name: rewrite_payload
-- Set the payload and lookup hashes while the stored payload is still :expected.
UPDATE kmsg_webhook_deliveries
SET payload = :payload, to_hash = :to_hash, from_hash = :from_hash
WHERE id = :id AND payload = :expected
RETURNING id;
