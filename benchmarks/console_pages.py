"""Render time of each console page with many deliveries in the store, against the store
calls the page makes, measured in the same run.

    python benchmarks/console_pages.py [--rows 100000] [--runs 15] [--dsn DSN] [--skip-postgres]

For each backend (memory, SQLite on a WAL file, Postgres in a throwaway schema of ``--dsn``,
default ``$KMSG_TEST_POSTGRES_DSN`` or the local ``test`` database) the store gets ``--rows``
finished and pending deliveries over the last 24 hours on ten endpoints, inserted in bulk
(Postgres then gets the ``ANALYZE`` autovacuum would soon run).
The console is served on 127.0.0.1 and each page is fetched over HTTP ``--runs`` times,
alternating with the same store calls made directly; printed are both medians in ms
(the baseline: what any page must wait for)
and the ratio of the two. The overview and the endpoints page aggregate the deliveries
finished in their window (3 hours by default, up to 24): their cost follows that count.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg  # type: ignore[import-untyped]
from aiohttp import web

from kmsg_webhook import (
    DeliveryFilter,
    DeliveryStatus,
    EndpointInput,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEventType,
    WebhookRuntimeService,
)
from kmsg_webhook.console import create_console_app

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
ENDPOINTS = 10
CHUNK = 5_000
OUTCOMES = (DeliveryStatus.SUCCESS,) * 8 + (DeliveryStatus.FAILED, DeliveryStatus.EXHAUSTED)

Timed = Callable[[], Awaitable[object]]


def deliveries(endpoint_ids: list[str], count: int, now: datetime) -> list[WebhookDelivery]:
    """``count`` deliveries spread evenly over the last 24 hours, newest first; one in 100 is
    pending (due later), the rest finished with one attempt (80% success)."""
    step = timedelta(hours=24) / count
    rows = []
    for i in range(count):
        created = now - step * (i + 1)
        status = DeliveryStatus.PENDING if i % 100 == 50 else OUTCOMES[i % len(OUTCOMES)]
        finished = status is not DeliveryStatus.PENDING
        ok = status is DeliveryStatus.SUCCESS
        rows.append(
            WebhookDelivery(
                id=f"dlv_{i:07d}",
                endpoint_id=endpoint_ids[i % len(endpoint_ids)],
                event_id=f"evt_{i:07d}",
                event_type=WebhookEventType.MESSAGE_SENT,
                url="https://hooks.example.com/in",
                payload=f'{{"id":"evt_{i:07d}","data":{{"to":"01000000000","n":{i}}}}}',
                status=status,
                created_at=created,
                next_attempt_at=None if finished else now + timedelta(hours=1),
                attempts=(
                    WebhookAttempt(
                        attempt_number=1,
                        started_at=created,
                        latency_ms=15.0 + i % 240,
                        http_status=200 if ok else 503,
                        response_body="ok" if ok else "unavailable",
                        error=None if ok else "HTTP 503",
                    ),
                ),
                attempt_count=1,
                completed_at=created + timedelta(seconds=1) if finished else None,
                last_error=None if ok else "HTTP 503",
            )
        )
    return rows


async def paired_medians(page: Timed, store: Timed, runs: int) -> tuple[float, float]:
    """Median ms of ``page`` and of ``store``, timed alternately so both see the same load."""
    await page()  # warm caches and pools
    await store()
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for call, times in zip((page, store), samples, strict=True):
            started = time.perf_counter()
            await call()
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples[0]), statistics.median(samples[1])


async def bench(
    store_url: str, rows: int, runs: int, *, seeded_hook: Timed | None = None
) -> list[tuple[str, float, float]]:
    async with WebhookRuntimeService(persistence=store_url, dispatch=False) as runtime:
        endpoints = [
            await runtime.add_endpoint(
                EndpointInput(url=f"https://hooks{n}.example.com/in", events=["message.sent"])
            )
            for n in range(ENDPOINTS)
        ]
        ids = [e.id for e in endpoints]
        now = datetime.now(UTC)
        seeded = deliveries(ids, rows, now)
        store = runtime.persistence.delivery_store
        for start in range(0, rows, CHUNK):
            await store.insert_many(seeded[start : start + CHUNK])
        if seeded_hook is not None:
            await seeded_hook()
        deep = await store.list(DeliveryFilter(), limit=50)
        for _ in range(20):  # the cursor of page 21
            assert deep.next_cursor is not None
            deep = await store.list(DeliveryFilter(), limit=50, cursor=deep.next_cursor)
        cursor = deep.next_cursor or ""
        middle = seeded[rows // 2].id
        failed = DeliveryFilter(endpoint_id=ids[3], statuses=(DeliveryStatus.FAILED,))

        def window_calls(hours: int, *, queue: bool) -> Timed:
            """What the overview (``queue``) or the endpoints page asks the stores."""

            async def calls() -> None:
                await store.activity(since=datetime.now(UTC) - timedelta(hours=hours), now=now)
                if queue:
                    await store.queue_stats(now=now)
                await runtime.persistence.endpoint_store.list()

            return calls

        host = web.Application()
        host.add_subapp("/console/", create_console_app(runtime))
        runner = web.AppRunner(host, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}/console/"
        pages: list[tuple[str, str, Timed]] = [
            ("overview (3 h)", "", window_calls(3, queue=True)),
            ("overview (24 h)", "?hours=24", window_calls(24, queue=True)),
            ("endpoints (10, 3 h)", "endpoints", window_calls(3, queue=False)),
            ("endpoints (10, 24 h)", "endpoints?hours=24", window_calls(24, queue=False)),
            ("deliveries, first 50", "deliveries", lambda: store.list(DeliveryFilter(), limit=50)),
            (
                "deliveries, page 21",
                f"deliveries?cursor={cursor}",
                lambda: store.list(DeliveryFilter(), limit=50, cursor=cursor),
            ),
            (
                "deliveries, filtered",
                f"deliveries?status=failed&endpoint={ids[3]}",
                lambda: store.list(failed, limit=50),
            ),
            ("delivery detail", f"deliveries/{middle}", lambda: store.get(middle)),
        ]
        results = []
        try:
            async with aiohttp.ClientSession() as http:

                def fetch(path: str) -> Timed:
                    async def get() -> None:
                        async with http.get(base + path) as response:
                            assert response.status == 200, (path, response.status)
                            await response.read()

                    return get

                for name, path, baseline in pages:
                    page_ms, store_ms = await paired_medians(fetch(path), baseline, runs)
                    results.append((name, page_ms, store_ms))
        finally:
            await runner.cleanup()
        return results


async def analyze(dsn: str, schema: str) -> None:
    """What autovacuum does soon after a bulk load: planner statistics for the new rows."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'ANALYZE "{schema}".kmsg_webhook_deliveries')
    finally:
        await conn.close()


async def drop_schema(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--dsn", default=os.environ.get("KMSG_TEST_POSTGRES_DSN", DEFAULT_DSN))
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="kmsg-console-bench-")
    schema = f"bench_console_{uuid.uuid4().hex[:8]}"
    backends: list[tuple[str, str, Timed | None]] = [
        ("memory", "memory://", None),
        ("SQLite", f"sqlite:///{Path(folder) / 'bench.db'}", None),
    ]
    if not args.skip_postgres:
        backends.append(
            ("Postgres", f"{args.dsn}?schema={schema}", lambda: analyze(args.dsn, schema))
        )
    print(f"console pages with {args.rows:,} deliveries, median of {args.runs} runs (ms)")
    print(f"{'backend':<9} {'page':<22} {'page':>8} {'store':>8} {'page/store':>11}")
    try:
        for label, url, hook in backends:
            results = await bench(url, args.rows, args.runs, seeded_hook=hook)
            for name, page_ms, store_ms in results:
                ratio = page_ms / store_ms if store_ms else float("inf")
                print(f"{label:<9} {name:<22} {page_ms:8.1f} {store_ms:8.1f} {ratio:10.1f}x")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if not args.skip_postgres:
            await drop_schema(args.dsn, schema)


if __name__ == "__main__":
    asyncio.run(main())
