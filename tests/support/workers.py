"""Worker processes: ``kmsg-webhook worker`` for the scale-out tests and what the store says they
did; :class:`WorkerProcess` for any worker command logging JSON lines on stderr (start one, read
its lines, wait for one, stop it, scrape its ``/metrics``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from kmsg_webhook import DeliveryFilter, WebhookRuntimeService


def start_worker(
    procs: list[subprocess.Popen[bytes]],
    url: str,
    name: str,
    *extra: str,
    stderr: IO[bytes] | None = None,
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "kmsg_webhook.cli",
        "worker",
        "--store",
        url,
        "--worker-id",
        name,
        "--allow-private-hosts",
        "--poll-ms",
        "100",
        *extra,
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    procs.append(proc)
    return proc


async def settled(url: str) -> tuple[int, int]:
    """(total deliveries, successful deliveries) as the store sees them."""
    async with WebhookRuntimeService(persistence=url, dispatch=False) as runtime:
        stats = (await runtime.stats(DeliveryFilter())).deliveries
        return stats.total, stats.success


@dataclass
class WorkerProcess:
    proc: asyncio.subprocess.Process
    lines: list[dict[str, Any]] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    def logged(self, **fields: Any) -> list[dict[str, Any]]:
        return [x for x in self.lines if all(x.get(k) == v for k, v in fields.items())]

    async def wait_logged(self, within: float = 60, **fields: Any) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + within
        while not self.logged(**fields):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no log line with {fields}; got {self.lines[-5:]}")
            if self.proc.returncode is not None:
                raise AssertionError(f"the worker exited {self.proc.returncode}: {self.lines}")
            await asyncio.sleep(0.05)
        return self.logged(**fields)[0]

    async def exit_code(self) -> int:
        """Wait for the process to end on its own; its exit status."""
        code = await asyncio.wait_for(self.proc.wait(), 60)
        if self.reader is not None:
            await self.reader
        return code

    async def stop(self) -> int:
        """SIGTERM (unless it ended already); its exit status."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await self.exit_code()


async def spawn(*args: str, env: Mapping[str, str]) -> WorkerProcess:
    """``python <args>`` with ``env`` on top of this environment, its stderr read as JSON lines
    (other lines kept as ``{"raw": text}``)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
    )
    worker = WorkerProcess(proc)
    assert proc.stderr is not None
    stream = proc.stderr

    async def read() -> None:
        while line := await stream.readline():
            try:
                worker.lines.append(json.loads(line))
            except ValueError:
                worker.lines.append({"raw": line.decode(errors="replace")})

    worker.reader = asyncio.ensure_future(read())
    return worker


async def kill_all(started: list[WorkerProcess]) -> None:
    """Kill what is still running (a fixture's clean-up)."""
    for worker in started:
        if worker.proc.returncode is None:
            worker.proc.kill()
        await worker.exit_code()


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` on 127.0.0.1:``port``: sample value by (name, sorted labels)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
