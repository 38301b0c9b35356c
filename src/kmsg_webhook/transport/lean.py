"""A lean HTTP/1.1 client for webhook POSTs: asyncio protocols, llhttp parsing, pooled keep-alive.

Each connection is an :class:`asyncio.Protocol` feeding :mod:`httptools` (llhttp, the parser
uvicorn and Node use). Connections are kept alive per origin and reused only after a complete
answer; a new one is opened only to an address the resolver (the URL guard) has just vetted, with
the endpoint's name as ``Host``, SNI and the name its certificate must carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections import deque
from collections.abc import Mapping
from typing import cast

import httptools
from aiohttp.abc import AbstractResolver

from ..errors import ConfigError, EndpointUrlError
from ..urlguard import GuardedResolver
from .base import Target, TransportResponse
from .errors import (
    ConnectError,
    InvalidRequestError,
    ProtocolError,
    TLSVerificationError,
    TransportError,
    TransportTimeoutError,
)

__all__ = ["LeanTransport"]

_NO_BODY_STATUSES = frozenset({204, 304})


class LeanTransport:
    """HTTP/1.1 POSTs over pooled keep-alive connections (see the module docstring).

    ``resolver`` is normally a :class:`~kmsg_webhook.urlguard.GuardedResolver` (the default
    one refuses private addresses); every new connection resolves through it, so a name that
    starts resolving to a private address is refused at connect time. ``ssl_context`` verifies
    https servers (default: the system's trusted CAs). At most ``max_connections_per_origin``
    connections are open to one origin; more callers wait for one (within their timeout). A
    connection idle for ``keepalive_expiry`` seconds is closed: servers drop idle connections
    too (Node after 5 s), and a request racing that close fails. Answers whose headers exceed
    ``max_header_bytes`` are refused.
    """

    def __init__(
        self,
        *,
        resolver: AbstractResolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_connections_per_origin: int = 100,
        keepalive_expiry: float = 4.0,
        max_header_bytes: int = 64 * 1024,
    ) -> None:
        if max_connections_per_origin < 1:
            raise ConfigError("max_connections_per_origin must be at least 1")
        if keepalive_expiry <= 0:
            raise ConfigError("keepalive_expiry must be a positive number of seconds")
        if max_header_bytes < 1024:
            raise ConfigError("max_header_bytes must be at least 1024")
        self._owns_resolver = resolver is None
        self._resolver = resolver if resolver is not None else GuardedResolver()
        self._ssl_context = ssl_context
        self._limit = max_connections_per_origin
        self._expiry = keepalive_expiry
        self._max_header_bytes = max_header_bytes
        self._pools: dict[tuple[bool, str, int, ssl.SSLContext | None], _Pool] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    async def post(
        self,
        target: Target,
        headers: Mapping[str, str],
        body: bytes,
        *,
        time_limit: float,
        max_body_bytes: int,
    ) -> TransportResponse:
        """POST one request (see :meth:`kmsg_webhook.transport.Transport.post`)."""
        if self._closed:
            raise TransportError("the transport is closed")
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        deadline = loop.time() + time_limit
        request = _encode(target, headers, body)
        pool = self._pools.get(target.origin)
        if pool is None:
            pool = self._pools[target.origin] = _Pool()
        while True:
            connection = pool.take_idle(loop.time(), self._expiry)
            if connection is None:
                connection = await self._open(pool, target, deadline, time_limit)
            reused = connection.exchanges > 0
            try:
                # The answer's future, awaited here: no coroutine per exchange.
                response = await connection.exchange(request, deadline, time_limit, max_body_bytes)
            except BaseException as exc:
                # Cancelled, timed out or failed: where the answer stands is unknown.
                connection.close()
                if isinstance(exc, ProtocolError) and reused and not connection.answered:
                    # A kept-alive connection the server had closed: a fresh one may succeed.
                    continue
                raise
            response.elapsed = time.perf_counter() - started
            if connection.reusable:
                pool.give_back(connection, loop.time())
                self._schedule_sweep(loop)
            else:
                connection.close()
            return response

    async def _open(
        self, pool: _Pool, target: Target, deadline: float, time_limit: float
    ) -> _Connection:
        """A new connection to ``target``'s origin, or an idle one freed while waiting."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                while pool.open >= self._limit:
                    await pool.wait()
                    connection = pool.take_idle(loop.time(), self._expiry)
                    if connection is not None:
                        return connection
                pool.connecting += 1
                try:
                    connection = await self._connect(pool, target)
                except BaseException:
                    pool.connecting -= 1
                    pool.wake()  # the slot this attempt held is free again
                    raise
                pool.connecting -= 1  # now counted among the pool's connections
                return connection
        except TimeoutError:
            raise TransportTimeoutError(time_limit) from None

    async def _connect(self, pool: _Pool, target: Target) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            answers = await self._resolver.resolve(target.host, target.port, socket.AF_UNSPEC)
        except EndpointUrlError:
            raise
        except OSError as exc:
            raise ConnectError(f"DNS lookup for {target.host!r} failed: {exc}") from exc
        context = (target.ssl_context or self._tls_context()) if target.tls else None
        failure: OSError | None = None
        for answer in answers:
            try:
                _, connection = await loop.create_connection(
                    lambda: _Connection(pool, self._max_header_bytes),
                    host=answer["host"],
                    port=target.port,
                    ssl=context,
                    server_hostname=target.host if context is not None else None,
                )
            except ssl.SSLCertVerificationError as exc:
                raise TLSVerificationError(
                    f"TLS certificate of {target.host!r} not accepted: {exc.verify_message}"
                ) from exc
            except OSError as exc:  # ssl.SSLError included
                failure = exc
                continue
            return connection
        raise ConnectError(f"cannot connect to {target.host}:{target.port}: {failure}")

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    def _schedule_sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sweep is None:
            self._sweep = loop.call_later(self._expiry, self._close_expired, loop)

    def _close_expired(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close connections idle for longer than the expiry; runs while any are idle."""
        self._sweep = None
        now = loop.time()
        idle = False
        for origin, pool in list(self._pools.items()):
            pool.close_expired(now, self._expiry)
            if pool.idle:
                idle = True
            elif pool.open == 0 and not pool.waiters:
                del self._pools[origin]
        if idle:
            self._schedule_sweep(loop)

    async def aclose(self) -> None:
        """Close every connection (in-flight requests fail with a :class:`ProtocolError`) and
        the resolver if this transport made it."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for pool in self._pools.values():
            pool.close_all()
        self._pools.clear()
        if self._owns_resolver:
            await self._resolver.close()
        await asyncio.sleep(0)  # let the transports run their close callbacks


def _encode(target: Target, headers: Mapping[str, str], body: bytes) -> bytes:
    """The whole request, built once: the target's fixed head, this request's headers, body."""
    lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    # One line per header, so any other line break was smuggled in by a value (or name).
    if lines.count("\n") != len(headers) or lines.count("\r") != len(headers) or "\0" in lines:
        raise InvalidRequestError("a request header has a line break or NUL in it")
    return b"".join((target.head, lines.encode(), b"Content-Length: %d\r\n\r\n" % len(body), body))


class _Pool:
    """One origin's connections: the idle ones (most recently used last), a count of all open
    ones (idle, busy or connecting) and the callers waiting for a free slot."""

    __slots__ = ("connecting", "connections", "idle", "waiters")

    def __init__(self) -> None:
        self.connections: set[_Connection] = set()
        self.connecting = 0
        self.idle: list[_Connection] = []
        self.waiters: deque[asyncio.Future[None]] = deque()

    @property
    def open(self) -> int:
        return len(self.connections) + self.connecting

    def take_idle(self, now: float, expiry: float) -> _Connection | None:
        while self.idle:
            connection = self.idle.pop()
            if connection.usable and now - connection.idle_since < expiry:
                return connection
            connection.close()
        return None

    async def wait(self) -> None:
        """Wait until a connection is given back or closed."""
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.cancelled():
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
            else:  # woken, then cancelled before running: pass the wake-up on
                self.wake()
            raise

    def give_back(self, connection: _Connection, now: float) -> None:
        connection.idle_since = now
        self.idle.append(connection)
        self.wake()

    def forget(self, connection: _Connection) -> None:
        """``connection`` closed: its slot is free."""
        self.connections.discard(connection)
        with contextlib.suppress(ValueError):
            self.idle.remove(connection)
        self.wake()

    def wake(self) -> None:
        """Let one waiting caller look for a connection or a free slot again."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close_expired(self, now: float, expiry: float) -> None:
        for connection in [c for c in self.idle if now - c.idle_since >= expiry]:
            connection.close()

    def close_all(self) -> None:
        for connection in list(self.connections):
            connection.close()


class _Connection(asyncio.Protocol):
    """One kept-alive connection: writes a request, parses its answer with llhttp.

    The parser calls back the ``on_*`` methods; the exchange ends when the answer is complete
    (or the connection fails), resolving ``_waiter``, which is ``None`` while idle.
    """

    def __init__(self, pool: _Pool, max_header_bytes: int) -> None:
        self._pool = pool
        self._max_header_bytes = max_header_bytes
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[TransportResponse] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._time_limit = 0.0
        self._closed = False
        self.idle_since = 0.0
        self.exchanges = 0
        #: False once the connection cannot carry another request.
        self.reusable = False
        #: Whether any byte of an answer arrived during the current exchange.
        self.answered = False
        self._reset(0)

    def _reset(self, max_body_bytes: int) -> None:
        self._head_bytes = 0
        self._headers_done = False
        self._complete = False
        self._framed = False
        self._status = 0
        self._reason = b""
        self._retry_after: str | None = None
        self._webhook_delivery: str | None = None
        self._challenge_response: str | None = None
        self._body: list[bytes] = []
        self._room = max_body_bytes

    @property
    def usable(self) -> bool:
        return not self._closed and self.reusable

    # -- the exchange ----------------------------------------------------------------------

    def exchange(
        self, request: bytes, deadline: float, time_limit: float, max_body_bytes: int
    ) -> asyncio.Future[TransportResponse]:
        """Write ``request``; the future resolves with its complete answer (or fails). The
        caller closes the connection if this raises, or it stops waiting, or the exchange
        fails."""
        assert self._transport is not None
        loop = asyncio.get_running_loop()
        self._reset(max_body_bytes)
        self.exchanges += 1
        self.reusable = False
        self.answered = False
        waiter: asyncio.Future[TransportResponse] = loop.create_future()
        self._waiter = waiter
        self._deadline = deadline
        self._time_limit = time_limit
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(deadline, self._check_deadline)
        self._transport.write(request)
        return waiter

    def _check_deadline(self) -> None:
        """Fail an exchange past its deadline. One timer per connection, armed again for the
        next exchange's deadline when it fires, not one per request: most answers come long
        before their deadline, and a timer made and cancelled per request is garbage."""
        self._timer = None
        if self._waiter is None or self._closed:
            return  # idle: the next exchange arms it
        loop = asyncio.get_running_loop()
        if loop.time() >= self._deadline:
            self._fail(TransportTimeoutError(self._time_limit))
        else:
            self._timer = loop.call_at(self._deadline, self._check_deadline)

    def _fail(self, error: TransportError) -> None:
        """End the exchange with ``error`` and close: the connection's state is unknown."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.close()

    def _finish(self) -> None:
        """The answer is complete: resolve the exchange; the connection is idle again."""
        waiter = self._waiter
        self._complete = True
        if waiter is None or waiter.done():
            return
        self._waiter = None
        waiter.set_result(
            TransportResponse(
                status=self._status,
                reason=self._reason.decode("latin-1"),
                retry_after=self._retry_after,
                webhook_delivery=self._webhook_delivery,
                challenge_response=self._challenge_response,
                body=b"".join(self._body),
                elapsed=0.0,
            )
        )

    def close(self) -> None:
        """Close now; a pending exchange fails and the pool slot is freed at once."""
        self.reusable = False
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()
        self._pool.forget(self)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ProtocolError("the connection was closed by the transport"))

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's TLS one does not subclass asyncio.Transport).
        self._transport = cast(asyncio.Transport, transport)
        self._pool.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._complete:
            # Bytes nobody asked for: the connection's state is unknown, never reuse it.
            self.close()
            return
        self.answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolError("the server switched protocols"))
            return
        except httptools.HttpParserError as exc:
            if self._complete:  # bytes after the complete answer: it stands, the rest does not
                self.close()
            else:
                self._fail(ProtocolError(f"malformed HTTP answer: {exc}"))
            return
        if not self._headers_done:
            self._head_bytes += len(data)
            if self._head_bytes > self._max_header_bytes:
                self._fail(ProtocolError(f"answer headers exceed {self._max_header_bytes} bytes"))

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost settles the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return  # closed by us, already settled
        if self._waiter is not None and not self._complete:
            if self._headers_done and not self._framed and exc is None:
                self._finish()  # an answer without length or chunks ends with the connection
            elif self.answered:
                how = "reset" if exc is not None else "closed"
                self._fail(ProtocolError(f"the server {how} the connection mid-answer"))
            else:
                detail = f": {exc}" if exc is not None else ""
                self._fail(ProtocolError(f"the server closed the connection unanswered{detail}"))
        self.close()

    # -- httptools callbacks -----------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"retry-after":
            self._retry_after = value.decode("latin-1")
        elif lowered == b"webhook-delivery":
            self._webhook_delivery = value.decode("latin-1")
        elif lowered == b"content-length":
            self._framed = True
        elif lowered == b"transfer-encoding":
            self._framed = value.rstrip().lower().endswith(b"chunked")
        elif lowered == b"webhook-challenge-response":
            self._challenge_response = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._status = self._parser.get_status_code()
        if self._status in _NO_BODY_STATUSES:
            self._framed = True

    def on_body(self, body: bytes) -> None:
        room = self._room
        if room > 0:
            kept = body if len(body) <= room else body[:room]
            self._body.append(kept)
            self._room = room - len(kept)

    def on_message_complete(self) -> None:
        if self._status < 200:  # an interim answer (100 Continue, 103): the real one follows
            max_body_bytes = self._room
            self._reset(max_body_bytes)
            return
        # An answer that came before the whole request was written leaves the rest queued
        # ahead of the next request: keep the connection only once the request is out.
        self.reusable = (
            self._parser.should_keep_alive()
            and self._transport is not None
            and self._transport.get_write_buffer_size() == 0
        )
        self._finish()
