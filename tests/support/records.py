"""Webhook records for store tests: endpoints, deliveries, attempts and outcomes, numbered so a
test can build many distinct ones in a line."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from kmsg_webhook import (
    AttemptOutcome,
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEventType,
)

T0 = datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=UTC)
W1, W2 = "worker-1", "worker-2"


def endpoint(n: int = 1, **changes: object) -> WebhookEndpoint:
    base = WebhookEndpoint(
        id=f"ep_{n}",
        url=f"https://hooks{n}.example.com/in",
        events=(WebhookEventType.MESSAGE_SENT, WebhookEventType.MESSAGE_FAILED),
        created_at=T0,
        updated_at=T0 + timedelta(seconds=n),
        secret=f"whsec_c2VjcmV0LXtufQ{n}==",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def delivery(
    n: int,
    *,
    endpoint_id: str = "ep_1",
    event_id: str | None = None,
    created: datetime | None = None,
    due: datetime | None = None,
    event_type: WebhookEventType = WebhookEventType.MESSAGE_SENT,
    key: str | None = None,
) -> WebhookDelivery:
    created = created or T0 + timedelta(milliseconds=n)
    return WebhookDelivery(
        ordering_key=key,
        id=f"dlv_{n:04d}",
        endpoint_id=endpoint_id,
        event_id=event_id or f"evt_{n}",
        event_type=event_type,
        url="https://hooks1.example.com/in",
        payload=f'{{"id":"evt_{n}","data":{{"text":"안녕"}}}}',
        status=DeliveryStatus.PENDING,
        created_at=created,
        next_attempt_at=due or created,
    )


def attempt(n: int, status: int | None = 200, *, at: datetime = T0) -> WebhookAttempt:
    return WebhookAttempt(
        attempt_number=n,
        started_at=at,
        latency_ms=12.5,
        http_status=status,
        response_body="ok" if status else None,
        error=None if status == 200 else (f"HTTP {status}" if status else "timeout"),
    )


def outcome(
    d: WebhookDelivery | str,
    worker: str,
    status: DeliveryStatus,
    *,
    att: WebhookAttempt | None = None,
    next_at: datetime | None = None,
    done: datetime | None = None,
) -> AttemptOutcome:
    return AttemptOutcome(
        delivery_id=d if isinstance(d, str) else d.id,
        worker_id=worker,
        attempt=att if att is not None else attempt(1),
        status=status,
        next_attempt_at=next_at,
        completed_at=done if done else (None if status is DeliveryStatus.PENDING else T0),
    )
