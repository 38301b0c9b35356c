"""Scheduled and bulk sends through the durable job queue (memory and SQLite stores)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from kmsg_webhook.crypto.fields import FieldCrypto
from kmsg_webhook.messaging import (
    DeliveryTrackingService,
    Fail,
    KMsg,
    KMsgErrorCode,
    MessageStatus,
    MockProvider,
    Ok,
)
from kmsg_webhook.messaging.jobs import JobStatus
from support.crypto_keys import config
from support.fakes.util import FlakySink, ManualClock
from support.stores import TrackingBackend, open_tracking_backend


@pytest.fixture(params=["memory", "sqlite+crypto"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[TrackingBackend]:
    opened = await open_tracking_backend(request.param)
    try:
        yield opened
    finally:
        await opened.close()


def message(n: int, **fields: object) -> dict[str, object]:
    return {"to": f"010-3333-{n:04d}", "text": f"안내 {n}", "messageId": f"m-{n}", **fields}


async def test_send_many_stores_then_sends_and_reports_each(backend: TrackingBackend) -> None:
    provider, sink = MockProvider(), FlakySink()
    kmsg = KMsg([provider], jobs=backend.jobs, webhooks=sink)
    provider.fail_next(1, KMsgErrorCode.INSUFFICIENT_BALANCE)
    inputs = [message(1), {"to": "not a phone", "text": "x", "messageId": "bad"}, message(2)]
    inputs += [message(n) for n in range(3, 8)]
    batch = await kmsg.send_many(inputs)
    assert batch.total == len(inputs)
    failed = batch.results[0]
    assert isinstance(failed, Fail) and failed.error.code is KMsgErrorCode.INSUFFICIENT_BALANCE
    invalid = batch.results[1]
    assert isinstance(invalid, Fail) and invalid.error.code is KMsgErrorCode.INVALID_REQUEST
    sent = [r for r in batch.results[2:] if isinstance(r, Ok)]
    assert [r.value.message_id for r in sent] == [f"m-{n}" for n in range(2, 8)]
    assert len(provider.calls) == 7  # the invalid one never reached the provider
    assert await backend.jobs.count_by_status() == {
        JobStatus.PENDING: 0,
        JobStatus.SENT: 6,
        JobStatus.FAILED: 1,
    }
    assert await backend.jobs.get("bad") is None
    job = await backend.jobs.get("m-1")
    assert job is not None and job.error_code == "INSUFFICIENT_BALANCE"
    assert "m-2:message.sent" in sink.stored and "m-1:message.failed" in sink.stored

    # The same message ids again: nothing is sent twice; the stored results come back.
    again = await kmsg.send_many([message(2), message(1)])
    assert len(provider.calls) == 7
    first, second = again.results
    assert isinstance(first, Ok) and first.value.status is MessageStatus.SENT
    assert isinstance(second, Fail) and second.error.code is KMsgErrorCode.INSUFFICIENT_BALANCE


async def test_a_scheduled_send_waits_for_its_time(backend: TrackingBackend) -> None:
    clock, provider = ManualClock(), MockProvider()
    tracking = DeliveryTrackingService([provider], store=backend.store, clock=clock)
    kmsg = KMsg([provider], jobs=backend.jobs, hooks=tracking.hooks(), clock=clock)
    assert kmsg.queue is not None
    at = clock.now + timedelta(hours=2)
    outcome = await kmsg.send(message(1), scheduled_at=at)
    assert isinstance(outcome, Ok) and outcome.value.status is MessageStatus.PENDING
    assert outcome.value.provider_id == ""
    assert await kmsg.queue.run_once() == 0
    assert provider.calls == []
    clock.advance(hours=2)
    assert await kmsg.queue.run_once() == 1
    assert [c.message_id for c in provider.calls] == ["m-1"]
    job = await backend.jobs.get("m-1")
    assert job is not None and job.status is JobStatus.SENT and job.provider_id == "mock"
    assert await backend.store.get("m-1") is not None  # the hooks followed the send
    assert await kmsg.queue.run_once() == 0
    bad = await kmsg.send({"to": "x", "text": "y"}, scheduled_at=at)
    assert isinstance(bad, Fail) and bad.error.code is KMsgErrorCode.INVALID_REQUEST
    many = await kmsg.send([message(2), message(3)], scheduled_at=at)
    assert [type(r) for r in many.results] == [Ok, Ok]
    assert await backend.jobs.count_by_status() == {
        JobStatus.PENDING: 2,
        JobStatus.SENT: 1,
        JobStatus.FAILED: 0,
    }


async def test_scheduling_needs_a_job_store() -> None:
    kmsg = KMsg([MockProvider()])
    outcome = await kmsg.send(message(1), scheduled_at=ManualClock().now)
    assert isinstance(outcome, Fail) and "needs a job store" in outcome.error.message
    many = await kmsg.send([message(1)], scheduled_at=ManualClock().now)
    assert isinstance(many.results[0], Fail)


async def test_a_job_sealed_under_another_key_does_not_hold_up_the_queue(
    backend: TrackingBackend,
) -> None:
    clock, provider = ManualClock(), MockProvider()
    _, foreign_jobs = backend.reopen(FieldCrypto(config("C")))
    foreign = KMsg([provider], jobs=foreign_jobs, clock=clock)
    kmsg = KMsg([provider], jobs=backend.jobs, clock=clock)
    assert kmsg.queue is not None
    at = clock.now + timedelta(minutes=1)
    assert isinstance(await foreign.send(message(1), scheduled_at=at), Ok)  # due first
    clock.advance(seconds=1)
    assert isinstance(await kmsg.send(message(2), scheduled_at=at), Ok)
    clock.advance(minutes=5)
    assert await kmsg.queue.run_once() == 1
    assert [c.message_id for c in provider.calls] == ["m-2"]
    assert await kmsg.queue.run_once() == 0
    clock.advance(hours=1)  # past every lease: the unreadable job is not claimed again
    assert await kmsg.queue.run_once() == 0
    refused = await foreign_jobs.get("m-1")
    assert refused is not None and refused.status is JobStatus.FAILED
    assert refused.attempts == 1 and (refused.error_message or "").startswith("refused: ")
    assert provider.calls[0].message_id == "m-2" and len(provider.calls) == 1
