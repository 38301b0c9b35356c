"""What the console tests and the console benchmark share: seeded deliveries, serving."""

from __future__ import annotations

import contextlib
import math
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from aiohttp import web

from kmsg_webhook import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEventType,
    WebhookRuntimeService,
)
from kmsg_webhook.console import create_console_app
from support.servers import serve_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "operator-token-0123456789"
HOSTILE_NAME = '<img src=x onerror="document.title=1">'


@dataclass
class Console:
    """The console mounted at ``/console/`` in a host application on 127.0.0.1."""

    runtime: WebhookRuntimeService
    base_url: str
    endpoints: list[WebhookEndpoint] = field(default_factory=list)

    def url(self, path: str = "") -> str:
        return f"{self.base_url}{path}"


@contextlib.asynccontextmanager
async def serve_console(
    runtime: WebhookRuntimeService, *, token: str | None = None
) -> AsyncIterator[str]:
    """The console mounted at ``/console/`` on a local server; yields its URL."""
    host = web.Application()
    host.add_subapp("/console/", create_console_app(runtime, token=token))
    async with serve_app(host) as origin:
        yield f"{origin}/console/"


def seeded_rows(endpoint_ids: list[str], count: int, now: datetime) -> list[WebhookDelivery]:
    """``count`` deliveries over the last hours, newest first, in waves of traffic: mostly
    successes, every tenth failed, every 25th exhausted, every 50th still pending and due
    tomorrow (so the dispatcher leaves it alone), and an incident about 50 minutes back in
    which the first endpoint failed everything."""
    rows = []
    for i in range(count):
        # Monotonic in i (the slope stays above 0.5), so ids sort like creation times.
        created = now - timedelta(seconds=5 + i + 400 * math.sin(i / 800))
        status = DeliveryStatus.SUCCESS
        if i % 10 == 4 or (2_600 <= i < 3_000 and i % 2 == 0):
            status = DeliveryStatus.FAILED
        elif i % 25 == 7:
            status = DeliveryStatus.EXHAUSTED
        elif i % 50 == 11:
            status = DeliveryStatus.PENDING
        pending = status is DeliveryStatus.PENDING
        http_status = 200 if status is DeliveryStatus.SUCCESS else 500
        attempt = WebhookAttempt(
            attempt_number=1,
            started_at=created + timedelta(milliseconds=200),
            latency_ms=20.0 + (i * 7) % 180,
            http_status=http_status,
            response_body='{"ok":true}' if http_status == 200 else "upstream failed",
            error=None if http_status == 200 else "HTTP 500",
        )
        event_type = (
            WebhookEventType.MESSAGE_FAILED if i % 3 == 0 else WebhookEventType.MESSAGE_SENT
        )
        rows.append(
            WebhookDelivery(
                id=f"dlv_seed_{i:05d}",
                endpoint_id=endpoint_ids[i % len(endpoint_ids)],
                event_id=f"evt_seed_{i:05d}",
                event_type=event_type,
                url="https://hooks.example.com/in",
                payload=f'{{"id":"evt_seed_{i:05d}","data":{{"text":"안녕 {i}"}}}}',
                status=status,
                created_at=created,
                next_attempt_at=now + timedelta(days=1) if pending else None,
                attempts=(attempt,),
                attempt_count=1,
                completed_at=None if pending else created + timedelta(seconds=1),
                last_error=None if http_status == 200 else "HTTP 500",
            )
        )
    return rows
