"""Soak: does the process stay flat under a steady load with retention on?

    python benchmarks/retention_soak.py [--minutes 5] [--rate 1000] [--stores memory sqlite]
                                        [--unbounded]

For each store, one runtime in this process emits ``--rate`` events a second for ``--minutes``
to one endpoint; the receiver (a separate process on loopback) answers 500 to 5% of first
attempts (their retries succeed) and records, per event, when its first attempt arrived and
how long after the emit. Stores: the in-memory store at its defaults (bounded by
``RetentionPolicy``'s ``memory_max_rows``/``memory_max_age``), SQLite (a temporary file) with
retention of one minute for every final status. ``--unbounded`` adds the in-memory store with
its bounds off, the behaviour before retention existed, as the baseline of the same run.

Printed per store: RSS over time, whether it reaches a plateau (growth over the last two
minutes, or the last 40% of a shorter run, below 5%), and the p99 emit-to-first-attempt latency
of the last minute against the first (or of the last and first fifth of a shorter run; target:
within 1.5x). The achieved event rate is printed too: on a busy machine the runtime may not
keep up with ``--rate``, and then every figure says more about the machine than the code.
At a lower ``--rate``, ``--memory-max-rows`` scales the in-memory cap down so it is reached as
early in the run as the default cap is at 1,000 events/s (after 100 s).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web

from kmsg_webhook import (
    EndpointInput,
    RetentionPolicy,
    SecurityOptions,
    WebhookConfig,
    WebhookEvent,
    WebhookEventType,
    WebhookRuntimeService,
)

FAIL_EVERY = 20  # 5% of first attempts answer 500
SAMPLE_S = 10.0


# -- the receiver (a child process) -------------------------------------------------------------


def serve(port: int) -> None:
    seen: set[str] = set()
    first: list[tuple[float, float]] = []  # (arrival, emit-to-arrival latency) per event
    answered = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal answered
        body = await request.read()
        now = time.time()
        answered += 1
        event_id = request.headers.get("webhook-id", "")
        if event_id in seen:
            return web.Response(text="ok")  # a retry: it succeeds
        seen.add(event_id)
        first.append((now, now - json.loads(body)["data"]["sent_at"]))
        failing = len(first) % FAIL_EVERY == 0
        return web.Response(status=500 if failing else 200, text="ok")

    async def samples(request: web.Request) -> web.Response:
        payload = {"answered": answered, "first": first[:]}
        first.clear()
        seen.clear()
        return web.json_response(payload)

    app = web.Application()
    app.router.add_get("/samples", samples)
    app.router.add_post("/hook", hook)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- one soak -----------------------------------------------------------------------------------


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@dataclass
class Soak:
    name: str
    rss: list[tuple[float, float]] = field(default_factory=list)  # (seconds in, MiB)
    disk: list[float] = field(default_factory=list)  # database files, MiB, at the same times
    emitted: int = 0
    failed_emits: int = 0
    seconds: float = 0.0
    database: Path | None = None
    first: list[tuple[float, float]] = field(default_factory=list)
    # Full (generation 2) garbage collections: (seconds in, pause in seconds).
    collections: list[tuple[float, float]] = field(default_factory=list)


def files_mib(database: Path | None) -> float:
    """The database file with its -wal and -shm, in MiB (0 without a file)."""
    if database is None:
        return 0.0
    files = database.parent.glob(database.name + "*")
    return sum(os.path.getsize(p) for p in files) / (1024 * 1024)


async def soak(
    name: str,
    persistence: str,
    retention: RetentionPolicy,
    args: argparse.Namespace,
    url: str,
    database: Path | None,
) -> Soak:
    result = Soak(name, database=database)
    tag = "".join(c for c in name if c.isalnum())
    config = WebhookConfig(
        retention=retention,
        max_retries=3,
        retry_delay_ms=1_000,
        batch_size=100,
        batch_timeout_ms=5,
    )
    runtime = WebhookRuntimeService(
        config, persistence=persistence, security=SecurityOptions(allow_private_hosts=True)
    )
    await runtime.start()
    await runtime.add_endpoint(EndpointInput(url=url, events=[WebhookEventType.MESSAGE_SENT]))
    duration = args.minutes * 60
    per_tick = max(1, args.rate // 100)
    pending: set[asyncio.Task[None]] = set()

    async def emit(n: int) -> None:
        event = WebhookEvent(
            id=f"{tag}_{n}",
            type=WebhookEventType.MESSAGE_SENT,
            timestamp=datetime.now(UTC),
            data={"sent_at": time.time(), "to": "01012345678", "text": "x" * 300},
        )
        try:
            await runtime.emit(event)
        except Exception:
            result.failed_emits += 1

    start = time.monotonic()
    collecting = 0.0

    def on_collection(phase: str, info: dict[str, int]) -> None:
        nonlocal collecting
        if info["generation"] != 2:
            return
        if phase == "start":
            collecting = time.monotonic()
        else:
            result.collections.append((collecting - start, time.monotonic() - collecting))

    gc.callbacks.append(on_collection)
    next_sample = 0.0
    n = 0
    while (elapsed := time.monotonic() - start) < duration:
        if elapsed >= next_sample:
            result.rss.append((elapsed, rss_mib()))
            result.disk.append(files_mib(database))
            next_sample += SAMPLE_S
        # Keep pace with the wall clock: what a slow tick missed is emitted in the next one.
        due = int(elapsed * args.rate) - n
        for _ in range(min(due, per_tick * 10)):
            task = asyncio.get_running_loop().create_task(emit(n))
            pending.add(task)
            task.add_done_callback(pending.discard)
            n += 1
        await asyncio.sleep(0.01)
    result.rss.append((time.monotonic() - start, rss_mib()))
    result.disk.append(files_mib(database))
    gc.callbacks.remove(on_collection)
    result.emitted = n
    result.seconds = time.monotonic() - start
    if pending:
        await asyncio.gather(*pending)
    await runtime.shutdown(drain=False)
    return result


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] * 1000 if len(values) >= 2 else float("nan")


def report(result: Soak) -> None:
    print(f"\n== {result.name}")
    rate = result.emitted / result.seconds if result.seconds else 0
    print(f"   emitted {result.emitted} events in {result.seconds:.0f}s ({rate:.0f}/s)", end="")
    print(f", {result.failed_emits} emits failed")
    print("   t(s)  RSS MiB" + ("  database MiB" if result.database else ""))
    for (t, mib), disk in zip(result.rss, result.disk, strict=True):
        print(f"   {t:5.0f}  {mib:7.1f}" + (f"  {disk:12.1f}" if result.database else ""))
    duration = result.seconds
    tail = min(120.0, 0.4 * duration)
    before = [mib for t, mib in result.rss if t <= duration - tail]
    growth = (result.rss[-1][1] - before[-1]) / before[-1] if before else float("nan")
    verdict = "plateau" if growth < 0.05 else "still growing"
    print(f"   RSS growth over the last {tail:.0f}s: {growth:+.1%} ({verdict}; target < 5%)")
    window = min(60.0, duration / 5)
    if result.first:
        t0 = result.first[0][0]
        early = [lat for at, lat in result.first if at - t0 <= window]
        late = [lat for at, lat in result.first if at - t0 >= duration - window]
        p_early, p_late = _p99(early), _p99(late)
        ratio = p_late / p_early if p_early else float("nan")
        print(
            f"   first-attempt p99: first {window:.0f}s {p_early:.1f} ms, last {window:.0f}s "
            f"{p_late:.1f} ms: {ratio:.2f}x (target <= 1.5x)"
        )
    # A full collection pauses the event loop for as long as it walks every tracked object.
    for label, pauses in (
        (f"first {window:.0f}s", [p for t, p in result.collections if t <= window]),
        (f"last {window:.0f}s", [p for t, p in result.collections if t >= duration - window]),
    ):
        longest = max(pauses, default=0.0) * 1000
        print(f"   full GC collections, {label}: {len(pauses)}, longest {longest:.1f} ms")


async def main(args: argparse.Namespace) -> None:
    port = _free_port()
    receiver = await asyncio.create_subprocess_exec(sys.executable, __file__, "--serve", str(port))
    url = f"http://127.0.0.1:{port}/hook"
    try:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/samples"):
                        break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.05)
            runs: list[tuple[str, str, RetentionPolicy, Path | None]] = []
            with tempfile.TemporaryDirectory(prefix="kmsg-soak-") as tmp:
                for store in args.stores:
                    if store == "memory":
                        policy = RetentionPolicy()
                        name = "memory (defaults)"
                        if args.memory_max_rows is not None:
                            policy = RetentionPolicy(memory_max_rows=args.memory_max_rows)
                            name = f"memory (at most {args.memory_max_rows} rows)"
                        runs.append((name, "memory://", policy, None))
                    elif store == "sqlite":
                        path = Path(tmp, "soak.db")
                        kept = timedelta(seconds=args.retention_s)
                        policy = RetentionPolicy(success=kept, failed=kept, exhausted=kept)
                        name = f"sqlite ({args.retention_s:g} s retention)"
                        runs.append((name, f"sqlite:///{path}", policy, path))
                if args.unbounded:
                    off = RetentionPolicy(memory_max_rows=None, memory_max_age=None)
                    runs.append(("memory (unbounded baseline)", "memory://", off, None))
                for name, persistence, policy, path in runs:
                    result = await soak(name, persistence, policy, args, url, path)
                    async with session.get(f"http://127.0.0.1:{port}/samples") as response:
                        result.first = [tuple(s) for s in (await response.json())["first"]]
                    report(result)
    finally:
        receiver.terminate()
        await receiver.wait()
    print("\nThe machine is shared: compare ratios within this run, not absolute figures.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--rate", type=int, default=1000, help="events a second")
    parser.add_argument(
        "--stores", nargs="+", choices=["memory", "sqlite"], default=["memory", "sqlite"]
    )
    parser.add_argument("--unbounded", action="store_true", help="also the memory store unbounded")
    parser.add_argument(
        "--memory-max-rows",
        type=int,
        help="the in-memory store's row cap (default: RetentionPolicy's); scale it with "
        "--rate so the cap is reached within the run",
    )
    parser.add_argument(
        "--retention-s",
        type=float,
        default=60.0,
        help="how long SQLite keeps finished deliveries (shorter: deletes start sooner)",
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.serve:
        serve(parsed.serve)
    else:
        asyncio.run(main(parsed))
