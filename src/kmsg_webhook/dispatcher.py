"""The dispatcher: claim due deliveries → send → record, with concurrency limits and health.

Data flows one way. Rows are claimed under a lease (so a crashed worker's rows come back),
sent concurrently (a global limit and a per-endpoint limit, so one slow endpoint cannot starve
the others), and their outcomes are recorded in bulk by a group commit. Retries are not slept
here: a failed attempt is recorded with ``next_attempt_at`` and claimed again when due.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from .batcher import GroupCommit
from .clock import Clock
from .config import WebhookConfig
from .endpoints import EndpointCache
from .models import (
    AttemptOutcome,
    DeliveryStatus,
    EndpointStatus,
    WebhookDelivery,
    WebhookEndpoint,
)
from .retry import backoff_ms, judge, parse_retry_after
from .sender import Sender, SendResult
from .store import WebhookPersistence, apply_outcome

logger = logging.getLogger("kmsg_webhook.dispatcher")


@dataclass(frozen=True, slots=True)
class _Settled:
    """An outcome plus what it means for the endpoint's health."""

    outcome: AttemptOutcome
    endpoint_id: str
    success: bool
    final_failure: bool
    gone: bool


class Dispatcher:
    """Runs the claim/send/record loop for one worker id."""

    def __init__(
        self,
        persistence: WebhookPersistence,
        sender: Sender,
        endpoints: EndpointCache,
        config: WebhookConfig,
        *,
        clock: Clock,
        worker_id: str,
        rng: random.Random | None = None,
    ) -> None:
        self._store = persistence.delivery_store
        self._endpoint_store = persistence.endpoint_store
        self._sender = sender
        self._endpoints = endpoints
        self._config = config
        self._clock = clock
        self.worker_id = worker_id
        self._rng = rng or random.Random()
        self._in_flight = 0
        self._per_endpoint: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._recorder: GroupCommit[_Settled] = GroupCommit(
            self._write_results,
            max_batch=config.claim_batch_size,
            max_wait_s=0.05,
            max_pending=max(config.max_concurrency * 4, config.claim_batch_size),
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Run the loop in the background until :meth:`stop`."""
        if self._loop_task is None:
            self._stopping = False
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    def wake(self) -> None:
        """New rows may be due: claim now instead of at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop claiming, let in-flight attempts finish and be recorded."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            task, self._loop_task = self._loop_task, None
            await task
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._recorder.close()

    async def drain(self) -> None:
        """Send every delivery due now, and the retries that become due meanwhile, then return.

        Deliveries scheduled for later stay scheduled.
        """
        while True:
            started = await self._claim_and_start()
            if started:
                continue
            if self._in_flight == 0:
                await self._recorder.drain()
                if self._in_flight == 0 and not await self._has_due():
                    return
                continue
            self._changed.clear()
            await self._changed.wait()

    # -- one-shot sends (emit_sync) ----------------------------------------------------------

    async def send_now(self, deliveries: Sequence[WebhookDelivery]) -> list[WebhookDelivery]:
        """Attempt already-leased deliveries once, record, and return them as recorded."""
        results = await asyncio.gather(*(self._attempt(d) for d in deliveries))
        await self._write_results(results)
        return [
            apply_outcome(d, r.outcome, max_stored_attempts=len(d.attempts) + 1)
            for d, r in zip(deliveries, results, strict=True)
        ]

    async def probe(self, endpoint: WebhookEndpoint, delivery: WebhookDelivery) -> SendResult:
        """One attempt that is neither stored nor retried (endpoint probes)."""
        return await self._sender.send(endpoint, delivery)

    # -- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        poll_s = self._config.poll_interval_ms / 1000
        while not self._stopping:
            try:
                started = await self._claim_and_start()
            except Exception:
                logger.exception("claiming deliveries failed; retrying in %.1fs", poll_s)
                started = 0
            if started or self._stopping:
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=poll_s)
            except TimeoutError:
                pass

    async def _has_due(self) -> bool:
        now = self._clock.now()
        probe = await self._store.claim(
            worker_id=self.worker_id,
            now=now,
            lease_until=now + timedelta(milliseconds=self._config.effective_lease_ms),
            limit=1,
            exclude_endpoints=self._saturated(),
        )
        if probe:
            self._start(probe)
        return bool(probe)

    def _saturated(self) -> set[str]:
        limit = self._config.max_concurrency_per_endpoint
        return {e for e, n in self._per_endpoint.items() if n >= limit}

    async def _claim_and_start(self) -> int:
        free = self._config.max_concurrency - self._in_flight
        want = min(free, self._config.claim_batch_size)
        # Small claims cost a round trip each; wait for room unless the pipe is nearly empty.
        if want <= 0 or (self._in_flight and want < self._config.claim_batch_size // 2):
            if self._in_flight:
                self._changed.clear()
                await self._changed.wait()
            return 0
        now = self._clock.now()
        claimed = await self._store.claim(
            worker_id=self.worker_id,
            now=now,
            lease_until=now + timedelta(milliseconds=self._config.effective_lease_ms),
            limit=want,
            exclude_endpoints=self._saturated(),
        )
        if claimed:
            await self._start_claimed(claimed)
        return len(claimed)

    async def _start_claimed(self, claimed: list[WebhookDelivery]) -> None:
        limit = self._config.max_concurrency_per_endpoint
        overflow: list[str] = []
        runnable: list[WebhookDelivery] = []
        planned: Counter[str] = Counter()
        for delivery in claimed:
            endpoint_id = delivery.endpoint_id
            if self._per_endpoint[endpoint_id] + planned[endpoint_id] >= limit:
                overflow.append(delivery.id)
            else:
                planned[endpoint_id] += 1
                runnable.append(delivery)
        if overflow:
            await self._store.release(overflow, worker_id=self.worker_id)
        self._start(runnable)

    def _start(self, deliveries: Sequence[WebhookDelivery]) -> None:
        loop = asyncio.get_running_loop()
        for delivery in deliveries:
            self._in_flight += 1
            self._per_endpoint[delivery.endpoint_id] += 1
            task = loop.create_task(self._deliver(delivery))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, delivery: WebhookDelivery) -> None:
        try:
            settled = await self._attempt(delivery)
            await self._recorder.submit(settled)
        except Exception:
            # The lease expires and another claim retries the delivery: nothing is lost.
            logger.exception("delivery %s could not be recorded", delivery.id)
        finally:
            self._in_flight -= 1
            self._per_endpoint[delivery.endpoint_id] -= 1
            if not self._per_endpoint[delivery.endpoint_id]:
                del self._per_endpoint[delivery.endpoint_id]
            self._changed.set()

    # -- one attempt -------------------------------------------------------------------------

    async def _attempt(self, delivery: WebhookDelivery) -> _Settled:
        endpoint = await self._endpoints.get(delivery.endpoint_id)
        if endpoint is None or not endpoint.active:
            reason = (
                "endpoint was removed"
                if endpoint is None
                else f"endpoint is {endpoint.status.value}"
                + (f" ({endpoint.disabled_reason})" if endpoint.disabled_reason else "")
            )
            now = self._clock.now()
            outcome = AttemptOutcome(
                delivery_id=delivery.id,
                worker_id=self.worker_id,
                attempt=None,
                status=DeliveryStatus.FAILED,
                next_attempt_at=None,
                completed_at=now,
                error=reason,
            )
            return _Settled(outcome, delivery.endpoint_id, False, False, False)

        result = await self._sender.send(endpoint, delivery)
        attempt = result.attempt
        now = self._clock.now()
        verdict = judge(attempt.http_status)
        retryable = verdict.retryable and not result.refused
        status: DeliveryStatus
        next_at: datetime | None = None
        if verdict.success:
            status = DeliveryStatus.SUCCESS
        elif retryable and attempt.attempt_number <= self._max_retries(endpoint):
            status = DeliveryStatus.PENDING
            next_at = now + timedelta(milliseconds=self._retry_delay_ms(endpoint, result))
        elif retryable:
            status = DeliveryStatus.EXHAUSTED
        else:
            status = DeliveryStatus.FAILED
        outcome = AttemptOutcome(
            delivery_id=delivery.id,
            worker_id=self.worker_id,
            attempt=attempt,
            status=status,
            next_attempt_at=next_at,
            completed_at=None if status is DeliveryStatus.PENDING else now,
        )
        return _Settled(
            outcome,
            endpoint.id,
            success=verdict.success,
            final_failure=status in (DeliveryStatus.FAILED, DeliveryStatus.EXHAUSTED),
            gone=verdict.disable_endpoint,
        )

    def _max_retries(self, endpoint: WebhookEndpoint) -> int:
        override = endpoint.retry_config.max_retries if endpoint.retry_config else None
        return self._config.max_retries if override is None else override

    def _retry_delay_ms(self, endpoint: WebhookEndpoint, result: SendResult) -> float:
        config = self._config
        rc = endpoint.retry_config
        base = rc.retry_delay_ms if rc and rc.retry_delay_ms is not None else config.retry_delay_ms
        mult = (
            rc.backoff_multiplier
            if rc and rc.backoff_multiplier is not None
            else config.backoff_multiplier
        )
        delay = backoff_ms(
            result.attempt.attempt_number,
            base_ms=base,
            multiplier=mult,
            cap_ms=config.max_delay_ms,
            jitter=config.jitter,
            rng=self._rng,
        )
        asked = parse_retry_after(result.retry_after, self._clock.now())
        if asked is not None:
            delay = max(delay, min(asked, config.max_delay_ms))
        return delay

    # -- recording and endpoint health -------------------------------------------------------

    async def _write_results(self, results: Sequence[_Settled]) -> None:
        await self._store.record([r.outcome for r in results])
        await self._update_health(results)

    async def _update_health(self, results: Sequence[_Settled]) -> None:
        by_endpoint: defaultdict[str, list[_Settled]] = defaultdict(list)
        for r in results:
            if r.outcome.attempt is not None:
                by_endpoint[r.endpoint_id].append(r)
        now = self._clock.now()
        for endpoint_id, items in by_endpoint.items():
            if any(r.gone for r in items):
                await self._disable(endpoint_id, "410 Gone: the receiver asked to stop deliveries")
                continue
            succeeded = any(r.success for r in items)
            failures = sum(r.final_failure for r in items)
            cached = await self._endpoints.get(endpoint_id)
            healthy = cached is not None and not cached.consecutive_failures
            healthy = healthy and cached is not None and cached.failing_since is None
            if succeeded and healthy:
                continue  # nothing to reset: skip the write on the hot path
            if not succeeded and not failures and cached is not None and cached.failing_since:
                continue  # a retry was scheduled; failing_since is already set
            updated = await self._endpoint_store.record_health(
                endpoint_id, succeeded=succeeded, failures=failures, at=now
            )
            if updated is None:
                continue
            self._endpoints.put(updated)
            reason = self._policy_violation(updated, now)
            if reason:
                await self._disable(endpoint_id, reason)

    def _policy_violation(self, endpoint: WebhookEndpoint, now: datetime) -> str | None:
        policy = self._config.health
        limit = policy.max_consecutive_failures
        if limit is not None and endpoint.consecutive_failures >= limit:
            return f"{endpoint.consecutive_failures} deliveries in a row failed"
        window = policy.max_failing_ms
        if window is not None and endpoint.failing_since is not None:
            failing_ms = (now - endpoint.failing_since).total_seconds() * 1000
            if failing_ms >= window:
                return f"no successful delivery for {failing_ms / 1000:.0f}s"
        return None

    async def _disable(self, endpoint_id: str, reason: str) -> None:
        endpoint = await self._endpoint_store.get(endpoint_id)
        if endpoint is None or endpoint.status is not EndpointStatus.ACTIVE:
            return
        disabled = dataclasses.replace(
            endpoint,
            status=EndpointStatus.ERROR,
            disabled_reason=reason,
            updated_at=self._clock.now(),
        )
        await self._endpoint_store.update(disabled)
        self._endpoints.put(disabled)
        logger.warning("endpoint %s disabled: %s", endpoint_id, reason)
