"""Scale-out: real ``kmsg-webhook worker`` processes sharing one PostgreSQL outbox.

The test process emits (an intake-only runtime, as a web process would) and runs the
receiver; the workers are separate OS processes started through the CLI.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from aiohttp import web

from kmsg_webhook import (
    EndpointInput,
    SecurityOptions,
    WebhookEvent,
    WebhookEventType,
    WebhookRuntimeService,
)
from support.servers import serve_app
from support.workers import settled, start_worker


@dataclass
class CountingReceiver:
    url: str = ""
    delay_s: float = 0.0
    hits: Counter[str] = field(default_factory=Counter)

    @property
    def unique(self) -> int:
        return len(self.hits)


@pytest.fixture
async def receiver() -> AsyncIterator[CountingReceiver]:
    rec = CountingReceiver()

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        rec.hits[request.headers["webhook-id"]] += 1
        if rec.delay_s:
            await asyncio.sleep(rec.delay_s)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hooks", handle)
    async with serve_app(app) as base:
        rec.url = f"{base}/hooks"
        yield rec


async def emit_many(url: str, endpoint_url: str, count: int) -> str:
    """Register the endpoint and store ``count`` deliveries through an intake-only runtime."""
    async with WebhookRuntimeService(
        persistence=url, dispatch=False, security=SecurityOptions(allow_private_hosts=True)
    ) as runtime:
        endpoint = await runtime.add_endpoint(
            EndpointInput(url=endpoint_url, events=[WebhookEventType.MESSAGE_SENT])
        )
        now = datetime.now(UTC)
        await asyncio.gather(
            *(
                runtime.emit(
                    WebhookEvent(id=f"evt_{n}", type="message.sent", timestamp=now, data={"n": n})
                )
                for n in range(count)
            )
        )
        await runtime.flush()
        return endpoint.id


async def wait_for(predicate: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.1)


async def test_three_workers_send_each_delivery_exactly_once(
    store_url: str, receiver: CountingReceiver, workers: list[subprocess.Popen[bytes]]
) -> None:
    total = 3_000
    await emit_many(store_url, receiver.url, total)
    for n in range(3):
        start_worker(workers, store_url, f"w{n}", "--concurrency", "32")
    await wait_for(lambda: receiver.unique == total, timeout_s=120)
    for proc in workers:
        proc.send_signal(signal.SIGTERM)
    for proc in workers:
        assert proc.wait(timeout=30) == 0
    assert sum(receiver.hits.values()) == total, "some delivery was sent twice"
    assert await settled(store_url) == (total, total)


async def test_a_killed_workers_leases_are_taken_over_and_nothing_is_lost(
    store_url: str, receiver: CountingReceiver, workers: list[subprocess.Popen[bytes]]
) -> None:
    total = 300
    receiver.delay_s = 0.2  # slow enough that the victim holds leases when it dies
    await emit_many(store_url, receiver.url, total)
    lease = ("--lease-ms", "3000", "--timeout-ms", "2000", "--concurrency", "20")
    victim = start_worker(workers, store_url, "victim", *lease)
    await wait_for(lambda: receiver.unique >= 40, timeout_s=60)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=10) == -signal.SIGKILL
    sent_by_victim = receiver.unique
    assert sent_by_victim < total, "the victim finished before it was killed"

    for name in ("heir-1", "heir-2"):
        start_worker(workers, store_url, name, *lease)
    await wait_for(lambda: receiver.unique == total, timeout_s=120)
    await wait_for_settled(store_url, total)
    # At least once: only requests in flight when the victim died may be sent again.
    duplicates = sum(n - 1 for n in receiver.hits.values())
    assert duplicates <= 20


async def wait_for_settled(url: str, total: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while await settled(url) != (total, total):
        if time.monotonic() > deadline:
            raise AssertionError(f"not all deliveries succeeded: {await settled(url)}")
        await asyncio.sleep(0.2)
