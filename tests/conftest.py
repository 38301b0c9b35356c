"""Shared fixtures: store backends for the conformance suite and a real local receiver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from kmsg_webhook import WebhookPersistence, create_in_memory_persistence

# Backends of the store conformance suite. Each entry builds a fresh, empty persistence;
# SQL and D1 backends add themselves here.
BACKENDS: dict[str, Callable[[], Awaitable[WebhookPersistence]]] = {}


async def _memory() -> WebhookPersistence:
    return create_in_memory_persistence(max_stored_attempts=5)


BACKENDS["memory"] = _memory


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
        rec.received.append(Received(path, dict(request.headers), body))
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
