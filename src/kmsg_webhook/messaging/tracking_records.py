"""What delivery tracking keeps per message: :class:`TrackingRecord` and its parts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from .types import DeliveryStatus, FailoverOptions, MessageType


class ApiAttemptStatus(StrEnum):
    NOT_ATTEMPTED = "not_attempted"
    ATTEMPTING = "attempting"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class FailoverState:
    """What the send asked for and what the API-level fallback did."""

    request: FailoverOptions
    send_warning_codes: tuple[str, ...] = ()
    attempted: bool = False
    status: ApiAttemptStatus = ApiAttemptStatus.NOT_ATTEMPTED
    attempted_at: datetime | None = None
    fallback_message_id: str | None = None
    fallback_provider_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    warning_code: str | None = None


@dataclass(frozen=True, slots=True)
class TrackingError:
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class TrackingRecord:
    message_id: str
    provider_id: str
    provider_message_id: str | None
    type: MessageType
    to: str
    requested_at: datetime
    status: DeliveryStatus
    status_updated_at: datetime
    next_check_at: datetime
    from_: str | None = None
    scheduled_at: datetime | None = None
    template_id: str | None = None
    correlation_id: str | None = None
    attempt_count: int = 0
    last_checked_at: datetime | None = None
    sent_at: datetime | None = None
    delivered_at: datetime | None = None
    failed_at: datetime | None = None
    provider_status_code: str | None = None
    provider_status_message: str | None = None
    last_error: TrackingError | None = None
    custom_fields: Mapping[str, str] = field(default_factory=dict)
    failover: FailoverState | None = None
    raw: Any = field(default=None, compare=False, repr=False)
