"""Signing, secret rotation, secret hygiene and the URL guard, as the runtime applies them.

Signatures are checked with our own ``kmsg_webhook.verify`` and with the official
``standardwebhooks`` package; the kmsg scheme is also checked with a hand-computed HMAC.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from kmsg_webhook import (
    DeliveryFilter,
    DeliveryStatus,
    EndpointInput,
    EndpointUrlError,
    InvalidEndpointError,
    InvalidSecretError,
    InvalidSignatureError,
    ManualClock,
    SecurityOptions,
    SignatureScheme,
    StaticResolver,
    WebhookConfig,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEventType,
    create_in_memory_persistence,
    verify,
)
from support.runtime import BOTH_TRANSPORTS

pytestmark = BOTH_TRANSPORTS

HANG_GUARD = 15
STRICT = SecurityOptions()  # the default policy: public https only


def real_now() -> datetime:
    """Near the wall clock, so the official verifier's 5-minute tolerance accepts it."""
    return datetime.now(UTC).replace(microsecond=0)


async def settle(runtime: Any) -> None:
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)


async def deliveries(runtime: Any) -> list[WebhookDelivery]:
    return list((await runtime.list_deliveries(DeliveryFilter(), limit=1000)).items)


def respond(*statuses: int) -> Any:
    async def behaviour(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=statuses[min(n, len(statuses)) - 1])

    return behaviour


def stored_endpoint(url: str, **fields: Any) -> WebhookEndpoint:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    fields.setdefault("events", (WebhookEventType.MESSAGE_SENT,))
    return WebhookEndpoint(id="ep_direct", url=url, created_at=now, updated_at=now, **fields)


# --------------------------------------------------------------------------- Standard Webhooks


async def test_standard_webhooks_headers_verify_with_ours_and_the_official_library(
    receiver, make_runtime, make_event
):
    runtime = await make_runtime()
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/hook"), events=["message.sent"])
    )
    assert endpoint.secret is not None and endpoint.secret.startswith("whsec_")
    event = make_event("evt_std")
    await runtime.emit(event)
    await settle(runtime)

    [request] = receiver.at("/hook")
    headers = request.headers
    assert headers["webhook-id"] == "evt_std"
    assert abs(int(headers["webhook-timestamp"]) - datetime.now(UTC).timestamp()) < 300
    assert headers["webhook-signature"].startswith("v1,")
    assert "X-Webhook-Signature" not in headers
    assert verify(request.body, headers, endpoint.secret) == event
    assert Webhook(endpoint.secret).verify(request.body, headers) == event.to_wire()
    with pytest.raises(InvalidSignatureError):
        verify(request.body + b" ", headers, endpoint.secret)


async def test_webhook_id_is_stable_across_retries_and_the_timestamp_is_the_attempt_time(
    receiver, make_runtime, make_event
):
    t0 = real_now()
    clock = ManualClock(t0)
    runtime = await make_runtime(clock=clock)
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/hook", respond(503, 200)), events=["message.sent"])
    )
    await runtime.emit(make_event("evt_retry"))
    await settle(runtime)
    clock.advance(seconds=7)  # more than the 1 s backoff
    await settle(runtime)

    first, second = receiver.at("/hook")
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "evt_retry"
    assert int(first.headers["webhook-timestamp"]) == int(t0.timestamp())
    assert int(second.headers["webhook-timestamp"]) == int(t0.timestamp()) + 7
    assert first.body == second.body
    assert first.headers["webhook-signature"] != second.headers["webhook-signature"]
    for request, at in ((first, t0), (second, t0 + timedelta(seconds=7))):
        verify(request.body, request.headers, endpoint.secret, now=at.timestamp())
        Webhook(endpoint.secret).verify(request.body, request.headers)
    [delivery] = await deliveries(runtime)
    assert [a.started_at for a in delivery.attempts] == [t0, t0 + timedelta(seconds=7)]


async def test_cookies_a_receiver_sets_are_never_sent_back(receiver, make_runtime, make_event):
    async def set_cookie(request: web.Request, n: int) -> web.StreamResponse:
        response = web.json_response({"ok": True})
        response.set_cookie("session", f"s{n}")
        return response

    # A name, not an IP address: aiohttp's default jar keeps cookies only for names.
    url = receiver.on("/cookie", set_cookie).replace("127.0.0.1", "localhost")
    runtime = await make_runtime()
    await runtime.add_endpoint(EndpointInput(url=url, events=["message.sent"]))
    for n in range(3):
        await runtime.emit(make_event(f"evt_cookie_{n}"))
        await settle(runtime)
    assert len(receiver.at("/cookie")) == 3
    assert all("Cookie" not in r.headers for r in receiver.at("/cookie"))


async def test_kmsg_scheme_headers(receiver, make_runtime, make_event):
    runtime = await make_runtime(WebhookConfig(jitter=False, signature_scheme="kmsg"))
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/hook"), events=["message.failed"])
    )
    event = make_event("evt_kmsg", type="message.failed")
    await runtime.emit(event)
    await settle(runtime)

    [request] = receiver.at("/hook")
    headers = request.headers
    assert headers["X-Webhook-ID"] == "evt_kmsg"
    assert headers["X-Webhook-Event"] == "message.failed"
    timestamp = headers["X-Webhook-Timestamp"]
    assert abs(int(timestamp) - datetime.now(UTC).timestamp()) < 300
    assert "webhook-signature" not in headers
    assert endpoint.secret is not None
    expected = hmac.new(
        endpoint.secret.encode(), f"{timestamp}.".encode() + request.body, hashlib.sha256
    ).hexdigest()
    assert headers["X-Webhook-Signature"] == f"sha256={expected}"
    assert verify(request.body, headers, endpoint.secret, scheme=SignatureScheme.KMSG) == event


async def test_secret_key_is_the_fallback_when_an_endpoint_has_none(
    receiver, make_runtime, make_event
):
    runtime = await make_runtime(WebhookConfig(jitter=False, secret_key="shared-fallback-secret"))
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/hook"), events=["message.sent"])
    )
    assert endpoint.secret is None  # nothing generated: the fallback signs
    await runtime.emit(make_event())
    await settle(runtime)
    [request] = receiver.at("/hook")
    verify(request.body, request.headers, "shared-fallback-secret")


# --------------------------------------------------------------------------- rotation


async def test_rotation_signs_with_both_secrets_during_the_grace_period_only(
    receiver, make_runtime, make_event
):
    t0 = real_now()
    clock = ManualClock(t0)
    runtime = await make_runtime(clock=clock)
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/hook"), events=["message.sent"])
    )
    old = endpoint.secret
    assert old is not None

    rotated = await runtime.rotate_secret(endpoint.id, grace=timedelta(hours=1))
    new = rotated.secret
    assert new is not None and new.startswith("whsec_") and new != old
    assert [s.expires_at for s in rotated.previous_secrets] == [t0 + timedelta(hours=1)]
    assert await runtime.get_endpoint(endpoint.id) == rotated

    await runtime.emit(make_event("evt_grace"))
    await settle(runtime)
    [during] = receiver.at("/hook")
    assert len(during.headers["webhook-signature"].split()) == 2
    for secret in (old, new):  # a receiver holding either secret verifies
        verify(during.body, during.headers, secret, now=t0.timestamp())
        Webhook(secret).verify(during.body, during.headers)

    clock.advance(seconds=3601)
    await runtime.emit(make_event("evt_after"))
    await settle(runtime)
    after = receiver.at("/hook")[1]
    later = clock.now().timestamp()
    assert len(after.headers["webhook-signature"].split()) == 1
    verify(after.body, after.headers, new, now=later)
    with pytest.raises(InvalidSignatureError):
        verify(after.body, after.headers, old, now=later)


async def test_rotation_to_a_given_secret_and_again(receiver, make_runtime):
    clock = ManualClock(real_now())
    runtime = await make_runtime(clock=clock)
    endpoint = await runtime.add_endpoint(
        EndpointInput(
            url=receiver.url("/hook"), events=["message.sent"], secret="whsec_b2xkLXNlY3JldA=="
        )
    )
    given = "whsec_bmV3LXNlY3JldC0xMjM0NQ=="
    first = await runtime.rotate_secret(endpoint.id, new_secret=given, grace=timedelta(minutes=5))
    assert first.secret == given
    clock.advance(seconds=301)
    second = await runtime.rotate_secret(endpoint.id, grace=timedelta(minutes=5))
    # The expired first secret is dropped; only the one just retired is kept.
    assert [s.secret for s in second.previous_secrets] == [given]
    with pytest.raises(InvalidSecretError):
        await runtime.rotate_secret(endpoint.id, new_secret="whsec_not base64!")


# --------------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    "name",
    ["webhook-signature", "Webhook-Id", "webhook-timestamp", "X-Webhook-Signature", "Content-Type"],
)
async def test_custom_headers_cannot_override_signature_headers(receiver, make_runtime, name):
    runtime = await make_runtime()
    with pytest.raises(InvalidEndpointError):
        await runtime.add_endpoint(
            EndpointInput(url=receiver.url("/hook"), events=["message.sent"], headers={name: "x"})
        )
    ok = await runtime.add_endpoint(
        EndpointInput(
            url=receiver.url("/hook"), events=["message.sent"], headers={"X-Tenant": "t1"}
        )
    )
    with pytest.raises(InvalidEndpointError):
        await runtime.update_endpoint(ok.id, headers={name: "x"})
    assert await runtime.list_endpoints() == [ok]


async def test_reserved_headers_stored_directly_are_dropped_at_send(
    receiver, make_runtime, make_event
):
    persistence = create_in_memory_persistence()
    forged = stored_endpoint(
        receiver.url("/hook"),
        secret="whsec_c2VjcmV0LWZvci1oZWFkZXJz",
        headers={"webhook-signature": "v1,forged", "webhook-id": "forged", "X-Tenant": "t1"},
    )
    await persistence.endpoint_store.add(forged)
    runtime = await make_runtime(persistence=persistence)
    await runtime.emit(make_event("evt_real"))
    await settle(runtime)
    [request] = receiver.at("/hook")
    assert request.headers["X-Tenant"] == "t1"
    assert request.headers["webhook-id"] == "evt_real"
    assert "forged" not in request.headers["webhook-signature"]
    verify(request.body, request.headers, forged.secret)


# --------------------------------------------------------------------------- unsigned


async def test_signing_on_and_no_secret_fails_without_a_request(receiver, make_runtime, make_event):
    persistence = create_in_memory_persistence()
    await persistence.endpoint_store.add(stored_endpoint(receiver.url("/hook")))
    runtime = await make_runtime(persistence=persistence)
    await runtime.emit(make_event())
    await settle(runtime)

    [delivery] = await deliveries(runtime)
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.last_error is not None and "no secret" in delivery.last_error
    assert delivery.attempts[0].http_status is None
    assert receiver.received == []
    probe = await runtime.probe_endpoint("ep_direct")
    assert not probe.success and probe.error is not None and "no secret" in probe.error
    assert receiver.received == []


@pytest.mark.parametrize("scheme", ["standard", "kmsg"])
async def test_security_off_sends_no_signature(receiver, make_runtime, make_event, scheme):
    runtime = await make_runtime(
        WebhookConfig(jitter=False, enable_security=False, signature_scheme=scheme)
    )
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/hook"), events=["message.sent"])
    )
    assert endpoint.secret is None  # nothing generated when signing is off
    await runtime.emit(make_event("evt_plain"))
    await settle(runtime)
    [request] = receiver.at("/hook")
    lowered = {k.lower(): v for k, v in request.headers.items()}
    assert "webhook-signature" not in lowered
    assert "x-webhook-signature" not in lowered
    id_header = "webhook-id" if scheme == "standard" else "x-webhook-id"
    assert lowered[id_header] == "evt_plain"
    [delivery] = await deliveries(runtime)
    assert delivery.status is DeliveryStatus.SUCCESS


# --------------------------------------------------------------------------- secret hygiene


async def test_secrets_and_signatures_never_reach_stored_rows_or_logs(
    receiver, make_runtime, make_event, caplog
):
    caplog.set_level(logging.DEBUG)
    clock = ManualClock(real_now())
    runtime = await make_runtime(WebhookConfig(jitter=False, max_retries=1), clock=clock)
    ok = await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/ok", respond(500, 200)), events=["message.sent"])
    )
    gone = await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/gone", respond(410)), events=["message.sent"])
    )
    rotated = await runtime.rotate_secret(ok.id)
    await runtime.emit(make_event("evt_1"))
    await settle(runtime)
    clock.advance(seconds=2)
    await settle(runtime)
    await runtime.probe_endpoint(ok.id)
    with pytest.raises(InvalidSecretError) as bad_secret:
        await runtime.add_endpoint(
            EndpointInput(url=receiver.url("/bad"), events=["message.sent"], secret="whsk_%%%%")
        )

    secrets = {ok.secret, rotated.secret, gone.secret}
    assert None not in secrets
    signatures = {
        part.split(",", 1)[1]
        for request in receiver.received
        for part in request.headers["webhook-signature"].split()
    }
    assert len(signatures) >= 4
    needles = {s for s in secrets if s} | signatures
    rows = await deliveries(runtime)
    assert len(rows) == 2
    haystacks = {
        "stored deliveries": repr(rows),
        "endpoints": repr(await runtime.list_endpoints()),
        "logs": caplog.text + "".join(r.getMessage() for r in caplog.records),
        "error": str(bad_secret.value),
    }
    for where, text in haystacks.items():
        for needle in needles:
            assert needle not in text, f"a secret or signature leaked into {where}"
        assert "whsk_%%%%" not in text


# --------------------------------------------------------------------------- URL guard


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8080/hook", "private_address"),
        ("https://127.0.0.1/hook", "private_address"),
        ("https://10.1.2.3/hook", "private_address"),
        ("https://[::1]/hook", "private_address"),
        ("https://localhost/hook", "local_name"),
        ("https://metadata.internal/hook", "local_name"),
        ("http://hooks.example.com/hook", "http_not_allowed"),
        ("ftp://hooks.example.com/hook", "scheme"),
        ("https://user:pw@hooks.example.com/hook", "userinfo"),
        ("not a url", "control_chars"),
    ],
)
async def test_add_endpoint_refuses_private_and_plain_http_urls_by_default(
    make_runtime, url, reason
):
    runtime = await make_runtime(security=STRICT)
    with pytest.raises(EndpointUrlError) as refused:
        await runtime.add_endpoint(EndpointInput(url=url, events=["message.sent"]))
    assert refused.value.reason == reason
    assert await runtime.list_endpoints() == []


async def test_update_endpoint_revalidates_the_url(make_runtime):
    runtime = await make_runtime(security=STRICT)
    endpoint = await runtime.add_endpoint(
        EndpointInput(url="https://hooks.example.com/in", events=["message.sent"])
    )
    with pytest.raises(EndpointUrlError):
        await runtime.update_endpoint(endpoint.id, url="https://169.254.169.254/latest")
    assert (await runtime.get_endpoint(endpoint.id)) == endpoint
    moved = await runtime.update_endpoint(endpoint.id, url="https://hooks2.example.com/in")
    assert moved.url == "https://hooks2.example.com/in"


async def test_private_hosts_allowed_reach_a_loopback_receiver(receiver, make_runtime, make_event):
    runtime = await make_runtime(security=SecurityOptions(allow_private_hosts=True))
    await runtime.add_endpoint(EndpointInput(url=receiver.url("/hook"), events=["message.sent"]))
    await runtime.emit(make_event())
    await settle(runtime)
    assert len(receiver.at("/hook")) == 1


async def test_the_url_is_checked_again_before_every_send(receiver, make_runtime, make_event):
    persistence = create_in_memory_persistence()
    await persistence.endpoint_store.add(
        stored_endpoint(receiver.url("/hook"), secret="whsec_c2VjcmV0LWZvci1ndWFyZA==")
    )
    runtime = await make_runtime(persistence=persistence, security=STRICT)
    await runtime.emit(make_event())
    await settle(runtime)

    [delivery] = await deliveries(runtime)
    assert delivery.status is DeliveryStatus.FAILED  # refused: never retried
    assert delivery.last_error is not None and delivery.last_error.startswith("refused")
    assert receiver.received == []


@pytest.fixture
async def tcp_listener() -> Any:
    """A raw TCP listener on 127.0.0.1 that counts connections (no TLS, no HTTP)."""
    connections: list[int] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, connections
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("answer", [["127.0.0.1"], ["93.184.215.14", "127.0.0.1"], ["10.0.0.7"]])
async def test_a_public_name_resolving_to_a_private_address_is_refused_at_connect_time(
    make_runtime, make_event, tcp_listener, answer
):
    port, connections = tcp_listener
    runtime = await make_runtime(security=STRICT, resolver=StaticResolver({"hooks.test": answer}))
    # https and a public-looking name: only the connect-time guard can catch this one.
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=f"https://hooks.test:{port}/in", events=["message.sent"])
    )
    await runtime.emit(make_event())
    await settle(runtime)

    [delivery] = await deliveries(runtime)
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.attempt_count == 1
    assert delivery.attempts[0].http_status is None
    assert delivery.last_error is not None and delivery.last_error.startswith("refused")
    assert "hooks.test" in delivery.last_error
    assert "resolve only to public addresses" in delivery.last_error
    probe = await runtime.probe_endpoint(endpoint.id)
    assert not probe.success and probe.error is not None and probe.error.startswith("refused")
    assert connections == []  # nothing ever reached the listener


async def test_the_resolver_seam_is_used_for_allowed_names(receiver, make_runtime, make_event):
    port = receiver.base_url.rsplit(":", 1)[1]
    runtime = await make_runtime(
        security=SecurityOptions(allow_private_hosts=True),
        resolver=StaticResolver({"hooks.localhost": ["127.0.0.1"]}),
    )
    await runtime.add_endpoint(
        EndpointInput(url=f"http://hooks.localhost:{port}/hook", events=["message.sent"])
    )
    await runtime.emit(make_event())
    await settle(runtime)
    [request] = receiver.at("/hook")
    assert request.headers["Host"] == f"hooks.localhost:{port}"
