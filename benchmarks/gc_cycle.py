"""Why the collector runs: the allocation count around every event-loop callback, replayed.

    python benchmarks/gc_cycle.py [--mode memory|raw|sqlite|postgres] [--deliveries 5000]

CPython 3.11 starts a young collection when allocations minus releases of container objects
pass 700 since the last collection, and a release is not counted while that figure is zero. So
a collection runs whenever the number of live container objects rises 700 above its lowest
point since the previous collection: it is the *swing* of the population that matters.

This script runs the bare loop or the runtime (the same set-up as ``throughput.py``) with the
collector off and the count lifted far above zero, so that it follows the live population
exactly; it records the count before and after every callback the event loop runs, and marks
each ``select``. Printed:

* the young collections CPython's rule gives on that recording, the releases it would lose at
  zero, and the objects left behind per delivery;
* net objects per delivery for each kind of callback;
* a sample of loop passes: the population at the start, its highest and lowest point and its
  change over the pass, and the callbacks in order (``P`` producer step, ``G`` group-commit
  write, ``T`` group-commit tick, ``W`` worker step, ``w`` request writer task, ``q``/``r``
  writer and response resets, ``R`` socket read, ``?`` other).

The counts depend on timing, so the same code gives different figures run to run (for the
memory store, 26 to 88 collections per 5,000 deliveries were seen): compare several runs.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import gc
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput  # the sibling script, for its receiver and runtime set-up

THRESHOLD = 700  # CPython 3.11's default young-generation threshold
LETTERS = {
    "task:runtime_throughput.<locals>.producer": "P",
    "task:GroupCommit._run": "G",
    "GroupCommit._on_tick": "T",
    "task:Dispatcher._worker": "W",
    "task:raw_limit.<locals>.worker": "W",
    "task:ClientRequest.write_bytes": "w",
    "ClientRequest.__reset_writer": "q",
    "ClientResponse.__reset_writer": "r",
    "_SelectorSocketTransport._read_ready": "R",
}


class Recorder:
    """Counts before/after each callback and the callback index at each ``select``, kept in
    arrays (a list of tuples would itself add to the count it measures)."""

    def __init__(self) -> None:
        self.on = False
        self.names: list[str] = []
        self._index: dict[str, int] = {}
        self.kind = array.array("i")
        self.before = array.array("q")
        self.after = array.array("q")
        self.passes = array.array("q")

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        original_run = asyncio.events.Handle._run
        recorder = self

        def run(handle: asyncio.Handle) -> None:
            if not recorder.on:
                original_run(handle)
                return
            kind = recorder._kind(_label(handle))
            before = gc.get_count()[0]
            original_run(handle)
            recorder.kind.append(kind)
            recorder.before.append(before)
            recorder.after.append(gc.get_count()[0])

        asyncio.events.Handle._run = run  # type: ignore[method-assign]
        selector: Any = loop._selector  # type: ignore[attr-defined]
        select: Callable[..., Any] = selector.select

        def counted_select(timeout: float | None = None) -> Any:
            if recorder.on:
                recorder.passes.append(len(recorder.kind))
            return select(timeout)

        selector.select = counted_select

    def _kind(self, label: str) -> int:
        index = self._index.get(label)
        if index is None:
            index = self._index[label] = len(self.names)
            self.names.append(label)
        return index


def _label(handle: asyncio.Handle) -> str:
    callback = handle._callback  # type: ignore[attr-defined]
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        return "task:" + getattr(owner.get_coro(), "__qualname__", "?")
    return str(getattr(callback, "__qualname__", type(callback).__name__))


def replay(changes: list[int]) -> tuple[int, int]:
    """(young collections, releases lost at zero) under CPython's rule, for a sequence of
    population changes."""
    count = collections = lost = 0
    for change in changes:
        if change > 0:
            count += change
            if count > THRESHOLD:
                collections += 1
                count = 0
        else:
            lost += max(0, -(count + change))
            count = max(0, count + change)
    return collections, lost


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", default="memory", help="raw, memory, sqlite or postgres")
    parser.add_argument("--deliveries", type=int, default=5000)
    parser.add_argument("--passes", type=int, default=12, help="loop passes to print")
    args = parser.parse_args()
    recorder = Recorder()
    recorder.install(asyncio.get_running_loop())
    async with throughput.nginx_receiver("auto") as fast, throughput.receiver_process() as slow:
        base = fast or slow
        await throughput.raw_limit(base, 300)  # warm-up, as throughput.py does
        await throughput.runtime_throughput(base, throughput._persistence("memory"), 300)
        persistence = None if args.mode == "raw" else throughput._persistence(args.mode)
        gc.collect()
        gc.disable()
        lift = [[] for _ in range(300_000)]  # the count starts 300,000 up: it never hits zero
        recorder.on = True
        if persistence is None:
            await throughput.raw_limit(base, args.deliveries)
        else:
            await throughput.runtime_throughput(base, persistence, args.deliveries)
        recorder.on = False
        del lift
        gc.enable()
    _report(recorder, args.mode, args.deliveries, args.passes)


def _report(rec: Recorder, mode: str, n: int, passes: int) -> None:
    changes: list[int] = []
    for i in range(len(rec.kind)):
        if i:
            changes.append(rec.before[i] - rec.after[i - 1])  # between callbacks
        changes.append(rec.after[i] - rec.before[i])
    collections, lost = replay(changes)
    left = rec.after[-1] - rec.before[0]
    print(f"{mode}: {collections * 10_000 / n:.0f} young collections per 10,000 deliveries")
    print(f"  releases lost at zero {lost / n:.2f}, objects left behind {left / n:.2f} a delivery")
    print("  net objects a delivery, by callback (in it / released right after it):")
    inside: defaultdict[int, int] = defaultdict(int)
    after: defaultdict[int, int] = defaultdict(int)
    for i, kind in enumerate(rec.kind):
        inside[kind] += rec.after[i] - rec.before[i]
        if i + 1 < len(rec.kind):
            after[kind] += rec.before[i + 1] - rec.after[i]
    for kind in sorted(inside, key=lambda k: -abs(inside[k]) - abs(after[k]))[:10]:
        print(f"    {inside[kind] / n:+7.2f} {after[kind] / n:+7.2f}  {rec.names[kind]}")
    print("  loop passes (population at start, highest and lowest, change; callbacks):")
    middle = len(rec.passes) // 2
    starts = rec.passes[middle : middle + passes]
    for start, end in zip(starts, rec.passes[middle + 1 : middle + passes + 1], strict=False):
        if end <= start:
            continue
        levels = [rec.before[i] for i in range(start, end)] + [rec.after[end - 1]]
        first = levels[0]
        letters = "".join(LETTERS.get(rec.names[rec.kind[i]], "?") for i in range(start, end))
        print(
            f"    {first - rec.before[0]:+7d} max {max(levels) - first:+5d} "
            f"min {min(levels) - first:+5d} end {levels[-1] - first:+5d}  {letters[:90]}"
        )


if __name__ == "__main__":
    asyncio.run(main())
