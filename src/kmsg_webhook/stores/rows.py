"""Rows to records and back, for both dialects and both access paths.

Writers produce *plain values*: aware UTC datetimes and JSON-ready Python objects. The stores
turn those into what the dialect stores (``sqlbind.Binding`` for named parameters, or
:func:`to_millis` and :func:`dumps` directly). Readers accept every shape a row can arrive in:
datetimes or epoch milliseconds, JSON text or already-decoded JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from ..events import WebhookEventType, parse_timestamp
from ..models import (
    DeliveryStatus,
    EndpointFilters,
    EndpointStatus,
    RetiredSecret,
    RetryConfig,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    build_attempt,
    build_delivery,
)
from .protocol import ADDED_DELIVERY_COLUMNS

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

JsonValue = Any


def dumps(value: object) -> str:
    """Compact JSON text that keeps non-ASCII characters as they are (orjson: the values are
    our own plain data, and this runs for every recorded attempt). Dataclasses come out by
    field name (a batch of deliveries for the Postgres insert; an attempt exactly as
    :func:`attempt_to_json` writes it, which a test checks), enums by value, datetimes in
    RFC 3339 with a naive one taken as UTC."""
    return orjson.dumps(value, option=orjson.OPT_NAIVE_UTC).decode()


def loads(value: object) -> JsonValue:
    """Decode JSON text; values a driver already decoded pass through."""
    if isinstance(value, str | bytes):
        return orjson.loads(value)
    return value


def to_millis(value: datetime) -> int:
    """Epoch milliseconds, truncating sub-millisecond digits (exact integer arithmetic)."""
    if value.tzinfo is not UTC:
        value = parse_timestamp(value)
    return (value - EPOCH) // _MS


def ceil_millis(value: datetime) -> int:
    """Epoch milliseconds rounded up: ``t >= value`` holds exactly when ``ms >= ceil_millis``."""
    return -((EPOCH - parse_timestamp(value)) // _MS)


def from_millis(value: int) -> datetime:
    return EPOCH + value * _MS


def to_datetime(value: object) -> datetime | None:
    """A stored timestamp (datetime, epoch ms or ISO text) as an aware UTC datetime."""
    if value is None:
        return None
    # The two shapes the drivers give, checked first: SQLite's ms, asyncpg's UTC datetimes.
    if type(value) is int:
        return EPOCH + value * _MS
    if type(value) is datetime and value.tzinfo is UTC:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return from_millis(value)
    return parse_timestamp(value)


def _required_datetime(value: object) -> datetime:
    result = to_datetime(value)
    if result is None:
        raise ValueError("a required timestamp is NULL")
    return result


# -- attempts ----------------------------------------------------------------------------------


def attempt_to_json(attempt: WebhookAttempt) -> dict[str, JsonValue]:
    return {
        "attempt_number": attempt.attempt_number,
        "started_at": attempt.started_at.isoformat(),
        "latency_ms": attempt.latency_ms,
        "http_status": attempt.http_status,
        "response_body": attempt.response_body,
        "error": attempt.error,
    }


def attempts_to_text(attempts: Sequence[WebhookAttempt]) -> str:
    """Attempts as stored JSON text (:func:`dumps` writes each as :func:`attempt_to_json`
    does); most rows have none."""
    return dumps(attempts) if attempts else "[]"


def attempts_from_json(value: object) -> tuple[WebhookAttempt, ...]:
    """Stored attempts (JSON text or decoded); ``'[]'``, what new rows hold, is not parsed."""
    if value == "[]" or value is None:
        return ()
    return tuple(attempt_from_json(a) for a in loads(value))


def attempt_from_json(data: Mapping[str, JsonValue]) -> WebhookAttempt:
    return build_attempt(
        attempt_number=int(data["attempt_number"]),
        started_at=parse_timestamp(data["started_at"]),
        latency_ms=float(data["latency_ms"]),
        http_status=data.get("http_status"),
        response_body=data.get("response_body"),
        error=data.get("error"),
    )


# -- endpoints ---------------------------------------------------------------------------------

#: Written by ``record_health`` only: an endpoint update leaves them as stored, so a change made
#: from a stale read never undoes failures or successes recorded meanwhile.
#: The endpoint columns field crypto seals (rewritten together by ``rewrite_sealed``).
SEALED_COLUMNS = ("secret", "previous_secrets_json", "headers_json", "client_key")


ENDPOINT_COLUMNS = (
    "id",
    "url",
    "name",
    "description",
    "status",
    "events_json",
    "headers_json",
    "secret",
    "previous_secrets_json",
    "retry_config_json",
    "filters_json",
    "created_at",
    "updated_at",
    "last_triggered_at",
    "disabled_reason",
    "consecutive_failures",
    "failing_since",
    "last_success_at",
    "client_cert",
    "client_key",
    "ordered",
)


def endpoint_to_row(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """Column values of an endpoint (plain values), in :data:`ENDPOINT_COLUMNS` order."""
    retry = endpoint.retry_config
    filters = endpoint.filters
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "name": endpoint.name,
        "description": endpoint.description,
        "status": endpoint.status.value,
        "events_json": [event.value for event in endpoint.events],
        "headers_json": dict(endpoint.headers),
        "secret": endpoint.secret,
        "previous_secrets_json": [
            {"secret": s.secret, "expires_at": s.expires_at.isoformat()}
            for s in endpoint.previous_secrets
        ],
        "retry_config_json": None
        if retry is None
        else {
            "max_retries": retry.max_retries,
            "retry_delay_ms": retry.retry_delay_ms,
            "backoff_multiplier": retry.backoff_multiplier,
        },
        "filters_json": None
        if filters is None
        else {
            "provider_id": list(filters.provider_id),
            "channel_id": list(filters.channel_id),
            "template_id": list(filters.template_id),
        },
        "created_at": endpoint.created_at,
        "updated_at": endpoint.updated_at,
        "last_triggered_at": endpoint.last_triggered_at,
        "disabled_reason": endpoint.disabled_reason,
        "consecutive_failures": endpoint.consecutive_failures,
        "failing_since": endpoint.failing_since,
        "last_success_at": endpoint.last_success_at,
        "client_cert": endpoint.client_cert,
        "client_key": endpoint.client_key,
        "ordered": endpoint.ordered,
    }


def row_to_endpoint(row: Mapping[Any, Any]) -> WebhookEndpoint:
    retry = loads(row["retry_config_json"])
    filters = loads(row["filters_json"])
    return WebhookEndpoint(
        id=row["id"],
        url=row["url"],
        events=tuple(WebhookEventType(e) for e in loads(row["events_json"])),
        created_at=_required_datetime(row["created_at"]),
        updated_at=_required_datetime(row["updated_at"]),
        status=EndpointStatus(row["status"]),
        name=row["name"],
        description=row["description"],
        headers=dict(loads(row["headers_json"]) or {}),
        secret=row["secret"],
        previous_secrets=tuple(
            RetiredSecret(s["secret"], parse_timestamp(s["expires_at"]))
            for s in loads(row["previous_secrets_json"]) or ()
        ),
        retry_config=None if retry is None else RetryConfig(**retry),
        filters=None if filters is None else EndpointFilters(**filters),
        last_triggered_at=to_datetime(row["last_triggered_at"]),
        disabled_reason=row["disabled_reason"],
        consecutive_failures=int(row["consecutive_failures"]),
        failing_since=to_datetime(row["failing_since"]),
        last_success_at=to_datetime(row["last_success_at"]),
        client_cert=row.get("client_cert"),
        client_key=row.get("client_key"),
        ordered=bool(row["ordered"]),
    )


# -- deliveries --------------------------------------------------------------------------------

DELIVERY_COLUMNS = (
    "id",
    "endpoint_id",
    "event_id",
    "event_type",
    "url",
    "payload",
    "status",
    "attempts_json",
    "attempt_count",
    "last_latency_ms",
    "last_error",
    "created_at",
    "next_attempt_at",
    "completed_at",
    "lease_owner",
    "lease_expires_at",
)


def delivery_to_row(delivery: WebhookDelivery) -> dict[str, Any]:
    """Column values of a delivery (plain values), in :data:`DELIVERY_COLUMNS` order."""
    last = delivery.last_attempt
    return {
        "id": delivery.id,
        "endpoint_id": delivery.endpoint_id,
        "event_id": delivery.event_id,
        "event_type": delivery.event_type.value,
        "url": delivery.url,
        "payload": delivery.payload,
        "status": delivery.status.value,
        "attempts_json": [attempt_to_json(a) for a in delivery.attempts],
        "attempt_count": delivery.attempt_count,
        "last_latency_ms": None if last is None else last.latency_ms,
        "last_error": delivery.last_error,
        "created_at": delivery.created_at,
        "next_attempt_at": delivery.next_attempt_at,
        "completed_at": delivery.completed_at,
        "lease_owner": delivery.lease_owner,
        "lease_expires_at": delivery.lease_expires_at,
    }


#: The delivery columns with those added since (lookup hashes, ordering key): the order in
#: which the raw inserts bind and the claims return them (``queries/*.sql``).
DELIVERY_ROW_COLUMNS = (*DELIVERY_COLUMNS, *ADDED_DELIVERY_COLUMNS)

# Enum members by stored value: a dict lookup per row instead of an Enum call.
_EVENT_TYPES = {member.value: member for member in WebhookEventType}
STATUSES = {member.value: member for member in DeliveryStatus}


def row_to_delivery(row: Mapping[Any, Any]) -> WebhookDelivery:
    return build_delivery(
        id=row["id"],
        endpoint_id=row["endpoint_id"],
        event_id=row["event_id"],
        event_type=_EVENT_TYPES.get(row["event_type"]) or WebhookEventType(row["event_type"]),
        url=row["url"],
        payload=row["payload"],
        status=STATUSES.get(row["status"]) or DeliveryStatus(row["status"]),
        created_at=_required_datetime(row["created_at"]),
        next_attempt_at=to_datetime(row["next_attempt_at"]),
        attempts=attempts_from_json(row["attempts_json"]),
        attempt_count=int(row["attempt_count"]),
        completed_at=to_datetime(row["completed_at"]),
        last_error=row["last_error"],
        lease_owner=row["lease_owner"],
        lease_expires_at=to_datetime(row["lease_expires_at"]),
    )


def delivery_values(
    d: WebhookDelivery,
    when: Callable[[datetime | None], Any],
    attempts_as: Callable[[Sequence[WebhookAttempt]], Any] = attempts_to_text,
) -> tuple[Any, ...]:
    """A delivery's values in :data:`DELIVERY_ROW_COLUMNS` order, as the raw inserts bind
    them: attempts as JSON text (or as ``attempts_as`` gives them), timestamps as ``when``
    encodes them for the driver."""
    attempts = d.attempts
    # str() of a StrEnum member is its value, without Enum.value's descriptor calls.
    return (
        d.id,
        d.endpoint_id,
        d.event_id,
        str(d.event_type),
        d.url,
        d.payload,
        str(d.status),
        attempts_as(attempts),
        d.attempt_count,
        attempts[-1].latency_ms if attempts else None,
        d.last_error,
        when(d.created_at),
        when(d.next_attempt_at),
        when(d.completed_at),
        d.lease_owner,
        when(d.lease_expires_at),
        d.to_hash,
        d.from_hash,
        d.ordering_key,
    )


def values_to_delivery(
    values: Sequence[Any], attempts: tuple[WebhookAttempt, ...] | None = None
) -> WebhookDelivery:
    """A row given as values in :data:`DELIVERY_ROW_COLUMNS` order (no mapping built per row);
    its attempts column is JSON text, unless the caller decoded the ``attempts`` itself."""
    (
        id,
        endpoint_id,
        event_id,
        event_type,
        url,
        payload,
        status,
        attempts_json,
        attempt_count,
        _,  # last_latency_ms: derived from the attempts
        last_error,
        created_at,
        next_attempt_at,
        completed_at,
        lease_owner,
        lease_expires_at,
        to_hash,
        from_hash,
        ordering_key,
    ) = values
    return build_delivery(
        id=id,
        endpoint_id=endpoint_id,
        event_id=event_id,
        event_type=_EVENT_TYPES.get(event_type) or WebhookEventType(event_type),
        url=url,
        payload=payload,
        status=STATUSES.get(status) or DeliveryStatus(status),
        created_at=_required_datetime(created_at),
        next_attempt_at=to_datetime(next_attempt_at),
        attempts=attempts_from_json(attempts_json) if attempts is None else attempts,
        attempt_count=int(attempt_count),
        completed_at=to_datetime(completed_at),
        last_error=last_error,
        lease_owner=lease_owner,
        lease_expires_at=to_datetime(lease_expires_at),
        to_hash=to_hash,
        from_hash=from_hash,
        ordering_key=ordering_key,
    )
