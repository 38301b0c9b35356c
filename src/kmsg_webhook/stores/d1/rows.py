"""Rows ↔ models on D1, through the SQLite backend's codec (``kmsg_webhook.stores.rows``).

D1 stores rows exactly as the SQLite backend does, so a database moves between the two as it is:
timestamp columns are epoch milliseconds (sub-millisecond parts are dropped), nested values are
JSON text with snake_case keys and ISO-8601 times. This module adds only what is D1's own:
column values bound as D1 parameters, a stricter reader (a malformed row is a
:class:`StoreError`), and tolerance for the original TypeScript adapter's camelCase JSON keys and
endpoint statuses it did not know.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ...errors import StoreError, WebhookError
from ...events import WebhookEventType
from ...models import EndpointStatus, WebhookDelivery, WebhookEndpoint
from ..rows import (
    DELIVERY_COLUMNS,
    ENDPOINT_COLUMNS,
    delivery_to_row,
    dumps,
    endpoint_to_row,
    row_to_delivery,
    row_to_endpoint,
    to_millis,
)
from .client import D1Value

#: Delivery columns in the order :func:`delivery_params` yields them.
DELIVERY_INSERT_COLUMNS: tuple[str, ...] = DELIVERY_COLUMNS


_ENDPOINT_STATUSES = frozenset(s.value for s in EndpointStatus)


def opt_ms(moment: datetime | None) -> int | None:
    return None if moment is None else to_millis(moment)


# -- writing ----------------------------------------------------------------------------------


def _param(value: object) -> D1Value:
    """A codec column value as D1 binds it: epoch ms for times, JSON text for nested values,
    0/1 for flags (SQLite has no booleans)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, datetime):
        return to_millis(value)
    if isinstance(value, list | dict):
        return dumps(value)
    if value is None or isinstance(value, str | int | float):
        return value
    raise TypeError(f"cannot bind {type(value).__name__}")


def endpoint_values(endpoint: WebhookEndpoint) -> dict[str, D1Value]:
    """An endpoint's column values as D1 binds them, by column (the queries name them)."""
    row = endpoint_to_row(endpoint)
    return {name: _param(row[name]) for name in ENDPOINT_COLUMNS}


def delivery_params(delivery: WebhookDelivery) -> tuple[D1Value, ...]:
    row = delivery_to_row(delivery)
    return tuple(_param(row[name]) for name in DELIVERY_INSERT_COLUMNS)


# -- reading ----------------------------------------------------------------------------------


def endpoint_from_row(row: Mapping[str, Any]) -> WebhookEndpoint:
    try:
        return row_to_endpoint(_endpoint_row(row))
    except (KeyError, TypeError, ValueError, WebhookError) as exc:
        raise _malformed("endpoint", row, exc) from None


def delivery_from_row(row: Mapping[str, Any]) -> WebhookDelivery:
    try:
        return row_to_delivery(_delivery_row(row))
    except (KeyError, TypeError, ValueError, WebhookError) as exc:
        raise _malformed("delivery", row, exc) from None


def _malformed(kind: str, row: Mapping[str, Any], exc: Exception) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    return StoreError(f"stored {kind} {row.get('id')!r} is malformed: {exc}")


def _endpoint_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A D1 endpoint row as the codec reads it: checked, JSON decoded, snake_case keys."""
    status = row.get("status")
    retry = _loads(row.get("retry_config_json"), None)
    filters = _loads(row.get("filters_json"), None)
    return {
        "id": str(row["id"]),
        "url": str(row["url"]),
        "events_json": [WebhookEventType.parse(v) for v in _loads(row.get("events_json"), [])],
        "created_at": _millis(row["created_at"]),
        "updated_at": _millis(row["updated_at"]),
        # Like the original: an unknown status reads as inactive (never as active).
        "status": status if status in _ENDPOINT_STATUSES else EndpointStatus.INACTIVE.value,
        "name": row.get("name"),
        "description": row.get("description"),
        "headers_json": _loads(row.get("headers_json"), {}),
        "secret": row.get("secret"),
        "previous_secrets_json": [
            {"secret": str(s["secret"]), "expires_at": _pick(s, "expires_at", "expiresAt")}
            for s in _loads(row.get("previous_secrets_json"), [])
        ],
        "retry_config_json": None
        if retry is None
        else {
            "max_retries": _pick(retry, "max_retries", "maxRetries"),
            "retry_delay_ms": _pick(retry, "retry_delay_ms", "retryDelayMs"),
            "backoff_multiplier": _pick(retry, "backoff_multiplier", "backoffMultiplier"),
        },
        "filters_json": None
        if filters is None
        else {
            key: tuple(_pick(filters, key, legacy) or ())
            for key, legacy in (
                ("provider_id", "providerId"),
                ("channel_id", "channelId"),
                ("template_id", "templateId"),
            )
        },
        "last_triggered_at": _opt_millis(row.get("last_triggered_at")),
        "disabled_reason": row.get("disabled_reason"),
        "consecutive_failures": row.get("consecutive_failures") or 0,
        "failing_since": _opt_millis(row.get("failing_since")),
        "last_success_at": _opt_millis(row.get("last_success_at")),
        "client_cert": row.get("client_cert"),
        "client_key": row.get("client_key"),
        "ordered": bool(row.get("ordered")),
    }


def _delivery_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A D1 delivery row as the codec reads it: checked, JSON decoded, snake_case keys."""
    return {
        "id": str(row["id"]),
        "endpoint_id": str(row["endpoint_id"]),
        "event_id": str(row["event_id"]),
        "event_type": WebhookEventType.parse(row["event_type"]),
        "url": str(row["url"]),
        "payload": str(row["payload"]),
        "status": row["status"],
        "created_at": _millis(row["created_at"]),
        "next_attempt_at": _opt_millis(row.get("next_attempt_at")),
        "attempts_json": [_attempt(a) for a in _loads(row.get("attempts_json"), [])],
        "attempt_count": row.get("attempt_count") or 0,
        "completed_at": _opt_millis(row.get("completed_at")),
        "last_error": row.get("last_error"),
        "lease_owner": row.get("lease_owner"),
        "lease_expires_at": _opt_millis(row.get("lease_expires_at")),
    }


def _attempt(raw: Mapping[str, Any]) -> dict[str, Any]:
    latency = _pick(raw, "latency_ms", "latencyMs")
    status = _pick(raw, "http_status", "httpStatus")
    return {
        "attempt_number": _pick(raw, "attempt_number", "attemptNumber"),
        "started_at": _pick(raw, "started_at", "timestamp"),
        "latency_ms": latency if latency is not None else 0.0,
        "http_status": int(status) if status is not None else None,
        "response_body": _pick(raw, "response_body", "responseBody"),
        "error": raw.get("error"),
    }


def _millis(value: object) -> int:
    """A stored timestamp column (epoch milliseconds, as D1 returns it)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise StoreError(f"stored timestamp is not a number: {value!r}")
    return int(value)


def _opt_millis(value: object) -> int | None:
    return None if value is None else _millis(value)


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
