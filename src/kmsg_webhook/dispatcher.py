"""The dispatcher: claim due deliveries → send → record, with concurrency limits and health.

Data flows one way. Rows are claimed under a lease (so a crashed worker's rows come back),
sent concurrently (a global limit, and a per-endpoint limit that adapts to how the endpoint
answers, so slow endpoints cannot starve the others: see :mod:`.pacing`), and their outcomes
are recorded in bulk by a group commit. Retries are not slept here: a failed attempt is
recorded with ``next_attempt_at`` and claimed again when due.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import logging
import math
import random
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .batcher import GroupCommit
from .clock import Clock
from .config import WebhookConfig
from .endpoints import EndpointCache
from .errors import FieldCryptoError
from .hooks import (
    AttemptEvent,
    EndpointChange,
    EndpointStatusEvent,
    HookSet,
    SettledEvent,
)
from .models import (
    AttemptOutcome,
    DeliveryStatus,
    EndpointStatus,
    WebhookDelivery,
    WebhookEndpoint,
    build_outcome,
    evolve_delivery,
)
from .pacing import Pacing
from .retry import backoff_ms, judge, parse_retry_after
from .sender import AttemptResult, Sender
from .stores.protocol import apply_outcome
from .stores.sealed import Sealing, unreadable_outcome

logger = logging.getLogger("kmsg_webhook.dispatcher")
_GONE_REASON = "410 Gone: the receiver asked to stop deliveries"
_DISABLE_REASON = "the receiver asked to stop deliveries (webhook-delivery: disable)"
_LEASE_STEP = timedelta(milliseconds=1)
#: The claimer's timer for rows falling due (retries, ends of rests) fires on this grid, so
#: that many endpoints' due times share one claim instead of costing one each.
_DUE_TICK_S = 0.25
#: How long the outcome of an attempt that timed out may wait to share a record write.
_TIMEOUT_RECORD_LINGER_S = 0.25
#: Writes new rows (as built: plaintext) and returns the ids of those that were new.
WriteRows = Callable[[Sequence[WebhookDelivery]], Awaitable[Collection[str]]]


@dataclass(slots=True)  # internal, one per attempt: a plain init is four times cheaper
class _Settled:
    """An outcome plus what it means for the endpoint's health."""

    outcome: AttemptOutcome
    endpoint_id: str
    success: bool
    final_failure: bool
    #: The receiver asked to stop deliveries to the endpoint (410, ``webhook-delivery``).
    disable_reason: str | None
    delivery: WebhookDelivery
    #: Refused before it left (URL guard, signing): says nothing about the endpoint's speed.
    refused: bool = False
    #: No answer within ``timeout_ms``.
    timed_out: bool = False
    #: An ordered delivery ended: once recorded, the next of its key is claimable.
    frees_key: bool = False
    #: Set for an attempt its emit_sync caller made (not held by the workers, so its record
    #: frees no room): resolved once the outcome is recorded.
    recorded: asyncio.Future[None] | None = None


class Dispatcher:
    """Runs the claim/send/record loop for one worker id.

    ``max_concurrency`` worker coroutines take deliveries from per-endpoint ready queues in
    round-robin order, so an endpoint holds at most its current limit of workers (see
    :class:`~kmsg_webhook.pacing.Pacing`: 1 while it times out) and the rest keep serving
    everyone else. A claimer keeps the queues topped up, claiming ahead in batches; what it
    claims beyond an endpoint's share goes straight back. A resting endpoint's rows are left
    out of every claim, so they stay in the store untouched until its rest ends.

    ``sealing`` is field crypto (or its absence) at the store boundary: rows are claimed as
    stored and opened by it, endpoints are cached as stored and opened by it for the attempt.
    A delivery whose values do not open (or are sealed and there are no keys) is settled
    ``failed`` with the reason, without a request. New rows handed over at intake are the
    plaintext rows the runtime built.
    """

    def __init__(
        self,
        sealing: Sealing,
        sender: Sender,
        endpoints: EndpointCache,
        config: WebhookConfig,
        *,
        clock: Clock,
        worker_id: str,
        rng: random.Random | None = None,
        hooks: HookSet | None = None,
    ) -> None:
        self._sealing = sealing
        self._hooks = hooks or HookSet()
        self._store = sealing.stored.delivery_store
        self._endpoint_store = sealing.stored.endpoint_store
        self._sender = sender
        self._endpoints = endpoints
        self._config = config
        self._clock = clock
        self.worker_id = worker_id
        self._rng = rng or random.Random()
        self._ready: dict[str, deque[WebhookDelivery]] = {}
        self._runnable: deque[str] = deque()  # endpoints with ready work and a free slot
        self._queued: set[str] = set()  # the same endpoints, for O(1) membership
        self._active: dict[str, int] = {}  # attempts being sent, per endpoint
        self._pacing = Pacing(config)
        # Every row held (queued, being sent, or waiting for its record) → when it was due and
        # its endpoint: what a flush waits for, and what is given back when stopping.
        self._held_due: dict[str, tuple[datetime, str]] = {}
        self._outstanding = 0  # claimed (or taken at intake) and not yet recorded
        self._recording = 0  # of those, sent and waiting for the recorder
        self._claims_running = 0
        self._ready_count = 0  # claimed and waiting for a worker
        # New rows promised to this worker by an intake write in progress, per endpoint.
        self._taking: dict[str, int] = {}
        # The store may hold due rows this worker has not claimed (of any endpoint, or of
        # these endpoints): new rows then go to the store like everyone else's, so the
        # backlog is served oldest first.
        self._backlog = True
        # Endpoint → the claim round when a row of it was last left to the store: a short
        # claim started later that does not leave the endpoint alone covers it.
        self._stored_endpoints: dict[str, int] = {}
        self._claim_round = 0
        # The last lease handed out (claim or intake); each is at least 1 ms later, so a
        # retried claim knows the rows its lost first attempt leased by their lease alone.
        self._last_lease = datetime.min.replace(tzinfo=UTC)
        self._lease = timedelta(milliseconds=config.effective_lease_ms)
        # Below this much room, a claimer with queued work waits instead of making a small
        # claim (each claim is a store round trip).
        self._claim_threshold = max(1, config.claim_batch_size // 2)
        self._idle_workers: deque[asyncio.Future[None]] = deque()
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        # Endpoints the last short claim left out because this worker held their share: the
        # claimer sleeps until one of them has a round of room again, not a whole poll.
        self._starved: set[str] = set()
        # When the retries this worker scheduled (or was told of) fall due, earliest first, and
        # the timer that wakes the claimer at the earliest.
        self._due: list[datetime] = []
        self._due_timer: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        # Ordered deliveries that ended and wait for their record (0 without ordered
        # endpoints: recording then looks at nothing), and how many records freed a key.
        self._keys_ending = 0
        self._keys_freed = 0
        self._recorder: GroupCommit[_Settled] = GroupCommit(
            self._write_results,
            max_batch=config.claim_batch_size,
            max_wait_s=0.05,
            max_pending=max(config.max_concurrency * 4, config.claim_batch_size),
            # One write at a time: outcomes that arrive meanwhile share the next round trip.
            max_concurrent_writes=1,
            on_written=self._recorded,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, *, claim: bool = True) -> None:
        """Start the workers and, with ``claim``, the background claimer (until :meth:`stop`)."""
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        self._stopping = False
        self._tasks = [
            loop.create_task(self._worker()) for _ in range(self._config.max_concurrency)
        ]
        if claim:
            self._tasks.append(loop.create_task(self._claimer()))

    def wake(self) -> None:
        """New rows may be due: claim now instead of at the next poll."""
        self._wake.set()

    def due_at(self, at: datetime | None) -> None:
        """Rows become due at ``at`` (``None``: unknown, look now): the claimer wakes then
        instead of at the next poll after it."""
        if at is None or at <= self._clock.now():
            self._wake.set()
            return
        due = self._due
        earliest = due[0] if due else None
        heapq.heappush(due, at)
        if earliest is None or at < earliest:
            self._arm()

    def _arm(self) -> None:
        """(Re)set the timer for the earliest pending due time."""
        if self._due_timer is not None:
            self._due_timer.cancel()
            self._due_timer = None
        if not self._due:
            return
        loop = asyncio.get_running_loop()
        delay = (self._due[0] - self._clock.now()).total_seconds()
        # Late by up to a tick (and at least a millisecond, so the row is due by the store's
        # clock too).
        when = math.ceil((loop.time() + max(0.0, delay) + 0.001) / _DUE_TICK_S) * _DUE_TICK_S
        self._due_timer = loop.call_at(when, self._due_now)

    def _due_now(self) -> None:
        self._due_timer = None
        due, now = self._due, self._clock.now()
        if due:
            heapq.heappop(due)  # the time this timer was set for (even if a clock says not yet)
        while due and due[0] <= now:
            heapq.heappop(due)
        self._wake.set()
        self._arm()

    @property
    def in_flight(self) -> int:
        """Attempts being sent right now."""
        return sum(self._active.values())

    async def stop(self, *, cancel: bool = False) -> None:
        """Stop claiming; in-flight attempts finish (with ``cancel``: are cancelled) and what
        was settled is recorded; every other held row is given back at once."""
        self._stopping = True
        self._wake.set()
        if self._due_timer is not None:
            self._due_timer.cancel()
            self._due_timer = None
        self._due.clear()
        self._wake_workers(len(self._idle_workers))
        if self._tasks:
            if cancel:
                for task in self._tasks:
                    task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
        self._ready.clear()
        self._ready_count = 0
        self._runnable.clear()
        self._queued.clear()
        await self._recorder.close()
        # Queued, or cancelled mid-send: back to the store, claimable again at once.
        leftovers = list(self._held_due)
        self._held_due.clear()
        if leftovers:
            self._outstanding -= len(leftovers)
            await self._release(leftovers)

    async def drain(self, *, due_by: datetime | None = None) -> None:
        """Send every delivery due at ``due_by`` (default: now) and return once each is recorded,
        except those of endpoints resting after timeouts when it is called: they count as
        settled and stay pending in the store until the rest ends (and are not waited for when
        it ends meanwhile: its probe may take ``timeout_ms``). Nor does it wait for the rows
        this worker already holds, when it is called, for an endpoint whose last attempt got no
        answer (a probe in flight, or rows queued behind one): the background loop records
        them. Retries scheduled meanwhile, and rows that became due later, are left to the
        background loop. Needs :meth:`start`.

        Cancelling it stops waiting at once: a claim in progress still completes and its rows
        are sent by the workers.
        """
        now = self._clock.now()
        cutoff = now if due_by is None else due_by
        resting = self._pacing.resting(now)
        stalling = self._pacing.stalling(now)
        waived = {i for i, (_, endpoint_id) in self._held_due.items() if endpoint_id in stalling}
        while True:
            if self._room() > 0:
                freed = self._keys_freed
                full = self._full()
                if await asyncio.shield(self._claim(due_by=cutoff, full=full | resting)):
                    continue
                # Nothing due elsewhere; one row of a saturated endpoint says whether they
                # still have some (it is queued or given back like any claimed row).
                left = bool(full - resting) and bool(
                    await asyncio.shield(self._claim(due_by=cutoff, full=set(resting), most=1))
                )
                if (
                    not left
                    and not self._claims_running
                    and not self._holds_due(cutoff, resting, waived)
                ):
                    if freed != self._keys_freed:
                        continue  # an ordered delivery ended during the claim: its key's next
                    return
            # Whatever keeps it waiting (rows held, a claim running, no room) signals when it
            # changes; a signal from its own claims is no news.
            self._changed.clear()
            await self._changed.wait()

    def _holds_due(self, cutoff: datetime, skip: Collection[str], waived: Collection[str]) -> bool:
        """Whether a row due by ``cutoff`` is held, of an endpoint not in ``skip`` and not
        itself in ``waived``."""
        return any(
            due <= cutoff and endpoint_id not in skip and delivery_id not in waived
            for delivery_id, (due, endpoint_id) in self._held_due.items()
        )

    # -- new rows from intake -----------------------------------------------------------------

    async def hand_off(
        self, rows: Sequence[WebhookDelivery], write: WriteRows, *, leasable: bool = True
    ) -> None:
        """Write new rows (``rows``: due now, unleased, plaintext, as the runtime built them)
        and queue those this worker can send at once, without a claim.

        A row to an endpoint resting after timeouts is written like any other and left to the
        store: claims leave it alone until the rest ends. Rows within the room a claim would
        keep (not ordered ones, whose turn the store knows, and none while an older backlog
        waits in the store) are written leased to this worker; the rest are left to the
        claimer, which is woken. ``leasable=False`` (rows in a caller's transaction, which may
        never commit) leases none. Should this process die between the write and the send, the
        leases expire and any worker claims the rows, as after a crash mid-send.
        """
        now = self._clock.now()
        lease_until = self._intake_lease(now) if leasable else None
        resting = self._pacing.resting_until
        written: list[WebhookDelivery] = []
        taken: list[WebhookDelivery] = []
        left_due = False
        for row in rows:
            endpoint_id = row.endpoint_id
            if resting(endpoint_id, now) is not None:
                # No claim takes it before the rest ends (nothing to wake the claimer for);
                # new rows after the rest wait behind it, as behind any row left to the store.
                self._stored_endpoints[endpoint_id] = self._claim_round
            elif lease_until is not None and row.ordering_key is None and self._take(endpoint_id):
                row = evolve_delivery(row, lease_owner=self.worker_id, lease_expires_at=lease_until)
                taken.append(row)
            else:
                left_due = True
            written.append(row)
        try:
            inserted = await write(written)
        except BaseException:
            self._adopt(taken, ())  # gives their room back
            raise
        if taken:
            resting_now = self._adopt(
                taken, None if len(inserted) == len(written) else set(inserted)
            )
            if resting_now:
                await self._release(resting_now)
        if left_due:
            self.wake()

    def lease_for_sending(self, now: datetime) -> datetime:
        """The lease of new rows their caller sends at once through :meth:`send_now`."""
        return self._new_lease(now)

    async def send_now(
        self, rows: Sequence[WebhookDelivery], write: WriteRows
    ) -> list[WebhookDelivery]:
        """Write new rows (as :meth:`hand_off` takes them, but those to send now already
        leased to this worker until :meth:`lease_for_sending`), attempt each leased one once,
        record them (with the other outcomes waiting for the recorder) and return them as
        recorded (emit_sync). Unleased rows (ordered ones) wait their turn in the store and
        are returned pending; rows the store already had are left out."""
        inserted = set(await write(rows))
        now_rows = [r for r in rows if r.id in inserted and r.lease_owner is not None]
        waiting = [r for r in rows if r.id in inserted and r.lease_owner is None]
        if waiting:
            self.wake()
        if len(now_rows) == 1:  # emit_sync to one endpoint: no task and gather for one send
            results = [await self._attempt(now_rows[0])]
        else:
            results = await asyncio.gather(*(self._attempt(d) for d in now_rows))
        recorder = self._recorder
        if recorder.closed:  # stopped meanwhile: nothing else is recorded, write these alone
            await self._write_results(results)
        else:
            # Recorded with the outcomes of other callers and workers: one record and one
            # health check per batch. Queued, not submitted: the attempts were made, so they
            # are recorded even if the caller stops waiting (a withdrawn outcome would leave
            # its row to be sent again).
            loop = asyncio.get_running_loop()
            waiters: list[asyncio.Future[None]] = []
            for result in results:
                result.recorded = waiter = loop.create_future()
                waiters.append(waiter)
                recorder.enqueue(result)
            if len(waiters) == 1:
                await waiters[0]
            else:
                await asyncio.gather(*waiters)
        sent = [
            apply_outcome(d, r.outcome, max_stored_attempts=len(d.attempts) + 1)
            for d, r in zip(now_rows, results, strict=True)
        ]
        return [*sent, *waiting]

    async def probe(self, endpoint: WebhookEndpoint, delivery: WebhookDelivery) -> AttemptResult:
        """One attempt that is neither stored nor retried (endpoint probes)."""
        return await self._sender.send(endpoint, delivery)

    def _intake_lease(self, now: datetime) -> datetime | None:
        """The lease for new rows this worker could send at once, or ``None`` (not running,
        stopping, or the store may hold older due rows that should go first)."""
        if not self._tasks or self._stopping or self._backlog or self._room() <= 0:
            return None
        return self._new_lease(now)

    def _new_lease(self, now: datetime) -> datetime:
        """A lease ending ``effective_lease_ms`` after ``now``, and 1 ms (the coarsest store's
        precision) after any lease this worker handed out before."""
        until = max(now + self._lease, self._last_lease + _LEASE_STEP)
        self._last_lease = until
        return until

    def _take(self, endpoint_id: str) -> bool:
        """Reserve room for one new row to ``endpoint_id`` (within the same limits a claim
        keeps); ``False``: leave it to the store and the claimer."""
        taking = self._taking.get(endpoint_id, 0)
        if (
            self._room() <= 0
            or endpoint_id in self._stored_endpoints
            or taking + self._held(endpoint_id) >= self._pacing.holding(endpoint_id)
        ):
            self._stored_endpoints[endpoint_id] = self._claim_round
            return False
        self._taking[endpoint_id] = taking + 1
        self._outstanding += 1
        return True

    def _adopt(
        self, taken: Sequence[WebhookDelivery], inserted: Collection[str] | None
    ) -> list[str]:
        """Queue the taken rows the store accepted (``inserted``: their ids; ``None``: all of
        them); the room kept for the rest (duplicates, or all when the write failed) is given
        back. Returns the ids of accepted rows whose endpoint started resting during the write:
        leased to this worker, they are for the caller to release."""
        kept = 0
        resting: list[str] = []
        taking = self._taking
        for delivery in taken:
            endpoint_id = delivery.endpoint_id
            left = taking[endpoint_id] - 1
            if left:
                taking[endpoint_id] = left
            else:
                del taking[endpoint_id]
            if inserted is not None and delivery.id not in inserted:
                self._outstanding -= 1
                continue
            if self._pacing.resting_until(endpoint_id, delivery.created_at) is not None:
                self._outstanding -= 1
                resting.append(delivery.id)
                continue
            self._queue(delivery)
            kept += 1
        self._ready_count += kept
        if kept < len(taken):
            self._changed.set()
        self._wake_workers(kept)
        return resting

    # -- claiming ----------------------------------------------------------------------------

    async def _claimer(self) -> None:
        poll_s = self._config.poll_interval_ms / 1000
        while not self._stopping:
            if self._ready_count and self._room() < self._claim_threshold:
                # Plenty queued and little room: wait for recorded deliveries to free some.
                self._changed.clear()
                await self._wait(self._changed, poll_s)
                continue
            self._wake.clear()  # a wake-up from now on (an emit, a NOTIFY) means: look again
            try:
                claimed = await self._claim()
            except Exception:
                logger.exception("claiming deliveries failed; retrying in %.1fs", poll_s)
                await self._wait(self._wake, poll_s)
                continue
            if (claimed and self._backlog) or self._stopping or self._has_room(self._starved):
                continue  # (the sends of a left-out endpoint may have finished meanwhile)
            # A short claim took every row due: wait for more (a wake-up, or the next poll).
            await self._wait(self._wake, poll_s)

    @staticmethod
    async def _wait(event: asyncio.Event, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=timeout_s)

    def _room(self) -> int:
        """How many more rows to hold: enough for every worker plus one claim ahead, not
        counting sent rows that wait for their record (up to two record batches)."""
        config = self._config
        # Recording is a store round trip: the workers keep sending meanwhile, not idling.
        unsent = self._outstanding - min(self._recording, 2 * config.claim_batch_size)
        return config.max_concurrency + config.claim_batch_size - unsent

    def _full(self) -> set[str]:
        """Endpoints holding as many rows as their limit: a claim leaves their rows alone."""
        limit = self._pacing.limit
        return {e for e in self._ready if self._held(e) >= limit(e)} | {
            e for e, n in self._active.items() if n >= limit(e)
        }

    async def _claim(
        self,
        *,
        due_by: datetime | None = None,
        full: set[str] | None = None,
        most: int | None = None,
    ) -> int:
        """Claim up to ``most`` rows due now (or at ``due_by``) into the ready queues, leaving
        the ``full`` endpoints' rows alone, and those of resting endpoints; returns how many
        were kept."""
        config = self._config
        want = min(self._room(), config.claim_batch_size, most or config.claim_batch_size)
        if want <= 0:
            return 0
        if full is None:
            full = self._full()
        now = self._clock.now()
        # A resting endpoint's rows stay in the store as they are (no write per row per rest);
        # the claim's exclusion reads none of them.
        left_alone = full | self._pacing.resting(now)
        self._claim_round += 1
        round_started = self._claim_round
        self._claims_running += 1
        try:
            claimed = await self._store.claim(
                worker_id=self.worker_id,
                now=now if due_by is None else min(now, due_by),
                lease_until=self._new_lease(now),
                limit=want,
                exclude_endpoints=left_alone,
            )
        finally:
            self._claims_running -= 1
            self._changed.set()  # a drain waiting for this claim looks again
        if due_by is None:
            # A short claim found every row due now, except those of the endpoints it left
            # alone (and rows left to the store while it ran: the wake-up that follows claims
            # again). A full one may have left any endpoint's rows behind.
            backlog_before, self._backlog = self._backlog, len(claimed) >= want
            if not self._backlog:
                # Rows left to the store before it started are claimed now, except those of
                # the endpoints it left alone (which may also hold rows of an older backlog).
                stored = self._stored_endpoints
                for endpoint_id in [
                    e for e, n in stored.items() if n < round_started and e not in left_alone
                ]:
                    del stored[endpoint_id]
                if backlog_before:
                    stored.update(dict.fromkeys(left_alone, round_started))
            # (Not the resting ones: the timer set when the rest began wakes the claimer.)
            self._starved = full if len(claimed) < want else set()
        overflow: list[str] = []
        queued = 0
        holding = self._pacing.holding
        claimed, refused = self._sealing.open_claimed(claimed)
        for delivery, error in refused:
            self._outstanding += 1
            self._refuse(delivery, error)
        resting = self._pacing.resting_until
        for delivery in claimed:
            endpoint_id = delivery.endpoint_id
            # An endpoint that started resting while the claim ran gets its rows back (its
            # rest's end wakes the claimer).
            if resting(endpoint_id, now) is not None:
                overflow.append(delivery.id)
                continue
            # Hold at most an endpoint's share (Pacing.holding): a slow endpoint's backlog
            # stays in the store (claimable by other workers) instead of aging here under a
            # lease; the claimer claims it again when the endpoint has room.
            if self._held(endpoint_id) >= holding(endpoint_id):
                overflow.append(delivery.id)
                self._starved.add(endpoint_id)
                continue
            self._queue(delivery)
            queued += 1
        self._outstanding += queued
        self._ready_count += queued
        # Wake the workers first: the rows are queued even if the release below fails.
        self._wake_workers(queued)
        if overflow:
            await self._release(overflow)
        return len(claimed) + len(refused) - len(overflow)

    async def _release(self, delivery_ids: Sequence[str]) -> None:
        """Give back rows leased to this worker and not held (no longer counted in
        ``_outstanding``): pending, unleased and due as they were."""
        try:
            await self._store.release(delivery_ids, worker_id=self.worker_id)
        except Exception:
            logger.exception(
                "releasing %d claimed deliveries failed; their leases will expire",
                len(delivery_ids),
            )

    def _refuse(self, delivery: WebhookDelivery, error: FieldCryptoError) -> None:
        """Settle a claimed row ``failed`` without a request: its payload does not open."""
        logger.error("delivery %s not sent: %s", delivery.id, error)
        now = self._clock.now()
        outcome = unreadable_outcome(delivery.id, self.worker_id, error, now)
        self._held_due.setdefault(
            delivery.id, (delivery.next_attempt_at or now, delivery.endpoint_id)
        )
        settled = _Settled(outcome, delivery.endpoint_id, False, False, None, delivery)
        self._recorder.enqueue(settled)
        self._recording += 1

    def _queue(self, delivery: WebhookDelivery) -> None:
        """Put a claimed or taken delivery in its endpoint's ready queue."""
        endpoint_id = delivery.endpoint_id
        queue = self._ready.get(endpoint_id)
        if queue is None:
            queue = self._ready[endpoint_id] = deque()
        queue.append(delivery)
        self._held_due[delivery.id] = (
            delivery.next_attempt_at or self._clock.now(),
            delivery.endpoint_id,
        )
        self._mark_runnable(endpoint_id)

    def _held(self, endpoint_id: str) -> int:
        """Deliveries to the endpoint this worker holds: queued plus being sent."""
        queue = self._ready.get(endpoint_id)
        return (len(queue) if queue else 0) + self._active.get(endpoint_id, 0)

    def _has_room(self, endpoint_ids: Collection[str]) -> bool:
        """Whether a claim would no longer leave one of these endpoints out."""
        limit = self._pacing.limit
        return any(self._held(e) < limit(e) for e in endpoint_ids)

    def _mark_runnable(self, endpoint_id: str) -> None:
        queue = self._ready.get(endpoint_id)
        if (
            queue
            and endpoint_id not in self._queued
            and self._active.get(endpoint_id, 0) < self._pacing.limit(endpoint_id)
        ):
            self._runnable.append(endpoint_id)
            self._queued.add(endpoint_id)

    # -- workers -----------------------------------------------------------------------------

    def _wake_workers(self, count: int) -> None:
        while count > 0 and self._idle_workers:
            waiter = self._idle_workers.popleft()
            if not waiter.done():
                waiter.set_result(None)
                count -= 1

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        runnable = self._runnable
        while True:
            while not runnable and not self._stopping:
                waiter = loop.create_future()
                self._idle_workers.append(waiter)
                await waiter
            if self._stopping:
                return
            endpoint_id = runnable.popleft()
            self._queued.discard(endpoint_id)
            queue = self._ready[endpoint_id]
            delivery = queue.popleft()
            self._ready_count -= 1
            if not queue:
                del self._ready[endpoint_id]
            active = self._active
            active[endpoint_id] = active.get(endpoint_id, 0) + 1
            self._mark_runnable(endpoint_id)  # round robin: back of the line
            try:
                settled = await self._attempt(delivery)
                # Timeouts trickle in one at a time: each rides with other outcomes' record.
                linger_s = _TIMEOUT_RECORD_LINGER_S if settled.timed_out else 0.0
                self._recorder.enqueue(settled, linger_s=linger_s)
                self._recording += 1
            except Exception:
                # The lease expires and another claim retries the delivery: nothing is lost.
                logger.exception("delivery %s failed unexpectedly; it will be retried", delivery.id)
                self._outstanding -= 1
                self._held_due.pop(delivery.id, None)
                self._changed.set()
            else:
                await self._pace(endpoint_id, settled)
            left = active[endpoint_id] - 1
            if left:
                active[endpoint_id] = left
            else:
                del active[endpoint_id]
            starved = self._starved
            if starved and endpoint_id in starved and self._has_room((endpoint_id,)):
                # The store may hold this endpoint's rows that the last claim left out.
                starved.discard(endpoint_id)
                self._wake.set()
            if endpoint_id in self._ready:
                self._mark_runnable(endpoint_id)
                if len(runnable) > 1:  # this worker takes one; another may take the next
                    self._wake_workers(1)

    async def _pace(self, endpoint_id: str, settled: _Settled) -> None:
        """Feed an attempt's result to the endpoint's limit; when the endpoint starts a rest,
        its queued rows go back to the store as they were, and the claimer wakes when the
        rest ends."""
        attempt = settled.outcome.attempt
        if attempt is None or settled.refused:
            return
        now = self._clock.now()
        if not self._pacing.observe(
            endpoint_id,
            http_status=attempt.http_status,
            latency_ms=attempt.latency_ms,
            timed_out=settled.timed_out,
            now=now,
        ):
            return
        until = self._pacing.resting_until(endpoint_id, now)
        if until is None:
            return
        logger.info(
            "endpoint %s timed out twice in a row; its deliveries wait until %s",
            endpoint_id,
            until.isoformat(),
        )
        if not self._stopping:
            self.due_at(until)  # the probe
        # Its room says nothing now: claims leave it out until the rest ends.
        self._starved.discard(endpoint_id)
        queue = self._ready.pop(endpoint_id, None)
        if not queue:
            return
        self._ready_count -= len(queue)
        if endpoint_id in self._queued:
            self._queued.discard(endpoint_id)
            self._runnable.remove(endpoint_id)
        ids = [delivery.id for delivery in queue]
        # Held until released: a stop meanwhile gives them back with the rest (and counts
        # them out itself).
        await self._release(ids)
        held = self._held_due
        released = [i for i in ids if held.pop(i, None) is not None]
        self._outstanding -= len(released)
        self._changed.set()

    def _recorded(self, results: Sequence[_Settled], error: BaseException | None) -> None:
        """Recorded (or abandoned): there is room for as many more claimed deliveries."""
        held = self._held_due
        freed = 0
        for result in results:
            waiter = result.recorded
            if waiter is None:
                held.pop(result.outcome.delivery_id, None)
                freed += 1
            elif not waiter.done():  # its emit_sync caller may have stopped waiting
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)
        if error is not None:
            logger.error(
                "recording %d deliveries failed (%s); their leases will expire and they will "
                "be sent again",
                len(results),
                error,
            )
        self._outstanding -= freed
        self._recording -= freed
        self._changed.set()
        if self._keys_ending:
            ended = sum(r.frees_key for r in results)
            if ended:
                self._keys_ending -= ended
                self._keys_freed += 1
                self._wake.set()  # claim the key's next now, not at the next poll

    async def _attempt(self, delivery: WebhookDelivery) -> _Settled:
        endpoint = self._endpoints.cached(delivery.endpoint_id)
        if endpoint is None:
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
            return _Settled(outcome, delivery.endpoint_id, False, False, None, delivery)

        try:
            endpoint = self._sealing.for_sending(endpoint)
        except FieldCryptoError as exc:
            logger.error("delivery %s not sent: %s", delivery.id, exc)
            outcome = unreadable_outcome(delivery.id, self.worker_id, exc, self._clock.now())
            return _Settled(outcome, delivery.endpoint_id, False, False, None, delivery)
        result = await self._sender.send(endpoint, delivery)
        attempt = result.attempt
        now = self._clock.now()
        verdict = judge(attempt.http_status)
        retryable = verdict.retryable and not result.refused
        disable_reason = _GONE_REASON if verdict.disable_endpoint else None
        aborted = False
        if result.delivery_control is not None:  # rare: read only when the receiver sent it
            asked = {part.strip().lower() for part in result.delivery_control.split(",")}
            if "disable" in asked:
                disable_reason = _DISABLE_REASON
                retryable = False  # nothing more goes to a disabled endpoint
            if "abort-message" in asked and not verdict.success:
                aborted, retryable = True, False
                attempt = dataclasses.replace(
                    attempt, error=f"{attempt.error} (receiver: webhook-delivery: abort-message)"
                )
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
        frees_key = delivery.ordering_key is not None and status is not DeliveryStatus.PENDING
        if frees_key:
            self._keys_ending += 1
        outcome = build_outcome(
            delivery_id=delivery.id,
            worker_id=self.worker_id,
            attempt=attempt,
            status=status,
            next_attempt_at=next_at,
            completed_at=None if status is DeliveryStatus.PENDING else now,
        )
        # A message the receiver aborted is its choice, not a sign of a failing endpoint.
        final_failure = not aborted and status in (DeliveryStatus.FAILED, DeliveryStatus.EXHAUSTED)
        return _Settled(
            outcome,
            endpoint.id,
            success=verdict.success,
            final_failure=final_failure,
            disable_reason=disable_reason,
            delivery=delivery,
            refused=result.refused,
            timed_out=result.timed_out,
            frees_key=frees_key,
        )

    def _max_retries(self, endpoint: WebhookEndpoint) -> int:
        override = endpoint.retry_config.max_retries if endpoint.retry_config else None
        return self._config.max_retries if override is None else override

    def _retry_delay_ms(self, endpoint: WebhookEndpoint, result: AttemptResult) -> float:
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
        if not self._stopping:
            now = self._clock.now()
            resting = self._pacing.resting_until
            for r in results:
                at = r.outcome.next_attempt_at
                if at is not None and r.outcome.status is DeliveryStatus.PENDING:
                    until = resting(r.endpoint_id, now)
                    if until is None or at > until:  # (the rest's end wakes the claimer)
                        self.due_at(at)
        self._report(results)
        await self._update_health(results)

    def _report(self, results: Sequence[_Settled]) -> None:
        """Tell the hooks what was recorded: each attempt, and each delivery that settled."""
        hooks = self._hooks
        successes = hooks.wants_successes()
        for r in results:
            if r.success and not successes:
                continue  # the hot path, when no one listens for successes
            outcome, delivery = r.outcome, r.delivery
            event_type = delivery.event_type.value
            attempt = outcome.attempt
            if attempt is not None:
                hooks.attempt(
                    AttemptEvent(
                        delivery_id=delivery.id,
                        endpoint_id=r.endpoint_id,
                        event_type=event_type,
                        attempt_number=attempt.attempt_number,
                        status=outcome.status,
                        http_status=attempt.http_status,
                        latency_ms=attempt.latency_ms,
                        error=attempt.error,
                        next_attempt_at=outcome.next_attempt_at,
                        at=attempt.started_at,
                    )
                )
            if outcome.completed_at is not None:
                hooks.settled(
                    SettledEvent(
                        delivery_id=delivery.id,
                        endpoint_id=r.endpoint_id,
                        event_type=event_type,
                        status=outcome.status,
                        attempts=delivery.attempt_count + (attempt is not None),
                        sent=attempt is not None,
                        created_at=delivery.created_at,
                        completed_at=outcome.completed_at,
                        error=outcome.last_error,
                    )
                )

    async def _update_health(self, results: Sequence[_Settled]) -> None:
        by_endpoint: defaultdict[str, list[_Settled]] = defaultdict(list)
        for r in results:
            if r.outcome.attempt is not None:
                by_endpoint[r.endpoint_id].append(r)
        now = self._clock.now()
        for endpoint_id, items in by_endpoint.items():
            disable_reason = next((r.disable_reason for r in items if r.disable_reason), None)
            if disable_reason is not None:
                await self._disable(endpoint_id, disable_reason)
                continue
            succeeded = any(r.success for r in items)
            failures = sum(r.final_failure for r in items)
            cached = await self._endpoints.get(endpoint_id)
            healthy = cached is not None and not cached.consecutive_failures
            healthy = healthy and cached is not None and cached.failing_since is None
            if succeeded and healthy:
                continue  # nothing to reset: skip the write on the hot path
            if not succeeded and not failures and cached is not None and cached.failing_since:
                # A retry was scheduled and failing_since is already set: nothing to write,
                # but the failing window may have run out meanwhile (checked on fresh data).
                if self._policy_violation(cached, now):
                    fresh = await self._endpoint_store.get(endpoint_id)
                    reason = self._policy_violation(fresh, now) if fresh else None
                    if reason:
                        await self._disable(endpoint_id, reason)
                continue
            updated = await self._endpoint_store.record_health(
                endpoint_id, succeeded=succeeded, failures=failures, at=now
            )
            if updated is None:
                continue
            self._endpoints.put(updated)
            if succeeded and cached is not None and cached.consecutive_failures:
                # Recovered from failed deliveries (a retry that then succeeds is no news).
                self._endpoint_changed(
                    updated,
                    EndpointChange.RECOVERED,
                    f"delivered after {cached.consecutive_failures} failed deliveries in a row",
                )
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
        self._endpoint_changed(disabled, EndpointChange.DISABLED, reason)

    def _endpoint_changed(
        self, endpoint: WebhookEndpoint, change: EndpointChange, reason: str | None
    ) -> None:
        self._hooks.endpoint_status(
            EndpointStatusEvent(
                endpoint_id=endpoint.id,
                url=endpoint.url,
                change=change,
                status=endpoint.status,
                reason=reason,
                at=self._clock.now(),
            )
        )
