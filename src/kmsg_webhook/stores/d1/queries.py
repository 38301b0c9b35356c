"""Every SQL statement of the D1 backend, by name, with one line on what it does.

``{e}`` and ``{d}`` stand for the (validated, quoted) endpoint and delivery tables; the store
formats them once. D1 has no ``BEGIN`` and no ``SKIP LOCKED``: what must be atomic is one
statement, or several sent as one batch (D1 runs a batch as a single transaction). Lists of
values are bound as one JSON-array parameter and expanded with ``json_each`` so they never
count against the 100-parameter limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..protocol import ADDED_DELIVERY_COLUMNS
from .rows import DELIVERY_INSERT_COLUMNS, ENDPOINT_UPDATE_COLUMNS, ENDPOINT_WRITE_COLUMNS

#: Delivery columns an insert binds: the row codec's, then the lookup hashes and ordering key.
DELIVERY_WRITE_COLUMNS: tuple[str, ...] = (*DELIVERY_INSERT_COLUMNS, *ADDED_DELIVERY_COLUMNS)

# -- endpoints --------------------------------------------------------------------------------

#: Rows that would clash with an endpoint being added: same id, or same URL.
ENDPOINT_CLASHES = "SELECT * FROM {e} WHERE id = ?1 OR url = ?2"

#: Add an endpoint unless its id or URL is taken; returns the id when it was added.
ENDPOINT_INSERT = (
    "INSERT OR IGNORE INTO {e} ("
    + ", ".join(ENDPOINT_WRITE_COLUMNS)
    + ") VALUES ("
    + ", ".join("?" for _ in ENDPOINT_WRITE_COLUMNS)
    + ") RETURNING id"
)

#: Does this endpoint id exist?
ENDPOINT_EXISTS = "SELECT id FROM {e} WHERE id = ?1"

#: Which other endpoint uses this URL?
ENDPOINT_URL_OWNER = "SELECT id FROM {e} WHERE url = ?1 AND id <> ?2"

#: Replace an endpoint's fields unless another endpoint holds its URL; returns the id if done.
# The health columns are left as stored (only record_health writes them; see codec.py).
_ENDPOINT_SET = ", ".join(
    f"{c} = ?{i}" for i, c in enumerate(ENDPOINT_UPDATE_COLUMNS, start=1) if c != "id"
)
_ENDPOINT_UPDATE_WHERE = (
    " WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM {e} AS other WHERE other.url = ?2"
    " AND other.id <> ?1) RETURNING id"
)
ENDPOINT_UPDATE = "UPDATE {e} SET " + _ENDPOINT_SET + _ENDPOINT_UPDATE_WHERE
#: The same, clearing the failure counters (re-enabling an endpoint).
ENDPOINT_UPDATE_RESETTING_HEALTH = (
    "UPDATE {e} SET "
    + _ENDPOINT_SET
    + ", consecutive_failures = 0, failing_since = NULL"
    + _ENDPOINT_UPDATE_WHERE
)

#: Compare-and-set of an endpoint's sealed fields (?2-?5 new; ?6-?9 expected, JSON compared
#: after json() normalisation); returns the id when it applied.
ENDPOINT_REWRITE_SEALED = (
    "UPDATE {e} SET secret = ?2, previous_secrets_json = ?3, headers_json = ?4, client_key = ?5"
    " WHERE id = ?1 AND secret IS ?6 AND json(previous_secrets_json) = json(?7)"
    " AND json(headers_json) = json(?8) AND client_key IS ?9 RETURNING id"
)

#: Delete an endpoint; returns its id when it existed.
ENDPOINT_DELETE = "DELETE FROM {e} WHERE id = ?1 RETURNING id"

#: One endpoint.
ENDPOINT_GET = "SELECT * FROM {e} WHERE id = ?1"

#: All endpoints, most recently updated first.
ENDPOINT_LIST = "SELECT * FROM {e} ORDER BY updated_at DESC, id DESC"

#: A success heals the endpoint's health counters.
ENDPOINT_HEALTH_SUCCESS = (
    "UPDATE {e} SET consecutive_failures = 0, failing_since = NULL, last_success_at = ?2"
    " WHERE id = ?1 RETURNING *"
)

#: Failures add up; the failing period starts at the first one.
ENDPOINT_HEALTH_FAILURE = (
    "UPDATE {e} SET consecutive_failures = consecutive_failures + ?2,"
    " failing_since = COALESCE(failing_since, ?3) WHERE id = ?1 RETURNING *"
)

# -- deliveries -------------------------------------------------------------------------------

#: Multi-row insert head; the store appends as many ``(?, ...)`` groups as fit the limits.
#: Existing (endpoint_id, event_id) pairs and ids are skipped; returns the ids written.
DELIVERY_INSERT_HEAD = (
    "INSERT OR IGNORE INTO {d} (" + ", ".join(DELIVERY_WRITE_COLUMNS) + ") VALUES "
)
DELIVERY_INSERT_ROW = "(" + ", ".join("?" for _ in DELIVERY_WRITE_COLUMNS) + ")"
DELIVERY_INSERT_TAIL = " RETURNING id"

#: Which of these ids exist (reconciling an insert whose first attempt may have applied).
DELIVERY_IDS_PRESENT = "SELECT id FROM {d} WHERE id IN (SELECT value FROM json_each(?1))"

#: Lease up to ?5 due pending rows whose lease is free or expired, oldest due first, skipping
#: the endpoints in the JSON array ?4. One statement, so no two workers take the same row.
#: A row with an ordering key waits while an earlier row (smaller rowid: the store order) of
#: its endpoint and key is pending; rows without a key never look (as the SQLite backend).
DELIVERY_CLAIM = (
    "UPDATE {d} SET lease_owner = ?1, lease_expires_at = ?2"
    " WHERE id IN ("
    "SELECT id FROM {d} AS c WHERE status = 'pending' AND next_attempt_at <= ?3"
    " AND (lease_expires_at IS NULL OR lease_expires_at <= ?3)"
    " AND endpoint_id NOT IN (SELECT value FROM json_each(?4))"
    " AND (c.ordering_key IS NULL OR NOT EXISTS (SELECT 1 FROM {d} AS e"
    " WHERE e.status = 'pending' AND e.ordering_key IS NOT NULL"
    " AND e.endpoint_id = c.endpoint_id AND e.ordering_key = c.ordering_key"
    " AND e.rowid < c.rowid))"
    " ORDER BY next_attempt_at, id LIMIT ?5)"
    " AND status = 'pending' AND (lease_expires_at IS NULL OR lease_expires_at <= ?3)"
    " RETURNING *"
)

#: Apply one attempt outcome if worker ?2 still holds the lease: append the attempt ?3 (JSON,
#: or NULL) keeping the newest ?4, count it, set status ?5, due time ?6, completion ?7 and
#: error ?8, and clear the lease. A replay finds the lease cleared and changes nothing.
DELIVERY_RECORD = (
    "UPDATE {d} SET"
    " attempts_json = CASE WHEN ?3 IS NULL THEN attempts_json ELSE ("
    "SELECT json_group_array(json(value)) FROM ("
    "SELECT key, value FROM json_each(json_insert(attempts_json, '$[#]', json(?3)))"
    " WHERE key > json_array_length(attempts_json) - ?4 ORDER BY key)) END,"
    " attempt_count = attempt_count + (CASE WHEN ?3 IS NULL THEN 0 ELSE 1 END),"
    " last_latency_ms = CASE WHEN ?3 IS NULL THEN last_latency_ms"
    " ELSE json_extract(?3, '$.latency_ms') END,"
    " status = ?5, next_attempt_at = ?6, completed_at = ?7, last_error = ?8,"
    " lease_owner = NULL, lease_expires_at = NULL"
    " WHERE id = ?1 AND lease_owner = ?2 RETURNING id"
)

#: Give back leases worker ?1 holds on the ids in JSON array ?2.
DELIVERY_RELEASE = (
    "UPDATE {d} SET lease_owner = NULL, lease_expires_at = NULL"
    " WHERE lease_owner = ?1 AND id IN (SELECT value FROM json_each(?2))"
)

#: One delivery.
DELIVERY_GET = "SELECT * FROM {d} WHERE id = ?1"

#: A page of deliveries, newest first (WHERE and LIMIT appended by the store).
DELIVERY_LIST = "SELECT * FROM {d}{where} ORDER BY created_at DESC, id DESC LIMIT ?"

#: Counts by status, attempts and mean last-attempt latency over a filter.
DELIVERY_STATS = (
    "SELECT COUNT(*) AS total,"
    " COALESCE(SUM(status = 'pending'), 0) AS pending,"
    " COALESCE(SUM(status = 'success'), 0) AS success,"
    " COALESCE(SUM(status = 'failed'), 0) AS failed,"
    " COALESCE(SUM(status = 'exhausted'), 0) AS exhausted,"
    " COALESCE(SUM(attempt_count), 0) AS total_attempts,"
    " AVG(last_latency_ms) AS average_latency_ms"
    " FROM {d}{where}"
)

#: Pending rows at ?1 (epoch ms): due and claimable, scheduled later, under a live lease.
DELIVERY_QUEUE_STATS = (
    "SELECT COALESCE(SUM(due), 0) AS due, COALESCE(SUM(later), 0) AS scheduled,"
    " COALESCE(SUM(leased), 0) AS leased,"
    " MIN(CASE WHEN due THEN next_attempt_at END) AS oldest_due_at,"
    " MIN(CASE WHEN later THEN next_attempt_at END) AS next_due_at"
    " FROM (SELECT next_attempt_at,"
    " (lease_expires_at IS NOT NULL AND lease_expires_at > ?1) AS leased,"
    " ((lease_expires_at IS NULL OR lease_expires_at <= ?1) AND next_attempt_at <= ?1) AS due,"
    " ((lease_expires_at IS NULL OR lease_expires_at <= ?1) AND next_attempt_at > ?1) AS later"
    " FROM {d} WHERE status = 'pending')"
)

#: Counts by event type over a filter.
DELIVERY_STATS_BY_TYPE = "SELECT event_type, COUNT(*) AS n FROM {d}{where} GROUP BY event_type"

#: Counts of the finished statuses (success, failed, exhausted) for a GROUP BY.
_TALLY = (
    "SUM(CASE WHEN status = 'success' THEN 1 ELSE 0 END) AS success,"
    " SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failed,"
    " SUM(CASE WHEN status = 'exhausted' THEN 1 ELSE 0 END) AS exhausted"
)
#: Rows finished from ?1 to ?2 (epoch ms): the partial index on completed_at serves them.
_FINISHED = " FROM {d} WHERE status <> 'pending' AND completed_at >= ?1 AND completed_at <= ?2"

#: Finished deliveries per epoch minute, with the counts of each finished status.
DELIVERY_FINISHED_PER_MINUTE = (
    f"SELECT completed_at / 60000 AS minute, {_TALLY}{_FINISHED} GROUP BY minute"
)

#: Finished deliveries per endpoint (grouped by an expression: see SqlDeliveryStore.activity).
DELIVERY_FINISHED_PER_ENDPOINT = (
    f"SELECT COALESCE(endpoint_id, '') AS endpoint, {_TALLY}{_FINISHED} GROUP BY endpoint"
)

#: Last-attempt latencies of the newest ?3 rows finished from ?1 to ?2 at the nearest-rank
#: positions of p50, p95 and p99 (store.percentile_ranks), with the sample count.
DELIVERY_LATENCY_PERCENTILES = (
    "SELECT samples, position, latency FROM ("
    " SELECT latency, ROW_NUMBER() OVER (ORDER BY latency) AS position,"
    " COUNT(*) OVER () AS samples FROM ("
    " SELECT last_latency_ms AS latency" + _FINISHED + " AND last_latency_ms IS NOT NULL"
    " ORDER BY completed_at DESC LIMIT ?3))"
    " WHERE position IN ((50 * samples + 99) / 100, (95 * samples + 99) / 100,"
    " (99 * samples + 99) / 100)"
)

#: Put terminal rows matching a filter back to pending, due at ?1 (attempts kept).
DELIVERY_REQUEUE = (
    "UPDATE {d} SET status = 'pending', next_attempt_at = ?, completed_at = NULL,"
    " lease_owner = NULL, lease_expires_at = NULL{where}"
)

#: Delete terminal rows created before ?1.
DELIVERY_PURGE = "DELETE FROM {d} WHERE status <> 'pending' AND created_at < ?"

#: Delete up to ?3 rows of status ?1 created before ?2, oldest first (retention).
DELIVERY_PURGE_FINISHED = (
    "DELETE FROM {d} WHERE id IN (SELECT id FROM {d} WHERE status = ?1 AND created_at < ?2"
    " ORDER BY created_at, id LIMIT ?3)"
)

#: Up to ?2 rows with an id after ?1 ('' for the start), in id order (maintenance walks).
DELIVERY_SCAN = "SELECT * FROM {d} WHERE id > ?1 ORDER BY id LIMIT ?2"

#: Set payload ?3 and lookup hashes ?4/?5 while the stored payload is still ?2.
DELIVERY_REWRITE_PAYLOAD = (
    "UPDATE {d} SET payload = ?3, to_hash = ?4, from_hash = ?5 WHERE id = ?1 AND payload = ?2"
    " RETURNING id"
)


@dataclass(frozen=True, slots=True)
class Where:
    """A WHERE clause (empty, or starting with `` WHERE``) and its parameters."""

    sql: str
    params: tuple[object, ...]

    @staticmethod
    def of(clauses: Sequence[tuple[str, Sequence[object]]]) -> Where:
        if not clauses:
            return Where("", ())
        sql = " WHERE " + " AND ".join(c for c, _ in clauses)
        return Where(sql, tuple(p for _, ps in clauses for p in ps))
