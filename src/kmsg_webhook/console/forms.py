"""What the deliveries page reads from its query string, checked."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from multidict import MultiMapping

from ..errors import ConsoleError
from ..events import WebhookEventType
from ..models import DeliveryFilter, DeliveryStatus

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
#: The query parameters that describe a listing (carried over by the pager links).
FILTER_PARAMS = ("status", "endpoint", "event_type", "event_id", "since", "until", "limit")


@dataclass(frozen=True, slots=True)
class DeliveryQuery:
    """A listing request: the store filter, the page size and where to continue."""

    filter: DeliveryFilter
    limit: int
    cursor: str | None
    #: The filter parameters as given, for the form and the pager links.
    params: tuple[tuple[str, str], ...]


def parse_delivery_query(query: MultiMapping[str]) -> DeliveryQuery:
    """Read the listing filters; an invalid value is a :class:`ConsoleError` naming it."""
    params = tuple(
        (name, value) for name in FILTER_PARAMS for value in query.getall(name, []) if value
    )
    try:
        statuses = tuple(DeliveryStatus(s) for s in query.getall("status", []) if s)
    except ValueError:
        raise ConsoleError("status must be one of pending, success, failed, exhausted") from None
    event_type = query.get("event_type") or None
    if event_type is not None and event_type not in WebhookEventType._value2member_map_:
        raise ConsoleError(f"unknown event type: {event_type!r}")
    limit = parse_int(query.get("limit"), "limit", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    return DeliveryQuery(
        filter=DeliveryFilter(
            endpoint_id=query.get("endpoint") or None,
            event_type=WebhookEventType(event_type) if event_type else None,
            event_id=(query.get("event_id") or "").strip() or None,
            statuses=statuses,
            created_after=_moment(query.get("since"), "since"),
            created_before=_moment(query.get("until"), "until"),
        ),
        limit=limit,
        cursor=query.get("cursor") or None,
        params=params,
    )


def parse_int(text: str | None, name: str, default: int, low: int, high: int) -> int:
    """An integer parameter in ``[low, high]``; absent or empty means ``default``."""
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConsoleError(f"{name} must be a whole number, got {text!r}") from None
    if not low <= value <= high:
        raise ConsoleError(f"{name} must be between {low} and {high}")
    return value


def _moment(text: str | None, name: str) -> datetime | None:
    """An ISO-8601 time (a browser's ``datetime-local`` value); without a zone it is UTC."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConsoleError(f"{name} must be a time like 2026-03-01T12:00, got {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
