"""Shared fixtures: the store conformance backends, a real local receiver, runtimes and events.

Their helpers and types live in ``tests/support/``.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from kmsg_webhook import (
    SecurityOptions,
    WebhookConfig,
    WebhookEvent,
    WebhookEventType,
    WebhookPersistence,
    WebhookRuntimeService,
)

# The D1 engine's fixtures (support/d1.py) are available to every test.
from support.d1 import fake_d1, faulty_d1, local_d1  # noqa: F401
from support.runtime import EventFactory, RuntimeFactory, WaitUntil, guarded_session
from support.servers import Receiver, recording_receiver
from support.stores import BACKENDS


@pytest.fixture(params=sorted(BACKENDS))
async def persistence(request: pytest.FixtureRequest) -> AsyncIterator[WebhookPersistence]:
    store = await BACKENDS[request.param]()
    if store.init is not None:
        await store.init()
    try:
        yield store
    finally:
        if store.close is not None:
            await store.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with recording_receiver() as rec:
        yield rec


# --------------------------------------------------------------------------- runtime fixtures
# Used by the runtime behaviour suite (integration/test_runtime_*.py) and elsewhere.


@pytest.fixture
async def gate(receiver: Receiver) -> AsyncIterator[asyncio.Event]:
    """An event slow receiver handlers wait on. It is opened at teardown, before the receiver
    stops, so no handler outlives its test."""
    event = asyncio.Event()
    try:
        yield event
    finally:
        event.set()
        await asyncio.sleep(0)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_transports: run make_runtime tests per transport")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Modules marked ``BOTH_TRANSPORTS`` (support/runtime.py) run per transport."""
    if "sender_transport" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "both_transports"
    ):
        metafunc.parametrize("sender_transport", ["lean", "aiohttp"])


@pytest.fixture
def sender_transport() -> str:
    """How runtimes from ``make_runtime`` send, unless a test gives its own session or
    transport: ``lean`` (the runtime's default) or ``aiohttp``."""
    return "lean"


@pytest.fixture
async def make_runtime(
    receiver: Receiver, gate: asyncio.Event, sender_transport: str
) -> AsyncIterator[RuntimeFactory]:
    """Build started runtimes; each is shut down at teardown (before the receiver stops).

    Defaults: ``WebhookConfig(jitter=False)`` and ``SecurityOptions(allow_private_hosts=True)``
    so the 127.0.0.1 ``receiver`` is reachable. Other keyword arguments go to the runtime.
    """
    made: list[WebhookRuntimeService] = []
    sessions: list[aiohttp.ClientSession] = []

    async def make(
        config: WebhookConfig | None = None,
        *,
        security: SecurityOptions | None = None,
        **kwargs: Any,
    ) -> WebhookRuntimeService:
        security = security or SecurityOptions(allow_private_hosts=True)
        if sender_transport == "aiohttp" and not {"session", "transport"} & kwargs.keys():
            kwargs["session"] = guarded_session(security, kwargs.pop("resolver", None))
            sessions.append(kwargs["session"])
        runtime = WebhookRuntimeService(
            config or WebhookConfig(jitter=False), security=security, **kwargs
        )
        made.append(runtime)
        await runtime.start()
        return runtime

    try:
        yield make
    finally:
        gate.set()
        for runtime in reversed(made):
            await asyncio.wait_for(runtime.shutdown(), 30)
        for session in sessions:
            await session.close()


@pytest.fixture
def make_event() -> EventFactory:
    """``make_event(id=None, type="message.sent", **fields)``: a valid event, ids evt_1, evt_2..."""
    counter = itertools.count(1)

    def make(
        event_id: str | None = None,
        type: WebhookEventType | str = WebhookEventType.MESSAGE_SENT,
        **fields: Any,
    ) -> WebhookEvent:
        fields.setdefault("timestamp", datetime(2026, 1, 1, 9, 30, tzinfo=UTC))
        fields.setdefault("data", {"text": "안녕하세요", "n": 1})
        return WebhookEvent(id=event_id or f"evt_{next(counter)}", type=type, **fields)

    return make


@pytest.fixture
def wait_until() -> WaitUntil:
    """``await wait_until(predicate, within=10)``: poll a (possibly async) predicate; a hang
    guard, not a speed assertion."""

    async def wait(predicate: Callable[[], Any], within: float = 10.0, what: str = "") -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            if loop.time() > deadline:
                raise AssertionError(f"condition not reached within {within}s {what}".rstrip())
            await asyncio.sleep(0.01)

    return wait
