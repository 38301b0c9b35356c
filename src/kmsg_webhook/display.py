"""What the command line prints: plain-text tables, and the JSON documents of ``--json``.

The JSON documents have stable keys (documented in ``docs/production.md``): times are ISO 8601
in UTC or ``null``, statuses their lower-case names. Keys may be added; none is renamed or
removed without a major version.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from .crypto.envelope import is_sealed
from .models import (
    DeliveryStats,
    EndpointHealth,
    EndpointStatus,
    QueueStats,
    RecordError,
    WebhookDelivery,
    WebhookEndpoint,
)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print left-aligned columns under a header and a rule."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if not rows:
        print("(none)")


def print_json(document: dict[str, Any]) -> None:
    """One JSON document on stdout."""
    print(json.dumps(document, ensure_ascii=False, indent=2))


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def unreadable_json(errors: Iterable[RecordError]) -> list[dict[str, str]]:
    return [{"id": e.record_id, "error": str(e.error)} for e in errors]


def endpoint_json(e: WebhookEndpoint) -> dict[str, Any]:
    """An endpoint without its secrets or header values (header names only)."""
    return {
        "id": e.id,
        "url": e.url,
        "name": e.name,
        "status": e.status.value,
        "events": [t.value for t in e.events],
        "header_names": sorted(e.headers),
        "consecutive_failures": e.consecutive_failures,
        "failing_since": _time(e.failing_since),
        "last_success_at": _time(e.last_success_at),
        "disabled_reason": e.disabled_reason,
        "created_at": _time(e.created_at),
        "updated_at": _time(e.updated_at),
    }


def delivery_json(d: WebhookDelivery, *, detail: bool = False) -> dict[str, Any]:
    """A delivery; ``detail`` adds its URL, payload and stored attempts."""
    doc: dict[str, Any] = {
        "id": d.id,
        "endpoint_id": d.endpoint_id,
        "event_id": d.event_id,
        "event_type": d.event_type.value,
        "status": d.status.value,
        "attempt_count": d.attempt_count,
        "created_at": _time(d.created_at),
        "next_attempt_at": _time(d.next_attempt_at),
        "completed_at": _time(d.completed_at),
        "last_error": d.last_error,
    }
    if detail:
        doc["url"] = d.url
        doc["payload"] = d.payload
        doc["payload_sealed"] = is_sealed(d.payload)
        doc["attempts"] = [
            {
                "attempt_number": a.attempt_number,
                "started_at": _time(a.started_at),
                "http_status": a.http_status,
                "latency_ms": a.latency_ms,
                "error": a.error,
                "response_body": a.response_body,
            }
            for a in d.attempts
        ]
    return doc


def health_json(e: EndpointHealth) -> dict[str, Any]:
    return {
        "id": e.id,
        "url": e.url,
        "status": e.status.value,
        "consecutive_failures": e.consecutive_failures,
        "failing_since": _time(e.failing_since),
        "last_success_at": _time(e.last_success_at),
        "disabled_reason": e.disabled_reason,
    }


def stats_json(
    *,
    now: datetime,
    deliveries: DeliveryStats,
    queue: QueueStats,
    endpoints: Sequence[EndpointHealth],
) -> dict[str, Any]:
    """The ``stats`` document."""
    oldest = queue.oldest_due_at
    counts = Counter(e.status for e in endpoints)
    return {
        "at": _time(now),
        "deliveries": {
            "total": deliveries.total,
            "pending": deliveries.pending,
            "success": deliveries.success,
            "failed": deliveries.failed,
            "exhausted": deliveries.exhausted,
        },
        "queue": {
            "due": queue.due,
            "scheduled": queue.scheduled,
            "leased": queue.leased,
            "oldest_due_at": _time(oldest),
            "oldest_due_age_s": None if oldest is None else (now - oldest).total_seconds(),
            "next_due_at": _time(queue.next_due_at),
        },
        "endpoints": {
            "total": len(endpoints),
            "by_status": {s.value: counts[s] for s in EndpointStatus},
            "troubled": [health_json(e) for e in endpoints if e.troubled],
        },
    }
