-- Hot-path queries of the PostgreSQL delivery store, run on the raw asyncpg connection.
-- Each query sits under a "-- name: <name>" header; kmsg_webhook_* identifiers are replaced by
-- the configured (validated, quoted, schema-qualified) names when the store loads this file.
-- JSON values are passed as text and cast here, so a caller's own connection works whatever
-- jsonb codec it has installed. insert_deliveries names its parameters: it also runs through
-- SQLAlchemy on a caller's connection, and the raw path numbers them ($1, $2).

-- name: insert_deliveries
-- Insert a batch given as one JSON array :rows of deliveries (the model's fields by name, as
-- orjson writes a WebhookDelivery; timestamps RFC 3339), in one statement, on the store's own
-- connection or a caller's (asyncpg, or SQLAlchemy with any driver). One JSON parameter, not one
-- array per column: asyncpg checks every element of an array parameter against
-- collections.abc classes, which for 18 columns cost the sender about 80 k instructions per
-- delivery (benchmarks/instructions.py), far more than parsing the JSON costs the server.
-- (record_outcomes keeps its 8 arrays: as JSON it cost the server more than it saved here.)
-- Rows whose id or (endpoint_id, event_id) already exists are skipped; the ids of new rows come
-- back as one array (one value, not a result row per delivery for the driver to build).
-- New rows not already leased are announced on channel :channel with their earliest due time
-- (epoch seconds); a NOTIFY is delivered only when the transaction commits. A row with an
-- ordering key draws its place in the store order from the sequence, in array order (the rows
-- reach the projection in the order json_to_recordset yields them); other rows draw nothing.
WITH inserted AS (
INSERT INTO kmsg_webhook_deliveries (
    id, endpoint_id, event_id, event_type, url, payload, status, attempts_json, attempt_count,
    last_latency_ms, last_error, created_at, next_attempt_at, completed_at, lease_owner,
    lease_expires_at, to_hash, from_hash, ordering_key, ordering_seq)
SELECT r.id, r.endpoint_id, r.event_id, r.event_type, r.url, r.payload, r.status,
       coalesce(r.attempts, '[]'), r.attempt_count, (r.attempts -> -1 ->> 'latency_ms')::float8,
       r.last_error, r.created_at, r.next_attempt_at, r.completed_at, r.lease_owner,
       r.lease_expires_at, r.to_hash, r.from_hash, r.ordering_key,
       CASE WHEN r.ordering_key IS NOT NULL
            THEN nextval('kmsg_webhook_deliveries_ordering_seq') END
FROM json_to_recordset(CAST(:rows AS json))
     AS r(id text, endpoint_id text, event_id text, event_type text, url text, payload text,
          status text, attempts jsonb, attempt_count int4, last_error text,
          created_at timestamptz, next_attempt_at timestamptz, completed_at timestamptz,
          lease_owner text, lease_expires_at timestamptz, to_hash text, from_hash text,
          ordering_key text)
ON CONFLICT DO NOTHING
RETURNING id, next_attempt_at, lease_expires_at)
SELECT coalesce(array_agg(id), '{}'),
       (SELECT pg_notify(:channel, extract(epoch FROM min(n.next_attempt_at))::text)
        FROM inserted AS n WHERE n.lease_expires_at IS NULL HAVING count(*) > 0)
FROM inserted;

-- name: existing_delivery_ids
-- Which of these ids are stored (used only when an insert is retried after a lost connection).
SELECT id FROM kmsg_webhook_deliveries WHERE id = ANY ($1::text[]);

-- name: leased_deliveries
-- The pending rows leased to worker $1 until exactly $2: what a claim whose answer was lost
-- (the connection died after it committed) leased, taken back when that claim is retried.
SELECT d.id, d.endpoint_id, d.event_id, d.event_type, d.url, d.payload, d.status,
       d.attempts_json::text, d.attempt_count, d.last_latency_ms, d.last_error, d.created_at,
       d.next_attempt_at, d.completed_at, d.lease_owner, d.lease_expires_at, d.to_hash,
       d.from_hash, d.ordering_key
FROM kmsg_webhook_deliveries AS d
WHERE d.lease_owner = $1 AND d.lease_expires_at = $2 AND d.status = 'pending';

-- name: claim_deliveries
-- Lease up to $5 due pending rows (oldest due first) to worker $1 until $2. Expired leases are
-- claimable; rows locked by a concurrent claim are skipped, and no lock outlives the statement.
-- $3 is now, $4 the endpoints to leave alone. Ordered delivery: a row with an ordering key
-- waits while an earlier one (smaller ordering_seq: the store order) of its endpoint and key
-- is pending, leased or not; rows without a key never look (the partial ordering index is
-- empty without ordered endpoints). Row order of RETURNING is not guaranteed; the
-- columns come in the order the store decodes them (codec.DELIVERY_ROW_COLUMNS), the attempts
-- as text (new rows hold '[]', which the store then does not parse).
UPDATE kmsg_webhook_deliveries AS d
SET lease_owner = $1, lease_expires_at = $2
WHERE d.id IN (
    SELECT c.id
    FROM kmsg_webhook_deliveries AS c
    WHERE c.status = 'pending'
      AND c.next_attempt_at <= $3
      AND (c.lease_expires_at IS NULL OR c.lease_expires_at <= $3)
      AND c.endpoint_id <> ALL ($4::text[])
      AND (c.ordering_key IS NULL OR NOT EXISTS (
          SELECT 1 FROM kmsg_webhook_deliveries AS e
          WHERE e.status = 'pending' AND e.ordering_key IS NOT NULL
            AND e.endpoint_id = c.endpoint_id AND e.ordering_key = c.ordering_key
            AND e.ordering_seq < c.ordering_seq))
    ORDER BY c.next_attempt_at, c.id
    LIMIT $5
    FOR UPDATE SKIP LOCKED)
RETURNING d.id, d.endpoint_id, d.event_id, d.event_type, d.url, d.payload, d.status,
          d.attempts_json::text, d.attempt_count, d.last_latency_ms, d.last_error, d.created_at,
          d.next_attempt_at, d.completed_at, d.lease_owner, d.lease_expires_at, d.to_hash,
          d.from_hash, d.ordering_key;

-- name: count_excluded_due
-- How many rows claim_deliveries would walk past: the pending rows of the $3 endpoints due at
-- $1, counted up to $2 from the endpoint due index. A claim that leaves endpoints alone walks
-- below $2 and goes per endpoint (claim_deliveries_around) from there on.
SELECT count(*) FROM (
    SELECT 1 FROM kmsg_webhook_deliveries
    WHERE status = 'pending' AND endpoint_id = ANY ($3::text[]) AND next_attempt_at <= $1
    LIMIT $2) AS due;

-- name: claim_deliveries_around
-- claim_deliveries when $4 is not empty, without reading the excluded endpoints' rows: the
-- endpoints with pending rows are found one index step each (a skip scan of the endpoint due
-- index), and each endpoint not excluded gives its earliest $5 due rows; the earliest $5 of
-- those are leased. Same rows as claim_deliveries would lease; its cost follows the number of
-- endpoints with pending rows, not the excluded backlog.
UPDATE kmsg_webhook_deliveries AS d
SET lease_owner = $1, lease_expires_at = $2
WHERE d.id IN (
    WITH RECURSIVE endpoint (id) AS (
        (SELECT endpoint_id FROM kmsg_webhook_deliveries WHERE status = 'pending'
         ORDER BY endpoint_id LIMIT 1)
        UNION ALL
        SELECT (SELECT n.endpoint_id
                FROM kmsg_webhook_deliveries AS n
                WHERE n.status = 'pending' AND n.endpoint_id > endpoint.id
                ORDER BY n.endpoint_id LIMIT 1)
        FROM endpoint WHERE endpoint.id IS NOT NULL)
    SELECT c.id
    FROM endpoint AS p
    CROSS JOIN LATERAL (
        SELECT x.id, x.next_attempt_at
        FROM kmsg_webhook_deliveries AS x
        WHERE x.endpoint_id = p.id AND x.status = 'pending'
          AND x.next_attempt_at <= $3
          AND (x.lease_expires_at IS NULL OR x.lease_expires_at <= $3)
          AND (x.ordering_key IS NULL OR NOT EXISTS (
              SELECT 1 FROM kmsg_webhook_deliveries AS e
              WHERE e.status = 'pending' AND e.ordering_key IS NOT NULL
                AND e.endpoint_id = x.endpoint_id AND e.ordering_key = x.ordering_key
                AND e.ordering_seq < x.ordering_seq))
        ORDER BY x.next_attempt_at, x.id
        LIMIT $5
        FOR UPDATE SKIP LOCKED) AS c
    WHERE p.id IS NOT NULL AND p.id <> ALL ($4::text[])
    ORDER BY c.next_attempt_at, c.id
    LIMIT $5)
RETURNING d.id, d.endpoint_id, d.event_id, d.event_type, d.url, d.payload, d.status,
          d.attempts_json::text, d.attempt_count, d.last_latency_ms, d.last_error, d.created_at,
          d.next_attempt_at, d.completed_at, d.lease_owner, d.lease_expires_at, d.to_hash,
          d.from_hash, d.ordering_key;

-- name: record_outcomes
-- Apply a batch of attempt outcomes (one array per field) where the worker still holds the
-- lease: append the attempt keeping the newest $9, count it, set status and times, drop the
-- lease. Returns one row: how many applied. Retries it scheduled are announced on channel $10
-- with their earliest due time, so any worker (any process) claims them when they fall due.
WITH updated AS (
UPDATE kmsg_webhook_deliveries AS d
SET attempts_json = CASE
        WHEN o.attempt IS NULL THEN d.attempts_json
        -- Below the cap (the usual case) append in place; rebuild only to drop the oldest.
        WHEN jsonb_array_length(d.attempts_json) < $9
            THEN d.attempts_json || jsonb_build_array(o.attempt::jsonb)
        ELSE (SELECT coalesce(jsonb_agg(a.value ORDER BY a.n), '[]'::jsonb)
              FROM jsonb_array_elements(d.attempts_json || jsonb_build_array(o.attempt::jsonb))
                   WITH ORDINALITY AS a(value, n)
              WHERE a.n > jsonb_array_length(d.attempts_json) + 1 - $9)
    END,
    attempt_count = d.attempt_count + CASE WHEN o.attempt IS NULL THEN 0 ELSE 1 END,
    last_latency_ms = coalesce(o.latency_ms, d.last_latency_ms),
    status = o.status,
    next_attempt_at = o.next_attempt_at,
    completed_at = o.completed_at,
    last_error = o.last_error,
    lease_owner = NULL,
    lease_expires_at = NULL
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
            $6::timestamptz[], $7::text[], $8::float8[])
     AS o(id, worker_id, attempt, status, next_attempt_at, completed_at, last_error,
          latency_ms)
WHERE d.id = o.id AND d.lease_owner = o.worker_id
RETURNING d.status, d.next_attempt_at)
SELECT count(*),
       (SELECT pg_notify($10, extract(epoch FROM min(r.next_attempt_at))::text)
        FROM updated AS r WHERE r.status = 'pending' HAVING count(*) > 0)
FROM updated;

-- The cold queries below differ from SQLite's; the others are in shared.sql. JSON parameters
-- are text cast here; lists of values are arrays.

-- name: where_statuses
-- Filter fragment: the status is one of the array :statuses.
status = ANY(:statuses)

-- name: where_ids
-- Filter fragment: the id is one of the array :ids.
id = ANY(:ids)

-- name: endpoint_rewrite_sealed
-- Compare-and-set of an endpoint's sealed fields (JSON compared as jsonb); returns the id when
-- it applied.
UPDATE kmsg_webhook_endpoints
SET secret = :secret, previous_secrets_json = CAST(:previous_secrets_json AS jsonb),
    headers_json = CAST(:headers_json AS jsonb), client_key = :client_key
WHERE id = :id
  AND secret IS NOT DISTINCT FROM CAST(:expected_secret AS text)
  AND previous_secrets_json = CAST(:expected_previous_secrets_json AS jsonb)
  AND headers_json = CAST(:expected_headers_json AS jsonb)
  AND client_key IS NOT DISTINCT FROM CAST(:expected_client_key AS text)
RETURNING id;

-- name: release_deliveries
-- Give back the leases :worker_id holds on the ids in :ids; returns when the released rows are
-- due.
UPDATE kmsg_webhook_deliveries
SET lease_owner = NULL, lease_expires_at = NULL
WHERE lease_owner = :worker_id AND id = ANY(:ids)
RETURNING next_attempt_at;

-- name: finished_tallies
-- Rows finished from :since to :now, by finished status, per epoch minute (kind 'minute') and per
-- endpoint (kind 'endpoint'); the key is text in both. The partial index on completed_at
-- serves the window.
SELECT kind, key,
       count(*) FILTER (WHERE status = 'success') AS success,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status = 'exhausted') AS exhausted
FROM (SELECT 'minute' AS kind,
             CAST(CAST(floor(extract(epoch FROM completed_at) / 60) AS bigint) AS text) AS key,
             status
      FROM kmsg_webhook_deliveries
      WHERE status <> 'pending' AND completed_at >= :since AND completed_at <= :now
      UNION ALL
      SELECT 'endpoint', coalesce(endpoint_id, ''), status
      FROM kmsg_webhook_deliveries
      WHERE status <> 'pending' AND completed_at >= :since AND completed_at <= :now) AS finished
GROUP BY kind, key;

-- name: notify_due
-- Tell listening workers that rows are due at :at (epoch seconds as text), at commit.
SELECT pg_notify(:channel, :at);
