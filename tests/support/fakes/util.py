"""Test helpers: a sleep that records instead of waiting, a settable clock, a fake sink."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from kmsg_webhook.errors import StoreError
from kmsg_webhook.events import WebhookEvent


class RecordingSleep:
    """Stands in for ``asyncio.sleep``: records delays, yields once, never waits."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


class ManualClock:
    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 3, 2, 1, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


class FlakySink:
    """A WebhookSink that raises StoreError for its first ``failures`` emits."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls = 0
        self.stored: dict[str, WebhookEvent] = {}

    async def emit(self, event: WebhookEvent) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise StoreError("store unavailable")
        self.stored[event.id] = event

    @property
    def events(self) -> list[WebhookEvent]:
        return list(self.stored.values())
