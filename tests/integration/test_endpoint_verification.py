"""Endpoint verification: ``EndpointInput(verify=True)`` starts ``pending_verification``, the
runtime sends a ``webhook-challenge``, and only a receiver proving the secret makes the endpoint
active. Interop with the official ``standardwebhooks`` package both ways, our middlewares
answering by themselves, and every backend storing the new status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from kmsg_webhook import (
    DeliveryFilter,
    DeliveryStatus,
    EndpointInput,
    EndpointStatus,
    InvalidEndpointError,
    WebhookConfig,
    generate_secret,
    generate_signing_keypair,
)
from kmsg_webhook.challenge import challenge_response, new_challenge
from kmsg_webhook.middleware import AiohttpVerifyWebhookMiddleware, VerifyWebhookMiddleware
from support.runtime import BOTH_TRANSPORTS
from support.servers import serve_app

HANG_GUARD = 15
SECRET = generate_secret()

pytestmark = [
    pytest.mark.filterwarnings("ignore::aiohttp.web.NotAppKeyWarning"),
    BOTH_TRANSPORTS,
]


def official_receiver(secret: str, seen: list[str] | None = None) -> Any:
    """A receiver written with the official package: it answers challenges and verifies
    webhooks, as its documentation shows."""
    hook = Webhook(secret)

    async def behaviour(request: web.Request, n: int) -> web.StreamResponse:
        challenge = request.headers.get("webhook-challenge")
        if challenge is not None:
            answer = hook.endpoint_verification_response(challenge)
            return web.Response(status=200, headers={"webhook-challenge-response": answer})
        payload = hook.verify(await request.read(), dict(request.headers))
        if seen is not None:
            seen.append(payload["id"])
        return web.Response(status=204)

    return behaviour


async def pending_count(runtime: Any) -> int:
    return len((await runtime.list_deliveries(DeliveryFilter(), limit=100)).items)


async def test_an_official_receiver_verifies_and_then_receives(receiver, make_runtime, make_event):
    seen: list[str] = []
    runtime = await make_runtime()
    endpoint = await runtime.add_endpoint(
        EndpointInput(
            url=receiver.on("/hook", official_receiver(SECRET, seen)),
            events=["message.sent"],
            secret=SECRET,
            verify=True,
            headers={"Authorization": "Bearer t"},
        )
    )
    assert endpoint.status is EndpointStatus.ACTIVE and endpoint.secret == SECRET
    [challenge] = receiver.at("/hook")
    assert challenge.body == b""
    assert challenge.all("Authorization") == ["Bearer t"]
    names = {name.lower() for name, _ in challenge.header_lines}
    assert "webhook-signature" not in names and "webhook-id" not in names
    await runtime.emit(make_event("evt_after"))
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)
    assert seen == ["evt_after"]


async def test_a_receiver_that_cannot_answer_stays_pending_and_receives_nothing(
    receiver, make_runtime, make_event
):
    runtime = await make_runtime()
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/hook"), events=["message.sent"], verify=True)
    )
    assert endpoint.status is EndpointStatus.PENDING_VERIFICATION
    await runtime.emit(make_event("evt_early"))
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)
    assert await pending_count(runtime) == 0
    assert len(receiver.at("/hook")) == 1  # the challenge only

    failed = await runtime.verify_endpoint(endpoint.id)
    assert not failed.verified and failed.http_status == 200
    assert failed.error is not None and "webhook-challenge-response" in failed.error
    assert failed.endpoint.status is EndpointStatus.PENDING_VERIFICATION

    receiver.on("/hook", official_receiver(endpoint.secret or ""))  # the receiver is ready
    done = await runtime.verify_endpoint(endpoint.id)
    assert done.verified and done.error is None
    assert done.endpoint.status is EndpointStatus.ACTIVE
    stored = await runtime.get_endpoint(endpoint.id)
    assert stored is not None and stored.status is EndpointStatus.ACTIVE
    [delivery] = await runtime.emit_sync(make_event("evt_late"))
    assert delivery.status is DeliveryStatus.SUCCESS


@pytest.mark.parametrize(
    ("behaviour", "status", "error"),
    [
        ("wrong_secret", 200, "does not prove"),
        ("error_status", 503, "HTTP 503"),
    ],
)
async def test_wrong_answers_leave_the_endpoint_pending(
    receiver, make_runtime, behaviour, status, error
):
    if behaviour == "wrong_secret":
        receiver.on("/hook", official_receiver(generate_secret()))
    else:

        async def unavailable(request: web.Request, n: int) -> web.StreamResponse:
            answer = Webhook(SECRET).endpoint_verification_response(
                request.headers["webhook-challenge"]
            )
            return web.Response(status=503, headers={"webhook-challenge-response": answer})

        receiver.on("/hook", unavailable)
    runtime = await make_runtime()
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/hook"), events=["message.sent"], secret=SECRET)
    )
    await runtime.update_endpoint(endpoint.id, status="pending_verification")
    result = await runtime.verify_endpoint(endpoint.id)
    assert not result.verified and result.http_status == status
    assert result.error is not None and error in result.error
    assert result.endpoint.status is EndpointStatus.PENDING_VERIFICATION


async def test_verifying_an_active_endpoint_changes_nothing_but_reports(receiver, make_runtime):
    runtime = await make_runtime()
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/hook"), events=["message.sent"])
    )
    result = await runtime.verify_endpoint(endpoint.id)
    assert not result.verified and result.endpoint.status is EndpointStatus.ACTIVE


async def test_verify_needs_an_hmac_secret_and_no_other_status(receiver, make_runtime):
    runtime = await make_runtime()
    signing_key, _ = generate_signing_keypair()
    with pytest.raises(InvalidEndpointError, match="HMAC secret"):
        await runtime.add_endpoint(
            EndpointInput(
                url=receiver.url("/a"), events=["message.sent"], secret=signing_key, verify=True
            )
        )
    with pytest.raises(InvalidEndpointError, match="pending_verification"):
        await runtime.add_endpoint(
            EndpointInput(
                url=receiver.url("/b"), events=["message.sent"], active=False, verify=True
            )
        )
    unsigned = await make_runtime(WebhookConfig(enable_security=False))
    with pytest.raises(InvalidEndpointError, match="HMAC secret"):
        await unsigned.add_endpoint(
            EndpointInput(url=receiver.url("/c"), events=["message.sent"], verify=True)
        )
    assert await runtime.list_endpoints() == [] and await unsigned.list_endpoints() == []
    assert receiver.received == []


async def test_every_backend_stores_the_pending_status(persistence, receiver, make_runtime):
    runtime = await make_runtime(persistence=persistence)
    pending = await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/quiet"), events=["message.sent"], verify=True)
    )
    assert pending.status is EndpointStatus.PENDING_VERIFICATION
    stored = await persistence.endpoint_store.get(pending.id)
    assert stored is not None and stored.status is EndpointStatus.PENDING_VERIFICATION
    verified = await runtime.add_endpoint(
        EndpointInput(
            url=receiver.on("/answers", official_receiver(SECRET)),
            events=["message.sent"],
            secret=SECRET,
            verify=True,
        )
    )
    assert verified.status is EndpointStatus.ACTIVE
    stored = await persistence.endpoint_store.get(verified.id)
    assert stored is not None and stored.status is EndpointStatus.ACTIVE


# --------------------------------------------------------------------------- our middlewares


@pytest.fixture
async def middleware_receiver() -> AsyncIterator[tuple[str, list[str]]]:
    """A real aiohttp app behind our middleware; the handler records what reaches it."""
    reached: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        reached.append(request["webhook_event"].id)
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[AiohttpVerifyWebhookMiddleware(secrets=[SECRET])])
    app.router.add_post("/hook", handler)
    async with serve_app(app) as base_url:
        yield f"{base_url}/hook", reached


async def test_the_aiohttp_middleware_answers_the_runtime_by_itself(
    middleware_receiver, make_runtime, make_event
):
    url, reached = middleware_receiver
    runtime = await make_runtime()
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=url, events=["message.sent"], secret=SECRET, verify=True)
    )
    assert endpoint.status is EndpointStatus.ACTIVE
    assert reached == []  # the application never saw the challenge
    [delivery] = await runtime.emit_sync(make_event("evt_mw"))
    assert delivery.status is DeliveryStatus.SUCCESS and reached == ["evt_mw"]


@pytest.mark.parametrize("secrets", [[SECRET], [SECRET, generate_secret()]])
def test_the_asgi_middleware_answer_passes_the_official_check(secrets: list[str]):
    async def endpoint(request: Request) -> PlainTextResponse:
        raise AssertionError("a challenge must not reach the application")

    app = Starlette(
        routes=[Route("/hook", endpoint, methods=["POST"])],
        middleware=[Middleware(VerifyWebhookMiddleware, secrets=secrets)],
    )
    challenge = new_challenge()
    with TestClient(app) as client:
        response = client.post("/hook", headers={"webhook-challenge": challenge})
        assert response.status_code == 200
        answer = response.headers["webhook-challenge-response"]
        Webhook(SECRET).verify_endpoint_verification_response(challenge, answer)
        with pytest.raises(WebhookVerificationError):
            Webhook(generate_secret()).verify_endpoint_verification_response(challenge, answer)
        bad = client.post("/hook", headers={"webhook-challenge": "x" * 300})
        assert bad.status_code == 400 and "webhook-challenge-response" not in bad.headers


def test_our_response_equals_the_official_package():
    challenge = new_challenge()
    ours = challenge_response(Webhook(SECRET)._whsecret, challenge)
    assert ours == Webhook(SECRET).endpoint_verification_response(challenge)


async def test_the_kmsg_scheme_verifies_with_a_kmsg_middleware(make_runtime):
    raw_secret = "a-kmsg-receiver-secret"

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(
        middlewares=[AiohttpVerifyWebhookMiddleware(secrets=[raw_secret], scheme="kmsg")]
    )
    app.router.add_post("/hook", handler)
    async with serve_app(app) as base:
        runtime = await make_runtime(WebhookConfig(signature_scheme="kmsg"))
        endpoint = await runtime.add_endpoint(
            EndpointInput(
                url=f"{base}/hook",
                events=["message.sent"],
                secret=raw_secret,
                verify=True,
            )
        )
        assert endpoint.status is EndpointStatus.ACTIVE
