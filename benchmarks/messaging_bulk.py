"""Bulk-send throughput through the durable send queue, against sending with no store.

    python benchmarks/messaging_bulk.py [--messages 2000] [--rounds 3] [--stores memory,sqlite]

A local fake vendor (aiohttp on 127.0.0.1, answering SOLAPI's send endpoint at once) receives
every message from a real ``SolapiProvider`` (signed requests). Each round sends the same number
of SMS with ``KMsg.send_many``:

* baseline: ``KMsg`` with no job store (messages go straight to the vendor);
* per store: ``KMsg(jobs=...)``: every message stored as a job, claimed under a lease, sent,
  its result recorded.

Reported per store: messages/s (median of the rounds), **the ratio** of its time per message to
the baseline's (measured in the same run, rounds alternating with the baseline), and the store's
overhead in microseconds per message. Absolute figures depend on the machine and its load; the
ratios are what compare across runs. Postgres is used when ``$KMSG_TEST_POSTGRES_DSN`` or
``postgresql://postgres@127.0.0.1:5432/test`` accepts connections (each round in a fresh schema);
``d1`` (in ``--stores``) is the local D1 engine (miniflare, ``adapters/d1-worker``; each round in a
fresh table).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from aiohttp import web

from kmsg_webhook.messaging import (
    Fail,
    KMsg,
    SendQueueOptions,
    SolapiConfig,
    SolapiProvider,
    job_store_from_url,
)
from local_d1 import local_d1, stop_local_d1

PG_DSN = os.environ.get("KMSG_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@asynccontextmanager
async def fake_vendor() -> AsyncIterator[str]:
    """SOLAPI's send endpoint, answering at once (no signature check: the sender is measured)."""
    counter = 0

    async def send(request: web.Request) -> web.Response:
        nonlocal counter
        body = await request.json()
        counter += 1
        message = body["message"]
        return web.json_response(
            {"messageId": f"M{counter:020d}", "statusCode": "2000", "to": message["to"]}
        )

    app = web.Application()
    app.router.add_post("/messages/v4/send", send)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def messages(count: int, tag: str) -> list[dict[str, str]]:
    return [
        {"to": f"010{n % 10**8:08d}", "text": f"안내 {n}", "messageId": f"{tag}-{n}"}
        for n in range(count)
    ]


async def postgres_available() -> bool:
    try:
        conn = await asyncpg.connect(PG_DSN, timeout=3)
    except Exception:
        return False
    await conn.close()
    return True


@asynccontextmanager
async def store_url(kind: str) -> AsyncIterator[str]:
    if kind == "memory":
        yield "memory://"
    elif kind == "sqlite":
        with tempfile.TemporaryDirectory() as directory:
            yield f"sqlite:///{os.path.join(directory, 'bench.db')}"
    elif kind == "d1":
        host, token = local_d1()
        yield f"d1+http://{host}/bench/bench?token={token}&jobs_table=jobs_{uuid.uuid4().hex[:12]}"
    else:
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        try:
            yield f"{PG_DSN}?schema={schema}"
        finally:
            conn = await asyncpg.connect(PG_DSN)
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.close()


async def one_round(vendor: str, kind: str | None, count: int) -> float:
    """Seconds to send ``count`` messages with ``send_many`` (``kind`` None: no store)."""
    provider = SolapiProvider(
        SolapiConfig(api_key="K", api_secret="S", default_from="0212345678", base_url=vendor)
    )
    tag = uuid.uuid4().hex[:8]
    if kind is None:
        kmsg = KMsg([provider])
        started = time.perf_counter()
        batch = await kmsg.send_many(messages(count, tag))
        elapsed = time.perf_counter() - started
        await kmsg.aclose()
    else:
        async with store_url(kind) as url:
            jobs = job_store_from_url(url)
            await jobs.init()  # schema creation is not part of the measurement
            options = SendQueueOptions(concurrency=50)
            kmsg = KMsg([provider], jobs=jobs, queue_options=options)
            started = time.perf_counter()
            batch = await kmsg.send_many(messages(count, tag))
            elapsed = time.perf_counter() - started
            await kmsg.aclose()
            await jobs.close()
    failed = sum(1 for r in batch.results if isinstance(r, Fail))
    if failed:
        raise SystemExit(f"{failed} of {count} sends failed ({kind or 'no store'})")
    return elapsed


async def main(args: argparse.Namespace) -> None:
    kinds = [k for k in args.stores.split(",") if k]
    if "postgres" in kinds and not await postgres_available():
        print(f"postgres: skipped (no server at {PG_DSN})")
        kinds.remove("postgres")
    times: dict[str | None, list[float]] = {None: [], **{k: [] for k in kinds}}
    async with fake_vendor() as vendor:
        await one_round(vendor, None, min(200, args.messages))  # warm-up
        for _ in range(args.rounds):
            for kind in [None, *kinds]:  # alternating, so load drifts hit every kind alike
                times[kind].append(await one_round(vendor, kind, args.messages))
    base = statistics.median(times[None])
    n = args.messages
    print(f"{n} messages per round, {args.rounds} rounds, medians (busy shared machine)")
    print(f"{'no store (baseline)':24} {n / base:9.0f} msg/s   ratio 1.00")
    for kind in kinds:
        elapsed = statistics.median(times[kind])
        overhead_us = (elapsed - base) / n * 1e6
        print(
            f"{'queue on ' + kind:24} {n / elapsed:9.0f} msg/s   ratio {elapsed / base:4.2f}"
            f"   store overhead {overhead_us:7.0f} µs/message"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stores", default="memory,sqlite,postgres", help="and/or d1")
    try:
        asyncio.run(main(parser.parse_args()))
    finally:
        stop_local_d1()
