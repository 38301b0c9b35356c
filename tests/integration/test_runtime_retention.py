"""Retention: finished deliveries deleted by age per final status, the in-memory store bounded
by default, SQLite handing freed pages back. Runtimes send to a real local receiver."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web

from kmsg_webhook import (
    ConfigError,
    DeliveryFilter,
    DeliveryStatus,
    EndpointInput,
    RetentionPolicy,
    WebhookConfig,
    WebhookEventType,
    WebhookRuntimeService,
)
from kmsg_webhook.clock import ManualClock
from kmsg_webhook.stores.sql.sqlite import SQLiteDatabase
from support.runtime import EventFactory, RuntimeFactory, WaitUntil
from support.servers import Receiver

START = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
SENT = [WebhookEventType.MESSAGE_SENT]


def config(retention: RetentionPolicy, **kw: object) -> WebhookConfig:
    return WebhookConfig(jitter=False, retention=retention, **kw)  # type: ignore[arg-type]


async def _emit_and_send(
    runtime: WebhookRuntimeService, make_event: EventFactory, count: int, prefix: str = "e"
) -> None:
    for n in range(count):
        await runtime.emit(make_event(f"{prefix}{n}"))
    await runtime.flush()


async def _total(runtime: WebhookRuntimeService) -> int:
    return (await runtime.stats()).deliveries.total


def test_defaults_bound_the_memory_store_and_keep_durable_history() -> None:
    policy = WebhookConfig().retention
    assert (policy.success, policy.failed, policy.exhausted) == (None, None, None)
    assert policy.memory_max_rows == 100_000
    assert policy.memory_max_age == timedelta(hours=1)


@pytest.mark.parametrize(
    "bad",
    [
        {"success": timedelta(0)},
        {"failed": 30},
        {"memory_max_rows": 0},
        {"interval_ms": -1},
        {"batch_size": 0},
    ],
)
def test_a_bad_retention_setting_is_a_config_error(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="retention"):
        RetentionPolicy(**bad)  # type: ignore[arg-type]


def test_emit_timeout_and_retention_are_checked() -> None:
    with pytest.raises(ConfigError, match="emit_timeout_ms"):
        WebhookConfig(emit_timeout_ms=0)
    with pytest.raises(ConfigError, match="RetentionPolicy"):
        WebhookConfig(retention="7d")  # type: ignore[arg-type]


async def test_the_memory_store_keeps_at_most_its_row_cap_newest_first(
    make_runtime: RuntimeFactory, receiver: Receiver, make_event: EventFactory
) -> None:
    runtime = await make_runtime(config(RetentionPolicy(memory_max_rows=30, batch_size=7)))
    await runtime.add_endpoint(EndpointInput(url=receiver.url("/ok"), events=SENT))
    await _emit_and_send(runtime, make_event, 100)
    assert await runtime.apply_retention() == 70
    page = await runtime.list_deliveries(limit=100)
    assert len(page.items) == 30
    assert {d.event_id for d in page.items} == {f"e{n}" for n in range(70, 100)}
    assert await runtime.apply_retention() == 0


async def test_the_memory_store_never_deletes_pending_deliveries(
    make_runtime: RuntimeFactory, receiver: Receiver, make_event: EventFactory
) -> None:
    runtime = await make_runtime(
        config(RetentionPolicy(memory_max_rows=5), max_retries=3, retry_delay_ms=60_000),
    )

    async def fail(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=503)

    await runtime.add_endpoint(EndpointInput(url=receiver.on("/down", fail), events=SENT))
    await _emit_and_send(runtime, make_event, 12)  # each waits a minute for its retry
    assert await runtime.apply_retention() == 0
    assert (await runtime.stats()).deliveries.pending == 12


async def test_the_memory_store_forgets_finished_deliveries_after_its_age_bound(
    make_runtime: RuntimeFactory, receiver: Receiver, make_event: EventFactory
) -> None:
    clock = ManualClock(START)
    runtime = await make_runtime(config(RetentionPolicy()), clock=clock)
    await runtime.add_endpoint(EndpointInput(url=receiver.url("/ok"), events=SENT))
    await _emit_and_send(runtime, make_event, 5)
    clock.advance(seconds=59 * 60)
    assert await runtime.apply_retention() == 0
    clock.advance(seconds=2 * 60)  # now older than the default hour
    assert await runtime.apply_retention() == 5
    assert await _total(runtime) == 0


async def test_each_final_status_keeps_its_own_age_on_sqlite(
    make_runtime: RuntimeFactory, receiver: Receiver, make_event: EventFactory, tmp_path: Path
) -> None:
    clock = ManualClock(START)
    policy = RetentionPolicy(success=timedelta(minutes=1), failed=timedelta(hours=1))
    runtime = await make_runtime(
        config(policy, max_retries=0),
        clock=clock,
        persistence=f"sqlite:///{tmp_path / 'outbox.db'}",
    )

    async def gone(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=400)

    async def broken(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=500)

    await runtime.add_endpoint(EndpointInput(url=receiver.url("/ok"), events=SENT))
    await runtime.add_endpoint(EndpointInput(url=receiver.on("/bad", gone), events=SENT))
    await runtime.add_endpoint(EndpointInput(url=receiver.on("/err", broken), events=SENT))
    await _emit_and_send(runtime, make_event, 3)
    stats = (await runtime.stats()).deliveries
    assert (stats.success, stats.failed, stats.exhausted) == (3, 3, 3)

    async def statuses() -> list[DeliveryStatus]:
        page = await runtime.list_deliveries(DeliveryFilter(), limit=100)
        return sorted({d.status for d in page.items})

    clock.advance(seconds=30)
    assert await runtime.apply_retention() == 0
    clock.advance(seconds=31)
    assert await runtime.apply_retention() == 3
    assert await statuses() == [DeliveryStatus.EXHAUSTED, DeliveryStatus.FAILED]
    clock.advance(seconds=3600)
    assert await runtime.apply_retention() == 3
    # A durable store keeps a status without an age for good.
    assert await statuses() == [DeliveryStatus.EXHAUSTED]


async def test_retention_runs_by_itself_every_interval(
    make_runtime: RuntimeFactory,
    receiver: Receiver,
    make_event: EventFactory,
    wait_until: WaitUntil,
) -> None:
    runtime = await make_runtime(config(RetentionPolicy(memory_max_rows=4, interval_ms=50)))
    await runtime.add_endpoint(EndpointInput(url=receiver.url("/ok"), events=SENT))
    await _emit_and_send(runtime, make_event, 20)

    async def bounded() -> bool:
        return await _total(runtime) <= 4

    await wait_until(bounded, within=10, what="the periodic retention ran")


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[SQLiteDatabase]:
    db = SQLiteDatabase(tmp_path / "vacuum.db")
    try:
        yield db
    finally:
        await db.close()


async def _pragma(db: SQLiteDatabase, name: str) -> int:
    async with db.connect() as conn:
        value = (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
    assert isinstance(value, int)
    return value


async def _sqlite_runtime(
    make_runtime: RuntimeFactory,
    receiver: Receiver,
    db: SQLiteDatabase,
    clock: ManualClock,
    policy: RetentionPolicy,
) -> WebhookRuntimeService:
    runtime = await make_runtime(config(policy), clock=clock, persistence=db.persistence())
    await runtime.add_endpoint(EndpointInput(url=receiver.url("/ok"), events=SENT))
    return runtime


async def _emit_large(
    runtime: WebhookRuntimeService, make_event: EventFactory, prefix: str, count: int
) -> None:
    """Events of about 2 KiB each, sent: a few rows fill a page."""
    for n in range(count):
        await runtime.emit(make_event(f"{prefix}{n}", data={"text": "x" * 2000, "n": n}))
    await runtime.flush()


async def test_sqlite_hands_purged_pages_back_to_the_filesystem(
    make_runtime: RuntimeFactory,
    receiver: Receiver,
    make_event: EventFactory,
    sqlite_db: SQLiteDatabase,
) -> None:
    clock = ManualClock(START)
    policy = RetentionPolicy(success=timedelta(minutes=1), batch_size=200)
    runtime = await _sqlite_runtime(make_runtime, receiver, sqlite_db, clock, policy)
    await _emit_large(runtime, make_event, "big", 600)
    assert await _pragma(sqlite_db, "auto_vacuum") == 2  # incremental
    full = await _pragma(sqlite_db, "page_count")
    clock.advance(seconds=120)
    assert await runtime.apply_retention() == 600
    assert await _pragma(sqlite_db, "freelist_count") == 0
    assert await _pragma(sqlite_db, "page_count") < full / 4


async def test_sqlite_keeps_a_few_freed_pages_for_the_next_rows(
    make_runtime: RuntimeFactory,
    receiver: Receiver,
    make_event: EventFactory,
    sqlite_db: SQLiteDatabase,
) -> None:
    clock = ManualClock(START)
    # Only the call below deletes (the periodic run waits an hour of real time).
    policy = RetentionPolicy(success=timedelta(minutes=1), interval_ms=3_600_000)
    runtime = await _sqlite_runtime(make_runtime, receiver, sqlite_db, clock, policy)
    await _emit_large(runtime, make_event, "old", 60)
    clock.advance(seconds=90)
    await _emit_large(runtime, make_event, "young", 540)
    full = await _pragma(sqlite_db, "page_count")
    # A tenth of the rows go: steady deletes like these leave their pages to the next inserts.
    assert await runtime.apply_retention() == 60
    free = await _pragma(sqlite_db, "freelist_count")
    assert free > 0
    assert await _pragma(sqlite_db, "page_count") == full
    await _emit_large(runtime, make_event, "next", 30)
    assert await _pragma(sqlite_db, "freelist_count") < free
