"""What the in-memory store's finished history costs the garbage collector, against records.

    python benchmarks/finished_rows_gc.py [--rows 100000] [--rounds 5]

Fills an in-memory store with ``--rows`` finished deliveries the way the runtime does (insert,
claim, record: 1 in 20 first answered 500 and retried, so rows hold one or two attempts), and,
as the baseline, a dict holding the same deliveries as frozen records, which is how the store
would hold them as records (its pending rows are records). Each is held alone while it is
measured, after holding nothing (the process's own objects); rounds alternate the three.
Printed, as medians over the rounds and as the store's ratio to the records:

* tracked objects: ``len(gc.get_objects())`` with the rows held, less without them;
* a full collection: the time ``gc.collect()`` takes with the rows held, and that time less
  the one with nothing held;
* the bytes a row adds as a record and as a flat row (tracemalloc), both built from the same
  records.

Then what reading the store costs at that size (``stats``, ``activity``, a page of ``list``,
``get``), as milliseconds per call: those readers decode rows or read their columns.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from kmsg_webhook import (
    AttemptOutcome,
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEventType,
)
from kmsg_webhook.models import DeliveryFilter
from kmsg_webhook.stores import finished_rows
from kmsg_webhook.stores.memory import InMemoryDeliveryStore
from kmsg_webhook.stores.protocol import DEFAULT_MAX_STORED_ATTEMPTS, apply_outcome

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PAYLOAD = '{"type":"message.sent","data":{"messageId":"%d","to":"01012345678","text":"hello"}}'
FAIL_EVERY = 20
COLLECTIONS = 5  # timed per measurement: single ones move a lot on a shared machine


def _pending(n: int) -> WebhookDelivery:
    created = T0 + timedelta(milliseconds=n)
    return WebhookDelivery(
        id=f"dlv_{n:08d}",
        endpoint_id="ep_1",
        event_id=f"evt_{n}",
        event_type=WebhookEventType.MESSAGE_SENT,
        url="https://hooks.example.com/in",
        payload=PAYLOAD % n,
        status=DeliveryStatus.PENDING,
        created_at=created,
        next_attempt_at=created,
    )


def _fails(d: WebhookDelivery) -> bool:
    """Whether the receiver answers this attempt 500: the first attempt of 1 event in 20."""
    return d.attempt_count == 0 and int(d.event_id.removeprefix("evt_")) % FAIL_EVERY == 0


def _outcome(d: WebhookDelivery, worker: str, *, fail: bool, at: datetime) -> AttemptOutcome:
    status = 500 if fail else 200
    return AttemptOutcome(
        delivery_id=d.id,
        worker_id=worker,
        attempt=WebhookAttempt(
            attempt_number=d.attempt_count + 1,
            started_at=at,
            latency_ms=3.25,
            http_status=status,
            response_body="" if fail else "ok",
        ),
        status=DeliveryStatus.PENDING if fail else DeliveryStatus.SUCCESS,
        next_attempt_at=at if fail else None,
        completed_at=None if fail else at,
    )


async def fill_store(rows: int) -> InMemoryDeliveryStore:
    """A store whose ``rows`` deliveries all ended, written as the dispatcher writes them."""
    store = InMemoryDeliveryStore()
    now = T0 + timedelta(milliseconds=rows)
    for start in range(0, rows, 1000):
        await store.insert_many([_pending(n) for n in range(start, min(start + 1000, rows))])
        while claimed := await store.claim(
            worker_id="w", now=now, lease_until=now + timedelta(minutes=1), limit=1000
        ):
            await store.record([_outcome(d, "w", fail=_fails(d), at=now) for d in claimed])
    # Leases given are remembered until they would have expired; a later claim forgets them,
    # as the claims of a running store do.
    after = now + timedelta(minutes=2)
    await store.claim(worker_id="w", now=after, lease_until=after, limit=1)
    return store


def fill_records(rows: int) -> dict[str, WebhookDelivery]:
    """The same deliveries as frozen records in a dict (the baseline)."""
    kept: dict[str, WebhookDelivery] = {}
    now = T0 + timedelta(milliseconds=rows)
    for n in range(rows):
        d = _pending(n)
        while d.status is DeliveryStatus.PENDING:
            outcome = _outcome(d, "w", fail=_fails(d), at=now)
            d = apply_outcome(d, outcome, max_stored_attempts=DEFAULT_MAX_STORED_ATTEMPTS)
        kept[d.id] = d
    return kept


def measure(build: Callable[[], object]) -> tuple[int, float]:
    """(tracked objects, seconds of a full collection: the median of a few) with what ``build``
    returns held."""
    gc.collect()
    tracked_before = len(gc.get_objects())
    held = build()
    gc.collect()
    tracked = len(gc.get_objects()) - tracked_before
    pauses = []
    for _ in range(COLLECTIONS):
        started = time.perf_counter()
        gc.collect()
        pauses.append(time.perf_counter() - started)
    del held
    gc.collect()
    return tracked, statistics.median(pauses)


def bytes_a_row(records: dict[str, WebhookDelivery]) -> tuple[float, float]:
    """Bytes a row adds as a record and as a flat row, both built from the same records (their
    strings and datetimes shared, as in the store)."""
    sizes = []
    for form in (finished_rows.decode, lambda d: d):
        tracemalloc.start()
        rows = {key: form(finished_rows.encode(d)) for key, d in records.items()}
        sizes.append(tracemalloc.get_traced_memory()[0] / len(rows))
        tracemalloc.stop()
        del rows
    return sizes[0], sizes[1]


async def time_reads(store: InMemoryDeliveryStore, rows: int) -> dict[str, float]:
    everything = DeliveryFilter()
    one_type = DeliveryFilter(event_type=WebhookEventType.MESSAGE_SENT)
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "stats (all rows)": lambda: store.stats(everything),
        "activity (all rows)": lambda: store.activity(since=T0, now=T0 + timedelta(days=1)),
        "list, page of 100 (filtered)": lambda: store.list(one_type, limit=100),
        "get": lambda: store.get(f"dlv_{rows // 2:08d}"),
    }
    timings: dict[str, float] = {}
    for name, call in calls.items():
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            await call()
            runs.append(time.perf_counter() - started)
        timings[name] = statistics.median(runs) * 1000
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows = args.rows
    builds: dict[str, Callable[[], object]] = {
        "nothing": lambda: None,
        "records": lambda: fill_records(rows),
        "store": lambda: asyncio.run(fill_store(rows)),
    }
    figures: dict[str, list[tuple[int, float]]] = {name: [] for name in builds}
    for _ in range(args.rounds):
        for name, build in builds.items():
            figures[name].append(measure(build))
    print(f"{rows:,} finished deliveries, {args.rounds} rounds (median; each round in brackets)")
    medians = {}
    for name, runs in figures.items():
        tracked = statistics.median(r[0] for r in runs)
        pause = statistics.median(r[1] for r in runs) * 1000
        medians[name] = (tracked, pause)
        pauses = " ".join(f"{r[1] * 1000:.1f}" for r in runs)
        print(
            f"  {name:8} tracked objects {tracked:>9,.0f} ({tracked / rows:.2f} a row)  "
            f"full collection {pause:6.1f} ms [{pauses}]"
        )
    floor = medians["nothing"][1]
    (records_tracked, records_pause), (store_tracked, store_pause) = (
        medians["records"],
        medians["store"],
    )
    print(
        f"  store / records: tracked objects {store_tracked / records_tracked:.4f}, "
        f"full collection {store_pause / records_pause:.2f} "
        f"(less the process's own objects: {(store_pause - floor) / (records_pause - floor):.2f})"
    )
    as_records, as_rows = bytes_a_row(fill_records(rows))
    print(
        f"  bytes a row adds: record {as_records:.0f}, flat row {as_rows:.0f} "
        f"(ratio {as_rows / as_records:.2f})"
    )
    store = asyncio.run(fill_store(rows))
    timings = asyncio.run(time_reads(store, rows))
    print("  reads of the store (median of 5, ms):")
    for name, ms in timings.items():
        print(f"    {name:30} {ms:8.2f}")


if __name__ == "__main__":
    main()
