"""CPU per signed POST and requests/s of each transport, as ratios to a bare aiohttp loop.

    python benchmarks/transport.py [--requests 20000] [--rounds 3] [--pin-sender]

Every variant sends the same work: 64 concurrent callers, each building a JSON event and its
Standard Webhooks HMAC signature per request, POSTing it to one of 8 paths on one local
receiver (nginx when installed, else benchmarks/receiver.py; pinned to core 1) and reading the
answer. Variants:

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
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from yarl import URL

from kmsg_webhook import eventloop, generate_secret
from kmsg_webhook.transport import AiohttpTransport, LeanTransport, Target, Transport
from kmsg_webhook.urlguard import GuardedResolver
from throughput import CONCURRENCY, ENDPOINTS, nginx_receiver, receiver_process

KEY = base64.b64decode(generate_secret().removeprefix("whsec_"))
Post = Callable[[int, dict[str, str], bytes], Awaitable[None]]


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


async def aiohttp_loop(base: str, total: int) -> float:
    connector = aiohttp.TCPConnector(limit=CONCURRENCY, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        urls = [f"{base}/hooks/{i}" for i in range(ENDPOINTS)]

        async def post(n: int, headers: dict[str, str], body: bytes) -> None:
            headers["Content-Type"] = "application/json"
            async with session.post(urls[n % ENDPOINTS], data=body, headers=headers) as answer:
                await answer.read()

        await drive(post, 1_000)  # warm-up: connections, code paths
        return await drive(post, total)


async def through(transport: Transport, base: str, total: int) -> float:
    targets = [
        Target.from_url(URL(f"{base}/hooks/{i}"), {"Content-Type": "application/json"})
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


async def aiohttp_transport(base: str, total: int) -> float:
    connector = aiohttp.TCPConnector(limit=CONCURRENCY, limit_per_host=0)
    session = aiohttp.ClientSession(connector=connector)
    return await through(AiohttpTransport(session, owns_session=True), base, total)


async def lean_transport(base: str, total: int) -> float:
    guard = GuardedResolver(allow_private_hosts=True)
    return await through(LeanTransport(resolver=guard), base, total)


@dataclass(frozen=True)
class Variant:
    name: str
    run: Callable[[str, int], Awaitable[float]]
    loop: str


VARIANTS = [
    Variant("aiohttp loop", aiohttp_loop, "asyncio"),
    Variant("aiohttp loop, uvloop", aiohttp_loop, "uvloop"),
    Variant("AiohttpTransport", aiohttp_transport, "asyncio"),
    Variant("LeanTransport", lean_transport, "asyncio"),
    Variant("LeanTransport, uvloop", lean_transport, "uvloop"),
]


def measure(variant: Variant, base: str, total: int) -> tuple[float, float]:
    """(requests/s, µs of this thread's CPU per request) of one variant on a fresh loop."""
    cpu = time.thread_time()
    rate = eventloop.run(variant.run(base, total), loop=variant.loop)
    return rate, (time.thread_time() - cpu) / (total + 1_000) * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--pin-sender", action="store_true", help="pin this process to core 0 (receiver: core 1)"
    )
    parser.add_argument("--receiver", choices=("auto", "nginx", "aiohttp"), default="auto")
    args = parser.parse_args()
    if args.pin_sender and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    async with receiver_process() as recorder, nginx_receiver(args.receiver) as fast:
        base = fast or recorder
        print(
            f"receiver: {'nginx' if fast else 'aiohttp'} (core 1); sender "
            f"{'pinned to core 0' if args.pin_sender else 'not pinned'}; "
            f"{args.requests:,} requests x {args.rounds} rounds, {CONCURRENCY} callers"
        )
        rates: dict[str, list[float]] = {v.name: [] for v in VARIANTS}
        cpus: dict[str, list[float]] = {v.name: [] for v in VARIANTS}
        for _ in range(args.rounds):
            for variant in VARIANTS:
                rate, cpu = await asyncio.to_thread(measure, variant, base, args.requests)
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


if __name__ == "__main__":
    asyncio.run(main())
