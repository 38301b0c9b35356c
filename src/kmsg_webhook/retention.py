"""Retention: finished deliveries deleted by age (per final status) in small batches.

Every runtime, and so every worker, runs one :class:`Retention` task. Deleting is idempotent,
so several processes on one store only share the work. Small batches keep each store call
short: intake, claims and records on the same store wait behind one batch at most, and a
pause after each batch leaves them the store most of the time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from .clock import Clock
from .config import RetentionPolicy
from .models import RetentionCutoffs
from .stores.memory import InMemoryDeliveryStore
from .stores.protocol import DeliveryStore

logger = logging.getLogger("kmsg_webhook.retention")


def cutoffs_at(policy: RetentionPolicy, now: datetime, *, memory: bool) -> RetentionCutoffs:
    """The creation times before which finished deliveries may go, at ``now``; the in-memory
    store's own age bound shortens any longer (or unset) age."""
    ages = [policy.success, policy.failed, policy.exhausted]
    cap = policy.memory_max_age if memory else None
    if cap is not None:
        ages = [cap if age is None else min(age, cap) for age in ages]
    success, failed, exhausted = (None if age is None else now - age for age in ages)
    return RetentionCutoffs(success=success, failed=failed, exhausted=exhausted)


class Retention:
    """Applies a :class:`RetentionPolicy` to a delivery store every ``interval_ms``."""

    def __init__(self, store: DeliveryStore, policy: RetentionPolicy, clock: Clock) -> None:
        self._store = store
        self._policy = policy
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def apply(self) -> int:
        """Delete everything the policy lets go now; returns how many deliveries went."""
        policy, store = self._policy, self._store
        memory = isinstance(store, InMemoryDeliveryStore)
        cutoffs = cutoffs_at(policy, self._clock.now(), memory=memory)
        deleted = 0
        if cutoffs.by_status():
            deleted += await _in_batches(
                lambda: store.purge_finished(cutoffs, limit=policy.batch_size), policy.batch_size
            )
        if isinstance(store, InMemoryDeliveryStore) and policy.memory_max_rows is not None:
            cap = policy.memory_max_rows
            deleted += await _in_batches(
                lambda: store.trim(cap, limit=policy.batch_size), policy.batch_size
            )
        return deleted

    async def _run(self) -> None:
        # Once at start (a worker restarted after a long stop catches up), then every interval.
        while True:
            try:
                deleted = await self.apply()
            except Exception as exc:  # the store may be down: the next round tries again
                logger.warning("retention could not delete finished deliveries: %s", exc)
            else:
                if deleted:
                    logger.debug("retention deleted %d finished deliveries", deleted)
            await asyncio.sleep(self._policy.interval_ms / 1000)


async def _in_batches(batch: Callable[[], Awaitable[int]], size: int) -> int:
    """Call ``batch`` until it deletes fewer than ``size``; the total.

    After each batch it pauses as long as the batch took, so deleting never has the store
    more than half the time, and yields more of it when the store is busy (a batch that
    waited behind intake and claims took longer). A backlog of history is worked off
    steadily instead of in one burst that the dispatcher would have to catch up with.
    """
    loop = asyncio.get_running_loop()
    total = 0
    while True:
        started = loop.time()
        deleted = await batch()
        total += deleted
        if deleted < size:
            return total
        await asyncio.sleep(loop.time() - started)
