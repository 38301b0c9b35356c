"""Operational webhooks: tell an operator's URL when endpoints or deliveries need attention.

Configured with ``WebhookConfig(operational_webhook=OperationalWebhook(url=..., secret=...))``.
The runtime then POSTs one signed JSON message per event, signed exactly like a delivery (the
configured scheme, ``webhook-id``/``webhook-timestamp``/``webhook-signature`` under Standard
Webhooks), to ``url``:

``{"type": "endpoint.disabled", "timestamp": "<ISO 8601>", "data": {...}}``

Types: ``endpoint.disabled`` (health policy or ``410 Gone``), ``endpoint.enabled`` (set active
again through the runtime), ``endpoint.recovered`` (a success after failures) with
``data = {endpoint_id, url, status, reason}``; ``delivery.exhausted`` with ``data =
{delivery_id, endpoint_id, event_type, attempts, error, created_at, completed_at}``.

These messages are best effort, not an outbox: each is tried ``max_attempts`` times with a
short backoff from the process that saw the event, and a message still unsent at shutdown or
after its last attempt is dropped with a WARNING log. The delivery rows and endpoint states they
describe are durable in the store either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from .clock import Clock
from .errors import ConfigError, EndpointUrlError
from .hooks import DeliveryHooks, EndpointStatusEvent, SettledEvent
from .ids import new_id
from .models import DeliveryStatus
from .signing import SignatureScheme, Signer
from .transport import Target, Transport, TransportError

logger = logging.getLogger("kmsg_webhook.operational")

#: The message types an operational webhook can carry.
OPERATIONAL_EVENTS = frozenset(
    {"endpoint.disabled", "endpoint.enabled", "endpoint.recovered", "delivery.exhausted"}
)
_QUEUE_LIMIT = 1_000


@dataclass(frozen=True, slots=True)
class OperationalWebhook:
    """Where to send operational messages and how to sign them.

    ``secret`` is a signing secret as for an endpoint (``whsec_…`` under Standard Webhooks);
    ``events`` narrows the types sent (default: all of :data:`OPERATIONAL_EVENTS`). The URL
    passes the same URL policy as endpoints when the runtime is built.
    """

    url: str
    secret: str = field(repr=False)
    events: frozenset[str] = OPERATIONAL_EVENTS
    max_attempts: int = 3
    timeout_ms: int = 10_000

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url:
            raise ConfigError("operational_webhook.url must be a URL")
        if not isinstance(self.secret, str) or not self.secret:
            raise ConfigError("operational_webhook.secret must be a signing secret")
        events = frozenset(self.events)
        unknown = sorted(events - OPERATIONAL_EVENTS)
        if unknown:
            raise ConfigError(
                f"operational_webhook.events: unknown {unknown}; known: "
                f"{sorted(OPERATIONAL_EVENTS)}"
            )
        object.__setattr__(self, "events", events)
        if self.max_attempts < 1 or self.timeout_ms <= 0:
            raise ConfigError("operational_webhook: max_attempts >= 1 and timeout_ms > 0")


def _stamp(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


class OperationalNotifier:
    """Queues operational messages from the hooks and sends them in the background."""

    def __init__(
        self,
        target: OperationalWebhook,
        transport: Transport,
        destination: Target,
        scheme: SignatureScheme,
        clock: Clock,
    ) -> None:
        """``destination`` is ``target.url`` as checked by the URL policy, with the headers
        every message carries."""
        self._target = target
        self._transport = transport
        self._destination = destination
        self._signer = Signer(target.secret, scheme)
        self._clock = clock
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(_QUEUE_LIMIT)
        self._task: asyncio.Task[None] | None = None
        self.hooks = DeliveryHooks(
            on_settled=self._on_settled, on_endpoint_status=self._on_endpoint_status
        )

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self, *, grace_s: float = 5.0) -> None:
        """Send what is queued (for at most ``grace_s``), then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout=grace_s)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if not self._queue.empty():
            logger.warning(
                "dropped %d unsent operational messages at shutdown", self._queue.qsize()
            )

    def _on_settled(self, event: SettledEvent) -> None:
        if event.status is DeliveryStatus.EXHAUSTED:
            self._put(
                "delivery.exhausted",
                {
                    "delivery_id": event.delivery_id,
                    "endpoint_id": event.endpoint_id,
                    "event_type": event.event_type,
                    "attempts": event.attempts,
                    "error": event.error,
                    "created_at": _stamp(event.created_at),
                    "completed_at": _stamp(event.completed_at),
                },
            )

    def _on_endpoint_status(self, event: EndpointStatusEvent) -> None:
        self._put(
            f"endpoint.{event.change.value}",
            {
                "endpoint_id": event.endpoint_id,
                "url": event.url,
                "status": event.status.value,
                "reason": event.reason,
            },
        )

    def _put(self, kind: str, data: dict[str, Any]) -> None:
        if kind not in self._target.events:
            return
        try:
            self._queue.put_nowait((kind, data))
        except asyncio.QueueFull:
            logger.warning("operational message %s dropped: %d already queued", kind, _QUEUE_LIMIT)

    async def _run(self) -> None:
        while True:
            kind, data = await self._queue.get()
            try:
                await self._send(kind, data)
            finally:
                self._queue.task_done()

    async def _send(self, kind: str, data: dict[str, Any]) -> None:
        target = self._target
        message_id = new_id("op")
        body = orjson.dumps({"type": kind, "timestamp": _stamp(self._clock.now()), "data": data})
        error = "not sent"
        for attempt in range(1, target.max_attempts + 1):
            headers = self._signer.headers(
                msg_id=message_id, timestamp=int(time.time()), body=body, event_type=kind
            )
            try:
                response = await self._transport.post(
                    self._destination,
                    headers,
                    body,
                    time_limit=target.timeout_ms / 1000,
                    max_body_bytes=0,
                )
                if 200 <= response.status < 300:
                    return
                error = f"HTTP {response.status}"
            except (TransportError, EndpointUrlError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            if attempt < target.max_attempts:
                await asyncio.sleep(0.5 * 2 ** (attempt - 1))
        logger.warning(
            "operational message %s (%s) not delivered to %s after %d attempts: %s",
            kind,
            message_id,
            target.url,
            target.max_attempts,
            error,
        )
