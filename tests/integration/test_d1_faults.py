"""Faults between the store and D1: nothing is lost and nothing is recorded twice.

A fake server sits in front of the real local D1. ``("applied", fault)`` forwards the request
(D1 applies it) and then answers with the fault instead, exactly the case where a client cannot
know whether its batch took effect and retries it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from kmsg_webhook import (
    AttemptOutcome,
    DeliveryStatus,
    StoreError,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEventType,
    WebhookPersistence,
)
from kmsg_webhook.stores.d1 import (
    D1Client,
    D1RateLimitedError,
    D1UnavailableError,
    create_d1_persistence,
)
from support.d1 import FakeD1, fresh_tables

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)

# Each way an applied request can lose its answer.
LOST_ANSWERS = {
    "5xx": ("status", 502, {"success": False, "errors": [{"code": 1, "message": "bad gw"}]}),
    "timeout": ("slow", 5.0),
    "malformed": ("garbage",),
}


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def delivery(n: int) -> WebhookDelivery:
    return WebhookDelivery(
        id=f"dlv_{n:04d}",
        endpoint_id="ep_1",
        event_id=f"evt_{n}",
        event_type=WebhookEventType.MESSAGE_SENT,
        url="https://hooks.example.com/in",
        payload=f'{{"n": {n}}}',
        status=DeliveryStatus.PENDING,
        created_at=T0,
        next_attempt_at=T0,
    )


@pytest.fixture
async def store(faulty_d1: FakeD1) -> AsyncIterator[tuple[WebhookPersistence, D1Client]]:
    client = faulty_d1.client(timeout=1.0, sleep=Sleeps())
    endpoints, deliveries = fresh_tables()
    persistence = create_d1_persistence(
        client,
        endpoint_table_name=endpoints,
        delivery_table_name=deliveries,
        max_stored_attempts=5,
        close_client=True,
    )
    assert persistence.init is not None
    await persistence.init()
    try:
        yield persistence, client
    finally:
        assert persistence.close is not None
        await persistence.close()


async def count(client: D1Client, persistence: WebhookPersistence) -> int:
    table = persistence.delivery_store._t.deliveries  # type: ignore[attr-defined]
    return int((await client.query(f"SELECT COUNT(*) AS n FROM {table}")).rows[0]["n"])


@pytest.mark.parametrize("fault", sorted(LOST_ANSWERS))
async def test_intake_whose_answer_was_lost_reports_its_rows_once(
    faulty_d1: FakeD1, store: tuple[WebhookPersistence, D1Client], fault: str
) -> None:
    persistence, client = store
    rows = [delivery(n) for n in range(1, 41)]
    faulty_d1.then(("applied", LOST_ANSWERS[fault]))
    before = client.round_trips
    ids = await persistence.delivery_store.insert_many(rows)
    assert client.round_trips - before == 2  # the lost one and its retry
    # The retry inserted nothing (insert-or-ignore), yet every row is reported as new.
    assert ids == [r.id for r in rows]
    assert await count(client, persistence) == 40
    # Re-emitting the same events (new delivery ids) stays idempotent.
    again = [dataclasses.replace(delivery(n), id=f"dlv_x{n}") for n in range(1, 3)]
    assert await persistence.delivery_store.insert_many(again) == []


async def test_intake_after_a_429_is_not_treated_as_possibly_applied(
    faulty_d1: FakeD1, store: tuple[WebhookPersistence, D1Client]
) -> None:
    persistence, client = store
    await persistence.delivery_store.insert_many([delivery(1)])
    faulty_d1.then(("status", 429, {"success": False, "errors": []}, {"Retry-After": "2"}))
    # Row 1 exists already: a rejected-then-retried request must not claim it as new.
    assert await persistence.delivery_store.insert_many([delivery(1), delivery(2)]) == ["dlv_0002"]
    assert client._sleep.waits == [2]  # type: ignore[attr-defined]


@pytest.mark.parametrize("fault", sorted(LOST_ANSWERS))
async def test_a_result_recorded_twice_counts_once(
    faulty_d1: FakeD1, store: tuple[WebhookPersistence, D1Client], fault: str
) -> None:
    persistence, _ = store
    ds = persistence.delivery_store
    await ds.insert_many([delivery(1), delivery(2)])
    claimed = await ds.claim(worker_id="w1", now=T0, lease_until=T0 + LEASE, limit=10)
    assert len(claimed) == 2
    attempt = WebhookAttempt(1, T0, 12.0, 500, "no", "HTTP 500")
    outcomes = [
        AttemptOutcome(d.id, "w1", attempt, DeliveryStatus.PENDING, T0 + LEASE, None)
        for d in claimed
    ]
    faulty_d1.then(("applied", LOST_ANSWERS[fault]))
    await ds.record(outcomes)  # applied once; the replay finds the lease gone
    for d in claimed:
        stored = await ds.get(d.id)
        assert stored is not None
        assert (stored.attempt_count, len(stored.attempts), stored.lease_owner) == (1, 1, None)
        assert stored.next_attempt_at == T0 + LEASE
    # Replaying the same outcomes again changes nothing either.
    assert await ds.record(outcomes) == 0


@pytest.mark.parametrize("fault", sorted(LOST_ANSWERS))
async def test_a_claim_whose_answer_was_lost_loses_no_row(
    faulty_d1: FakeD1, store: tuple[WebhookPersistence, D1Client], fault: str
) -> None:
    persistence, _ = store
    ds = persistence.delivery_store
    await ds.insert_many([delivery(1), delivery(2), delivery(3)])
    faulty_d1.then(("applied", LOST_ANSWERS[fault]))
    # The first attempt leased the rows to w1; its retry finds nothing free.
    assert await ds.claim(worker_id="w1", now=T0, lease_until=T0 + LEASE, limit=10) == []
    # Nobody else gets them while that lease runs (no double send) ...
    during = T0 + LEASE - timedelta(seconds=1)
    assert await ds.claim(worker_id="w2", now=during, lease_until=during + LEASE, limit=10) == []
    # ... and they come back once it expires (nothing lost).
    after = T0 + LEASE
    back = await ds.claim(worker_id="w2", now=after, lease_until=after + LEASE, limit=10)
    assert sorted(d.id for d in back) == ["dlv_0001", "dlv_0002", "dlv_0003"]


async def test_an_endpoint_added_twice_by_a_retry_is_not_a_duplicate(
    faulty_d1: FakeD1, store: tuple[WebhookPersistence, D1Client]
) -> None:
    persistence, _ = store
    ep = WebhookEndpoint(
        id="ep_1",
        url="https://a.example.com/h",
        events=(WebhookEventType.MESSAGE_SENT,),
        created_at=T0,
        updated_at=T0,
        secret="whsec_c2VjcmV0",
    )
    faulty_d1.then(("applied", LOST_ANSWERS["timeout"]))
    await persistence.endpoint_store.add(ep)
    assert await persistence.endpoint_store.list() == [ep]


async def test_persistent_failures_surface_as_store_errors(
    faulty_d1: FakeD1, store: tuple[WebhookPersistence, D1Client]
) -> None:
    persistence, client = store
    faulty_d1.then(*[("status", 503, {})] * client.max_attempts)
    with pytest.raises(D1UnavailableError) as down:
        await persistence.delivery_store.get("x")
    assert isinstance(down.value, StoreError)
    faulty_d1.then(*[("status", 429, {}, {"Retry-After": "1"})] * client.max_attempts)
    with pytest.raises(D1RateLimitedError):
        await persistence.endpoint_store.list()
    assert await persistence.endpoint_store.list() == []  # and it recovers
