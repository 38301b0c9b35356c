"""The local D1 engine for benchmarks: ``adapters/d1-worker`` on miniflare (workerd's own D1),
started once per run and stopped at exit."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

D1_WORKER = Path(__file__).resolve().parent.parent / "adapters" / "d1-worker"
_d1_server: list[tuple[subprocess.Popen[str], str, str]] = []


def local_d1() -> tuple[str, str]:
    """Start (once) the D1 Worker on miniflare; (host:port, token)."""
    if not _d1_server:
        token = uuid.uuid4().hex
        proc = subprocess.Popen(
            ["node", "scripts/serve.mjs", "--port", "0", "--database-id", "bench"],
            cwd=D1_WORKER,
            env={**os.environ, "D1_WORKER_API_TOKEN": token, "NO_COLOR": "1"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("D1_WORKER_READY"):
                host = line.split()[1].removeprefix("http://")
                break
        else:
            raise SystemExit("the local D1 Worker did not start (npm ci in adapters/d1-worker)")
        _d1_server.append((proc, host, token))
    _, host, token = _d1_server[0]
    return host, token


def stop_local_d1() -> None:
    for proc, _, _ in _d1_server:
        proc.terminate()
        proc.wait(timeout=10)
