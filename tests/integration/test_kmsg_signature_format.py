"""The k-msg scheme's signature header, prefix and algorithm, as the original's SecurityManager
took them: the runtime sends in the configured form, the receiver helpers read it, and a legacy
HMAC-SHA1 signature still verifies (it is never produced)."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from kmsg_webhook import (
    ConfigError,
    EndpointInput,
    InvalidEndpointError,
    InvalidSignatureError,
    KmsgSignatureFormat,
    MissingHeaderError,
    SignatureScheme,
    Signer,
    SigningError,
    WebhookConfig,
    WebhookEndpoint,
    WebhookEvent,
    WebhookEventType,
    create_in_memory_persistence,
    verify,
)
from kmsg_webhook.middleware import AiohttpVerifyWebhookMiddleware, VerifyWebhookMiddleware
from support.servers import serve_app

HANG_GUARD = 15
SECRET = "kmsg-endpoint-secret"
CUSTOM = KmsgSignatureFormat(header="X-Hub-Signature", prefix="hmac=")

pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web.NotAppKeyWarning")


def original_signature(
    body: bytes, ts: int, *, secret: str = SECRET, algorithm: str = "sha256", prefix: str
) -> str:
    """What the original's SecurityManager.generateSignatureWithTimestamp produced."""
    digest = hmac.new(secret.encode(), f"{ts}.".encode() + body, algorithm).hexdigest()
    return prefix + digest


def event_body() -> bytes:
    event = WebhookEvent(
        id="evt_1",
        type=WebhookEventType.MESSAGE_SENT,
        timestamp=datetime(2026, 1, 2, tzinfo=UTC),
        data={"text": "안녕"},
    )
    return event.to_json().encode()


def kmsg_headers(signature_header: str, signature: str, ts: int) -> dict[str, str]:
    return {
        "X-Webhook-ID": "evt_1",
        "X-Webhook-Event": "message.sent",
        "X-Webhook-Timestamp": str(ts),
        signature_header: signature,
    }


# --------------------------------------------------------------------------- sending


async def test_the_runtime_signs_in_the_configured_header_and_prefix(
    receiver, make_runtime, make_event
):
    runtime = await make_runtime(
        WebhookConfig(jitter=False, signature_scheme="kmsg", kmsg_signature=CUSTOM)
    )
    await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/hook"), events=["message.sent"], secret=SECRET)
    )
    await runtime.emit(make_event("evt_custom"))
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)
    [request] = receiver.at("/hook")
    assert request.all("X-Webhook-Signature") == []
    [signature] = request.all("X-Hub-Signature")
    ts = int(request.headers["X-Webhook-Timestamp"])
    assert signature == original_signature(request.body, ts, prefix="hmac=")
    assert verify(request.body, request.headers, SECRET, kmsg_format=CUSTOM).id == "evt_custom"
    with pytest.raises(MissingHeaderError):
        verify(request.body, request.headers, SECRET)  # the default header is not there


async def test_an_endpoint_header_cannot_take_the_configured_signature_header(
    receiver, make_runtime, make_event
):
    runtime = await make_runtime(
        WebhookConfig(jitter=False, signature_scheme="kmsg", kmsg_signature=CUSTOM)
    )
    with pytest.raises(InvalidEndpointError):
        await runtime.add_endpoint(
            EndpointInput(
                url=receiver.url("/hook"),
                events=["message.sent"],
                secret=SECRET,
                headers={"x-hub-signature": "hmac=forged"},
            )
        )
    # Written to the store directly: dropped at send, only the real signature goes out.
    persistence = create_in_memory_persistence()
    now = datetime.now(UTC)
    await persistence.endpoint_store.add(
        WebhookEndpoint(
            id="ep_forged",
            url=receiver.url("/forged"),
            events=(WebhookEventType.MESSAGE_SENT,),
            created_at=now,
            updated_at=now,
            secret=SECRET,
            headers={"x-hub-signature": "hmac=forged"},
        )
    )
    other = await make_runtime(
        WebhookConfig(jitter=False, signature_scheme="kmsg", kmsg_signature=CUSTOM),
        persistence=persistence,
    )
    await other.emit(make_event("evt_forged"))
    await asyncio.wait_for(other.flush(), HANG_GUARD)
    [request] = receiver.at("/forged")
    assert len(request.all("X-Hub-Signature")) == 1
    verify(request.body, request.headers, SECRET, kmsg_format=CUSTOM)


def test_sha1_is_refused_for_signing():
    legacy = KmsgSignatureFormat(algorithm="sha1")
    with pytest.raises(ConfigError, match="verifying only"):
        WebhookConfig(signature_scheme="kmsg", kmsg_signature=legacy)
    with pytest.raises(SigningError, match="verifying only"):
        Signer([SECRET], SignatureScheme.KMSG, kmsg_format=legacy)


@pytest.mark.parametrize(
    "fields",
    [
        {"header": "X-Webhook-Timestamp"},
        {"header": "x-webhook-id"},
        {"header": "Content-Type"},
        {"header": "webhook-signature"},
        {"header": "X Sig"},
        {"header": ""},
        {"prefix": "sha 256="},
        {"prefix": "서명="},
        {"algorithm": "md5"},
    ],
)
def test_a_bad_format_is_a_config_error(fields: dict[str, Any]):
    with pytest.raises(ConfigError):
        KmsgSignatureFormat(**fields)


def test_an_empty_prefix_signs_bare_hex():
    bare = KmsgSignatureFormat(prefix="")
    body = event_body()
    headers = Signer([SECRET], SignatureScheme.KMSG, kmsg_format=bare).headers(
        msg_id="evt_1", timestamp=1_700_000_000, body=body, event_type="message.sent"
    )
    assert headers["X-Webhook-Signature"] == original_signature(body, 1_700_000_000, prefix="")
    verify(body, headers, SECRET, kmsg_format=bare, now=1_700_000_000)


# --------------------------------------------------------------------------- receiving


@pytest.mark.parametrize(
    ("fmt", "algorithm"),
    [
        (KmsgSignatureFormat(), "sha256"),
        # The original's sha1 option kept its "sha256=" prefix.
        (KmsgSignatureFormat(algorithm="sha1"), "sha1"),
        (KmsgSignatureFormat(header="X-Signature", prefix="sha1=", algorithm="sha1"), "sha1"),
    ],
)
def test_signatures_from_the_original_sender_verify(fmt: KmsgSignatureFormat, algorithm: str):
    body = event_body()
    ts = int(time.time())
    signature = original_signature(body, ts, algorithm=algorithm, prefix=fmt.prefix)
    headers = kmsg_headers(fmt.header, signature, ts)
    assert verify(body, headers, SECRET, kmsg_format=fmt).id == "evt_1"
    assert verify(body, headers, SECRET, scheme="kmsg", kmsg_format=fmt).id == "evt_1"


def test_the_algorithm_and_prefix_must_match():
    body = event_body()
    ts = int(time.time())
    sha256 = kmsg_headers("X-Webhook-Signature", original_signature(body, ts, prefix="sha256="), ts)
    sha1 = kmsg_headers(
        "X-Webhook-Signature", original_signature(body, ts, algorithm="sha1", prefix="sha256="), ts
    )
    with pytest.raises(InvalidSignatureError):
        verify(body, sha256, SECRET, kmsg_format=KmsgSignatureFormat(algorithm="sha1"))
    with pytest.raises(InvalidSignatureError):
        verify(body, sha1, SECRET)
    with pytest.raises(InvalidSignatureError):
        verify(body, sha256, SECRET, kmsg_format=KmsgSignatureFormat(prefix="hmac="))


def test_the_asgi_middleware_reads_the_configured_format():
    fmt = KmsgSignatureFormat(header="X-Signature", algorithm="sha1")

    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.state.webhook_event.id})

    app = Starlette(
        routes=[Route("/hook", endpoint, methods=["POST"])],
        middleware=[Middleware(VerifyWebhookMiddleware, secrets=[SECRET], kmsg_format=fmt)],
    )
    body = event_body()
    ts = int(time.time())
    good = kmsg_headers(
        "X-Signature", original_signature(body, ts, algorithm="sha1", prefix=fmt.prefix), ts
    )
    with TestClient(app) as client:
        assert client.post("/hook", content=body, headers=good).json() == {"id": "evt_1"}
        bad = dict(good, **{"X-Signature": "sha256=" + "0" * 40})
        refused = client.post("/hook", content=body, headers=bad)
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_signature"


@pytest.fixture
async def kmsg_receiver() -> AsyncIterator[tuple[str, list[str]]]:
    """A real aiohttp receiver behind the middleware, reading ``CUSTOM``."""
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request["webhook_event"].id)
        return web.json_response({"ok": True})

    app = web.Application(
        middlewares=[AiohttpVerifyWebhookMiddleware(secrets=[SECRET], kmsg_format=CUSTOM)]
    )
    app.router.add_post("/hook", handler)
    async with serve_app(app) as base_url:
        yield f"{base_url}/hook", seen


async def test_runtime_to_aiohttp_middleware_with_a_custom_format(
    kmsg_receiver, make_runtime, make_event
):
    url, seen = kmsg_receiver
    runtime = await make_runtime(
        WebhookConfig(jitter=False, signature_scheme="kmsg", kmsg_signature=CUSTOM)
    )
    await runtime.add_endpoint(EndpointInput(url=url, events=["message.sent"], secret=SECRET))
    [delivery] = await runtime.emit_sync(make_event("evt_mw"))
    assert delivery.status.value == "success"
    assert seen == ["evt_mw"]
