"""Group commit: many concurrent callers, one write.

``await batcher.submit(item)`` returns once ``item`` has been written by ``write(batch)``
(or raises what the write raised). A batch starts when the writer is idle (on the next loop
tick, so callers of the same tick share it), when ``max_batch`` items wait, or when the oldest
waiting item is ``max_wait_s`` old. A submit cancelled before its batch starts is dropped
(never written). At most ``max_pending`` submitted items wait or are being
written; further callers wait for room (backpressure instead of unbounded memory). An item
enqueued to *linger* starts no write of its own for a while: it rides with the next write
that starts sooner, so items that trickle in one by one (nobody waiting on them) share writes.

It runs for every event and every attempt, so it keeps per-item costs down: items, their
waiters and arrival times sit in parallel lists (no tuple or closure per item), and room is a
counter rather than a semaphore.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeAlias, TypeVar

from .errors import RuntimeClosedError

T = TypeVar("T")
#: Called after each write with the batch's items and the write's error (or ``None``).
Written: TypeAlias = Callable[[Sequence[T], BaseException | None], None]


class GroupCommit(Generic[T]):
    """Batches concurrent submissions into few ``write`` calls (see the module docstring)."""

    def __init__(
        self,
        write: Callable[[Sequence[T]], Awaitable[object]],
        *,
        max_batch: int,
        max_wait_s: float,
        max_pending: int,
        max_concurrent_writes: int = 2,
        on_written: Written[T] | None = None,
    ) -> None:
        self._write = write
        self._on_written = on_written
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._max_writes = max_concurrent_writes
        self._max_pending = max_pending
        self._admitted = 0  # submitted items waiting or being written
        self._room_waiters: deque[asyncio.Future[None]] = deque()
        # Items waiting for a write, with (in the same positions) the future of a submit
        # (None for an enqueue) and the arrival time.
        self._items: list[T] = []
        self._futures: list[asyncio.Future[None] | None] = []
        self._arrived: list[float] = []
        self._writes: set[asyncio.Task[None]] = set()
        self._writing = 0
        self._timer: asyncio.TimerHandle | None = None
        # Enqueued to linger: written with the next batch, or when the timer fires.
        self._lingering: list[T] = []
        self._linger_timer: asyncio.TimerHandle | None = None
        self._tick_scheduled = False
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def pending(self) -> int:
        """Items submitted and not yet written."""
        return len(self._items) + len(self._lingering) + self._writing

    @property
    def closed(self) -> bool:
        """:meth:`close` was called: new items are refused."""
        return self._closed

    def submit(self, item: T) -> Awaitable[None]:
        """Queue ``item``; await the result to wait until it is written.

        With room, the item is queued at once and the awaitable is its future (no coroutine
        per item: this runs for every event).
        """
        if self._closed:
            raise RuntimeClosedError("the runtime is shut down")
        if self._admitted >= self._max_pending:
            return self._submit_when_room(item)
        return self._admit(item)

    def _admit(self, item: T) -> asyncio.Future[None]:
        self._admitted += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._append(item, future)
        return future

    async def _submit_when_room(self, item: T) -> None:
        loop = asyncio.get_running_loop()
        while self._admitted >= self._max_pending:
            room = loop.create_future()
            self._room_waiters.append(room)
            try:
                await room
            except asyncio.CancelledError:
                if room.done() and not room.cancelled():
                    self._pass_room()  # the wake-up this caller no longer uses
                raise
            if self._closed:
                raise RuntimeClosedError("the runtime is shut down")
        await self._admit(item)

    def enqueue(self, item: T, *, linger_s: float = 0.0) -> None:
        """Queue ``item`` without waiting; ``on_written`` hears of it once it is written.

        For callers that bound their own backlog (no backpressure is applied here). With
        ``linger_s``, the item is written with the next batch that starts within that time,
        or on its own after it.
        """
        if self._closed:
            raise RuntimeClosedError("the runtime is shut down")
        if linger_s <= 0:
            self._append(item, None)
            return
        self._lingering.append(item)
        if self._linger_timer is None:
            loop = asyncio.get_running_loop()
            self._linger_timer = loop.call_later(linger_s, self._end_linger)

    def _end_linger(self) -> None:
        self._linger_timer = None
        lingering, self._lingering = self._lingering, []
        for item in lingering:
            self._append(item, None)

    def _append(self, item: T, future: asyncio.Future[None] | None) -> None:
        items = self._items
        items.append(item)
        self._futures.append(future)
        self._arrived.append(time.monotonic())
        writes = len(self._writes)
        if not writes and len(items) == 1:  # the only state in which the batcher may be idle
            self._idle.clear()
        # Skip the kick when it would change nothing: a tick or a timer is already due, or
        # every write slot is busy (a finishing write kicks again).
        if writes >= self._max_writes or (writes == 0 and self._tick_scheduled):
            return
        if writes and self._timer is not None and len(items) < self._max_batch:
            return
        self._kick()

    def _pass_room(self) -> None:
        """Wake the longest-waiting caller still waiting for room."""
        while self._room_waiters:
            room = self._room_waiters.popleft()
            if not room.done():
                room.set_result(None)
                return

    async def drain(self) -> None:
        """Wait until everything submitted so far is written."""
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._end_linger()
        while self._items or self._writes:
            self._flush_now()
            await self._idle.wait()

    async def close(self) -> None:
        """Write what waits, then refuse new items."""
        self._closed = True
        while self._room_waiters:  # callers waiting for room learn of the shutdown
            self._pass_room()
        await self.drain()

    def _kick(self) -> None:
        """Start the writes that are due; otherwise make sure something starts them later.

        While every write slot is busy nothing is scheduled: a finishing write kicks again.
        """
        loop = asyncio.get_running_loop()
        while self._items and len(self._writes) < self._max_writes:
            if not self._writes:
                # Idle writer: write on the next tick, so callers of this tick share the batch.
                if not self._tick_scheduled:
                    self._tick_scheduled = True
                    loop.call_soon(self._on_tick)
                return
            if len(self._items) >= self._max_batch:
                self._start_write()
                continue
            if self._timer is None:
                delay = self._arrived[0] + self._max_wait_s - time.monotonic()
                self._timer = loop.call_later(max(0.0, delay), self._on_timer)
            return

    def _on_tick(self) -> None:
        self._tick_scheduled = False
        if self._items and len(self._writes) < self._max_writes:
            self._start_write()
        self._kick()

    def _on_timer(self) -> None:
        self._timer = None
        if self._items and len(self._writes) < self._max_writes:
            self._start_write()
        self._kick()

    def _flush_now(self) -> None:
        while self._items and len(self._writes) < self._max_writes:
            self._start_write()

    def _start_write(self) -> None:
        n = self._max_batch
        items, futures = self._items[:n], self._futures[:n]
        del self._items[:n], self._futures[:n], self._arrived[:n]
        lingering = self._lingering
        if lingering and len(items) < n:  # they ride along
            riding = lingering[: n - len(items)]
            del lingering[: len(riding)]
            items += riding
            futures += [None] * len(riding)
            if not lingering and self._linger_timer is not None:
                self._linger_timer.cancel()
                self._linger_timer = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if any(f is not None and f.cancelled() for f in futures):
            items, futures = self._without_withdrawn(items, futures)
            if not items:
                return
        self._writing += len(items)
        task = asyncio.get_running_loop().create_task(self._run(items, futures))
        self._writes.add(task)

    def _without_withdrawn(
        self, items: list[T], futures: list[asyncio.Future[None] | None]
    ) -> tuple[list[T], list[asyncio.Future[None] | None]]:
        """The batch without the items whose callers gave up before it started (a cancelled
        submit, e.g. an emit past its deadline): they are never written."""
        kept = [i for i, f in enumerate(futures) if f is None or not f.cancelled()]
        withdrawn = len(futures) - len(kept)
        self._admitted -= withdrawn
        for _ in range(withdrawn):
            self._pass_room()
        if not kept and not self._items and not self._writes:
            self._idle.set()
        return [items[i] for i in kept], [futures[i] for i in kept]

    async def _run(self, items: list[T], futures: list[asyncio.Future[None] | None]) -> None:
        error: BaseException | None = None
        try:
            await self._write(items)
        except BaseException as exc:  # every waiter learns why its item was not written
            error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            self._writing -= len(items)
            self._settle(futures, error)
            if self._on_written is not None:
                self._on_written(items, error)
            task = asyncio.current_task()
            if task is not None:
                self._writes.discard(task)
            if self._items:
                self._kick()
            elif not self._writes:
                self._idle.set()

    def _settle(
        self, futures: list[asyncio.Future[None] | None], error: BaseException | None
    ) -> None:
        for future in futures:
            if future is None:
                continue
            self._admitted -= 1
            if not future.done():  # its caller may have been cancelled meanwhile
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)
        for _ in range(self._max_pending - self._admitted):
            if not self._room_waiters:
                break
            self._pass_room()
