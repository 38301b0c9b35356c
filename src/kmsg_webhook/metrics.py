"""Prometheus metrics of a dispatching runtime (the optional ``kmsg-webhook[metrics]`` extra).

:class:`DeliveryMetrics` turns the delivery hooks into counters and histograms and, when
:meth:`DeliveryMetrics.observe` is given the outbox state, sets the gauges. The worker command
serves them on ``--metrics-port`` (see ``docs/production.md`` for every metric). An embedding
service can do the same: ``metrics = DeliveryMetrics(registry)``, pass ``hooks=metrics.hooks``
to the runtime, and call ``observe`` before exposing ``registry``.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable
from datetime import datetime

from .errors import ConfigError
from .hooks import AttemptEvent, DeliveryHooks, EndpointStatusEvent, SettledEvent
from .models import DeliveryStatus, EndpointHealth, EndpointStatus, QueueStats

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
except ImportError:  # pragma: no cover - exercised only without the extra
    raise ConfigError(
        "metrics need prometheus-client: pip install 'kmsg-webhook[metrics]'"
    ) from None

_OUTCOMES = {
    DeliveryStatus.SUCCESS: "success",
    DeliveryStatus.PENDING: "retry",
    DeliveryStatus.FAILED: "failed",
    DeliveryStatus.EXHAUSTED: "exhausted",
}
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)


def status_class(http_status: int | None) -> str:
    """``2xx``..``5xx``, or ``none`` when no HTTP answer came (timeout, refused, network)."""
    return "none" if http_status is None else f"{http_status // 100}xx"


class DeliveryMetrics:
    """The metrics, registered in ``registry`` (a fresh one when omitted)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.attempts = Counter(
            "kmsg_webhook_attempts",
            "HTTP attempts by outcome (success, retry, failed, exhausted) and status class",
            ["outcome", "status_class"],
            registry=r,
        )
        self.deliveries = Counter(
            "kmsg_webhook_deliveries",
            "Deliveries settled, by final status",
            ["status"],
            registry=r,
        )
        self.attempt_seconds = Histogram(
            "kmsg_webhook_attempt_duration_seconds",
            "Duration of one HTTP attempt",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.lag_seconds = Histogram(
            "kmsg_webhook_delivery_lag_seconds",
            "From emit to successful delivery",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.endpoint_changes = Counter(
            "kmsg_webhook_endpoint_changes",
            "Endpoints disabled, enabled or recovered",
            ["change"],
            registry=r,
        )
        self.in_flight = Gauge(
            "kmsg_webhook_in_flight", "Attempts being sent by this process", registry=r
        )
        self.due = Gauge(
            "kmsg_webhook_due_deliveries", "Pending deliveries due now, not leased", registry=r
        )
        self.scheduled = Gauge(
            "kmsg_webhook_scheduled_deliveries", "Pending deliveries due later", registry=r
        )
        self.leased = Gauge(
            "kmsg_webhook_leased_deliveries",
            "Pending deliveries held by a worker (all processes)",
            registry=r,
        )
        self.oldest_due_age = Gauge(
            "kmsg_webhook_oldest_due_age_seconds",
            "How long the oldest due delivery has waited (0 when none)",
            registry=r,
        )
        self.endpoints = Gauge(
            "kmsg_webhook_endpoints", "Endpoints by status", ["status"], registry=r
        )
        self.hooks = DeliveryHooks(
            on_attempt=self._on_attempt,
            on_settled=self._on_settled,
            on_endpoint_status=self._on_endpoint_status,
        )

    def _on_attempt(self, event: AttemptEvent) -> None:
        self.attempts.labels(_OUTCOMES[event.status], status_class(event.http_status)).inc()
        self.attempt_seconds.observe(event.latency_ms / 1000)

    def _on_settled(self, event: SettledEvent) -> None:
        self.deliveries.labels(event.status.value).inc()
        if event.status is DeliveryStatus.SUCCESS:
            lag = (event.completed_at - event.created_at).total_seconds()
            self.lag_seconds.observe(max(0.0, lag))

    def _on_endpoint_status(self, event: EndpointStatusEvent) -> None:
        self.endpoint_changes.labels(event.change.value).inc()

    def observe(
        self,
        *,
        now: datetime,
        queue: QueueStats,
        endpoints: Iterable[EndpointHealth],
        in_flight: int,
    ) -> None:
        """Set the gauges from the outbox state at ``now``."""
        self.in_flight.set(in_flight)
        self.due.set(queue.due)
        self.scheduled.set(queue.scheduled)
        self.leased.set(queue.leased)
        oldest = queue.oldest_due_at
        self.oldest_due_age.set(max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
        counts = Tally(e.status for e in endpoints)
        for status in EndpointStatus:
            self.endpoints.labels(status.value).set(counts[status])
