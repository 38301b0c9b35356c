"""Message types, per-type send options, statuses, warnings and results.

Every options class is a frozen, keyword-only dataclass. Fields common to all types live in
:class:`BaseSendOptions`; ``from_`` is the sender (``from`` is a Python keyword). A plain
mapping in the original's camelCase shape is accepted by ``KMsg.send`` and converted by
:func:`kmsg_webhook.messaging.inputs.parse_send_input`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, TypeAlias

from .errors import KMsgError
from .result import Result


class MessageType(StrEnum):
    """The 14 message types, in the original's order."""

    ALIMTALK = "ALIMTALK"
    FRIENDTALK = "FRIENDTALK"
    SMS = "SMS"
    LMS = "LMS"
    MMS = "MMS"
    NSA = "NSA"
    VOICE = "VOICE"
    FAX = "FAX"
    RCS_SMS = "RCS_SMS"
    RCS_LMS = "RCS_LMS"
    RCS_MMS = "RCS_MMS"
    RCS_TPL = "RCS_TPL"
    RCS_ITPL = "RCS_ITPL"
    RCS_LTPL = "RCS_LTPL"


KMSG_MESSAGE_TYPES: tuple[MessageType, ...] = tuple(MessageType)

#: Types whose body is a vendor template (``template_id`` + ``variables``).
TEMPLATE_MESSAGE_TYPES: frozenset[MessageType] = frozenset(
    {
        MessageType.ALIMTALK,
        MessageType.NSA,
        MessageType.RCS_TPL,
        MessageType.RCS_ITPL,
        MessageType.RCS_LTPL,
    }
)

#: Types whose ``text`` the facade fills from ``variables`` before sending.
TEXT_INTERPOLATED_TYPES: frozenset[MessageType] = frozenset(
    {
        MessageType.SMS,
        MessageType.LMS,
        MessageType.MMS,
        MessageType.FRIENDTALK,
        MessageType.VOICE,
        MessageType.RCS_SMS,
        MessageType.RCS_LMS,
        MessageType.RCS_MMS,
    }
)


def is_message_type(value: object) -> bool:
    """Whether ``value`` is one of the 14 type strings."""
    return isinstance(value, str) and value in MessageType.__members__


class MessageStatus(StrEnum):
    """Status right after a send."""

    PENDING = "PENDING"
    SENT = "SENT"
    FAILED = "FAILED"

    @classmethod
    def normalize(cls, value: object) -> MessageStatus:
        """Trim and upper-case; anything unknown becomes ``PENDING`` (as the original)."""
        text = str(value).strip().upper() if value is not None else ""
        return cls(text) if text in cls.__members__ else cls.PENDING


class DeliveryStatus(StrEnum):
    """Status reported by delivery polling."""

    PENDING = "PENDING"
    SENT = "SENT"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"

    @property
    def is_terminal(self) -> bool:
        """Polling stops at these (UNKNOWN counts as terminal)."""
        return self not in (DeliveryStatus.PENDING, DeliveryStatus.SENT)

    @property
    def is_pollable(self) -> bool:
        return not self.is_terminal


class SendWarningCode(StrEnum):
    """Known warning codes (warnings may carry other strings too)."""

    FAILOVER_UNSUPPORTED_PROVIDER = "FAILOVER_UNSUPPORTED_PROVIDER"
    FAILOVER_PARTIAL_PROVIDER = "FAILOVER_PARTIAL_PROVIDER"
    FALLBACK_CONTENT_MISSING = "FALLBACK_CONTENT_MISSING"
    API_FAILOVER_SENDER_MISSING = "API_FAILOVER_SENDER_MISSING"


@dataclass(frozen=True, slots=True)
class SendWarning:
    """A non-fatal remark on a successful send (e.g. failover only partly mapped)."""

    code: str
    message: str
    provider_id: str | None = None
    mapped_fields: tuple[str, ...] = ()
    unsupported_fields: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        """camelCase JSON form, as it appears in webhook event data."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        details: dict[str, Any] = {}
        if self.provider_id is not None:
            details["providerId"] = self.provider_id
        if self.mapped_fields:
            details["mappedFields"] = list(self.mapped_fields)
        if self.unsupported_fields:
            details["unsupportedFields"] = list(self.unsupported_fields)
        if details:
            out["details"] = details
        return out


VariableValue: TypeAlias = str | int | float | bool | datetime | None
Variables: TypeAlias = Mapping[str, VariableValue]


class FallbackChannel(StrEnum):
    SMS = "sms"
    LMS = "lms"


@dataclass(frozen=True, slots=True)
class FailoverOptions:
    """The standard ALIMTALK failover request; each provider maps it to native fields."""

    enabled: bool | None = None
    fallback_channel: FallbackChannel | None = None
    fallback_content: str | None = None
    fallback_title: str | None = None


@dataclass(frozen=True, slots=True)
class MessageButton:
    """A Kakao/RCS button. ``type`` is vendor-defined (``WL`` web link, ``AL`` app link, ...)."""

    name: str
    type: str = "WL"
    url_pc: str | None = None
    url_mobile: str | None = None

    def to_wire(self) -> dict[str, str]:
        out = {"name": self.name, "type": self.type}
        if self.url_pc is not None:
            out["urlPc"] = self.url_pc
        if self.url_mobile is not None:
            out["urlMobile"] = self.url_mobile
        return out


@dataclass(frozen=True, slots=True)
class BinaryInput:
    """A file given either by reference (URL or path) or by its bytes."""

    ref: str | None = None
    data: bytes | None = None
    filename: str | None = None
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class MessageMedia:
    image: BinaryInput | None = None


@dataclass(frozen=True, slots=True)
class KakaoOptions:
    """Kakao sender settings: ``profile_id`` is the sender key / pfId, ``plus_id`` the channel."""

    profile_id: str | None = None
    plus_id: str | None = None
    disable_sms: bool | None = None
    ad_flag: bool | None = None
    buttons: tuple[MessageButton, ...] = ()
    image_id: str | None = None
    image_link: str | None = None


@dataclass(frozen=True, slots=True)
class NaverOptions:
    talk_id: str | None = None
    template_id: str | None = None
    disable_sms: bool | None = None
    variables: Variables | None = None
    buttons: tuple[MessageButton, ...] = ()


class VoiceType(StrEnum):
    FEMALE = "FEMALE"
    MALE = "MALE"


@dataclass(frozen=True, slots=True)
class VoiceOptions:
    voice_type: VoiceType | None = None
    header_message: str | None = None
    tail_message: str | None = None
    reply_range: int | None = None
    counselor_number: str | None = None


@dataclass(frozen=True, slots=True)
class FaxOptions:
    file_ids: tuple[str, ...] = ()
    file_urls: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RcsAdditionalBody:
    title: str | None = None
    description: str | None = None
    image_id: str | None = None
    buttons: tuple[MessageButton, ...] = ()


@dataclass(frozen=True, slots=True)
class RcsOptions:
    brand_id: str | None = None
    template_id: str | None = None
    copy_allowed: bool | None = None
    variables: Variables | None = None
    mms_type: str | None = None
    commercial_type: str | None = None
    disable_sms: bool | None = None
    buttons: tuple[MessageButton, ...] = ()
    additional_body: RcsAdditionalBody | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BaseSendOptions:
    """Fields every message type has.

    ``message_id`` is the caller's correlation id (the facade makes a UUID4 when missing);
    ``provider_id`` forces routing; ``request_id`` becomes the webhook ``correlationId``;
    ``provider_options`` is the per-vendor escape hatch (keys documented per provider).
    """

    ALLOWED_TYPES: ClassVar[frozenset[MessageType]] = frozenset()

    to: str
    from_: str | None = None
    message_id: str | None = None
    provider_id: str | None = None
    scheduled_at: datetime | None = None
    country: str | None = None
    custom_fields: Mapping[str, str] = field(default_factory=dict)
    provider_options: Mapping[str, Any] = field(default_factory=dict)
    request_id: str | None = None
    attempt: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SmsSendOptions(BaseSendOptions):
    """SMS, LMS or MMS (``subject`` applies to LMS/MMS, ``media``/``image_url`` to MMS)."""

    ALLOWED_TYPES: ClassVar[frozenset[MessageType]] = frozenset(
        {MessageType.SMS, MessageType.LMS, MessageType.MMS}
    )

    type: MessageType = MessageType.SMS
    text: str
    subject: str | None = None
    media: MessageMedia | None = None
    image_url: str | None = None
    variables: Variables | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AlimTalkSendOptions(BaseSendOptions):
    ALLOWED_TYPES: ClassVar[frozenset[MessageType]] = frozenset({MessageType.ALIMTALK})

    type: MessageType = MessageType.ALIMTALK
    template_id: str
    variables: Variables
    kakao: KakaoOptions | None = None
    failover: FailoverOptions | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FriendTalkSendOptions(BaseSendOptions):
    ALLOWED_TYPES: ClassVar[frozenset[MessageType]] = frozenset({MessageType.FRIENDTALK})

    type: MessageType = MessageType.FRIENDTALK
    text: str
    media: MessageMedia | None = None
    image_url: str | None = None
    buttons: tuple[MessageButton, ...] = ()
    variables: Variables | None = None
    kakao: KakaoOptions | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NsaSendOptions(BaseSendOptions):
    ALLOWED_TYPES: ClassVar[frozenset[MessageType]] = frozenset({MessageType.NSA})

    type: MessageType = MessageType.NSA
    template_id: str
    variables: Variables
    naver: NaverOptions | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class VoiceSendOptions(BaseSendOptions):
    ALLOWED_TYPES: ClassVar[frozenset[MessageType]] = frozenset({MessageType.VOICE})

    type: MessageType = MessageType.VOICE
    text: str
    variables: Variables | None = None
    voice: VoiceOptions | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FaxSendOptions(BaseSendOptions):
    ALLOWED_TYPES: ClassVar[frozenset[MessageType]] = frozenset({MessageType.FAX})

    type: MessageType = MessageType.FAX
    fax: FaxOptions


@dataclass(frozen=True, slots=True, kw_only=True)
class RcsTextSendOptions(BaseSendOptions):
    ALLOWED_TYPES: ClassVar[frozenset[MessageType]] = frozenset(
        {MessageType.RCS_SMS, MessageType.RCS_LMS, MessageType.RCS_MMS}
    )

    type: MessageType = MessageType.RCS_SMS
    text: str
    subject: str | None = None
    media: MessageMedia | None = None
    image_url: str | None = None
    variables: Variables | None = None
    rcs: RcsOptions | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RcsTemplateSendOptions(BaseSendOptions):
    ALLOWED_TYPES: ClassVar[frozenset[MessageType]] = frozenset(
        {MessageType.RCS_TPL, MessageType.RCS_ITPL, MessageType.RCS_LTPL}
    )

    type: MessageType = MessageType.RCS_TPL
    template_id: str
    variables: Variables
    rcs: RcsOptions | None = None


SendOptions: TypeAlias = (
    SmsSendOptions
    | AlimTalkSendOptions
    | FriendTalkSendOptions
    | NsaSendOptions
    | VoiceSendOptions
    | FaxSendOptions
    | RcsTextSendOptions
    | RcsTemplateSendOptions
)

#: What ``KMsg.send`` accepts for one message: a typed options object or a mapping.
SendInput: TypeAlias = SendOptions | Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class SendResult:
    """What a successful send returns. ``to`` is the recipient exactly as given."""

    message_id: str
    provider_id: str
    status: MessageStatus
    type: MessageType
    to: str
    provider_message_id: str | None = None
    warnings: tuple[SendWarning, ...] = ()
    raw: Any = field(default=None, compare=False, repr=False)


SendOutcome: TypeAlias = Result[SendResult, KMsgError]


@dataclass(frozen=True, slots=True)
class BatchSendResult:
    """One result per input, in input order."""

    total: int
    results: tuple[SendOutcome, ...]


@dataclass(frozen=True, slots=True)
class DeliveryStatusQuery:
    provider_message_id: str
    type: MessageType
    to: str
    requested_at: datetime
    scheduled_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class DeliveryStatusResult:
    provider_id: str
    provider_message_id: str
    status: DeliveryStatus
    status_code: str | None = None
    status_message: str | None = None
    sent_at: datetime | None = None
    delivered_at: datetime | None = None
    failed_at: datetime | None = None
    raw: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class BalanceQuery:
    channel: MessageType | None = None


@dataclass(frozen=True, slots=True)
class BalanceResult:
    provider_id: str
    amount: float
    channel: MessageType | None = None
    currency: str = "KRW"
    raw: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ProviderHealth:
    healthy: bool
    issues: tuple[str, ...] = ()
    latency_ms: float | None = None
    data: Mapping[str, str] = field(default_factory=dict)
