-- The queries of the SQLite stores: the hot paths of the SQLite delivery store (run on the raw
-- aiosqlite connection) and, below them, the D1 store's. D1 is SQLite and runs the hot paths too.
-- Each query sits under a "-- name: <name>" header; kmsg_webhook_* identifiers are replaced by
-- the configured (validated, quoted) names when the store loads this file. Id lists travel as
-- one JSON array parameter read with json_each. Timestamps are epoch milliseconds.

-- name: insert_deliveries
-- Insert a batch; {rows} stands for one "(?, ... 19 ...)" group per row, in column order (the
-- store sends at most 1000 rows per statement). Rows whose id or (endpoint_id, event_id)
-- already exists are skipped. Binding parameters measured faster than reading one JSON
-- document with json_each (which re-parses per column).
-- No RETURNING: every returned row is a step of its own, and each step hands Python's GIL
-- from the event loop's thread to aiosqlite's and back, which under load costs milliseconds.
-- The store reads the change count instead; when rows were skipped, inserted_delivery_ids
-- names the new ones.
INSERT INTO kmsg_webhook_deliveries (
    id, endpoint_id, event_id, event_type, url, payload, status, attempts_json, attempt_count,
    last_latency_ms, last_error, created_at, next_attempt_at, completed_at, lease_owner,
    lease_expires_at, to_hash, from_hash, ordering_key)
VALUES {rows}
ON CONFLICT DO NOTHING;

-- name: insert_deliveries_json
-- insert_deliveries on a caller's SQLAlchemy connection: the batch as one JSON array :rows of
-- objects keyed by column (timestamps epoch milliseconds, attempts JSON text), one statement
-- whatever its size, returning the ids of the rows it stored (SQLAlchemy gives no rows back
-- from an executemany). "WHERE true": without it SQLite would read ON CONFLICT as the join
-- constraint of json_each.
INSERT INTO kmsg_webhook_deliveries (
    id, endpoint_id, event_id, event_type, url, payload, status, attempts_json, attempt_count,
    last_latency_ms, last_error, created_at, next_attempt_at, completed_at, lease_owner,
    lease_expires_at, to_hash, from_hash, ordering_key)
SELECT json_extract(value, '$.id'), json_extract(value, '$.endpoint_id'),
       json_extract(value, '$.event_id'), json_extract(value, '$.event_type'),
       json_extract(value, '$.url'), json_extract(value, '$.payload'),
       json_extract(value, '$.status'), json_extract(value, '$.attempts_json'),
       json_extract(value, '$.attempt_count'), json_extract(value, '$.last_latency_ms'),
       json_extract(value, '$.last_error'), json_extract(value, '$.created_at'),
       json_extract(value, '$.next_attempt_at'), json_extract(value, '$.completed_at'),
       json_extract(value, '$.lease_owner'), json_extract(value, '$.lease_expires_at'),
       json_extract(value, '$.to_hash'), json_extract(value, '$.from_hash'),
       json_extract(value, '$.ordering_key')
FROM json_each(:rows)
WHERE true
ON CONFLICT DO NOTHING
RETURNING id;

-- name: inserted_delivery_ids
-- The ids the last insert_deliveries statement stored: it ran under the write lock, and SQLite
-- gives each row it inserts the next rowid, so they are the last :count rowids up to :last.
SELECT id FROM kmsg_webhook_deliveries WHERE rowid > :last - :count AND rowid <= :last;

-- name: existing_delivery_ids
-- Which of these ids are stored (used only when an insert is retried after a failure).
SELECT id FROM kmsg_webhook_deliveries WHERE id IN (SELECT value FROM json_each(:ids));

-- name: leased_deliveries
-- The pending rows leased to :worker_id until exactly :lease_until: what a claim whose answer
-- was lost (it failed after it committed) leased, taken back when that claim is retried.
SELECT id, endpoint_id, event_id, event_type, url, payload, status, attempts_json,
       attempt_count, last_latency_ms, last_error, created_at, next_attempt_at, completed_at,
       lease_owner, lease_expires_at, to_hash, from_hash, ordering_key
FROM kmsg_webhook_deliveries
WHERE lease_owner = :worker_id AND lease_expires_at = :lease_until AND status = 'pending';

-- name: claim_deliveries
-- Lease up to :limit due pending rows (oldest due first) to :worker_id until :lease_until.
-- Expired leases are claimable. Run as a statement of its own (autocommit): SQLite takes the
-- write lock when it starts. Row order is not guaranteed; the columns come in the order the
-- store decodes them (codec.DELIVERY_ROW_COLUMNS).
-- INDEXED BY: without ANALYZE statistics the planner prefers the status index and sorts.
-- Ordered delivery: a row with an ordering key waits while an earlier row (smaller rowid: the
-- store order) of its endpoint and key is pending, leased or not; rows without a key never
-- look (the partial ordering index is empty without ordered endpoints).
UPDATE kmsg_webhook_deliveries
SET lease_owner = :worker_id, lease_expires_at = :lease_until
WHERE id IN (
    SELECT c.id
    FROM kmsg_webhook_deliveries AS c INDEXED BY idx_kmsg_webhook_deliveries_due
    WHERE c.status = 'pending'
      AND c.next_attempt_at <= :now
      AND (c.lease_expires_at IS NULL OR c.lease_expires_at <= :now)
      AND c.endpoint_id NOT IN (SELECT value FROM json_each(:exclude))
      AND (c.ordering_key IS NULL OR NOT EXISTS (
          SELECT 1
          FROM kmsg_webhook_deliveries AS e INDEXED BY idx_kmsg_webhook_deliveries_ordering
          WHERE e.status = 'pending' AND e.ordering_key IS NOT NULL
            AND e.endpoint_id = c.endpoint_id AND e.ordering_key = c.ordering_key
            AND e.rowid < c.rowid))
    ORDER BY c.next_attempt_at, c.id
    LIMIT :limit)
RETURNING id, endpoint_id, event_id, event_type, url, payload, status, attempts_json,
          attempt_count, last_latency_ms, last_error, created_at, next_attempt_at, completed_at,
          lease_owner, lease_expires_at, to_hash, from_hash, ordering_key;

-- name: delete_finished
-- Retention: delete up to :limit of the oldest rows of one final :status created before
-- :before, found through the status index (rowids, read from the index alone). One statement
-- of its own (autocommit), like the claim: the hot paths wait behind one small delete at most.
DELETE FROM kmsg_webhook_deliveries
WHERE rowid IN (
    SELECT rowid
    FROM kmsg_webhook_deliveries INDEXED BY idx_kmsg_webhook_deliveries_status
    WHERE status = :status AND created_at < :before
    ORDER BY created_at, id
    LIMIT :limit);

-- name: count_excluded_due
-- How many rows claim_deliveries would walk past: the pending rows of the :exclude endpoints
-- due at :now, counted up to :most from the endpoint due index (a range per endpoint). A
-- claim that leaves endpoints alone walks below :most and goes per endpoint
-- (claim_deliveries_around) from there on.
SELECT count(*) FROM (
    SELECT 1
    FROM kmsg_webhook_deliveries INDEXED BY idx_kmsg_webhook_deliveries_endpoint_due
    WHERE status = 'pending'
      AND endpoint_id IN (SELECT value FROM json_each(:exclude))
      AND next_attempt_at <= :now
    LIMIT :most);

-- name: claim_deliveries_around
-- claim_deliveries when :exclude is not empty, without reading the excluded endpoints' rows:
-- the endpoints with pending rows are found one index step each (a skip scan of the endpoint
-- due index), and each endpoint not excluded gives its earliest :limit due rows; the earliest
-- :limit of those are leased. Same rows as claim_deliveries would lease; its cost follows
-- the number of endpoints with pending rows, not the excluded backlog. INDEXED BY: as in
-- claim_deliveries (the planner prefers the status index without statistics).
UPDATE kmsg_webhook_deliveries
SET lease_owner = :worker_id, lease_expires_at = :lease_until
WHERE id IN (
    WITH RECURSIVE endpoint (id) AS (
        SELECT min(endpoint_id)
        FROM kmsg_webhook_deliveries INDEXED BY idx_kmsg_webhook_deliveries_endpoint_due
        WHERE status = 'pending'
        UNION ALL
        SELECT (SELECT min(n.endpoint_id)
                FROM kmsg_webhook_deliveries AS n
                     INDEXED BY idx_kmsg_webhook_deliveries_endpoint_due
                WHERE n.status = 'pending' AND n.endpoint_id > endpoint.id)
        FROM endpoint WHERE endpoint.id IS NOT NULL)
    SELECT c.id
    FROM endpoint AS p, kmsg_webhook_deliveries AS c
    WHERE p.id IS NOT NULL
      AND p.id NOT IN (SELECT value FROM json_each(:exclude))
      AND c.id IN (
          SELECT x.id
          FROM kmsg_webhook_deliveries AS x INDEXED BY idx_kmsg_webhook_deliveries_endpoint_due
          WHERE x.endpoint_id = p.id AND x.status = 'pending'
            AND x.next_attempt_at <= :now
            AND (x.lease_expires_at IS NULL OR x.lease_expires_at <= :now)
            AND (x.ordering_key IS NULL OR NOT EXISTS (
                SELECT 1
                FROM kmsg_webhook_deliveries AS e INDEXED BY idx_kmsg_webhook_deliveries_ordering
                WHERE e.status = 'pending' AND e.ordering_key IS NOT NULL
                  AND e.endpoint_id = x.endpoint_id AND e.ordering_key = x.ordering_key
                  AND e.rowid < x.rowid))
          ORDER BY x.next_attempt_at, x.id
          LIMIT :limit)
    ORDER BY c.next_attempt_at, c.id
    LIMIT :limit)
RETURNING id, endpoint_id, event_id, event_type, url, payload, status, attempts_json,
          attempt_count, last_latency_ms, last_error, created_at, next_attempt_at, completed_at,
          lease_owner, lease_expires_at, to_hash, from_hash, ordering_key;

-- name: record_outcomes
-- Apply a batch of attempt outcomes where the worker still holds the lease: append the attempt
-- keeping the newest ?1, count it, set status and times, drop the lease. {rows} stands for one
-- "(?, ?, ?, ?, ?, ?, ?, ?)" group per outcome: id, worker_id, attempt (JSON text or NULL),
-- status, next_attempt_at, completed_at, last_error, latency_ms (the store sends at most 1000
-- per statement). ?1, the cap, comes first in the text, so each unnumbered ? after it takes
-- the next number: the groups bind from ?2 on. Binding measured a third faster per row than
-- reading one JSON array with json_each, which re-parses the element for every column. The
-- statement starts with UPDATE (no WITH) so the driver reports its change count, which the
-- store reads instead of RETURNING rows (as for insert_deliveries). Run as a statement of its
-- own (autocommit), like the claim.
UPDATE kmsg_webhook_deliveries AS d
SET attempts_json = CASE
        WHEN o.attempt IS NULL THEN d.attempts_json
        -- Below the cap (the usual case) append in place; rebuild only to drop the oldest.
        WHEN json_array_length(d.attempts_json) < ?1
            THEN json_insert(d.attempts_json, '$[#]', json(o.attempt))
        ELSE (SELECT json_group_array(json(a.value))
              FROM json_each(json_insert(d.attempts_json, '$[#]', json(o.attempt))) AS a
              WHERE a.key > json_array_length(d.attempts_json) - ?1)
    END,
    attempt_count = d.attempt_count + (o.attempt IS NOT NULL),
    last_latency_ms = coalesce(o.latency_ms, d.last_latency_ms),
    status = o.status,
    next_attempt_at = o.next_attempt_at,
    completed_at = o.completed_at,
    last_error = o.last_error,
    lease_owner = NULL,
    lease_expires_at = NULL
FROM (SELECT column1 AS id, column2 AS worker_id, column3 AS attempt, column4 AS status,
             column5 AS next_attempt_at, column6 AS completed_at, column7 AS last_error,
             column8 AS latency_ms
      FROM (VALUES {rows})) AS o
WHERE d.id = o.id AND d.lease_owner = o.worker_id;

-- The queries below differ from PostgreSQL's; the other cold queries of the SQLite, PostgreSQL
-- and D1 stores are in shared.sql. D1 binds parameters by position only: its store turns each
-- :name into a numbered parameter.

-- name: where_statuses
-- Filter fragment: the status is one of the JSON array :statuses.
status IN (SELECT value FROM json_each(:statuses))

-- name: where_ids
-- Filter fragment: the id is one of the JSON array :ids.
id IN (SELECT value FROM json_each(:ids))

-- name: endpoint_rewrite_sealed
-- Compare-and-set of an endpoint's sealed fields (JSON compared after json() normalisation);
-- returns the id when it applied.
UPDATE kmsg_webhook_endpoints
SET secret = :secret, previous_secrets_json = :previous_secrets_json,
    headers_json = :headers_json, client_key = :client_key
WHERE id = :id
  AND secret IS :expected_secret
  AND json(previous_secrets_json) = json(:expected_previous_secrets_json)
  AND json(headers_json) = json(:expected_headers_json)
  AND client_key IS :expected_client_key
RETURNING id;

-- name: release_deliveries
-- Give back the leases :worker_id holds on the ids in the JSON array :ids; returns when the
-- released rows are due.
UPDATE kmsg_webhook_deliveries
SET lease_owner = NULL, lease_expires_at = NULL
WHERE lease_owner = :worker_id AND id IN (SELECT value FROM json_each(:ids))
RETURNING next_attempt_at;

-- name: finished_tallies
-- Rows finished from :since to :now, by finished status, per epoch minute (kind 'minute') and per
-- endpoint (kind 'endpoint'). The partial index on completed_at serves the window. The endpoint
-- is grouped as an expression: on the bare column SQLite's planner walks the endpoint index,
-- i.e. the whole table, to save sorting the window's rows.
SELECT kind, key,
       sum(status = 'success') AS success,
       sum(status = 'failed') AS failed,
       sum(status = 'exhausted') AS exhausted
FROM (SELECT 'minute' AS kind, completed_at / 60000 AS key, status
      FROM kmsg_webhook_deliveries
      WHERE status <> 'pending' AND completed_at >= :since AND completed_at <= :now
      UNION ALL
      SELECT 'endpoint', coalesce(endpoint_id, ''), status
      FROM kmsg_webhook_deliveries
      WHERE status <> 'pending' AND completed_at >= :since AND completed_at <= :now)
GROUP BY kind, key;

-- The connection and its file (SQLite store only). SQLite parses a PRAGMA's value as a literal
-- and refuses a bound parameter there, so {ms} and {pages} are filled in by the store, with
-- integers it formats itself.

-- name: set_busy_timeout
-- How long SQLite waits for another process's write lock, in milliseconds.
PRAGMA busy_timeout = {ms};

-- name: page_count
PRAGMA page_count;

-- name: use_incremental_vacuum
-- For a new, empty file only (an existing one keeps its mode until a VACUUM, and setting it
-- there would wait for the write lock): purges can hand freed pages back.
PRAGMA auto_vacuum = INCREMENTAL;

-- name: use_wal
PRAGMA journal_mode = WAL;

-- name: free_pages
-- The vacuum mode (2: incremental), the free pages and all pages of the file.
SELECT * FROM pragma_auto_vacuum(), pragma_freelist_count(), pragma_page_count();

-- name: incremental_vacuum
-- Hand up to {pages} free pages back to the filesystem. Each step of the pragma frees one page:
-- run it with executescript, which steps it to the end.
PRAGMA incremental_vacuum({pages});

-- name: checkpoint_truncate
-- Copy the WAL into the database file and truncate it.
PRAGMA wal_checkpoint(TRUNCATE);
