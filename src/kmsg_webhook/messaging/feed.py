"""The webhook feed: turns send and delivery outcomes, and template, Kakao channel and sender
number changes, into :class:`WebhookEvent` s.

The feed depends only on :class:`WebhookSink` (``await sink.emit(event)``), which
``kmsg_webhook.runtime.WebhookRuntimeService`` satisfies.

Rules:

* Event ids are deterministic: ``<message_id>:<event type>`` (``:a<n>`` is appended when the
  send carried an ``attempt`` number), so emitting the same outcome twice is idempotent in
  the runtime, which dedupes deliveries by (endpoint, event id).
* Phone numbers in event data are masked (:func:`~kmsg_webhook.messaging.phone.mask_phone`,
  e.g. ``010-****-5678``); message text is never included. With
  ``WebhookFeedConfig(mask_recipients=False)`` the numbers are emitted in full, for a runtime
  whose field crypto protects them (``to``/``from`` modes, ``docs/field-crypto.md``).
* A sink failure never fails the send: the event goes to a bounded in-memory retry buffer
  and a background task re-emits it with exponential backoff. Failures are logged and
  reported through ``on_emit_error``; events that are given up on (buffer full, attempts
  exhausted, feed closed) are reported through ``on_drop``. :attr:`WebhookFeed.stats`
  counts all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from ..events import EventMetadata, WebhookEvent, WebhookEventType
from .channels import KakaoChannel
from .errors import KMsgError, KMsgErrorCode
from .phone import digits_only, mask_phone
from .provider import SleepFn
from .templates import Template, TemplateStatus
from .types import MessageType, SendResult

logger = logging.getLogger("kmsg_webhook.messaging.feed")

#: Error codes that mean the provider could not be reached (→ ``system.provider_error``).
UNREACHABLE_CODES: frozenset[KMsgErrorCode] = frozenset(
    {
        KMsgErrorCode.NETWORK_ERROR,
        KMsgErrorCode.NETWORK_TIMEOUT,
        KMsgErrorCode.NETWORK_SERVICE_UNAVAILABLE,
    }
)


class WebhookSink(Protocol):
    """Where events go. Returns once the event is stored; raises when it cannot be."""

    async def emit(self, event: WebhookEvent) -> None: ...


_SAFE_ID = re.compile(r"[\x21-\x7e]{1,200}")


def event_id(message_id: str, event_type: WebhookEventType, attempt: int | None = None) -> str:
    """The deterministic id of one outcome of one message.

    Event ids travel in a header, so a message id that is not 1-200 visible ASCII characters
    is replaced by ``h`` + the first 40 hex digits of its SHA-256 (still deterministic).
    """
    key = message_id
    if not _SAFE_ID.fullmatch(key):
        key = "h" + hashlib.sha256(message_id.encode("utf-8")).hexdigest()[:40]
    base = f"{key}:{event_type.value}"
    return f"{base}:a{attempt}" if attempt is not None else base


@dataclass(frozen=True, slots=True)
class MessageContext:
    """What the feed knows about a message besides its result or error."""

    message_id: str
    type: MessageType
    to: str
    from_: str | None = None
    provider_id: str | None = None
    template_id: str | None = None
    correlation_id: str | None = None
    attempt: int | None = None


def _metadata(ctx: MessageContext, provider_id: str | None) -> EventMetadata:
    return EventMetadata(
        provider_id=provider_id,
        template_id=ctx.template_id,
        message_id=ctx.message_id,
        correlation_id=ctx.correlation_id,
    )


def _error_data(error: KMsgError) -> dict[str, Any]:
    data: dict[str, Any] = {
        "code": error.code.value,
        "message": error.message,
        "retryable": error.retryable,
    }
    if error.provider_error_code is not None:
        data["providerErrorCode"] = error.provider_error_code
    if error.http_status is not None:
        data["httpStatus"] = error.http_status
    return data


def _base_data(ctx: MessageContext, status: str, *, mask: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "messageId": ctx.message_id,
        "status": status,
        "type": ctx.type.value,
        "to": mask_phone(ctx.to) if mask else ctx.to,
    }
    if ctx.from_:
        data["from"] = mask_phone(ctx.from_) if mask else ctx.from_
    return data


def sent_event(
    ctx: MessageContext, result: SendResult, *, timestamp: datetime, mask_recipients: bool = True
) -> WebhookEvent:
    """``message.sent`` for a successful send."""
    data = _base_data(ctx, result.status.value, mask=mask_recipients)
    data["providerId"] = result.provider_id
    if result.provider_message_id is not None:
        data["providerMessageId"] = result.provider_message_id
    data["warnings"] = [warning.to_wire() for warning in result.warnings]
    return WebhookEvent(
        id=event_id(ctx.message_id, WebhookEventType.MESSAGE_SENT, ctx.attempt),
        type=WebhookEventType.MESSAGE_SENT,
        timestamp=timestamp,
        data=data,
        metadata=_metadata(ctx, result.provider_id),
    )


def failed_event(
    ctx: MessageContext, error: KMsgError, *, timestamp: datetime, mask_recipients: bool = True
) -> WebhookEvent:
    """``message.failed`` for a send that failed (validation, routing or vendor)."""
    provider_id = error.provider_id or ctx.provider_id
    data = _base_data(ctx, "FAILED", mask=mask_recipients)
    if provider_id is not None:
        data["providerId"] = provider_id
    data["error"] = _error_data(error)
    return WebhookEvent(
        id=event_id(ctx.message_id, WebhookEventType.MESSAGE_FAILED, ctx.attempt),
        type=WebhookEventType.MESSAGE_FAILED,
        timestamp=timestamp,
        data=data,
        metadata=_metadata(ctx, provider_id),
    )


def provider_error_event(
    ctx: MessageContext, error: KMsgError, *, timestamp: datetime
) -> WebhookEvent:
    """``system.provider_error``: the provider could not be reached for this message."""
    provider_id = error.provider_id or ctx.provider_id
    data: dict[str, Any] = {"messageId": ctx.message_id, "error": _error_data(error)}
    if provider_id is not None:
        data["providerId"] = provider_id
    return WebhookEvent(
        id=event_id(ctx.message_id, WebhookEventType.PROVIDER_ERROR, ctx.attempt),
        type=WebhookEventType.PROVIDER_ERROR,
        timestamp=timestamp,
        data=data,
        metadata=_metadata(ctx, provider_id),
    )


def circuit_open_error(provider_id: str) -> KMsgError:
    """Why a send was refused without calling the provider. It names no provider, so the
    failure emits no ``system.provider_error`` of its own: the opening did, once."""
    return KMsgError(
        KMsgErrorCode.NETWORK_SERVICE_UNAVAILABLE,
        f"not sent: the circuit breaker of provider {provider_id} is open",
    )


def circuit_opened_event(provider_id: str, timestamp: datetime) -> WebhookEvent:
    """``system.provider_error`` when a provider's circuit breaker opens."""
    stamp = timestamp.strftime("%Y%m%dT%H%M%S.%fZ")
    ctx = MessageContext(
        message_id=f"circuit:{provider_id}:{stamp}",
        type=MessageType.SMS,
        to="",
        provider_id=provider_id,
    )
    error = KMsgError(
        KMsgErrorCode.NETWORK_SERVICE_UNAVAILABLE,
        f"circuit breaker opened: provider {provider_id} is failing",
        provider_id=provider_id,
    )
    return provider_error_event(ctx, error, timestamp=timestamp)


def delivery_event(
    ctx: MessageContext,
    event_type: WebhookEventType,
    *,
    status: str,
    timestamp: datetime,
    extra: Mapping[str, Any] | None = None,
    mask_recipients: bool = True,
) -> WebhookEvent:
    """``message.delivered`` / ``message.failed`` from delivery tracking."""
    data = _base_data(ctx, status, mask=mask_recipients)
    if ctx.provider_id is not None:
        data["providerId"] = ctx.provider_id
    data.update(extra or {})
    return WebhookEvent(
        id=event_id(ctx.message_id, event_type),
        type=event_type,
        timestamp=timestamp,
        data=data,
        metadata=_metadata(ctx, ctx.provider_id),
    )


def template_event(
    event_type: WebhookEventType,
    template: Template,
    *,
    timestamp: datetime,
    sender_key: str | None = None,
    previous_status: TemplateStatus | None = None,
) -> WebhookEvent:
    """``template.*`` for a template operation or a review result.

    The id is ``tpl:<provider>:[<sender key>/]<code>[@<updated at>]:<type>``: re-emitting the
    same change is idempotent, while a later update or a second review of an edited template is
    a new event. The channel is part of it because Aligo's codes are unique only per channel.
    Template content is left out, as message text is.
    """
    sender_key = sender_key or template.sender_key
    channel = f"{sender_key}/" if sender_key else ""
    key = f"tpl:{template.provider_id}:{channel}{template.code}"
    if template.updated_at is not None and event_type is not WebhookEventType.TEMPLATE_DELETED:
        key += "@" + template.updated_at.strftime("%Y%m%dT%H%M%S.%f")
    data: dict[str, Any] = {
        "providerId": template.provider_id,
        "templateCode": template.code,
        "name": template.name,
        "status": template.status.value,
        "variables": list(template.variables),
    }
    if previous_status is not None:
        data["previousStatus"] = previous_status.value
    if template.category is not None:
        data["category"] = template.category
    if sender_key is not None:
        data["senderKey"] = sender_key
    return WebhookEvent(
        id=event_id(key, event_type),
        type=event_type,
        timestamp=timestamp,
        data=data,
        metadata=EventMetadata(
            provider_id=template.provider_id, template_id=template.code, channel_id=sender_key
        ),
    )


def channel_event(
    event_type: WebhookEventType, channel: KakaoChannel, *, timestamp: datetime
) -> WebhookEvent:
    """``channel.created`` / ``channel.verified`` for a Kakao channel (id by sender key)."""
    data: dict[str, Any] = {"providerId": channel.provider_id, "senderKey": channel.sender_key}
    for name, value in (
        ("plusId", channel.plus_id),
        ("name", channel.name),
        ("status", channel.status),
    ):
        if value is not None:
            data[name] = value
    return WebhookEvent(
        id=event_id(f"ch:{channel.provider_id}:{channel.sender_key}", event_type),
        type=event_type,
        timestamp=timestamp,
        data=data,
        metadata=EventMetadata(provider_id=channel.provider_id, channel_id=channel.sender_key),
    )


def sender_number_event(
    event_type: WebhookEventType,
    provider_id: str,
    number: str,
    *,
    timestamp: datetime,
    mask: bool = True,
) -> WebhookEvent:
    """``sender_number.added`` / ``sender_number.verified``; the number is masked like ``to``."""
    return WebhookEvent(
        id=event_id(f"sn:{provider_id}:{digits_only(number) or number}", event_type),
        type=event_type,
        timestamp=timestamp,
        data={"providerId": provider_id, "senderNumber": mask_phone(number) if mask else number},
        metadata=EventMetadata(provider_id=provider_id),
    )


@dataclass(frozen=True, slots=True)
class WebhookFeedConfig:
    """Buffer and retry settings.

    ``max_attempts`` counts the first (inline) attempt; ``emit_timeout`` bounds how long a
    send waits for the sink before handing the event to the background retry.
    """

    max_buffer: int = 1000
    max_attempts: int = 8
    initial_backoff: float = 1.0
    max_backoff: float = 60.0
    emit_timeout: float = 5.0
    #: ``False``: phone numbers go into event data in full (protect them with field crypto).
    mask_recipients: bool = True

    def __post_init__(self) -> None:
        if self.max_buffer < 1 or self.max_attempts < 1:
            raise ValueError("max_buffer and max_attempts must be at least 1")
        if self.emit_timeout <= 0:
            raise ValueError("emit_timeout must be positive")

    def backoff(self, failures: int) -> float:
        delay: float = self.initial_backoff * 2.0 ** max(0, failures - 1)
        return min(delay, self.max_backoff)


@dataclass(frozen=True, slots=True)
class FeedStats:
    emitted: int
    failed_attempts: int
    retried: int
    dropped: int
    pending: int


@dataclass(slots=True)
class _Pending:
    event: WebhookEvent
    failures: int


EmitErrorCallback = Callable[[WebhookEvent, BaseException, int], None]
DropCallback = Callable[[WebhookEvent, str], None]


class WebhookFeed:
    """Publishes events to a sink without ever failing the caller."""

    def __init__(
        self,
        sink: WebhookSink,
        *,
        config: WebhookFeedConfig | None = None,
        sleep: SleepFn = asyncio.sleep,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_emit_error: EmitErrorCallback | None = None,
        on_drop: DropCallback | None = None,
    ) -> None:
        self._sink = sink
        self._config = config or WebhookFeedConfig()
        self._sleep = sleep
        self.clock = clock
        self._on_emit_error = on_emit_error
        self._on_drop = on_drop
        self._buffer: deque[_Pending] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._emitted = 0
        self._failed_attempts = 0
        self._retried = 0
        self._dropped = 0

    @property
    def config(self) -> WebhookFeedConfig:
        return self._config

    @property
    def stats(self) -> FeedStats:
        return FeedStats(
            emitted=self._emitted,
            failed_attempts=self._failed_attempts,
            retried=self._retried,
            dropped=self._dropped,
            pending=len(self._buffer),
        )

    async def publish(self, event: WebhookEvent) -> bool:
        """Emit once now; on failure buffer it for background retry. Never raises.

        Returns whether the event was stored by this call.
        """
        if self._closed:
            self._drop(event, "feed_closed")
            return False
        error = await self._try_emit(event)
        if error is None:
            return True
        self._report_failure(event, error, 1)
        if self._config.max_attempts <= 1:
            self._drop(event, "attempts_exhausted")
            return False
        if len(self._buffer) >= self._config.max_buffer:
            oldest = self._buffer.popleft()
            self._drop(oldest.event, "buffer_full")
        self._buffer.append(_Pending(event, failures=1))
        self._ensure_worker()
        return False

    async def drain(self) -> None:
        """Wait until the retry buffer is empty (every event stored or dropped)."""
        while self._worker is not None and not self._worker.done():
            await asyncio.shield(self._worker)

    async def aclose(self) -> None:
        """Stop retrying; events still buffered are reported as dropped."""
        self._closed = True
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while self._buffer:
            self._drop(self._buffer.popleft().event, "feed_closed")

    async def _try_emit(self, event: WebhookEvent) -> BaseException | None:
        try:
            await asyncio.wait_for(self._sink.emit(event), self._config.emit_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # StoreError, timeout, or a sink bug: all are retried
            return exc
        self._emitted += 1
        return None

    def _report_failure(self, event: WebhookEvent, error: BaseException, attempt: int) -> None:
        self._failed_attempts += 1
        logger.warning(
            "Webhook emit of %s (%s) failed on attempt %d: %r", event.id, event.type, attempt, error
        )
        if self._on_emit_error is not None:
            try:
                self._on_emit_error(event, error, attempt)
            except Exception:
                logger.exception("on_emit_error callback raised")

    def _drop(self, event: WebhookEvent, reason: str) -> None:
        self._dropped += 1
        logger.error("Webhook event %s (%s) dropped: %s", event.id, event.type, reason)
        if self._on_drop is not None:
            try:
                self._on_drop(event, reason)
            except Exception:
                logger.exception("on_drop callback raised")

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._retry_loop())

    async def _retry_loop(self) -> None:
        while self._buffer:
            pending = self._buffer[0]
            await self._sleep(self._config.backoff(pending.failures))
            if not self._buffer or self._buffer[0] is not pending:
                continue  # dropped for room while we slept
            self._retried += 1
            error = await self._try_emit(pending.event)
            if error is None:
                self._buffer.popleft()
                continue
            pending.failures += 1
            self._report_failure(pending.event, error, pending.failures)
            if pending.failures >= self._config.max_attempts:
                self._buffer.popleft()
                self._drop(pending.event, "attempts_exhausted")


def as_feed(webhooks: WebhookSink | WebhookFeed | None) -> WebhookFeed | None:
    """Wrap a bare sink in a feed with default settings."""
    if webhooks is None or isinstance(webhooks, WebhookFeed):
        return webhooks
    return WebhookFeed(webhooks)
