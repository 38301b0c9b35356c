"""The job-queue conformance suite: every backend (memory, SQLite, Postgres, D1, each with and
without field crypto) passes every case here."""

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
    AlimTalkSendOptions,
    FailoverOptions,
    KakaoOptions,
    MessageType,
    SmsSendOptions,
)
from kmsg_webhook.messaging.jobs import JobResult, JobStatus, SendJob
from kmsg_webhook.messaging.options_codec import decode_options, encode_options
from support.crypto_keys import config
from support.stores import JOBS_TABLE, TRACKING_BACKENDS, TrackingBackend, open_tracking_backend

T0 = datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=UTC)
W1, W2 = "worker-1", "worker-2"
TEXT = "주문하신 상품이 발송되었습니다"


def job(n: int, *, batch: str | None = "b1", run_at: datetime | None = None) -> SendJob:
    options = SmsSendOptions(
        to=f"010-7777-{n:04d}",
        from_="0212345678",
        text=f"{TEXT} #{n}",
        message_id=f"m-{n:03d}",
        type=MessageType.LMS if n % 2 else MessageType.SMS,
        custom_fields={"order": f"ORDER-{n}-XYZ"},
    )
    return SendJob(
        id=f"m-{n:03d}",
        options=options,
        run_at=run_at or T0 + timedelta(seconds=n),
        created_at=T0,
        batch_id=batch,
    )


@pytest.fixture(params=TRACKING_BACKENDS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[TrackingBackend]:
    opened = await open_tracking_backend(request.param)
    try:
        await opened.jobs.init()
        yield opened
    finally:
        await opened.close()


async def test_enqueue_is_idempotent_by_message_id(backend: TrackingBackend) -> None:
    jobs = backend.jobs
    assert await jobs.enqueue([job(1), job(2)]) == ["m-001", "m-002"]
    assert await jobs.enqueue([job(2), job(3)]) == ["m-003"]
    assert await jobs.enqueue([]) == []
    assert await jobs.get("m-002") == job(2)
    assert await jobs.get("nope") is None
    with pytest.raises(ConfigError, match="message id of its options"):
        await jobs.enqueue([dataclasses.replace(job(4), id="other")])
    with pytest.raises(ConfigError, match="must be pending"):
        await jobs.enqueue([dataclasses.replace(job(5), status=JobStatus.SENT)])


async def test_a_bulk_enqueue_stores_each_new_job_once_and_leaves_stored_ones_alone(
    backend: TrackingBackend,
) -> None:
    jobs = backend.jobs
    assert await jobs.enqueue([job(1), job(2, batch=None)]) == ["m-001", "m-002"]
    resent = dataclasses.replace(job(2, batch="b9"), run_at=T0 + timedelta(days=1))
    bulk = [resent, *(job(n, batch="b2") for n in range(3, 601))]
    assert await jobs.enqueue(bulk) == [f"m-{n:03d}" for n in range(3, 601)]
    assert await jobs.get("m-002") == job(2, batch=None)  # as first stored
    assert await jobs.get("m-600") == job(600, batch="b2")
    counts = await jobs.count_by_status()
    assert counts[JobStatus.PENDING] == 600


async def test_claims_lease_due_jobs_and_count_attempts(backend: TrackingBackend) -> None:
    jobs = backend.jobs
    later = T0 + timedelta(hours=1)
    await jobs.enqueue([job(3), job(1), job(2, batch="b2"), job(4, run_at=later)])
    now = T0 + timedelta(minutes=1)
    lease = now + timedelta(minutes=2)
    only_b2 = await jobs.claim(worker_id=W1, now=now, lease_until=lease, limit=5, batch_id="b2")
    assert [j.id for j in only_b2] == ["m-002"]
    assert only_b2[0].attempts == 1
    rest = await jobs.claim(worker_id=W2, now=now, lease_until=lease, limit=5)
    assert [j.id for j in rest] == ["m-001", "m-003"]  # m-004 is not due yet
    assert await jobs.claim(worker_id=W2, now=now, lease_until=lease, limit=5) == []
    after = lease + timedelta(seconds=1)
    again = await jobs.claim(worker_id=W1, now=after, lease_until=after, limit=2)
    assert [(j.id, j.attempts) for j in again] == [("m-001", 2), ("m-002", 2)]


async def test_complete_needs_the_lease(backend: TrackingBackend) -> None:
    jobs = backend.jobs
    await jobs.enqueue([job(1), job(2)])
    now = T0 + timedelta(minutes=1)
    await jobs.claim(worker_id=W1, now=now, lease_until=now + timedelta(minutes=2), limit=5)
    sent = JobResult("m-001", W1, JobStatus.SENT, now, "solapi", "P1")
    failed = JobResult("m-002", W1, JobStatus.FAILED, now, error_code="X", error_message="no")
    assert await jobs.complete([dataclasses.replace(sent, worker_id=W2)]) == 0
    assert await jobs.complete([sent, failed]) == 2
    assert await jobs.complete([sent]) == 0  # the lease went with the first result
    done = await jobs.get("m-001")
    assert done is not None
    assert (done.status, done.provider_id, done.provider_message_id) == (
        JobStatus.SENT,
        "solapi",
        "P1",
    )
    assert done.completed_at == now
    bad = await jobs.get("m-002")
    assert bad is not None and (bad.error_code, bad.error_message) == ("X", "no")
    later = now + timedelta(hours=1)
    assert await jobs.claim(worker_id=W2, now=later, lease_until=later, limit=5) == []
    assert await jobs.count_by_status() == {
        JobStatus.PENDING: 0,
        JobStatus.SENT: 1,
        JobStatus.FAILED: 1,
    }


async def test_concurrent_claims_never_overlap(backend: TrackingBackend) -> None:
    jobs = backend.jobs
    await jobs.enqueue([job(n) for n in range(1, 41)])
    now = T0 + timedelta(days=1)
    batches = await asyncio.gather(
        *(
            jobs.claim(worker_id=f"w{i}", now=now, lease_until=now + timedelta(minutes=1), limit=7)
            for i in range(8)
        )
    )
    ids = [j.id for batch in batches for j in batch]
    assert len(ids) == len(set(ids)) == 40


async def test_list_and_count_by_batch_and_status(backend: TrackingBackend) -> None:
    jobs = backend.jobs
    await jobs.enqueue([job(n, batch="b1" if n <= 3 else "b2") for n in range(1, 6)])
    now = T0 + timedelta(minutes=1)
    [first] = await jobs.claim(worker_id=W1, now=now, lease_until=now, limit=1)
    await jobs.complete([JobResult(first.id, W1, JobStatus.SENT, now)])
    assert [j.id for j in await jobs.list_jobs(batch_id="b1")] == ["m-001", "m-002", "m-003"]
    pending = await jobs.list_jobs(statuses=[JobStatus.PENDING], limit=2, offset=1)
    assert [j.id for j in pending] == ["m-003", "m-004"]
    with pytest.raises(ConfigError, match="offset must be >= 0"):
        await jobs.list_jobs(offset=-1)
    assert await jobs.count_by_status(batch_id="b1") == {
        JobStatus.PENDING: 2,
        JobStatus.SENT: 1,
        JobStatus.FAILED: 0,
    }


async def test_requeue_makes_failed_jobs_pending_and_leaves_the_rest(
    backend: TrackingBackend,
) -> None:
    jobs = backend.jobs
    await jobs.enqueue([job(n, batch="b1" if n <= 3 else "b2") for n in range(1, 6)])
    now = T0 + timedelta(minutes=1)
    claimed = await jobs.claim(
        worker_id=W1, now=now, lease_until=now + timedelta(minutes=2), limit=4
    )
    results = [
        JobResult(j.id, W1, JobStatus.FAILED, now, "solapi", error_code="X") for j in claimed
    ]
    results[0] = JobResult("m-001", W1, JobStatus.SENT, now, "solapi", "P1")
    await jobs.complete(results)  # m-001 sent, m-002..m-004 failed, m-005 pending
    later = now + timedelta(hours=1)
    assert await jobs.requeue(run_at=later, job_ids=["m-001", "m-002", "m-005", "nope"]) == 1
    again = await jobs.get("m-002")
    assert again is not None
    assert (again.status, again.run_at, again.attempts) == (JobStatus.PENDING, later, 1)
    assert (again.error_code, again.provider_id, again.completed_at) == (None, None, None)
    assert await jobs.requeue(run_at=later, batch_id="b2") == 1  # m-004
    assert await jobs.requeue(run_at=later) == 1  # m-003, the last failed one
    assert await jobs.count_by_status() == {
        JobStatus.PENDING: 4,
        JobStatus.SENT: 1,
        JobStatus.FAILED: 0,
    }
    sent = await jobs.get("m-001")
    assert sent is not None and sent.status is JobStatus.SENT
    due = await jobs.claim(
        worker_id=W2, now=later, lease_until=later + timedelta(minutes=1), limit=9
    )
    assert sorted(j.id for j in due) == ["m-002", "m-003", "m-004", "m-005"]


async def test_raw_rows_hold_no_plaintext_with_field_crypto(backend: TrackingBackend) -> None:
    await backend.jobs.enqueue([job(7)])
    [row] = await backend.raw_rows(JOBS_TABLE)
    text = " ".join(str(v) for v in row.values())
    secrets = ("010-7777-0007", TEXT, "ORDER-7-XYZ")
    if "crypto" in backend.name:
        assert not [s for s in secrets if s in text]
    else:
        assert all(s in text for s in secrets)
    assert await backend.jobs.get("m-007") == job(7)


def test_options_of_every_shape_survive_the_round_trip() -> None:
    alimtalk = AlimTalkSendOptions(
        to="01012345678",
        template_id="KA01",
        variables={"name": "홍길동", "n": 3, "at": T0, "ok": True},
        kakao=KakaoOptions(plus_id="@brand"),
        failover=FailoverOptions(enabled=True, fallback_content="문자"),
        scheduled_at=T0,
        provider_options={"nested": {"a": [1, 2]}},
    )
    assert decode_options(encode_options(alimtalk)) == alimtalk


async def test_a_job_that_does_not_open_is_settled_failed_and_the_rest_are_claimed(
    backend: TrackingBackend, caplog: pytest.LogCaptureFixture
) -> None:
    # Sealed under key C, which the backend's queue lacks (it has key A, or no keys at all).
    _, foreign = backend.reopen(FieldCrypto(config("C")))
    await foreign.enqueue([job(1)])
    await backend.jobs.enqueue([job(2), job(3)])
    now = T0 + timedelta(minutes=1)
    lease = now + timedelta(minutes=2)
    with caplog.at_level(logging.ERROR, "kmsg_webhook.messaging.queue"):
        first = await backend.jobs.claim(worker_id=W1, now=now, lease_until=lease, limit=2)
    assert [j.id for j in first] == ["m-002"]  # m-001 sorts first but does not open
    [logged] = caplog.records
    assert logged.getMessage().startswith("job m-001 settled failed: ")
    assert _reason(backend) in logged.getMessage()
    rest = await backend.jobs.claim(worker_id=W1, now=now, lease_until=lease, limit=2)
    assert [j.id for j in rest] == ["m-003"]
    later = lease + timedelta(seconds=1)
    again = await backend.jobs.claim(worker_id=W2, now=later, lease_until=later, limit=5)
    assert [j.id for j in again] == ["m-002", "m-003"]  # m-001 is never leased again
    assert (await backend.jobs.count_by_status())[JobStatus.FAILED] == 1
    [row] = [r for r in await backend.raw_rows(JOBS_TABLE) if r["id"] == "m-001"]
    assert (row["status"], row["error_code"], row["lease_owner"]) == (
        "failed",
        "CRYPTO_DECRYPT_FAILED",
        None,
    )
    assert row["error_message"].startswith("refused: ")
    assert _reason(backend) in row["error_message"]
    assert TEXT not in row["error_message"] and "7777" not in row["error_message"]
    assert (await foreign.get("m-001")) == dataclasses.replace(
        job(1),
        status=JobStatus.FAILED,
        attempts=1,
        error_code="CRYPTO_DECRYPT_FAILED",
        error_message=row["error_message"],
        completed_at=now,
    )


def _reason(backend: TrackingBackend) -> str:
    """Why a row sealed under key C does not open for the backend's stores."""
    return "kC" if "crypto" in backend.name else "no keys were given"
