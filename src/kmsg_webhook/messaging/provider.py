"""The ``Provider`` protocol and what the HTTP providers share.

A provider's ``send`` never raises for vendor, network or validation failures: it returns
``Fail(KMsgError)``. Only constructors raise (:class:`ProviderConfigError`), and
``asyncio.CancelledError`` is always let through so task cancellation keeps working.

Shared pieces: :class:`HttpTransport` (one lazily created ``aiohttp.ClientSession`` per
provider, a total timeout per request, exception → ``KMsgError`` mapping) and
:class:`RetryPolicy` / :func:`call_with_retry` (tenacity, retrying only retryable errors).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Protocol, Self, TypeVar, runtime_checkable

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_result, stop_after_attempt

from .channels import KakaoChannel, KakaoChannelCategories
from .errors import KMsgError, KMsgErrorCode, ProviderConfigError
from .result import Fail, Ok, Result
from .templates import Template, TemplateInput, TemplateStatus, TemplateUpdate
from .types import (
    BalanceQuery,
    BalanceResult,
    DeliveryStatusQuery,
    DeliveryStatusResult,
    MessageType,
    ProviderHealth,
    SendOptions,
    SendResult,
)

logger = logging.getLogger("kmsg_webhook.messaging")

T = TypeVar("T")

SleepFn = Callable[[float], Awaitable[None]]

#: Korea Standard Time; vendors that take local schedule times expect KST (no DST since 1988).
KST = timezone(timedelta(hours=9), "KST")


@runtime_checkable
class Provider(Protocol):
    """What the facade needs from a provider."""

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def supported_types(self) -> frozenset[MessageType]: ...

    async def send(self, options: SendOptions) -> Result[SendResult, KMsgError]: ...


@runtime_checkable
class DeliveryStatusProvider(Protocol):
    """Optional capability: ask the vendor what happened to a message."""

    async def get_delivery_status(
        self, query: DeliveryStatusQuery
    ) -> Result[DeliveryStatusResult | None, KMsgError]: ...


@runtime_checkable
class BalanceProvider(Protocol):
    """Optional capability: the account balance."""

    async def get_balance(
        self, query: BalanceQuery | None = None
    ) -> Result[BalanceResult, KMsgError]: ...


@runtime_checkable
class TemplateProvider(Protocol):
    """Optional capability: manage AlimTalk templates (IWINV, Aligo, the mock).

    ``sender_key`` names the Kakao channel for vendors that keep templates per channel
    (Aligo); it defaults to the provider's configured sender key.
    """

    async def create_template(
        self, template: TemplateInput, *, sender_key: str | None = None
    ) -> Result[Template, KMsgError]: ...

    async def update_template(
        self, code: str, update: TemplateUpdate, *, sender_key: str | None = None
    ) -> Result[Template, KMsgError]: ...

    async def delete_template(
        self, code: str, *, sender_key: str | None = None
    ) -> Result[None, KMsgError]: ...

    async def get_template(
        self, code: str, *, sender_key: str | None = None
    ) -> Result[Template, KMsgError]: ...

    async def list_templates(
        self,
        *,
        status: TemplateStatus | None = None,
        page: int = 1,
        limit: int = 15,
        sender_key: str | None = None,
    ) -> Result[tuple[Template, ...], KMsgError]: ...


@runtime_checkable
class TemplateInspectionProvider(Protocol):
    """Optional capability: ask Kakao to review a template (Aligo, the mock)."""

    async def request_template_inspection(
        self, code: str, *, sender_key: str | None = None
    ) -> Result[None, KMsgError]: ...


@runtime_checkable
class KakaoChannelProvider(Protocol):
    """Optional capability: list and register Kakao channels (Aligo, the mock)."""

    async def list_kakao_channels(
        self, *, plus_id: str | None = None, sender_key: str | None = None
    ) -> Result[tuple[KakaoChannel, ...], KMsgError]: ...

    async def list_kakao_channel_categories(self) -> Result[KakaoChannelCategories, KMsgError]: ...

    async def request_kakao_channel_auth(
        self, plus_id: str, phone_number: str
    ) -> Result[None, KMsgError]: ...

    async def add_kakao_channel(
        self, plus_id: str, auth_num: str, phone_number: str, category_code: str
    ) -> Result[KakaoChannel, KMsgError]: ...


@runtime_checkable
class HealthCheckProvider(Protocol):
    """Optional capability: a cheap self-check (no vendor call for the built-in providers)."""

    async def health_check(self) -> ProviderHealth: ...


@runtime_checkable
class ClosableProvider(Protocol):
    """Providers that hold network resources."""

    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------- retry policy


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Which failures to send again, and how long to wait between attempts.

    Defaults follow the original's ``RetryHandler``: 3 attempts, 1 s doubling to at most 30 s,
    up to 10 % jitter; a vendor's ``Retry-After`` wins when longer. Only errors whose
    ``retryable`` flag is true are retried, and a *timeout* is not retried unless
    ``retry_timeouts`` is set: the vendor may already have accepted the message, and none of
    the vendors offers an idempotency key, so resending could text someone twice.
    """

    max_attempts: int = 3
    initial_delay: float = 1.0
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.1
    retry_timeouts: bool = False

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_delay < 0 or self.max_delay < 0 or self.multiplier < 1:
            raise ValueError("delays must be non-negative and multiplier at least 1")

    @classmethod
    def never(cls) -> RetryPolicy:
        """Exactly one attempt."""
        return cls(max_attempts=1)

    def should_retry(self, error: KMsgError) -> bool:
        if not error.retryable:
            return False
        return error.code is not KMsgErrorCode.NETWORK_TIMEOUT or self.retry_timeouts

    def delay_before(self, next_attempt: int, error: KMsgError | None = None) -> float:
        """Seconds to wait before attempt ``next_attempt`` (2 for the first retry)."""
        base = min(self.initial_delay * self.multiplier ** max(0, next_attempt - 2), self.max_delay)
        delay = base + base * self.jitter * random.random()
        if error is not None and error.retry_after_ms is not None:
            delay = max(delay, error.retry_after_ms / 1000)
        return min(delay, self.max_delay)


async def call_with_retry(
    policy: RetryPolicy,
    operation: Callable[[], Awaitable[Result[T, KMsgError]]],
    *,
    sleep: SleepFn = asyncio.sleep,
) -> Result[T, KMsgError]:
    """Run ``operation`` until it succeeds, fails for good, or attempts run out.

    The returned failure carries the attempt number that produced it.
    """

    def is_retryable(result: Result[T, KMsgError]) -> bool:
        return isinstance(result, Fail) and policy.should_retry(result.error)

    def wait(state: RetryCallState) -> float:
        error: KMsgError | None = None
        if state.outcome is not None and not state.outcome.failed:
            last = state.outcome.result()
            if isinstance(last, Fail):
                error = last.error
        return policy.delay_before(state.attempt_number + 1, error)

    def give_up(state: RetryCallState) -> Result[T, KMsgError]:
        assert state.outcome is not None
        last: Result[T, KMsgError] = state.outcome.result()
        return last

    attempt = 0

    async def tagged() -> Result[T, KMsgError]:
        nonlocal attempt
        attempt += 1
        result = await operation()
        if isinstance(result, Fail):
            return Fail(result.error.with_attempt(attempt))
        return result

    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.max_attempts),
        wait=wait,
        retry=retry_if_result(is_retryable),
        sleep=sleep,
        retry_error_callback=give_up,
        reraise=True,
    )
    outcome: Result[T, KMsgError] = await retrying(tagged)
    return outcome


# --------------------------------------------------------------------------- HTTP transport


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    text: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = field(default=b"", repr=False)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def retry_after_ms(self) -> int | None:
        value = self.headers.get("Retry-After")
        if value is None:
            return None
        try:
            return int(float(value) * 1000)
        except ValueError:
            return None


class MalformedResponse:
    """Marker returned by :func:`parse_json` for a body that is not JSON."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def parse_json(text: str) -> Any:
    """``{}`` for an empty body, the decoded value, or :class:`MalformedResponse`."""
    if not text.strip():
        return {}
    try:
        return json.loads(text)
    except ValueError:
        return MalformedResponse(text)


def malformed_response_error(provider_id: str, response: HttpResponse) -> KMsgError:
    """A vendor answered with something that is not JSON.

    Not retryable even though it is a PROVIDER_ERROR: the vendor did answer and may have
    accepted the message.
    """
    return KMsgError(
        KMsgErrorCode.PROVIDER_ERROR,
        f"Malformed response from {provider_id} (HTTP {response.status})",
        provider_id=provider_id,
        http_status=response.status,
        provider_error_text=response.text[:200],
        retryable=False,
    )


class HttpTransport:
    """One ``aiohttp.ClientSession`` per provider, created on first use.

    A session passed in is used as is and not closed by :meth:`aclose` (the caller owns it).
    """

    def __init__(
        self,
        provider_id: str,
        *,
        timeout: float,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._provider_id = provider_id
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._owns_session = session is None

    async def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily because a ClientSession must be made inside a running event loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
            self._owns_session = True
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        json_body: Any = None,
        form: aiohttp.FormData | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Result[HttpResponse, KMsgError]:
        """Send one request; transport failures come back as NETWORK_* failures."""
        session = await self._get_session()
        kwargs: dict[str, Any] = {"headers": dict(headers or {}), "timeout": self._timeout}
        if json_body is not None:
            kwargs["data"] = json.dumps(json_body, ensure_ascii=False).encode("utf-8")
        elif form is not None:
            kwargs["data"] = form
        if params is not None:
            kwargs["params"] = dict(params)
        try:
            async with session.request(method, url, **kwargs) as response:
                body = await response.read()
                text = body.decode("utf-8", errors="replace")
                return Ok(HttpResponse(response.status, text, dict(response.headers), body))
        except TimeoutError:
            return Fail(
                KMsgError(
                    KMsgErrorCode.NETWORK_TIMEOUT,
                    f"Request to {self._provider_id} timed out after {self._timeout.total} s",
                    provider_id=self._provider_id,
                )
            )
        except aiohttp.ClientError as exc:
            return Fail(
                KMsgError(
                    KMsgErrorCode.NETWORK_ERROR,
                    str(exc) or type(exc).__name__,
                    provider_id=self._provider_id,
                )
            )

    async def aclose(self) -> None:
        if self._session is not None and self._owns_session and not self._session.closed:
            await self._session.close()
        self._session = None


# --------------------------------------------------------------------------- small helpers


def join_url(base: str, path: str) -> str:
    return base.rstrip("/") + "/" + path.lstrip("/")


def validate_base_url(value: str, setting: str, provider_id: str) -> str:
    """Return ``value`` without a trailing slash, or raise for an unusable URL."""
    text = value.strip()
    if not text.startswith(("http://", "https://")) or len(text) <= len("https://"):
        raise ProviderConfigError(
            f"{provider_id}: {setting} must be an http(s) URL, got {value!r}",
            provider_id=provider_id,
        )
    return text.rstrip("/")


def to_kst(moment: datetime) -> datetime:
    """A schedule time in KST; naive datetimes are taken as UTC (as everywhere in the package)."""
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    return aware.astimezone(KST)


def parse_kst(value: Any) -> datetime | None:
    """A vendor's local ``yyyy-MM-dd HH:mm[:ss]`` or ``yyyyMMddHHmmss`` time, read as KST."""
    if not isinstance(value, str) or not value.strip():
        return None
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y%m%d%H%M%S"):
        try:
            return datetime.strptime(value.strip(), fmt).replace(tzinfo=KST)
        except ValueError:
            continue
    return None


def now_utc() -> datetime:
    return datetime.now(UTC)


def unexpected_error(provider_id: str, exc: Exception) -> KMsgError:
    """A bug or surprise inside a provider, turned into a failure instead of an exception."""
    logger.exception("Unexpected error in provider %s", provider_id)
    return KMsgError(
        KMsgErrorCode.UNKNOWN_ERROR,
        f"{type(exc).__name__}: {exc}",
        provider_id=provider_id,
    )


def env_value(env: Mapping[str, str], name: str) -> str | None:
    """A non-blank environment value, stripped."""
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def parse_env_bool(value: str | None) -> bool | None:
    if value is None:
        return None
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    return None


def require_env(env: Mapping[str, str], provider_id: str, *names: str) -> dict[str, str]:
    """The named variables, or a :class:`ProviderConfigError` naming every missing one."""
    values = {name: env_value(env, name) for name in names}
    missing = tuple(name for name, value in values.items() if value is None)
    if missing:
        raise ProviderConfigError(
            f"{provider_id}: missing environment variable(s): {', '.join(missing)}",
            provider_id=provider_id,
            missing=missing,
        )
    return {name: value for name, value in values.items() if value is not None}


class HttpProviderBase:
    """Transport, retry policy and lifecycle shared by the HTTP providers."""

    def __init__(
        self,
        provider_id: str,
        *,
        timeout: float,
        retry: RetryPolicy,
        session: aiohttp.ClientSession | None,
        sleep: SleepFn,
    ) -> None:
        if timeout <= 0:
            raise ProviderConfigError(
                f"{provider_id}: timeout must be positive", provider_id=provider_id
            )
        self._transport = HttpTransport(provider_id, timeout=timeout, session=session)
        self._retry = retry
        self._sleep = sleep

    async def _request(
        self,
        method: str,
        url: str,
        read: Callable[[HttpResponse], Result[T, KMsgError]],
        *,
        headers: Callable[[], Mapping[str, str]] | None = None,
        json_body: Any = None,
        form: Callable[[], aiohttp.FormData] | None = None,
        params: Mapping[str, str] | None = None,
        retry: bool = True,
    ) -> Result[T, KMsgError]:
        """``method url`` under the retry policy, each response turned into a result by
        ``read``; a transport failure is returned as it is. ``headers`` and ``form`` are built
        for each attempt (signatures carry a time and a salt; FormData is single-use).

        ``retry=False`` makes exactly one attempt: for calls that change state at the vendor
        (templates, channels) with no idempotency key, where a 5xx may hide a success and a
        second attempt would duplicate it; the caller gets the retryable failure to act on."""

        async def attempt() -> Result[T, KMsgError]:
            sent = await self._transport.request(
                method,
                url,
                headers=None if headers is None else headers(),
                json_body=json_body,
                form=None if form is None else form(),
                params=params,
            )
            if isinstance(sent, Fail):
                return sent
            return read(sent.value)

        policy = self._retry if retry else RetryPolicy.never()
        return await call_with_retry(policy, attempt, sleep=self._sleep)

    async def aclose(self) -> None:
        """Close the provider's HTTP session (if it created it)."""
        await self._transport.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
