"""Instructions per delivery, counted by valgrind's callgrind: a figure that does not move with
the machine's load.

    python benchmarks/instructions.py [--deliveries 1000] [--stores memory,sqlite,postgres]
    python benchmarks/instructions.py --scenario emit_sync [--deliveries 1000]

Wall-clock ratios from ``throughput.py`` move by ±0.05 or more between runs on a shared VM.
Callgrind counts the instructions the sender process executes (all its threads, so SQLite's
own work on aiosqlite's thread is included; a Postgres server's is not), and the same code on
the same inputs gives the same count to within a fraction of a percent. Each figure is the
difference between a run of ``2N`` and a run of ``N`` deliveries (after the same warm-up),
divided by ``N``, so start-up and imports cancel out.

Printed per store: instructions per delivery of the runtime end to end, the bare signed POST
loop's (the limit, as in ``throughput.py``), their ratio (limit / runtime: on a quiet machine
this is roughly the wall-clock ratio), and how much of the runtime's count is CPython's cyclic
garbage collector.

``--scenario emit_sync`` counts ``targets.py``'s emit_sync round instead: 64 callers awaiting
``emit_sync`` on one endpoint (memory store) against the minimal protocol client's signed POSTs
(its ratio is runtime / client, as ``targets.py`` prints it); ``--scenario fan_out`` its
fan-out round (64 callers ``emit`` events matching 10 endpoints, then ``flush``). Needs
``valgrind``; under it Python runs about 50 times slower, so the default run takes several
minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import targets  # noqa: E402 - the sibling script, for the emit_sync round and its client
import throughput  # noqa: E402 - the sibling script, for its receiver and runtime set-up
from transport import Receiver  # noqa: E402

WARM_UP = 300


async def _child(mode: str, deliveries: int, base: str) -> None:
    """What runs under callgrind: a warm-up, then ``deliveries`` of ``mode``."""
    if mode == "client":  # each of targets.py's rounds warms itself up
        await targets.minimal_client(Receiver(base), deliveries)
        return
    if mode in ("emit_sync", "fan_out"):
        endpoints = 1 if mode == "emit_sync" else targets.FAN_OUT
        await targets.runtime_cpu(Receiver(base), deliveries, endpoints=endpoints)
        return
    await throughput.raw_limit(base, WARM_UP)
    if mode == "raw":
        await throughput.raw_limit(base, deliveries)
        return
    await throughput.runtime_throughput(base, throughput._persistence(mode), WARM_UP)
    await throughput.runtime_throughput(base, throughput._persistence(mode), deliveries)


async def _count(mode: str, deliveries: int, base: str, out: Path) -> tuple[int, int]:
    """(total instructions, instructions inside the cyclic GC) of one child run."""
    valgrind = shutil.which("valgrind")
    assert valgrind is not None
    proc = await asyncio.create_subprocess_exec(
        valgrind,
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        __file__,
        "--child",
        mode,
        str(deliveries),
        base,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{mode} x{deliveries} failed under valgrind:\n{err.decode()[-2000:]}")
    annotate = await asyncio.create_subprocess_exec(
        "callgrind_annotate",
        "--inclusive=yes",
        str(out),
        stdout=asyncio.subprocess.PIPE,
    )
    report = (await annotate.communicate())[0].decode()
    return _figure(report, "PROGRAM TOTALS"), _figure(report, ":gc_collect_main ")


def _figure(report: str, label: str) -> int:
    for line in report.splitlines():
        if label in line:
            match = re.match(r"\s*([\d,]+)", line)
            if match:
                return int(match.group(1).replace(",", ""))
    return 0


async def _per_delivery(
    mode: str, deliveries: int, base: str, scratch: Path, slots: asyncio.Semaphore
) -> tuple[float, float]:
    async def run(n: int) -> tuple[int, int]:
        async with slots:
            return await _count(mode, n, base, scratch / f"{mode}-{n}.out")

    (small, small_gc), (large, large_gc) = await asyncio.gather(
        run(deliveries), run(2 * deliveries)
    )
    return (large - small) / deliveries, (large_gc - small_gc) / deliveries


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=1000)
    parser.add_argument("--stores", default="memory,sqlite,postgres")
    parser.add_argument(
        "--scenario", choices=("throughput", "emit_sync", "fan_out"), default="throughput"
    )
    parser.add_argument("--jobs", type=int, default=2, help="callgrind runs at a time")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "N", "BASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, n, base = args.child
        await _child(mode, int(n), base)
        return
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        raise SystemExit("needs valgrind (Debian: apt-get install valgrind)")
    stores = args.stores.split(",")
    slots = asyncio.Semaphore(args.jobs)
    scratch = Path(tempfile.mkdtemp(prefix="kmsg-bench-callgrind-"))
    async with throughput.nginx_receiver("auto") as fast:
        if fast is None:
            raise SystemExit("needs nginx as the receiver (Debian: apt-get install nginx-light)")
        sender = args.scenario != "throughput"
        modes = ["client", args.scenario] if sender else ["raw", *stores]
        results = await asyncio.gather(
            *(_per_delivery(m, args.deliveries, fast, scratch, slots) for m in modes)
        )
    figures = dict(zip(modes, results, strict=True))
    print(f"instructions per delivery (callgrind; {args.deliveries:,} deliveries, difference of")
    print(f"runs of {2 * args.deliveries:,} and {args.deliveries:,})")
    if sender:
        (client, client_gc), (runtime, runtime_gc) = figures["client"], figures[args.scenario]
        print(f"minimal client, signed POST     {client:>10,.0f}  (cyclic GC {client_gc:,.0f})")
        print(
            f"runtime, {args.scenario:9} (memory)   {runtime:>10,.0f}  "
            f"x client {runtime / client:.2f}  (cyclic GC {runtime_gc:,.0f})"
        )
        return
    raw, raw_gc = figures["raw"]
    print(f"raw aiohttp signed POST loop  {raw:>10,.0f}  (the limit; cyclic GC {raw_gc:,.0f})")
    for name in stores:
        count, gc_count = figures[name]
        print(
            f"runtime [{name:8}]           {count:>10,.0f}  ratio {raw / count:.3f}  "
            f"(cyclic GC {gc_count:,.0f})"
        )
    throughput.stop_local_d1()


if __name__ == "__main__":
    asyncio.run(main())
