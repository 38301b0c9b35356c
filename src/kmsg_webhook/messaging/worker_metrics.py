"""Prometheus metrics of ``kmsg worker`` (the optional ``kmsg-webhook[metrics]`` extra).

Counters come from the send queue's ``on_result`` and the reconciler's hooks (the worker
calls :meth:`MessagingMetrics.on_result`, ``on_check`` and ``on_fallback``); the circuit
breakers and rate limiters of the worker's :class:`ProviderGuards` are read at each scrape, and
:meth:`MessagingMetrics.observe` sets the gauges of jobs and tracked messages per status.
``docs/messaging.md`` lists every metric.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from ..errors import ConfigError
from .jobs import JobResult, JobStatus, SendJob
from .resilience import CircuitState, ProviderGuards
from .tracking_records import TrackingRecord
from .types import DeliveryStatus

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError:  # pragma: no cover - exercised only without the extra
    raise ConfigError(
        "metrics need prometheus-client: pip install 'kmsg-webhook[metrics]'"
    ) from None


class _GuardCollector(Collector):
    """Circuit state and rate-limit waits per provider, as the guards hold them now."""

    def __init__(self, guards: ProviderGuards) -> None:
        self._guards = guards

    def collect(self) -> Iterator[Metric]:
        states = GaugeMetricFamily(
            "kmsg_circuit_state",
            "1 for each provider's current circuit breaker state (closed, open, half_open)",
            labels=["provider", "state"],
        )
        for provider_id, current in sorted(self._guards.circuit_states().items()):
            for state in CircuitState:
                states.add_metric([provider_id, state.value], 1.0 if state is current else 0.0)
        yield states
        waits = CounterMetricFamily(
            "kmsg_rate_limit_waits",
            "Sends that waited for a rate-limit token",
            labels=["provider"],
        )
        seconds = CounterMetricFamily(
            "kmsg_rate_limit_wait_seconds",
            "Time sends spent waiting for rate-limit tokens",
            labels=["provider"],
        )
        for provider_id, count in sorted(self._guards.rate_waits.items()):
            waits.add_metric([provider_id], count)
            seconds.add_metric([provider_id], self._guards.rate_wait_seconds.get(provider_id, 0.0))
        yield waits
        yield seconds


class MessagingMetrics:
    """The worker's metrics, registered in ``registry`` (a fresh one when omitted)."""

    def __init__(self, guards: ProviderGuards, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.jobs = Counter(
            "kmsg_jobs",
            "Send jobs this process sent, by outcome (sent, failed) and provider",
            ["outcome", "provider"],
            registry=r,
        )
        self.reclaimed = Counter(
            "kmsg_jobs_reclaimed",
            "Jobs sent again after an earlier claim's lease expired (a worker died or stalled)",
            registry=r,
        )
        self.checks = Counter(
            "kmsg_tracking_checks",
            "Delivery status checks, by the status they left the message in",
            ["status"],
            registry=r,
        )
        self.fallbacks = Counter(
            "kmsg_fallbacks",
            "ALIMTALK to SMS/LMS fallbacks finished, by result (sent, failed, skipped)",
            ["status"],
            registry=r,
        )
        self.stored_jobs = Gauge(
            "kmsg_stored_jobs",
            "Jobs in the store by status (all processes)",
            ["status"],
            registry=r,
        )
        self.tracked = Gauge(
            "kmsg_tracked_messages",
            "Tracked messages in the store by delivery status (all processes)",
            ["status"],
            registry=r,
        )
        r.register(_GuardCollector(guards))

    def on_result(self, job: SendJob, result: JobResult) -> None:
        """The send queue's ``on_result``."""
        self.jobs.labels(result.status.value, result.provider_id or "-").inc()
        if job.attempts > 1:
            self.reclaimed.inc()

    def on_check(self, record: TrackingRecord) -> None:
        """The reconciler's ``on_check``."""
        self.checks.labels(record.status.value).inc()

    def on_fallback(self, record: TrackingRecord) -> None:
        """The reconciler's ``on_fallback``."""
        if record.failover is not None:
            self.fallbacks.labels(record.failover.status.value).inc()

    def observe(
        self, *, jobs: Mapping[JobStatus, int], tracked: Mapping[DeliveryStatus, int]
    ) -> None:
        """Set the store gauges (every status, 0 when absent)."""
        for job_status in JobStatus:
            self.stored_jobs.labels(job_status.value).set(jobs.get(job_status, 0))
        for status in DeliveryStatus:
            self.tracked.labels(status.value).set(tracked.get(status, 0))
