"""Running the commands from tests: ``kmsg-webhook`` in-process, ``kmsg`` as a process; the exit
code and the output."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from kmsg_webhook.cli import main


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    """``main(argv)`` with its exit code and what it printed (argparse errors exit 2 too)."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


async def kmsg_process(*args: str, env: Mapping[str, str]) -> Run:
    """``python -m kmsg_webhook.messaging.cli`` with only ``env`` (and ``PATH``) in its
    environment and no terminal (confirmations are refused)."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "kmsg_webhook.messaging.cli", *args),
        env={"PATH": os.environ.get("PATH", ""), "PYTHONIOENCODING": "utf-8", **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())
