"""``kmsg worker``: the long-running process of the messaging side.

It runs, against one store, the send queue (scheduled and bulk sends due) and the delivery
tracking reconciler (status checks and ALIMTALK→SMS fallbacks), each switchable; with
``--with-webhooks`` it also dispatches the webhook deliveries, as ``kmsg-webhook worker`` would.
Every send is recorded for tracking and its webhook events are stored in the same store's
outbox (a dispatcher elsewhere delivers them when this process does not).

Providers come from the environment as for the other ``kmsg`` commands. SIGTERM or SIGINT stops
it: no new claim starts, sends and checks in flight get ``--stop-grace`` seconds to finish and
be recorded, and whatever is still unfinished keeps its lease until it expires (another worker
takes it then). Logs and ``/metrics``, ``/healthz``, ``/readyz`` work as the webhook worker's.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from .. import eventloop
from ..cliargs import (
    non_negative_float,
    policy_args,
    positive,
    positive_float,
    security_options,
    tcp_port,
)
from ..config import SecurityOptions, WebhookConfig
from ..errors import ConfigError, WebhookError
from ..monitor import WorkerMonitor, serve_health
from ..runtime import WebhookRuntimeService
from .jobs import JobResult, JobStatus, SendJob
from .kmsg import KMsg, RoutingConfig
from .leases import new_worker_id
from .resilience import CircuitBreakerConfig, ProviderGuards, ProviderLimits, RateLimit, Resilience
from .send_queue import SendQueueOptions
from .store_commands import MessagingStores, open_stores, store_args, store_url
from .tracking import (
    ApiFailoverConfig,
    DeliveryTrackingService,
    FallbackContext,
    PollingConfig,
    TrackingHooks,
)
from .tracking_records import TrackingRecord
from .tracking_store import POLLED_STATUSES, TrackingFilter, TrackingGroup
from .types import DeliveryStatus, SendOutcome, SmsSendOptions

if TYPE_CHECKING:
    from .cli import Output, Setup
    from .worker_metrics import MessagingMetrics

log = logging.getLogger("kmsg_webhook.messaging.worker")
#: How many pending jobs and polled records the start-up check reads for sealed values.
_SEALED_SAMPLE = 20


# --------------------------------------------------------------------------- logs


def _log_job(job: SendJob, result: JobResult) -> None:
    fields = {
        "job_id": job.id,
        "provider_id": result.provider_id,
        "status": result.status.value,
        "attempt": job.attempts,
        "error_code": result.error_code,
    }
    if result.status is JobStatus.SENT:
        log.info("job %s sent via %s", job.id, result.provider_id, extra=fields)
    else:
        log.warning(
            "job %s failed: %s %s", job.id, result.error_code, result.error_message, extra=fields
        )


def _log_check(record: TrackingRecord) -> None:
    level = logging.INFO if record.status.is_terminal else logging.DEBUG
    log.log(
        level,
        "message %s is %s (check %d)",
        record.message_id,
        record.status.value,
        record.attempt_count,
        extra={
            "message_id": record.message_id,
            "provider_id": record.provider_id,
            "status": record.status.value,
            "attempt": record.attempt_count,
            "error_code": record.last_error.code if record.last_error else None,
        },
    )


def _log_fallback(record: TrackingRecord) -> None:
    state = record.failover
    assert state is not None
    log.info(
        "fallback of %s %s",
        record.message_id,
        state.status.value,
        extra={
            "message_id": record.message_id,
            "fallback_status": state.status.value,
            "error_code": state.error_code or state.warning_code,
        },
    )


# --------------------------------------------------------------------------- the service


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """What one worker runs and how (``kmsg worker``'s flags)."""

    worker_id: str
    queue: bool = True
    tracking: bool = True
    with_webhooks: bool = False
    #: Jobs one claim takes and sends at once; records one reconciler claim checks at once.
    concurrency: int = 16
    tracking_concurrency: int = 10
    lease: timedelta = timedelta(minutes=2)
    poll_interval: float = 1.0
    first_check: timedelta = PollingConfig().initial_delay
    #: On stop, seconds for the sends and checks in flight to finish.
    stop_grace: float = 30.0
    resilience: Resilience = field(default_factory=Resilience)
    #: Where the webhook dispatcher may deliver (with ``with_webhooks``).
    security: SecurityOptions = field(default_factory=SecurityOptions)
    metrics: bool = False


def rate_limit(text: str) -> tuple[str, RateLimit]:
    """A ``--rate-limit`` value: ``PROVIDER=PER_SECOND[:BURST]``, checked as argparse types are
    (so a bad one exits 2 with the usage line)."""
    provider_id, sep, rate = text.partition("=")
    per_second, _, burst = rate.partition(":")
    try:
        limit = RateLimit(float(per_second), int(burst) if burst else None)
    except ValueError:  # a malformed number, or a ConfigError from RateLimit's own check
        limit = None
    if not sep or not provider_id or limit is None:
        raise argparse.ArgumentTypeError(
            f"takes provider=per_second[:burst] (per_second > 0, burst >= 1), got {text!r}"
        )
    return provider_id, limit


class MessagingWorker:
    """The queue, the reconciler and the webhook runtime of one ``kmsg worker`` process."""

    def __init__(self, settings: WorkerSettings, setup: Setup, stores: MessagingStores) -> None:
        self.settings = settings
        self.stores = stores
        self.worker_id = settings.worker_id
        providers = list(setup.providers.values())
        self.guards = ProviderGuards(settings.resilience)
        self.metrics: MessagingMetrics | None = None
        self.monitor: WorkerMonitor | None = None
        webhook_hooks = []
        if settings.metrics:
            from .worker_metrics import MessagingMetrics

            self.metrics = MessagingMetrics(self.guards)
            if settings.with_webhooks:
                from ..metrics import DeliveryMetrics

                delivery = DeliveryMetrics(self.metrics.registry)
                self.monitor = WorkerMonitor(delivery)
                webhook_hooks.append(delivery.hooks)
        self.runtime = WebhookRuntimeService(
            WebhookConfig(),
            persistence=stores.url,
            dispatch=settings.with_webhooks,
            worker_id=self.worker_id,
            security=settings.security,
            field_crypto=None if stores.crypto is None else stores.crypto.config,
            hooks=webhook_hooks,
        )
        self.tracking = DeliveryTrackingService(
            providers,
            store=stores.tracking,
            polling=PollingConfig(
                interval=settings.poll_interval,
                initial_delay=settings.first_check,
                concurrency=settings.tracking_concurrency,
                lease=settings.lease,
            ),
            api_failover=ApiFailoverConfig(sender=self._send_fallback),
            webhooks=self.runtime,
            worker_id=self.worker_id,
            hooks=TrackingHooks(on_check=self._on_check, on_fallback=self._on_fallback),
        )
        self.kmsg = KMsg(
            providers,
            routing=RoutingConfig(default_provider_id=setup.default_provider),
            channels=setup.channels,
            hooks=self.tracking.hooks(),
            webhooks=self.runtime,
            jobs=stores.jobs,
            queue_options=SendQueueOptions(
                lease=settings.lease,
                concurrency=settings.concurrency,
                interval=settings.poll_interval,
                worker_id=self.worker_id,
                on_result=self._on_result,
            ),
            resilience=self.guards,
        )

    def _on_result(self, job: SendJob, result: JobResult) -> None:
        _log_job(job, result)
        if self.metrics is not None:
            self.metrics.on_result(job, result)

    def _on_check(self, record: TrackingRecord) -> None:
        _log_check(record)
        if self.metrics is not None:
            self.metrics.on_check(record)

    def _on_fallback(self, record: TrackingRecord) -> None:
        _log_fallback(record)
        if self.metrics is not None:
            self.metrics.on_fallback(record)

    async def _send_fallback(self, options: SmsSendOptions, ctx: FallbackContext) -> SendOutcome:
        return await self.kmsg.send(options)

    async def start(self) -> None:
        """Open the stores (refusing sealed values without keys) and start the services."""
        await self.stores.init()
        if self.stores.crypto is None:
            # Reading a sealed row without keys raises MissingKeysError: better now than on
            # every claim.
            await self.stores.jobs.list_jobs(statuses=[JobStatus.PENDING], limit=_SEALED_SAMPLE)
            await self.stores.tracking.list_records(
                TrackingFilter(statuses=POLLED_STATUSES), limit=_SEALED_SAMPLE
            )
        await self.runtime.start()
        assert self.kmsg.queue is not None
        if self.settings.queue:
            self.kmsg.queue.start()
        if self.settings.tracking:
            self.tracking.start()

    async def stop(self) -> None:
        """Stop claiming, give what is in flight its grace, close everything."""
        grace = self.settings.stop_grace
        assert self.kmsg.queue is not None
        try:
            await asyncio.gather(self.kmsg.queue.stop(grace=grace), self.tracking.stop(grace=grace))
        finally:
            # Events emitted meanwhile are stored; claimed webhook deliveries are given back.
            await self.runtime.shutdown(drain=False)
            await self.kmsg.aclose()
            await self.stores.close()

    async def ready(self) -> None:
        """Raises unless the store answers (``/readyz``)."""
        await self.stores.jobs.count_by_status()

    async def scrape(self) -> bytes:
        from prometheus_client import generate_latest

        assert self.metrics is not None
        try:
            jobs = await asyncio.wait_for(self.stores.jobs.count_by_status(), 5)
            by_status = await asyncio.wait_for(
                self.stores.tracking.count_by(TrackingFilter(), [TrackingGroup.STATUS]), 5
            )
            tracked = {DeliveryStatus(key[0]): n for key, n in by_status.items()}
            self.metrics.observe(jobs=jobs, tracked=tracked)
            if self.monitor is not None:
                await asyncio.wait_for(self.monitor.snapshot(self.runtime), 5)
        except Exception as exc:  # stale gauges beat no counters
            log.warning("metrics: the store did not answer: %s", exc)
        return bytes(generate_latest(self.metrics.registry))


# --------------------------------------------------------------------------- the command


async def _serve(
    args: argparse.Namespace, worker: MessagingWorker
) -> tuple[Callable[[], Awaitable[None]], int | None]:
    """Start the health endpoints when asked for; returns their closer and port."""
    if args.metrics_port is None:

        async def nothing() -> None:
            return None

        return nothing, None
    try:
        runner, port = await serve_health(
            args.metrics_host, args.metrics_port, ready=worker.ready, scrape=worker.scrape
        )
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise WebhookError(
            f"cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {why}"
        ) from None
    return runner.cleanup, port


def _settings(args: argparse.Namespace) -> WorkerSettings:
    breaker = None if args.breaker_failures == 0 else CircuitBreakerConfig(args.breaker_failures)
    return WorkerSettings(
        worker_id=args.worker_id or new_worker_id(),
        queue=args.queue,
        tracking=args.tracking,
        with_webhooks=args.with_webhooks,
        concurrency=args.concurrency,
        tracking_concurrency=args.tracking_concurrency,
        lease=timedelta(seconds=args.lease_s),
        poll_interval=args.poll_s,
        first_check=timedelta(seconds=args.first_check_s),
        stop_grace=args.stop_grace,
        resilience=Resilience(
            {provider: ProviderLimits(default=limit) for provider, limit in args.rate_limit},
            breaker,
        ),
        security=security_options(args),
        metrics=args.metrics_port is not None,
    )


async def run_worker(args: argparse.Namespace, setup: Setup) -> int:
    if not setup.providers:
        broken = "; ".join(str(e) for e in setup.broken.values())
        raise ConfigError(
            "no provider is configured: set a provider's environment variables (or "
            f"KMSG_PROVIDERS=mock for a demo){f' ({broken})' if broken else ''}"
        )
    if not (args.queue or args.tracking or args.with_webhooks):
        raise ConfigError("--no-queue and --no-tracking leave nothing to run")
    settings = _settings(args)
    stores = open_stores(store_url(args, setup.env), setup.env, retry_timeout=args.store_timeout)
    worker = MessagingWorker(settings, setup, stores)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        # Health endpoints first: a port in use stops the worker before it claims anything.
        close_http, port = await _serve(args, worker)
    except BaseException:
        await worker.stop()
        raise
    try:
        await worker.start()
    except BaseException:
        await close_http()
        await worker.stop()
        raise
    services = [
        name
        for name, on in (
            ("queue", args.queue),
            ("tracking", args.tracking),
            ("webhooks", args.with_webhooks),
        )
        if on
    ]
    serving = "" if port is None else f"; metrics on http://{args.metrics_host}:{port}/metrics"
    for provider_id, problem in setup.broken.items():
        log.warning("provider %s is not configured: %s", provider_id, problem)
    log.info(
        "worker %s running %s from %s (providers %s; field crypto %s%s; SIGTERM to stop)",
        worker.worker_id,
        ", ".join(services),
        stores.shown_url,
        ", ".join(setup.providers),
        "on" if stores.crypto is not None else "off",
        serving,
        extra={
            "worker_id": worker.worker_id,
            "store": stores.shown_url,
            "services": services,
            "providers": list(setup.providers),
            "field_crypto": "on" if stores.crypto is not None else "off",
            "metrics_port": port,
        },
    )
    try:
        await stop.wait()
    finally:
        await close_http()
        await worker.stop()
    log.info("worker %s stopped", worker.worker_id, extra={"worker_id": worker.worker_id})
    return 0


async def cmd_worker(args: argparse.Namespace, setup: Setup, out: Output) -> int:
    return await run_worker(args, setup)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    worker = commands.add_parser(
        "worker",
        help="run the send queue and the delivery tracking (and webhooks) against a store",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    store_args(worker)
    worker.add_argument("--config", help="kmsg.toml (default: environment variables only)")
    worker.add_argument("--worker-id", help="lease owner name (default: a random id)")
    worker.add_argument(
        "--no-queue", dest="queue", action="store_false", help="do not send queued jobs"
    )
    worker.add_argument(
        "--no-tracking", dest="tracking", action="store_false", help="do not check deliveries"
    )
    worker.add_argument(
        "--with-webhooks", action="store_true", help="also dispatch the webhook deliveries"
    )
    worker.add_argument(
        "--concurrency", type=positive, default=16, help="jobs one claim takes and sends at once"
    )
    worker.add_argument(
        "--tracking-concurrency", type=positive, default=10, help="records checked at once"
    )
    worker.add_argument(
        "--first-check-s",
        type=non_negative_float,
        default=PollingConfig().initial_delay.total_seconds(),
        help="seconds from a send to its first delivery status check (default: 30)",
    )
    worker.add_argument(
        "--lease-s",
        type=positive_float,
        default=120.0,
        help="claim length: longer than one send or status check takes (default: 120)",
    )
    worker.add_argument(
        "--poll-s", type=positive_float, default=1.0, help="idle poll interval (default: 1)"
    )
    worker.add_argument(
        "--stop-grace",
        type=non_negative_float,
        default=30.0,
        help="on SIGTERM, seconds for sends and checks in flight to finish (default: 30)",
    )
    worker.add_argument(
        "--rate-limit",
        type=rate_limit,
        action="append",
        default=[],
        metavar="PROVIDER=PER_SECOND[:BURST]",
        help="a token bucket per provider (repeatable)",
    )
    worker.add_argument(
        "--breaker-failures",
        type=int,
        default=CircuitBreakerConfig().failures,
        help="consecutive transport failures that open a provider's circuit; 0: no breakers",
    )
    policy_args(worker)  # what --with-webhooks may deliver to
    worker.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    worker.add_argument("--log-format", choices=["text", "json"], default="text")
    worker.add_argument(
        "--metrics-port",
        type=tcp_port,
        help="serve /metrics, /healthz and /readyz on this port (needs kmsg-webhook[metrics])",
    )
    worker.add_argument("--metrics-host", default="127.0.0.1")
    worker.add_argument("--loop", choices=eventloop.LOOP_NAMES, default="auto")
    worker.set_defaults(run=cmd_worker, json=False)
