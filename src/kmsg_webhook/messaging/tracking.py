"""Delivery tracking: poll ``get_delivery_status`` after a send, report the outcome.

After a successful send, :meth:`DeliveryTrackingService.record_send` stores a record;
:meth:`~DeliveryTrackingService.run_once` polls every record that is due. Checks back off
30 s → 2 min → 10 min → 30 min → 2 h (then every 2 h) and tracking gives up (status UNKNOWN)
24 h after the send. The clock and sleep are injectable, so tests never wait.

When a message becomes DELIVERED the service emits ``message.delivered``; when it becomes
FAILED, ``message.failed`` (ids ``<message_id>:message.delivered`` / ``…:message.failed``).

API-level fallback (ALIMTALK → SMS/LMS), at most once per message, only when all hold: the
record is ALIMTALK and now FAILED; the send asked for failover (``failover.enabled``); the
provider answered the send with ``FAILOVER_UNSUPPORTED_PROVIDER`` or
``FAILOVER_PARTIAL_PROVIDER``; and the failure means "not a Kakao user" (SOLAPI status
3104/3107 or a message containing 미사용자; IWINV text containing both 카카오 and 미사용;
overridable per provider or with a classifier function). The fallback message id is
``<message_id>:api-fallback``.

Durability (the reconciler): records live in a :class:`TrackingStore` (memory, SQLite or
Postgres; see :mod:`.tracking_store`). ``run_once`` *claims* due records under a lease
(``PollingConfig.lease``), so several processes may run it against one store; a record is saved
only while its lease holds. A status change's event is emitted before the record is saved (event
ids are stable, so a repeat after a crash is deduplicated by the webhook store), and a fallback
is marked ``attempting`` under the lease before it is sent. A worker killed at any point loses
no record: its leases expire and another worker picks the records up; a fallback left
``attempting`` is sent again unless the fallback message id is already tracked (at least once,
idempotent by message id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from ..events import WebhookEventType
from .errors import KMsgError
from .feed import MessageContext, WebhookFeed, WebhookSink, as_feed, delivery_event
from .kmsg import HookContext, KMsgHooks
from .leases import new_worker_id
from .provider import DeliveryStatusProvider, Provider, SleepFn, now_utc
from .result import Fail, Ok
from .tracking_records import ApiAttemptStatus, FailoverState, TrackingError, TrackingRecord
from .tracking_store import InMemoryTrackingStore, TrackingStore
from .types import (
    TEMPLATE_MESSAGE_TYPES,
    AlimTalkSendOptions,
    DeliveryStatus,
    DeliveryStatusQuery,
    DeliveryStatusResult,
    FallbackChannel,
    MessageType,
    SendOutcome,
    SendResult,
    SendWarningCode,
    SmsSendOptions,
)

logger = logging.getLogger("kmsg_webhook.messaging.tracking")


class UnsupportedProviderStrategy(StrEnum):
    SKIP = "skip"  # keep polling (backing off) until the tracking window ends
    UNKNOWN = "unknown"  # give up at once with status UNKNOWN


@dataclass(frozen=True, slots=True)
class PollingConfig:
    """Polling schedule (the original's defaults)."""

    interval: float = 5.0
    batch_size: int = 200
    concurrency: int = 10
    initial_delay: timedelta = timedelta(seconds=30)
    scheduled_grace: timedelta = timedelta(minutes=2)
    backoff: tuple[timedelta, ...] = (
        timedelta(seconds=30),
        timedelta(minutes=2),
        timedelta(minutes=10),
        timedelta(minutes=30),
        timedelta(hours=2),
    )
    max_tracking_duration: timedelta = timedelta(hours=24)
    unsupported_provider: UnsupportedProviderStrategy = UnsupportedProviderStrategy.SKIP
    #: How long a claimed record stays this worker's: longer than one status poll plus one
    #: fallback send take, or another worker may check the same record meanwhile. A claim
    #: takes at most ``concurrency`` records, all checked at once.
    lease: timedelta = timedelta(minutes=2)

    def delay_after(self, attempt_count: int) -> timedelta:
        if not self.backoff:
            return timedelta(minutes=1)
        index = min(max(0, attempt_count - 1), len(self.backoff) - 1)
        return self.backoff[index]


@dataclass(frozen=True, slots=True)
class NonKakaoUserRule:
    """Per-provider override: any listed status code, or any listed message fragment."""

    status_codes: tuple[str, ...] = ()
    message_includes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NonKakaoUserQuery:
    record: TrackingRecord
    status_code: str | None
    status_message: str | None
    raw: Any


@dataclass(frozen=True, slots=True)
class FallbackContext:
    original_message_id: str
    original_provider_id: str
    original_provider_message_id: str | None
    fallback_message_id: str
    fallback_type: MessageType
    record: TrackingRecord


FallbackSender = Callable[[SmsSendOptions, FallbackContext], Awaitable[SendOutcome]]


@dataclass(frozen=True, slots=True)
class TrackingHooks:
    """What the reconciler did, for metrics and logs: ``on_check`` sees each checked record as
    it was saved, ``on_fallback`` each record whose fallback finished (sent, failed, skipped)."""

    on_check: Callable[[TrackingRecord], None] | None = None
    on_fallback: Callable[[TrackingRecord], None] | None = None


@dataclass(frozen=True, slots=True)
class ApiFailoverConfig:
    """``sender`` usually wraps ``kmsg.send`` (``lambda options, ctx: kmsg.send(options)``)."""

    sender: FallbackSender | None = None
    enabled: bool = True
    classify_non_kakao_user: Callable[[NonKakaoUserQuery], bool] | None = None
    rules_by_provider_id: Mapping[str, NonKakaoUserRule] = field(default_factory=dict)


def is_non_kakao_user_failure(
    provider_id: str,
    status_code: str | None,
    status_message: str | None,
    rules: Mapping[str, NonKakaoUserRule] | None = None,
) -> bool:
    """The built-in (or per-provider) "recipient does not use KakaoTalk" test."""
    code = (status_code or "").strip()
    message = status_message or ""
    rule = (rules or {}).get(provider_id)
    if rule is not None and (
        code in rule.status_codes or any(part in message for part in rule.message_includes)
    ):
        return True
    if provider_id == "solapi":
        return code in ("3104", "3107") or "미사용자" in message
    if provider_id == "iwinv":
        combined = f"{code} {message}"
        return "카카오" in combined and "미사용" in combined
    return False


_FAILOVER_WARNINGS = frozenset(
    {SendWarningCode.FAILOVER_UNSUPPORTED_PROVIDER, SendWarningCode.FAILOVER_PARTIAL_PROVIDER}
)


class DeliveryTrackingService:
    """Pull-model delivery tracking with webhook events and the API-level fallback."""

    def __init__(
        self,
        providers: Iterable[Provider],
        *,
        store: TrackingStore | None = None,
        polling: PollingConfig | None = None,
        api_failover: ApiFailoverConfig | None = None,
        webhooks: WebhookSink | WebhookFeed | None = None,
        clock: Callable[[], datetime] = now_utc,
        sleep: SleepFn = asyncio.sleep,
        worker_id: str | None = None,
        hooks: TrackingHooks | None = None,
    ) -> None:
        self._providers = {provider.id: provider for provider in providers}
        self._hooks = hooks or TrackingHooks()
        #: Whose leases this service's claims are (unique per process by default).
        self.worker_id = worker_id or new_worker_id()
        self._store: TrackingStore = store or InMemoryTrackingStore()
        self._polling = polling or PollingConfig()
        self._failover = api_failover
        self._feed = as_feed(webhooks)
        self._clock = clock
        self._sleep = sleep
        self._current_run: asyncio.Task[int] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def store(self) -> TrackingStore:
        return self._store

    def hooks(self, *, on_error: Callable[[Exception], None] | None = None) -> KMsgHooks:
        """KMsg hooks that record every accepted send (errors never break the send)."""

        async def record(ctx: HookContext, result: SendResult) -> None:
            try:
                await self.record_send(ctx, result)
            except Exception as exc:
                logger.exception("Recording a send for tracking failed")
                if on_error is not None:
                    on_error(exc)

        return KMsgHooks(on_success=record)

    async def record_send(self, ctx: HookContext, result: SendResult) -> TrackingRecord:
        """Start tracking one accepted message."""
        now = ctx.timestamp
        options = ctx.options
        scheduled_at = options.scheduled_at if options is not None else None
        if scheduled_at is not None:
            status = DeliveryStatus.PENDING
            next_check = scheduled_at + self._polling.scheduled_grace
        else:
            status = DeliveryStatus.SENT
            next_check = now + self._polling.initial_delay
        failover: FailoverState | None = None
        if isinstance(options, AlimTalkSendOptions) and options.failover is not None:
            failover = FailoverState(
                request=options.failover,
                send_warning_codes=tuple(w.code for w in result.warnings),
            )
        template_id = None
        if options is not None and options.type in TEMPLATE_MESSAGE_TYPES:
            template_id = getattr(options, "template_id", None)
        record = TrackingRecord(
            message_id=result.message_id,
            provider_id=result.provider_id,
            provider_message_id=result.provider_message_id,
            type=result.type,
            to=result.to,
            from_=options.from_ if options is not None else None,
            requested_at=now,
            scheduled_at=scheduled_at,
            status=status,
            status_updated_at=now,
            next_check_at=next_check,
            template_id=template_id,
            correlation_id=ctx.request_id,
            custom_fields=dict(options.custom_fields) if options is not None else {},
            failover=failover,
        )
        if not result.provider_message_id:
            record = replace(
                record,
                status=DeliveryStatus.UNKNOWN,
                next_check_at=now,
                last_error=TrackingError(
                    "MISSING_PROVIDER_MESSAGE_ID", "The provider returned no message id"
                ),
            )
        await self._store.upsert(record)
        return record

    async def get_record(self, message_id: str) -> TrackingRecord | None:
        return await self._store.get(message_id)

    async def run_once(self) -> int:
        """Check every due record once; returns how many were checked.

        Concurrent callers share the run in progress.
        """
        if self._current_run is not None and not self._current_run.done():
            return await asyncio.shield(self._current_run)
        self._current_run = asyncio.get_running_loop().create_task(self._run())
        return await asyncio.shield(self._current_run)

    def start(self) -> None:
        """Poll every ``polling.interval`` seconds in the background until :meth:`stop`."""
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self, *, grace: float = 0.0) -> None:
        """Stop the background loop. The checks in flight get ``grace`` seconds to finish and
        be saved (no new claim starts meanwhile); records cancelled then keep their leases
        until they expire, and are looked at again after that."""
        self._stopping = True
        try:
            if self._loop_task is not None:
                self._loop_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._loop_task
                self._loop_task = None
            run = self._current_run
            if run is not None and not run.done():
                try:
                    await asyncio.wait_for(run, grace)
                except (TimeoutError, asyncio.CancelledError):
                    logger.warning(
                        "Tracking checks still in flight after %.1fs were cancelled", grace
                    )
                except Exception:
                    logger.exception("Delivery tracking run failed")
        finally:
            self._stopping = False

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                logger.exception("Delivery tracking run failed")
            await self._sleep(self._polling.interval)

    async def _run(self) -> int:
        # Claims take at most `concurrency` records, all checked at once, so a lease only has to
        # outlast one check (a larger claim would leave records waiting, leased, for a slot).
        polling = self._polling
        step = max(1, min(polling.batch_size, polling.concurrency))
        done = 0
        while done < polling.batch_size:
            now = self._clock()
            claimed = await self._store.claim_due(
                worker_id=self.worker_id,
                now=now,
                lease_until=now + polling.lease,
                limit=min(step, polling.batch_size - done),
            )
            await asyncio.gather(*(self._look_at(record, now) for record in claimed))
            done += len(claimed)
            if len(claimed) < step or self._stopping:
                break
        return done

    async def _look_at(self, record: TrackingRecord, now: datetime) -> None:
        try:
            if record.status.is_terminal:  # claimed for a fallback left attempting
                await self._send_fallback(record)
            else:
                await self._check(record, now)
        except Exception:
            # The lease is left to expire: the record is looked at again then.
            logger.exception("Tracking check of %s failed", record.message_id)

    async def _check(self, record: TrackingRecord, now: datetime) -> None:
        checked = replace(record, attempt_count=record.attempt_count + 1, last_checked_at=now)
        updated = await self._reconcile(checked, now)
        if updated.status.is_terminal:
            updated = replace(updated, next_check_at=now)
        changed = updated.status is not record.status
        if changed:
            # Before the save: a crash in between repeats the event under the same id, which
            # the webhook store deduplicates; after it, a crash would lose the event.
            await self._emit_transition(updated)
        if changed and self._fallback_due(updated):
            await self._start_fallback(updated)
        elif not await self._store.save(updated, worker_id=self.worker_id):
            logger.warning("Lease on %s lost before its check was saved", record.message_id)
            return
        if self._hooks.on_check is not None:
            self._hooks.on_check(updated)

    def _backoff(self, record: TrackingRecord, now: datetime, **changes: Any) -> TrackingRecord:
        return replace(
            record, next_check_at=now + self._polling.delay_after(record.attempt_count), **changes
        )

    def _give_up(
        self, record: TrackingRecord, now: datetime, code: str, message: str
    ) -> TrackingRecord:
        return replace(
            record,
            status=DeliveryStatus.UNKNOWN,
            status_updated_at=now,
            last_error=TrackingError(code, message),
        )

    async def _reconcile(self, record: TrackingRecord, now: datetime) -> TrackingRecord:
        if not record.provider_message_id:
            return self._give_up(
                record, now, "MISSING_PROVIDER_MESSAGE_ID", "The provider returned no message id"
            )
        start = record.requested_at
        if record.scheduled_at is not None:
            start = record.scheduled_at + self._polling.scheduled_grace
            if now < start:
                return replace(record, next_check_at=start)
        if now - start > self._polling.max_tracking_duration:
            return self._give_up(record, now, "TRACKING_TIMEOUT", "Tracking window elapsed")
        provider = self._providers.get(record.provider_id)
        if provider is None:
            return self._give_up(
                record, now, "PROVIDER_NOT_FOUND", f"Provider {record.provider_id} not found"
            )
        if not isinstance(provider, DeliveryStatusProvider):
            error = TrackingError(
                "UNSUPPORTED_PROVIDER", f"{record.provider_id} cannot report delivery status"
            )
            if self._polling.unsupported_provider is UnsupportedProviderStrategy.UNKNOWN:
                return self._give_up(record, now, error.code, error.message)
            return self._backoff(record, now, last_error=error)
        query = DeliveryStatusQuery(
            provider_message_id=record.provider_message_id,
            type=record.type,
            to=record.to,
            requested_at=record.requested_at,
            scheduled_at=record.scheduled_at,
        )
        try:
            answer = await provider.get_delivery_status(query)
        except Exception as exc:  # a provider broke the never-raise contract
            return self._backoff(record, now, last_error=TrackingError("UNKNOWN_ERROR", repr(exc)))
        if isinstance(answer, Fail):
            error = TrackingError(answer.error.code.value, answer.error.message)
            if not answer.error.retryable:
                return self._give_up(record, now, error.code, error.message)
            return self._backoff(record, now, last_error=error)
        assert isinstance(answer, Ok)
        status: DeliveryStatusResult | None = answer.value
        if status is None:
            return self._backoff(record, now, last_error=None)
        applied = replace(
            record,
            status=status.status,
            status_updated_at=now
            if status.status is not record.status
            else record.status_updated_at,
            provider_status_code=status.status_code,
            provider_status_message=status.status_message,
            sent_at=status.sent_at or record.sent_at,
            delivered_at=status.delivered_at or record.delivered_at,
            failed_at=status.failed_at or record.failed_at,
            last_error=None,
            raw=status.raw,
        )
        if applied.status.is_terminal:
            return applied
        return self._backoff(applied, now)

    def _context(self, record: TrackingRecord) -> MessageContext:
        return MessageContext(
            message_id=record.message_id,
            type=record.type,
            to=record.to,
            from_=record.from_,
            provider_id=record.provider_id,
            template_id=record.template_id,
            correlation_id=record.correlation_id,
        )

    async def _emit_transition(self, record: TrackingRecord) -> None:
        if self._feed is None:
            return
        if record.status is DeliveryStatus.DELIVERED:
            event_type = WebhookEventType.MESSAGE_DELIVERED
        elif record.status is DeliveryStatus.FAILED:
            event_type = WebhookEventType.MESSAGE_FAILED
        else:
            return
        extra: dict[str, Any] = {"providerMessageId": record.provider_message_id}
        if record.provider_status_code is not None:
            extra["statusCode"] = record.provider_status_code
        if record.provider_status_message is not None:
            extra["statusMessage"] = record.provider_status_message
        await self._feed.publish(
            delivery_event(
                self._context(record),
                event_type,
                status=record.status.value,
                timestamp=self._feed.clock(),
                extra=extra,
                mask_recipients=self._feed.config.mask_recipients,
            )
        )

    def _is_non_kakao_user(self, record: TrackingRecord) -> bool:
        config = self._failover
        assert config is not None
        if config.classify_non_kakao_user is not None:
            try:
                return bool(
                    config.classify_non_kakao_user(
                        NonKakaoUserQuery(
                            record,
                            record.provider_status_code,
                            record.provider_status_message,
                            record.raw,
                        )
                    )
                )
            except Exception:
                logger.exception("classify_non_kakao_user raised; treated as False")
                return False
        return is_non_kakao_user_failure(
            record.provider_id,
            record.provider_status_code,
            record.provider_status_message,
            config.rules_by_provider_id,
        )

    def _fallback_due(self, record: TrackingRecord) -> bool:
        config = self._failover
        state = record.failover
        return not (
            config is None
            or not config.enabled
            or record.type is not MessageType.ALIMTALK
            or record.status is not DeliveryStatus.FAILED
            or state is None
            or state.request.enabled is not True
            or state.attempted
            or not _FAILOVER_WARNINGS.intersection(state.send_warning_codes)
            or not self._is_non_kakao_user(record)
        )

    async def _start_fallback(self, record: TrackingRecord) -> None:
        """Mark the fallback ``attempting`` under the lease (so a crash leaves a trace another
        worker resumes from), then send it."""
        assert record.failover is not None
        state = replace(
            record.failover,
            attempted=True,
            status=ApiAttemptStatus.ATTEMPTING,
            attempted_at=self._clock(),
        )
        marked = replace(record, failover=state)
        if not await self._store.save(marked, worker_id=self.worker_id, keep_lease=True):
            logger.warning("Lease on %s lost: its fallback is not sent", record.message_id)
            return
        await self._send_fallback(marked)

    async def _send_fallback(self, record: TrackingRecord) -> None:
        """Send the fallback of a record marked ``attempting`` and save how it went."""
        config = self._failover
        state = record.failover
        assert state is not None
        fallback_id = f"{record.message_id}:api-fallback"
        content = (state.request.fallback_content or "").strip()
        tracked = await self._store.get(fallback_id)
        if tracked is not None:
            # A worker before us sent it and got as far as tracking it: never send it twice.
            state = replace(
                state,
                status=ApiAttemptStatus.SENT,
                fallback_message_id=tracked.message_id,
                fallback_provider_id=tracked.provider_id,
            )
        elif config is None or config.sender is None:
            state = replace(
                state,
                status=ApiAttemptStatus.SKIPPED,
                warning_code=SendWarningCode.API_FAILOVER_SENDER_MISSING.value,
            )
        elif not content:
            state = replace(
                state,
                status=ApiAttemptStatus.SKIPPED,
                warning_code=SendWarningCode.FALLBACK_CONTENT_MISSING.value,
            )
        else:
            state = await self._call_sender(config.sender, record, state, fallback_id, content)
        finished = replace(record, failover=state)
        if not await self._store.save(finished, worker_id=self.worker_id):
            logger.warning("Lease on %s lost before its fallback was saved", record.message_id)
        elif self._hooks.on_fallback is not None:
            self._hooks.on_fallback(finished)

    async def _call_sender(
        self,
        sender: FallbackSender,
        record: TrackingRecord,
        state: FailoverState,
        fallback_id: str,
        content: str,
    ) -> FailoverState:
        lms = state.request.fallback_channel is FallbackChannel.LMS
        options = SmsSendOptions(
            type=MessageType.LMS if lms else MessageType.SMS,
            to=record.to,
            from_=record.from_,
            text=content,
            subject=state.request.fallback_title if lms else None,
            message_id=fallback_id,
            request_id=record.correlation_id,
        )
        context = FallbackContext(
            original_message_id=record.message_id,
            original_provider_id=record.provider_id,
            original_provider_message_id=record.provider_message_id,
            fallback_message_id=fallback_id,
            fallback_type=options.type,
            record=record,
        )
        try:
            outcome = await sender(options, context)
        except Exception as exc:
            logger.exception("API fallback sender raised")
            return replace(
                state,
                status=ApiAttemptStatus.FAILED,
                error_code="API_FAILOVER_SEND_EXCEPTION",
                error_message=repr(exc),
            )
        if isinstance(outcome, Ok):
            return replace(
                state,
                status=ApiAttemptStatus.SENT,
                fallback_message_id=outcome.value.message_id,
                fallback_provider_id=outcome.value.provider_id,
            )
        error: KMsgError = outcome.error
        return replace(
            state,
            status=ApiAttemptStatus.FAILED,
            error_code=error.code.value,
            error_message=error.message,
        )
