"""What ordered delivery costs: throughput with ordering as a ratio to unordered, in one run.

    python benchmarks/ordering.py [--deliveries 5000] [--hot 400] [--stores memory,sqlite,postgres]

The same events (each with an ordering key) go to one endpoint, in alternating rounds:

* unordered: the endpoint has ``ordered=False`` (the key is ignored) -- the baseline;
* many keys: ``ordered=True``, keys spread over 1000 values (orders, conversations);
* one hot key: ``ordered=True``, every event with the same key. Delivery is then strictly one
  at a time, so this measures a key's sequential rate (one claim, send and record per
  delivery), not the runtime's capacity; it uses ``--hot`` deliveries.

Printed per store: deliveries/s of each mode per round and the median of the per-round ratios
to the unordered rate of the same round. The receiver is the aiohttp recorder of
``throughput.py``, pinned to core 1. Absolute rates depend on the machine and its load; the
ratios are what compare across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import throughput  # noqa: E402 - the sibling script, for its receiver and store set-up
from kmsg_webhook import (  # noqa: E402
    DeliveryFilter,
    EndpointInput,
    SecurityOptions,
    WebhookConfig,
    WebhookEvent,
    WebhookEventType,
    WebhookRuntimeService,
)

CONCURRENCY = 64
MANY_KEYS = 1000


def _event(n: int, key: str) -> WebhookEvent:
    return WebhookEvent(
        id=f"evt_{n}",
        type=WebhookEventType.MESSAGE_SENT,
        timestamp=datetime.now(UTC),
        data={"n": n, "sent_at": time.time()},
        ordering_key=key,
    )


async def rate(base: str, store: str, total: int, *, ordered: bool, keys: int) -> float:
    """Deliveries/s from the first emit until every delivery succeeded."""
    config = WebhookConfig(
        max_concurrency=CONCURRENCY,
        max_concurrency_per_endpoint=CONCURRENCY,
        batch_size=500,
        batch_timeout_ms=20,
        claim_batch_size=200,
        intake_queue_size=20_000,
        timeout_ms=10_000,
    )
    url = throughput._store_url(store)
    runtime = WebhookRuntimeService(
        config, persistence=url, security=SecurityOptions(allow_private_hosts=True)
    )
    await runtime.start()
    try:
        await runtime.add_endpoint(
            EndpointInput(
                url=f"{base}/hooks/ordered",
                events=[WebhookEventType.MESSAGE_SENT],
                ordered=ordered,
            )
        )
        counter = iter(range(total))

        async def producer() -> None:  # request handlers, each awaiting its emit
            for n in counter:
                await runtime.emit(_event(n, f"key-{n % keys}"))

        started = time.perf_counter()
        await asyncio.gather(*(producer() for _ in range(CONCURRENCY)))
        await runtime.flush()
        elapsed = time.perf_counter() - started
        stats = (await runtime.stats(DeliveryFilter())).deliveries
        if stats.success != total:
            raise SystemExit(f"{store}: delivered {stats.success}/{total} ({stats})")
        return total / elapsed
    finally:
        await runtime.shutdown()
        if store == "postgres":  # each run had a schema of its own
            schema = url.rsplit("schema=", 1)[1]
            connection = await asyncpg.connect(throughput.POSTGRES_DSN)
            try:
                await connection.execute(f'DROP SCHEMA "{schema}" CASCADE')
            finally:
                await connection.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=5_000)
    parser.add_argument("--hot", type=int, default=400, help="deliveries of the one-key mode")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stores", default="memory,sqlite,postgres")
    args = parser.parse_args()
    async with throughput.receiver_process() as base:
        await rate(base, "memory", 500, ordered=False, keys=1)  # warm-up
        for store in args.stores.split(","):
            many: list[float] = []
            hot: list[float] = []
            for n in range(args.rounds):
                plain = await rate(base, store, args.deliveries, ordered=False, keys=MANY_KEYS)
                keyed = await rate(base, store, args.deliveries, ordered=True, keys=MANY_KEYS)
                plain_hot = await rate(base, store, args.hot, ordered=False, keys=1)
                one = await rate(base, store, args.hot, ordered=True, keys=1)
                many.append(keyed / plain)
                hot.append(one / plain_hot)
                print(
                    f"{store} round {n + 1}: unordered {plain:,.0f}/s, "
                    f"{MANY_KEYS} keys {keyed:,.0f}/s; "
                    f"({args.hot} deliveries) unordered {plain_hot:,.0f}/s, one key {one:,.0f}/s"
                )
            print(
                f"{store}: ordered/unordered, median of {args.rounds} rounds: "
                f"{MANY_KEYS} keys {statistics.median(many):.2f}, "
                f"one hot key {statistics.median(hot):.3f}"
            )


if __name__ == "__main__":
    asyncio.run(main())
