"""Finished deliveries as the in-memory store keeps them: value tuples the collector skips.

At its default retention the in-memory store holds about 100,000 finished deliveries. As frozen
records each is three objects the cyclic garbage collector tracks (the record, its attempts
tuple, an attempt), and every full collection walks them all. As the row codec's values (the
shape the SQL stores bind), with the attempts as tuples of their fields, a finished delivery is
a tuple of strings, numbers, datetimes and ``None``: CPython stops tracking such a tuple the
first time a young collection sees it, so the full collections never walk it again.

Readers decode only the rows they return; aggregates read the few columns they need.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..models import DeliveryFilter, DeliveryStatus, WebhookDelivery
from .rows import (
    DELIVERY_ROW_COLUMNS,
    EVENT_TYPES,
    STATUSES,
    attempts_from_values,
    attempts_to_values,
    delivery_values,
    values_to_delivery,
)

#: A finished delivery's values in :data:`~.rows.DELIVERY_ROW_COLUMNS` order.
FinishedRow = tuple[Any, ...]

_COLUMN = {name: i for i, name in enumerate(DELIVERY_ROW_COLUMNS)}
ID = _COLUMN["id"]
ENDPOINT_ID = _COLUMN["endpoint_id"]
EVENT_ID = _COLUMN["event_id"]
#: The event type's and the status's values (the enum members are tracked objects).
EVENT_TYPE = _COLUMN["event_type"]
STATUS = _COLUMN["status"]
PAYLOAD = _COLUMN["payload"]
ATTEMPT_COUNT = _COLUMN["attempt_count"]
#: The last attempt's latency, ``None`` when there was none.
LAST_LATENCY_MS = _COLUMN["last_latency_ms"]
CREATED_AT = _COLUMN["created_at"]
COMPLETED_AT = _COLUMN["completed_at"]
TO_HASH = _COLUMN["to_hash"]
FROM_HASH = _COLUMN["from_hash"]


def _as_is(moment: datetime | None) -> datetime | None:
    return moment  # a datetime is not tracked: kept as it is, nothing to parse back


def encode(delivery: WebhookDelivery) -> FinishedRow:
    return delivery_values(delivery, _as_is, attempts_to_values)


def decode(row: FinishedRow) -> WebhookDelivery:
    """The delivery, equal to the one encoded."""
    return values_to_delivery(row, attempts_from_values)


def status(row: FinishedRow) -> DeliveryStatus:
    return STATUSES[row[STATUS]]


def matches(filter: DeliveryFilter, row: FinishedRow) -> bool:
    """``filter.matches`` of the decoded row, without decoding it."""
    return filter.matches_fields(
        row[ENDPOINT_ID],
        EVENT_TYPES[row[EVENT_TYPE]],
        row[EVENT_ID],
        STATUSES[row[STATUS]],
        row[CREATED_AT],
        row[TO_HASH],
        row[FROM_HASH],
    )
