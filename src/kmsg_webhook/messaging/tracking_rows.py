"""Tracking records as stored: one flat row per message, sealed where field crypto says so.

Every tracking backend keeps :class:`TrackingRow` values (the memory store too), so field
crypto behaves the same everywhere: :class:`TrackingCodec` seals the recipient and sender
numbers (``to``/``from_`` modes, plus the keyed ``recipient_hash`` under ``encrypt+hash``) and
the message content it holds, the failover request (fallback text) and the custom fields
(``payload`` mode), before a row is written, and opens them after it is read.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..crypto.config import FieldMode
from ..crypto.envelope import is_sealed
from ..crypto.fields import FieldCrypto
from ..errors import ConfigError, FieldCryptoError, MissingKeysError, StoreError
from ..events import parse_timestamp
from ..phone import mask_phone
from ..stores.rows import to_datetime
from .errors import KMsgErrorCode
from .tracking_records import ApiAttemptStatus, FailoverState, TrackingError, TrackingRecord
from .types import DeliveryStatus, FailoverOptions, FallbackChannel, MessageType

logger = logging.getLogger("kmsg_webhook.messaging.tracking")
#: The logical table bound into sealed values' associated data.
TRACKING = "tracking"
#: What a stored row that cannot be opened raises (a key not configured, a tampered or
#: malformed value): a claim settles such a row failed instead of handing it out.
UNREADABLE_ROW = (FieldCryptoError, StoreError)


@dataclass(frozen=True, slots=True)
class TrackingRow:
    """The columns of one tracking row, as stored (sealed values are envelopes)."""

    message_id: str
    provider_id: str
    provider_message_id: str | None
    type: str
    recipient: str
    recipient_hash: str | None
    sender: str | None
    status: str
    requested_at: datetime
    status_updated_at: datetime
    next_check_at: datetime
    scheduled_at: datetime | None
    attempt_count: int
    last_checked_at: datetime | None
    sent_at: datetime | None
    delivered_at: datetime | None
    failed_at: datetime | None
    provider_status_code: str | None
    provider_status_message: str | None
    last_error_code: str | None
    last_error_message: str | None
    template_id: str | None
    correlation_id: str | None
    custom_fields: str | None
    failover: str | None
    fallback_status: str | None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None

    def values(self) -> dict[str, Any]:
        """Column name to value."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


COLUMNS = tuple(f.name for f in dataclasses.fields(TrackingRow))
TIME_COLUMNS = frozenset(name for name in COLUMNS if name.endswith("_at"))
#: Columns an upsert of a record leaves alone (the lease belongs to the reconciler).
LEASE_COLUMNS = ("lease_owner", "lease_expires_at")


def row_from_mapping(mapping: Mapping[str, Any]) -> TrackingRow:
    """A row read by any driver (timestamps as datetimes or epoch milliseconds)."""
    values = {name: mapping[name] for name in COLUMNS}
    for name in TIME_COLUMNS:
        values[name] = to_datetime(values[name])
    values["attempt_count"] = int(values["attempt_count"])
    return TrackingRow(**values)


class TrackingCodec:
    """Records to rows and back, applying field crypto when it is on."""

    def __init__(self, crypto: FieldCrypto | None = None) -> None:
        self.crypto = crypto

    # -- writing -------------------------------------------------------------------------------

    def to_row(self, record: TrackingRecord) -> TrackingRow:
        mid = record.message_id
        to_mode = self._mode("to")
        recipient_hash = None
        if self.crypto is not None and to_mode is FieldMode.ENCRYPT_HASH:
            recipient_hash = self.crypto.recipient_hash(record.to)
        failover = record.failover
        return TrackingRow(
            message_id=mid,
            provider_id=record.provider_id,
            provider_message_id=record.provider_message_id,
            type=record.type.value,
            recipient=self._seal_number(record.to, to_mode, "recipient", mid),
            recipient_hash=recipient_hash,
            sender=None
            if record.from_ is None
            else self._seal_number(record.from_, self._mode("from_"), "sender", mid),
            status=record.status.value,
            requested_at=record.requested_at,
            status_updated_at=record.status_updated_at,
            next_check_at=record.next_check_at,
            scheduled_at=record.scheduled_at,
            attempt_count=record.attempt_count,
            last_checked_at=record.last_checked_at,
            sent_at=record.sent_at,
            delivered_at=record.delivered_at,
            failed_at=record.failed_at,
            provider_status_code=record.provider_status_code,
            provider_status_message=record.provider_status_message,
            last_error_code=record.last_error.code if record.last_error else None,
            last_error_message=record.last_error.message if record.last_error else None,
            template_id=record.template_id,
            correlation_id=record.correlation_id,
            custom_fields=self._seal_content(
                _dumps(dict(record.custom_fields)), "custom_fields", mid
            )
            if record.custom_fields
            else None,
            failover=None
            if failover is None
            else self._seal_content(_dumps(_failover_json(failover)), "failover", mid),
            fallback_status=None if failover is None else failover.status.value,
        )

    def recipient_filter(self, to: str) -> tuple[str, str]:
        """The column and stored value that find records sent to ``to``."""
        mode = self._mode("to")
        if self.crypto is None or mode is FieldMode.PLAIN:
            return "recipient", to
        if mode is FieldMode.ENCRYPT_HASH:
            found = self.crypto.recipient_hash(to)
            if found is None:
                raise ConfigError(f"cannot look up recipient {mask_phone(to)!r}: not a number")
            return "recipient_hash", found
        if mode is FieldMode.MASK:
            return "recipient", mask_phone(to) or to
        raise ConfigError(
            "tracking records cannot be found by recipient when field crypto seals 'to' "
            "without a hash: use to='encrypt+hash'"
        )

    # -- reading -------------------------------------------------------------------------------

    async def claimed(
        self,
        rows: Iterable[Mapping[str, Any]],
        *,
        now: datetime,
        save_row: Callable[[TrackingRow], Awaitable[bool]],
    ) -> list[TrackingRecord]:
        """Rows a claim returned (in no order), as records in claim order: earliest check
        first.

        A row that does not open is settled FAILED through ``save_row`` (its sealed values kept
        as stored) and left out: left due, every later claim would lease it again first.
        """
        found = sorted(
            (row_from_mapping(r) for r in rows), key=lambda r: (r.next_check_at, r.message_id)
        )
        records: list[TrackingRecord] = []
        for row in found:
            try:
                records.append(self.from_row(row))
            except UNREADABLE_ROW as exc:
                logger.error("tracking record %s settled failed: %s", row.message_id, exc)
                await save_row(unreadable_row(row, exc, now))
        return records

    def from_row(self, row: TrackingRow) -> TrackingRecord:
        mid = row.message_id
        try:
            custom = _loads(self._open(row.custom_fields, "custom_fields", mid, "payload"))
            failover = _loads(self._open(row.failover, "failover", mid, "payload"))
            return TrackingRecord(
                message_id=mid,
                provider_id=row.provider_id,
                provider_message_id=row.provider_message_id,
                type=MessageType(row.type),
                to=self._open(row.recipient, "recipient", mid, "to") or "",
                from_=self._open(row.sender, "sender", mid, "from_"),
                requested_at=row.requested_at,
                status=DeliveryStatus(row.status),
                status_updated_at=row.status_updated_at,
                next_check_at=row.next_check_at,
                scheduled_at=row.scheduled_at,
                template_id=row.template_id,
                correlation_id=row.correlation_id,
                attempt_count=row.attempt_count,
                last_checked_at=row.last_checked_at,
                sent_at=row.sent_at,
                delivered_at=row.delivered_at,
                failed_at=row.failed_at,
                provider_status_code=row.provider_status_code,
                provider_status_message=row.provider_status_message,
                last_error=TrackingError(row.last_error_code, row.last_error_message or "")
                if row.last_error_code is not None
                else None,
                custom_fields={str(k): str(v) for k, v in (custom or {}).items()},
                failover=None if failover is None else _failover_state(failover),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(f"tracking record {mid!r} is malformed: {exc}") from exc

    # -- field crypto ----------------------------------------------------------------------------

    def _mode(self, name: str) -> FieldMode:
        if self.crypto is None:
            return FieldMode.PLAIN
        mode: FieldMode = getattr(self.crypto.config, name)
        return mode

    def _seal_number(self, value: str, mode: FieldMode, column: str, mid: str) -> str:
        if self.crypto is None or mode is FieldMode.PLAIN:
            return value
        if mode is FieldMode.MASK:
            return mask_phone(value) or value
        return self.crypto.seal(value, table=TRACKING, column=column, record_id=mid)

    def _seal_content(self, value: str, column: str, mid: str) -> str:
        if self.crypto is None or self.crypto.config.payload is not FieldMode.ENCRYPT:
            return value
        return self.crypto.seal(value, table=TRACKING, column=column, record_id=mid)

    def _open(self, stored: str | None, column: str, mid: str, mode_name: str) -> str | None:
        if stored is None:
            return None
        if self.crypto is None:
            refuse_sealed(stored, f"tracking record {mid!r}")
            return stored
        sealed_mode = self._mode(mode_name) in (FieldMode.ENCRYPT, FieldMode.ENCRYPT_HASH)
        return self.crypto.open(
            stored, table=TRACKING, column=column, record_id=mid, sealed_mode=sealed_mode
        )


def unreadable_code(error: Exception) -> str:
    """The error code recorded for a row settled because it does not open."""
    if isinstance(error, FieldCryptoError):
        return KMsgErrorCode.CRYPTO_DECRYPT_FAILED.value
    return KMsgErrorCode.UNKNOWN_ERROR.value


def unreadable_row(row: TrackingRow, error: Exception, now: datetime) -> TrackingRow:
    """``row`` settled: FAILED if it was still polled, a fallback left attempting given up
    (a finished status is kept), the error recorded and the lease dropped."""
    polled = row.status in (DeliveryStatus.PENDING.value, DeliveryStatus.SENT.value)
    attempting = row.fallback_status == ApiAttemptStatus.ATTEMPTING.value
    return dataclasses.replace(
        row,
        status=DeliveryStatus.FAILED.value if polled else row.status,
        status_updated_at=now if polled else row.status_updated_at,
        failed_at=now if polled else row.failed_at,
        last_error_code=unreadable_code(error),
        last_error_message=f"refused: {error}",
        fallback_status=ApiAttemptStatus.FAILED.value if attempting else row.fallback_status,
        lease_owner=None,
        lease_expires_at=None,
    )


def refuse_sealed(stored: str, what: str) -> None:
    """A value sealed by field crypto, read without keys, is refused rather than used as is."""
    if is_sealed(stored):
        raise MissingKeysError(
            f"{what} holds values sealed by field crypto and no keys were given: set "
            "KMSG_WEBHOOK_KEYS (crypto=) to the keys they were sealed with"
        )


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _stamp(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _failover_json(state: FailoverState) -> dict[str, Any]:
    request = state.request
    return {
        "request": {
            "enabled": request.enabled,
            "channel": None if request.fallback_channel is None else request.fallback_channel.value,
            "content": request.fallback_content,
            "title": request.fallback_title,
        },
        "warnings": list(state.send_warning_codes),
        "attempted": state.attempted,
        "status": state.status.value,
        "attemptedAt": _stamp(state.attempted_at),
        "fallbackMessageId": state.fallback_message_id,
        "fallbackProviderId": state.fallback_provider_id,
        "errorCode": state.error_code,
        "errorMessage": state.error_message,
        "warningCode": state.warning_code,
    }


def _failover_state(data: Mapping[str, Any]) -> FailoverState:
    request = data["request"]
    channel = request.get("channel")
    attempted_at = data.get("attemptedAt")
    return FailoverState(
        request=FailoverOptions(
            enabled=request.get("enabled"),
            fallback_channel=None if channel is None else FallbackChannel(channel),
            fallback_content=request.get("content"),
            fallback_title=request.get("title"),
        ),
        send_warning_codes=tuple(data.get("warnings", ())),
        attempted=bool(data.get("attempted")),
        status=ApiAttemptStatus(data["status"]),
        attempted_at=None if attempted_at is None else parse_timestamp(attempted_at),
        fallback_message_id=data.get("fallbackMessageId"),
        fallback_provider_id=data.get("fallbackProviderId"),
        error_code=data.get("errorCode"),
        error_message=data.get("errorMessage"),
        warning_code=data.get("warningCode"),
    )
