"""The sender's targets, as ratios measured in one run.

    python benchmarks/targets.py [--deliveries 10000] [--rounds 3] [--schemes http,https]
                                 [--loops asyncio,uvloop] [--stores sqlite,postgres]
                                 [--pin-sender]

1. **CPU per delivery**, runtime ÷ a minimal client. The minimal client is an asyncio protocol
   per connection, 64 callers each building a JSON event and its Standard Webhooks HMAC
   signature, writing one HTTP/1.1 request and parsing the answer with httptools: the least a
   Python sender can do per POST. The runtime (memory store, one event loop, everything
   included: intake, routing, signing, the transport, records, the collector) runs

   * ``emit_sync``: 64 callers awaiting ``emit_sync`` on one endpoint (concurrency per
     endpoint 64);
   * ``fan-out 10``: 64 callers ``emit`` events matching 10 endpoints, then ``flush``.

   Each runs on its own event loop in a thread, and its CPU is that thread's CPU time while
   it sends (``time.thread_time``), so the receiver (nginx ``return 200`` on core 1, https
   with a certificate from a CA made here) and this script's idle main loop are not counted.
   Per scheme and loop, rounds alternate client and runtime; the median ratio and each
   round's are printed.

2. **A single producer**: ``await emit(e)`` in a loop, one event at a time (intake only:
   nothing is sent), ÷ the driver itself inserting one row per committed transaction into a
   table of the same shape (aiosqlite on a WAL file; asyncpg in autocommit). Each round
   alternates the two sides in ten slices; printed are the rates, the CPU per row or event
   (this process, SQLite's thread included, a Postgres server not), and the median ratio
   with each round's.

Absolute figures depend on the machine and its load; compare the ratios, and say the load.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite
import asyncpg
import httptools

from kmsg_webhook import (
    EndpointInput,
    SecurityOptions,
    WebhookRuntimeService,
    create_in_memory_persistence,
    eventloop,
)
from kmsg_webhook.stores.url import persistence_from_url
from throughput import (
    CONCURRENCY,
    POSTGRES_DSN,
    _event,
    _store_url,
    bench_config,
    nginx_receiver,
)
from transport import Receiver, nginx_https, signed

FAN_OUT = 10
WARM_UP = 1_000


# -- the minimal client --------------------------------------------------------------------


class _Exchange(asyncio.Protocol):
    """One kept-alive connection: write a request, resolve when httptools says it is answered."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        assert self.done is not None
        self.done.set_result(None)


async def minimal_client(receiver: Receiver, total: int) -> float:
    """CPU µs per POST of the minimal client (see the module docstring)."""
    loop = asyncio.get_running_loop()
    port = int(receiver.base.rsplit(":", 1)[1])
    head = f"POST /hooks/0 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
    connections = [
        (await loop.create_connection(_Exchange, "127.0.0.1", port, ssl=receiver.tls))[1]
        for _ in range(CONCURRENCY)
    ]

    async def run(first: int, count: int) -> None:
        counter = iter(range(first, first + count))

        async def caller(conn: _Exchange) -> None:
            assert conn.transport is not None
            for n in counter:
                headers, body = signed(n)
                headers["Content-Type"] = "application/json"
                lines = "".join([f"{k}: {v}\r\n" for k, v in headers.items()]).encode()
                conn.done = loop.create_future()
                conn.transport.write(
                    b"%s%sContent-Length: %d\r\n\r\n%s" % (head, lines, len(body), body)
                )
                await conn.done

        await asyncio.gather(*(caller(conn) for conn in connections))

    try:
        await run(0, WARM_UP)
        cpu = time.thread_time()
        await run(WARM_UP, total)
        return (time.thread_time() - cpu) / total * 1e6
    finally:
        for conn in connections:
            if conn.transport is not None:
                conn.transport.close()


# -- the runtime ---------------------------------------------------------------------------


async def _runtime(receiver: Receiver, endpoints: int) -> WebhookRuntimeService:
    runtime = WebhookRuntimeService(
        bench_config(max_concurrency=CONCURRENCY * 2, ssl=receiver.tls),
        persistence=create_in_memory_persistence(),
        security=SecurityOptions(allow_private_hosts=True),
    )
    await runtime.start()
    for i in range(endpoints):
        await runtime.add_endpoint(
            EndpointInput(url=f"{receiver.base}/hooks/{i}", events=["message.sent"])
        )
    return runtime


async def runtime_cpu(receiver: Receiver, total: int, *, endpoints: int) -> float:
    """CPU µs per delivery. One endpoint: 64 callers awaiting ``emit_sync``; more: 64 callers
    ``emit`` events that match every endpoint, then ``flush``."""
    runtime = await _runtime(receiver, endpoints)
    emit = runtime.emit_sync if endpoints == 1 else runtime.emit
    try:

        async def run(first: int, events: int) -> None:
            counter = iter(range(first, first + events))

            async def caller() -> None:
                for n in counter:
                    await emit(_event(n))

            await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
            await runtime.flush()

        await run(0, WARM_UP // endpoints)
        events = total // endpoints
        cpu = time.thread_time()
        await run(WARM_UP, events)
        return (time.thread_time() - cpu) / (events * endpoints) * 1e6
    finally:
        await runtime.shutdown()


Measure = Callable[[Receiver, int], Awaitable[float]]


def _on_loop(measure: Measure, receiver: Receiver, total: int, loop: str) -> float:
    return eventloop.run(measure(receiver, total), loop=loop)


async def cpu_ratios(receiver: Receiver, total: int, rounds: int, loop: str) -> None:
    runs: dict[str, list[float]] = {"client": [], "emit_sync": [], "fan-out 10": []}
    measures: dict[str, Measure] = {
        "client": minimal_client,
        "emit_sync": functools.partial(runtime_cpu, endpoints=1),
        "fan-out 10": functools.partial(runtime_cpu, endpoints=FAN_OUT),
    }
    for _ in range(rounds):
        for name, measure in measures.items():
            runs[name].append(await asyncio.to_thread(_on_loop, measure, receiver, total, loop))
    client = runs["client"]
    print(f"  {loop:8} minimal client {statistics.median(client):6.1f} µs CPU per POST")
    for name in ("emit_sync", "fan-out 10"):
        ratios = [r / c for r, c in zip(runs[name], client, strict=True)]
        print(
            f"  {loop:8} {name:14} {statistics.median(runs[name]):6.1f} µs per delivery, "
            f"x client {statistics.median(ratios):.2f} "
            f"(rounds {', '.join(f'{r:.2f}' for r in ratios)})"
        )


# -- a single producer ---------------------------------------------------------------------

_TABLE = (
    "CREATE TABLE rows (id TEXT PRIMARY KEY, endpoint_id TEXT NOT NULL, event_id TEXT NOT NULL, "
    "event_type TEXT NOT NULL, url TEXT NOT NULL, payload TEXT NOT NULL, status TEXT NOT NULL, "
    "created_at TEXT NOT NULL, next_attempt_at TEXT NOT NULL, attempt_count INTEGER NOT NULL, "
    "UNIQUE (endpoint_id, event_id))"
)


def _row(n: int) -> tuple[object, ...]:
    now = datetime.now(UTC).isoformat()
    payload = _event(n).to_json()
    return (
        f"dlv_{n}",
        "ep_1",
        f"evt_{n}",
        "message.sent",
        "https://x/h",
        payload,
        "pending",
        now,
        now,
        0,
    )


Insert = Callable[[int, int], Awaitable[None]]
#: Each round alternates the two sides this many times (a slow patch of the shared machine,
#: an fsync that stalls, lands on both sides alike instead of on one round of one side).
SLICES = 10


@asynccontextmanager
async def driver_inserts(store: str) -> AsyncIterator[Insert]:
    """``insert(first, count)``: the driver inserts rows one per committed transaction."""
    insert = "INSERT INTO rows VALUES ({})"
    if store == "sqlite":
        path = Path(_store_url("sqlite").removeprefix("sqlite:///"))
        async with aiosqlite.connect(path, isolation_level=None) as db:
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute(_TABLE)
            sql = insert.format(", ".join("?" * 10))

            async def lite(first: int, count: int) -> None:
                for n in range(first, first + count):
                    await db.execute(sql, _row(n))

            yield lite
        return
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(POSTGRES_DSN)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}; SET search_path = {schema}; {_TABLE}")
        sql = insert.format(", ".join(f"${i}" for i in range(1, 11)))

        async def pg(first: int, count: int) -> None:
            for n in range(first, first + count):
                await conn.execute(sql, *_row(n))

        yield pg
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


@asynccontextmanager
async def emit_loop(store: str) -> AsyncIterator[Insert]:
    """``insert(first, count)``: one caller awaits ``emit`` per event (intake only, one
    endpoint)."""
    runtime = WebhookRuntimeService(
        persistence=persistence_from_url(_store_url(store)), dispatch=False
    )
    try:
        await runtime.start()
        await runtime.add_endpoint(
            EndpointInput(url="https://hooks.example.com/in", events=["message.sent"])
        )

        async def emit(first: int, count: int) -> None:
            for n in range(first, first + count):
                await runtime.emit(_event(n))

        yield emit
    finally:
        await runtime.shutdown()


async def _timed(insert: Insert, first: int, count: int) -> tuple[float, float]:
    """Wall and CPU seconds of ``insert(first, count)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    await insert(first, count)
    return time.perf_counter() - wall, time.process_time() - cpu


async def single_producer(stores: list[str], total: int, rounds: int) -> None:
    size = max(1, total // SLICES)
    for store in stores:
        rates: dict[str, list[float]] = {"driver": [], "emit": []}
        cpu: dict[str, list[float]] = {"driver": [], "emit": []}
        async with driver_inserts(store) as driver, emit_loop(store) as emit:
            await driver(0, size)  # warm-up: statements prepared, files and caches made
            await emit(0, size)
            first = size
            for _ in range(rounds):
                spent = {"driver": [0.0, 0.0], "emit": [0.0, 0.0]}
                for _ in range(SLICES):
                    for name, insert in (("driver", driver), ("emit", emit)):
                        wall, used = await _timed(insert, first, size)
                        spent[name][0] += wall
                        spent[name][1] += used
                    first += size
                for name, (wall, used) in spent.items():
                    rates[name].append(size * SLICES / wall)
                    cpu[name].append(used / (size * SLICES) * 1e6)
        ratios = [e / d for e, d in zip(rates["emit"], rates["driver"], strict=True)]
        print(
            f"  {store:8} driver {statistics.median(rates['driver']):7,.0f} rows/s "
            f"({statistics.median(cpu['driver']):.0f} µs CPU each), emit loop "
            f"{statistics.median(rates['emit']):7,.0f} events/s "
            f"({statistics.median(cpu['emit']):.0f} µs CPU each), x driver "
            f"{statistics.median(ratios):.2f} (rounds {', '.join(f'{r:.2f}' for r in ratios)})"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--schemes", default="http,https")
    parser.add_argument("--loops", default="asyncio,uvloop")
    parser.add_argument("--stores", default="sqlite,postgres", help="single producer; '' skips")
    parser.add_argument("--producer-events", type=int, default=2_000)
    parser.add_argument(
        "--pin-sender", action="store_true", help="pin this process to core 0 (receiver: core 1)"
    )
    args = parser.parse_args()
    if args.pin_sender and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"load average {load}; sender {'pinned to core 0' if args.pin_sender else 'not pinned'}; "
        f"{args.deliveries:,} deliveries x {args.rounds} rounds, {CONCURRENCY} callers"
    )
    print("1. runtime CPU per delivery / minimal client CPU per POST (memory store)")
    for scheme in args.schemes.split(","):
        if scheme == "http":
            async with nginx_receiver("nginx") as base:
                assert base is not None
                print(" http (nginx on core 1)")
                for loop in args.loops.split(","):
                    await cpu_ratios(Receiver(base), args.deliveries, args.rounds, loop)
        elif scheme == "https":
            async with nginx_https() as receiver:
                print(" https (nginx on core 1)")
                for loop in args.loops.split(","):
                    await cpu_ratios(receiver, args.deliveries, args.rounds, loop)
    stores = [s for s in args.stores.split(",") if s]
    if stores:
        print(
            f"2. one producer awaiting emit / the driver's one row per transaction "
            f"({args.producer_events:,} events x {args.rounds} rounds)"
        )
        await single_producer(stores, args.producer_events, args.rounds)


if __name__ == "__main__":
    asyncio.run(main())
