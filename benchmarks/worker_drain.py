"""How fast a standalone ``kmsg-webhook worker`` drains a backlog, against the in-process runtime.

    python benchmarks/worker_drain.py [--deliveries 3000] [--stores sqlite,postgres] [--rounds 2]

For each store and for one endpoint and for 8 endpoints (rows spread evenly), in the same run:

* baseline: the in-process runtime (default ``WebhookConfig``) emits the rows and ``flush()``es;
  deliveries/s from the first emit to the end of the flush;
* worker: an intake-only runtime stores the same number of rows, then a ``kmsg-webhook worker``
  process (default settings: concurrency 100, 10 per endpoint, poll 500 ms) starts; deliveries/s
  from its start line to the last row received;
* the ratio worker / baseline (the target is >= 0.8).

Both send to the aiohttp receiver of ``receiver.py`` pinned to core 1. Each figure is the
median of ``--rounds`` rounds. Absolute numbers depend on the machine and its load; the ratio
is what compares across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg  # type: ignore[import-untyped]

from kmsg_webhook import (
    EndpointFilters,
    EndpointInput,
    EventMetadata,
    SecurityOptions,
    WebhookEvent,
    WebhookEventType,
    WebhookRuntimeService,
)
from throughput import _SCRATCH, POSTGRES_DSN, receiver_process, receiver_stats


@contextlib.asynccontextmanager
async def _store_url(name: str) -> AsyncIterator[str]:
    """A fresh store URL; a Postgres schema made for it is dropped afterwards."""
    tag = uuid.uuid4().hex[:10]
    if name == "sqlite":
        yield f"sqlite:///{_SCRATCH}/drain-{tag}.db"
        return
    if name != "postgres":
        raise SystemExit(f"unknown store {name!r} (sqlite, postgres)")
    schema = f"drain_{tag}"
    try:
        yield f"{POSTGRES_DSN}?schema={schema}"
    finally:
        conn = await asyncpg.connect(POSTGRES_DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


def _event(n: int, endpoints: int) -> WebhookEvent:
    return WebhookEvent(
        id=f"evt_{n}",
        type=WebhookEventType.MESSAGE_SENT,
        timestamp=datetime.now(UTC),
        data={"n": n, "sent_at": time.time()},
        metadata=EventMetadata(provider_id=f"p{n % endpoints}"),
    )


async def _runtime(base: str, url: str, endpoints: int, *, dispatch: bool) -> WebhookRuntimeService:
    runtime = WebhookRuntimeService(
        persistence=url,
        security=SecurityOptions(allow_private_hosts=True),
        dispatch=dispatch,
    )
    await runtime.start()
    for i in range(endpoints):
        await runtime.add_endpoint(
            EndpointInput(
                url=f"{base}/hooks/{i}",
                events=[WebhookEventType.MESSAGE_SENT],
                filters=EndpointFilters(provider_id=(f"p{i}",)),
            )
        )
    return runtime


async def _emit_all(runtime: WebhookRuntimeService, total: int, endpoints: int) -> None:
    counter = iter(range(total))

    async def producer() -> None:  # like request handlers, each awaiting its emit
        for n in counter:
            await runtime.emit(_event(n, endpoints))

    await asyncio.gather(*(producer() for _ in range(64)))
    await runtime.flush()


async def in_process(base: str, store: str, total: int, endpoints: int) -> float:
    async with _store_url(store) as url:
        return await _in_process(base, url, total, endpoints)


async def _in_process(base: str, url: str, total: int, endpoints: int) -> float:
    runtime = await _runtime(base, url, endpoints, dispatch=True)
    try:
        await receiver_stats(base, reset=True)
        started = time.perf_counter()
        await _emit_all(runtime, total, endpoints)
        elapsed = time.perf_counter() - started
        received = (await receiver_stats(base))["count"]
        if received < total:
            raise SystemExit(f"in-process runtime delivered {received}/{total}")
        return total / elapsed
    finally:
        await runtime.shutdown()


async def worker_process(base: str, store: str, total: int, endpoints: int) -> float:
    async with _store_url(store) as url:
        return await _worker_process(base, url, total, endpoints)


async def _worker_process(base: str, url: str, total: int, endpoints: int) -> float:
    runtime = await _runtime(base, url, endpoints, dispatch=False)
    try:
        await _emit_all(runtime, total, endpoints)
    finally:
        await runtime.shutdown()
    await receiver_stats(base, reset=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kmsg_webhook.cli", "worker", "--store", url,
        "--allow-private-hosts", "--summary-interval", "0",
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        while b"dispatching" not in await asyncio.wait_for(proc.stderr.readline(), 60):
            pass
        started = time.perf_counter()
        stderr = proc.stderr

        async def discard() -> None:  # keep the pipe drained: INFO logs every delivery
            while await stderr.read(65536):
                pass

        drain = asyncio.ensure_future(discard())
        deadline = started + 300
        while (await receiver_stats(base))["count"] < total:
            if time.perf_counter() > deadline:
                raise SystemExit("the worker did not drain the backlog in 300 s")
            await asyncio.sleep(0.02)  # the receiver is another process: poll its count
        elapsed = time.perf_counter() - started
    finally:
        proc.terminate()
        await proc.wait()
    drain.cancel()
    return total / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=3000)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(
        f"{args.deliveries} deliveries per run, median of {args.rounds} rounds; default "
        "settings on both sides; receiver pinned to core 1"
    )
    async with receiver_process() as base:
        for store in args.stores.split(","):
            for endpoints in (1, 8):
                baseline: list[float] = []
                worker: list[float] = []
                for _ in range(args.rounds):
                    baseline.append(await in_process(base, store, args.deliveries, endpoints))
                    worker.append(await worker_process(base, store, args.deliveries, endpoints))
                b, w = statistics.median(baseline), statistics.median(worker)
                print(
                    f"{store:>8}, {endpoints} endpoint{'s' if endpoints > 1 else ' '}: "
                    f"in-process {b:7.0f}/s, worker process {w:7.0f}/s, ratio {w / b:.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    asyncio.run(main())
