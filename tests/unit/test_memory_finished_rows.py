"""The in-memory store keeps finished deliveries in a form the garbage collector does not
track, and still returns them as equal, immutable records, bounded by retention."""

from __future__ import annotations

import dataclasses
import gc
from collections import deque
from datetime import timedelta, timezone
from enum import Enum
from types import FunctionType, ModuleType

import pytest

from kmsg_webhook import DeliveryStatus, WebhookAttempt, WebhookDelivery
from kmsg_webhook.models import DeliveryFilter, PayloadRewrite, RetentionCutoffs
from kmsg_webhook.stores.memory import InMemoryDeliveryStore
from kmsg_webhook.stores.protocol import apply_outcome
from support.records import T0, W1, W2, attempt, delivery, outcome

NOW = T0 + timedelta(hours=1)
LEASE = NOW + timedelta(minutes=5)
#: The store's own containers (its dicts, sets, lists, indexes), whatever it holds; some are
#: empty and untracked or not depending on the collections they went through.
OWN_CONTAINERS = 12


def _tracked_in(store: InMemoryDeliveryStore) -> int:
    """How many objects the collector tracks among those the store holds (classes, modules,
    functions and enum members are shared, not held)."""
    seen: set[int] = set()
    todo = deque(vars(store).values())
    tracked = 0
    while todo:
        obj = todo.popleft()
        if id(obj) in seen or isinstance(obj, type | ModuleType | FunctionType | Enum):
            continue
        seen.add(id(obj))
        if gc.is_tracked(obj):
            tracked += 1
        todo.extend(gc.get_referents(obj))
    return tracked


def _finished(n: int, status: DeliveryStatus = DeliveryStatus.SUCCESS) -> WebhookDelivery:
    return dataclasses.replace(
        delivery(n),
        status=status,
        next_attempt_at=None,
        attempts=(attempt(1, 500), attempt(2, None), attempt(3)),
        attempt_count=3,
        completed_at=T0 + timedelta(seconds=n),
        last_error=None if status is DeliveryStatus.SUCCESS else "HTTP 500",
    )


async def _store_with_finished(count: int) -> InMemoryDeliveryStore:
    store = InMemoryDeliveryStore()
    await store.insert_many([delivery(n) for n in range(count)])
    claimed = await store.claim(worker_id=W1, now=NOW, lease_until=LEASE, limit=count)
    done = [outcome(d, W1, DeliveryStatus.SUCCESS) for d in claimed]
    assert await store.record(done) == count
    del claimed, done
    gc.collect(0)  # a young collection is enough: no row waits for a full one
    return store


async def test_finished_rows_hold_no_tracked_object() -> None:
    finished = _tracked_in(await _store_with_finished(2_000))
    assert finished <= OWN_CONTAINERS  # nothing per finished row

    store = await _store_with_finished(2_000)
    await store.insert_many([delivery(n) for n in range(5_000, 5_100)])
    gc.collect(0)
    assert _tracked_in(store) >= 100  # pending rows are records, and the count sees them


async def test_rows_finished_at_insert_are_untracked_too() -> None:
    store = InMemoryDeliveryStore()
    await store.insert_many([_finished(n, DeliveryStatus.EXHAUSTED) for n in range(10)])
    await store.insert_many([_finished(n, DeliveryStatus.FAILED) for n in range(10, 1_010)])
    gc.collect(0)
    assert _tracked_in(store) <= OWN_CONTAINERS


async def test_reads_return_records_equal_to_what_was_written() -> None:
    store = InMemoryDeliveryStore()
    seoul = timezone(timedelta(hours=9))
    written = [
        _finished(1),
        dataclasses.replace(
            _finished(2, DeliveryStatus.EXHAUSTED),
            to_hash="h-to",
            from_hash="h-from",
            ordering_key="k",
        ),
        dataclasses.replace(
            _finished(3, DeliveryStatus.FAILED),
            attempts=(),
            attempt_count=0,
            created_at=(T0 + timedelta(seconds=3)).astimezone(seoul),
            completed_at=(T0 + timedelta(seconds=4)).astimezone(seoul),
            last_error="endpoint removed",
        ),
    ]
    await store.insert_many(written)
    for record in written:
        got = await store.get(record.id)
        assert got == record
        assert isinstance(got, WebhookDelivery)
        assert all(isinstance(a, WebhookAttempt) for a in got.attempts)
        with pytest.raises(dataclasses.FrozenInstanceError):
            got.payload = "changed"  # type: ignore[misc]
    page = await store.list(DeliveryFilter())
    assert page.items == tuple(sorted(written, key=lambda d: (d.created_at, d.id), reverse=True))
    assert await store.scan() == written
    assert await store.get(written[0].id) == written[0]  # a read changed nothing


async def test_a_recorded_row_reads_back_as_the_outcome_applied() -> None:
    store = InMemoryDeliveryStore(max_stored_attempts=1)
    await store.insert_many([delivery(1)])
    (claimed,) = await store.claim(worker_id=W1, now=NOW, lease_until=LEASE, limit=1)
    retry = outcome(claimed, W1, DeliveryStatus.PENDING, att=attempt(1, 503), next_at=NOW)
    await store.record([retry])
    (claimed,) = await store.claim(worker_id=W2, now=NOW, lease_until=LEASE, limit=1)
    final = outcome(claimed, W2, DeliveryStatus.EXHAUSTED, att=attempt(2, None), done=NOW)
    await store.record([final])
    stored = await store.get(claimed.id)
    assert stored == apply_outcome(claimed, final, max_stored_attempts=1)
    assert stored is not None and stored.attempts == (attempt(2, None),)  # the cap held


async def test_finished_rows_ignore_late_records_and_releases() -> None:
    store = await _store_with_finished(3)
    before = await store.scan()
    late = outcome(before[0], W1, DeliveryStatus.FAILED, att=attempt(2, 400))
    assert await store.record([late]) == 0
    await store.release([d.id for d in before], worker_id=W1)
    assert (
        await store.claim(worker_id=W2, now=T0 + timedelta(days=1), lease_until=LEASE, limit=9)
        == []
    )
    assert await store.scan() == before


async def test_a_requeued_row_is_claimed_and_finishes_again() -> None:
    store = await _store_with_finished(3)
    later = T0 + timedelta(hours=2)
    requeued = await store.requeue(DeliveryFilter(), now=later, ids=["dlv_0001"])
    assert requeued == 1
    (claimed,) = await store.claim(
        worker_id=W2, now=later, lease_until=later + timedelta(minutes=1), limit=9
    )
    assert claimed.id == "dlv_0001" and claimed.status is DeliveryStatus.PENDING
    assert (await store.stats(DeliveryFilter())).pending == 1
    await store.record([outcome(claimed, W2, DeliveryStatus.FAILED, att=attempt(2, 400))])
    stats = await store.stats(DeliveryFilter())
    assert (stats.pending, stats.success, stats.failed) == (0, 2, 1)
    assert (await store.get("dlv_0001")) == dataclasses.replace(
        claimed,
        status=DeliveryStatus.FAILED,
        attempts=(*claimed.attempts, attempt(2, 400)),
        attempt_count=2,
        completed_at=T0,
        last_error="HTTP 400",
        lease_owner=None,
        lease_expires_at=None,
        next_attempt_at=None,
    )


async def test_aggregates_count_finished_rows_as_records_would() -> None:
    store = InMemoryDeliveryStore()
    await store.insert_many(
        [_finished(1), _finished(2, DeliveryStatus.FAILED), _finished(3, DeliveryStatus.EXHAUSTED)]
    )
    await store.insert_many([delivery(4)])
    stats = await store.stats(
        DeliveryFilter(statuses=(DeliveryStatus.SUCCESS, DeliveryStatus.FAILED))
    )
    assert (stats.total, stats.success, stats.failed, stats.total_attempts) == (2, 1, 1, 6)
    assert stats.average_latency_ms == 12.5
    assert stats.by_event_type == {"message.sent": 2}
    activity = await store.activity(since=T0, now=T0 + timedelta(minutes=1))
    assert [(e.endpoint_id, e.success, e.failed, e.exhausted) for e in activity.by_endpoint] == [
        ("ep_1", 1, 1, 1)
    ]
    queue = await store.queue_stats(now=T0 + timedelta(hours=1))
    assert (queue.due, queue.scheduled, queue.leased) == (1, 0, 0)


async def test_retention_bounds_finished_rows_by_age_and_count() -> None:
    store = InMemoryDeliveryStore()
    await store.insert_many(
        [
            _finished(n, DeliveryStatus.FAILED if n % 2 else DeliveryStatus.SUCCESS)
            for n in range(20)
        ]
    )
    await store.insert_many([delivery(20)])  # pending: never deleted
    cutoffs = RetentionCutoffs(success=T0 + timedelta(milliseconds=10))
    assert await store.purge_finished(cutoffs, limit=3) == 3  # in small batches
    assert await store.purge_finished(cutoffs, limit=100) == 2  # successes 0-8, not the failures
    kept = {d.id for d in await store.scan()}
    assert {f"dlv_{n:04d}" for n in range(0, 10, 2)}.isdisjoint(kept)
    assert {f"dlv_{n:04d}" for n in range(1, 10, 2)} <= kept

    assert await store.trim(6, limit=100) == 10  # 16 rows to 6, the oldest finished first
    left = await store.scan()
    assert [d.id for d in left] == [f"dlv_{n:04d}" for n in (15, 16, 17, 18, 19, 20)]
    assert await store.trim(0, limit=100) == 5  # the pending row stays
    assert [d.status for d in await store.scan()] == [DeliveryStatus.PENDING]
    assert await store.insert_many([_finished(3)]) == ["dlv_0003"]  # its key was freed


async def test_purge_deletes_finished_rows_older_than_a_moment() -> None:
    store = InMemoryDeliveryStore()
    await store.insert_many([_finished(n) for n in range(5)] + [delivery(5, created=T0)])
    assert await store.purge(older_than=T0 + timedelta(milliseconds=3)) == 3
    assert [d.id for d in await store.scan()] == ["dlv_0003", "dlv_0004", "dlv_0005"]


async def test_payload_rewrites_keep_finished_rows_finished() -> None:
    store = await _store_with_finished(2)
    (first, _) = await store.scan()
    rewrite = PayloadRewrite(
        first.id, expected_payload=first.payload, payload="sealed", to_hash="t", from_hash=None
    )
    assert (
        await store.rewrite_payloads([rewrite, rewrite]) == 1
    )  # the second expects the old payload
    assert await store.get(first.id) == dataclasses.replace(first, payload="sealed", to_hash="t")
    gc.collect(0)
    assert _tracked_in(store) <= OWN_CONTAINERS
