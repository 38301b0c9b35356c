"""Scheduled and bulk sends through the durable job queue.

``KMsg(..., jobs=store)`` routes ``send(..., scheduled_at=)`` and ``send_many`` here. Every
message is validated and routed first (a bad one fails at once, as ``send`` would), then stored
as a job before anything is sent. ``send_many`` then claims its own batch's jobs under a lease,
sends them through ``KMsg.send`` (hooks and webhook events as usual) and records each result
right after its send; it returns one result per input, in order. A scheduled job waits for
``run_at`` and is sent by whatever runs :meth:`SendQueue.run_once` / :meth:`SendQueue.start`
(any process on the same store). A process killed mid-send leaves leases that expire; another
worker then sends those jobs (at least once: only a send in flight when it died can repeat).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .errors import KMsgError, KMsgErrorCode
from .jobs import JobResult, JobStatus, JobStore, SendJob
from .leases import new_worker_id
from .provider import SleepFn, now_utc
from .result import Fail, Ok
from .types import (
    BatchSendResult,
    MessageStatus,
    SendInput,
    SendOptions,
    SendOutcome,
    SendResult,
)

if TYPE_CHECKING:
    from .kmsg import KMsg

logger = logging.getLogger("kmsg_webhook.messaging.queue")


@dataclass(frozen=True, slots=True)
class SendQueueOptions:
    """How a :class:`SendQueue` works.

    ``lease`` must outlast one send (the provider's timeout and retries) and its result's write;
    ``concurrency`` is how many jobs one claim takes and sends at once (no claimed job waits for
    a slot, so the lease only covers a send); ``interval`` how long
    :meth:`SendQueue.start`'s loop, and a bulk send waiting on another worker, sleep between
    claims. ``worker_id`` names this process's leases (unique per process by default).
    ``on_result`` sees each claimed job with the result recorded for it (metrics, logs).
    """

    lease: timedelta = timedelta(minutes=2)
    concurrency: int = 16
    interval: float = 1.0
    worker_id: str | None = None
    on_result: Callable[[SendJob, JobResult], None] | None = None

    def __post_init__(self) -> None:
        if self.lease <= timedelta(0) or self.concurrency < 1 or self.interval <= 0:
            raise ConfigError("lease, concurrency and interval must be positive")


class SendQueue:
    """Runs a :class:`JobStore` for one :class:`KMsg` (``KMsg(jobs=...)`` makes one)."""

    def __init__(
        self,
        kmsg: KMsg,
        store: JobStore,
        options: SendQueueOptions | None = None,
        *,
        clock: Callable[[], datetime] = now_utc,
        sleep: SleepFn = asyncio.sleep,
    ) -> None:
        options = options or SendQueueOptions()
        self.kmsg = kmsg
        self.store = store
        self.worker_id = options.worker_id or new_worker_id()
        self._lease = options.lease
        self._concurrency = options.concurrency
        self._interval = options.interval
        self._on_result = options.on_result
        self._clock = clock
        self._sleep = sleep
        self._loop_task: asyncio.Task[None] | None = None
        self._run_task: asyncio.Future[int] | None = None

    async def schedule(self, message: SendInput, *, at: datetime) -> SendOutcome:
        """Store ``message`` to be sent at ``at``; ``Ok`` with status PENDING once stored."""
        prepared = self.kmsg.prepare(message)
        if isinstance(prepared, Fail):
            return await self.kmsg.send(message)  # fails as a direct send would, hooks and all
        job = self._job(prepared.value, run_at=at, batch_id=None)
        if not await self.store.enqueue([job]):
            stored = await self.store.get(job.id)
            return _outcome(stored or job)
        return Ok(_pending(job))

    async def send_many(self, messages: Sequence[SendInput]) -> BatchSendResult:
        """Store every valid message as a job of one batch, send them, report each."""
        batch_id = f"batch-{uuid.uuid4().hex}"
        now = self._clock()
        results: list[SendOutcome | None] = [None] * len(messages)
        queued: list[tuple[int, SendJob]] = []
        for index, message in enumerate(messages):
            prepared = self.kmsg.prepare(message)
            if isinstance(prepared, Fail):
                results[index] = await self.kmsg.send(message)
            else:
                queued.append((index, self._job(prepared.value, run_at=now, batch_id=batch_id)))
        await self.store.enqueue([job for _, job in queued])
        own = await self._drain(batch_id)
        listed = await self.store.list_jobs(batch_id=batch_id, limit=len(queued))
        stored = {job.id: job for job in listed}
        for index, job in queued:
            if job.id in own:
                results[index] = own[job.id]
                continue
            # Sent by another worker, or queued before under the same message id.
            found = stored.get(job.id) or await self.store.get(job.id) or job
            results[index] = _outcome(found)
        final = [r if r is not None else Fail(_missing(i)) for i, r in enumerate(results)]
        return BatchSendResult(total=len(final), results=tuple(final))

    async def run_once(self) -> int:
        """Claim due jobs (up to ``concurrency``), send them; returns how many."""
        now = self._clock()
        claimed = await self.store.claim(
            worker_id=self.worker_id,
            now=now,
            lease_until=now + self._lease,
            limit=self._concurrency,
        )
        await self._send(claimed)
        return len(claimed)

    def start(self) -> None:
        """Run :meth:`run_once` every ``interval`` seconds in the background until :meth:`stop`."""
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self, *, grace: float = 0.0) -> None:
        """Stop the background loop. Sends in flight get ``grace`` seconds to finish and be
        recorded; those cancelled then keep their leases until they expire (another worker
        sends them after that: at least once)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        run, self._run_task = self._run_task, None
        if run is not None and not run.done():
            logger.info("send queue stopped claiming; the sends in flight get %.1fs", grace)
            try:
                await asyncio.wait_for(run, grace)
            except (TimeoutError, asyncio.CancelledError):
                logger.warning("Sends still in flight after %.1fs were cancelled", grace)
            except Exception:
                logger.exception("Send queue run failed")

    async def _loop(self) -> None:
        while True:
            # Shielded: stopping the loop leaves the sends in flight to stop()'s grace.
            self._run_task = asyncio.ensure_future(self.run_once())
            try:
                if await asyncio.shield(self._run_task):
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Send queue run failed")
            await self._sleep(self._interval)

    async def _drain(self, batch_id: str) -> dict[str, SendOutcome]:
        """Send the batch's jobs until none is pending; the outcomes this worker got."""
        own: dict[str, SendOutcome] = {}
        while True:
            now = self._clock()
            claimed = await self.store.claim(
                worker_id=self.worker_id,
                now=now,
                lease_until=now + self._lease,
                limit=self._concurrency,
                batch_id=batch_id,
            )
            if claimed:
                own.update(await self._send(claimed))
                continue
            if not (await self.store.count_by_status(batch_id=batch_id))[JobStatus.PENDING]:
                return own
            await self._sleep(self._interval)  # another worker holds some: wait for it

    async def _send(self, jobs: Sequence[SendJob]) -> dict[str, SendOutcome]:
        outcomes: dict[str, SendOutcome] = {}
        recorder = _GroupRecorder(self.store)

        async def one(job: SendJob) -> None:
            outcome = await self.kmsg.send(job.options)
            outcomes[job.id] = outcome
            # Recorded right after the send (grouped with the results that finished
            # meanwhile): a crash later repeats no message already recorded.
            result = self._result(job, outcome)
            await recorder.record(result)
            if self._on_result is not None:
                self._on_result(job, result)

        await asyncio.gather(*(one(job) for job in jobs))
        return outcomes

    def _job(self, options: SendOptions, *, run_at: datetime, batch_id: str | None) -> SendJob:
        assert options.message_id  # KMsg.prepare fills it in
        return SendJob(
            id=options.message_id,
            options=options,
            run_at=run_at,
            created_at=self._clock(),
            batch_id=batch_id,
        )

    def _result(self, job: SendJob, outcome: SendOutcome) -> JobResult:
        now = self._clock()
        if isinstance(outcome, Ok):
            return JobResult(
                job.id,
                self.worker_id,
                JobStatus.SENT,
                now,
                provider_id=outcome.value.provider_id,
                provider_message_id=outcome.value.provider_message_id,
            )
        error = outcome.error
        return JobResult(
            job.id,
            self.worker_id,
            JobStatus.FAILED,
            now,
            provider_id=error.provider_id,
            error_code=error.code.value,
            error_message=error.message,
        )


class _GroupRecorder:
    """Records results as sends finish: whoever takes the lock writes every result waiting,
    so under load one transaction carries many results, and alone it carries one."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._waiting: list[JobResult] = []
        self._lock = asyncio.Lock()

    async def record(self, result: JobResult) -> None:
        self._waiting.append(result)
        async with self._lock:
            if not self._waiting:
                return  # an earlier holder wrote ours with its group
            group, self._waiting = self._waiting, []
            applied = await self._store.complete(group)
        if applied < len(group):
            logger.warning(
                "%d job leases lost before their results were recorded", len(group) - applied
            )


def _pending(job: SendJob) -> SendResult:
    options = job.options
    return SendResult(
        message_id=job.id,
        provider_id=job.provider_id or options.provider_id or "",
        status=MessageStatus.PENDING,
        type=options.type,
        to=options.to,
    )


def _outcome(job: SendJob) -> SendOutcome:
    """A stored job's result as a send outcome (for jobs another worker sent)."""
    if job.status is JobStatus.FAILED:
        try:
            code = KMsgErrorCode(job.error_code or "")
        except ValueError:
            code = KMsgErrorCode.UNKNOWN_ERROR
        return Fail(KMsgError(code, job.error_message or "", provider_id=job.provider_id))
    result = _pending(job)
    if job.status is JobStatus.SENT:
        return Ok(
            SendResult(
                message_id=result.message_id,
                provider_id=result.provider_id,
                status=MessageStatus.SENT,
                type=result.type,
                to=result.to,
                provider_message_id=job.provider_message_id,
            )
        )
    return Ok(result)


def _missing(index: int) -> KMsgError:
    return KMsgError(KMsgErrorCode.UNKNOWN_ERROR, f"Batch result missing for input index {index}")
