"""CPU per signed POST and requests/s of each transport, as ratios to a bare aiohttp loop.

    python benchmarks/transport.py [--requests 20000] [--rounds 3] [--pin-sender]
                                   [--schemes http,https]

Every variant sends the same work: 64 concurrent callers, each building a JSON event and its
Standard Webhooks HMAC signature per request, POSTing it to one of 8 paths on one local
receiver (nginx when installed, else benchmarks/receiver.py; pinned to core 1) and reading the
answer. Over https, nginx serves a certificate from a CA this script makes (https needs nginx).
Variants:

* ``aiohttp loop``: ``session.post`` with a bare ``aiohttp.ClientSession`` (the baseline);
* ``aiohttp loop, uvloop``: the same on uvloop;
* ``AiohttpTransport``: the transport seam over an aiohttp session (what the seam costs);
* ``LeanTransport`` and ``LeanTransport, uvloop``: the lean HTTP/1.1 transport.

Each variant runs on its own event loop in a thread; its CPU is that thread's CPU time
(``time.thread_time``), so the receiver and this script's idle main loop are not counted.
Rounds alternate the variants so background load hits them alike; medians are printed with
each round's ratio to the baseline of the same round. Absolute figures depend on the machine
and its load; compare the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from yarl import URL

from kmsg_webhook import eventloop, generate_secret
from kmsg_webhook.transport import AiohttpTransport, LeanTransport, Target, Transport
from kmsg_webhook.urlguard import GuardedResolver
from throughput import (
    CONCURRENCY,
    ENDPOINTS,
    NGINX_CONF,
    _free_port,
    nginx_receiver,
    receiver_process,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.certs import LocalCA

KEY = base64.b64decode(generate_secret().removeprefix("whsec_"))
Post = Callable[[int, dict[str, str], bytes], Awaitable[None]]


@dataclass(frozen=True)
class Receiver:
    base: str
    #: Trusts the receiver's certificate (https), else None.
    tls: ssl.SSLContext | None = None


def signed(n: int) -> tuple[dict[str, str], bytes]:
    """The per-request work every variant does: a JSON event and its signature headers."""
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
    mac = hmac.new(KEY, f"evt_{n}.{ts}.".encode() + body, hashlib.sha256).digest()
    headers = {
        "webhook-id": f"evt_{n}",
        "webhook-timestamp": ts,
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }
    return headers, body


async def drive(post: Post, total: int) -> float:
    """Requests/s of ``CONCURRENCY`` callers sharing ``total`` requests."""
    counter = iter(range(total))

    async def caller() -> None:
        for n in counter:
            headers, body = signed(n)
            await post(n, headers, body)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
    return total / (time.perf_counter() - started)


def _connector(receiver: Receiver) -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(limit=CONCURRENCY, limit_per_host=0, ssl=receiver.tls or True)


async def aiohttp_loop(receiver: Receiver, total: int) -> float:
    async with aiohttp.ClientSession(connector=_connector(receiver)) as session:
        urls = [f"{receiver.base}/hooks/{i}" for i in range(ENDPOINTS)]

        async def post(n: int, headers: dict[str, str], body: bytes) -> None:
            headers["Content-Type"] = "application/json"
            async with session.post(urls[n % ENDPOINTS], data=body, headers=headers) as answer:
                await answer.read()

        await drive(post, 1_000)  # warm-up: connections, code paths
        return await drive(post, total)


async def through(transport: Transport, receiver: Receiver, total: int) -> float:
    targets = [
        Target.from_url(URL(f"{receiver.base}/hooks/{i}"), {"Content-Type": "application/json"})
        for i in range(ENDPOINTS)
    ]

    async def post(n: int, headers: dict[str, str], body: bytes) -> None:
        await transport.post(
            targets[n % ENDPOINTS], headers, body, time_limit=30, max_body_bytes=1024
        )

    try:
        await drive(post, 1_000)
        return await drive(post, total)
    finally:
        await transport.aclose()


async def aiohttp_transport(receiver: Receiver, total: int) -> float:
    session = aiohttp.ClientSession(connector=_connector(receiver))
    return await through(AiohttpTransport(session, owns_session=True), receiver, total)


async def lean_transport(receiver: Receiver, total: int) -> float:
    guard = GuardedResolver(allow_private_hosts=True)
    transport = LeanTransport(resolver=guard, ssl_context=receiver.tls)
    return await through(transport, receiver, total)


@dataclass(frozen=True)
class Variant:
    name: str
    run: Callable[[Receiver, int], Awaitable[float]]
    loop: str


VARIANTS = [
    Variant("aiohttp loop", aiohttp_loop, "asyncio"),
    Variant("aiohttp loop, uvloop", aiohttp_loop, "uvloop"),
    Variant("AiohttpTransport", aiohttp_transport, "asyncio"),
    Variant("LeanTransport", lean_transport, "asyncio"),
    Variant("LeanTransport, uvloop", lean_transport, "uvloop"),
]


def measure(variant: Variant, receiver: Receiver, total: int) -> tuple[float, float]:
    """(requests/s, µs of this thread's CPU per request) of one variant on a fresh loop."""
    cpu = time.thread_time()
    rate = eventloop.run(variant.run(receiver, total), loop=variant.loop)
    return rate, (time.thread_time() - cpu) / (total + 1_000) * 1e6


@asynccontextmanager
async def nginx_https() -> AsyncIterator[Receiver]:
    """nginx on core 1 serving https with a certificate for 127.0.0.1 from a fresh CA."""
    nginx = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if nginx is None:
        raise SystemExit("https needs nginx (apt-get install nginx-light)")
    workdir = Path(tempfile.mkdtemp(prefix="kmsg-bench-nginx-tls-"))
    ca = LocalCA.make()
    ca.server_context(workdir, "127.0.0.1")  # writes server-127.0.0.1.pem and .key
    port = _free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(
        NGINX_CONF.replace(
            "listen 127.0.0.1:{port};",
            "listen 127.0.0.1:{port} ssl; ssl_certificate {dir}/server-127.0.0.1.pem; "
            "ssl_certificate_key {dir}/server-127.0.0.1.key;",
        ).format(dir=workdir, port=port)
    )
    cmd = [nginx, "-c", str(conf), "-p", str(workdir), "-e", str(workdir / "error.log")]
    if (os.cpu_count() or 1) > 1:
        cmd = ["taskset", "-c", "1", *cmd]
    proc = subprocess.Popen(cmd)  # noqa: ASYNC220 - started once, before measuring
    try:
        for _ in range(100):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            await asyncio.sleep(0.05)
        else:
            raise SystemExit(f"nginx did not start (see {workdir}/error.log)")
        yield Receiver(f"https://127.0.0.1:{port}", ca.client_context())
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def compare(receiver: Receiver, requests: int, rounds: int) -> None:
    """Run every variant ``rounds`` times against ``receiver`` and print the ratios."""
    rates: dict[str, list[float]] = {v.name: [] for v in VARIANTS}
    cpus: dict[str, list[float]] = {v.name: [] for v in VARIANTS}
    for _ in range(rounds):
        for variant in VARIANTS:
            rate, cpu = await asyncio.to_thread(measure, variant, receiver, requests)
            rates[variant.name].append(rate)
            cpus[variant.name].append(cpu)
    baseline = VARIANTS[0].name
    print(f"{'variant':24} {'req/s':>9} {'x base':>7} {'CPU/req':>9} {'x base':>7}  (rounds)")
    for variant in VARIANTS:
        rate_ratios = [r / b for r, b in zip(rates[variant.name], rates[baseline], strict=True)]
        cpu_ratios = [c / b for c, b in zip(cpus[variant.name], cpus[baseline], strict=True)]
        print(
            f"{variant.name:24} {statistics.median(rates[variant.name]):9,.0f} "
            f"{statistics.median(rate_ratios):7.2f} "
            f"{statistics.median(cpus[variant.name]):7.1f}µs "
            f"{statistics.median(cpu_ratios):7.2f}  "
            f"(req/s x {', '.join(f'{r:.2f}' for r in rate_ratios)}; "
            f"CPU x {', '.join(f'{c:.2f}' for c in cpu_ratios)})"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--pin-sender", action="store_true", help="pin this process to core 0 (receiver: core 1)"
    )
    parser.add_argument("--receiver", choices=("auto", "nginx", "aiohttp"), default="auto")
    parser.add_argument("--schemes", default="http,https", help="comma-separated: http,https")
    args = parser.parse_args()
    if args.pin_sender and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    pinned = "pinned to core 0" if args.pin_sender else "not pinned"
    work = f"{args.requests:,} requests x {args.rounds} rounds, {CONCURRENCY} callers"
    schemes = args.schemes.split(",")
    if "http" in schemes:
        async with receiver_process() as recorder, nginx_receiver(args.receiver) as fast:
            print(
                f"http, {'nginx' if fast else 'aiohttp'} receiver (core 1); sender {pinned}; {work}"
            )
            await compare(Receiver(fast or recorder), args.requests, args.rounds)
    if "https" in schemes:
        async with nginx_https() as receiver:
            print(f"https, nginx receiver (core 1); sender {pinned}; {work}")
            await compare(receiver, args.requests, args.rounds)


if __name__ == "__main__":
    asyncio.run(main())
