"""Ordered delivery across processes and crashes: three ``kmsg-webhook worker`` processes on one
PostgreSQL outbox, killed with SIGKILL at random and replaced, while the test process emits and
runs a receiver that fails the first attempt of every third message. Per key, the receiver
must never see a message before the previous one has ended.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web

from kmsg_webhook import SecurityOptions, WebhookEvent, WebhookRuntimeService
from support.servers import serve_app
from support.workers import settled, start_worker

KEYS = [f"order-{k}" for k in range(8)]
PER_KEY = 12
SECRET = "whsec_b3JkZXJlZC1kZWxpdmVyeS10ZXN0LXNlY3JldA=="


@dataclass
class OrderReceiver:
    url: str = ""
    #: (message number) per key, in arrival order: every attempt, failed or not.
    arrivals: defaultdict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    failed_once: set[str] = field(default_factory=set)


@pytest.fixture
async def receiver() -> AsyncIterator[OrderReceiver]:
    rec = OrderReceiver()

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        key, n = body["data"]["key"], body["data"]["n"]
        rec.arrivals[key].append(n)
        await asyncio.sleep(0.01)  # a request in flight is what a kill interrupts
        if n % 3 == 1 and body["id"] not in rec.failed_once:
            rec.failed_once.add(body["id"])
            return web.Response(status=503)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/ordered", handle)
    async with serve_app(app) as base:
        rec.url = f"{base}/ordered"
        yield rec


def add_ordered_endpoint(url: str, endpoint_url: str) -> None:
    """Through the CLI, as an operator would."""
    subprocess.run(
        [
            sys.executable, "-m", "kmsg_webhook.cli", "endpoints", "add", "--store", url,
            "--url", endpoint_url, "--event", "message.sent", "--secret", SECRET, "--ordered",
            "--allow-private-hosts",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


async def emit_in_order(url: str) -> None:
    """Each key's messages one after another (an emit returns once stored); keys at once."""
    async with WebhookRuntimeService(
        persistence=url, dispatch=False, security=SecurityOptions(allow_private_hosts=True)
    ) as runtime:

        async def one_key(key: str) -> None:
            for n in range(PER_KEY):
                await runtime.emit(
                    WebhookEvent(
                        id=f"evt_{key}_{n:02d}",
                        type="message.sent",
                        timestamp=datetime.now(UTC),
                        data={"key": key, "n": n},
                        ordering_key=key,
                    )
                )
                await asyncio.sleep(0.01)

        await asyncio.gather(*(one_key(key) for key in KEYS))


async def test_order_holds_per_key_with_workers_killed_at_random(
    store_url: str,
    receiver: OrderReceiver,
    workers: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    options = (
        "--lease-ms", "2500", "--timeout-ms", "2000", "--retry-delay-ms", "50",
        "--max-retries", "10", "--concurrency", "16",
    )  # fmt: skip
    logs: dict[int, Path] = {}

    def start(name: str) -> subprocess.Popen[bytes]:
        log = tmp_path / f"{name}.log"
        with log.open("wb") as stderr:
            proc = start_worker(workers, store_url, name, *options, stderr=stderr)
        logs[proc.pid] = log
        return proc

    add_ordered_endpoint(store_url, receiver.url)
    alive = [start(f"w{n}") for n in range(3)]
    emitting = asyncio.create_task(emit_in_order(store_url))
    for kill in range(3):
        await asyncio.sleep(rng.uniform(0.3, 1.2))
        victim = alive.pop(rng.randrange(len(alive)))
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=10) == -signal.SIGKILL
        alive.append(start(f"heir-{kill}"))
    await asyncio.wait_for(emitting, 60)
    total = len(KEYS) * PER_KEY

    async def all_done() -> bool:
        return await settled(store_url) == (total, total)

    deadline = asyncio.get_running_loop().time() + 90
    while not await all_done():
        assert asyncio.get_running_loop().time() < deadline, f"seed {seed}: not all delivered"
        await asyncio.sleep(0.2)
    # SIGTERM only once each worker said it is dispatching (its handler is installed by then):
    # a replacement started late may still be importing when everything is delivered.
    for proc in alive:
        while b"dispatching from" not in logs[proc.pid].read_bytes():
            assert proc.poll() is None, f"seed {seed}: worker exited before it started"
            assert asyncio.get_running_loop().time() < deadline + 30, f"seed {seed}: no start"
            await asyncio.sleep(0.1)
    for proc in alive:
        proc.send_signal(signal.SIGTERM)
    for proc in alive:
        assert proc.wait(timeout=30) == 0
    for key in KEYS:
        seen = receiver.arrivals[key]
        # Repeats are allowed (a failed first attempt, a request a killed worker never
        # recorded); a later message before an earlier one has ended is not.
        assert seen == sorted(seen), f"seed {seed}: {key} out of order: {seen}"
        assert sorted(set(seen)) == list(range(PER_KEY)), f"seed {seed}: {key} lost messages"
