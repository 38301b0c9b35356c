"""``KMsgError``: the one error type of the send path, with the original's 17 codes.

Expected failures (vendor rejections, network trouble, bad input) are *returned* inside a
:class:`~kmsg_webhook.messaging.result.Fail`, never raised. The class still derives from
:class:`kmsg_webhook.errors.WebhookError` so that the few places that do raise it (bad provider
configuration, ``Result.unwrap``) share the package's single exception root.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from ..errors import ConfigError, WebhookError
from .result import Fail


class KMsgErrorCode(StrEnum):
    """Error codes; each value equals its name, as in the original."""

    INVALID_REQUEST = "INVALID_REQUEST"
    AUTHENTICATION_FAILED = "AUTHENTICATION_FAILED"
    INSUFFICIENT_BALANCE = "INSUFFICIENT_BALANCE"
    TEMPLATE_NOT_FOUND = "TEMPLATE_NOT_FOUND"
    RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"
    NETWORK_ERROR = "NETWORK_ERROR"
    NETWORK_TIMEOUT = "NETWORK_TIMEOUT"
    NETWORK_SERVICE_UNAVAILABLE = "NETWORK_SERVICE_UNAVAILABLE"
    REQUEST_ABORTED = "REQUEST_ABORTED"
    PROVIDER_ERROR = "PROVIDER_ERROR"
    MESSAGE_SEND_FAILED = "MESSAGE_SEND_FAILED"
    CRYPTO_CONFIG_ERROR = "CRYPTO_CONFIG_ERROR"
    CRYPTO_ENCRYPT_FAILED = "CRYPTO_ENCRYPT_FAILED"
    CRYPTO_DECRYPT_FAILED = "CRYPTO_DECRYPT_FAILED"
    CRYPTO_HASH_FAILED = "CRYPTO_HASH_FAILED"
    CRYPTO_POLICY_VIOLATION = "CRYPTO_POLICY_VIOLATION"
    UNKNOWN_ERROR = "UNKNOWN_ERROR"


#: Codes that are retryable unless an error says otherwise (the original's default set).
RETRYABLE_CODES: frozenset[KMsgErrorCode] = frozenset(
    {
        KMsgErrorCode.RATE_LIMIT_EXCEEDED,
        KMsgErrorCode.NETWORK_ERROR,
        KMsgErrorCode.NETWORK_TIMEOUT,
        KMsgErrorCode.NETWORK_SERVICE_UNAVAILABLE,
        KMsgErrorCode.PROVIDER_ERROR,
        KMsgErrorCode.UNKNOWN_ERROR,
    }
)

_MESSAGES_EN: Mapping[KMsgErrorCode, str] = {
    KMsgErrorCode.INVALID_REQUEST: "Invalid request",
    KMsgErrorCode.AUTHENTICATION_FAILED: "Authentication failed",
    KMsgErrorCode.INSUFFICIENT_BALANCE: "Insufficient balance",
    KMsgErrorCode.TEMPLATE_NOT_FOUND: "Template not found",
    KMsgErrorCode.RATE_LIMIT_EXCEEDED: "Rate limit exceeded",
    KMsgErrorCode.NETWORK_ERROR: "Network error",
    KMsgErrorCode.NETWORK_TIMEOUT: "Network timeout",
    KMsgErrorCode.NETWORK_SERVICE_UNAVAILABLE: "Service temporarily unavailable",
    KMsgErrorCode.REQUEST_ABORTED: "Request aborted",
    KMsgErrorCode.PROVIDER_ERROR: "Provider error",
    KMsgErrorCode.MESSAGE_SEND_FAILED: "Message send failed",
    KMsgErrorCode.CRYPTO_CONFIG_ERROR: "Crypto configuration error",
    KMsgErrorCode.CRYPTO_ENCRYPT_FAILED: "Encryption failed",
    KMsgErrorCode.CRYPTO_DECRYPT_FAILED: "Decryption failed",
    KMsgErrorCode.CRYPTO_HASH_FAILED: "Hash generation failed",
    KMsgErrorCode.CRYPTO_POLICY_VIOLATION: "Crypto policy violation",
    KMsgErrorCode.UNKNOWN_ERROR: "Unknown error",
}

_MESSAGES_KO: Mapping[KMsgErrorCode, str] = {
    KMsgErrorCode.INVALID_REQUEST: "요청 형식이 올바르지 않습니다",
    KMsgErrorCode.AUTHENTICATION_FAILED: "인증에 실패했습니다",
    KMsgErrorCode.INSUFFICIENT_BALANCE: "잔액이 부족합니다",
    KMsgErrorCode.TEMPLATE_NOT_FOUND: "템플릿을 찾을 수 없습니다",
    KMsgErrorCode.RATE_LIMIT_EXCEEDED: "요청 한도를 넘었습니다",
    KMsgErrorCode.NETWORK_ERROR: "네트워크 오류가 발생했습니다",
    KMsgErrorCode.NETWORK_TIMEOUT: "네트워크 응답 시간이 초과되었습니다",
    KMsgErrorCode.NETWORK_SERVICE_UNAVAILABLE: "서비스를 잠시 사용할 수 없습니다",
    KMsgErrorCode.REQUEST_ABORTED: "요청이 중단되었습니다",
    KMsgErrorCode.PROVIDER_ERROR: "발송사 오류가 발생했습니다",
    KMsgErrorCode.MESSAGE_SEND_FAILED: "메시지를 보내지 못했습니다",
    KMsgErrorCode.CRYPTO_CONFIG_ERROR: "암호화 설정이 올바르지 않습니다",
    KMsgErrorCode.CRYPTO_ENCRYPT_FAILED: "암호화하지 못했습니다",
    KMsgErrorCode.CRYPTO_DECRYPT_FAILED: "복호화하지 못했습니다",
    KMsgErrorCode.CRYPTO_HASH_FAILED: "해시를 만들지 못했습니다",
    KMsgErrorCode.CRYPTO_POLICY_VIOLATION: "암호화 정책을 위반했습니다",
    KMsgErrorCode.UNKNOWN_ERROR: "알 수 없는 오류가 발생했습니다",
}


def default_message(code: KMsgErrorCode, locale: str = "en") -> str:
    """The built-in text for ``code`` (``locale`` is ``"en"`` or ``"ko"``)."""
    table = _MESSAGES_KO if locale.lower().startswith("ko") else _MESSAGES_EN
    return table[code]


class KMsgError(WebhookError):
    """A send-path failure: a code, a message and optional vendor metadata.

    ``retryable`` defaults to the code's classification (see :data:`RETRYABLE_CODES`);
    pass ``retryable=`` to override it for one error, e.g. a malformed vendor reply that
    arrived after the vendor may already have accepted the message.
    """

    def __init__(
        self,
        code: KMsgErrorCode,
        message: str | None = None,
        *,
        provider_id: str | None = None,
        provider_error_code: str | None = None,
        provider_error_text: str | None = None,
        http_status: int | None = None,
        request_id: str | None = None,
        retry_after_ms: int | None = None,
        attempt: int | None = None,
        retryable: bool | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self.code = KMsgErrorCode(code)
        self.message = message if message else default_message(self.code)
        super().__init__(self.message)
        self.provider_id = provider_id
        self.provider_error_code = provider_error_code
        self.provider_error_text = provider_error_text
        self.http_status = int(http_status) if http_status is not None else None
        self.request_id = request_id
        self.retry_after_ms = int(retry_after_ms) if retry_after_ms is not None else None
        self.attempt = int(attempt) if attempt is not None else None
        self._retryable = retryable
        # Read-only so an error shared between hooks cannot be mutated by one of them.
        self.details: Mapping[str, Any] = MappingProxyType(dict(details or {}))

    @property
    def retryable(self) -> bool:
        """Whether sending again may succeed (explicit override, else the code's default)."""
        if self._retryable is not None:
            return self._retryable
        return self.code in RETRYABLE_CODES

    def localized_message(self, locale: str = "ko") -> str:
        """The code's built-in text in ``locale`` (Korean by default, as in the original)."""
        return default_message(self.code, locale)

    def with_attempt(self, attempt: int) -> KMsgError:
        """A copy that records which attempt produced it."""
        return self._copy(attempt=attempt)

    def with_provider(self, provider_id: str) -> KMsgError:
        """A copy tagged with the provider that produced it (kept if already set)."""
        if self.provider_id is not None:
            return self
        return self._copy(provider_id=provider_id)

    def with_request_id(self, request_id: str) -> KMsgError:
        """A copy that carries the caller's request (correlation) id."""
        return self._copy(request_id=request_id)

    def _copy(self, **changes: Any) -> KMsgError:
        fields: dict[str, Any] = {
            "provider_id": self.provider_id,
            "provider_error_code": self.provider_error_code,
            "provider_error_text": self.provider_error_text,
            "http_status": self.http_status,
            "request_id": self.request_id,
            "retry_after_ms": self.retry_after_ms,
            "attempt": self.attempt,
            "retryable": self._retryable,
            "details": self.details,
        }
        fields.update(changes)
        return KMsgError(self.code, self.message, **fields)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (camelCase keys, absent values omitted), like the original's toJSON."""
        out: dict[str, Any] = {
            "name": "KMsgError",
            "code": self.code.value,
            "message": self.message,
            "retryable": self.retryable,
        }
        optional = {
            "providerId": self.provider_id,
            "providerErrorCode": self.provider_error_code,
            "providerErrorText": self.provider_error_text,
            "httpStatus": self.http_status,
            "requestId": self.request_id,
            "retryAfterMs": self.retry_after_ms,
            "attempt": self.attempt,
        }
        out.update({key: value for key, value in optional.items() if value is not None})
        if self.details:
            out["details"] = dict(self.details)
        return out

    def __repr__(self) -> str:
        return f"KMsgError(code={self.code.value!r}, message={self.message!r})"


class ProviderConfigError(KMsgError, ConfigError):
    """A provider was built with invalid or missing configuration.

    Raised by provider constructors and ``from_env`` (the only places the send path raises).
    ``missing`` names the absent settings (environment variable names for ``from_env``).
    """

    def __init__(self, message: str, *, provider_id: str, missing: tuple[str, ...] = ()) -> None:
        super().__init__(KMsgErrorCode.INVALID_REQUEST, message, provider_id=provider_id)
        self.missing = missing


class UnsupportedOperationError(KMsgError):
    """The provider has no API for this operation (e.g. SOLAPI templates, IWINV channels).

    An INVALID_REQUEST that is never retried; ``operation`` names the method refused.
    """

    def __init__(self, provider_id: str, operation: str, reason: str | None = None) -> None:
        super().__init__(
            KMsgErrorCode.INVALID_REQUEST,
            f"{provider_id} does not support {operation}" + (f": {reason}" if reason else ""),
            provider_id=provider_id,
            retryable=False,
            details={"operation": operation},
        )
        self.operation = operation


class SenderKeyRequiredError(KMsgError):
    """A Kakao call needs a channel's sender key and neither the call nor the provider's
    configuration gave one.

    An INVALID_REQUEST that is never retried; ``setting`` names the environment variable that
    configures the default key (e.g. ``ALIGO_SENDER_KEY``).
    """

    def __init__(self, provider_id: str, message: str, *, setting: str) -> None:
        super().__init__(
            KMsgErrorCode.INVALID_REQUEST,
            message,
            provider_id=provider_id,
            retryable=False,
            details={"setting": setting},
        )
        self.setting = setting


def invalid_request(message: str, *, provider_id: str | None = None) -> KMsgError:
    """Shorthand for the most common validation failure."""
    return KMsgError(KMsgErrorCode.INVALID_REQUEST, message, provider_id=provider_id)


def fail_invalid_request(message: str, *, provider_id: str) -> Fail[KMsgError]:
    """:func:`invalid_request` as the failed ``Result`` a provider returns (never raises)."""
    return Fail(invalid_request(message, provider_id=provider_id))


class JobNotFoundError(WebhookError, LookupError):
    """No send job has the given id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no send job {job_id!r}")
        self.job_id = job_id


class TrackingRecordNotFoundError(WebhookError, LookupError):
    """No message with the given id is tracked."""

    def __init__(self, message_id: str) -> None:
        super().__init__(f"no tracked message {message_id!r}")
        self.message_id = message_id
