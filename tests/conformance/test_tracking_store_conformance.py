"""The tracking-store conformance suite: every backend (memory, SQLite, Postgres, D1, each with
and without field crypto) passes every case here."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from kmsg_webhook.crypto.fields import FieldCrypto
from kmsg_webhook.errors import ConfigError
from kmsg_webhook.messaging import (
    ApiAttemptStatus,
    DeliveryStatus,
    FailoverOptions,
    FailoverState,
    FallbackChannel,
    MessageType,
    RetentionPolicy,
    RetentionPreset,
    TrackingError,
    TrackingFilter,
    TrackingGroup,
    TrackingOrder,
    TrackingRecord,
)
from kmsg_webhook.messaging.sql_store import SqlQuery
from kmsg_webhook.messaging.tracking_rows import COLUMNS, LEASE_COLUMNS
from kmsg_webhook.stores.sqlbind import POSTGRES, SQLITE
from kmsg_webhook.stores.sqlfiles import Dialect, queries
from support.crypto_keys import config
from support.stores import (
    TRACKING_BACKENDS,
    TRACKING_TABLE,
    TrackingBackend,
    open_tracking_backend,
)

T0 = datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=UTC)
W1, W2 = "worker-1", "worker-2"
FALLBACK_TEXT = "카카오톡 대신 문자로 안내드립니다"


def record(n: int, **changes: object) -> TrackingRecord:
    base = TrackingRecord(
        message_id=f"msg-{n:03d}",
        provider_id="solapi" if n % 2 else "iwinv",
        provider_message_id=f"P{n}",
        type=MessageType.ALIMTALK if n % 3 == 0 else MessageType.SMS,
        to=f"010-5555-{n:04d}",
        from_="02-1234-5678",
        requested_at=T0 + timedelta(minutes=n),
        status=DeliveryStatus.SENT,
        status_updated_at=T0 + timedelta(minutes=n),
        next_check_at=T0 + timedelta(minutes=n, seconds=30),
        template_id="KA01" if n % 3 == 0 else None,
        correlation_id=f"req-{n}",
        custom_fields={"order": f"ORDER-{n}-XYZ", "memo": "개인 메모"},
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def with_failover(n: int, **changes: object) -> TrackingRecord:
    failover = FailoverState(
        request=FailoverOptions(
            enabled=True,
            fallback_channel=FallbackChannel.LMS,
            fallback_content=FALLBACK_TEXT,
            fallback_title="안내",
        ),
        send_warning_codes=("FAILOVER_PARTIAL_PROVIDER",),
    )
    return record(n, type=MessageType.ALIMTALK, failover=failover, **changes)


def left_attempting(finished: TrackingRecord, *, at: datetime) -> TrackingRecord:
    """``finished`` with its fallback started at ``at`` and never finished (its sender died)."""
    assert finished.failover is not None
    failover = dataclasses.replace(
        finished.failover, attempted=True, status=ApiAttemptStatus.ATTEMPTING, attempted_at=at
    )
    return dataclasses.replace(finished, failover=failover)


@pytest.fixture(params=TRACKING_BACKENDS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[TrackingBackend]:
    opened = await open_tracking_backend(request.param)
    try:
        await opened.store.init()
        yield opened
    finally:
        await opened.close()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_the_upsert_writes_every_row_column_but_the_lease(dialect: Dialect) -> None:
    binding = {"sqlite": SQLITE, "postgresql": POSTGRES}[dialect]
    upsert = SqlQuery(queries(dialect, "tracking")["upsert"], binding)
    assert upsert.parameters == set(COLUMNS) - set(LEASE_COLUMNS)


async def test_upsert_then_get_round_trips_every_field(backend: TrackingBackend) -> None:
    store = backend.store
    full = with_failover(
        3,
        scheduled_at=T0 + timedelta(hours=1),
        attempt_count=2,
        last_checked_at=T0 + timedelta(minutes=5),
        sent_at=T0 + timedelta(minutes=4),
        failed_at=T0 + timedelta(minutes=6),
        status=DeliveryStatus.FAILED,
        provider_status_code="3104",
        provider_status_message="카카오톡 미사용자",
        last_error=TrackingError("PROVIDER_ERROR", "vendor said no"),
    )
    bare = record(4, from_=None, custom_fields={}, template_id=None, correlation_id=None)
    await store.upsert(full)
    await store.upsert(bare)
    assert await store.get(full.message_id) == full
    assert await store.get(bare.message_id) == bare
    assert await store.get("missing") is None
    changed = dataclasses.replace(full, status=DeliveryStatus.DELIVERED, attempt_count=3)
    await store.upsert(changed)
    assert await store.get(full.message_id) == changed
    assert await store.count_records() == 2


async def test_claims_lease_due_records_earliest_first(backend: TrackingBackend) -> None:
    store = backend.store
    for n in (5, 1, 3, 2):
        await store.upsert(record(n))
    await store.upsert(record(4, next_check_at=T0 + timedelta(hours=9)))  # not due
    await store.upsert(record(6, status=DeliveryStatus.DELIVERED))  # finished
    now = T0 + timedelta(hours=1)
    lease = now + timedelta(minutes=2)
    first = await store.claim_due(worker_id=W1, now=now, lease_until=lease, limit=2)
    assert [r.message_id for r in first] == ["msg-001", "msg-002"]
    rest = await store.claim_due(worker_id=W2, now=now, lease_until=lease, limit=10)
    assert [r.message_id for r in rest] == ["msg-003", "msg-005"]
    assert await store.claim_due(worker_id=W2, now=now, lease_until=lease, limit=10) == []
    # An expired lease is claimable again, by anyone.
    later = lease + timedelta(milliseconds=1)
    again = await store.claim_due(
        worker_id=W2, now=later, lease_until=later + timedelta(minutes=2), limit=10
    )
    assert [r.message_id for r in again] == ["msg-001", "msg-002", "msg-003", "msg-005"]
    assert await store.claim_due(worker_id=W1, now=now, lease_until=lease, limit=0) == []


async def test_a_fallback_left_attempting_is_claimable_once_its_lease_expires(
    backend: TrackingBackend,
) -> None:
    store = backend.store
    failed = with_failover(9, status=DeliveryStatus.FAILED)
    await store.upsert(failed)
    now = T0 + timedelta(hours=1)
    assert await store.claim_due(worker_id=W1, now=now, lease_until=now, limit=5) == []
    await store.upsert(failed)  # reset
    attempting = left_attempting(failed, at=now)
    await store.upsert(attempting)
    lease = now + timedelta(minutes=2)
    claimed = await store.claim_due(worker_id=W1, now=now, lease_until=lease, limit=5)
    assert claimed == [attempting]
    assert await store.claim_due(worker_id=W2, now=now, lease_until=lease, limit=5) == []
    after = lease + timedelta(seconds=1)
    claimed = await store.claim_due(worker_id=W2, now=after, lease_until=after, limit=5)
    assert [r.message_id for r in claimed] == ["msg-009"]


async def test_save_needs_the_lease(backend: TrackingBackend) -> None:
    store = backend.store
    await store.upsert(record(1))
    changed = dataclasses.replace(record(1), status=DeliveryStatus.DELIVERED)
    assert not await store.save(changed, worker_id=W1)  # never claimed
    now = T0 + timedelta(hours=1)
    lease = now + timedelta(minutes=2)
    [claimed] = await store.claim_due(worker_id=W1, now=now, lease_until=lease, limit=1)
    assert not await store.save(changed, worker_id=W2)
    checked = dataclasses.replace(claimed, attempt_count=1, next_check_at=now)
    assert await store.save(checked, worker_id=W1, keep_lease=True)
    assert await store.get("msg-001") == checked
    # Still leased: nobody else claims it, and the holder may save again.
    assert await store.claim_due(worker_id=W2, now=now, lease_until=lease, limit=1) == []
    assert await store.save(changed, worker_id=W1)
    assert await store.get("msg-001") == changed
    assert not await store.save(changed, worker_id=W1)  # the lease went with that save


async def test_upsert_keeps_a_lease_and_release_gives_it_back(backend: TrackingBackend) -> None:
    store = backend.store
    await store.upsert(record(1))
    now = T0 + timedelta(hours=1)
    lease = now + timedelta(minutes=2)
    await store.claim_due(worker_id=W1, now=now, lease_until=lease, limit=1)
    await store.upsert(dataclasses.replace(record(1), provider_message_id="P1b"))
    assert await store.claim_due(worker_id=W2, now=now, lease_until=lease, limit=1) == []
    await store.release(["msg-001"], worker_id=W2)  # not W2's: nothing happens
    assert await store.claim_due(worker_id=W2, now=now, lease_until=lease, limit=1) == []
    await store.release(["msg-001"], worker_id=W1)
    [claimed] = await store.claim_due(worker_id=W2, now=now, lease_until=lease, limit=1)
    assert claimed.provider_message_id == "P1b"


async def test_concurrent_claims_never_overlap(backend: TrackingBackend) -> None:
    store = backend.store
    for n in range(1, 41):
        await store.upsert(record(n))
    now = T0 + timedelta(days=1)
    lease = now + timedelta(minutes=2)
    batches = await asyncio.gather(
        *(store.claim_due(worker_id=f"w{i}", now=now, lease_until=lease, limit=7) for i in range(8))
    )
    ids = [r.message_id for batch in batches for r in batch]
    assert len(ids) == len(set(ids)) == 40


async def test_list_count_and_count_by_with_filters(backend: TrackingBackend) -> None:
    store = backend.store
    for n in range(1, 13):
        status = DeliveryStatus.DELIVERED if n % 4 == 0 else DeliveryStatus.SENT
        await store.upsert(record(n, status=status, status_updated_at=T0 + timedelta(hours=12 - n)))
    listed = await store.list_records(limit=3)
    assert [r.message_id for r in listed] == ["msg-012", "msg-011", "msg-010"]
    page = await store.list_records(limit=3, offset=3, descending=False)
    assert [r.message_id for r in page] == ["msg-004", "msg-005", "msg-006"]
    by_update = await store.list_records(order_by=TrackingOrder.STATUS_UPDATED_AT, limit=2)
    assert [r.message_id for r in by_update] == ["msg-001", "msg-002"]
    solapi = TrackingFilter(provider_id="solapi")
    assert await store.count_records(solapi) == 6
    delivered = TrackingFilter(statuses=(DeliveryStatus.DELIVERED,))
    assert [r.message_id for r in await store.list_records(delivered)] == [
        "msg-012",
        "msg-008",
        "msg-004",
    ]
    window = TrackingFilter(
        requested_from=T0 + timedelta(minutes=3), requested_before=T0 + timedelta(minutes=6)
    )
    assert await store.count_records(window) == 3
    updated = TrackingFilter(updated_from=T0 + timedelta(hours=10))
    assert await store.count_records(updated) == 2
    assert await store.count_records(TrackingFilter(type=MessageType.ALIMTALK)) == 4
    assert await store.count_records(TrackingFilter(message_id="msg-007")) == 1
    assert await store.count_records(TrackingFilter(provider_message_id="P7")) == 1
    assert await store.count_by(TrackingFilter(), [TrackingGroup.STATUS]) == {
        ("SENT",): 9,
        ("DELIVERED",): 3,
    }
    assert await store.count_by(solapi, [TrackingGroup.TYPE, TrackingGroup.STATUS]) == {
        ("ALIMTALK", "SENT"): 2,
        ("SMS", "SENT"): 4,
    }
    with pytest.raises(ConfigError):
        await store.count_by(TrackingFilter(), [])
    with pytest.raises(ConfigError):
        await store.list_records(limit=-1)


async def test_find_by_recipient(backend: TrackingBackend) -> None:
    store = backend.store
    for n in range(1, 4):
        await store.upsert(record(n))
    found = await store.list_records(TrackingFilter(to="010-5555-0002"))
    assert [r.message_id for r in found] == ["msg-002"]
    assert found[0].to == "010-5555-0002"


async def test_purge_by_age_per_status(backend: TrackingBackend) -> None:
    store = backend.store
    old, recent = T0, T0 + timedelta(days=100)
    rows = {
        1: (DeliveryStatus.DELIVERED, old),
        2: (DeliveryStatus.FAILED, old),
        3: (DeliveryStatus.SENT, old),  # still polled: never purged
        4: (DeliveryStatus.DELIVERED, recent),
        5: (DeliveryStatus.UNKNOWN, old),
    }
    for n, (status, at) in rows.items():
        await store.upsert(record(n, status=status, requested_at=at))
    attempting = with_failover(6, status=DeliveryStatus.FAILED, requested_at=old)
    attempting = dataclasses.replace(
        attempting,
        failover=dataclasses.replace(
            attempting.failover,  # type: ignore[arg-type]
            attempted=True,
            status=ApiAttemptStatus.ATTEMPTING,
        ),
    )
    await store.upsert(attempting)  # a fallback in flight: kept
    in_flight = await store.list_records(TrackingFilter(fallback_in_flight=True))
    assert [r.message_id for r in in_flight] == ["msg-006"]
    assert await store.count_records(TrackingFilter(fallback_in_flight=False)) == 5
    with pytest.raises(ConfigError, match="still being tracked: SENT"):
        await store.purge(statuses=[DeliveryStatus.SENT], older_than=recent)
    cutoff = T0 + timedelta(days=50)
    assert await store.purge(statuses=[DeliveryStatus.DELIVERED], older_than=cutoff) == 1
    now = T0 + timedelta(days=140)
    # failures-longer: delivered 30 days, the rest a year.
    assert await RetentionPolicy.preset(RetentionPreset.FAILURES_LONGER).apply(store, now=now) == 1
    ops = RetentionPolicy.preset("ops-logs")
    assert await ops.count(store, now=now) == 2  # msg-006 is old and failed, but in flight
    left = {r.message_id for r in await store.list_records()}
    assert left == {"msg-002", "msg-003", "msg-005", "msg-006"}
    assert await ops.apply(store, now=now) == 2
    assert {r.message_id for r in await store.list_records()} == {"msg-003", "msg-006"}


def test_retention_policies_are_checked() -> None:
    with pytest.raises(ConfigError, match="unknown retention preset 'forever'"):
        RetentionPolicy.preset("forever")
    with pytest.raises(ConfigError, match="still being tracked"):
        RetentionPolicy({DeliveryStatus.PENDING: timedelta(days=1)})
    with pytest.raises(ConfigError, match="must be positive"):
        RetentionPolicy({DeliveryStatus.FAILED: timedelta(0)})
    billing = RetentionPolicy.preset(RetentionPreset.BILLING_EVIDENCE)
    assert billing.max_age[DeliveryStatus.DELIVERED] == timedelta(days=1825)


async def test_raw_rows_hold_no_plaintext_with_field_crypto(backend: TrackingBackend) -> None:
    message = with_failover(3)
    await backend.store.upsert(message)
    [row] = await backend.raw_rows(TRACKING_TABLE)
    text = " ".join(str(v) for v in row.values())
    secrets = ("010-5555-0003", "01055550003", FALLBACK_TEXT, "개인 메모", "ORDER-3-XYZ")
    if "crypto" in backend.name:
        assert not [s for s in secrets if s in text]
        assert row["recipient_hash"]
        assert row["fallback_status"] == "not_attempted"
    else:
        assert all(s in text for s in ("010-5555-0003", FALLBACK_TEXT, "개인 메모"))
    assert await backend.store.get(message.message_id) == message


async def test_a_record_that_does_not_open_is_settled_failed_and_the_rest_are_claimed(
    backend: TrackingBackend, caplog: pytest.LogCaptureFixture
) -> None:
    # Sealed under key C, which the backend's store lacks (it has key A, or no keys at all).
    foreign, _ = backend.reopen(FieldCrypto(config("C")))
    await foreign.upsert(record(1))
    stuck = left_attempting(with_failover(4, status=DeliveryStatus.DELIVERED), at=T0)
    await foreign.upsert(stuck)  # claimable for its fallback
    await backend.store.upsert(record(2))
    await backend.store.upsert(record(3))
    now = T0 + timedelta(hours=1)
    lease = now + timedelta(minutes=2)
    with caplog.at_level(logging.ERROR, "kmsg_webhook.messaging.tracking"):
        first = await backend.store.claim_due(worker_id=W1, now=now, lease_until=lease, limit=2)
    assert [r.message_id for r in first] == ["msg-002"]  # msg-001 sorts first, does not open
    [logged] = caplog.records
    assert logged.getMessage().startswith("tracking record msg-001 settled failed: ")
    later = lease + timedelta(seconds=1)
    held = later + timedelta(minutes=2)
    again = await backend.store.claim_due(worker_id=W2, now=later, lease_until=held, limit=9)
    assert [r.message_id for r in again] == ["msg-002", "msg-003"]  # msg-001 never again
    assert await backend.store.claim_due(worker_id=W1, now=held, lease_until=held, limit=9) == [
        await backend.store.get("msg-002"),
        await backend.store.get("msg-003"),
    ]
    rows = {r["message_id"]: r for r in await backend.raw_rows(TRACKING_TABLE)}
    bad = rows["msg-001"]
    assert (bad["status"], bad["last_error_code"], bad["lease_owner"]) == (
        "FAILED",
        "CRYPTO_DECRYPT_FAILED",
        None,
    )
    reason = "kC" if "crypto" in backend.name else "no keys were given"
    assert bad["last_error_message"].startswith("refused: ")
    assert reason in bad["last_error_message"]
    assert "5555" not in bad["last_error_message"]
    settled = await foreign.get("msg-001")  # nothing sealed was lost
    assert settled == dataclasses.replace(
        record(1),
        status=DeliveryStatus.FAILED,
        status_updated_at=now,
        failed_at=now,
        last_error=TrackingError("CRYPTO_DECRYPT_FAILED", bad["last_error_message"]),
    )
    # Claimed for its fallback: the fallback is given up, the delivery status kept.
    assert (rows["msg-004"]["status"], rows["msg-004"]["fallback_status"]) == (
        "DELIVERED",
        "failed",
    )
