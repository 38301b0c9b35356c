"""Running the ``kmsg-webhook`` command in-process from tests: its exit code and its output."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from kmsg_webhook.cli import main


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    """``main(argv)`` with its exit code and what it printed (argparse errors exit 2 too)."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)
