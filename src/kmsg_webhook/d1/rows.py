"""Rows ↔ models: how endpoints and deliveries are written to and read from D1.

The stored form is the SQLite backend's (``kmsg_webhook.sql.codec``), so a database moves
between the two as it is: timestamp columns are epoch milliseconds (sub-millisecond parts are
dropped), nested values are JSON with snake_case keys and ISO-8601 times. The reader also
accepts the original TypeScript adapter's camelCase keys. (This module does not import the SQL
backend itself, which needs SQLAlchemy; ``tests/test_d1_store.py`` checks the two agree.)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import StoreError, WebhookError
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
)
from .client import D1Value

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

#: Delivery columns in the order :func:`delivery_params` yields them.
DELIVERY_INSERT_COLUMNS: tuple[str, ...] = (
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

#: Endpoint columns in the order :func:`endpoint_params` yields them.
ENDPOINT_WRITE_COLUMNS: tuple[str, ...] = (
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
)


def to_ms(moment: datetime) -> int:
    """Epoch milliseconds (floor); a naive datetime is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // _MS


def opt_ms(moment: datetime | None) -> int | None:
    return None if moment is None else to_ms(moment)


def from_ms(value: object) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise StoreError(f"stored timestamp is not a number: {value!r}")
    return EPOCH + timedelta(milliseconds=int(value))


def opt_from_ms(value: object) -> datetime | None:
    return None if value is None else from_ms(value)


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _loads(value: object, default: Any) -> Any:
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        raise StoreError(f"stored JSON is not text: {value!r}")
    try:
        return json.loads(value)
    except ValueError as exc:
        raise StoreError(f"stored JSON is malformed: {exc}") from None


def _pick(raw: Mapping[str, Any], key: str, legacy: str) -> Any:
    """``raw[key]``, else the original adapter's camelCase ``raw[legacy]``."""
    return raw[key] if key in raw else raw.get(legacy)


# -- attempts ---------------------------------------------------------------------------------


def attempt_json(attempt: WebhookAttempt) -> str:
    return _dumps(
        {
            "attempt_number": attempt.attempt_number,
            "started_at": attempt.started_at.isoformat(),
            "latency_ms": attempt.latency_ms,
            "http_status": attempt.http_status,
            "response_body": attempt.response_body,
            "error": attempt.error,
        }
    )


def _attempt(raw: Mapping[str, Any]) -> WebhookAttempt:
    latency = _pick(raw, "latency_ms", "latencyMs")
    status = _pick(raw, "http_status", "httpStatus")
    return WebhookAttempt(
        attempt_number=int(_pick(raw, "attempt_number", "attemptNumber")),
        started_at=parse_timestamp(_pick(raw, "started_at", "timestamp")),
        latency_ms=float(latency) if latency is not None else 0.0,
        http_status=int(status) if status is not None else None,
        response_body=_pick(raw, "response_body", "responseBody"),
        error=raw.get("error"),
    )


# -- endpoints --------------------------------------------------------------------------------


def endpoint_params(e: WebhookEndpoint) -> tuple[D1Value, ...]:
    retry = (
        None
        if e.retry_config is None
        else _dumps(
            {
                "max_retries": e.retry_config.max_retries,
                "retry_delay_ms": e.retry_config.retry_delay_ms,
                "backoff_multiplier": e.retry_config.backoff_multiplier,
            }
        )
    )
    filters = (
        None
        if e.filters is None
        else _dumps(
            {
                "provider_id": list(e.filters.provider_id),
                "channel_id": list(e.filters.channel_id),
                "template_id": list(e.filters.template_id),
            }
        )
    )
    previous = _dumps(
        [{"secret": s.secret, "expires_at": s.expires_at.isoformat()} for s in e.previous_secrets]
    )
    return (
        e.id,
        e.url,
        e.name,
        e.description,
        e.status.value,
        _dumps([t.value for t in e.events]),
        _dumps(dict(e.headers)),
        e.secret,
        previous,
        retry,
        filters,
        to_ms(e.created_at),
        to_ms(e.updated_at),
        opt_ms(e.last_triggered_at),
        e.disabled_reason,
        e.consecutive_failures,
        opt_ms(e.failing_since),
        opt_ms(e.last_success_at),
    )


def endpoint_from_row(row: Mapping[str, Any]) -> WebhookEndpoint:
    try:
        status_text = str(row.get("status"))
        # Like the original: an unknown status reads as inactive (never as active).
        status = (
            EndpointStatus(status_text)
            if status_text in {s.value for s in EndpointStatus}
            else EndpointStatus.INACTIVE
        )
        retry_raw = _loads(row.get("retry_config_json"), None)
        filters_raw = _loads(row.get("filters_json"), None)
        return WebhookEndpoint(
            id=str(row["id"]),
            url=str(row["url"]),
            events=tuple(WebhookEventType.parse(v) for v in _loads(row.get("events_json"), [])),
            created_at=from_ms(row["created_at"]),
            updated_at=from_ms(row["updated_at"]),
            status=status,
            name=row.get("name"),
            description=row.get("description"),
            headers=dict(_loads(row.get("headers_json"), {})),
            secret=row.get("secret"),
            previous_secrets=tuple(
                RetiredSecret(
                    secret=str(s["secret"]),
                    expires_at=parse_timestamp(_pick(s, "expires_at", "expiresAt")),
                )
                for s in _loads(row.get("previous_secrets_json"), [])
            ),
            retry_config=None
            if retry_raw is None
            else RetryConfig(
                max_retries=_pick(retry_raw, "max_retries", "maxRetries"),
                retry_delay_ms=_pick(retry_raw, "retry_delay_ms", "retryDelayMs"),
                backoff_multiplier=_pick(retry_raw, "backoff_multiplier", "backoffMultiplier"),
            ),
            filters=None
            if filters_raw is None
            else EndpointFilters(
                provider_id=tuple(_pick(filters_raw, "provider_id", "providerId") or ()),
                channel_id=tuple(_pick(filters_raw, "channel_id", "channelId") or ()),
                template_id=tuple(_pick(filters_raw, "template_id", "templateId") or ()),
            ),
            last_triggered_at=opt_from_ms(row.get("last_triggered_at")),
            disabled_reason=row.get("disabled_reason"),
            consecutive_failures=int(row.get("consecutive_failures") or 0),
            failing_since=opt_from_ms(row.get("failing_since")),
            last_success_at=opt_from_ms(row.get("last_success_at")),
        )
    except (KeyError, TypeError, ValueError, WebhookError) as exc:
        if isinstance(exc, StoreError):
            raise
        raise StoreError(f"stored endpoint {row.get('id')!r} is malformed: {exc}") from None


# -- deliveries -------------------------------------------------------------------------------


def delivery_params(d: WebhookDelivery) -> tuple[D1Value, ...]:
    last = d.last_attempt
    return (
        d.id,
        d.endpoint_id,
        d.event_id,
        d.event_type.value,
        d.url,
        d.payload,
        d.status.value,
        "[" + ",".join(attempt_json(a) for a in d.attempts) + "]",
        d.attempt_count,
        last.latency_ms if last is not None else None,
        d.last_error,
        to_ms(d.created_at),
        opt_ms(d.next_attempt_at),
        opt_ms(d.completed_at),
        d.lease_owner,
        opt_ms(d.lease_expires_at),
    )


def delivery_from_row(row: Mapping[str, Any]) -> WebhookDelivery:
    try:
        return WebhookDelivery(
            id=str(row["id"]),
            endpoint_id=str(row["endpoint_id"]),
            event_id=str(row["event_id"]),
            event_type=WebhookEventType.parse(row["event_type"]),
            url=str(row["url"]),
            payload=str(row["payload"]),
            status=DeliveryStatus(row["status"]),
            created_at=from_ms(row["created_at"]),
            next_attempt_at=opt_from_ms(row.get("next_attempt_at")),
            attempts=tuple(_attempt(a) for a in _loads(row.get("attempts_json"), [])),
            attempt_count=int(row.get("attempt_count") or 0),
            completed_at=opt_from_ms(row.get("completed_at")),
            last_error=row.get("last_error"),
            lease_owner=row.get("lease_owner"),
            lease_expires_at=opt_from_ms(row.get("lease_expires_at")),
        )
    except (KeyError, TypeError, ValueError, WebhookError) as exc:
        if isinstance(exc, StoreError):
            raise
        raise StoreError(f"stored delivery {row.get('id')!r} is malformed: {exc}") from None
