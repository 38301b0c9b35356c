"""The store conformance suite: every backend must pass every case here.

Backends are listed in ``support.stores.BACKENDS``; the ``persistence`` fixture runs each test once
per backend.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import pytest

from kmsg_webhook import (
    AttemptOutcome,
    DeliveryActivity,
    DeliveryFilter,
    DeliveryStatus,
    DuplicateEndpointError,
    EndpointFilters,
    EndpointNotFoundError,
    EndpointOutcomes,
    EndpointStatus,
    LatencyPercentiles,
    MinuteCount,
    PayloadRewrite,
    RetentionCutoffs,
    RetiredSecret,
    RetryConfig,
    StoreError,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEventType,
    WebhookPersistence,
)
from kmsg_webhook.crypto import stored_view
from kmsg_webhook.stores.sql.base import WALK_MOST
from support.records import T0, W1, W2, attempt, delivery, endpoint, outcome


async def claim(
    p: WebhookPersistence, worker: str, now: datetime, limit: int = 100, **kw: object
) -> list[WebhookDelivery]:
    return await p.delivery_store.claim(
        worker_id=worker,
        now=now,
        lease_until=now + timedelta(seconds=30),
        limit=limit,
        **kw,  # type: ignore[arg-type]
    )


# -- endpoints --------------------------------------------------------------------------------


async def test_endpoint_round_trip_keeps_every_field(persistence: WebhookPersistence) -> None:
    full = endpoint(
        1,
        name="CRM",
        description="설명",
        headers={"Authorization": "Bearer t"},
        previous_secrets=(RetiredSecret("whsec_b2xk", T0 + timedelta(days=1)),),
        retry_config=RetryConfig(max_retries=0, retry_delay_ms=1500, backoff_multiplier=1.5),
        filters=EndpointFilters(provider_id=("iwinv", "aligo"), template_id=("t1",)),
        status=EndpointStatus.SUSPENDED,
        last_triggered_at=T0,
        disabled_reason="manual",
        consecutive_failures=3,
        failing_since=T0,
        last_success_at=T0 - timedelta(days=1),
        client_cert="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        client_key="-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n",
        ordered=True,
    )
    await persistence.endpoint_store.add(full)
    assert await persistence.endpoint_store.get("ep_1") == full
    assert await persistence.endpoint_store.get("missing") is None


async def test_endpoint_list_is_most_recently_updated_first(
    persistence: WebhookPersistence,
) -> None:
    for n in (2, 1, 3):
        await persistence.endpoint_store.add(endpoint(n))
    assert [e.id for e in await persistence.endpoint_store.list()] == ["ep_3", "ep_2", "ep_1"]


async def test_duplicate_id_and_url_are_errors_and_keep_the_original(
    persistence: WebhookPersistence,
) -> None:
    store = persistence.endpoint_store
    await store.add(endpoint(1))
    with pytest.raises(DuplicateEndpointError) as by_id:
        await store.add(endpoint(1, url="https://other.example.com/"))
    assert by_id.value.field == "id"
    with pytest.raises(DuplicateEndpointError) as by_url:
        await store.add(endpoint(2, url=endpoint(1).url))
    assert by_url.value.field == "url"
    assert [e.id for e in await store.list()] == ["ep_1"]
    assert (await store.get("ep_1")) == endpoint(1)


async def test_update_replaces_and_checks_existence_and_url(
    persistence: WebhookPersistence,
) -> None:
    store = persistence.endpoint_store
    await store.add(endpoint(1))
    await store.add(endpoint(2))
    moved = endpoint(1, url="https://moved.example.com/", name="moved")
    await store.update(moved)
    assert await store.get("ep_1") == moved
    with pytest.raises(EndpointNotFoundError):
        await store.update(endpoint(9))
    with pytest.raises(DuplicateEndpointError):
        await store.update(endpoint(2, url=moved.url))
    assert (await store.get("ep_2")) == endpoint(2)
    # The freed URL can be taken by another endpoint.
    await store.add(endpoint(3, url=endpoint(1).url))


async def test_remove_reports_whether_it_existed(persistence: WebhookPersistence) -> None:
    store = persistence.endpoint_store
    await store.add(endpoint(1))
    assert await store.remove("ep_1") is True
    assert await store.remove("ep_1") is False
    assert await store.list() == []
    await store.add(endpoint(2, url=endpoint(1).url))


async def test_record_health_folds_failures_and_success(persistence: WebhookPersistence) -> None:
    store = persistence.endpoint_store
    await store.add(endpoint(1))
    first = await store.record_health("ep_1", succeeded=False, failures=0, at=T0)
    assert first is not None
    assert (first.consecutive_failures, first.failing_since) == (0, T0)
    later = T0 + timedelta(minutes=5)
    second = await store.record_health("ep_1", succeeded=False, failures=2, at=later)
    assert second is not None
    assert (second.consecutive_failures, second.failing_since) == (2, T0)
    healed = await store.record_health("ep_1", succeeded=True, failures=0, at=later)
    assert healed is not None
    assert (healed.consecutive_failures, healed.failing_since) == (0, None)
    assert healed.last_success_at == later
    assert await store.get("ep_1") == healed
    assert await store.record_health("nope", succeeded=True, failures=0, at=T0) is None


async def test_update_keeps_health_recorded_meanwhile_unless_resetting(
    persistence: WebhookPersistence,
) -> None:
    store = persistence.endpoint_store
    await store.add(endpoint(1))
    stale = await store.get("ep_1")  # read for an edit...
    assert stale is not None
    await store.record_health("ep_1", succeeded=False, failures=3, at=T0)  # ...failures land...
    renamed = dataclasses.replace(stale, name="renamed", consecutive_failures=0)
    await store.update(renamed)  # ...and the edit does not undo them
    kept = await store.get("ep_1")
    assert kept is not None
    assert (kept.name, kept.consecutive_failures, kept.failing_since) == ("renamed", 3, T0)
    await store.update(dataclasses.replace(kept, name="again"), reset_health=True)
    reset = await store.get("ep_1")
    assert reset is not None
    assert (reset.name, reset.consecutive_failures, reset.failing_since) == ("again", 0, None)


# -- intake -----------------------------------------------------------------------------------


async def test_insert_many_returns_new_ids_and_dedupes_per_endpoint_and_event(
    persistence: WebhookPersistence,
) -> None:
    store = persistence.delivery_store
    rows = [delivery(1), delivery(2), delivery(3, endpoint_id="ep_2", event_id="evt_1")]
    assert sorted(await store.insert_many(rows)) == ["dlv_0001", "dlv_0002", "dlv_0003"]
    again = [delivery(4, event_id="evt_1"), delivery(5)]
    assert await store.insert_many(again) == ["dlv_0005"]
    assert await store.get("dlv_0004") is None
    assert await store.get("dlv_0001") == rows[0]
    assert await store.insert_many([]) == []


async def test_large_batches_insert_claim_and_record(persistence: WebhookPersistence) -> None:
    # Beyond the SQL stores' 1000 rows per statement: several statements, one outcome each.
    store = persistence.delivery_store
    rows = [delivery(n) for n in range(1, 1201)]
    assert len(await store.insert_many(rows)) == 1200
    claimed = await claim(persistence, W1, T0 + timedelta(seconds=5), limit=2000)
    assert len(claimed) == 1200
    done = T0 + timedelta(seconds=6)
    outcomes = [outcome(d, W1, DeliveryStatus.SUCCESS, done=done) for d in claimed]
    outcomes.append(outcome("dlv_9999", W1, DeliveryStatus.SUCCESS, done=done))  # unknown
    assert await store.record(outcomes) == 1200
    stats = await store.stats(DeliveryFilter())
    assert (stats.success, stats.pending, stats.total_attempts) == (1200, 0, 1200)
    last = await store.get("dlv_1200")
    assert last is not None and last.attempt_count == 1 and last.completed_at == done


# -- claim, lease, record -----------------------------------------------------------------------


async def test_claim_takes_only_due_rows_oldest_due_first_up_to_limit(
    persistence: WebhookPersistence,
) -> None:
    store = persistence.delivery_store
    await store.insert_many(
        [
            delivery(1, due=T0 + timedelta(seconds=3)),
            delivery(2, due=T0 + timedelta(seconds=1)),
            delivery(3, due=T0 + timedelta(seconds=2)),
            delivery(4, due=T0 + timedelta(hours=1)),
        ]
    )
    now = T0 + timedelta(seconds=10)
    first = await claim(persistence, W1, now, limit=2)
    assert [d.id for d in first] == ["dlv_0002", "dlv_0003"]
    assert all(
        d.lease_owner == W1 and d.lease_expires_at == now + timedelta(seconds=30) for d in first
    )
    rest = await claim(persistence, W2, now)
    assert [d.id for d in rest] == ["dlv_0001"]
    assert await claim(persistence, W2, now) == []


async def test_leased_rows_return_after_the_lease_expires(persistence: WebhookPersistence) -> None:
    await persistence.delivery_store.insert_many([delivery(1)])
    now = T0 + timedelta(seconds=1)
    taken = await claim(persistence, W1, now)
    assert len(taken) == 1
    assert await claim(persistence, W2, now + timedelta(seconds=29)) == []
    again = await claim(persistence, W2, now + timedelta(seconds=31))
    assert [(d.id, d.lease_owner) for d in again] == [("dlv_0001", W2)]
    # The first worker lost its lease: its late result is ignored, the new owner's applies.
    assert (
        await persistence.delivery_store.record([outcome(taken[0], W1, DeliveryStatus.SUCCESS)])
        == 0
    )
    assert (
        await persistence.delivery_store.record([outcome(again[0], W2, DeliveryStatus.SUCCESS)])
        == 1
    )
    stored = await persistence.delivery_store.get("dlv_0001")
    assert stored is not None and stored.status is DeliveryStatus.SUCCESS
    assert stored.attempt_count == 1


async def test_claim_skips_excluded_endpoints(persistence: WebhookPersistence) -> None:
    await persistence.delivery_store.insert_many(
        [delivery(1, endpoint_id="ep_busy"), delivery(2, endpoint_id="ep_free")]
    )
    got = await claim(persistence, W1, T0 + timedelta(seconds=1), exclude_endpoints={"ep_busy"})
    assert [d.id for d in got] == ["dlv_0002"]
    later = await claim(persistence, W1, T0 + timedelta(seconds=1))
    assert [d.id for d in later] == ["dlv_0001"]


async def test_a_claim_around_excluded_endpoints_takes_the_oldest_due_of_the_others(
    persistence: WebhookPersistence,
) -> None:
    # The excluded endpoint's backlog is due first; the others' rows interleave in due order,
    # one of them is leased, one not yet due and one finished.
    store = persistence.delivery_store
    busy = [delivery(n, endpoint_id="ep_busy", event_id=f"evt_b{n}") for n in range(1, 6)]
    others = [
        delivery(10 + n, endpoint_id=f"ep_{n % 3}", due=T0 + timedelta(seconds=1 + n))
        for n in range(8)
    ]
    await store.insert_many([*busy, *others])
    now = T0 + timedelta(seconds=20)
    [leased] = await claim(persistence, W2, now, limit=1, exclude_endpoints={"ep_busy"})
    assert leased.id == "dlv_0010"
    [done] = await claim(persistence, W2, now, limit=1, exclude_endpoints={"ep_busy"})
    await store.record([outcome(done, W2, DeliveryStatus.SUCCESS)])
    later = dataclasses.replace(
        delivery(30, endpoint_id="ep_2"), next_attempt_at=now + timedelta(hours=1)
    )
    await store.insert_many([later])
    got = await claim(persistence, W1, now, limit=4, exclude_endpoints={"ep_busy", "ep_gone"})
    assert [d.id for d in got] == ["dlv_0012", "dlv_0013", "dlv_0014", "dlv_0015"]
    rest = await claim(persistence, W1, now, exclude_endpoints={"ep_busy"})
    assert [d.id for d in rest] == ["dlv_0016", "dlv_0017"]
    assert await claim(persistence, W1, now, exclude_endpoints={"ep_busy"}) == []
    mine = await claim(persistence, W1, now)
    assert [d.id for d in mine] == [d.id for d in busy]


async def test_a_claim_behind_a_backlog_beyond_the_walk_takes_the_same_rows(
    persistence: WebhookPersistence,
) -> None:
    # More due rows than a SQL claim walks (WALK_MOST): the SQL stores go per endpoint here,
    # and lease what the walk would have.
    store = persistence.delivery_store
    busy = [
        delivery(n, endpoint_id="ep_busy", event_id=f"evt_b{n}") for n in range(1, WALK_MOST + 1)
    ]
    for start in range(0, len(busy), 500):
        await store.insert_many(busy[start : start + 500])
    others = [
        delivery(WALK_MOST + n, endpoint_id=f"ep_{n % 3}", due=T0 + timedelta(seconds=1 + n))
        for n in range(1, 7)
    ]
    await store.insert_many(others)
    now = T0 + timedelta(seconds=20)
    got = await claim(persistence, W1, now, limit=4, exclude_endpoints={"ep_busy", "ep_gone"})
    assert [d.id for d in got] == [d.id for d in others[:4]]
    rest = await claim(persistence, W1, now, exclude_endpoints={"ep_busy"})
    assert [d.id for d in rest] == [d.id for d in others[4:]]
    assert await claim(persistence, W1, now, exclude_endpoints={"ep_busy"}) == []
    mine = await claim(persistence, W2, now, limit=3)
    assert [d.id for d in mine] == [d.id for d in busy[:3]]


async def test_pre_leased_insert_is_not_claimable_until_expiry(
    persistence: WebhookPersistence,
) -> None:
    row = dataclasses.replace(
        delivery(1), lease_owner=W1, lease_expires_at=T0 + timedelta(seconds=30)
    )
    await persistence.delivery_store.insert_many([row])
    assert await claim(persistence, W2, T0 + timedelta(seconds=1)) == []
    assert await claim(persistence, W2, T0 + timedelta(seconds=29)) == []
    applied = await persistence.delivery_store.record([outcome(row, W1, DeliveryStatus.SUCCESS)])
    assert applied == 1


async def test_record_schedules_retries_and_settles(persistence: WebhookPersistence) -> None:
    store = persistence.delivery_store
    await store.insert_many([delivery(1), delivery(2), delivery(3)])
    a, b, c = await claim(persistence, W1, T0 + timedelta(seconds=1))
    retry_at = T0 + timedelta(minutes=1)
    applied = await store.record(
        [
            outcome(a, W1, DeliveryStatus.PENDING, att=attempt(1, 503), next_at=retry_at),
            outcome(b, W1, DeliveryStatus.FAILED, att=attempt(1, 400)),
            outcome(c, W1, DeliveryStatus.EXHAUSTED, att=attempt(1, None)),
        ]
    )
    assert applied == 3
    ra, rb, rc = [await store.get(d.id) for d in (a, b, c)]
    assert ra is not None and rb is not None and rc is not None
    assert (ra.status, ra.next_attempt_at, ra.attempt_count, ra.lease_owner) == (
        DeliveryStatus.PENDING,
        retry_at,
        1,
        None,
    )
    assert ra.last_error == "HTTP 503"
    assert ra.attempts == (attempt(1, 503),)
    assert (rb.status, rb.completed_at, rb.last_error) == (DeliveryStatus.FAILED, T0, "HTTP 400")
    assert (rc.status, rc.last_error, rc.next_attempt_at) == (
        DeliveryStatus.EXHAUSTED,
        "timeout",
        None,
    )
    assert await claim(persistence, W1, retry_at - timedelta(seconds=1)) == []
    (a2,) = await claim(persistence, W1, retry_at)
    assert a2.id == a.id
    await store.record([outcome(a2, W1, DeliveryStatus.SUCCESS, att=attempt(2, 200))])
    # A settled row is never claimed again.
    assert await claim(persistence, W2, retry_at + timedelta(days=1)) == []


async def test_record_without_attempt_settles_with_reason(persistence: WebhookPersistence) -> None:
    await persistence.delivery_store.insert_many([delivery(1)])
    (row,) = await claim(persistence, W1, T0 + timedelta(seconds=1))
    gone = AttemptOutcome(
        delivery_id=row.id,
        worker_id=W1,
        attempt=None,
        status=DeliveryStatus.FAILED,
        next_attempt_at=None,
        completed_at=T0,
        error="endpoint was removed",
    )
    assert await persistence.delivery_store.record([gone]) == 1
    stored = await persistence.delivery_store.get(row.id)
    assert stored is not None
    assert (stored.status, stored.attempt_count, stored.attempts, stored.last_error) == (
        DeliveryStatus.FAILED,
        0,
        (),
        "endpoint was removed",
    )


async def test_stored_attempts_are_capped_but_counted(persistence: WebhookPersistence) -> None:
    # The conformance backends are built with max_stored_attempts=5.
    store = persistence.delivery_store
    await store.insert_many([delivery(1)])
    now = T0
    for n in range(1, 8):
        now += timedelta(seconds=1)
        (row,) = await claim(persistence, W1, now)
        await store.record(
            [outcome(row, W1, DeliveryStatus.PENDING, att=attempt(n, 500, at=now), next_at=now)]
        )
    stored = await store.get("dlv_0001")
    assert stored is not None
    assert stored.attempt_count == 7
    assert [a.attempt_number for a in stored.attempts] == [3, 4, 5, 6, 7]


async def test_record_ignores_unknown_and_unleased_rows(persistence: WebhookPersistence) -> None:
    await persistence.delivery_store.insert_many([delivery(1)])
    assert (
        await persistence.delivery_store.record([outcome("dlv_none", W1, DeliveryStatus.SUCCESS)])
        == 0
    )
    assert (
        await persistence.delivery_store.record([outcome("dlv_0001", W1, DeliveryStatus.SUCCESS)])
        == 0
    )
    stored = await persistence.delivery_store.get("dlv_0001")
    assert stored is not None and stored.status is DeliveryStatus.PENDING


async def test_release_gives_rows_back_only_for_the_owner(persistence: WebhookPersistence) -> None:
    store = persistence.delivery_store
    await store.insert_many([delivery(1), delivery(2)])
    now = T0 + timedelta(seconds=1)
    a, b = await claim(persistence, W1, now)
    await store.release([a.id], worker_id=W2)  # not the owner: no effect
    assert await claim(persistence, W2, now) == []
    await store.release([a.id, b.id], worker_id=W1)
    again = await claim(persistence, W2, now)
    assert sorted(d.id for d in again) == [a.id, b.id]
    stored = await store.get(a.id)
    assert stored is not None and stored.attempt_count == 0


# -- listing, stats, requeue, purge ---------------------------------------------------------


async def _settled_mix(p: WebhookPersistence) -> None:
    store = p.delivery_store
    rows = [
        delivery(1, endpoint_id="ep_1"),
        delivery(2, endpoint_id="ep_2", event_type=WebhookEventType.MESSAGE_FAILED),
        delivery(3, endpoint_id="ep_1"),
        delivery(4, endpoint_id="ep_2"),
        delivery(5, endpoint_id="ep_1", event_type=WebhookEventType.MESSAGE_FAILED),
    ]
    await store.insert_many(rows)
    claimed = {d.id: d for d in await claim(p, W1, T0 + timedelta(seconds=1))}
    await store.record(
        [
            outcome(claimed["dlv_0001"], W1, DeliveryStatus.SUCCESS, att=attempt(1, 200)),
            outcome(claimed["dlv_0002"], W1, DeliveryStatus.FAILED, att=attempt(1, 404)),
            outcome(claimed["dlv_0003"], W1, DeliveryStatus.EXHAUSTED, att=attempt(1, 500)),
        ]
    )
    await store.release(["dlv_0004", "dlv_0005"], worker_id=W1)


async def test_list_filters_and_orders_newest_first(persistence: WebhookPersistence) -> None:
    await _settled_mix(persistence)
    store = persistence.delivery_store

    async def ids(f: DeliveryFilter, limit: int = 100) -> list[str]:
        return [d.id for d in (await store.list(f, limit=limit)).items]

    assert await ids(DeliveryFilter()) == [
        "dlv_0005",
        "dlv_0004",
        "dlv_0003",
        "dlv_0002",
        "dlv_0001",
    ]
    assert await ids(DeliveryFilter(endpoint_id="ep_1")) == ["dlv_0005", "dlv_0003", "dlv_0001"]
    assert await ids(DeliveryFilter(event_type=WebhookEventType.MESSAGE_FAILED)) == [
        "dlv_0005",
        "dlv_0002",
    ]
    assert await ids(DeliveryFilter(event_id="evt_3")) == ["dlv_0003"]
    assert await ids(
        DeliveryFilter(statuses=(DeliveryStatus.FAILED, DeliveryStatus.EXHAUSTED))
    ) == ["dlv_0003", "dlv_0002"]
    window = DeliveryFilter(
        created_after=T0 + timedelta(milliseconds=2), created_before=T0 + timedelta(milliseconds=4)
    )
    assert await ids(window) == ["dlv_0003", "dlv_0002"]
    assert await ids(DeliveryFilter(endpoint_id="ep_1", statuses=(DeliveryStatus.PENDING,))) == [
        "dlv_0005"
    ]
    assert await ids(DeliveryFilter(), limit=0) == []


async def test_list_keyset_pagination_is_stable_with_equal_timestamps(
    persistence: WebhookPersistence,
) -> None:
    store = persistence.delivery_store
    await store.insert_many([delivery(n, created=T0) for n in range(1, 24)])
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await store.list(DeliveryFilter(), limit=5, cursor=cursor)
        seen.extend(d.id for d in page.items)
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 5
    assert seen == sorted(seen, reverse=True)
    assert len(set(seen)) == 23


async def test_list_rejects_a_tampered_cursor(persistence: WebhookPersistence) -> None:
    with pytest.raises(StoreError):
        await persistence.delivery_store.list(DeliveryFilter(), cursor="not-a-cursor!!")


async def test_stats_aggregate(persistence: WebhookPersistence) -> None:
    await _settled_mix(persistence)
    stats = await persistence.delivery_store.stats(DeliveryFilter())
    assert (stats.total, stats.pending, stats.success, stats.failed, stats.exhausted) == (
        5,
        2,
        1,
        1,
        1,
    )
    assert stats.total_attempts == 3
    assert stats.average_latency_ms == pytest.approx(12.5)
    assert dict(stats.by_event_type) == {"message.sent": 3, "message.failed": 2}
    assert stats.success_rate == pytest.approx(100 / 3)
    ep2 = await persistence.delivery_store.stats(DeliveryFilter(endpoint_id="ep_2"))
    assert (ep2.total, ep2.failed, ep2.pending) == (2, 1, 1)
    empty = await persistence.delivery_store.stats(DeliveryFilter(endpoint_id="none"))
    assert (empty.total, empty.average_latency_ms, empty.success_rate) == (0, 0.0, 0.0)


async def test_queue_stats_counts_due_scheduled_and_leased_pending_rows(
    persistence: WebhookPersistence,
) -> None:
    store = persistence.delivery_store
    now = T0 + timedelta(seconds=10)
    empty = await store.queue_stats(now=now)
    assert (empty.due, empty.scheduled, empty.leased) == (0, 0, 0)
    assert empty.oldest_due_at is None and empty.next_due_at is None
    await store.insert_many(
        [
            delivery(1, due=T0 + timedelta(seconds=1)),
            delivery(2, due=T0 + timedelta(seconds=2)),
            delivery(3, due=T0 + timedelta(seconds=3)),
            delivery(4, due=T0 + timedelta(minutes=5)),
            delivery(5, due=T0 + timedelta(minutes=1)),
            delivery(6),
        ]
    )
    leased = await claim(persistence, W1, now, limit=1)  # the oldest due: dlv_0006
    settled = await claim(persistence, W1, now, limit=1)  # then dlv_0001
    assert [leased[0].id, settled[0].id] == ["dlv_0006", "dlv_0001"]
    await store.record([outcome(settled[0], W1, DeliveryStatus.SUCCESS)])
    stats = await store.queue_stats(now=now)
    assert (stats.due, stats.scheduled, stats.leased) == (2, 2, 1)
    assert stats.oldest_due_at == T0 + timedelta(seconds=2)
    assert stats.next_due_at == T0 + timedelta(minutes=1)
    # An expired lease counts as due again.
    later = await store.queue_stats(now=now + timedelta(seconds=31))
    assert (later.due, later.leased) == (3, 0)


async def test_activity_counts_finishes_per_minute_and_endpoint_with_latency(
    persistence: WebhookPersistence,
) -> None:
    store = persistence.delivery_store
    since, now = T0 - timedelta(minutes=5), T0 + timedelta(minutes=5)
    empty = await store.activity(since=since, now=now)
    assert empty == DeliveryActivity(since=since, now=now)

    await store.insert_many(
        [delivery(n, due=T0, endpoint_id=f"ep_{1 + n % 2}") for n in range(1, 11)]
    )
    claimed = await claim(persistence, W1, T0 + timedelta(seconds=1))
    assert len(claimed) == 10

    def settle(n: int, status: DeliveryStatus, done: datetime) -> AttemptOutcome:
        att = attempt(1, 200 if status is DeliveryStatus.SUCCESS else 500)
        att = dataclasses.replace(att, latency_ms=10.0 * n)
        return outcome(f"dlv_{n:04d}", W1, status, att=att, done=done)

    minute = T0.replace(second=0, microsecond=0)
    s, f, x = DeliveryStatus.SUCCESS, DeliveryStatus.FAILED, DeliveryStatus.EXHAUSTED
    await store.record(
        [
            settle(1, s, T0 - timedelta(minutes=10)),  # before the window
            settle(2, s, T0),
            settle(3, s, T0 + timedelta(seconds=59)),
            *(settle(n, s, T0 + timedelta(minutes=1, seconds=30)) for n in (4, 5, 6)),
            settle(7, f, minute + timedelta(minutes=2)),
            settle(8, f, minute + timedelta(minutes=2, seconds=30)),
            settle(9, x, minute + timedelta(minutes=2, seconds=59, microseconds=999000)),
            settle(10, s, now + timedelta(milliseconds=1)),  # after the window
        ]
    )
    activity = await store.activity(since=since, now=now)
    assert activity.per_minute == (
        MinuteCount(minute, s, 2),
        MinuteCount(minute + timedelta(minutes=1), s, 3),
        MinuteCount(minute + timedelta(minutes=2), x, 1),
        MinuteCount(minute + timedelta(minutes=2), f, 2),
    )
    # Eight finished rows, 20..90 ms: nearest rank 4 for p50, 8 for p95 and p99.
    assert activity.latency == LatencyPercentiles(samples=8, p50_ms=50.0, p95_ms=90.0, p99_ms=90.0)
    # Even rows are ep_1's (2, 4, 6 succeeded, 8 failed), odd rows ep_2's (3, 5, 7 failed, 9).
    assert activity.by_endpoint == (
        EndpointOutcomes("ep_1", success=3, failed=1),
        EndpointOutcomes("ep_2", success=2, failed=1, exhausted=1),
    )
    assert activity.by_endpoint[1].success_rate == 50.0
    # A re-queued row no longer counts as finished.
    await store.requeue(DeliveryFilter(), now=T0, ids=["dlv_0002"])
    again = await store.activity(since=since, now=now)
    assert again.per_minute[0] == MinuteCount(minute, s, 1)
    assert again.latency.samples == 7 and again.by_endpoint[0].success == 2


async def test_requeue_touches_only_terminal_rows(persistence: WebhookPersistence) -> None:
    await _settled_mix(persistence)
    store = persistence.delivery_store
    later = T0 + timedelta(hours=1)
    failed_only = DeliveryFilter(statuses=(DeliveryStatus.FAILED, DeliveryStatus.EXHAUSTED))
    assert await store.requeue(failed_only, now=later) == 2
    assert await store.requeue(failed_only, now=later) == 0
    for delivery_id in ("dlv_0002", "dlv_0003"):
        row = await store.get(delivery_id)
        assert row is not None
        assert (row.status, row.next_attempt_at, row.completed_at) == (
            DeliveryStatus.PENDING,
            later,
            None,
        )
        assert len(row.attempts) == 1  # history kept
    assert await store.requeue(DeliveryFilter(), now=later, ids=["dlv_0001", "dlv_0004"]) == 1
    claimed = await claim(persistence, W1, later)
    assert sorted(d.id for d in claimed) == [f"dlv_000{n}" for n in range(1, 6)]


async def test_purge_deletes_only_old_terminal_rows(persistence: WebhookPersistence) -> None:
    await _settled_mix(persistence)
    store = persistence.delivery_store
    assert await store.purge(older_than=T0 + timedelta(milliseconds=3)) == 2  # dlv 1, 2
    assert await store.get("dlv_0001") is None
    assert await store.get("dlv_0003") is not None
    assert await store.purge(older_than=T0 + timedelta(days=1)) == 1  # dlv 3; 4 and 5 pending
    remaining = (await store.list(DeliveryFilter())).items
    assert sorted(d.id for d in remaining) == ["dlv_0004", "dlv_0005"]
    # A purged (endpoint, event) pair may be written again.
    assert await store.insert_many([delivery(9, event_id="evt_1")]) == ["dlv_0009"]


async def _finished(p: WebhookPersistence, statuses: list[DeliveryStatus]) -> None:
    """Deliveries 1..n, created a millisecond apart, each settled with its status in turn
    (``PENDING``: left pending)."""
    store = p.delivery_store
    await store.insert_many([delivery(n) for n in range(1, len(statuses) + 1)])
    claimed = {d.id: d for d in await claim(p, W1, T0 + timedelta(seconds=1))}
    await store.record(
        [
            outcome(claimed[f"dlv_{n:04d}"], W1, status, done=T0 + timedelta(seconds=2))
            for n, status in enumerate(statuses, start=1)
            if status is not DeliveryStatus.PENDING
        ]
    )
    await store.release(sorted(claimed), worker_id=W1)


async def test_purge_finished_applies_each_status_cutoff(persistence: WebhookPersistence) -> None:
    ok, failed, exhausted = DeliveryStatus.SUCCESS, DeliveryStatus.FAILED, DeliveryStatus.EXHAUSTED
    await _finished(persistence, [ok, failed, exhausted, DeliveryStatus.PENDING, ok, failed])
    store = persistence.delivery_store
    # Nothing has a cutoff: nothing goes.
    assert await store.purge_finished(RetentionCutoffs(), limit=100) == 0
    # Successes created before T0+5ms (dlv 1), failures before T0+1ms (none yet).
    cutoffs = RetentionCutoffs(
        success=T0 + timedelta(milliseconds=5), failed=T0 + timedelta(milliseconds=1)
    )
    assert await store.purge_finished(cutoffs, limit=100) == 1
    assert await store.get("dlv_0001") is None
    everything = T0 + timedelta(days=1)
    cutoffs = RetentionCutoffs(success=everything, failed=everything, exhausted=everything)
    assert await store.purge_finished(cutoffs, limit=100) == 4  # 2, 3, 5, 6
    remaining = (await store.list(DeliveryFilter())).items
    assert [d.id for d in remaining] == ["dlv_0004"]  # pending rows are always kept
    # A purged (endpoint, event) pair may be written again.
    assert await store.insert_many([delivery(7, event_id="evt_1")]) == ["dlv_0007"]


async def test_purge_finished_deletes_at_most_limit_rows_per_call(
    persistence: WebhookPersistence,
) -> None:
    await _finished(persistence, [DeliveryStatus.SUCCESS] * 5 + [DeliveryStatus.FAILED] * 2)
    store = persistence.delivery_store
    everything = T0 + timedelta(days=1)
    cutoffs = RetentionCutoffs(success=everything, failed=everything)
    batches = []
    while batch := await store.purge_finished(cutoffs, limit=3):
        batches.append(batch)
    assert batches == [3, 3, 1]
    assert (await store.stats(DeliveryFilter())).total == 0
    assert await store.purge_finished(cutoffs, limit=0) == 0


# -- lookup hashes and maintenance walks (field crypto's rekey) ------------------------------


async def test_lookup_hashes_round_trip_and_filter(persistence: WebhookPersistence) -> None:
    store = persistence.delivery_store
    hashed = dataclasses.replace(delivery(1), to_hash="a" * 64, from_hash="b" * 64)
    await store.insert_many([hashed, delivery(2), dataclasses.replace(delivery(3), to_hash="c")])
    assert await store.get("dlv_0001") == hashed
    (claimed, *_) = await claim(persistence, W1, T0 + timedelta(seconds=1))
    assert (claimed.to_hash, claimed.from_hash) == ("a" * 64, "b" * 64)

    async def ids(f: DeliveryFilter) -> list[str]:
        return [d.id for d in (await store.list(f)).items]

    assert await ids(DeliveryFilter(to_hash="a" * 64)) == ["dlv_0001"]
    assert await ids(DeliveryFilter(from_hash="b" * 64)) == ["dlv_0001"]
    assert await ids(DeliveryFilter(to_hash="c")) == ["dlv_0003"]
    assert await ids(DeliveryFilter(to_hash="nope")) == []
    assert (await store.stats(DeliveryFilter(to_hash="a" * 64))).total == 1


async def test_scan_walks_every_row_in_id_order(persistence: WebhookPersistence) -> None:
    store = persistence.delivery_store
    await store.insert_many([delivery(n) for n in (5, 3, 1, 4, 2)])
    first = await store.scan(limit=2)
    assert [d.id for d in first] == ["dlv_0001", "dlv_0002"]
    rest = await store.scan(after=first[-1].id, limit=10)
    assert [d.id for d in rest] == ["dlv_0003", "dlv_0004", "dlv_0005"]
    assert await store.scan(after="dlv_0005") == []
    assert await store.scan(limit=0) == []


async def test_rewrite_payloads_is_compare_and_set(persistence: WebhookPersistence) -> None:
    store = persistence.delivery_store
    await store.insert_many([delivery(1), delivery(2)])
    (raw1, raw2) = await store.scan()
    applied = await store.rewrite_payloads(
        [
            PayloadRewrite(raw1.id, raw1.payload, "p1", "t1", None),
            PayloadRewrite(raw2.id, "not what is stored", "p2", None, None),
            PayloadRewrite("dlv_none", "x", "y", None, None),
        ]
    )
    assert applied == 1
    (new1, new2) = await store.scan()
    assert (new1.payload, new1.to_hash, new1.from_hash) == ("p1", "t1", None)
    assert new1.status is raw1.status and new1.created_at == raw1.created_at
    assert new2 == raw2
    assert await store.rewrite_payloads([]) == 0


async def test_rewrite_sealed_is_compare_and_set(persistence: WebhookPersistence) -> None:
    store = persistence.endpoint_store
    await store.add(endpoint(1, headers={"Authorization": "Bearer a"}))
    await store.record_health("ep_1", succeeded=False, failures=2, at=T0)
    (stored,) = [e for e in await _stored_endpoints(persistence)]
    replacement = dataclasses.replace(
        stored,
        secret="whsec_bmV3",
        previous_secrets=(RetiredSecret("whsec_b2xk", T0),),
        headers={"Authorization": "Bearer b"},
        client_key="key b",
    )
    changed = dataclasses.replace(stored, secret="something else")
    assert not await store.rewrite_sealed("ep_1", expected=changed, replacement=replacement)
    assert not await store.rewrite_sealed(
        "ep_1", expected=dataclasses.replace(stored, client_key="other"), replacement=replacement
    )
    assert not await store.rewrite_sealed("ep_9", expected=stored, replacement=replacement)
    assert await store.rewrite_sealed("ep_1", expected=stored, replacement=replacement)
    (now,) = await _stored_endpoints(persistence)
    assert (now.secret, now.previous_secrets, dict(now.headers), now.client_key) == (
        "whsec_bmV3",
        (RetiredSecret("whsec_b2xk", T0),),
        {"Authorization": "Bearer b"},
        "key b",
    )
    assert now.consecutive_failures == 2 and now.failing_since == T0  # untouched
    assert not await store.rewrite_sealed("ep_1", expected=stored, replacement=replacement)


async def _stored_endpoints(p: WebhookPersistence) -> list[WebhookEndpoint]:
    """Endpoints as stored (below any field-crypto wrapper): what ``rewrite_sealed`` compares."""
    return list(await stored_view(p).endpoint_store.list())


async def test_time_range_bounds_are_exact_below_a_millisecond(
    persistence: WebhookPersistence,
) -> None:
    # Stores that keep whole milliseconds must still honour `>=` and `<` exactly.
    await persistence.delivery_store.insert_many([delivery(1), delivery(2)])
    half = timedelta(microseconds=500)
    after = DeliveryFilter(created_after=T0 + timedelta(milliseconds=1) + half)
    assert [d.id for d in (await persistence.delivery_store.list(after)).items] == ["dlv_0002"]
    before = DeliveryFilter(created_before=T0 + timedelta(milliseconds=1) + half)
    assert [d.id for d in (await persistence.delivery_store.list(before)).items] == ["dlv_0001"]


# -- ordered delivery -----------------------------------------------------------------------------
# A delivery with an ordering key is claimable only when no earlier-inserted delivery of the same
# endpoint and key is still pending (leased or not, due or not). Other keys, other endpoints and
# rows without a key are not held up.


async def _ids(p: WebhookPersistence, worker: str, now: datetime) -> list[str]:
    return sorted(d.id for d in await claim(p, worker, now))


async def test_one_key_is_claimed_one_at_a_time_in_insert_order(
    persistence: WebhookPersistence,
) -> None:
    store = persistence.delivery_store
    later = T0 + timedelta(minutes=1)
    # Inserted 1, 2, 3 for key A, but 2 and 3 are due first: insert order wins.
    await store.insert_many([delivery(1, key="A", due=T0 + timedelta(seconds=3))])
    await store.insert_many(
        [
            delivery(2, key="A", due=T0),
            delivery(3, key="A", due=T0),
            delivery(4, key="B"),
            delivery(5),
            delivery(6, key="A", endpoint_id="ep_2"),
        ]
    )
    assert await _ids(persistence, W1, later) == ["dlv_0001", "dlv_0004", "dlv_0005", "dlv_0006"]
    assert await claim(persistence, W2, later) == []  # 2 waits for 1, in flight
    # A retry keeps the key: 1 is still unfinished.
    retry_at = later + timedelta(seconds=10)
    await store.record([outcome("dlv_0001", W1, DeliveryStatus.PENDING, next_at=retry_at)])
    assert await claim(persistence, W2, later) == []
    assert await _ids(persistence, W2, retry_at) == ["dlv_0001"]
    # Any end lets the next go: failed, then success, then exhausted.
    await store.record([outcome("dlv_0001", W2, DeliveryStatus.FAILED)])
    assert await _ids(persistence, W1, retry_at) == ["dlv_0002"]
    await store.record([outcome("dlv_0002", W1, DeliveryStatus.SUCCESS)])
    assert await _ids(persistence, W1, retry_at) == ["dlv_0003"]
    await store.record([outcome("dlv_0003", W1, DeliveryStatus.EXHAUSTED)])
    assert await claim(persistence, W1, retry_at) == []


async def test_a_crashed_workers_delivery_holds_its_key_until_reclaimed(
    persistence: WebhookPersistence,
) -> None:
    store = persistence.delivery_store
    await store.insert_many([delivery(1, key="A"), delivery(2, key="A")])
    now = T0 + timedelta(seconds=1)
    assert await _ids(persistence, W1, now) == ["dlv_0001"]
    assert await claim(persistence, W2, now + timedelta(seconds=29)) == []
    # The lease expired (W1 died): W2 takes over the same delivery, never the next.
    expired = now + timedelta(seconds=31)
    assert await _ids(persistence, W2, expired) == ["dlv_0001"]
    await store.release(["dlv_0001"], worker_id=W2)
    assert await _ids(persistence, W1, expired) == ["dlv_0001"]
    await store.record([outcome("dlv_0001", W1, DeliveryStatus.SUCCESS)])
    assert await _ids(persistence, W2, expired) == ["dlv_0002"]


async def test_an_excluded_endpoint_keeps_its_order(persistence: WebhookPersistence) -> None:
    store = persistence.delivery_store
    await store.insert_many([delivery(1, key="A"), delivery(2, key="A"), delivery(3)])
    now = T0 + timedelta(seconds=1)
    assert await claim(persistence, W1, now, exclude_endpoints={"ep_1"}) == []
    assert await _ids(persistence, W1, now) == ["dlv_0001", "dlv_0003"]


async def test_a_requeued_earlier_delivery_goes_first_again(
    persistence: WebhookPersistence,
) -> None:
    store = persistence.delivery_store
    await store.insert_many([delivery(1, key="A")])
    [first] = await claim(persistence, W1, T0 + timedelta(seconds=1))
    await store.record([outcome(first, W1, DeliveryStatus.FAILED)])
    await store.insert_many([delivery(2, key="A")])
    later = T0 + timedelta(seconds=1)
    assert await store.requeue(DeliveryFilter(), now=later, ids=["dlv_0001"]) == 1
    assert await _ids(persistence, W1, later) == ["dlv_0001"]
    await store.record([outcome("dlv_0001", W1, DeliveryStatus.SUCCESS)])
    assert await _ids(persistence, W1, later) == ["dlv_0002"]


async def test_the_ordering_key_round_trips(persistence: WebhookPersistence) -> None:
    store = persistence.delivery_store
    keyed = delivery(1, key="주문-42/+8210")
    await store.insert_many([keyed, delivery(2)])
    assert await store.get("dlv_0001") == keyed
    page = await store.list(DeliveryFilter())
    assert {d.id: d.ordering_key for d in page.items} == {
        "dlv_0001": "주문-42/+8210",
        "dlv_0002": None,
    }
    now = T0 + timedelta(seconds=1)
    [claimed] = [d for d in await claim(persistence, W1, now) if d.id == "dlv_0001"]
    assert claimed.ordering_key == "주문-42/+8210"


async def test_purging_a_keys_finished_deliveries_keeps_its_pending_ones_in_order(
    persistence: WebhookPersistence,
) -> None:
    store = persistence.delivery_store
    await store.insert_many([delivery(1, key="A"), delivery(2, key="A"), delivery(3, key="A")])
    now = T0 + timedelta(seconds=1)
    everything = T0 + timedelta(days=1)
    cutoffs = RetentionCutoffs(success=everything, failed=everything, exhausted=everything)
    assert await _ids(persistence, W1, now) == ["dlv_0001"]
    await store.record([outcome("dlv_0001", W1, DeliveryStatus.SUCCESS)])
    assert await store.purge_finished(cutoffs, limit=100) == 1
    assert await store.get("dlv_0001") is None
    assert await _ids(persistence, W1, now) == ["dlv_0002"]
    # 2 in flight and 3 waiting for it are both pending: kept, and 3 still waits.
    assert await store.purge_finished(cutoffs, limit=100) == 0
    assert await claim(persistence, W2, now) == []
    await store.record([outcome("dlv_0002", W1, DeliveryStatus.FAILED)])
    assert await store.purge_finished(cutoffs, limit=100) == 1
    assert await _ids(persistence, W2, now) == ["dlv_0003"]
