"""Watching a worker: the periodic summary line and the ``/metrics``, ``/healthz``, ``/readyz``
HTTP endpoints of ``kmsg-webhook worker`` (:func:`serve_health` serves ``kmsg worker``'s too).

``/healthz`` answers 200 while the process serves HTTP at all. ``/readyz`` answers 200 when the
store answers a query within 5 s, else 503 with the reason. ``/metrics`` is the Prometheus text
format (needs the ``metrics`` extra); the outbox gauges are read from the store per scrape (at
most once a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from aiohttp import web

from .hooks import DeliveryHooks, SettledEvent
from .models import EndpointHealth, QueueStats
from .runtime import WebhookRuntimeService

if TYPE_CHECKING:  # the metrics extra is optional
    from .metrics import DeliveryMetrics

logger = logging.getLogger("kmsg_webhook.worker")

READY_TIMEOUT_S = 5.0
_SNAPSHOT_TTL_S = 1.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The outbox as last read, for the summary line and the gauges."""

    at: datetime
    queue: QueueStats
    endpoints: list[EndpointHealth]
    in_flight: int


class WorkerMonitor:
    """Counts what settles (its :attr:`hooks` go to the runtime) and reports on the outbox."""

    def __init__(self, metrics: DeliveryMetrics | None = None) -> None:
        self.metrics = metrics
        self._settled = 0
        self._snapshot: Snapshot | None = None
        self._snapshot_mono = 0.0
        self._runner: web.AppRunner | None = None
        self._summary: asyncio.Task[None] | None = None
        self.hooks = DeliveryHooks(on_settled=self._count)

    def _count(self, event: SettledEvent) -> None:
        self._settled += 1

    async def snapshot(self, runtime: WebhookRuntimeService) -> Snapshot:
        """Read the outbox (reused for a second) and update the gauges."""
        if self._snapshot is not None and time.monotonic() - self._snapshot_mono < _SNAPSHOT_TTL_S:
            return self._snapshot
        queue = await runtime.queue_stats()
        endpoints = await runtime.endpoint_health()
        snap = Snapshot(runtime.clock.now(), queue, endpoints, runtime.in_flight)
        self._snapshot, self._snapshot_mono = snap, time.monotonic()
        if self.metrics is not None:
            self.metrics.observe(
                now=snap.at, queue=queue, endpoints=endpoints, in_flight=snap.in_flight
            )
        return snap

    # -- the summary line ---------------------------------------------------------------------

    def start_summary(self, runtime: WebhookRuntimeService, interval_s: float) -> None:
        """Log a summary line every ``interval_s`` seconds (0: never)."""
        if interval_s > 0 and self._summary is None:
            self._summary = asyncio.get_running_loop().create_task(
                self._summarise(runtime, interval_s)
            )

    async def _summarise(self, runtime: WebhookRuntimeService, interval_s: float) -> None:
        last, last_t = self._settled, time.monotonic()
        while True:
            await asyncio.sleep(interval_s)
            now_t = time.monotonic()
            settled = self._settled - last
            rate = settled / (now_t - last_t)
            last, last_t = self._settled, now_t
            try:
                snap = await self.snapshot(runtime)
            except Exception as exc:
                logger.warning("summary: the store did not answer: %s", exc)
                continue
            queue = snap.queue
            oldest = (snap.at - queue.oldest_due_at).total_seconds() if queue.oldest_due_at else 0
            logger.info(
                "summary: %d settled (%.1f/s), %d in flight, %d due (oldest %.1fs), "
                "%d scheduled, %d leased",
                settled,
                rate,
                snap.in_flight,
                queue.due,
                oldest,
                queue.scheduled,
                queue.leased,
                extra={
                    "settled": settled,
                    "rate_per_s": round(rate, 2),
                    "in_flight": snap.in_flight,
                    "due": queue.due,
                    "oldest_due_age_s": round(oldest, 3),
                    "scheduled": queue.scheduled,
                    "leased": queue.leased,
                },
            )

    # -- HTTP ---------------------------------------------------------------------------------

    async def serve(self, runtime: WebhookRuntimeService, host: str, port: int) -> int:
        """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port``; returns the port
        (useful with 0). A port in use is an :class:`OSError`."""

        async def scrape() -> bytes:
            from prometheus_client import generate_latest

            assert self.metrics is not None
            with contextlib.suppress(Exception):  # stale gauges beat no counters
                await asyncio.wait_for(self.snapshot(runtime), timeout=READY_TIMEOUT_S)
            return bytes(generate_latest(self.metrics.registry))

        self._runner, bound = await serve_health(
            host,
            port,
            ready=runtime.queue_stats,
            scrape=None if self.metrics is None else scrape,
        )
        return bound

    async def close(self) -> None:
        if self._summary is not None:
            self._summary.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._summary
            self._summary = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def serve_health(
    host: str,
    port: int,
    *,
    ready: Callable[[], Awaitable[object]],
    scrape: Callable[[], Awaitable[bytes]] | None,
) -> tuple[web.AppRunner, int]:
    """An HTTP server of ``/healthz`` (200 while it serves), ``/readyz`` (200 when ``ready()``
    returns within 5 s, else 503 with the reason) and, given ``scrape``, ``/metrics`` (its
    Prometheus text). Returns the runner (clean it up to stop) and the bound port."""

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        try:
            await asyncio.wait_for(ready(), timeout=READY_TIMEOUT_S)
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
            return web.json_response({"status": "unavailable", "reason": reason}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics(request: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        assert scrape is not None
        return web.Response(body=await scrape(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if scrape is not None:
        app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])
