"""Group commit: many concurrent callers, one write.

``await batcher.submit(item)`` returns once ``item`` has been written by ``write(batch)``
(or raises what the write raised). A batch starts when the writer is idle (on the next loop
tick, so callers of the same tick share it), when ``max_batch`` items wait, or when the oldest
waiting item is ``max_wait_s`` old. At most ``max_pending`` items wait or are being written;
further callers wait for room (backpressure instead of unbounded memory).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeAlias, TypeVar

from .errors import RuntimeClosedError

T = TypeVar("T")
#: Called once per item after its batch was written, with the write's error or ``None``.
Done: TypeAlias = Callable[[BaseException | None], None]


class GroupCommit(Generic[T]):
    """Batches concurrent submissions into few ``write`` calls (see the module docstring)."""

    def __init__(
        self,
        write: Callable[[Sequence[T]], Awaitable[None]],
        *,
        max_batch: int,
        max_wait_s: float,
        max_pending: int,
        max_concurrent_writes: int = 2,
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._max_writes = max_concurrent_writes
        self._room = asyncio.Semaphore(max_pending)
        self._waiting: list[tuple[T, Done | None, float]] = []
        self._writes: set[asyncio.Task[None]] = set()
        self._writing = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tick_scheduled = False
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def pending(self) -> int:
        """Items submitted and not yet written."""
        return len(self._waiting) + self._writing

    async def submit(self, item: T) -> None:
        """Queue ``item`` and wait until it is written."""
        if self._closed:
            raise RuntimeClosedError("the runtime is shut down")
        await self._room.acquire()
        if self._closed:
            self._room.release()
            raise RuntimeClosedError("the runtime is shut down")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done(error: BaseException | None) -> None:
            self._room.release()
            if future.done():
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

        self._append(item, done)
        await future

    def enqueue(self, item: T, done: Done | None = None) -> None:
        """Queue ``item`` without waiting; ``done`` is called once it is written (or failed).

        For callers that bound their own backlog (no backpressure is applied here).
        """
        if self._closed:
            raise RuntimeClosedError("the runtime is shut down")
        self._append(item, done)

    def _append(self, item: T, done: Done | None) -> None:
        self._waiting.append((item, done, time.monotonic()))
        self._idle.clear()
        self._kick()

    async def drain(self) -> None:
        """Wait until everything submitted so far is written."""
        while self._waiting or self._writes:
            self._flush_now()
            await self._idle.wait()

    async def close(self) -> None:
        """Write what waits, then refuse new items."""
        self._closed = True
        await self.drain()

    def _kick(self) -> None:
        """Start the writes that are due; otherwise make sure something starts them later.

        While every write slot is busy nothing is scheduled: a finishing write kicks again.
        """
        loop = asyncio.get_running_loop()
        while self._waiting and len(self._writes) < self._max_writes:
            if not self._writes:
                # Idle writer: write on the next tick, so callers of this tick share the batch.
                if not self._tick_scheduled:
                    self._tick_scheduled = True
                    loop.call_soon(self._on_tick)
                return
            if len(self._waiting) >= self._max_batch:
                self._start_write()
                continue
            if self._timer is None:
                delay = self._waiting[0][2] + self._max_wait_s - time.monotonic()
                self._timer = loop.call_later(max(0.0, delay), self._on_timer)
            return

    def _on_tick(self) -> None:
        self._tick_scheduled = False
        if self._waiting and len(self._writes) < self._max_writes:
            self._start_write()
        self._kick()

    def _on_timer(self) -> None:
        self._timer = None
        if self._waiting and len(self._writes) < self._max_writes:
            self._start_write()
        self._kick()

    def _flush_now(self) -> None:
        while self._waiting and len(self._writes) < self._max_writes:
            self._start_write()

    def _start_write(self) -> None:
        batch = self._waiting[: self._max_batch]
        del self._waiting[: self._max_batch]
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._writing += len(batch)
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._writes.add(task)

    async def _run(self, batch: list[tuple[T, Done | None, float]]) -> None:
        error: BaseException | None = None
        try:
            await self._write([item for item, _, _ in batch])
        except BaseException as exc:  # every waiter learns why its item was not written
            error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            self._writing -= len(batch)
            for _, done, _ in batch:
                if done is not None:
                    done(error)
            task = asyncio.current_task()
            if task is not None:
                self._writes.discard(task)
            if self._waiting:
                self._kick()
            elif not self._writes:
                self._idle.set()
