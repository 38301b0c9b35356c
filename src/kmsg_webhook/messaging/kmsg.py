"""``KMsg``: one ``send()`` in front of several providers (normalise → route → send → report).

Behaviour worth knowing (and where it differs from the original, on purpose):

* ``send`` never raises: malformed input, routing failures, provider failures, even a
  provider that raises, all come back as ``Fail(KMsgError)``.
* A mapping without ``type`` is an SMS, switched to LMS when the *filled-in* text is longer
  than ``defaults.auto_lms_bytes`` (90) by the original's byte estimate; exactly 90 stays SMS.
  An explicit ``type`` is never switched.
* ``to`` must look like a phone number (8–15 digits, common separators, optional ``+``).
* ``#{name}`` placeholders in a text with no matching variable are an INVALID_REQUEST
  (the original left them in the text and sent it).
* Routing: explicit ``provider_id`` → ``routing.by_type`` (one id or a list; ``first`` or
  ``round_robin``; unknown ids in a list are skipped) → ``routing.default_provider_id`` when
  it supports the type → the first provider that supports it.
* Hooks are awaited in order; a hook that raises is logged and ignored, so it can neither
  fail a sent message nor abort a send (the original re-entered its failure path).
  ``on_queued`` runs, before ``on_success``, when the provider accepted the message but has
  not sent it yet (status PENDING: scheduled sends, Aligo). ``on_final`` runs exactly once
  per message.
* With ``channels=`` (:class:`~kmsg_webhook.messaging.channels.ChannelBindings`), a Kakao
  send may name its channel by alias or plusId in ``kakao.profile_id`` / ``kakao.plus_id``:
  the provider gets the bound sender key (and the bound provider, unless one is named). The
  send's own channel is resolved before the ``KMsgDefaults`` one.
* With ``webhooks=``, every send emits ``message.sent`` or ``message.failed`` (plus
  ``system.provider_error`` when the provider was unreachable) after the hooks; see
  :mod:`kmsg_webhook.messaging.feed`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, overload

from ..errors import ConfigError
from ..events import WebhookEvent
from .channels import ChannelBinding, ChannelBindings, normalize_plus_id
from .errors import KMsgError, KMsgErrorCode, invalid_request
from .feed import (
    UNREACHABLE_CODES,
    MessageContext,
    WebhookFeed,
    WebhookSink,
    as_feed,
    circuit_open_error,
    circuit_opened_event,
    failed_event,
    provider_error_event,
    sent_event,
)
from .inputs import ParsedInput, parse_send_input
from .jobs import JobStore
from .management import ProviderManager
from .onboarding import ProviderOnboardingSpec, find_provider_onboarding_spec
from .phone import estimate_sms_bytes, is_valid_phone, mask_phone
from .provider import ClosableProvider, HealthCheckProvider, Provider, now_utc
from .resilience import ProviderGuards, Resilience
from .result import Fail, Ok, Result
from .send_queue import SendQueue, SendQueueOptions
from .templates import render
from .types import (
    TEMPLATE_MESSAGE_TYPES,
    TEXT_INTERPOLATED_TYPES,
    AlimTalkSendOptions,
    BatchSendResult,
    FaxSendOptions,
    FriendTalkSendOptions,
    KakaoOptions,
    MessageStatus,
    MessageType,
    NaverOptions,
    NsaSendOptions,
    ProviderHealth,
    RcsOptions,
    RcsTemplateSendOptions,
    RcsTextSendOptions,
    SendInput,
    SendOptions,
    SendOutcome,
    SendResult,
    SmsSendOptions,
    VoiceSendOptions,
)

if TYPE_CHECKING:
    from .builder import KMsgBuilder

logger = logging.getLogger("kmsg_webhook.messaging")

DEFAULT_CHUNK_SIZE = 50
DEFAULT_AUTO_LMS_BYTES = 90


class RoutingStrategy(StrEnum):
    FIRST = "first"
    ROUND_ROBIN = "round_robin"


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """``by_type`` maps a type to one provider id or an ordered list of ids."""

    default_provider_id: str | None = None
    by_type: Mapping[MessageType, str | Sequence[str]] = field(default_factory=dict)
    strategy: RoutingStrategy = RoutingStrategy.FIRST
    #: With ``KMsg(resilience=...)``: pass over listed providers whose circuit is open.
    skip_open_circuits: bool = True


@dataclass(frozen=True, slots=True)
class KMsgDefaults:
    """Values filled in when a message leaves them out (``from`` has no default, as upstream)."""

    auto_lms_bytes: int = DEFAULT_AUTO_LMS_BYTES
    kakao_profile_id: str | None = None
    kakao_plus_id: str | None = None
    naver_talk_id: str | None = None
    rcs_brand_id: str | None = None


@dataclass(frozen=True, slots=True)
class HookContext:
    """What hooks see. ``options`` is None only when the input could not be parsed."""

    message_id: str
    options: SendOptions | None
    timestamp: datetime
    request_id: str | None = None
    attempt: int | None = None
    provider_id: str | None = None


class FinalOutcomeKind(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"


@dataclass(frozen=True, slots=True)
class FinalOutcome:
    outcome: FinalOutcomeKind
    result: SendResult | None = None
    error: KMsgError | None = None


HookReturn = Awaitable[None] | None


@dataclass(frozen=True, slots=True)
class KMsgHooks:
    """Optional callbacks; each may be sync or async."""

    on_before_send: Callable[[HookContext], HookReturn] | None = None
    on_success: Callable[[HookContext, SendResult], HookReturn] | None = None
    on_error: Callable[[HookContext, KMsgError], HookReturn] | None = None
    on_queued: Callable[[HookContext, SendResult], HookReturn] | None = None
    on_final: Callable[[HookContext, FinalOutcome], HookReturn] | None = None


@dataclass(frozen=True, slots=True)
class KMsgHealth:
    healthy: bool
    providers: Mapping[str, ProviderHealth]
    issues: tuple[str, ...] = ()


@dataclass(slots=True)
class _Prepared:
    """One message after parsing, normalising and routing (before any hook runs)."""

    ctx: HookContext
    options: SendOptions | None
    provider: Provider | None
    error: KMsgError | None


class KMsg:
    """The send facade. See the module docstring for the rules."""

    def __init__(
        self,
        providers: Sequence[Provider],
        *,
        routing: RoutingConfig | None = None,
        defaults: KMsgDefaults | None = None,
        hooks: KMsgHooks | Sequence[KMsgHooks] | None = None,
        webhooks: WebhookSink | WebhookFeed | None = None,
        channels: ChannelBindings | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        clock: Callable[[], datetime] = now_utc,
        id_factory: Callable[[], str] = lambda: str(uuid.uuid4()),
        jobs: JobStore | None = None,
        queue_options: SendQueueOptions | None = None,
        resilience: Resilience | ProviderGuards | None = None,
    ) -> None:
        if not providers:
            raise ConfigError("KMsg needs at least one provider")
        self._providers: dict[str, Provider] = {}
        for provider in providers:
            provider_id = getattr(provider, "id", None)
            if not isinstance(provider_id, str) or not provider_id:
                raise ConfigError("Every provider needs a non-empty string id")
            if provider_id in self._providers:
                raise ConfigError(f"Duplicate provider id: {provider_id}")
            self._providers[provider_id] = provider
        if chunk_size < 1:
            raise ConfigError("chunk_size must be at least 1")
        self._routing = routing or RoutingConfig()
        self._defaults = defaults or KMsgDefaults()
        if isinstance(hooks, KMsgHooks):
            self._hooks: tuple[KMsgHooks, ...] = (hooks,)
        else:
            self._hooks = tuple(hooks or ())
        self._owns_feed = webhooks is not None and not isinstance(webhooks, WebhookFeed)
        self._feed = as_feed(webhooks)
        self._chunk_size = chunk_size
        self._clock = clock
        self._new_id = id_factory
        self._round_robin: dict[str, int] = {}
        self._channels = channels or ChannelBindings()
        self._guards = (
            ProviderGuards(resilience) if isinstance(resilience, Resilience) else resilience
        )
        #: With a job store, scheduled sends and ``send_many`` go through a durable queue.
        self.queue = None if jobs is None else SendQueue(self, jobs, queue_options, clock=clock)

    @staticmethod
    def builder() -> KMsgBuilder:
        """A :class:`~kmsg_webhook.messaging.builder.KMsgBuilder` (providers, routing,
        defaults, hooks, webhooks, resilience, persistence strategy)."""
        from .builder import KMsgBuilder

        return KMsgBuilder()

    @property
    def providers(self) -> tuple[Provider, ...]:
        return tuple(self._providers.values())

    @property
    def feed(self) -> WebhookFeed | None:
        return self._feed

    def manager(self, provider_id: str, *, watch_interval: float | None = 60.0) -> ProviderManager:
        """Template and Kakao channel operations on one of these providers, publishing through
        this facade's feed and resolving its channel bindings. Raises ``ConfigError`` for an
        unknown id. Close it (``aclose``) to stop its review watcher."""
        provider = self._providers.get(provider_id)
        if provider is None:
            raise ConfigError(f"Provider not found: {provider_id}")
        return ProviderManager(
            provider,
            webhooks=self._feed,
            channels=self._channels,
            watch_interval=watch_interval,
            clock=self._clock,
        )

    # ------------------------------------------------------------------------- public API

    @overload
    async def send(
        self, message: SendOptions | Mapping[str, Any], *, scheduled_at: datetime | None = None
    ) -> SendOutcome: ...

    @overload
    async def send(
        self, message: Sequence[SendInput], *, scheduled_at: datetime | None = None
    ) -> BatchSendResult: ...

    async def send(
        self, message: SendInput | Sequence[SendInput], *, scheduled_at: datetime | None = None
    ) -> SendOutcome | BatchSendResult:
        """Send one message (→ Result) or a list (→ BatchSendResult, in input order).

        ``scheduled_at``: store the message(s) in the job queue (``KMsg(jobs=...)``) and send
        them at that time (``Ok`` with status PENDING once stored); without a job store that
        is an INVALID_REQUEST. The ``scheduled_at`` *option* of a message is different: the
        vendor holds the message.
        """
        if scheduled_at is not None:
            return await self._schedule(message, scheduled_at)
        if isinstance(message, Sequence) and not isinstance(message, str | bytes):
            return await self.send_many(message)
        prepared = self._prepare(message)
        return await self._execute(prepared)

    def prepare(self, message: SendInput) -> Result[SendOptions, KMsgError]:
        """Parse, normalise and route ``message`` without sending it: the options as they would
        be sent (``message_id`` filled in), or why it cannot be."""
        prepared = self._prepare(message)
        if prepared.error is not None or prepared.options is None:
            return Fail(prepared.error or invalid_request("message not prepared"))
        return Ok(prepared.options)

    async def _schedule(
        self, message: SendInput | Sequence[SendInput], at: datetime
    ) -> SendOutcome | BatchSendResult:
        items = message if isinstance(message, Sequence) else None
        if self.queue is None:
            error = invalid_request("scheduled_at needs a job store: KMsg(..., jobs=...)")
            if items is None:
                return Fail(error)
            return BatchSendResult(total=len(items), results=tuple(Fail(error) for _ in items))
        if items is None:
            return await self.queue.schedule(message, at=at)  # type: ignore[arg-type]
        outcomes = [await self.queue.schedule(item, at=at) for item in items]
        return BatchSendResult(total=len(outcomes), results=tuple(outcomes))

    async def send_many(self, messages: Sequence[SendInput]) -> BatchSendResult:
        """Without a job store: group by provider, send each provider's share in chunks (≤ 50,
        or the provider's ``max_batch_size``) one chunk after another, providers in parallel.
        With one: store every message as a job first, then send (see ``send_queue``)."""
        if self.queue is not None:
            return await self.queue.send_many(messages)
        prepared = [self._prepare(item) for item in messages]
        results: list[SendOutcome | None] = [None] * len(prepared)
        groups: dict[str, list[int]] = {}
        unrouted: list[int] = []
        for index, item in enumerate(prepared):
            if item.provider is None:
                unrouted.append(index)
            else:
                groups.setdefault(item.provider.id, []).append(index)

        async def run(index: int) -> None:
            results[index] = await self._execute(prepared[index])

        async def run_group(provider_id: str, indexes: list[int]) -> None:
            size = self._chunk_size_for(self._providers[provider_id])
            for start in range(0, len(indexes), size):
                await asyncio.gather(*(run(i) for i in indexes[start : start + size]))

        await asyncio.gather(
            *(run(i) for i in unrouted),
            *(run_group(pid, idx) for pid, idx in groups.items()),
        )
        final: list[SendOutcome] = []
        for index, outcome in enumerate(results):
            if outcome is None:  # defensive: every slot is filled above
                outcome = Fail(
                    KMsgError(
                        KMsgErrorCode.UNKNOWN_ERROR, f"Batch result missing for input index {index}"
                    )
                )
            final.append(outcome)
        return BatchSendResult(total=len(final), results=tuple(final))

    async def send_or_raise(self, message: SendInput) -> SendResult:
        """Like :meth:`send` but raises the ``KMsgError`` on failure."""
        outcome = await self.send(message)
        if isinstance(outcome, Fail):
            raise outcome.error
        return outcome.value

    async def health_check(self) -> KMsgHealth:
        """Every provider's ``health_check`` in parallel (providers without one count healthy)."""

        async def check(provider: Provider) -> ProviderHealth:
            if not isinstance(provider, HealthCheckProvider):
                return ProviderHealth(healthy=True)
            try:
                return await provider.health_check()
            except Exception as exc:
                return ProviderHealth(healthy=False, issues=(repr(exc),))

        ids = list(self._providers)
        checks = await asyncio.gather(*(check(self._providers[i]) for i in ids))
        by_id = dict(zip(ids, checks, strict=True))
        issues = tuple(
            f"{pid}: {', '.join(health.issues) or 'unhealthy'}"
            for pid, health in by_id.items()
            if not health.healthy
        )
        return KMsgHealth(healthy=not issues, providers=by_id, issues=issues)

    async def aclose(self) -> None:
        """Close providers' HTTP sessions, and the feed when KMsg created it."""
        for provider in self._providers.values():
            if isinstance(provider, ClosableProvider):
                try:
                    await provider.aclose()
                except Exception:
                    logger.exception("Closing provider %s failed", provider.id)
        if self._feed is not None and self._owns_feed:
            await self._feed.aclose()

    # ------------------------------------------------------------------------- preparation

    def _prepare(self, message: SendInput) -> _Prepared:
        try:
            return self._prepare_unsafe(message)
        except Exception as exc:  # malformed typed options or a bug: still no exception out
            logger.exception("Preparing a message failed")
            ctx = HookContext(message_id=self._new_id(), options=None, timestamp=self._clock())
            error = KMsgError(KMsgErrorCode.INVALID_REQUEST, f"Malformed send input: {exc!r}")
            return _Prepared(ctx, None, None, error)

    def _prepare_unsafe(self, message: SendInput) -> _Prepared:
        parsed = self._parse(message)
        now = self._clock()
        if isinstance(parsed, Fail):
            raw_id = message.get("messageId") if isinstance(message, Mapping) else None
            message_id = raw_id if isinstance(raw_id, str) and raw_id else self._new_id()
            ctx = HookContext(message_id=message_id, options=None, timestamp=now)
            return _Prepared(ctx, None, None, parsed.error)
        options = self._fill_ids(parsed.value.options)
        request_id = options.request_id or _str_option(options.provider_options, "requestId")
        attempt = options.attempt or _int_option(options.provider_options, "attempt")
        ctx = HookContext(
            message_id=options.message_id or "",
            options=options,
            timestamp=now,
            request_id=request_id,
            attempt=attempt,
        )
        normalized = self._normalize(options, auto_type=parsed.value.auto_type)
        if isinstance(normalized, Fail):
            return _Prepared(ctx, options, None, normalized.error)
        options = normalized.value
        ctx = replace(ctx, options=options)
        routed = self._select_provider(options)
        if isinstance(routed, Fail):
            return _Prepared(ctx, options, None, routed.error)
        ctx = replace(ctx, provider_id=routed.value.id)
        return _Prepared(ctx, options, routed.value, None)

    def _parse(self, message: SendInput) -> Result[ParsedInput, KMsgError]:
        if isinstance(message, Mapping):
            return parse_send_input(message)
        if isinstance(
            message,
            SmsSendOptions
            | AlimTalkSendOptions
            | FriendTalkSendOptions
            | NsaSendOptions
            | VoiceSendOptions
            | FaxSendOptions
            | RcsTextSendOptions
            | RcsTemplateSendOptions,
        ):
            if message.type not in type(message).ALLOWED_TYPES:
                return Fail(
                    invalid_request(
                        f"type {message.type} is not valid for {type(message).__name__}"
                    )
                )
            return Ok(ParsedInput(message, auto_type=False))
        return Fail(invalid_request("send input must be a mapping or a send options object"))

    def _fill_ids(self, options: SendOptions) -> SendOptions:
        if options.message_id:
            return options
        return replace(options, message_id=self._new_id())

    def _normalize(
        self, options: SendOptions, *, auto_type: bool
    ) -> Result[SendOptions, KMsgError]:
        to = options.to.strip() if isinstance(options.to, str) else ""
        if not to:
            return Fail(invalid_request("to is required"))
        if not is_valid_phone(to):
            return Fail(invalid_request(f"invalid phone number: {mask_phone(to)}"))

        if isinstance(options, AlimTalkSendOptions | NsaSendOptions | RcsTemplateSendOptions) and (
            not options.template_id or not options.template_id.strip()
        ):
            return Fail(invalid_request(f"templateId is required for {options.type.value}"))

        if (
            isinstance(
                options,
                SmsSendOptions | FriendTalkSendOptions | VoiceSendOptions | RcsTextSendOptions,
            )
            and options.type in TEXT_INTERPOLATED_TYPES
        ):
            if not options.text or not options.text.strip():
                return Fail(invalid_request(f"text is required for {options.type.value}"))
            rendered = render(options.text, options.variables)
            if isinstance(rendered, Fail):
                return rendered
            text = rendered.value
            if isinstance(options, SmsSendOptions) and auto_type:
                limit = self._defaults.auto_lms_bytes
                if limit <= 0:
                    limit = DEFAULT_AUTO_LMS_BYTES
                kind = MessageType.LMS if estimate_sms_bytes(text) > limit else MessageType.SMS
                options = replace(options, text=text, type=kind)
            else:
                options = replace(options, text=text)

        return self._apply_defaults(options)

    def _apply_defaults(self, options: SendOptions) -> Result[SendOptions, KMsgError]:
        defaults = self._defaults
        if isinstance(options, AlimTalkSendOptions | FriendTalkSendOptions):
            resolved = self._kakao_channel(options.kakao or KakaoOptions())
            if isinstance(resolved, Fail):
                return resolved
            kakao, binding = resolved.value
            if binding is not None and options.provider_id is None and binding.provider_id:
                options = replace(options, provider_id=binding.provider_id)
            return Ok(replace(options, kakao=kakao))
        if isinstance(options, NsaSendOptions) and defaults.naver_talk_id:
            naver = options.naver or NaverOptions()
            if not naver.talk_id:
                return Ok(replace(options, naver=replace(naver, talk_id=defaults.naver_talk_id)))
        if (
            isinstance(options, RcsTextSendOptions | RcsTemplateSendOptions)
            and defaults.rcs_brand_id
        ):
            rcs = options.rcs or RcsOptions()
            if not rcs.brand_id:
                return Ok(replace(options, rcs=replace(rcs, brand_id=defaults.rcs_brand_id)))
        return Ok(options)

    def _kakao_channel(
        self, kakao: KakaoOptions
    ) -> Result[tuple[KakaoOptions, ChannelBinding | None], KMsgError]:
        """The channel a Kakao send goes out on, with the sender key the provider needs.

        The caller's own ``profile_id`` / ``plus_id`` are resolved first and the defaults last:
        the default sender key fills in only when the caller named no channel or named the
        default channel's plusId, so a send never leaves on another channel than the one asked
        for. An unbound plusId with no sender key leaves the key to the provider's own config.
        """
        defaults = self._defaults
        profile = (kakao.profile_id or "").strip()
        plus = (kakao.plus_id or "").strip()
        default_profile = (defaults.kakao_profile_id or "").strip()
        default_plus = (defaults.kakao_plus_id or "").strip()
        if not profile and not plus:
            profile, plus = default_profile, default_plus
        by_profile = self._channels.resolve(profile) if profile else None
        by_plus = self._channels.resolve(plus) if plus else None
        if by_profile is not None and by_plus is not None and by_profile is not by_plus:
            return Fail(
                invalid_request(
                    f"kakao profileId {profile!r} and plusId {plus!r} name different channels"
                )
            )
        binding = by_profile or by_plus
        if binding is not None:
            # An alias or plusId names the channel; the provider gets its sender key.
            chosen = replace(kakao, profile_id=binding.sender_key, plus_id=binding.plus_id)
            return Ok((chosen, binding))
        if (
            not profile
            and default_plus
            and normalize_plus_id(plus) == normalize_plus_id(default_plus)
        ):
            profile = default_profile
        return Ok((replace(kakao, profile_id=profile or None, plus_id=plus or None), None))

    def _check_provider(
        self, provider_id: str, message_type: MessageType
    ) -> Result[Provider, KMsgError]:
        provider = self._providers.get(provider_id)
        if provider is None:
            return Fail(invalid_request(f"Provider not found: {provider_id}"))
        if message_type not in provider.supported_types:
            return Fail(
                invalid_request(
                    f"Provider {provider_id} does not support type {message_type.value}",
                    provider_id=provider_id,
                )
            )
        return Ok(provider)

    def _select_provider(self, options: SendOptions) -> Result[Provider, KMsgError]:
        message_type = options.type
        if options.provider_id:
            return self._check_provider(options.provider_id, message_type)

        routed = self._routing.by_type.get(message_type)
        if isinstance(routed, str):
            return self._check_provider(routed, message_type)
        if routed is not None:
            candidates = [pid for pid in routed if pid in self._providers]
            if self._guards is not None and self._routing.skip_open_circuits:
                closed = [pid for pid in candidates if not self._guards.resting(pid)]
                candidates = closed or candidates
            if candidates:
                if self._routing.strategy is RoutingStrategy.ROUND_ROBIN:
                    key = f"type:{message_type.value}"
                    counter = self._round_robin.get(key, 0)
                    self._round_robin[key] = counter + 1
                    chosen = candidates[counter % len(candidates)]
                else:
                    chosen = candidates[0]
                return self._check_provider(chosen, message_type)

        default_id = self._routing.default_provider_id
        if default_id:
            default = self._providers.get(default_id)
            if default is not None and message_type in default.supported_types:
                return Ok(default)

        for provider in self._providers.values():
            if message_type in provider.supported_types:
                return Ok(provider)
        return Fail(invalid_request(f"No provider available for type {message_type.value}"))

    def _chunk_size_for(self, provider: Provider) -> int:
        limit = getattr(provider, "max_batch_size", None)
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            return max(1, min(self._chunk_size, limit))
        return self._chunk_size

    @staticmethod
    def _onboarding_spec(provider: Provider) -> ProviderOnboardingSpec | None:
        getter = getattr(provider, "get_onboarding_spec", None)
        if callable(getter):
            try:
                spec = getter()
            except Exception:
                spec = None
            if isinstance(spec, ProviderOnboardingSpec):
                return spec
        return find_provider_onboarding_spec(provider.id)

    def _onboarding_error(self, options: SendOptions, provider: Provider) -> KMsgError | None:
        if not isinstance(options, AlimTalkSendOptions):
            return None
        spec = self._onboarding_spec(provider)
        if spec is None or not spec.requires_plus_id:
            return None
        plus_id = (options.kakao.plus_id if options.kakao else None) or ""
        if plus_id.strip():
            return None
        return invalid_request(
            f"kakao.plusId is required for ALIMTALK via {provider.id} "
            f"(plusIdPolicy={spec.plus_id_policy.value})",
            provider_id=provider.id,
        )

    # ------------------------------------------------------------------------- execution

    async def _execute(self, prepared: _Prepared) -> SendOutcome:
        ctx = prepared.ctx
        await self._run_hooks("on_before_send", ctx)
        if prepared.error is not None or prepared.options is None or prepared.provider is None:
            error = prepared.error or KMsgError(KMsgErrorCode.UNKNOWN_ERROR, "Message not prepared")
            return await self._finish_failure(ctx, error)
        options, provider = prepared.options, prepared.provider
        onboarding = self._onboarding_error(options, provider)
        if onboarding is not None:
            return await self._finish_failure(ctx, onboarding)
        breaker = None if self._guards is None else self._guards.breaker(provider.id)
        if breaker is not None and not breaker.allow():
            return await self._finish_failure(ctx, circuit_open_error(provider.id))
        if self._guards is not None:
            await self._guards.wait_for_tokens(provider.id, options.type)
        try:
            outcome = await provider.send(options)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a provider broke its contract; still no exception out
            logger.exception("Provider %s raised from send()", provider.id)
            outcome = Fail(
                KMsgError(
                    KMsgErrorCode.UNKNOWN_ERROR,
                    f"{type(exc).__name__}: {exc}",
                    provider_id=provider.id,
                )
            )
        unreachable = isinstance(outcome, Fail) and outcome.error.code in UNREACHABLE_CODES
        if breaker is not None and breaker.record(transport_failure=unreachable):
            await self._publish(lambda feed: [circuit_opened_event(provider.id, feed.clock())])
        if isinstance(outcome, Ok):
            result = replace(
                outcome.value,
                message_id=ctx.message_id,
                provider_id=provider.id,
                type=options.type,
                to=options.to,
            )
            return await self._finish_success(ctx, result)
        error = outcome.error.with_provider(provider.id)
        return await self._finish_failure(ctx, error)

    async def _finish_success(self, ctx: HookContext, result: SendResult) -> SendOutcome:
        if result.status is MessageStatus.PENDING:
            await self._run_hooks("on_queued", ctx, result)
        await self._run_hooks("on_success", ctx, result)
        await self._run_hooks(
            "on_final", ctx, FinalOutcome(FinalOutcomeKind.SUCCESS, result=result)
        )
        await self._publish(
            lambda feed: [
                sent_event(
                    self._message_context(ctx),
                    result,
                    timestamp=feed.clock(),
                    mask_recipients=feed.config.mask_recipients,
                )
            ]
        )
        return Ok(result)

    async def _finish_failure(self, ctx: HookContext, error: KMsgError) -> SendOutcome:
        if error.request_id is None and ctx.request_id is not None:
            error = error.with_request_id(ctx.request_id)
        await self._run_hooks("on_error", ctx, error)
        await self._run_hooks("on_final", ctx, FinalOutcome(FinalOutcomeKind.FAILURE, error=error))

        def build(feed: WebhookFeed) -> list[WebhookEvent]:
            message = self._message_context(ctx)
            now = feed.clock()
            events = []
            if error.code in UNREACHABLE_CODES and error.provider_id is not None:
                events.append(provider_error_event(message, error, timestamp=now))
            mask = feed.config.mask_recipients
            events.append(failed_event(message, error, timestamp=now, mask_recipients=mask))
            return events

        await self._publish(build)
        return Fail(error)

    async def _publish(self, build: Callable[[WebhookFeed], list[WebhookEvent]]) -> None:
        """Emit events after the hooks; nothing here may fail the send."""
        if self._feed is None:
            return
        try:
            events = build(self._feed)
        except Exception:
            logger.exception("Building webhook events failed; send outcome unaffected")
            return
        for event in events:
            await self._feed.publish(event)

    @staticmethod
    def _message_context(ctx: HookContext) -> MessageContext:
        options = ctx.options
        template_id: str | None = None
        if options is not None and options.type in TEMPLATE_MESSAGE_TYPES:
            template_id = getattr(options, "template_id", None) or None
        return MessageContext(
            message_id=ctx.message_id,
            type=options.type if options is not None else MessageType.SMS,
            to=options.to if options is not None else "",
            from_=options.from_ if options is not None else None,
            provider_id=ctx.provider_id,
            template_id=template_id,
            correlation_id=ctx.request_id,
            attempt=ctx.attempt,
        )

    async def _run_hooks(self, name: str, *args: Any) -> None:
        for hooks in self._hooks:
            hook = getattr(hooks, name)
            if hook is None:
                continue
            try:
                returned = hook(*args)
                if inspect.isawaitable(returned):
                    await returned
            except asyncio.CancelledError:
                raise
            except Exception:
                # A broken hook must not change the outcome of a message.
                logger.exception("KMsg hook %s raised; ignored", name)


def _str_option(options: Mapping[str, Any], key: str) -> str | None:
    value = options.get(key)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _int_option(options: Mapping[str, Any], key: str) -> int | None:
    value = options.get(key)
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and value > 0:
        return int(value)
    return None
