"""Receiver middlewares: ASGI (Starlette TestClient, raw ASGI) and aiohttp (a real server)."""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from kmsg_webhook.events import WebhookEvent, WebhookEventType
from kmsg_webhook.middleware import (
    AiohttpVerifyWebhookMiddleware,
    Message,
    Scope,
    VerifyWebhookMiddleware,
)
from kmsg_webhook.signing import SignatureScheme, Signer, generate_secret
from kmsg_webhook.verify import ReplayGuard
from support.servers import serve_app

SECRET = generate_secret()

# aiohttp recommends web.RequestKey over str keys (and ignores this warning by default);
# the middleware keeps request["webhook_event"], which works on every aiohttp it supports.
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web.NotAppKeyWarning")


def event_body(event_id: str = "evt_1") -> bytes:
    event = WebhookEvent(
        id=event_id,
        type=WebhookEventType.MESSAGE_SENT,
        timestamp=datetime(2026, 1, 2, tzinfo=UTC),
        data={"text": "안녕"},
    )
    return event.to_json().encode()


def signed(
    body: bytes,
    *,
    msg_id: str = "msg_1",
    ts: int | None = None,
    secret: str = SECRET,
    scheme: SignatureScheme = SignatureScheme.STANDARD,
) -> dict[str, str]:
    return Signer([secret], scheme).headers(
        msg_id=msg_id,
        timestamp=int(time.time()) if ts is None else ts,
        body=body,
        event_type="message.sent",
    )


# --- Starlette ------------------------------------------------------------------------------


async def hook(request: Request) -> Response:
    event = request.state.webhook_event
    body = await request.body()  # the middleware replays the buffered body
    status = int(request.query_params.get("status", "200"))
    return JSONResponse({"id": event.id, "body_len": len(body)}, status_code=status)


async def hook_get(request: Request) -> Response:
    return PlainTextResponse("hello")


async def other(request: Request) -> Response:
    return PlainTextResponse(f"other {len(await request.body())}")


def starlette_client(**options: Any) -> TestClient:
    app = Starlette(
        routes=[
            Route("/hooks", hook, methods=["POST"]),
            Route("/hooks", hook_get, methods=["GET"]),
            Route("/other", other, methods=["POST"]),
        ],
        middleware=[Middleware(VerifyWebhookMiddleware, secrets=[SECRET], **options)],
    )
    return TestClient(app, raise_server_exceptions=False)


def test_starlette_verified_request_reaches_the_app() -> None:
    body = event_body()
    with starlette_client() as client:
        response = client.post("/hooks", content=body, headers=signed(body))
    assert response.status_code == 200
    assert response.json() == {"id": "evt_1", "body_len": len(body)}


def test_starlette_kmsg_request() -> None:
    body = event_body()
    with starlette_client() as client:
        headers = signed(body, secret=SECRET, scheme=SignatureScheme.KMSG)
        assert client.post("/hooks", content=body, headers=headers).json()["id"] == "evt_1"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing_header"),
        (
            {"webhook-id": "m", "webhook-timestamp": "1", "webhook-signature": "v1,x"},
            "invalid_timestamp",
        ),
        ({"webhook-timestamp": "soon"}, "invalid_timestamp"),
        ({"webhook-signature": "v1,AAAA"}, "invalid_signature"),
        ({"webhook-signature": "v1," + "A" * 20_000}, "invalid_signature"),
        ({"webhook-signature": "\u00ff\u00fe garbage,,,".encode("latin-1")}, "invalid_signature"),
        ({"webhook-id": "\u00ff".encode("latin-1")}, "invalid_signature"),
    ],
)
def test_starlette_failures_are_401_json(headers: dict[str, Any], reason: str) -> None:
    body = event_body()
    merged = {**signed(body), **headers} if headers else {}
    with starlette_client() as client:
        response = client.post("/hooks", content=body, headers=merged)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == reason
    assert response.json()["detail"]


def test_starlette_tampered_body_and_non_utf8_body() -> None:
    body = event_body()
    with starlette_client() as client:
        tampered = client.post("/hooks", content=body + b" ", headers=signed(body))
        assert tampered.json()["error"] == "invalid_signature"
        garbage = b"\xff\xfe\xfd not utf-8"
        response = client.post("/hooks", content=garbage, headers=signed(garbage))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_payload"


def test_starlette_413_by_length_and_by_stream() -> None:
    big = b"x" * 2000

    def chunks() -> Iterator[bytes]:
        yield from (big[:1000], big[1000:])

    with starlette_client(max_body_bytes=1500) as client:
        declared = client.post("/hooks", content=big, headers=signed(big))
        streamed = client.post("/hooks", content=chunks(), headers=signed(big))
    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.json()["error"] == "payload_too_large"


def test_starlette_paths_and_methods_pass_through() -> None:
    with starlette_client(paths=["/hooks"]) as client:
        assert client.get("/hooks").text == "hello"
        assert client.post("/other", content=b"unsigned").text == "other 8"
        assert client.post("/hooks", content=b"unsigned").status_code == 401
    with starlette_client() as client:  # paths=None: every POST is checked
        assert client.post("/other", content=b"unsigned").status_code == 401


def test_starlette_replay_guard_and_retry_after_failure() -> None:
    body = event_body()
    guard = ReplayGuard()
    with starlette_client(replay_guard=guard) as client:
        failed = client.post("/hooks?status=500", content=body, headers=signed(body))
        assert failed.status_code == 500
        retry = client.post("/hooks", content=body, headers=signed(body))  # forgotten: accepted
        assert retry.status_code == 200
        replay = client.post("/hooks", content=body, headers=signed(body))
    assert replay.status_code == 401
    assert replay.json()["error"] == "replayed"


def test_starlette_app_exception_releases_the_id() -> None:
    async def boom(request: Request) -> Response:
        raise RuntimeError("app bug")

    guard = ReplayGuard()
    app = Starlette(
        routes=[Route("/hooks", boom, methods=["POST"])],
        middleware=[Middleware(VerifyWebhookMiddleware, secrets=SECRET, replay_guard=guard)],
    )
    body = event_body()
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/hooks", content=body, headers=signed(body)).status_code == 500
    assert len(guard) == 0


# --- raw ASGI -------------------------------------------------------------------------------


class Recorder:
    """A bare ASGI app that reads the whole body and echoes what it saw."""

    def __init__(self) -> None:
        self.calls: list[Scope] = []
        self.after_body: list[Message] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        self.calls.append(scope)
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.after_body.append(await receive())
        event = scope.get("state", {}).get("webhook_event")
        payload = json.dumps({"event": event.id if event else None, "body": body.decode()})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": payload.encode()})


async def call(
    app: Any,
    messages: list[Message],
    *,
    headers: dict[str, str],
    method: str = "POST",
    **scope: Any,
) -> list[Message]:
    inbox = list(messages)
    sent: list[Message] = []

    async def receive() -> Message:
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await app(
        {"type": "http", "method": method, "path": "/hooks", "headers": raw, **scope}, receive, send
    )
    return sent


async def test_raw_asgi_chunked_body_is_verified_and_replayed() -> None:
    body = event_body()
    inner = Recorder()
    app = VerifyWebhookMiddleware(inner, secrets=[SECRET])
    half = len(body) // 2
    messages: list[Message] = [
        {"type": "http.request", "body": body[:half], "more_body": True},
        {"type": "http.request", "body": body[half:], "more_body": False},
    ]
    sent = await call(app, messages, headers=signed(body))
    assert sent[0]["status"] == 200
    assert json.loads(sent[1]["body"]) == {"event": "evt_1", "body": body.decode()}
    assert inner.after_body == [{"type": "http.disconnect"}]  # later receives reach the server
    assert inner.calls[0]["state"]["webhook_event"].id == "evt_1"


async def test_raw_asgi_keeps_existing_state_and_rejects_bad_requests() -> None:
    body = event_body()
    inner = Recorder()
    app = VerifyWebhookMiddleware(inner, secrets=[SECRET])
    state: dict[str, Any] = {"lifespan": "kept"}
    request: list[Message] = [{"type": "http.request", "body": body}]
    await call(app, request, headers=signed(body), state=state)
    assert state["lifespan"] == "kept" and state["webhook_event"].id == "evt_1"

    sent = await call(app, request, headers={**signed(body), "webhook-id": "other"})
    assert sent[0]["status"] == 401
    assert (b"content-type", b"application/json") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"] == "invalid_signature"
    assert len(inner.calls) == 1


async def test_raw_asgi_disconnect_while_reading_sends_nothing() -> None:
    inner = Recorder()
    app = VerifyWebhookMiddleware(inner, secrets=[SECRET])
    partial: list[Message] = [{"type": "http.request", "body": b"{", "more_body": True}]
    assert await call(app, partial, headers=signed(b"{}")) == []
    assert inner.calls == []


async def test_raw_asgi_non_http_and_non_post_pass_through() -> None:
    inner = Recorder()
    app = VerifyWebhookMiddleware(inner, secrets=[SECRET])

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        pass

    await app({"type": "lifespan"}, receive, send)
    await app({"type": "websocket", "path": "/hooks", "headers": []}, receive, send)
    sent = await call(app, [{"type": "http.request", "body": b""}], headers={}, method="GET")
    assert [scope["type"] for scope in inner.calls] == ["lifespan", "websocket", "http"]
    assert sent[0]["status"] == 200


@pytest.mark.parametrize("length", ["9" * 5000, "1" + "0" * 5000, "-1", "abc", "١٢٣"])
async def test_raw_asgi_odd_content_lengths(length: str) -> None:
    body = event_body()
    app = VerifyWebhookMiddleware(Recorder(), secrets=[SECRET])
    headers = {**signed(body), "content-length": length}
    raw = [(k.encode(), v.encode()) for k, v in headers.items()]
    inbox: list[Message] = [{"type": "http.request", "body": body}]
    sent: list[Message] = []

    async def receive() -> Message:
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app({"type": "http", "method": "POST", "path": "/hooks", "headers": raw}, receive, send)
    assert sent[0]["status"] == (413 if length[0] in "19" else 200)


async def test_raw_asgi_non_utf8_header_bytes_are_handled() -> None:
    app = VerifyWebhookMiddleware(Recorder(), secrets=[SECRET])
    body = event_body()
    inbox: list[Message] = [{"type": "http.request", "body": body}]
    sent: list[Message] = []

    async def receive() -> Message:
        return inbox.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [
        (b"webhook-id", b"\xff\xfe"),
        (b"webhook-timestamp", b"\xff"),
        (b"webhook-signature", b"\x80"),
    ]
    await app(
        {"type": "http", "method": "POST", "path": "/hooks", "headers": headers}, receive, send
    )
    assert sent[0]["status"] == 401


# --- aiohttp (real server, real client) -----------------------------------------------------


@pytest.fixture
async def aiohttp_server_url() -> AsyncIterator[Any]:
    servers = contextlib.AsyncExitStack()

    async def start(middleware: AiohttpVerifyWebhookMiddleware, **app_options: Any) -> str:
        async def handler(request: web.Request) -> web.StreamResponse:
            event = request["webhook_event"]
            body = await request.read()  # still readable after the middleware
            payload = await request.json()
            status = int(request.query.get("status", "200"))
            if request.query.get("raise"):
                raise web.HTTPServiceUnavailable()
            return web.json_response(
                {"id": event.id, "body_len": len(body), "type": payload["type"]}, status=status
            )

        async def plain(request: web.Request) -> web.StreamResponse:
            return web.Response(text=f"plain {len(await request.read())}")

        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)  # must be a new-style middleware
            app = web.Application(middlewares=[middleware], **app_options)
            app.router.add_post("/hooks", handler)
            app.router.add_get("/hooks", plain)
            app.router.add_post("/other", plain)
            return await servers.enter_async_context(serve_app(app))

    async with servers:
        yield start


async def test_aiohttp_verified_request(aiohttp_server_url: Any) -> None:
    base = await aiohttp_server_url(AiohttpVerifyWebhookMiddleware(secrets=[SECRET]))
    body = event_body()
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/hooks", data=body, headers=signed(body)) as response:
            assert response.status == 200
            assert await response.json() == {
                "id": "evt_1",
                "body_len": len(body),
                "type": "message.sent",
            }
        kmsg = signed(body, scheme=SignatureScheme.KMSG)
        async with session.post(f"{base}/hooks", data=body, headers=kmsg) as response:
            assert response.status == 200


async def test_aiohttp_failures_are_401_json(aiohttp_server_url: Any) -> None:
    base = await aiohttp_server_url(AiohttpVerifyWebhookMiddleware(secrets=[SECRET]))
    body = event_body()
    cases = [
        ({}, "missing_header"),
        ({**signed(body), "webhook-timestamp": str(int(time.time()) - 3600)}, "invalid_timestamp"),
        ({**signed(body), "webhook-signature": "v1,AAAA v1a,!!"}, "invalid_signature"),
        (signed(body, secret=generate_secret()), "invalid_signature"),
        ({**signed(body), "webhook-signature": "x" * 7000}, "invalid_signature"),
    ]
    async with aiohttp.ClientSession() as session:
        for headers, reason in cases:
            async with session.post(f"{base}/hooks", data=body, headers=headers) as response:
                assert response.status == 401, reason
                assert response.content_type == "application/json"
                assert (await response.json())["error"] == reason
        garbage = b"\xff\xfe\x00"
        async with session.post(f"{base}/hooks", data=garbage, headers=signed(garbage)) as response:
            assert response.status == 401
            assert (await response.json())["error"] == "invalid_payload"


async def test_aiohttp_413(aiohttp_server_url: Any) -> None:
    big = b"x" * 5000

    async def stream() -> AsyncIterator[bytes]:
        yield big[:2500]
        yield big[2500:]

    ours = await aiohttp_server_url(
        AiohttpVerifyWebhookMiddleware(secrets=[SECRET], max_body_bytes=1000)
    )
    theirs = await aiohttp_server_url(
        AiohttpVerifyWebhookMiddleware(secrets=[SECRET]), client_max_size=1000
    )
    async with aiohttp.ClientSession() as session:
        for base in (ours, theirs):
            for data in (big, stream()):
                async with session.post(
                    f"{base}/hooks", data=data, headers=signed(big)
                ) as response:
                    assert response.status == 413
                    assert (await response.json())["error"] == "payload_too_large"


async def test_aiohttp_paths_and_methods_pass_through(aiohttp_server_url: Any) -> None:
    base = await aiohttp_server_url(
        AiohttpVerifyWebhookMiddleware(secrets=[SECRET], paths=["/hooks"])
    )
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/hooks") as response:
            assert await response.text() == "plain 0"
        async with session.post(f"{base}/other", data=b"unsigned") as response:
            assert await response.text() == "plain 8"
        async with session.post(f"{base}/hooks", data=b"unsigned") as response:
            assert response.status == 401


async def test_aiohttp_replay_guard(aiohttp_server_url: Any) -> None:
    guard = ReplayGuard()
    base = await aiohttp_server_url(
        AiohttpVerifyWebhookMiddleware(secrets=SECRET, replay_guard=guard)
    )
    body = event_body()
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{base}/hooks?status=500", data=body, headers=signed(body)
        ) as response:
            assert response.status == 500
        async with session.post(
            f"{base}/hooks?raise=1", data=body, headers=signed(body)
        ) as response:
            assert response.status == 503
        async with session.post(f"{base}/hooks", data=body, headers=signed(body)) as response:
            assert response.status == 200  # the failed attempts were forgotten
        async with session.post(f"{base}/hooks", data=body, headers=signed(body)) as response:
            assert response.status == 401
            assert (await response.json())["error"] == "replayed"
