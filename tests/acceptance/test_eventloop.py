"""Choosing the event loop: the helper the worker command runs on, and its --loop flag."""

from __future__ import annotations

import asyncio
import signal
import sys
import warnings
from pathlib import Path

import pytest

from kmsg_webhook import eventloop
from kmsg_webhook.errors import ConfigError


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_auto_picks_uvloop_when_installed() -> None:
    assert eventloop.resolve_loop("auto") == "uvloop"  # the test extra installs it
    assert eventloop.run(_loop_module()).startswith("uvloop")


@pytest.mark.parametrize(("name", "module"), [("asyncio", "asyncio"), ("uvloop", "uvloop")])
def test_run_on_the_named_loop(name: str, module: str) -> None:
    assert eventloop.run(_loop_module(), loop=name).startswith(module)


def test_unknown_loop_is_a_config_error_and_the_coroutine_is_closed() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine ... was never awaited" would fail here
        with pytest.raises(ConfigError, match="unknown event loop 'trio'"):
            eventloop.run(_loop_module(), loop="trio")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_worker_runs_on_the_chosen_loop(tmp_path: Path, loop: str) -> None:
    store = f"sqlite:///{tmp_path / 'worker.db'}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-u", "-m", "kmsg_webhook.cli", "worker", "--store", store,
        "--worker-id", "w1", "--create", "--loop", loop,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    banner = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
    assert "worker w1 dispatching" in banner
    assert f"; {loop} loop; " in banner
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_worker_refuses_an_unknown_loop(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kmsg_webhook.cli", "worker", "--store",
        f"sqlite:///{tmp_path / 'w.db'}", "--loop", "trio",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"--loop: invalid choice: 'trio'" in err
