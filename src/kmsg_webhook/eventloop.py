"""Choosing the event loop a command runs on: asyncio's own, or uvloop when installed."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from .errors import ConfigError

T = TypeVar("T")

LoopName = Literal["auto", "asyncio", "uvloop"]
LOOP_NAMES: tuple[LoopName, ...] = ("auto", "asyncio", "uvloop")


def resolve_loop(name: str) -> Literal["asyncio", "uvloop"]:
    """The loop ``name`` means here: ``auto`` is uvloop when installed (``kmsg-webhook[speed]``),
    else asyncio. Asking for uvloop without it installed is a :class:`ConfigError`."""
    installed = importlib.util.find_spec("uvloop") is not None
    if name == "auto":
        return "uvloop" if installed else "asyncio"
    if name == "asyncio":
        return "asyncio"
    if name == "uvloop":
        if not installed:
            raise ConfigError(
                "--loop uvloop: uvloop is not installed (pip install 'kmsg-webhook[speed]')"
            )
        return "uvloop"
    raise ConfigError(f"unknown event loop {name!r}; expected one of {', '.join(LOOP_NAMES)}")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A factory for :class:`asyncio.Runner` making the loop ``name`` resolves to."""
    if resolve_loop(name) == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], *, loop: str = "auto") -> T:
    """Run ``main`` to completion on a new loop of the chosen kind (like :func:`asyncio.run`)."""
    try:
        factory = loop_factory(loop)
    except ConfigError:
        main.close()  # never started: no "was never awaited" warning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
