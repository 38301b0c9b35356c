"""End-to-end throughput of the runtime against the raw aiohttp limit, in one run.

    python benchmarks/throughput.py [--deliveries 20000] [--stores memory] [--crypto]

The receiver runs pinned to one core: nginx when it is installed (it answers 200 and does
almost no work, so what is measured is the sender), else an aiohttp server; an aiohttp server
that records emit→receipt latency, on the same core, serves the latency measurement. The
sender (this process, with its threads) and a database server are not pinned, as in a
deployment; ``--pin-sender`` pins this process and the worker processes to the other core.
Reported:

* raw limit: a bare aiohttp POST loop that builds the JSON body and the Standard Webhooks
  HMAC signature per request, with the same concurrency the runtime uses;
* the runtime end to end per store: ``emit`` → outbox → claim → signed POST → record;
  deliveries/s and **the ratio** to the raw limit (the figure to compare run to run);
* p50/p99/max emit→receipt latency with events emitted at half the measured runtime capacity
  (after a warm-up at that rate, see ``latency_at``);
* peak RSS of this process;
* with ``--crypto``: for memory and SQLite (among ``--stores``), the runtime with field crypto
  off and on (``FieldCryptoConfig`` defaults: payload encrypted, ``to``/``from`` hashed),
  alternating rounds on the same events (which carry a phone number), and the cost of "on"
  as the median of the per-round throughput drops.

Absolute numbers depend on the machine and its load; ratios are what compare across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import hashlib
import hmac
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from kmsg_webhook import (
    DeliveryFilter,
    DeliveryStatus,
    EndpointFilters,
    EndpointInput,
    EventMetadata,
    SecurityOptions,
    WebhookConfig,
    WebhookEvent,
    WebhookEventType,
    WebhookPersistence,
    WebhookRuntimeService,
    create_in_memory_persistence,
    generate_secret,
)
from kmsg_webhook.crypto import FieldCryptoConfig, StaticKeyProvider, generate_key
from kmsg_webhook.stores.url import persistence_from_url
from local_d1 import local_d1, stop_local_d1

HERE = Path(__file__).resolve().parent
CONCURRENCY = 64
ENDPOINTS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PIN_SENDER = [False]  # set from --pin-sender


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {cpu})


NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_buffer_size 64k;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type application/json; return 200 '{{"ok":true}}'; }}
    }}
}}
"""


@asynccontextmanager
async def _server_on_core_1(cmd: list[str], port: int, what: str) -> AsyncIterator[str]:
    """Run ``cmd`` (a server on ``port``) pinned to core 1 until it answers; its base URL."""
    if (os.cpu_count() or 1) > 1:
        cmd = ["taskset", "-c", "1", *cmd]
    proc = subprocess.Popen(cmd)  # noqa: ASYNC220 - started once, before measuring
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(100):
                try:
                    async with s.get(f"{base}/stats") as r:
                        await r.read()
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
            else:
                raise SystemExit(f"{what} did not start")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@asynccontextmanager
async def nginx_receiver(wanted: str) -> AsyncIterator[str | None]:
    """nginx answering 200 to every request, pinned to core 1; ``None`` without nginx."""
    nginx = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if wanted == "aiohttp" or nginx is None:
        if wanted == "nginx":
            raise SystemExit("--receiver nginx: nginx is not installed")
        yield None
        return
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="kmsg-bench-nginx-"))
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=workdir, port=port))
    cmd = [nginx, "-c", str(conf), "-p", str(workdir), "-e", str(workdir / "error.log")]
    async with _server_on_core_1(cmd, port, f"nginx (see {workdir}/error.log)") as base:
        yield base


@asynccontextmanager
async def receiver_process() -> AsyncIterator[str]:
    """The aiohttp receiver that records emit→receipt latency, pinned to core 1."""
    port = _free_port()
    cmd = [sys.executable, str(HERE / "receiver.py"), str(port)]
    async with _server_on_core_1(cmd, port, "the aiohttp receiver") as base:
        yield base


async def receiver_stats(base: str, *, reset: bool = False) -> dict[str, float]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/stats") as r:
            data: dict[str, float] = await r.json()
        if reset:
            async with s.post(f"{base}/reset") as r:
                await r.read()
    return data


_gc_seconds = [0.0, 0.0]  # total, start of the running collection


def _time_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_seconds[1] = time.perf_counter()
    else:
        _gc_seconds[0] += time.perf_counter() - _gc_seconds[1]


gc.callbacks.append(_time_gc)


@contextmanager
def sender_cpu(into: dict[str, list[float]], key: str, total: int) -> Iterator[None]:
    """This process's CPU time per delivery, in µs (steadier than wall time on a shared
    machine); for the runtime also the cyclic GC's time, the CPU of this process's other
    threads (SQLite's engine runs on aiosqlite's) and a local PostgreSQL server's CPU."""
    server_before = postgres_server_cpu()  # read outside this process's measured time
    cpu, loop_cpu, gc_before = time.process_time(), time.thread_time(), _gc_seconds[0]
    yield
    spent, loop_spent = time.process_time() - cpu, time.thread_time() - loop_cpu
    into[key].append(spent / total * 1e6)
    if key == "runtime":
        into["gc"].append((_gc_seconds[0] - gc_before) / total * 1e6)
        into["threads"].append((spent - loop_spent) / total * 1e6)
        into["server"].append((postgres_server_cpu() - server_before) / total * 1e6)


def postgres_server_cpu() -> float:
    """CPU seconds used so far by this machine's PostgreSQL processes (all of them, and their
    exited children), read from ``/proc``; 0 where it cannot be read."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # exited meanwhile
        name, fields = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :]
        if name.startswith("postgres"):
            # utime, stime, cutime, cstime: fields 14-17 of proc(5), 12-15 after the name.
            total += sum(int(f) for f in fields.split()[11:15])
    return total / os.sysconf("SC_CLK_TCK")


async def raw_limit(base: str, total: int) -> float:
    """Deliveries/s of a bare signed POST loop: the ceiling for any sender in Python."""
    key = base64.b64decode(generate_secret().removeprefix("whsec_"))
    connector = aiohttp.TCPConnector(limit=CONCURRENCY, limit_per_host=0)
    counter = iter(range(total))

    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for n in counter:
                event = {
                    "id": f"evt_{n}",
                    "type": "message.sent",
                    "timestamp": datetime.now(UTC).isoformat(),
                    "data": {"n": n, "sent_at": time.time()},
                    "metadata": {"providerId": f"p{n % ENDPOINTS}"},
                    "version": "1.0",
                }
                body = json.dumps(event, separators=(",", ":")).encode()
                ts = str(int(time.time()))
                mac = hmac.new(key, f"evt_{n}.{ts}.".encode() + body, hashlib.sha256).digest()
                headers = {
                    "Content-Type": "application/json",
                    "webhook-id": f"evt_{n}",
                    "webhook-timestamp": ts,
                    "webhook-signature": "v1," + base64.b64encode(mac).decode(),
                }
                url = f"{base}/hooks/{n % ENDPOINTS}"
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return total / (time.perf_counter() - started)


def _event(n: int, *, recipient: bool = False) -> WebhookEvent:
    data: dict[str, object] = {"n": n, "sent_at": time.time()}
    if recipient:  # what the provider feed emits (with full numbers, for field crypto)
        data.update(to=f"010-{n % 10_000:04d}-5678", **{"from": "02-555-0199"}, status="SENT")
    return WebhookEvent(
        id=f"evt_{n}",
        type=WebhookEventType.MESSAGE_SENT,
        timestamp=datetime.now(UTC),
        data=data,
        metadata=EventMetadata(provider_id=f"p{n % ENDPOINTS}"),
    )


def _field_crypto() -> FieldCryptoConfig:
    """The secure defaults: secrets and payloads encrypted, to/from encrypted and hashed."""
    keys = StaticKeyProvider({"bench": generate_key()}, hash_key=generate_key())
    return FieldCryptoConfig(keys=keys)


def bench_config(**changes: Any) -> WebhookConfig:
    """The runtime settings every benchmark run uses: 64-wide, large batches."""
    settings: dict[str, Any] = {
        "max_concurrency": CONCURRENCY,
        "max_concurrency_per_endpoint": CONCURRENCY,
        "batch_size": 500,
        "batch_timeout_ms": 20,
        "claim_batch_size": 200,
        "intake_queue_size": 20_000,
        "timeout_ms": 10_000,
    }
    return WebhookConfig(**{**settings, **changes})


async def _runtime(
    base: str,
    persistence: WebhookPersistence,
    *,
    dispatch: bool = True,
    field_crypto: FieldCryptoConfig | None = None,
) -> WebhookRuntimeService:
    runtime = WebhookRuntimeService(
        bench_config(),
        persistence=persistence,
        security=SecurityOptions(allow_private_hosts=True),
        dispatch=dispatch,
        field_crypto=field_crypto,
    )
    await runtime.start()
    for i in range(ENDPOINTS):
        await runtime.add_endpoint(
            EndpointInput(
                url=f"{base}/hooks/{i}",
                events=[WebhookEventType.MESSAGE_SENT],
                filters=EndpointFilters(provider_id=(f"p{i}",)),
            )
        )
    return runtime


def _round_trips(persistence: WebhookPersistence) -> int | None:
    """HTTP round trips so far, for stores that talk HTTP (D1)."""
    client = getattr(persistence.delivery_store, "client", None)
    return None if client is None else int(client.round_trips)


async def runtime_throughput(
    base: str,
    persistence: WebhookPersistence,
    total: int,
    *,
    field_crypto: FieldCryptoConfig | None = None,
    recipient: bool = False,
) -> float:
    runtime = await _runtime(base, persistence, field_crypto=field_crypto)
    trips_before = _round_trips(persistence)
    try:
        counter = iter(range(total))

        async def producer() -> None:  # like request handlers, each awaiting its emit
            for n in counter:
                await runtime.emit(_event(n, recipient=recipient))

        started = time.perf_counter()
        await asyncio.gather(*(producer() for _ in range(CONCURRENCY)))
        await runtime.flush()
        elapsed = time.perf_counter() - started
        stats = (await runtime.stats(DeliveryFilter())).deliveries
        if stats.success != total:
            raise SystemExit(f"runtime delivered {stats.success}/{total} ({stats})")
        trips_after = _round_trips(persistence)
        if trips_before is not None and trips_after is not None:
            per = (trips_after - trips_before) / total
            print(f"  HTTP round trips per delivery under load: {per:.3f}")
        return total / elapsed
    finally:
        await runtime.shutdown()


LATENCY_WARM_UP_S = 0.5


async def latency_at(
    base: str, persistence: WebhookPersistence, rate: float, seconds: float
) -> None:
    """Emit open-loop at ``rate`` events/s; the receiver measures emit→receipt.

    A warm-up of ``LATENCY_WARM_UP_S`` at the same rate comes first and is not counted: a
    runtime just started on a store just created opens its connections, prepares its
    statements and fills the new tables' caches on its first events, which a running
    service did long ago: counted, that start-up alone decides a short run's p99.
    """
    runtime = await _runtime(base, persistence)
    try:
        await _emit_at(runtime, rate, LATENCY_WARM_UP_S, first=9_000_000)
        await receiver_stats(base, reset=True)
        await _emit_at(runtime, rate, seconds, first=10_000_000)
        pending = (
            await runtime.stats(DeliveryFilter(statuses=(DeliveryStatus.PENDING,)))
        ).deliveries
        assert pending.total == 0
    finally:
        await runtime.shutdown()


async def _emit_at(runtime: WebhookRuntimeService, rate: float, seconds: float, first: int) -> None:
    """Emit ``rate`` events/s for ``seconds`` without waiting for one before the next, then
    wait for them all to be delivered."""
    total = int(rate * seconds)
    started = time.perf_counter()
    tasks = []
    for n in range(total):
        delay = started + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(runtime.emit(_event(first + n))))
    await asyncio.gather(*tasks)
    await runtime.flush()


POSTGRES_DSN = os.environ.get(
    "KMSG_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
_SCRATCH = tempfile.mkdtemp(prefix="kmsg-bench-")


def _store_url(name: str) -> str:
    """A fresh, empty store of the named kind (new SQLite file, Postgres schema, D1 tables)."""
    tag = uuid.uuid4().hex[:10]
    if name == "memory":
        return "memory://"
    if name == "sqlite":
        return f"sqlite:///{_SCRATCH}/bench-{tag}.db"
    if name == "postgres":
        return f"{POSTGRES_DSN}?schema=bench_{tag}"
    if name == "d1":
        host, token = local_d1()
        return (
            f"d1+http://{host}/bench/bench?token={token}"
            f"&endpoint_table=ep_{tag}&delivery_table=dlv_{tag}"
        )
    raise SystemExit(f"unknown store {name!r} (memory, sqlite, postgres, d1)")


def _is_local(dsn: str) -> bool:
    return urllib.parse.urlsplit(dsn).hostname in ("127.0.0.1", "localhost", "::1", None)


def _persistence(name: str) -> WebhookPersistence:
    if name == "memory":
        return create_in_memory_persistence()
    return persistence_from_url(_store_url(name))


async def intake_rate(base: str, name: str, total: int) -> float:
    """Rows/s written by an intake-only runtime (group-committed emits, nothing sent)."""
    runtime = await _runtime(base, _persistence(name), dispatch=False)
    try:
        counter = iter(range(total))

        async def producer() -> None:
            for n in counter:
                await runtime.emit(_event(20_000_000 + n))

        started = time.perf_counter()
        await asyncio.gather(*(producer() for _ in range(CONCURRENCY)))
        await runtime.flush()
        return total / (time.perf_counter() - started)
    finally:
        await runtime.shutdown()


async def worker_processes_rate(base: str, total: int, count: int) -> float:
    """Deliveries/s when ``count`` worker processes drain a Postgres backlog of ``total``."""
    url = _store_url("postgres")
    runtime = await _runtime(base, persistence_from_url(url), dispatch=False)
    try:
        counter = iter(range(total))

        async def producer() -> None:
            for n in counter:
                await runtime.emit(_event(30_000_000 + n))

        await asyncio.gather(*(producer() for _ in range(CONCURRENCY)))
        await runtime.flush()
        before = (await receiver_stats(base))["count"]
        procs = [
            subprocess.Popen(  # noqa: ASYNC220 - started once, before the clock matters
                [
                    *(["taskset", "-c", "0"] if PIN_SENDER[0] else []),
                    sys.executable,
                    "-m",
                    "kmsg_webhook.cli",
                    "worker",
                    "--store",
                    url,
                    "--allow-private-hosts",
                    "--poll-ms",
                    "50",
                    "--concurrency",
                    str(CONCURRENCY),
                    "--per-endpoint",
                    str(CONCURRENCY),
                ],
                stdout=subprocess.DEVNULL,
            )
            for _ in range(count)
        ]
        started = time.perf_counter()
        try:
            while (await receiver_stats(base))["count"] - before < total:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # the receiver is another process: poll its count
            elapsed = time.perf_counter() - started
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)
        return total / elapsed
    finally:
        await runtime.shutdown()


async def crypto_cost(base: str, name: str, total: int, rounds: int) -> None:
    """Field crypto off and on, alternating rounds: the median throughput drop of "on", and
    the sender's CPU time per delivery (steadier than wall time on a shared machine)."""
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(rounds):
        for crypto in (False, True):
            started = time.process_time()
            rates[crypto].append(
                await runtime_throughput(
                    base,
                    _persistence(name),
                    total,
                    field_crypto=_field_crypto() if crypto else None,
                    recipient=True,
                )
            )
            cpu[crypto].append((time.process_time() - started) / total * 1e6)
    costs = sorted(1 - on / off for off, on in zip(rates[False], rates[True], strict=True))
    off_cpu, on_cpu = statistics.median(cpu[False]), statistics.median(cpu[True])
    print(
        f"field crypto [{name:8}]  off {statistics.median(rates[False]):8,.0f}/s  "
        f"on {statistics.median(rates[True]):8,.0f}/s  cost {statistics.median(costs):6.1%}  "
        f"(rounds: {', '.join(f'{c:.1%}' for c in costs)})"
    )
    print(
        f"  sender CPU per delivery: off {off_cpu:.0f} µs, on {on_cpu:.0f} µs "
        f"(+{on_cpu / off_cpu - 1:.1%})"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=20_000)
    parser.add_argument(
        "--stores",
        default="memory,sqlite,postgres,d1",
        help="comma-separated: memory,sqlite,postgres,d1",
    )
    parser.add_argument("--workers", action="store_true", help="also 1 vs 2 Postgres workers")
    parser.add_argument("--rounds", type=int, default=3, help="alternating raw/runtime rounds")
    parser.add_argument("--latency-seconds", type=float, default=4.0)
    parser.add_argument(
        "--crypto",
        action="store_true",
        help="also field crypto off vs on for memory and sqlite (among --stores)",
    )
    parser.add_argument(
        "--crypto-only", action="store_true", help="only the field crypto comparison"
    )
    parser.add_argument(
        "--pin-sender",
        action="store_true",
        help="pin this process (and worker processes) to core 0; the receiver is on core 1",
    )
    parser.add_argument(
        "--gc-threshold",
        type=int,
        default=None,
        help="gc.set_threshold(N, 20, 20) before measuring, as a tuned service would "
        "(default: Python's own thresholds)",
    )
    parser.add_argument(
        "--receiver",
        choices=("auto", "nginx", "aiohttp"),
        default="auto",
        help="what answers the throughput runs (auto: nginx when installed)",
    )
    args = parser.parse_args()
    stores = args.stores.split(",")
    if args.gc_threshold is not None:
        gc.set_threshold(args.gc_threshold, 20, 20)
        print(f"gc thresholds: {gc.get_threshold()}")
    if args.pin_sender and (os.cpu_count() or 1) > 1:
        PIN_SENDER[0] = True
        _pin(0)
    async with receiver_process() as recorder, nginx_receiver(args.receiver) as fast:
        base = fast or recorder
        print(
            f"receiver: {'nginx' if fast else 'aiohttp'} (pinned to core 1); sender "
            + ("pinned to core 0" if PIN_SENDER[0] else "not pinned")
        )
        await raw_limit(base, 2_000)  # warm-up: connections, code paths
        for name in [] if args.crypto_only else stores:
            # Alternate raw and runtime rounds so background load hits both alike; the median
            # of the per-round ratios is the figure to compare across runs.
            limits, rates = [], []
            cpu: dict[str, list[float]] = {
                "raw": [],
                "runtime": [],
                "gc": [],
                "threads": [],
                "server": [],
            }
            for _ in range(args.rounds):
                with sender_cpu(cpu, "raw", args.deliveries):
                    limits.append(await raw_limit(base, args.deliveries))
                with sender_cpu(cpu, "runtime", args.deliveries):
                    rates.append(
                        await runtime_throughput(base, _persistence(name), args.deliveries)
                    )
            ratios = sorted(r / lim for r, lim in zip(rates, limits, strict=True))
            limit, rate = statistics.median(limits), statistics.median(rates)
            print(f"raw aiohttp signed POST loop       {limit:10,.0f} deliveries/s  (the limit)")
            print(
                f"runtime end to end [{name:8}]      {rate:10,.0f} deliveries/s  "
                f"ratio {statistics.median(ratios):.2f}  (rounds: "
                + ", ".join(f"{r:.2f}" for r in ratios)
                + ")"
            )
            raw_us, runtime_us = statistics.median(cpu["raw"]), statistics.median(cpu["runtime"])
            print(
                f"  sender CPU per delivery: raw {raw_us:.0f} µs, runtime {runtime_us:.0f} µs "
                f"(of which cyclic GC {statistics.median(cpu['gc']):.0f} µs, other threads "
                f"{statistics.median(cpu['threads']):.0f} µs)"
            )
            if name == "postgres" and _is_local(POSTGRES_DSN):
                print(
                    "  PostgreSQL server CPU per delivery (its processes on this machine): "
                    f"{statistics.median(cpu['server']):.0f} µs"
                )
            if name != "memory":
                rows = await intake_rate(base, name, args.deliveries)
                print(f"  intake (group commit, no sends): {rows:10,.0f} rows/s")
            await latency_at(recorder, _persistence(name), rate / 2, args.latency_seconds)
            lat = await receiver_stats(recorder, reset=True)
            print(
                f"  latency at half capacity ({rate / 2:,.0f}/s): "
                f"p50 {lat['p50_ms']:.1f} ms  p99 {lat['p99_ms']:.1f} ms  "
                f"max {lat['max_ms']:.1f} ms"
            )
        if args.crypto or args.crypto_only:
            for name in [s for s in ("memory", "sqlite") if s in stores]:
                await crypto_cost(base, name, args.deliveries, args.rounds)
        if args.workers:
            one = await worker_processes_rate(recorder, args.deliveries, 1)
            two = await worker_processes_rate(recorder, args.deliveries, 2)
            print(
                f"postgres, worker processes: 1 → {one:,.0f}/s, 2 → {two:,.0f}/s "
                f"(×{two / one:.2f}"
                + ("; both pinned to the sender core)" if PIN_SENDER[0] else ")")
            )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS (this process)            {peak_mb:10,.0f} MiB")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    finally:
        stop_local_d1()
