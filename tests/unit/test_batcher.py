"""The group commit behind intake and recording."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from kmsg_webhook.batcher import GroupCommit, Written
from kmsg_webhook.errors import RuntimeClosedError, StoreError


class Writer:
    """Records each batch; optionally blocks until released or fails."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate: asyncio.Event | None = None
        self.fail: BaseException | None = None
        self.calls = 0

    async def __call__(self, batch: Sequence[int]) -> None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.batches.append(list(batch))


def commit(
    writer: Writer, *, on_written: Written[int] | None = None, **kw: float
) -> GroupCommit[int]:
    options: dict[str, float] = {"max_batch": 10, "max_wait_s": 60, "max_pending": 100}
    options.update(kw)
    return GroupCommit(
        writer,
        max_batch=int(options["max_batch"]),
        max_wait_s=options["max_wait_s"],
        max_pending=int(options["max_pending"]),
        max_concurrent_writes=int(options.get("writes", 2)),
        on_written=on_written,
    )


async def test_callers_of_one_tick_share_a_write_and_light_load_never_waits() -> None:
    writer = Writer()
    batcher = commit(writer)
    await asyncio.wait_for(asyncio.gather(*(batcher.submit(n) for n in range(5))), 5)
    assert writer.batches == [[0, 1, 2, 3, 4]]
    # A lone item is written at once although max_wait_s is a minute.
    await asyncio.wait_for(batcher.submit(99), 5)
    assert writer.batches[-1] == [99]


async def test_a_full_batch_starts_a_second_write_while_one_is_running() -> None:
    writer = Writer()
    writer.gate = asyncio.Event()
    batcher = commit(writer, max_batch=3)
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.01)  # the first write is running and blocked
    rest = [asyncio.ensure_future(batcher.submit(n)) for n in range(1, 4)]
    await asyncio.sleep(0.01)
    assert writer.calls == 2  # three waiting items filled a batch: a concurrent write began
    writer.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *rest), 5)
    assert sorted(map(sorted, writer.batches)) == [[0], [1, 2, 3]]


async def test_the_oldest_item_waits_at_most_max_wait_while_the_writer_is_busy() -> None:
    writer = Writer()
    writer.gate = asyncio.Event()
    batcher = commit(writer, max_batch=100, max_wait_s=0.05)
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.2)
    assert writer.calls == 2  # started by the timer, not by the first write finishing
    writer.gate.set()
    await asyncio.wait_for(asyncio.gather(first, second), 5)


async def test_no_busy_loop_while_every_write_slot_is_taken() -> None:
    writer = Writer()
    writer.gate = asyncio.Event()
    batcher = commit(writer, max_batch=100, max_wait_s=0.0, writes=1)
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.01)
    waiting = [asyncio.ensure_future(batcher.submit(n)) for n in range(1, 6)]
    # While the only slot is busy the loop must idle (an expired timer re-armed over and over
    # would burn a core): the finishing write starts the next one.
    cpu = time.process_time()
    await asyncio.sleep(0.3)
    assert time.process_time() - cpu < 0.1
    assert writer.calls == 1
    writer.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *waiting), 5)
    assert writer.batches == [[0], [1, 2, 3, 4, 5]]


async def test_a_failed_write_fails_every_item_of_its_batch() -> None:
    writer = Writer()
    writer.fail = StoreError("database down")
    batcher = commit(writer)
    results = await asyncio.gather(*(batcher.submit(n) for n in range(3)), return_exceptions=True)
    assert all(isinstance(r, StoreError) for r in results)
    writer.fail = None
    await batcher.submit(7)  # the batcher keeps working afterwards
    assert writer.batches == [[7]]


async def test_backpressure_bounds_waiting_items() -> None:
    writer = Writer()
    writer.gate = asyncio.Event()
    batcher = commit(writer, max_pending=3)
    tasks = [asyncio.ensure_future(batcher.submit(n)) for n in range(5)]
    await asyncio.sleep(0.05)
    assert batcher.pending == 3  # two callers wait for room
    writer.gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert sorted(n for batch in writer.batches for n in batch) == [0, 1, 2, 3, 4]


async def test_enqueue_reports_each_written_batch_and_drain_waits_for_it() -> None:
    writer = Writer()
    written: list[tuple[list[int], BaseException | None]] = []
    batcher = commit(writer, on_written=lambda items, error: written.append((list(items), error)))
    for n in range(4):
        batcher.enqueue(n)
    await batcher.drain()
    assert written == [([0, 1, 2, 3], None)]
    assert writer.batches == [[0, 1, 2, 3]]


async def test_a_failed_write_reports_its_error_to_on_written() -> None:
    writer = Writer()
    writer.fail = StoreError("database down")
    written: list[tuple[list[int], BaseException | None]] = []
    batcher = commit(writer, on_written=lambda items, error: written.append((list(items), error)))
    batcher.enqueue(1)
    await batcher.drain()
    assert written == [([1], writer.fail)]


async def test_a_cancelled_caller_waiting_for_room_does_not_block_the_others() -> None:
    writer = Writer()
    writer.gate = asyncio.Event()
    batcher = commit(writer, max_pending=1)
    first = asyncio.ensure_future(batcher.submit(0))
    blocked = asyncio.ensure_future(batcher.submit(1))
    waiting = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0.01)
    blocked.cancel()
    writer.gate.set()
    await asyncio.wait_for(asyncio.gather(first, waiting), 5)
    assert sorted(n for batch in writer.batches for n in batch) == [0, 2]


async def test_close_writes_what_waits_then_refuses() -> None:
    writer = Writer()
    batcher = commit(writer)
    batcher.enqueue(1)
    await batcher.close()
    assert writer.batches == [[1]]
    with pytest.raises(RuntimeClosedError):
        await batcher.submit(2)
    with pytest.raises(RuntimeClosedError):
        batcher.enqueue(3)


async def test_a_submit_cancelled_before_its_batch_starts_is_never_written() -> None:
    writer = Writer()
    writer.gate = asyncio.Event()
    batcher = commit(writer, max_batch=2, writes=1, max_pending=4)
    first = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.01)  # 1 is being written (held at the gate)
    behind = [asyncio.ensure_future(batcher.submit(n)) for n in (2, 3, 4)]
    await asyncio.sleep(0)
    behind[0].cancel()  # 2 gives up while queued
    behind[2].cancel()  # 4 too
    await asyncio.sleep(0)
    writer.gate.set()
    await asyncio.wait_for(asyncio.gather(first, behind[1]), 5)
    await asyncio.wait_for(batcher.drain(), 5)
    assert writer.batches == [[1], [3]]
    # The room they held is free again: four more fit without waiting.
    await asyncio.wait_for(asyncio.gather(*(batcher.submit(n) for n in range(10, 14))), 5)
    assert batcher.pending == 0


async def test_a_write_whose_items_were_all_withdrawn_leaves_the_batcher_idle() -> None:
    writer = Writer()
    writer.gate = asyncio.Event()
    batcher = commit(writer, max_batch=1, writes=1)
    first = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.01)
    queued = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0)
    queued.cancel()
    writer.gate.set()
    await asyncio.wait_for(first, 5)
    await asyncio.wait_for(batcher.drain(), 5)
    assert writer.batches == [[1]]


async def test_a_lingering_item_rides_with_the_next_write() -> None:
    writer = Writer()
    batcher = commit(writer)
    batcher.enqueue(1, linger_s=60)
    batcher.enqueue(2, linger_s=60)
    await asyncio.sleep(0.05)
    assert writer.batches == []  # no write of their own yet
    assert batcher.pending == 2
    await asyncio.wait_for(batcher.submit(3), 5)
    assert writer.batches == [[3, 1, 2]]
    assert batcher.pending == 0


async def test_a_lingering_item_alone_is_written_when_its_time_is_up() -> None:
    writer = Writer()
    written: list[list[int]] = []
    batcher = commit(writer, on_written=lambda items, error: written.append(list(items)))
    batcher.enqueue(1, linger_s=0.05)
    await asyncio.sleep(0)
    assert writer.batches == []
    for _ in range(500):  # the machine may be busy: wait for the write, not a set time
        if writer.batches:
            break
        await asyncio.sleep(0.01)
    assert writer.batches == [[1]]
    assert written == [[1]]


async def test_drain_and_close_write_lingering_items_at_once() -> None:
    writer = Writer()
    batcher = commit(writer)
    batcher.enqueue(1, linger_s=60)
    await asyncio.wait_for(batcher.drain(), 5)
    assert writer.batches == [[1]]
    batcher.enqueue(2, linger_s=60)
    await asyncio.wait_for(batcher.close(), 5)
    assert writer.batches == [[1], [2]]


async def test_lingering_items_fill_a_batch_only_up_to_max_batch() -> None:
    writer = Writer()
    batcher = commit(writer, max_batch=3)
    for n in range(5):
        batcher.enqueue(n, linger_s=60)
    await asyncio.wait_for(batcher.submit(10), 5)
    assert writer.batches == [[10, 0, 1]]
    assert batcher.pending == 3  # still lingering
    await asyncio.wait_for(batcher.drain(), 5)
    assert writer.batches[-1] == [2, 3, 4]
