"""The runtime on a SQLite store whose disk fills up, then has room again.

Emits, claims, records and releases fail together on the store's one shared connection while
the disk is full. Once there is room again the store must be usable at once: every event whose
emit returned is delivered, later emits succeed and ``shutdown()`` returns.

Two ways to fill the disk: SQLite's ``max_page_count`` (``SQLITE_FULL`` on any filesystem) and a
real 8 MiB tmpfs (``ENOSPC``), which needs root to mount.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kmsg_webhook import (
    DeliveryFilter,
    DeliveryStatus,
    EndpointInput,
    SecurityOptions,
    StoreError,
    WebhookConfig,
    WebhookEvent,
    WebhookEventType,
    WebhookRuntimeService,
)
from kmsg_webhook.stores.sql.sqlite import SQLiteDatabase
from support.runtime import WaitUntil
from support.servers import Receiver
from support.stores import in_ci

WAVES = 20
PER_WAVE = 40
# Short leases: a delivery sent while its record failed is sent again within the test.
CONFIG = WebhookConfig(
    poll_interval_ms=50, batch_timeout_ms=20, timeout_ms=1_000, lease_ms=2_000, jitter=False
)


def event(n: int) -> WebhookEvent:
    return WebhookEvent(
        id=f"evt_{n}",
        type=WebhookEventType.MESSAGE_SENT,
        timestamp=datetime.now(UTC),
        data={"n": n, "padding": "x" * 400},
    )


async def _emit_all(runtime: WebhookRuntimeService, numbers: range) -> tuple[set[str], int]:
    """Emit ``numbers`` concurrently; the ids acknowledged and how many failed (StoreError)."""
    acked: set[str] = set()
    failed = 0

    async def one(n: int) -> None:
        nonlocal failed
        try:
            await runtime.emit(event(n))
        except StoreError as exc:
            assert "full" in str(exc), exc
            failed += 1
        else:
            acked.add(f"evt_{n}")

    await asyncio.gather(*(one(n) for n in numbers))
    return acked, failed


async def _run_full_then_freed(
    path: Path,
    receiver: Receiver,
    fill: Callable[[SQLiteDatabase], Awaitable[None]],
    free: Callable[[SQLiteDatabase], Awaitable[None]],
    wait_until: WaitUntil,
) -> None:
    db = SQLiteDatabase(path, retry_timeout=1.0)
    runtime = WebhookRuntimeService(
        CONFIG,
        persistence=db.persistence(),
        security=SecurityOptions(allow_private_hosts=True),
    )
    await runtime.start()
    try:
        await runtime.add_endpoint(
            EndpointInput(url=receiver.url("/hooks"), events=[WebhookEventType.MESSAGE_SENT])
        )
        acked, failed = await _emit_all(runtime, range(100))
        assert failed == 0
        await fill(db)
        failed_while_full = 0
        for wave in range(WAVES):
            first = 100 + wave * PER_WAVE
            more, failed = await _emit_all(runtime, range(first, first + PER_WAVE))
            acked |= more
            failed_while_full += failed
            await asyncio.sleep(0.02)  # the dispatcher claims, sends and records meanwhile
        assert failed_while_full > 0, "the disk never filled up"
        await free(db)
        # Room again: the next emits succeed at once.
        after, failed = await _emit_all(runtime, range(5000, 5100))
        assert failed == 0
        acked |= after

        async def settled() -> bool:
            return (await runtime.stats()).deliveries.pending == 0

        # Rows whose record failed are sent again once their leases expire.
        await wait_until(settled, within=30, what="every acknowledged delivery settled")
        page = await runtime.list_deliveries(DeliveryFilter(), limit=10_000)
    finally:
        await asyncio.wait_for(runtime.shutdown(), 30)
    delivered = {
        r.headers["webhook-id"] for r in receiver.at("/hooks") if r.headers.get("webhook-id")
    }
    assert acked <= delivered, f"{len(acked - delivered)} acknowledged events never arrived"
    by_event = {d.event_id: d for d in page.items}
    assert acked <= set(by_event)
    assert all(by_event[e].status is DeliveryStatus.SUCCESS for e in acked)


async def test_sqlite_full_database_recovers_once_it_may_grow(
    tmp_path: Path, receiver: Receiver, wait_until: WaitUntil
) -> None:
    async def fill(db: SQLiteDatabase) -> None:
        async with db.connect() as conn:
            pages = (await conn.exec_driver_sql("PRAGMA page_count")).scalar()
            await conn.exec_driver_sql(f"PRAGMA max_page_count = {pages}")

    async def free(db: SQLiteDatabase) -> None:
        async with db.connect() as conn:
            await conn.exec_driver_sql("PRAGMA max_page_count = 1073741823")

    await _run_full_then_freed(tmp_path / "full.db", receiver, fill, free, wait_until)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted for the test (root only)."""
    reason = None
    if os.geteuid() != 0:
        reason = "mounting a tmpfs needs root"
    elif shutil.which("mount") is None:
        reason = "no mount command"
    mount = tmp_path / "disk"
    mount.mkdir()
    if reason is None:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            reason = f"mount -t tmpfs failed: {done.stderr.strip()}"
    if reason is not None:
        if in_ci():
            pytest.fail(f"a real full disk is required under CI=true: {reason}", pytrace=False)
        pytest.skip(reason)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill_up(path: Path) -> None:
    """Write ``path`` until the filesystem has no room left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 65536)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 512)
    finally:
        os.close(fd)


async def test_sqlite_on_a_real_full_disk_recovers_once_space_is_freed(
    small_tmpfs: Path, receiver: Receiver, wait_until: WaitUntil
) -> None:
    ballast = small_tmpfs / "ballast"
    # Most of the disk is taken before the run, as on a busy small volume. The 6 MiB left
    # hold the schema and the first events' WAL whatever the batch sizes (SQLite checkpoints
    # it automatically at about 4 MiB); the filler then takes the rest.
    with ballast.open("wb") as f:
        f.write(b"\0" * (10 * 1024 * 1024))
    filler = small_tmpfs / "filler"

    async def fill(db: SQLiteDatabase) -> None:
        _fill_up(filler)

    async def free(db: SQLiteDatabase) -> None:
        filler.unlink()
        ballast.unlink()

    await _run_full_then_freed(small_tmpfs / "outbox.db", receiver, fill, free, wait_until)


async def test_shutdown_returns_while_the_store_is_failing(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process holds the write lock throughout: nothing can be claimed, so the last
    drain fails. Shutdown still stops and closes, says why, and the rows stay for later."""
    path = tmp_path / "stuck.db"
    private = SecurityOptions(allow_private_hosts=True)
    url = f"sqlite:///{path}"
    async with WebhookRuntimeService(persistence=url, security=private, dispatch=False) as intake:
        await intake.add_endpoint(
            EndpointInput(url=receiver.url("/hooks"), events=[WebhookEventType.MESSAGE_SENT])
        )
        for n in range(3):
            await intake.emit(event(n))
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # the write lock, held by another connection
        db = SQLiteDatabase(path, retry_timeout=0.5, busy_timeout=0.05)
        runtime = WebhookRuntimeService(CONFIG, persistence=db.persistence(), security=private)
        await runtime.start()
        await asyncio.wait_for(runtime.shutdown(), 30)
    finally:
        other.rollback()
        other.close()
    assert "sending what is due at shutdown failed; stopping anyway" in caplog.text
    assert receiver.at("/hooks") == []
    reopened = SQLiteDatabase(path)
    try:
        stored = await reopened.delivery_store.stats(DeliveryFilter())
    finally:
        await reopened.close()
    assert stored.pending == 3  # kept for the next worker
