"""Finished deliveries as the in-memory store keeps them: flat tuples the collector skips.

At its default retention the in-memory store holds about 100,000 finished deliveries. As frozen
records each is three objects the cyclic garbage collector tracks (the record, its attempts
tuple, an attempt), and every full collection walks them all. A finished row is instead one
tuple of strings, numbers, datetimes and ``None``: the row codec's values (the shape the SQL
stores bind), the attempts column holding how many attempts follow, then the fields of each.
CPython stops tracking such a tuple the first time a young collection sees it. It must be flat:
a collection visits a tuple before the tuples it holds, so each level of nesting would stay
tracked one collection longer, the outer one until a full collection.

Readers decode only the rows they return; aggregates read the few columns they need.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from ..models import DeliveryFilter, DeliveryStatus, WebhookAttempt, WebhookDelivery, build_attempt
from .rows import DELIVERY_ROW_COLUMNS, STATUSES, delivery_values, values_to_delivery

#: A finished delivery's values in :data:`~.rows.DELIVERY_ROW_COLUMNS` order.
FinishedRow = tuple[Any, ...]

_COLUMN = {name: i for i, name in enumerate(DELIVERY_ROW_COLUMNS)}
ID = _COLUMN["id"]
ENDPOINT_ID = _COLUMN["endpoint_id"]
EVENT_ID = _COLUMN["event_id"]
#: The event type's and the status's values (the enum members are tracked objects).
EVENT_TYPE = _COLUMN["event_type"]
STATUS = _COLUMN["status"]
_ATTEMPTS = _COLUMN["attempts_json"]  # how many attempts follow the columns
ATTEMPT_COUNT = _COLUMN["attempt_count"]
#: The last attempt's latency, ``None`` when there was none.
LAST_LATENCY_MS = _COLUMN["last_latency_ms"]
CREATED_AT = _COLUMN["created_at"]
COMPLETED_AT = _COLUMN["completed_at"]
TO_HASH = _COLUMN["to_hash"]
FROM_HASH = _COLUMN["from_hash"]


def _as_is(moment: datetime | None) -> datetime | None:
    return moment  # a datetime is not tracked: kept as it is, nothing to parse back


_WIDTH = len(DELIVERY_ROW_COLUMNS)
_ATTEMPT_WIDTH = len(dataclasses.fields(WebhookAttempt))  # encode appends them in field order


def encode(delivery: WebhookDelivery) -> FinishedRow:
    row = list(delivery_values(delivery, _as_is, len))
    for a in delivery.attempts:
        row += (
            a.attempt_number,
            a.started_at,
            a.latency_ms,
            a.http_status,
            a.response_body,
            a.error,
        )
    return tuple(row)


def decode(row: FinishedRow) -> WebhookDelivery:
    """The delivery, equal to the one encoded."""
    end = _WIDTH + _ATTEMPT_WIDTH * row[_ATTEMPTS]
    attempts = tuple(
        [build_attempt(*row[i : i + _ATTEMPT_WIDTH]) for i in range(_WIDTH, end, _ATTEMPT_WIDTH)]
    )
    return values_to_delivery(row[:_WIDTH], attempts)


def status(row: FinishedRow) -> DeliveryStatus:
    return STATUSES[row[STATUS]]


def matches(filter: DeliveryFilter, row: FinishedRow) -> bool:
    """``filter.matches`` of the decoded row, without decoding it."""
    return filter.matches_fields(
        row[ENDPOINT_ID],
        row[EVENT_TYPE],
        row[EVENT_ID],
        row[STATUS],
        row[CREATED_AT],
        row[TO_HASH],
        row[FROM_HASH],
    )
