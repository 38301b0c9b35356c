"""Slow receivers next to healthy ones, against an all-healthy control in the same run.

    python benchmarks/slow_receivers.py [--endpoints 200] [--slow 20] [--events 20000]
                                        [--stores memory,sqlite,postgres]

Each event goes to exactly one endpoint (round robin through a ``template_id`` filter). Healthy
endpoints answer 204 after 20 ms; slow ones after 5 s, past the 2 s ``timeout_ms``. Every
other setting is a default. The receiver is a separate process (its CPU is not the sender's).

The control differs from the scenario only in how the ``--slow`` endpoints answer: healthy
(after 20 ms) instead of after 5 s. Both runs emit the same events to the same endpoints, and
both count only the deliveries to the endpoints that are healthy in both, so "healthy
deliveries/s" compares the same work with and without slow neighbours.

* memory: one caller emits every event (``await emit`` one after another), then calls
  ``flush()``; the sender is this process.
* sqlite / postgres: this process emits with ``dispatch=False``, and one worker process
  (``kmsg-webhook worker``) sends; the sender is that process (its CPU is read from /proc).

Each store runs the control (every endpoint healthy) and the scenario (``--slow`` of them
slow), ``--rounds`` times alternating. Reported per run: healthy deliveries/s (healthy
deliveries over the time from the first emit to the last healthy receipt), healthy p50/p99
emit→receipt (from when the caller builds the event, so a caller's own queue is not in it),
healthy deliveries that waited over 2 s, sender CPU seconds, the time the emits took and its
slowest 1% (``await emit`` p99: whether intake waits behind the sending) and, for memory,
``flush()``'s time; then the ratios of the scenario to its control
(medians over the rounds), including first emit → flush returned. Absolute figures depend on
the machine and its load; compare ratios, and on a shared machine use several rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from aiohttp import web

from kmsg_webhook import (
    EndpointFilters,
    EndpointInput,
    EventMetadata,
    SecurityOptions,
    WebhookConfig,
    WebhookEvent,
    WebhookRuntimeService,
)

HEALTHY_DELAY_S = 0.02
SLOW_DELAY_S = 5.0
TIMEOUT_MS = 2_000
PG_DSN = os.environ.get("KMSG_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


# --------------------------------------------------------------------------- the receiver


def serve(port: int) -> None:
    """The receiver process: /ok/N answers after 20 ms (and is counted), /peer/N after 20 ms,
    /slow/N after 5 s; /stats, /reset."""
    latencies: list[float] = []
    last = [0.0]

    async def ok(request: web.Request) -> web.Response:
        body = await request.read()
        await asyncio.sleep(HEALTHY_DELAY_S)
        now = time.time()
        latencies.append(now - json.loads(body)["data"]["sent_at"])
        last[0] = now
        return web.Response(status=204)

    async def slow(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(SLOW_DELAY_S)
        return web.Response(status=204)

    async def peer(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(HEALTHY_DELAY_S)
        return web.Response(status=204)

    async def stats(request: web.Request) -> web.Response:
        ordered = sorted(latencies)

        def pct(p: float) -> float:
            return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000 if ordered else 0

        return web.json_response(
            {
                "count": len(ordered),
                "p50_ms": pct(0.50),
                "p99_ms": pct(0.99),
                "over_2s": sum(1 for x in ordered if x > 2),
                "last": last[0],
            }
        )

    async def reset(request: web.Request) -> web.Response:
        latencies.clear()
        last[0] = 0.0
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    app.router.add_post("/ok/{n}", ok)
    app.router.add_post("/slow/{n}", slow)
    app.router.add_post("/peer/{n}", peer)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, backlog=4096)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def receiver() -> AsyncIterator[str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])  # noqa: ASYNC220
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(200):
                try:
                    async with s.get(f"{base}/stats") as r:
                        await r.read()
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def _get(base: str, path: str, *, post: bool = False) -> dict[str, float]:
    async with (
        aiohttp.ClientSession() as s,
        s.request("POST" if post else "GET", f"{base}{path}") as r,
    ):
        data: dict[str, float] = await r.json()
        return data


# --------------------------------------------------------------------------- one run


@dataclass
class Figures:
    healthy: int
    per_s: float
    p50_ms: float
    p99_ms: float
    over_2s: int
    cpu_s: float
    emit_s: float
    emit_p99_ms: float
    flush_s: float | None


def _endpoints(base: str, endpoints: int, slow: int, control: bool) -> list[EndpointInput]:
    # Slow endpoints spread evenly among the healthy ones; in the control they answer fast.
    step = endpoints // slow if slow else 0
    other = "peer" if control else "slow"
    return [
        EndpointInput(
            url=f"{base}/{other if step and n % step == 0 and n // step < slow else 'ok'}/{n}",
            events=["message.sent"],
            filters=EndpointFilters(template_id=(f"T{n}",)),
        )
        for n in range(endpoints)
    ]


def _event(n: int, endpoints: int) -> WebhookEvent:
    return WebhookEvent(
        id=f"evt_{uuid.uuid4().hex}",
        type="message.sent",
        timestamp=datetime.now(UTC),
        data={"sent_at": time.time(), "n": n},
        metadata=EventMetadata(template_id=f"T{n % endpoints}"),
    )


async def _wait_healthy(base: str, expected: int, within_s: float) -> dict[str, float]:
    deadline = time.monotonic() + within_s
    while True:
        stats = await _get(base, "/stats")
        if stats["count"] >= expected or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.1)


async def _emit_all(runtime: WebhookRuntimeService, endpoints: int, events: int) -> float:
    """Emit one after another; returns the p99 of how long an ``await emit`` took (ms)."""
    took = []
    for n in range(events):
        t = time.perf_counter()
        await runtime.emit(_event(n, endpoints))
        took.append(time.perf_counter() - t)
    took.sort()
    return took[min(len(took) - 1, int(0.99 * len(took)))] * 1000


def _figures(
    stats: dict[str, float],
    start: float,
    cpu_s: float,
    emit_s: float,
    emit_p99_ms: float,
    flush_s: float | None,
) -> Figures:
    span = max(1e-9, stats["last"] - start)
    return Figures(
        healthy=int(stats["count"]),
        per_s=stats["count"] / span,
        p50_ms=stats["p50_ms"],
        p99_ms=stats["p99_ms"],
        over_2s=int(stats["over_2s"]),
        cpu_s=cpu_s,
        emit_s=emit_s,
        emit_p99_ms=emit_p99_ms,
        flush_s=flush_s,
    )


async def run_memory(
    base: str, endpoints: int, slow: int, events: int, *, control: bool
) -> Figures:
    await _get(base, "/reset", post=True)
    runtime = WebhookRuntimeService(
        WebhookConfig(timeout_ms=TIMEOUT_MS),
        persistence="memory://",
        security=SecurityOptions(allow_private_hosts=True),
    )
    await runtime.start()
    inputs = _endpoints(base, endpoints, slow, control)
    await runtime.add_endpoints(inputs)
    healthy = sum(1 for n in range(events) if "/ok/" in inputs[n % endpoints].url)
    cpu0 = time.process_time()
    start = time.time()
    emit_p99_ms = await _emit_all(runtime, endpoints, events)
    emit_s = time.time() - start
    flush_started = time.monotonic()
    await runtime.flush()
    flush_s = time.monotonic() - flush_started
    stats = await _wait_healthy(base, healthy, 120)
    cpu_s = time.process_time() - cpu0
    await runtime.shutdown(timeout=1)
    return _figures(stats, start, cpu_s, emit_s, emit_p99_ms, flush_s)


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_sql(
    base: str,
    url: str,
    endpoints: int,
    slow: int,
    events: int,
    *,
    control: bool,
    profile: Path | None = None,
) -> Figures:
    await _get(base, "/reset", post=True)
    intake = WebhookRuntimeService(
        WebhookConfig(timeout_ms=TIMEOUT_MS),
        persistence=url,
        security=SecurityOptions(allow_private_hosts=True),
        dispatch=False,
    )
    await intake.start()
    inputs = _endpoints(base, endpoints, slow, control)
    await intake.add_endpoints(inputs)
    healthy = sum(1 for n in range(events) if "/ok/" in inputs[n % endpoints].url)
    command = [sys.executable, "-m", "kmsg_webhook.cli", "worker", "--store", url]
    options = ["--allow-private-hosts", "--timeout-ms", str(TIMEOUT_MS), "--log-level", "WARNING"]
    worker = subprocess.Popen(  # noqa: ASYNC220 - started once, before measuring
        [*command, *options],
        stdout=subprocess.DEVNULL,
    )
    try:
        await asyncio.sleep(1.5)  # started and idle
        spy = None
        if profile is not None:
            # Collapsed stacks of the worker while it sends (py-spy samples from outside, so
            # the worker's own CPU figure includes no profiler).
            spy = subprocess.Popen(  # noqa: ASYNC220
                [
                    "py-spy",
                    "record",
                    "--format",
                    "raw",
                    "--rate",
                    "50",
                    "--nonblocking",
                    "-o",
                    str(profile),
                    "-p",
                    str(worker.pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        cpu0 = _proc_cpu_s(worker.pid)
        start = time.time()
        emit_p99_ms = await _emit_all(intake, endpoints, events)
        await intake.flush()
        emit_s = time.time() - start
        stats = await _wait_healthy(base, healthy, 300)
        cpu_s = _proc_cpu_s(worker.pid) - cpu0
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=30)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        await intake.shutdown()
    return _figures(stats, start, cpu_s, emit_s, emit_p99_ms, None)


def _store_url(name: str, tmp: Path) -> str:
    if name == "sqlite":
        return f"sqlite:///{tmp / f'bench-{uuid.uuid4().hex}.db'}"
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    return f"{PG_DSN}?schema={schema}"


# --------------------------------------------------------------------------- report


def _print(label: str, f: Figures) -> None:
    flush = f"{f.flush_s:6.2f} s" if f.flush_s is not None else "     -"
    print(
        f"  {label:<10} healthy {f.healthy:>6}  {f.per_s:8.0f}/s  p50 {f.p50_ms:8.1f} ms  "
        f"p99 {f.p99_ms:8.1f} ms  >2s {f.over_2s:>6}  cpu {f.cpu_s:6.2f} s  "
        f"emit {f.emit_s:6.2f} s (p99 {f.emit_p99_ms:5.1f} ms)  flush {flush}"
    )


def _ratios(pairs: list[tuple[Figures, Figures]]) -> None:
    """Scenario over control per round; with several rounds, the median of each ratio."""

    def median(values: list[float]) -> float:
        return statistics.median(values)

    parts = [
        f"deliveries/s {median([s.per_s / c.per_s for c, s in pairs]):.2f}x",
        f"cpu {median([s.cpu_s / c.cpu_s for c, s in pairs]):.2f}x",
        f"emit→flush {median([_total(s) / _total(c) for c, s in pairs]):.2f}x",
    ]
    flushes = [(c.flush_s, s.flush_s) for c, s in pairs]
    if all(c and s is not None for c, s in flushes):
        parts.append(f"flush {median([s / c for c, s in flushes if c and s is not None]):.2f}x")
    parts.append(
        f"healthy p99 {median([s.p99_ms for _, s in pairs]):.0f} ms "
        f"(control {median([c.p99_ms for c, _ in pairs]):.0f} ms)"
    )
    label = "ratios" if len(pairs) == 1 else f"median/{len(pairs)}"
    print(f"  {label:<10} " + ", ".join(parts))


def _load() -> str:
    """The 1, 5 and 15 minute load averages: ratios of a shared machine need them beside."""
    return " ".join(f"{n:.2f}" for n in os.getloadavg())


def _total(f: Figures) -> float:
    """From the first emit until flush returned (memory) or the emits were stored (SQL)."""
    return f.emit_s + (f.flush_s or 0.0)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=200)
    parser.add_argument("--slow", type=int, default=20)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument(
        "--stores", default="memory", help="comma-separated: memory,sqlite,postgres"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="control/scenario pairs, alternating (medians)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="directory: write py-spy collapsed stacks of each SQL worker run there",
    )
    args = parser.parse_args()
    print(
        f"{args.endpoints} endpoints ({args.slow} slow: answer after {SLOW_DELAY_S:.0f} s, "
        f"timeout {TIMEOUT_MS} ms), {args.events} events, one per endpoint in turn; "
        f"{os.cpu_count()} cores, load {_load()}"
    )
    with tempfile.TemporaryDirectory(prefix="kmsg-slow-") as tmp:
        async with receiver() as base:
            for store in args.stores.split(","):
                print(f"{store}:")
                pairs = []
                for _ in range(args.rounds):
                    pair = []
                    for control in (True, False):
                        run = (base, args.endpoints, args.slow, args.events)
                        if store == "memory":
                            figures = await run_memory(*run, control=control)
                        else:
                            url = _store_url(store, Path(tmp))
                            label = "control" if control else "slow"
                            profile = (
                                None
                                if args.profile is None
                                else args.profile / f"{store}-{args.endpoints}-{label}.txt"
                            )
                            figures = await run_sql(
                                run[0], url, *run[1:], control=control, profile=profile
                            )
                        _print("control" if control else f"{args.slow} slow", figures)
                        print(f"  {'':<10} load after the run {_load()}")
                        pair.append(figures)
                    pairs.append((pair[0], pair[1]))
                _ratios(pairs)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]))
    else:
        asyncio.run(main())
