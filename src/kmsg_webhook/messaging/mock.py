"""``MockProvider``: an in-memory provider you can script (succeed, fail with a code, delay).

It ships inside the package so applications can test their own send paths against it.
:class:`TrackableMockProvider` adds a scriptable ``get_delivery_status`` for tracking tests
(the original mock had none).
"""

from __future__ import annotations

import asyncio
import string
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from secrets import choice

from .errors import KMsgError, KMsgErrorCode
from .onboarding import (
    ProviderOnboardingSpec,
    find_provider_onboarding_spec,
    get_provider_onboarding_spec,
)
from .provider import SleepFn
from .result import Fail, Ok, Result
from .types import (
    KMSG_MESSAGE_TYPES,
    AlimTalkSendOptions,
    DeliveryStatusQuery,
    DeliveryStatusResult,
    MessageStatus,
    MessageType,
    ProviderHealth,
    SendOptions,
    SendResult,
    SendWarning,
    SendWarningCode,
)

_CRYPTO_CODES = frozenset(
    {
        KMsgErrorCode.CRYPTO_CONFIG_ERROR,
        KMsgErrorCode.CRYPTO_ENCRYPT_FAILED,
        KMsgErrorCode.CRYPTO_DECRYPT_FAILED,
        KMsgErrorCode.CRYPTO_HASH_FAILED,
        KMsgErrorCode.CRYPTO_POLICY_VIOLATION,
    }
)


class MockOutcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    TIMEOUT = "timeout"
    DELAY = "delay"


@dataclass(frozen=True, slots=True)
class MockStep:
    """One scripted reaction. ``DELAY`` waits ``duration`` seconds, then takes the next step."""

    outcome: MockOutcome
    code: KMsgErrorCode = KMsgErrorCode.PROVIDER_ERROR
    message: str | None = None
    provider_error_code: str | None = None
    http_status: int | None = None
    retry_after_ms: int | None = None
    duration: float = 0.0

    @classmethod
    def success(cls) -> MockStep:
        return cls(MockOutcome.SUCCESS)

    @classmethod
    def failure(
        cls,
        code: KMsgErrorCode = KMsgErrorCode.PROVIDER_ERROR,
        *,
        message: str | None = None,
        provider_error_code: str | None = None,
        http_status: int | None = None,
        retry_after_ms: int | None = None,
    ) -> MockStep:
        return cls(
            MockOutcome.FAILURE,
            code,
            message=message,
            provider_error_code=provider_error_code,
            http_status=http_status,
            retry_after_ms=retry_after_ms,
        )

    @classmethod
    def delay(cls, seconds: float) -> MockStep:
        return cls(MockOutcome.DELAY, duration=seconds)

    @classmethod
    def timeout(cls, seconds: float = 0.0) -> MockStep:
        return cls(MockOutcome.TIMEOUT, KMsgErrorCode.NETWORK_TIMEOUT, duration=seconds)


def _base36(length: int) -> str:
    return "".join(choice(string.digits + string.ascii_lowercase) for _ in range(length))


class MockProvider:
    """Succeeds unless scripted otherwise; records every call in :attr:`calls`."""

    def __init__(
        self,
        *,
        id: str = "mock",
        name: str = "Mock Provider",
        supported_types: Iterable[MessageType] = KMSG_MESSAGE_TYPES,
        sleep: SleepFn = asyncio.sleep,
        max_batch_size: int | None = None,
    ) -> None:
        self._id = id
        self._name = name
        self._types = frozenset(supported_types)
        self._sleep = sleep
        self._steps: deque[MockStep] = deque()
        self._pending_failures = 0
        self.calls: list[SendOptions] = []
        self.max_batch_size = max_batch_size

    @property
    def id(self) -> str:
        return self._id

    @property
    def name(self) -> str:
        return self._name

    @property
    def supported_types(self) -> frozenset[MessageType]:
        return self._types

    # scripting ------------------------------------------------------------------------

    def script(self, *steps: MockStep) -> None:
        """Queue reactions; each send consumes steps until a success, failure or timeout."""
        self._steps.extend(steps)

    def fail_next(self, count: int = 1, code: KMsgErrorCode = KMsgErrorCode.PROVIDER_ERROR) -> None:
        """The next ``count`` sends (after any script) fail with ``code``."""
        self._steps.extend(MockStep.failure(code) for _ in range(count))

    def succeed(self) -> None:
        """Forget every scripted step: all sends succeed."""
        self._steps.clear()

    def clear_history(self) -> None:
        self.calls.clear()

    # provider API ---------------------------------------------------------------------

    async def send(self, options: SendOptions) -> Result[SendResult, KMsgError]:
        self.calls.append(options)
        while self._steps:
            step = self._steps.popleft()
            if step.outcome is MockOutcome.DELAY:
                await self._sleep(step.duration)
                continue
            if step.outcome is MockOutcome.TIMEOUT:
                await self._sleep(step.duration)
                return Fail(
                    KMsgError(
                        KMsgErrorCode.NETWORK_TIMEOUT,
                        step.message or "Mock provider timed out",
                        provider_id=self._id,
                        provider_error_code=step.provider_error_code or "TIMEOUT",
                    )
                )
            if step.outcome is MockOutcome.FAILURE:
                code = step.code if step.code not in _CRYPTO_CODES else KMsgErrorCode.PROVIDER_ERROR
                return Fail(
                    KMsgError(
                        code,
                        step.message or f"Mock failure ({code.value})",
                        provider_id=self._id,
                        provider_error_code=step.provider_error_code,
                        http_status=step.http_status,
                        retry_after_ms=step.retry_after_ms,
                    )
                )
            break  # SUCCESS
        warnings: tuple[SendWarning, ...] = ()
        if (
            isinstance(options, AlimTalkSendOptions)
            and options.failover is not None
            and options.failover.enabled is True
        ):
            warnings = (
                SendWarning(
                    SendWarningCode.FAILOVER_UNSUPPORTED_PROVIDER,
                    "The mock provider has no native ALIMTALK failover.",
                    provider_id=self._id,
                    unsupported_fields=("failover",),
                ),
            )
        return Ok(
            SendResult(
                message_id=options.message_id or "",
                provider_id=self._id,
                status=MessageStatus.SENT,
                type=options.type,
                to=options.to,
                provider_message_id=f"mock-{int(time.time() * 1000)}-{_base36(9)}",
                warnings=warnings,
            )
        )

    async def health_check(self) -> ProviderHealth:
        return ProviderHealth(healthy=True, data={"provider": self._id})

    def get_onboarding_spec(self) -> ProviderOnboardingSpec:
        # A mock standing in for a real vendor (id "solapi", ...) follows that vendor's policy.
        return find_provider_onboarding_spec(self._id) or get_provider_onboarding_spec("mock")


class TrackableMockProvider(MockProvider):
    """A mock that also answers delivery-status queries from a script.

    ``set_delivery_status(provider_message_id, result)`` fixes the answer for one message;
    unknown ids answer ``None`` (the vendor does not know the message yet).
    """

    def __init__(
        self,
        *,
        id: str = "mock",
        name: str = "Mock Provider",
        supported_types: Iterable[MessageType] = KMSG_MESSAGE_TYPES,
        sleep: SleepFn = asyncio.sleep,
    ) -> None:
        super().__init__(id=id, name=name, supported_types=supported_types, sleep=sleep)
        self._statuses: dict[str, deque[Result[DeliveryStatusResult | None, KMsgError]]] = {}
        self.status_queries: list[DeliveryStatusQuery] = []

    def set_delivery_status(
        self, provider_message_id: str, *answers: Result[DeliveryStatusResult | None, KMsgError]
    ) -> None:
        """Queue answers for one message; the last one repeats."""
        self._statuses[provider_message_id] = deque(answers)

    async def get_delivery_status(
        self, query: DeliveryStatusQuery
    ) -> Result[DeliveryStatusResult | None, KMsgError]:
        self.status_queries.append(query)
        answers = self._statuses.get(query.provider_message_id)
        if not answers:
            return Ok(None)
        return answers.popleft() if len(answers) > 1 else answers[0]
