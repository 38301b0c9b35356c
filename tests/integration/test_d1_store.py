"""The D1 store beyond the conformance suite: schema, URLs, batching, limits, the runtime on D1.

The store protocol itself is covered by tests/conformance/test_store_conformance.py (its ``d1``
rows).
"""

from __future__ import annotations

import dataclasses
import re
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kmsg_webhook import (
    AttemptOutcome,
    ConfigError,
    DeliveryFilter,
    DeliveryStatus,
    EndpointFilters,
    EndpointInput,
    EndpointStatus,
    RetiredSecret,
    RetryConfig,
    StoreError,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEventType,
    WebhookPersistence,
)
from kmsg_webhook.stores.d1 import (
    CLOUDFLARE_API_BASE_URL,
    D1Client,
    D1QueryError,
    D1SchemaError,
    D1Statement,
    build_webhook_schema_sql,
    create_d1_persistence,
    d1_persistence_from_url,
    initialize_webhook_schema,
    parse_d1_url,
    redact_url,
)
from kmsg_webhook.stores.d1.queries import load_queries
from kmsg_webhook.stores.d1.store import D1DeliveryStore
from kmsg_webhook.stores.sqlfiles import TableNames, schema_sql
from support.d1 import FakeD1, LocalD1, fresh_tables

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def delivery(n: int, *, endpoint_id: str = "ep_1", payload: str = "{}") -> WebhookDelivery:
    return WebhookDelivery(
        id=f"dlv_{n:05d}",
        endpoint_id=endpoint_id,
        event_id=f"evt_{n}",
        event_type=WebhookEventType.MESSAGE_SENT,
        url="https://hooks.example.com/in",
        payload=payload,
        status=DeliveryStatus.PENDING,
        created_at=T0,
        next_attempt_at=T0,
    )


def _sql_codec() -> Any:
    """The SQLite backend's row codec, when it (and SQLAlchemy) can be imported."""
    try:
        from kmsg_webhook.stores.sql import codec
    except ImportError:
        return None
    return codec


@pytest.fixture
async def d1(local_d1: LocalD1) -> AsyncIterator[tuple[WebhookPersistence, D1Client]]:
    client = local_d1.client()
    endpoints, deliveries = fresh_tables()
    persistence = create_d1_persistence(
        client, endpoint_table_name=endpoints, delivery_table_name=deliveries, close_client=True
    )
    try:
        yield persistence, client
    finally:
        assert persistence.close is not None
        await persistence.close()


# -- schema -----------------------------------------------------------------------------------


def test_schema_sql_uses_the_given_names_and_is_idempotent() -> None:
    statements = build_webhook_schema_sql(
        endpoint_table_name="endpoints_custom", delivery_table_name="deliveries_custom"
    )
    text = "\n".join(statements)
    assert '"endpoints_custom"' in text and '"deliveries_custom"' in text
    assert statements[0].startswith('CREATE TABLE IF NOT EXISTS "endpoints_custom"')
    assert all("IF NOT EXISTS" in s for s in statements)
    assert "kmsg_webhook" not in text
    defaults = "\n".join(build_webhook_schema_sql())
    assert '"kmsg_webhook_endpoints"' in defaults and '"kmsg_webhook_deliveries"' in defaults
    assert '"idx_kmsg_webhook_endpoints_url"' in defaults


def test_d1_runs_the_sqlite_text_with_numbered_parameters() -> None:
    """D1 binds by position only: each :name of the shared SQLite query becomes one ?N."""
    found = load_queries(TableNames("hooks", "outbox"))
    claim = found["claim_deliveries"]
    assert claim.names == ("worker_id", "lease_until", "now", "exclude", "limit")
    assert claim.sql.count("?3") == 2 and not re.search(r"(?<!:):\w", claim.sql)
    assert '"outbox"' in claim.sql and 'INDEXED BY "idx_outbox_due"' in claim.sql
    assert "--" not in claim.sql  # comment lines are dropped, so their :words bind nothing
    statement = claim.bind(worker_id="w", lease_until=2, now=1, exclude="[]", limit=5)
    assert statement.params == ("w", 2, 1, "[]", 5)
    record = found["record_outcomes"]  # positional already: ?1, then one group per outcome
    assert record.names == () and "?1" in record.sql and "{rows}" in record.sql
    assert set(found) >= {"insert_deliveries", "existing_delivery_ids", "endpoint_update"}


@pytest.mark.parametrize(
    "name", ["bad;name", "1abc", 'a"b', "", "x" * 49, "sqlite_master", "_cf_KV", "a b"]
)
def test_table_names_are_validated(name: str) -> None:
    with pytest.raises(ConfigError):
        build_webhook_schema_sql(endpoint_table_name=name)


def test_table_names_must_differ() -> None:
    with pytest.raises(ConfigError):
        build_webhook_schema_sql(endpoint_table_name="same", delivery_table_name="same")


def test_schema_matches_the_sqlite_backend_column_for_column() -> None:
    """D1 speaks SQLite: keep the D1 tables identical to the SQLite backend's (drift guard)."""

    def describe(db: sqlite3.Connection, table: str) -> tuple[object, ...]:
        columns = db.execute(f"PRAGMA table_info({table})").fetchall()
        indexes = sorted(
            (
                name,
                unique,
                partial,
                tuple(c[2] for c in db.execute(f"PRAGMA index_xinfo({name})") if c[5]),
            )
            for _, name, unique, _, partial in db.execute(f"PRAGMA index_list({table})")
            if not name.startswith("sqlite_autoindex")
        )
        return tuple(columns), tuple(indexes)

    theirs = sqlite3.connect(":memory:")
    theirs.executescript(schema_sql("sqlite"))
    ours = sqlite3.connect(":memory:")
    for statement in build_webhook_schema_sql():
        ours.execute(statement)
    for table in ("kmsg_webhook_endpoints", "kmsg_webhook_deliveries"):
        assert describe(ours, table) == describe(theirs, table), table


async def test_tables_of_an_earlier_version_get_the_new_columns(local_d1: LocalD1) -> None:
    """Tables written before the lookup-hash columns existed are brought up to date."""
    endpoints, deliveries = fresh_tables()
    current = build_webhook_schema_sql(
        endpoint_table_name=endpoints, delivery_table_name=deliveries
    )
    older = [
        "\n".join(line for line in statement.splitlines() if "_hash" not in line).replace(
            "INTEGER,\n)", "INTEGER\n)"
        )
        for statement in current
        if "_hash" not in statement.splitlines()[0]
    ]
    async with local_d1.client() as client:
        await client.batch([D1Statement(sql) for sql in older])
        columns = await client.query("SELECT name FROM pragma_table_info(?)", [deliveries])
        assert "to_hash" not in {r["name"] for r in columns.rows}
        persistence = create_d1_persistence(
            client, endpoint_table_name=endpoints, delivery_table_name=deliveries
        )
        await persistence.delivery_store.insert_many([delivery(1)])
        assert await persistence.delivery_store.get("dlv_00001") == delivery(1)
        columns = await client.query("SELECT name FROM pragma_table_info(?)", [deliveries])
        assert {"to_hash", "from_hash"} <= {r["name"] for r in columns.rows}


async def test_an_endpoint_table_with_the_older_status_check_is_rebuilt(
    local_d1: LocalD1,
) -> None:
    """Tables from before endpoint verification cannot hold ``pending_verification`` until
    the endpoint table is rebuilt (rows kept)."""
    endpoints, deliveries = fresh_tables()
    older = [
        sql.replace(", 'pending_verification'", "")
        for sql in build_webhook_schema_sql(
            endpoint_table_name=endpoints, delivery_table_name=deliveries
        )
    ]
    kept = WebhookEndpoint(
        id="ep_kept",
        url="https://kept.example.com/",
        events=(WebhookEventType.MESSAGE_SENT,),
        created_at=T0,
        updated_at=T0,
        secret="whsec_c2VjcmV0",
    )
    pending = dataclasses.replace(
        kept,
        id="ep_new",
        url="https://new.example.com/",
        status=EndpointStatus.PENDING_VERIFICATION,
    )
    async with local_d1.client() as client:
        await client.batch([D1Statement(sql) for sql in older])
        off = create_d1_persistence(
            client,
            endpoint_table_name=endpoints,
            delivery_table_name=deliveries,
            initialize_schema=False,
        )
        await off.endpoint_store.add(kept)
        with pytest.raises(StoreError):  # insert-or-ignore skips a row the CHECK refuses
            await off.endpoint_store.add(pending)
        persistence = create_d1_persistence(
            client, endpoint_table_name=endpoints, delivery_table_name=deliveries
        )
        await persistence.endpoint_store.add(pending)
        assert await persistence.endpoint_store.get("ep_kept") == kept
        assert await persistence.endpoint_store.get("ep_new") == pending
        names = await client.query(
            "SELECT name FROM sqlite_master WHERE name LIKE ?", [endpoints + "%"]
        )
        assert f"{endpoints}_rebuild" not in {r["name"] for r in names.rows}


async def test_init_is_one_round_trip_and_idempotent(local_d1: LocalD1) -> None:
    endpoints, deliveries = fresh_tables()
    async with local_d1.client() as client:
        for _ in range(2):
            before = client.round_trips
            await initialize_webhook_schema(
                client, endpoint_table_name=endpoints, delivery_table_name=deliveries
            )
            assert client.round_trips - before == 1
        names = await client.query(
            "SELECT name FROM sqlite_master WHERE name LIKE ? ORDER BY name",
            [endpoints.split("_")[0] + "%"],
        )
        assert {r["name"] for r in names.rows} >= {endpoints, deliveries}


async def test_schema_is_created_on_first_use_unless_disabled(local_d1: LocalD1) -> None:
    endpoints, deliveries = fresh_tables()
    async with local_d1.client() as client:
        off = create_d1_persistence(
            client,
            endpoint_table_name=endpoints,
            delivery_table_name=deliveries,
            initialize_schema=False,
        )
        with pytest.raises(D1QueryError, match="no such table"):
            await off.delivery_store.get("x")
        on = create_d1_persistence(
            client, endpoint_table_name=endpoints, delivery_table_name=deliveries
        )
        before = client.round_trips
        assert await on.delivery_store.get("x") is None  # init, then the read
        assert await on.endpoint_store.list() == []  # init is shared and done once
        assert client.round_trips - before == 3
        assert await off.delivery_store.get("x") is None


async def test_tables_of_the_original_typescript_adapter_are_upgraded_on_request(
    local_d1: LocalD1,
) -> None:
    endpoints, deliveries = fresh_tables()
    original = [
        f"CREATE TABLE IF NOT EXISTS {endpoints} (id TEXT PRIMARY KEY, url TEXT NOT NULL,"
        " name TEXT, description TEXT, active INTEGER NOT NULL, events_json TEXT NOT NULL,"
        " headers_json TEXT, secret TEXT, retry_config_json TEXT, filters_json TEXT,"
        " created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, last_triggered_at INTEGER,"
        " status TEXT NOT NULL)",
        f"CREATE UNIQUE INDEX IF NOT EXISTS idx_{endpoints}_url ON {endpoints}(url)",
        f"CREATE TABLE IF NOT EXISTS {deliveries} (id TEXT PRIMARY KEY, endpoint_id TEXT NOT NULL,"
        " event_id TEXT NOT NULL, event_type TEXT, url TEXT NOT NULL, http_method TEXT NOT NULL,"
        " headers_json TEXT NOT NULL, payload TEXT NOT NULL, attempts_json TEXT NOT NULL,"
        " status TEXT NOT NULL, created_at INTEGER NOT NULL, completed_at INTEGER,"
        " next_retry_at INTEGER)",
        f"CREATE INDEX IF NOT EXISTS idx_{deliveries}_endpoint_id ON {deliveries}(endpoint_id)",
        f"CREATE INDEX IF NOT EXISTS idx_{deliveries}_created_at ON {deliveries}(created_at DESC)",
        f"INSERT INTO {endpoints} VALUES ('webhook_1', 'https://a.example.com/h', 'A', NULL, 1,"
        ' \'["message.sent"]\', NULL, \'s3cret\', \'{"maxRetries":2,"retryDelayMs":1000,'
        '"backoffMultiplier":2}\', \'{"providerId":["iwinv"]}\', 1767225600000,'
        " 1767225600000, NULL, 'active')",
        f"INSERT INTO {deliveries} VALUES ('delivery_1', 'webhook_1', 'evt_1', 'message.sent',"
        " 'https://a.example.com/h', 'POST', '{}', '{\"id\":\"evt_1\"}',"
        ' \'[{"attemptNumber":1,"timestamp":"2026-01-01T00:00:00.000Z","httpStatus":200,'
        '"responseBody":"ok","latencyMs":42}]\', \'success\', 1767225600000, 1767225600050,'
        " 1767225600000)",
    ]
    async with local_d1.client() as client:
        await client.batch([D1Statement(s) for s in original])
        plain = create_d1_persistence(
            client, endpoint_table_name=endpoints, delivery_table_name=deliveries
        )
        with pytest.raises(D1SchemaError, match="upgrade_original=True"):
            await plain.endpoint_store.list()
        upgrading = create_d1_persistence(
            client,
            endpoint_table_name=endpoints,
            delivery_table_name=deliveries,
            upgrade_original=True,
        )
        (endpoint,) = await upgrading.endpoint_store.list()
        assert (endpoint.id, endpoint.name, endpoint.secret, endpoint.active) == (
            "webhook_1",
            "A",
            "s3cret",
            True,
        )
        assert endpoint.retry_config is not None and endpoint.retry_config.max_retries == 2
        assert endpoint.filters is not None and endpoint.filters.provider_id == ("iwinv",)
        row = await upgrading.delivery_store.get("delivery_1")
        assert row is not None
        assert (row.status, row.attempt_count, row.next_attempt_at) == (
            DeliveryStatus.SUCCESS,
            1,
            None,
        )
        assert row.attempts[0].http_status == 200 and row.attempts[0].latency_ms == 42
        codec = _sql_codec()
        if codec is not None:  # the SQLite backend reads the upgraded rows too
            (raw_endpoint,) = (await client.query(f"SELECT * FROM {endpoints}")).rows
            assert codec.row_to_endpoint(raw_endpoint) == endpoint
            (raw_delivery,) = (await client.query(f"SELECT * FROM {deliveries}")).rows
            assert codec.row_to_delivery(raw_delivery) == row
        stats = await upgrading.delivery_store.stats(DeliveryFilter())
        assert (stats.success, stats.average_latency_ms) == (1, 42)
        # New rows go into the upgraded tables; the old (endpoint, event) pair stays unique.
        assert not await upgrading.delivery_store.insert_many(
            [delivery(1, endpoint_id="webhook_1")]
        )
        assert await upgrading.delivery_store.insert_many([delivery(2, endpoint_id="webhook_1")])


async def test_rows_read_back_through_the_sqlite_backend_codec(
    d1: tuple[WebhookPersistence, D1Client],
) -> None:
    """What D1 stores, the SQLite backend reads the same way (a database can move between them)."""
    codec = pytest.importorskip("kmsg_webhook.stores.rows")
    persistence, client = d1
    endpoint = WebhookEndpoint(
        id="ep_1",
        url="https://a.example.com/h",
        events=(WebhookEventType.MESSAGE_SENT,),
        created_at=T0,
        updated_at=T0 + timedelta(seconds=1),
        name="이름",
        headers={"X-A": "b"},
        secret="whsec_c2VjcmV0",
        previous_secrets=(RetiredSecret("whsec_b2xk", T0 + timedelta(days=1)),),
        retry_config=RetryConfig(max_retries=2, retry_delay_ms=1500),
        filters=EndpointFilters(provider_id=("iwinv",)),
        failing_since=T0,
    )
    await persistence.endpoint_store.add(endpoint)
    await persistence.delivery_store.insert_many([delivery(1, endpoint_id="ep_1")])
    (claimed,) = await persistence.delivery_store.claim(
        worker_id="w", now=T0, lease_until=T0 + timedelta(seconds=30), limit=1
    )
    attempt = WebhookAttempt(1, T0 + timedelta(microseconds=5), 12.5, 503, "busy", "HTTP 503")
    outcome = AttemptOutcome(claimed.id, "w", attempt, DeliveryStatus.PENDING, T0, None)
    assert await persistence.delivery_store.record([outcome]) == 1
    tables = persistence.delivery_store._t  # type: ignore[attr-defined]
    (erow,) = (await client.query(f"SELECT * FROM {tables.endpoints}")).rows
    (drow,) = (await client.query(f"SELECT * FROM {tables.deliveries}")).rows
    assert codec.row_to_endpoint(erow) == await persistence.endpoint_store.get("ep_1") == endpoint
    assert codec.row_to_delivery(drow) == await persistence.delivery_store.get(claimed.id)
    assert codec.row_to_delivery(drow).attempts == (attempt,)


# -- batching and limits ----------------------------------------------------------------------


async def test_every_operation_is_one_round_trip(
    d1: tuple[WebhookPersistence, D1Client],
) -> None:
    persistence, client = d1
    store = persistence.delivery_store
    assert persistence.init is not None
    await persistence.init()

    async def trips(coro: object) -> int:
        before = client.round_trips
        await coro  # type: ignore[misc]
        return client.round_trips - before

    rows = [delivery(n) for n in range(1, 1201)]
    assert await trips(store.insert_many(rows)) == 1
    claimed: list[WebhookDelivery] = []

    async def take() -> None:
        claimed.extend(
            await store.claim(
                worker_id="w", now=T0, lease_until=T0 + timedelta(seconds=30), limit=500
            )
        )

    assert await trips(take()) == 1
    attempt = WebhookAttempt(1, T0, 5.0, 200, "ok")
    outcomes = [
        AttemptOutcome(d.id, "w", attempt, DeliveryStatus.SUCCESS, None, T0) for d in claimed
    ]
    recorded: list[int] = []

    async def record() -> None:
        recorded.append(await store.record(outcomes))

    assert await trips(record()) == 1
    assert recorded == [500]
    assert await trips(store.release([d.id for d in rows], worker_id="w")) == 1
    assert await trips(store.stats(DeliveryFilter())) == 1
    assert await trips(store.requeue(DeliveryFilter(), now=T0)) == 1
    assert await trips(store.purge(older_than=T0)) == 1


async def test_bulk_inserts_are_chunked_to_the_parameter_limit(faulty_d1: FakeD1) -> None:
    endpoints, deliveries = fresh_tables()
    async with faulty_d1.client() as client:
        persistence = create_d1_persistence(
            client, endpoint_table_name=endpoints, delivery_table_name=deliveries
        )
        assert persistence.init is not None
        await persistence.init()
        faulty_d1.seen.clear()
        ids = await persistence.delivery_store.insert_many([delivery(n) for n in range(1, 301)])
    assert len(ids) == 300
    (request,) = faulty_d1.seen
    batch = request.body["batch"]
    assert len(batch) > 3
    assert all(len(s["params"]) <= 100 for s in batch)
    assert all(len(s["sql"].encode()) <= 100_000 for s in batch)


async def test_oversized_values_fail_before_anything_is_sent(
    d1: tuple[WebhookPersistence, D1Client],
) -> None:
    persistence, _ = d1
    store = persistence.delivery_store
    big = delivery(1, payload='"' + "x" * 2_000_001 + '"')
    with pytest.raises(Exception, match="per value") as caught:
        await store.insert_many([delivery(2), big])
    assert caught.typename == "D1LimitError"
    assert await store.get("dlv_00002") is None  # all or nothing


async def test_a_caller_transaction_cannot_be_joined(
    d1: tuple[WebhookPersistence, D1Client],
) -> None:
    persistence, _ = d1
    with pytest.raises(Exception, match="transaction"):
        await persistence.delivery_store.insert_many([delivery(1)], connection=object())


async def test_microseconds_are_dropped_consistently(
    d1: tuple[WebhookPersistence, D1Client],
) -> None:
    persistence, _ = d1
    store = persistence.delivery_store
    moment = T0 + timedelta(microseconds=123_456)
    row = WebhookDelivery(
        id="dlv_us",
        endpoint_id="ep",
        event_id="evt",
        event_type=WebhookEventType.MESSAGE_SENT,
        url="https://h.example.com/",
        payload="{}",
        status=DeliveryStatus.PENDING,
        created_at=moment,
        next_attempt_at=moment,
    )
    await store.insert_many([row])
    stored = await store.get("dlv_us")
    assert stored is not None
    assert stored.created_at == T0 + timedelta(milliseconds=123)
    (claimed,) = await store.claim(
        worker_id="w", now=moment, lease_until=moment + timedelta(seconds=1), limit=5
    )
    assert claimed.id == "dlv_us"
    page = await store.list(DeliveryFilter(), limit=1)
    assert page.items == (claimed,) and page.next_cursor is None


async def test_max_stored_attempts_must_be_positive(local_d1: LocalD1) -> None:
    async with local_d1.client() as client:
        with pytest.raises(ValueError):
            create_d1_persistence(client, max_stored_attempts=0)
    assert D1DeliveryStore  # the class is public for type annotations


# -- URLs -------------------------------------------------------------------------------------


def test_cloudflare_url_form() -> None:
    loc = parse_d1_url("d1://0123abcd/db-uuid-1")
    assert (loc.account_id, loc.database_id, loc.base_url, loc.token) == (
        "0123abcd",
        "db-uuid-1",
        CLOUDFLARE_API_BASE_URL,
        None,
    )
    persistence = d1_persistence_from_url(
        "d1://0123abcd/db-uuid-1", environ={"CLOUDFLARE_API_TOKEN": "env-token-xyz"}
    )
    client = persistence.endpoint_store.client  # type: ignore[attr-defined]
    assert client.base_url == CLOUDFLARE_API_BASE_URL
    assert client._token == "env-token-xyz"
    assert "env-token-xyz" not in repr(client)


def test_custom_base_url_forms() -> None:
    loc = parse_d1_url("d1+http://127.0.0.1:8787/acc/db?token=s3cr3t&endpoint_table=e1")
    assert loc.base_url == "http://127.0.0.1:8787/client/v4"
    assert (loc.account_id, loc.database_id, loc.token) == ("acc", "db", "s3cr3t")
    assert dict(loc.options) == {"endpoint_table": "e1"}
    assert "s3cr3t" not in repr(loc)
    behind = parse_d1_url("d1+https://example.com/d1-proxy/v2/acc/db")
    assert behind.base_url == "https://example.com/d1-proxy/v2/client/v4"
    v6 = parse_d1_url("d1+http://[::1]:8787/a/b")
    assert v6.base_url == "http://[::1]:8787/client/v4"


def test_token_precedence_and_options() -> None:
    url = "d1+http://127.0.0.1:8787/acc/db?token=from-url&delivery_table=d9&auto_init=false"
    env = {"CLOUDFLARE_API_TOKEN": "from-env"}
    given = d1_persistence_from_url(url, token="given", environ=env)
    assert given.endpoint_store.client._token == "given"  # type: ignore[attr-defined]
    from_url = d1_persistence_from_url(url, environ=env)
    assert from_url.endpoint_store.client._token == "from-url"  # type: ignore[attr-defined]
    assert from_url.delivery_store._t.delivery_table == "d9"  # type: ignore[attr-defined]
    assert from_url.endpoint_store._gate._done is True  # type: ignore[attr-defined]
    assert from_url.close is not None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgres://x/y", "not a D1 URL"),
        ("d1://only-account", "expected d1://"),
        ("d1://a/b/c", "expected d1://"),
        ("d1+http://127.0.0.1:8787/just-one", "expected d1\\+http://"),
        ("d1://a/b?tokn=x", "unknown D1 URL parameter 'tokn'"),
        ("d1://user:pw@a/b", "no credentials"),
        ("d1://a/b?auto_init=maybe", "true or false"),
        ("d1://a/b?endpoint_table=x;drop", "invalid table name"),
    ],
)
def test_bad_urls_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        d1_persistence_from_url(url, token="t")


def test_a_missing_token_is_a_config_error_that_redacts() -> None:
    with pytest.raises(ConfigError, match="CLOUDFLARE_API_TOKEN"):
        d1_persistence_from_url("d1://a/b", environ={})
    with pytest.raises(ConfigError) as caught:
        d1_persistence_from_url("d1://a/b?token=sekrit&tokn=1")
    assert "sekrit" not in str(caught.value)
    assert redact_url("d1+http://h:1/a/b?token=sekrit&x=1") == "d1+http://h:1/a/b?token=***&x=1"


# -- the runtime on D1 ------------------------------------------------------------------------


async def test_the_runtime_delivers_through_d1(
    local_d1: LocalD1, receiver, make_runtime, make_event
) -> None:  # type: ignore[no-untyped-def]
    endpoints, deliveries = fresh_tables()
    persistence = d1_persistence_from_url(
        local_d1.store_url(endpoint_table=endpoints, delivery_table=deliveries)
    )
    runtime = await make_runtime(persistence=persistence)
    client: D1Client = persistence.endpoint_store.client  # type: ignore[attr-defined]
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/receiver"), events=["message.sent"])
    )
    assert [e.id for e in await runtime.list_endpoints()] == [endpoint.id]
    before = client.round_trips
    sent = await runtime.emit_sync(make_event())
    assert len(sent) == 1 and sent[0].status is DeliveryStatus.SUCCESS
    assert len(receiver.at("/receiver")) == 1
    # Intake, then the attempt's result (and health): a handful of round trips per delivery.
    assert client.round_trips - before <= 4
    listed = await runtime.list_deliveries(DeliveryFilter(endpoint_id=endpoint.id))
    items = listed.items if hasattr(listed, "items") else listed
    assert [d.id for d in items] == [sent[0].id]
    assert re.fullmatch(r"dlv_[0-9a-f]{32}", sent[0].id)
