"""``kmsg-webhook worker`` processes for the scale-out tests, and what the store says they did."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import IO

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
