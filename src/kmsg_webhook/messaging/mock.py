"""``MockProvider``: an in-memory provider you can script (succeed, fail with a code, delay).

It also keeps AlimTalk templates and Kakao channels in memory (seeded with ``MOCK_TPL_SEED``
"Hello #{name}", approved, and the channel ``@mock`` / ``mock-sender-seed``);
``set_template_status`` scripts Kakao's review.

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
from dataclasses import dataclass, replace
from enum import StrEnum
from secrets import choice

from .channels import (
    KakaoChannel,
    KakaoChannelCategories,
    KakaoChannelCategory,
    normalize_plus_id,
)
from .errors import KMsgError, KMsgErrorCode, fail_invalid_request
from .onboarding import (
    ProviderOnboardingSpec,
    find_provider_onboarding_spec,
    get_provider_onboarding_spec,
)
from .provider import SleepFn, now_utc
from .result import Fail, Ok, Result
from .templates import (
    Template,
    TemplateInput,
    TemplateStatus,
    TemplateUpdate,
    find_template,
    placeholders,
    revised_template,
    template_page,
    validate_template,
)
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


#: The auth number the mock's Kakao channel auth "sends" to the admin phone.
MOCK_AUTH_NUMBER = "123456"

MOCK_CATEGORIES = KakaoChannelCategories(
    first=(KakaoChannelCategory("001", "Services"),),
    second=(KakaoChannelCategory("001001", "Delivery", "001"),),
    third=(KakaoChannelCategory("001001001", "Parcel delivery", "001001"),),
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
        seeded = now_utc()
        self._templates: dict[str, Template] = {
            "MOCK_TPL_SEED": Template(
                id="MOCK_TPL_SEED",
                code="MOCK_TPL_SEED",
                name="Seed",
                content="Hello #{name}",
                status=TemplateStatus.APPROVED,
                provider_id=id,
                variables=("name",),
                created_at=seeded,
                updated_at=seeded,
            )
        }
        self._template_seq = 0
        self._channels: dict[str, KakaoChannel] = {
            "mock-sender-seed": KakaoChannel(
                provider_id=id, sender_key="mock-sender-seed", plus_id="@mock", status="A"
            )
        }
        self._channel_seq = 0
        self._channel_auth: dict[str, str] = {}

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

    # templates and Kakao channels (in memory) ------------------------------------------

    def set_template_status(self, code: str, status: TemplateStatus) -> None:
        """Script Kakao's review: the template's status as later reads will report it."""
        template = self._templates[code]
        self._templates[code] = replace(template, status=status, updated_at=now_utc())

    def _template_missing(self, code: str) -> Fail[KMsgError]:
        return Fail(
            KMsgError(
                KMsgErrorCode.TEMPLATE_NOT_FOUND, f"no template {code!r}", provider_id=self._id
            )
        )

    async def create_template(
        self, template: TemplateInput, *, sender_key: str | None = None
    ) -> Result[Template, KMsgError]:
        checked = validate_template(template, provider_id=self._id)
        if isinstance(checked, Fail):
            return checked
        self._template_seq += 1
        code = f"MOCK_TPL_{self._template_seq}"
        now = now_utc()
        created = Template(
            id=code,
            code=code,
            name=template.name,
            content=template.content,
            status=TemplateStatus.PENDING,
            provider_id=self._id,
            category=template.category,
            buttons=template.buttons,
            variables=placeholders(template.content),
            created_at=now,
            updated_at=now,
            sender_key=sender_key,
        )
        self._templates[code] = created
        return Ok(created)

    async def update_template(
        self, code: str, update: TemplateUpdate, *, sender_key: str | None = None
    ) -> Result[Template, KMsgError]:
        current = self._templates.get(code)
        if current is None:
            return self._template_missing(code)
        merged = update.apply(current)
        checked = validate_template(merged, provider_id=self._id)
        if isinstance(checked, Fail):
            return checked
        updated = revised_template(current, merged, TemplateStatus.PENDING)
        self._templates[code] = updated
        return Ok(updated)

    async def delete_template(
        self, code: str, *, sender_key: str | None = None
    ) -> Result[None, KMsgError]:
        if self._templates.pop(code, None) is None:
            return self._template_missing(code)
        return Ok(None)

    async def get_template(
        self, code: str, *, sender_key: str | None = None
    ) -> Result[Template, KMsgError]:
        return find_template(self._templates.values(), code, self._id)

    async def list_templates(
        self,
        *,
        status: TemplateStatus | None = None,
        page: int = 1,
        limit: int = 15,
        sender_key: str | None = None,
    ) -> Result[tuple[Template, ...], KMsgError]:
        return template_page(
            self._templates.values(), status=status, page=page, limit=limit, provider_id=self._id
        )

    async def request_template_inspection(
        self, code: str, *, sender_key: str | None = None
    ) -> Result[None, KMsgError]:
        if code not in self._templates:
            return self._template_missing(code)
        self.set_template_status(code, TemplateStatus.INSPECTION)
        return Ok(None)

    async def list_kakao_channels(
        self, *, plus_id: str | None = None, sender_key: str | None = None
    ) -> Result[tuple[KakaoChannel, ...], KMsgError]:
        wanted = normalize_plus_id(plus_id) if plus_id else None
        return Ok(
            tuple(
                c
                for c in self._channels.values()
                if (wanted is None or c.plus_id == wanted)
                and (sender_key is None or c.sender_key == sender_key)
            )
        )

    async def list_kakao_channel_categories(self) -> Result[KakaoChannelCategories, KMsgError]:
        return Ok(MOCK_CATEGORIES)

    async def request_kakao_channel_auth(
        self, plus_id: str, phone_number: str
    ) -> Result[None, KMsgError]:
        if not plus_id.strip() or not phone_number.strip():
            return fail_invalid_request(
                "plus_id and phone_number are required", provider_id=self._id
            )
        self._channel_auth[normalize_plus_id(plus_id)] = MOCK_AUTH_NUMBER
        return Ok(None)

    async def add_kakao_channel(
        self, plus_id: str, auth_num: str, phone_number: str, category_code: str
    ) -> Result[KakaoChannel, KMsgError]:
        wanted = normalize_plus_id(plus_id)
        if self._channel_auth.get(wanted) != auth_num.strip():
            return fail_invalid_request(
                f"no matching auth request for {wanted} (request_kakao_channel_auth first)",
                provider_id=self._id,
            )
        if category_code not in {c.code for c in MOCK_CATEGORIES.third}:
            return fail_invalid_request(
                f"unknown category code {category_code!r}", provider_id=self._id
            )
        del self._channel_auth[wanted]
        self._channel_seq += 1
        now = now_utc()
        channel = KakaoChannel(
            provider_id=self._id,
            sender_key=f"mock-sender-{self._channel_seq}",
            plus_id=wanted,
            status="A",
            created_at=now,
            updated_at=now,
        )
        self._channels[channel.sender_key] = channel
        return Ok(channel)

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
