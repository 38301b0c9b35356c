"""Shared fixtures: store backends for the conformance suite and a real local receiver."""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from kmsg_webhook import (
    SecurityOptions,
    WebhookConfig,
    WebhookEvent,
    WebhookEventType,
    WebhookPersistence,
    WebhookRuntimeService,
    create_in_memory_persistence,
)

# Backends of the store conformance suite. Each entry builds a fresh, empty persistence;
# SQL and D1 backends add themselves here.
BACKENDS: dict[str, Callable[[], Awaitable[WebhookPersistence]]] = {}


async def _memory() -> WebhookPersistence:
    return create_in_memory_persistence(max_stored_attempts=5)


BACKENDS["memory"] = _memory

# SQLite (temp file, WAL) and PostgreSQL (a schema per test) from tests/pg.py.
from pg import postgres_persistence, sqlite_persistence  # noqa: E402

BACKENDS["sqlite"] = sqlite_persistence
BACKENDS["postgres"] = postgres_persistence

# D1 on a local Worker (tests/d1_fixtures.py); its fixtures become available to every test.
from d1_fixtures import d1_backend, fake_d1, faulty_d1, local_d1  # noqa: E402, F401

BACKENDS["d1"] = d1_backend

# Every backend once more with field crypto on (tests/crypto_keys.py): the same suite must pass
# through the wrappers, reading back exactly what was written.
from crypto_keys import conformance_crypto  # noqa: E402
from kmsg_webhook.crypto import with_field_crypto  # noqa: E402


def _with_crypto(
    make: Callable[[], Awaitable[WebhookPersistence]],
) -> Callable[[], Awaitable[WebhookPersistence]]:
    async def build() -> WebhookPersistence:
        return with_field_crypto(await make(), conformance_crypto())

    return build


for _name in list(BACKENDS):
    BACKENDS[f"{_name}+crypto"] = _with_crypto(BACKENDS[_name])


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


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    #: Every header line as sent, in order (``headers`` keeps one value per name).
    header_lines: list[tuple[str, str]] = field(default_factory=list)

    def all(self, name: str) -> list[str]:
        """Every value sent for ``name`` (any case)."""
        return [v for k, v in self.header_lines if k.lower() == name.lower()]


Behaviour = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


@dataclass
class Receiver:
    """A real aiohttp server on 127.0.0.1; ``behave`` maps a path to a response script."""

    base_url: str = ""
    received: list[Received] = field(default_factory=list)
    routes: dict[str, Behaviour] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def on(self, path: str, behaviour: Behaviour) -> str:
        self.routes[path] = behaviour
        return self.url(path)

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]


async def _ok(request: web.Request, n: int) -> web.StreamResponse:
    return web.json_response({"ok": True})


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        path = request.path
        rec.hits[path] = rec.hits.get(path, 0) + 1
        lines = [(k.decode(), v.decode()) for k, v in request.raw_headers]
        rec.received.append(Received(path, dict(request.headers), body, lines))
        rec.arrived.set()
        behaviour = rec.routes.get(path, _ok)
        return await behaviour(request, rec.hits[path])

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    rec.base_url = f"http://127.0.0.1:{port}"
    try:
        yield rec
    finally:
        await runner.cleanup()


# --------------------------------------------------------------------------- runtime fixtures
# Used by the runtime behaviour suite (tests/test_runtime_*.py); generally useful elsewhere too.

RuntimeFactory = Callable[..., Awaitable[WebhookRuntimeService]]


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


@pytest.fixture
async def make_runtime(receiver: Receiver, gate: asyncio.Event) -> AsyncIterator[RuntimeFactory]:
    """Build started runtimes; each is shut down at teardown (before the receiver stops).

    Defaults: ``WebhookConfig(jitter=False)`` and ``SecurityOptions(allow_private_hosts=True)``
    so the 127.0.0.1 ``receiver`` is reachable. Other keyword arguments go to the runtime.
    """
    made: list[WebhookRuntimeService] = []

    async def make(
        config: WebhookConfig | None = None,
        *,
        security: SecurityOptions | None = None,
        **kwargs: Any,
    ) -> WebhookRuntimeService:
        runtime = WebhookRuntimeService(
            config or WebhookConfig(jitter=False),
            security=security or SecurityOptions(allow_private_hosts=True),
            **kwargs,
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


EventFactory = Callable[..., WebhookEvent]


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


WaitUntil = Callable[..., Awaitable[None]]


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
