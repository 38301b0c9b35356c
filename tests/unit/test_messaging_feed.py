"""WebhookFeed: bounded retry buffer for a sink that is down, never failing the caller."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from kmsg_webhook.errors import StoreError
from kmsg_webhook.events import WebhookEvent, WebhookEventType
from kmsg_webhook.messaging import (
    KMsgError,
    KMsgErrorCode,
    MessageContext,
    MessageStatus,
    MessageType,
    SendResult,
    WebhookFeed,
    WebhookFeedConfig,
    event_id,
)
from kmsg_webhook.messaging.feed import failed_event, sent_event
from support.fakes.util import FlakySink, RecordingSleep

NOW = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)


def event(n: int) -> WebhookEvent:
    return WebhookEvent(
        id=f"m{n}:message.sent", type=WebhookEventType.MESSAGE_SENT, timestamp=NOW, data={}
    )


async def test_inline_success() -> None:
    sink = FlakySink()
    feed = WebhookFeed(sink)
    assert await feed.publish(event(1)) is True
    assert feed.stats.emitted == 1 and feed.stats.pending == 0


async def test_failed_emit_is_retried_with_backoff() -> None:
    sink = FlakySink(failures=4)
    sleep = RecordingSleep()
    reports: list[tuple[str, str, int]] = []
    feed = WebhookFeed(
        sink,
        sleep=sleep,
        on_emit_error=lambda e, exc, n: reports.append((e.id, type(exc).__name__, n)),
    )
    assert await feed.publish(event(1)) is False
    assert feed.stats.pending == 1
    await feed.drain()
    assert list(sink.stored) == ["m1:message.sent"]
    assert sleep.delays == [1.0, 2.0, 4.0, 8.0]
    assert reports == [("m1:message.sent", "StoreError", n) for n in (1, 2, 3, 4)]
    stats = feed.stats
    assert (stats.emitted, stats.failed_attempts, stats.retried, stats.dropped) == (1, 4, 4, 0)


async def test_backoff_is_capped() -> None:
    config = WebhookFeedConfig(initial_backoff=10, max_backoff=25, max_attempts=10)
    assert [config.backoff(n) for n in (1, 2, 3, 4)] == [10, 20, 25, 25]


async def test_attempts_exhausted_drop_is_reported() -> None:
    sink = FlakySink(failures=100)
    drops: list[tuple[str, str]] = []
    feed = WebhookFeed(
        sink,
        config=WebhookFeedConfig(max_attempts=3),
        sleep=RecordingSleep(),
        on_drop=lambda e, reason: drops.append((e.id, reason)),
    )
    await feed.publish(event(1))
    await feed.drain()
    assert sink.calls == 3
    assert drops == [("m1:message.sent", "attempts_exhausted")]
    assert feed.stats.dropped == 1 and feed.stats.pending == 0


async def test_buffer_is_bounded_oldest_dropped() -> None:
    gate = asyncio.Event()

    async def blocked_sleep(seconds: float) -> None:
        await gate.wait()

    sink = FlakySink(failures=3)
    drops: list[tuple[str, str]] = []
    feed = WebhookFeed(
        sink,
        config=WebhookFeedConfig(max_buffer=2),
        sleep=blocked_sleep,
        on_drop=lambda e, reason: drops.append((e.id, reason)),
    )
    for n in (1, 2, 3):
        assert await feed.publish(event(n)) is False
    assert drops == [("m1:message.sent", "buffer_full")]
    assert feed.stats.pending == 2
    gate.set()
    await feed.drain()
    assert sorted(sink.stored) == ["m2:message.sent", "m3:message.sent"]


async def test_hanging_sink_times_out_into_the_buffer() -> None:
    class Hangs:
        def __init__(self) -> None:
            self.calls = 0
            self.stored: list[str] = []

        async def emit(self, e: WebhookEvent) -> None:
            self.calls += 1
            if self.calls == 1:
                await asyncio.Event().wait()
            self.stored.append(e.id)

    sink = Hangs()
    feed = WebhookFeed(sink, config=WebhookFeedConfig(emit_timeout=0.05), sleep=RecordingSleep())
    assert await feed.publish(event(1)) is False
    await feed.drain()
    assert sink.stored == ["m1:message.sent"]


async def test_callbacks_that_raise_are_contained() -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("callback bug")

    feed = WebhookFeed(
        FlakySink(failures=100),
        config=WebhookFeedConfig(max_attempts=2),
        sleep=RecordingSleep(),
        on_emit_error=broken,
        on_drop=broken,
    )
    await feed.publish(event(1))
    await feed.drain()
    assert feed.stats.dropped == 1


async def test_close_drops_pending_and_later_publishes() -> None:
    gate = asyncio.Event()

    async def blocked_sleep(seconds: float) -> None:
        await gate.wait()

    drops: list[str] = []
    feed = WebhookFeed(
        FlakySink(failures=1), sleep=blocked_sleep, on_drop=lambda e, r: drops.append(r)
    )
    await feed.publish(event(1))
    await feed.aclose()
    await feed.publish(event(2))
    assert drops == ["feed_closed", "feed_closed"]


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        WebhookFeedConfig(max_buffer=0)
    with pytest.raises(ValueError):
        WebhookFeedConfig(emit_timeout=0)


def test_event_builders() -> None:
    ctx = MessageContext(
        message_id="m1",
        type=MessageType.SMS,
        to="01012345678",
        provider_id="iwinv",
        correlation_id="c1",
    )
    result = SendResult("m1", "iwinv", MessageStatus.PENDING, MessageType.SMS, "01012345678", "P1")
    sent = sent_event(ctx, result, timestamp=NOW)
    assert sent.to_wire()["data"] == {
        "messageId": "m1",
        "status": "PENDING",
        "type": "SMS",
        "to": "010-****-5678",
        "providerId": "iwinv",
        "providerMessageId": "P1",
        "warnings": [],
    }
    assert sent.to_wire()["metadata"] == {
        "providerId": "iwinv",
        "messageId": "m1",
        "correlationId": "c1",
    }
    error = KMsgError(KMsgErrorCode.AUTHENTICATION_FAILED, "nope", provider_error_code="14")
    failed = failed_event(ctx, error, timestamp=NOW)
    assert failed.id == "m1:message.failed"
    assert failed.data["error"] == {
        "code": "AUTHENTICATION_FAILED",
        "message": "nope",
        "retryable": False,
        "providerErrorCode": "14",
    }
    assert event_id("x", WebhookEventType.MESSAGE_DELIVERED, 3) == "x:message.delivered:a3"
    long_id = event_id("a" * 300, WebhookEventType.MESSAGE_SENT)
    assert len(long_id) < 60 and long_id == event_id("a" * 300, WebhookEventType.MESSAGE_SENT)


async def test_store_error_type_is_what_runtime_raises() -> None:
    # The sink contract: StoreError (a WebhookError) when the store is down.
    with pytest.raises(StoreError):
        await FlakySink(failures=1).emit(event(1))
