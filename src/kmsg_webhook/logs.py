"""What the runtime tells the ``logging`` module, and the worker's log formats.

Loggers (all under ``kmsg_webhook``): ``kmsg_webhook.delivery`` logs every recorded attempt
(INFO for a success or a scheduled retry, WARNING for an exhausted or failed delivery and for a
refusal without an attempt) and ``kmsg_webhook.endpoint`` every endpoint disabled, re-enabled
or recovered (WARNING). Each record carries its fields as attributes (``delivery_id``,
``endpoint_id``, ``event_type``, ``status``, ``attempt``, ``http_status``, ``latency_ms``,
``next_attempt_at``, ``error``, ``reason``), which :class:`JsonFormatter` writes as JSON keys.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from .hooks import AttemptEvent, DeliveryHooks, EndpointStatusEvent, SettledEvent
from .models import DeliveryStatus
from .redact import url_origin

delivery_logger = logging.getLogger("kmsg_webhook.delivery")
endpoint_logger = logging.getLogger("kmsg_webhook.endpoint")

LogFormat = Literal["text", "json"]
#: The attributes a record may carry beyond the standard ones, written by the JSON format.
FIELDS = (
    "delivery_id",
    "endpoint_id",
    "event_type",
    "status",
    "attempt",
    "http_status",
    "latency_ms",
    "next_attempt_at",
    "error",
    "url",
    "change",
    "reason",
    "worker_id",
    "store",
    "url_policy",
    "field_crypto",
    "metrics_host",
    "metrics_port",
    "settled",
    "rate_per_s",
    "in_flight",
    "due",
    "oldest_due_age_s",
    "scheduled",
    "leased",
    "job_id",
    "message_id",
    "provider_id",
    "error_code",
    "fallback_status",
    "services",
    "providers",
)


def _stamp(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _log_attempt(event: AttemptEvent) -> None:
    status = event.status
    level = (
        logging.INFO
        if status in (DeliveryStatus.SUCCESS, DeliveryStatus.PENDING)
        else (logging.WARNING)
    )
    if not delivery_logger.isEnabledFor(level):
        return
    fields = {
        "delivery_id": event.delivery_id,
        "endpoint_id": event.endpoint_id,
        "event_type": event.event_type,
        "status": status.value,
        "attempt": event.attempt_number,
        "http_status": event.http_status,
        "latency_ms": round(event.latency_ms, 1),
        "next_attempt_at": _stamp(event.next_attempt_at),
        "error": event.error,
    }
    answer = event.http_status if event.http_status is not None else (event.error or "no answer")
    if status is DeliveryStatus.PENDING:
        message = "delivery %s to %s: attempt %d got %s; retry at %s"
        args: tuple[Any, ...] = (
            event.delivery_id,
            event.endpoint_id,
            event.attempt_number,
            answer,
            fields["next_attempt_at"],
        )
    else:
        message = "delivery %s to %s %s after attempt %d (%s, %.0f ms)"
        args = (
            event.delivery_id,
            event.endpoint_id,
            status.value,
            event.attempt_number,
            answer,
            event.latency_ms,
        )
    delivery_logger.log(level, message, *args, extra=fields)


def _log_settled(event: SettledEvent) -> None:
    # Deliveries settled by an attempt were logged with it; this is a refusal without one.
    if event.sent or not delivery_logger.isEnabledFor(logging.WARNING):
        return
    delivery_logger.warning(
        "delivery %s to %s %s without a request: %s",
        event.delivery_id,
        event.endpoint_id,
        event.status.value,
        event.error,
        extra={
            "delivery_id": event.delivery_id,
            "endpoint_id": event.endpoint_id,
            "event_type": event.event_type,
            "status": event.status.value,
            "attempt": event.attempts,
            "error": event.error,
        },
    )


def _log_endpoint(event: EndpointStatusEvent) -> None:
    endpoint_logger.warning(
        "endpoint %s %s: %s",
        event.endpoint_id,
        event.change.value,
        event.reason or "-",
        extra={
            "endpoint_id": event.endpoint_id,
            "url": url_origin(event.url),
            "change": event.change.value,
            "status": event.status.value,
            "reason": event.reason,
        },
    )


def successes_logged() -> bool:
    """Whether successful attempts would be logged now (INFO on ``kmsg_webhook.delivery``)."""
    return delivery_logger.isEnabledFor(logging.INFO)


#: The hooks that write the log lines above (the runtime installs them first).
DELIVERY_LOG = DeliveryHooks(
    on_attempt=_log_attempt, on_settled=_log_settled, on_endpoint_status=_log_endpoint
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    the record's fields from :data:`FIELDS` that are set, and ``exception`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure_logging(level: str = "INFO", log_format: LogFormat = "text") -> None:
    """Configure this process's logging (the worker command's ``--log-level``/``--log-format``):
    ``kmsg_webhook.*`` records at ``level`` and above, other libraries' at WARNING and above, and
    Python warnings, all to stderr as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("kmsg_webhook").setLevel(level.upper())
    logging.captureWarnings(True)
