"""Model helpers that the hot path relies on."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest

from kmsg_webhook import DeliveryStatus, EventMetadata, WebhookEventType
from kmsg_webhook.events import _METADATA_KEYS, format_timestamp
from kmsg_webhook.models import (
    AttemptOutcome,
    WebhookAttempt,
    WebhookDelivery,
    build_attempt,
    build_delivery,
    build_outcome,
    evolve_delivery,
)
from kmsg_webhook.stores.protocol import apply_outcome

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _every_field_set() -> WebhookDelivery:
    return WebhookDelivery(
        id="dlv_1",
        endpoint_id="ep_1",
        event_id="evt_1",
        event_type=WebhookEventType.MESSAGE_FAILED,
        url="https://example.com/hook",
        payload="{}",
        status=DeliveryStatus.EXHAUSTED,
        created_at=NOW,
        next_attempt_at=NOW + timedelta(seconds=1),
        attempts=(WebhookAttempt(attempt_number=1, started_at=NOW, latency_ms=1.0),),
        attempt_count=1,
        completed_at=NOW + timedelta(seconds=2),
        last_error="HTTP 500",
        lease_owner="worker",
        lease_expires_at=NOW + timedelta(seconds=3),
        to_hash="to",
        from_hash="from",
        ordering_key="order-1",
    )


def test_evolve_delivery_copies_every_field_and_applies_changes() -> None:
    original = _every_field_set()
    assert evolve_delivery(original) == original
    for field in dataclasses.fields(WebhookDelivery):
        marker = object()
        changed = evolve_delivery(original, **{field.name: marker})
        assert getattr(changed, field.name) is marker, field.name
        assert changed == dataclasses.replace(original, **{field.name: marker})


def test_evolve_delivery_refuses_unknown_fields() -> None:
    with pytest.raises(TypeError, match="not WebhookDelivery fields"):
        evolve_delivery(_every_field_set(), lease="x")


@pytest.mark.parametrize(
    ("factory", "record"),
    [
        (build_delivery, WebhookDelivery),
        (build_attempt, WebhookAttempt),
        (build_outcome, AttemptOutcome),
    ],
)
def test_a_factory_takes_its_records_fields_and_defaults(
    factory: Callable[..., object], record: type
) -> None:
    fields = [
        (f.name, inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default)
        for f in dataclasses.fields(record)
    ]
    assert all(f.default_factory is dataclasses.MISSING for f in dataclasses.fields(record))
    parameters = inspect.signature(factory).parameters.values()
    assert [(p.name, p.default) for p in parameters] == fields
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in parameters)


def test_a_factory_built_record_is_the_same_as_one_built_by_its_constructor() -> None:
    original = _every_field_set()
    built = build_delivery(
        **{f.name: getattr(original, f.name) for f in dataclasses.fields(original)}
    )
    assert type(built) is WebhookDelivery
    assert built == original and hash(built) == hash(original)
    assert repr(built) == repr(original)
    assert (
        dataclasses.replace(built, status=DeliveryStatus.SUCCESS).status is DeliveryStatus.SUCCESS
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.status = DeliveryStatus.SUCCESS  # type: ignore[misc]
    attempt = build_attempt(attempt_number=2, started_at=NOW, latency_ms=3.0)
    assert attempt == WebhookAttempt(attempt_number=2, started_at=NOW, latency_ms=3.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        attempt.error = "x"  # type: ignore[misc]


def test_evolve_delivery_returns_a_frozen_delivery() -> None:
    changed = evolve_delivery(_every_field_set(), status=DeliveryStatus.SUCCESS)
    assert type(changed) is WebhookDelivery
    with pytest.raises(dataclasses.FrozenInstanceError):
        changed.status = DeliveryStatus.PENDING  # type: ignore[misc]


@pytest.mark.parametrize(
    ("status", "attempt"),
    [
        (DeliveryStatus.SUCCESS, WebhookAttempt(attempt_number=2, started_at=NOW, latency_ms=2.0)),
        (DeliveryStatus.PENDING, WebhookAttempt(attempt_number=2, started_at=NOW, latency_ms=2.0)),
        (DeliveryStatus.FAILED, None),
    ],
)
def test_apply_outcome_keeps_every_field_it_does_not_set(
    status: DeliveryStatus, attempt: WebhookAttempt | None
) -> None:
    # apply_outcome builds the row whole: a field added to WebhookDelivery must reach it too.
    original = _every_field_set()
    assert all(  # so a new field is noticed: the helper must set it
        getattr(original, f.name) != f.default for f in dataclasses.fields(WebhookDelivery)
    )
    outcome = AttemptOutcome(
        delivery_id=original.id,
        worker_id="worker",
        attempt=attempt,
        status=status,
        next_attempt_at=NOW + timedelta(minutes=1),
        completed_at=None if status is DeliveryStatus.PENDING else NOW,
        error="endpoint was removed",
    )
    attempts = original.attempts if attempt is None else (*original.attempts, attempt)
    expected = dataclasses.replace(
        original,
        attempts=attempts,
        attempt_count=original.attempt_count + (attempt is not None),
        status=status,
        next_attempt_at=outcome.next_attempt_at if status is DeliveryStatus.PENDING else None,
        completed_at=outcome.completed_at,
        last_error=outcome.last_error,
        lease_owner=None,
        lease_expires_at=None,
    )
    recorded = apply_outcome(original, outcome, max_stored_attempts=5)
    assert type(recorded) is WebhookDelivery
    assert recorded == expected
    capped = apply_outcome(original, outcome, max_stored_attempts=1)
    assert capped.attempts == attempts[-1:]


def test_event_metadata_wire_names_every_field_once() -> None:
    values = {attr: f"v-{attr}" for attr, _ in _METADATA_KEYS}
    values["retry_count"] = 3  # type: ignore[assignment]
    wire = EventMetadata(**values).to_wire()  # type: ignore[arg-type]
    assert wire == {key: values[attr] for attr, key in _METADATA_KEYS}
    assert [attr for attr, _ in _METADATA_KEYS] == [
        f.name for f in dataclasses.fields(EventMetadata)
    ]
    assert EventMetadata().to_wire() == {}


@pytest.mark.parametrize(
    ("moment", "wire"),
    [
        (datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "2026-01-02T03:04:05.000Z"),
        (datetime(2026, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), "2026-12-31T23:59:59.999Z"),
        (datetime(5, 1, 2, 3, 4, 5, 1_500, tzinfo=UTC), "0005-01-02T03:04:05.001Z"),
        # Another zone is converted to UTC.
        (
            datetime(2026, 1, 1, 8, 0, tzinfo=timezone(timedelta(hours=9))),
            "2025-12-31T23:00:00.000Z",
        ),
    ],
)
def test_event_timestamps_go_out_as_javascript_writes_them(moment: datetime, wire: str) -> None:
    assert format_timestamp(moment) == wire
    js = moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert wire == js  # Date.toJSON(): milliseconds, "Z"
