"""Webhook events: the 20 event types, the event model, and its JSON wire form.

Wire form (the exact body every endpoint receives; field names are stable)::

    {"id": "...", "type": "message.sent", "timestamp": "2026-01-02T03:04:05.678Z",
     "data": {...}, "metadata": {"providerId": "...", ...}, "version": "1.0"}

``metadata`` keys are camelCase on the wire (``providerId``, ``channelId``, ``templateId``,
``messageId``, ``userId``, ``organizationId``, ``correlationId``, ``retryCount``) so receivers
written against k-msg keep working; absent values are omitted. Timestamps are ISO-8601 UTC
with millisecond precision and a ``Z`` suffix, as JavaScript's ``Date.toJSON()`` writes them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeAlias

import orjson

from .errors import InvalidEventError, UnknownEventTypeError

JSONValue: TypeAlias = (
    "str | int | float | bool | Mapping[str, JSONValue] | list[JSONValue]"
    " | tuple[JSONValue, ...] | None"
)
JSONObject: TypeAlias = Mapping[str, JSONValue]

# orjson writes the same compact UTF-8 JSON as the standard library, about ten times faster
# (every event is encoded once). Values it refuses, such as integers beyond 64 bits, fall
# back to the standard library encoder (reused: json.dumps with options builds a new one).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_PRINTABLE_ID = re.compile(r"[\x21-\x7e]+")


class WebhookEventType(StrEnum):
    """The event types of the original ``WebhookEventType`` enum (same strings)."""

    MESSAGE_SENT = "message.sent"
    MESSAGE_DELIVERED = "message.delivered"
    MESSAGE_FAILED = "message.failed"
    MESSAGE_CLICKED = "message.clicked"
    MESSAGE_READ = "message.read"
    TEMPLATE_CREATED = "template.created"
    TEMPLATE_APPROVED = "template.approved"
    TEMPLATE_REJECTED = "template.rejected"
    TEMPLATE_UPDATED = "template.updated"
    TEMPLATE_DELETED = "template.deleted"
    CHANNEL_CREATED = "channel.created"
    CHANNEL_VERIFIED = "channel.verified"
    SENDER_NUMBER_ADDED = "sender_number.added"
    SENDER_NUMBER_VERIFIED = "sender_number.verified"
    QUOTA_WARNING = "system.quota_warning"
    QUOTA_EXCEEDED = "system.quota_exceeded"
    PROVIDER_ERROR = "system.provider_error"
    SYSTEM_MAINTENANCE = "system.maintenance"
    ANOMALY_DETECTED = "analytics.anomaly_detected"
    THRESHOLD_EXCEEDED = "analytics.threshold_exceeded"

    @classmethod
    def parse(cls, value: object) -> WebhookEventType:
        """Return the member for ``value`` or raise :class:`UnknownEventTypeError`."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls(value)
            except ValueError:
                pass
        raise UnknownEventTypeError(value)


# Python field name -> wire (camelCase) key, in wire order.
_METADATA_KEYS: tuple[tuple[str, str], ...] = (
    ("provider_id", "providerId"),
    ("channel_id", "channelId"),
    ("template_id", "templateId"),
    ("message_id", "messageId"),
    ("user_id", "userId"),
    ("organization_id", "organizationId"),
    ("correlation_id", "correlationId"),
    ("retry_count", "retryCount"),
)


@dataclass(frozen=True, slots=True)
class EventMetadata:
    """Routing metadata of an event; endpoint filters match on the first three fields."""

    provider_id: str | None = None
    channel_id: str | None = None
    template_id: str | None = None
    message_id: str | None = None
    user_id: str | None = None
    organization_id: str | None = None
    correlation_id: str | None = None
    retry_count: int | None = None

    def to_wire(self) -> dict[str, Any]:
        """The camelCase wire mapping, without absent values."""
        # Spelled out (this runs for every event); a test checks it against _METADATA_KEYS.
        out: dict[str, Any] = {}
        if self.provider_id is not None:
            out["providerId"] = self.provider_id
        if self.channel_id is not None:
            out["channelId"] = self.channel_id
        if self.template_id is not None:
            out["templateId"] = self.template_id
        if self.message_id is not None:
            out["messageId"] = self.message_id
        if self.user_id is not None:
            out["userId"] = self.user_id
        if self.organization_id is not None:
            out["organizationId"] = self.organization_id
        if self.correlation_id is not None:
            out["correlationId"] = self.correlation_id
        if self.retry_count is not None:
            out["retryCount"] = self.retry_count
        return out

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any] | None) -> EventMetadata:
        """Build from a wire mapping; accepts camelCase or snake_case keys."""
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise InvalidEventError("Event metadata must be an object")
        kwargs: dict[str, Any] = {}
        for attr, key in _METADATA_KEYS:
            value = raw.get(key, raw.get(attr))
            if value is None:
                continue
            if attr == "retry_count":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise InvalidEventError("Event metadata retryCount must be an integer")
            elif not isinstance(value, str):
                raise InvalidEventError(f"Event metadata {key} must be a string")
            kwargs[attr] = value
        return cls(**kwargs)


def _non_finite(value: object, path: str) -> tuple[str, float] | None:
    """The dotted path and value of the first NaN or infinity in ``value``, or ``None``."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value)
    if isinstance(value, Mapping):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite(item, f"{path}.{key}")
        if found is not None:
            return found
    return None


def format_timestamp(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds and ``Z`` (JavaScript ``Date.toJSON()`` form)."""
    utc = moment if moment.tzinfo is UTC else moment.astimezone(UTC)
    # By hand, for every event: half of isoformat(timespec=...) and of an f-string's cost.
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (  # noqa: UP031
        utc.year,
        utc.month,
        utc.day,
        utc.hour,
        utc.minute,
        utc.second,
        utc.microsecond // 1000,
    )


def parse_timestamp(value: object) -> datetime:
    """Coerce a datetime, ISO-8601 string or epoch-milliseconds number to an aware UTC datetime.

    Naive datetimes are taken as UTC. Raises :class:`InvalidEventError` when unparsable.
    """
    if isinstance(value, datetime):
        if value.tzinfo is UTC:
            return value
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, bool):
        raise InvalidEventError("Event timestamp must be a valid Date")
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidEventError("Event timestamp must be a valid Date") from None
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidEventError("Event timestamp must be a valid Date") from None
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    raise InvalidEventError("Event timestamp must be a valid Date")


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One event to deliver. Validated at construction; the original's error messages.

    ``type`` accepts a :class:`WebhookEventType` or its string; ``timestamp`` accepts a datetime
    (naive means UTC), an ISO-8601 string or epoch milliseconds and is stored as aware UTC.
    ``data`` must be JSON-serialisable.

    ``ordering_key`` (an order id, a conversation, a phone number's hash: 1-255 printable
    characters) orders delivery: an endpoint added with ``ordered=True`` receives the events of
    one key one after another, in emit order. It is stored as given (not sealed by field
    crypto: claims compare it) and is not part of the wire form.
    """

    id: str
    type: WebhookEventType
    timestamp: datetime
    data: JSONObject = field(default_factory=dict)
    metadata: EventMetadata = field(default_factory=EventMetadata)
    version: str = "1.0"
    ordering_key: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise InvalidEventError("Event ID is required")
        if len(self.id) > 255 or not _PRINTABLE_ID.fullmatch(self.id):
            raise InvalidEventError(
                "Event ID must be 1-255 visible ASCII characters (it is sent as a header)"
            )
        if not self.type:
            raise InvalidEventError("Event type is required")
        if type(self.type) is not WebhookEventType:
            object.__setattr__(self, "type", WebhookEventType.parse(self.type))
        if self.timestamp is None or self.timestamp == "":
            raise InvalidEventError("Event timestamp is required")
        if not isinstance(self.timestamp, datetime) or self.timestamp.tzinfo is not UTC:
            object.__setattr__(self, "timestamp", parse_timestamp(self.timestamp))
        if not isinstance(self.version, str) or not self.version:
            raise InvalidEventError("Event version is required")
        if not isinstance(self.data, Mapping):
            raise InvalidEventError("Event data must be an object")
        if not isinstance(self.metadata, EventMetadata):
            raise InvalidEventError("Event metadata must be an EventMetadata")
        key = self.ordering_key
        if key is not None and not (
            isinstance(key, str) and 0 < len(key) <= 255 and key.isprintable()
        ):
            raise InvalidEventError("Event ordering_key must be 1-255 printable characters")

    def to_wire(self) -> dict[str, Any]:
        """The wire mapping (see the module docstring for field names)."""
        return {
            "id": self.id,
            "type": str(self.type),  # its value, without Enum.value's descriptor calls
            "timestamp": format_timestamp(self.timestamp),
            "data": self.data,
            "metadata": self.metadata.to_wire(),
            "version": self.version,
        }

    def to_json(self) -> str:
        """The exact request body: compact JSON, UTF-8 characters kept as they are.

        Non-string keys of ``data`` are written as strings. NaN and infinities raise
        :class:`InvalidEventError` (JSON has no such numbers; writing ``null`` would change
        the data silently).
        """
        wire = self.to_wire()
        try:
            body = orjson.dumps(wire, option=orjson.OPT_NON_STR_KEYS)
        except orjson.JSONEncodeError:
            body = None
        if body is not None:
            # orjson writes NaN and infinities as null: only a body holding "null" can hide one.
            if b"null" in body and (found := _non_finite(self.data, "data")) is not None:
                where, value = found
                raise InvalidEventError(f"Event {where} is {value}: JSON has no NaN or Infinity")
            return body.decode()
        try:
            return _ENCODER.encode(wire)
        except (TypeError, ValueError) as exc:
            raise InvalidEventError(f"Event data is not JSON-serialisable: {exc}") from exc

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> WebhookEvent:
        """Build from a decoded wire mapping (or an equivalent mapping with snake_case metadata)."""
        if not isinstance(raw, Mapping):
            raise InvalidEventError("Event must be an object")
        data = raw.get("data")
        return cls(
            id=raw.get("id"),  # type: ignore[arg-type]  # validated in __post_init__
            type=raw.get("type"),  # type: ignore[arg-type]
            timestamp=raw.get("timestamp"),  # type: ignore[arg-type]
            data={} if data is None else data,
            metadata=EventMetadata.from_wire(raw.get("metadata")),
            version=raw.get("version"),  # type: ignore[arg-type]
        )

    @classmethod
    def from_json(cls, body: str | bytes) -> WebhookEvent:
        """Parse a request body produced by :meth:`to_json`."""
        try:
            raw = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidEventError(f"Event body is not valid JSON: {exc}") from exc
        return cls.from_wire(raw)
