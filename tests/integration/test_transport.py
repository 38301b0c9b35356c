"""The transport seam's contract, for every transport: what a POST sends and what an answer or
a failure comes back as. Servers are raw asyncio servers on 127.0.0.1 (tests/support/servers.py)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver
from yarl import URL

from kmsg_webhook.errors import EndpointUrlError, WebhookError
from kmsg_webhook.transport import (
    AiohttpTransport,
    ConnectError,
    InvalidRequestError,
    LeanTransport,
    ProtocolError,
    Target,
    TLSVerificationError,
    Transport,
    TransportResponse,
    TransportTimeoutError,
)
from kmsg_webhook.urlguard import ForbiddenAddressError, GuardedResolver, StaticResolver
from support.certs import LocalCA
from support.servers import RawServer, answer_once, keep_answering, raw_server, read_request

MakeTransport = Callable[..., Transport]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture(params=["lean", "aiohttp"])
async def make_transport(request: pytest.FixtureRequest) -> AsyncIterator[MakeTransport]:
    """Build a transport of the parametrized kind behind the URL guard (private hosts allowed
    unless told otherwise); all are closed at the end of the test."""
    made: list[Transport] = []

    def make(
        *,
        resolver: AbstractResolver | None = None,
        allow_private_hosts: bool = True,
        ssl_context: ssl.SSLContext | None = None,
    ) -> Transport:
        guard = GuardedResolver(resolver, allow_private_hosts=allow_private_hosts)
        transport: Transport
        if request.param == "lean":
            transport = LeanTransport(resolver=guard, ssl_context=ssl_context)
        else:
            connector = aiohttp.TCPConnector(resolver=guard, ssl=ssl_context or True)
            session = aiohttp.ClientSession(connector=connector)
            transport = AiohttpTransport(session, owns_session=True)
        made.append(transport)
        return transport

    yield make
    for transport in made:
        await transport.aclose()


def target(server: RawServer, path: str = "/hook", host: str = "127.0.0.1", **kw: str) -> Target:
    scheme = kw.pop("scheme", "http")
    return Target.from_url(URL(f"{scheme}://{host}:{server.port}{path}"), kw or None)


async def post(
    transport: Transport,
    to: Target,
    body: bytes = b'{"a":1}',
    headers: Mapping[str, str] | None = None,
    *,
    time_limit: float = 10.0,
    max_body_bytes: int = 1024,
) -> TransportResponse:
    return await transport.post(
        to, headers or {}, body, time_limit=time_limit, max_body_bytes=max_body_bytes
    )


async def test_post_sends_the_target_and_request_headers_and_reads_the_answer(
    make_transport: MakeTransport,
) -> None:
    answer = (
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nwebhook-delivery: rcpt_1\r\n"
        b"Content-Length: 4\r\n\r\nslow"
    )
    async with raw_server(keep_answering(answer)) as server:
        transport = make_transport()
        to = target(server, "/in/box?x=1", **{"Content-Type": "application/json", "X-Team": "a"})
        response = await post(transport, to, b'{"n":1}', {"webhook-id": "evt_1"})
    assert (response.status, response.reason, response.body) == (429, "Too Many Requests", b"slow")
    assert (response.retry_after, response.webhook_delivery) == ("7", "rcpt_1")
    assert response.elapsed > 0
    [(head, body)] = server.requests
    assert body == b'{"n":1}'
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /in/box?x=1 HTTP/1.1"
    fields = {
        k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
    }
    assert fields["host"] == f"127.0.0.1:{server.port}"
    assert fields["content-type"] == "application/json"
    assert fields["x-team"] == "a"
    assert fields["webhook-id"] == "evt_1"
    assert fields["content-length"] == "7"


async def test_redirects_are_answers_not_followed(make_transport: MakeTransport) -> None:
    answer = (
        b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://10.0.0.1/\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    async with raw_server(keep_answering(answer)) as server:
        response = await post(make_transport(), target(server))
    assert response.status == 307
    assert len(server.requests) == 1


async def test_body_is_capped_and_the_rest_dropped(make_transport: MakeTransport) -> None:
    big = b"x" * 300_000
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big)
    async with raw_server(keep_answering(answer)) as server:
        response = await post(make_transport(), target(server), max_body_bytes=100)
    assert response.body == b"x" * 100


async def test_chunked_answer_is_assembled(make_transport: MakeTransport) -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    async with raw_server(keep_answering(answer)) as server:
        response = await post(make_transport(), target(server))
    assert response.body == b"abcde"


async def test_http_1_0_answer_ending_with_the_connection(make_transport: MakeTransport) -> None:
    async with raw_server(answer_once(b"HTTP/1.0 200 OK\r\n\r\nuntil close")) as server:
        response = await post(make_transport(), target(server))
    assert (response.status, response.body) == (200, b"until close")


async def test_truncated_status_line_is_a_protocol_error(make_transport: MakeTransport) -> None:
    async with raw_server(answer_once(b"HTTP/1.1 20")) as server:
        with pytest.raises(ProtocolError):
            await post(make_transport(), target(server))


async def test_answer_shorter_than_its_content_length_is_a_protocol_error(
    make_transport: MakeTransport,
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"
    async with raw_server(answer_once(answer)) as server:
        with pytest.raises(ProtocolError):
            await post(make_transport(), target(server))


async def test_reset_mid_body_is_a_protocol_error(make_transport: MakeTransport) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000
    async with raw_server(answer_once(answer, reset_after=0.05)) as server:
        with pytest.raises(ProtocolError):
            await post(make_transport(), target(server), max_body_bytes=10_000)


async def test_slow_loris_answer_times_out(make_transport: MakeTransport) -> None:
    async def handler(
        state: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.1)

    async with raw_server(handler) as server:
        with pytest.raises(TransportTimeoutError) as info:
            await post(make_transport(), target(server), time_limit=0.5)
    assert str(info.value) == "timeout after 500 ms"
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, WebhookError)


async def test_connection_refused_is_a_connect_error(make_transport: MakeTransport) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    to = Target.from_url(URL(f"http://127.0.0.1:{port}/"))
    with pytest.raises(ConnectError):
        await post(make_transport(), to)


async def test_unknown_name_is_a_connect_error(make_transport: MakeTransport) -> None:
    transport = make_transport(resolver=StaticResolver({}))
    with pytest.raises(ConnectError):
        await post(transport, Target.from_url(URL("https://nowhere.example/")))


async def test_guard_refusal_comes_through_unchanged(make_transport: MakeTransport) -> None:
    """A name resolving to a private address is refused at connect time; nothing is sent."""
    async with raw_server(keep_answering(OK)) as server:
        resolver = StaticResolver({"hooks.example": ["127.0.0.1"]})
        transport = make_transport(resolver=resolver, allow_private_hosts=False)
        with pytest.raises(ForbiddenAddressError) as info:
            await post(transport, target(server, host="hooks.example"))
    assert isinstance(info.value, EndpointUrlError) and info.value.reason == "private_address"
    assert server.connections == 0


async def test_connects_to_the_vetted_address_with_the_name_as_host(
    make_transport: MakeTransport,
) -> None:
    async with raw_server(keep_answering(OK)) as server:
        transport = make_transport(resolver=StaticResolver({"hooks.example": ["127.0.0.1"]}))
        response = await post(transport, target(server, host="hooks.example"))
    assert response.status == 200
    [(head, _)] = server.requests
    assert f"\r\nHost: hooks.example:{server.port}\r\n".encode() in head


async def test_tls_verifies_the_server_and_sends_sni(
    make_transport: MakeTransport, tmp_path: Path
) -> None:
    ca = LocalCA.make()
    tls = ca.server_context(tmp_path, "hooks.example")
    async with raw_server(keep_answering(OK), tls=tls) as server:
        resolver = StaticResolver({"hooks.example": ["127.0.0.1"]})
        transport = make_transport(resolver=resolver, ssl_context=ca.client_context())
        response = await post(transport, target(server, host="hooks.example", scheme="https"))
    assert (response.status, response.body) == (200, b"ok")
    assert server.server_names == ["hooks.example"]


async def test_tls_refuses_a_certificate_for_another_name(
    make_transport: MakeTransport, tmp_path: Path
) -> None:
    ca = LocalCA.make()
    tls = ca.server_context(tmp_path, "other.example")
    async with raw_server(keep_answering(OK), tls=tls) as server:
        resolver = StaticResolver({"hooks.example": ["127.0.0.1"]})
        transport = make_transport(resolver=resolver, ssl_context=ca.client_context())
        with pytest.raises(TLSVerificationError):
            await post(transport, target(server, host="hooks.example", scheme="https"))
    assert server.requests == []


async def test_tls_refuses_an_untrusted_ca(make_transport: MakeTransport, tmp_path: Path) -> None:
    tls = LocalCA.make().server_context(tmp_path, "hooks.example")
    async with raw_server(keep_answering(OK), tls=tls) as server:
        resolver = StaticResolver({"hooks.example": ["127.0.0.1"]})
        transport = make_transport(resolver=resolver, ssl_context=LocalCA.make().client_context())
        with pytest.raises(TLSVerificationError):
            await post(transport, target(server, host="hooks.example", scheme="https"))


def test_target_refuses_headers_that_cannot_be_sent() -> None:
    url = URL("https://hooks.example/")
    for bad in (
        {"X-A": "1\r\nX-B: 2"},
        {"X A": "1"},
        {"Content-Length": "3"},
        {"Connection": "close"},
    ):
        with pytest.raises(InvalidRequestError):
            Target.from_url(url, bad)
    with pytest.raises(InvalidRequestError):
        Target.from_url(URL("ftp://hooks.example/"))
    assert Target.from_url(URL("https://hooks.example./a")).host == "hooks.example"
    assert Target.from_url(URL("https://[2001:db8::1]:8443/")).head.startswith(
        b"POST / HTTP/1.1\r\nHost: [2001:db8::1]:8443\r\n"
    )
