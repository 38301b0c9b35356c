"""LeanTransport's own protocol behaviour against misbehaving local servers: when a connection
is reused, pooled, expired or dropped, and the limits on what an answer may be."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from yarl import URL

from kmsg_webhook import eventloop
from kmsg_webhook.errors import ConfigError
from kmsg_webhook.transport import (
    InvalidRequestError,
    LeanTransport,
    ProtocolError,
    Target,
    TransportError,
    TransportResponse,
    TransportTimeoutError,
)
from kmsg_webhook.urlguard import GuardedResolver, StaticResolver
from support.certs import LocalCA
from support.servers import RawServer, answer_once, keep_answering, raw_server, read_request

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
async def lean() -> AsyncIterator[LeanTransport]:
    transport = LeanTransport(resolver=GuardedResolver(allow_private_hosts=True))
    yield transport
    await transport.aclose()


def target(server: RawServer) -> Target:
    return Target.from_url(URL(f"http://127.0.0.1:{server.port}/hook"))


async def post(
    transport: LeanTransport,
    server: RawServer,
    *,
    time_limit: float = 10.0,
    max_body_bytes: int = 1024,
) -> TransportResponse:
    return await transport.post(
        target(server), {}, b"{}", time_limit=time_limit, max_body_bytes=max_body_bytes
    )


@pytest.mark.parametrize(
    ("answer", "body", "reused"),
    [
        pytest.param(OK, b"ok", True, id="keep-alive"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            b"ok",
            True,
            id="chunked",
        ),
        pytest.param(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", b"", True, id="interim"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            b"ok",
            False,
            id="connection-close",
        ),
        pytest.param(
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok", False, id="http-1.0"
        ),
        pytest.param(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
            b"ok",
            True,
            id="http-1.0-keep-alive",
        ),
        pytest.param(  # the answer stands, but what follows it makes the connection unusable
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok and some more",
            b"ok",
            False,
            id="longer-than-content-length",
        ),
    ],
)
async def test_a_connection_is_reused_only_when_the_answer_allows(
    lean: LeanTransport, answer: bytes, body: bytes, reused: bool
) -> None:
    async with raw_server(keep_answering(answer)) as server:
        for _ in range(3):
            assert (await post(lean, server)).body == body
    assert (server.connections, len(server.requests)) == (1 if reused else 3, 3)


async def test_body_past_the_cap_is_read_through_and_the_connection_kept(
    lean: LeanTransport,
) -> None:
    big = b"y" * 1_000_000
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big)
    async with raw_server(keep_answering(answer)) as server:
        for _ in range(2):
            assert (await post(lean, server, max_body_bytes=16)).body == b"y" * 16
    assert server.connections == 1


async def test_short_body_on_an_open_connection_times_out(lean: LeanTransport) -> None:
    async def handler(
        state: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
        await writer.drain()
        await reader.read()  # until the client gives up and closes
        state.closed_by_peer += 1

    async with raw_server(handler) as server:
        with pytest.raises(TransportTimeoutError):
            await post(lean, server, time_limit=0.3)
        for _ in range(100):
            if server.closed_by_peer:
                break
            await asyncio.sleep(0.02)
    assert server.closed_by_peer == 1  # a timed-out connection is closed, never reused


async def test_huge_headers_are_refused(lean: LeanTransport) -> None:
    async def handler(
        state: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for n in range(10_000):  # about 400 KB of headers, never ending
            writer.write(b"X-Filler-%05d: %s\r\n" % (n, b"z" * 24))
            await writer.drain()
        await reader.read()

    async with raw_server(handler) as server:
        with pytest.raises(ProtocolError, match="exceed 65536 bytes"):
            await post(lean, server)


async def test_reset_after_the_cap_is_still_a_failed_attempt(lean: LeanTransport) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000
    async with raw_server(answer_once(answer, reset_after=0.05)) as server:
        with pytest.raises(ProtocolError, match="reset"):
            await post(lean, server, max_body_bytes=10)


async def test_garbage_status_line_is_malformed(lean: LeanTransport) -> None:
    async with raw_server(keep_answering(b"HTTX/1.1 200 OK\r\n\r\n")) as server:
        with pytest.raises(ProtocolError, match="malformed"):
            await post(lean, server)


async def test_close_without_answer_on_a_new_connection_fails(lean: LeanTransport) -> None:
    async def handler(
        state: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)

    async with raw_server(handler) as server:
        with pytest.raises(ProtocolError, match="unanswered"):
            await post(lean, server)


async def test_a_kept_alive_connection_the_server_closed_is_replaced(lean: LeanTransport) -> None:
    async def handler(
        state: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # Answers once, keeping alive; the next request on this connection gets a close.
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        await read_request(reader)

    async with raw_server(handler) as server:
        assert (await post(lean, server)).body == b"ok"
        assert (await post(lean, server)).body == b"ok"
    assert server.connections == 2  # the second POST went once more, on a fresh connection


async def test_idle_connections_expire(lean: LeanTransport) -> None:
    transport = LeanTransport(
        resolver=GuardedResolver(allow_private_hosts=True), keepalive_expiry=0.2
    )
    async with raw_server(keep_answering(OK)) as server:
        await post(transport, server)
        for _ in range(100):
            if server.closed_by_peer:
                break
            await asyncio.sleep(0.02)
        assert server.closed_by_peer == 1  # closed by the sweep, not on next use
        await post(transport, server)
    await transport.aclose()
    assert server.connections == 2


async def test_bytes_on_an_idle_connection_retire_it(lean: LeanTransport) -> None:
    sent_more = asyncio.Event()

    async def handler(
        state: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while await read_request(reader) is not None:
            writer.write(OK)
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"HTTP/1.1 200 OK\r\n")  # unasked for
            await writer.drain()
            sent_more.set()

    async with raw_server(handler) as server:
        await post(lean, server)
        await sent_more.wait()
        await asyncio.sleep(0.05)  # loopback bytes are readable at once; let the loop read them
        await post(lean, server)
    assert server.connections == 2


async def test_connections_per_origin_are_limited(lean: LeanTransport) -> None:
    transport = LeanTransport(
        resolver=GuardedResolver(allow_private_hosts=True), max_connections_per_origin=2
    )

    async def handler(
        state: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while await read_request(reader) is not None:
            await asyncio.sleep(0.02)
            writer.write(OK)
            await writer.drain()

    async with raw_server(handler) as server:
        responses = await asyncio.gather(*(post(transport, server) for _ in range(10)))
    await transport.aclose()
    assert [r.status for r in responses] == [200] * 10
    assert (server.connections, server.most_open) == (2, 2)


async def test_waiting_for_a_connection_counts_against_the_time_limit() -> None:
    transport = LeanTransport(
        resolver=GuardedResolver(allow_private_hosts=True), max_connections_per_origin=1
    )
    release = asyncio.Event()

    async def handler(
        state: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while await read_request(reader) is not None:
            await release.wait()
            writer.write(OK)
            await writer.drain()

    async with raw_server(handler) as server:
        first = asyncio.create_task(post(transport, server))
        await asyncio.sleep(0.05)
        with pytest.raises(TransportTimeoutError):
            await post(transport, server, time_limit=0.2)
        release.set()
        assert (await first).status == 200
        assert (await post(transport, server)).status == 200
    await transport.aclose()
    assert server.connections == 1


async def test_cancelled_post_closes_its_connection_and_frees_the_slot() -> None:
    transport = LeanTransport(
        resolver=GuardedResolver(allow_private_hosts=True), max_connections_per_origin=1
    )
    stall = asyncio.Event()

    async def handler(
        state: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while await read_request(reader) is not None:
            if not stall.is_set():
                stall.set()
                await reader.read()
                state.closed_by_peer += 1
                return
            writer.write(OK)
            await writer.drain()

    async with raw_server(handler) as server:
        stuck = asyncio.create_task(post(transport, server))
        await stall.wait()
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        assert (await post(transport, server, time_limit=2)).status == 200
    await transport.aclose()
    assert (server.connections, server.closed_by_peer) == (2, 1)


async def test_aclose_fails_in_flight_posts_and_refuses_new_ones() -> None:
    transport = LeanTransport(resolver=GuardedResolver(allow_private_hosts=True))
    asked = asyncio.Event()

    async def handler(
        state: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        asked.set()
        await reader.read()

    async with raw_server(handler) as server:
        in_flight = asyncio.create_task(post(transport, server))
        await asked.wait()
        await transport.aclose()
        with pytest.raises(ProtocolError):
            await in_flight
        with pytest.raises(TransportError, match="closed"):
            await post(transport, server)


async def test_request_headers_with_line_breaks_are_refused(lean: LeanTransport) -> None:
    async with raw_server(keep_answering(OK)) as server:
        for bad in ({"webhook-id": "a\r\nX-Evil: 1"}, {"X-Evil\n": "1"}, {"webhook-id": "a\0"}):
            with pytest.raises(InvalidRequestError):
                await lean.post(target(server), bad, b"{}", time_limit=5, max_body_bytes=10)
    assert server.connections == 0


def test_on_uvloop_with_tls_and_keep_alive(tmp_path: Path) -> None:
    ca = LocalCA.make()

    async def scenario() -> tuple[str, int, list[int]]:
        tls = ca.server_context(tmp_path, "hooks.example")
        resolver = StaticResolver({"hooks.example": ["127.0.0.1"]})
        transport = LeanTransport(
            resolver=GuardedResolver(resolver, allow_private_hosts=True),
            ssl_context=ca.client_context(),
        )
        async with raw_server(keep_answering(OK), tls=tls) as server:
            to = Target.from_url(URL(f"https://hooks.example:{server.port}/"))
            statuses = [
                (await transport.post(to, {}, b"{}", time_limit=5, max_body_bytes=10)).status
                for _ in range(3)
            ]
        await transport.aclose()
        return type(asyncio.get_running_loop()).__module__, server.connections, statuses

    module, connections, statuses = eventloop.run(scenario(), loop="uvloop")
    assert module.startswith("uvloop")
    assert (connections, statuses) == (1, [200, 200, 200])


@pytest.mark.parametrize(
    "bad",
    [{"max_connections_per_origin": 0}, {"keepalive_expiry": 0}, {"max_header_bytes": 100}],
)
def test_settings_out_of_range_are_config_errors(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        LeanTransport(**bad)  # type: ignore[arg-type]


async def test_each_vetted_address_is_tried_in_turn() -> None:
    # 127.0.0.2 is loopback too, but nothing listens there: the second answer is used.
    resolver = StaticResolver({"hooks.example": ["127.0.0.2", "127.0.0.1"]})
    transport = LeanTransport(resolver=GuardedResolver(resolver, allow_private_hosts=True))
    async with raw_server(keep_answering(OK)) as server:
        to = Target.from_url(URL(f"http://hooks.example:{server.port}/"))
        response = await transport.post(to, {}, b"{}", time_limit=5, max_body_bytes=10)
    await transport.aclose()
    assert response.status == 200


async def test_an_answer_before_the_request_is_sent_retires_the_connection(
    lean: LeanTransport,
) -> None:
    async def handler(
        state: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the head only: the body is still on its way
        writer.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.3)
        while await reader.read(1 << 20):
            pass

    async with raw_server(handler) as server:
        for _ in range(2):
            response = await lean.post(
                target(server), {}, b"x" * (32 << 20), time_limit=10, max_body_bytes=10
            )
            assert response.status == 413
    assert server.connections == 2
