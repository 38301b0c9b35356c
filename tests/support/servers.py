"""Local HTTP servers on 127.0.0.1 for tests.

Raw asyncio HTTP/1.1 servers answer exactly the bytes a test scripts: a handler gets the
connection's reader and writer and a :class:`RawServer` to record into; :func:`read_request`
reads one request (head and Content-Length body) off the reader. :func:`serve_app` serves an
aiohttp application instead, for receivers that need no control over the wire;
:func:`recording_receiver` is the aiohttp receiver most tests post to.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

Handler = Callable[["RawServer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawServer:
    port: int = 0
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)
    closed_by_peer: int = 0


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One request's head (up to and including the blank line) and body; None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head, await reader.readexactly(length)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (RST) instead of an orderly FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextlib.asynccontextmanager
async def raw_server(
    handler: Handler, *, tls: ssl.SSLContext | None = None
) -> AsyncIterator[RawServer]:
    """Serve ``handler`` on a free 127.0.0.1 port until the block ends."""
    state = RawServer()
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        state.connections += 1
        state.open_now += 1
        state.most_open = max(state.most_open, state.open_now)
        try:
            await handler(state, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the test is over (asyncio logs a cancelled handler)
        finally:
            state.open_now -= 1
            writer.close()

    if tls is not None:
        tls.sni_callback = lambda _obj, name, _ctx: state.server_names.append(name)
    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


def keep_answering(answer: bytes) -> Handler:
    """A handler answering every request on a connection with ``answer`` (keep-alive)."""

    async def handler(
        state: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while (request := await read_request(reader)) is not None:
            state.requests.append(request)
            writer.write(answer)
            await writer.drain()
        state.closed_by_peer += 1

    return handler


def answer_once(answer: bytes, *, reset_after: float | None = None) -> Handler:
    """A handler reading one request and writing ``answer`` (whole, cut short or malformed),
    then closing; with ``reset_after``, it waits that many seconds and resets instead."""

    async def handler(
        state: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()
        if reset_after is not None:
            await asyncio.sleep(reset_after)
            reset(writer)

    return handler


@contextlib.asynccontextmanager
async def serve_app(
    app: web.Application,
    *,
    ssl_context: ssl.SSLContext | None = None,
    handler_cancellation: bool = False,
) -> AsyncIterator[str]:
    """Serve ``app`` on a free 127.0.0.1 port until the block ends; yields its base URL (https
    with ``ssl_context``). ``handler_cancellation`` cancels a handler whose client went away."""
    runner = web.AppRunner(app, access_log=None, handler_cancellation=handler_cancellation)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    scheme = "http" if ssl_context is None else "https"
    try:
        yield f"{scheme}://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


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


@contextlib.asynccontextmanager
async def recording_receiver() -> AsyncIterator[Receiver]:
    """A :class:`Receiver` that records every request and answers 200 unless told otherwise."""
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
    async with serve_app(app) as base:
        rec.base_url = base
        yield rec
