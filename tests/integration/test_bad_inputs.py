"""Bad input is refused with a typed error rooted in WebhookError, and nothing is stored.

Non-finite numbers, oversized events, wrong argument types, ports not written in ASCII digits,
custom headers the sender owns, and secrets in anyone's DEBUG logs (every backend).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from kmsg_webhook import (
    ConfigError,
    DeliveryFilter,
    EndpointInput,
    EndpointUrlError,
    InvalidArgumentError,
    InvalidEndpointError,
    InvalidEventError,
    PayloadTooLargeError,
    WebhookConfig,
    WebhookEndpoint,
    WebhookError,
    WebhookEventType,
    WebhookRuntimeService,
    create_in_memory_persistence,
    verify,
)
from support.crypto_keys import config as crypto_config
from support.runtime import BOTH_TRANSPORTS

pytestmark = BOTH_TRANSPORTS

HANG_GUARD = 15
T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def stored_count(runtime: WebhookRuntimeService) -> int:
    return len((await runtime.list_deliveries(DeliveryFilter(), limit=1000)).items)


async def subscribed(runtime: WebhookRuntimeService, url: str, **fields: Any) -> WebhookEndpoint:
    return await runtime.add_endpoint(EndpointInput(url=url, events=["message.sent"], **fields))


# --------------------------------------------------------------------------- numbers JSON lacks


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"n": float("nan")}, "data.n"),
        ({"n": float("inf")}, "data.n"),
        ({"deep": [1, {"x": -float("inf")}]}, "data.deep.1.x"),
        ({"big": 10**30, "n": float("nan")}, "data"),  # the standard-library fallback path
    ],
)
async def test_nan_and_infinity_are_refused_and_nothing_is_stored(
    receiver, make_runtime, make_event, data, where
):
    runtime = await make_runtime()
    await subscribed(runtime, receiver.url("/hook"))
    event = make_event(data=data)
    with pytest.raises(InvalidEventError, match=where) as raised:
        await runtime.emit(event)
    assert isinstance(raised.value, WebhookError)
    with pytest.raises(InvalidEventError):
        await runtime.emit_sync(event)
    await runtime.flush()
    assert await stored_count(runtime) == 0
    assert receiver.received == []


async def test_a_bad_event_fails_only_its_own_emit(receiver, make_runtime, make_event):
    runtime = await make_runtime(WebhookConfig(jitter=False, batch_size=10))
    await subscribed(runtime, receiver.url("/hook"))
    results = await asyncio.gather(
        runtime.emit(make_event("evt_good_1")),
        runtime.emit(make_event("evt_bad", data={"n": float("nan")})),
        runtime.emit(make_event("evt_good_2")),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], InvalidEventError)
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)
    assert sorted(r.headers["webhook-id"] for r in receiver.received) == [
        "evt_good_1",
        "evt_good_2",
    ]


def test_null_and_the_word_null_are_still_fine(make_event):
    body = make_event(data={"n": None, "s": "null", "f": 1.5}).to_json()
    assert '"n":null' in body and '"s":"null"' in body and '"f":1.5' in body


# --------------------------------------------------------------------------- payload size


async def test_an_8_mib_event_is_refused_by_default(receiver, make_runtime, make_event):
    runtime = await make_runtime()
    await subscribed(runtime, receiver.url("/hook"))
    assert runtime.config.max_payload_bytes == 1_048_576
    with pytest.raises(PayloadTooLargeError) as raised:
        await runtime.emit(make_event(data={"blob": "x" * (8 * 1024 * 1024)}))
    assert raised.value.limit == 1_048_576 and raised.value.size > 8 * 1024 * 1024
    assert isinstance(raised.value, InvalidEventError)
    await runtime.flush()
    assert await stored_count(runtime) == 0


async def test_the_limit_counts_utf8_bytes_and_is_configurable(receiver, make_runtime, make_event):
    runtime = await make_runtime(WebhookConfig(jitter=False, max_payload_bytes=2_000))
    await subscribed(runtime, receiver.url("/hook"))
    base = len(make_event("evt_sized", data={"t": ""}).to_json().encode())
    room = 2_000 - base
    fits = make_event("evt_sized", data={"t": "가" * (room // 3)})  # 3 bytes each
    assert len(fits.to_json().encode()) <= 2_000
    await runtime.emit(fits)
    over = make_event("evt_over", data={"t": "가" * (room // 3 + 1)})
    with pytest.raises(PayloadTooLargeError):
        await runtime.emit_sync(over)
    with pytest.raises(PayloadTooLargeError):
        await runtime.emit(over)
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)
    assert [r.headers["webhook-id"] for r in receiver.received] == ["evt_sized"]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "1"])
def test_a_bad_payload_limit_is_a_config_error(bad):
    if isinstance(bad, float):
        WebhookConfig(max_payload_bytes=bad)  # type: ignore[arg-type]  # any positive number
        return
    with pytest.raises(ConfigError):
        WebhookConfig(max_payload_bytes=bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- argument types


async def test_wrong_argument_types_are_typed_errors(make_runtime, receiver):
    runtime = await make_runtime()
    await subscribed(runtime, receiver.url("/hook"))
    calls = [
        runtime.emit({"id": "evt_1", "type": "message.sent"}),  # type: ignore[arg-type]
        runtime.emit_sync(None),  # type: ignore[arg-type]
        runtime.add_endpoint({"url": receiver.url("/x"), "events": ["message.sent"]}),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(InvalidArgumentError) as raised:
            await call
        assert isinstance(raised.value, TypeError) and isinstance(raised.value, WebhookError)
    assert await stored_count(runtime) == 0
    assert len(await runtime.list_endpoints()) == 1


@pytest.mark.parametrize("bad", [5, object(), ["memory://"]])
def test_persistence_of_the_wrong_type_is_a_typed_error(bad):
    with pytest.raises(InvalidArgumentError, match="persistence must be"):
        WebhookRuntimeService(persistence=bad)


# --------------------------------------------------------------------------- ports


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com:+443/",
        "https://example.com:８４４３/",
        "https://example.com:４４３/hook",
        "https://[2606:4700::1]:+8443/",
        "https://example.com:٤٤٣/",  # Arabic-Indic digits
    ],
)
async def test_ports_not_in_ascii_digits_are_refused(make_runtime, url):
    runtime = await make_runtime()
    with pytest.raises(EndpointUrlError) as raised:
        await runtime.add_endpoint(EndpointInput(url=url, events=["message.sent"]))
    assert raised.value.reason == "malformed"
    assert await runtime.list_endpoints() == []


# --------------------------------------------------------------------------- custom headers


@pytest.mark.parametrize(
    "name",
    [
        "Connection",
        "Content-Length",
        "Transfer-Encoding",
        "Expect",
        "Host",
        "Keep-Alive",
        "Upgrade",
        "TE",
        "Trailer",
        "Proxy-Authorization",
        "Content-Encoding",
        "webhook-challenge",
        "Webhook-Signature",
    ],
)
async def test_headers_the_sender_owns_are_refused(receiver, make_runtime, name):
    runtime = await make_runtime()
    with pytest.raises(InvalidEndpointError, match="set by the sender"):
        await subscribed(runtime, receiver.url("/hook"), headers={name: "x"})
    ok = await subscribed(runtime, receiver.url("/hook"), headers={"X-Tenant": "t1"})
    with pytest.raises(InvalidEndpointError):
        await runtime.update_endpoint(ok.id, headers={name.lower(): "x"})
    assert [e.headers for e in await runtime.list_endpoints()] == [{"X-Tenant": "t1"}]


@pytest.mark.parametrize(
    "value",
    ["café", "토큰", "a\x7fb", " padded", "padded\t", "a\rb", "a\nb", "a\x00b", "a\x1bb"],
)
async def test_header_values_must_be_visible_ascii(receiver, make_runtime, value):
    runtime = await make_runtime()
    with pytest.raises(InvalidEndpointError, match="visible ASCII"):
        await subscribed(runtime, receiver.url("/hook"), headers={"X-Note": value})
    assert await runtime.list_endpoints() == []


async def test_a_header_name_given_twice_in_different_case_is_refused(receiver, make_runtime):
    runtime = await make_runtime()
    with pytest.raises(InvalidEndpointError, match="twice"):
        await subscribed(runtime, receiver.url("/hook"), headers={"X-A": "1", "x-a": "2"})


@pytest.mark.parametrize("sealed", [False, True])
async def test_authorization_and_cookie_arrive_as_given_and_are_sealed_at_rest(
    receiver, make_runtime, make_event, sealed
):
    persistence = create_in_memory_persistence()
    runtime = await make_runtime(
        persistence=persistence, field_crypto=crypto_config("A") if sealed else None
    )
    given = {
        "Authorization": "Bearer tok-123",
        "Cookie": "session=abc; theme=dark",
        "X-Spaced": "a b\tc",
        "User-Agent": "custom-agent/2",
    }
    endpoint = await subscribed(runtime, receiver.url("/hook"), headers=given)
    assert endpoint.headers == given
    await runtime.emit(make_event("evt_auth"))
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)
    [request] = receiver.at("/hook")
    for name, value in given.items():
        assert request.all(name) == [value]
    verify(request.body, request.headers, endpoint.secret or "")
    [raw] = await persistence.endpoint_store.list()
    stored = " ".join(raw.headers.values())
    assert ("tok-123" in stored) is not sealed
    assert ("session=abc" in stored) is not sealed


async def test_sender_owned_headers_written_to_a_store_directly_are_not_sent(
    receiver, make_runtime, make_event
):
    persistence = create_in_memory_persistence()
    forged = WebhookEndpoint(
        id="ep_direct",
        url=receiver.url("/hook"),
        events=(WebhookEventType.MESSAGE_SENT,),
        created_at=T0,
        updated_at=T0,
        secret="whsec_c2VjcmV0LWZvci1oZWFkZXJz",
        headers={
            "Expect": "100-continue",
            "Connection": "upgrade",
            "Upgrade": "websocket",
            "Host": "evil.example",
            "Transfer-Encoding": "chunked",
            "X-Kept": "yes",
        },
    )
    await persistence.endpoint_store.add(forged)
    runtime = await make_runtime(persistence=persistence)
    await runtime.emit(make_event("evt_forged"))
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)
    [request] = receiver.at("/hook")
    names = {k.lower() for k, _ in request.header_lines}
    assert "expect" not in names and "upgrade" not in names and "transfer-encoding" not in names
    assert request.all("Host") == [receiver.base_url.removeprefix("http://")]
    assert request.all("Connection") != ["upgrade"]
    assert request.all("X-Kept") == ["yes"]
    verify(request.body, request.headers, forged.secret or "")


# --------------------------------------------------------------------------- secrets in logs


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        formatter = logging.Formatter()
        return "\n".join(formatter.format(r) for r in self.records)


@pytest.fixture
def debug_logs() -> Iterator[_Capture]:
    """The root logger at DEBUG with a handler that keeps every record, as an application
    debugging its service would have it."""
    root = logging.getLogger()
    capture = _Capture()
    level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(level)


async def test_secrets_never_reach_any_debug_log_on_any_backend(
    persistence, debug_logs, receiver, make_runtime, make_event
):
    runtime = await make_runtime(persistence=persistence)
    endpoint = await subscribed(
        runtime,
        receiver.on("/hook", _fail_then_ok()),
        headers={"Authorization": "Bearer hdr-SECRET-4f1c"},
    )
    rotated = await runtime.rotate_secret(endpoint.id)
    await runtime.update_endpoint(endpoint.id, headers={"Authorization": "Bearer hdr-SECRET-9a2e"})
    await runtime.emit(make_event("evt_log"))
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)
    await runtime.retry_delivery((await runtime.list_deliveries()).items[0].id)
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)
    assert receiver.at("/hook")
    assert logging.getLogger("aiosqlite").isEnabledFor(logging.DEBUG)
    text = debug_logs.text()
    needles = {
        endpoint.secret,
        rotated.secret,
        "hdr-SECRET-4f1c",
        "hdr-SECRET-9a2e",
    }
    for needle in needles:
        assert needle and needle not in text, "a secret reached a log"


def _fail_then_ok() -> Any:
    async def behaviour(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=500 if n == 1 else 200)

    return behaviour


async def test_aiosqlite_debug_records_keep_the_statement_without_its_parameters(
    tmp_path, debug_logs, receiver, make_runtime
):
    runtime = await make_runtime(persistence=f"sqlite:///{tmp_path / 'logs.db'}")
    endpoint = await subscribed(runtime, receiver.url("/hook"))
    inserts = [
        r.getMessage()
        for r in debug_logs.records
        if r.name == "aiosqlite" and 'INSERT INTO "kmsg_webhook_endpoints"' in r.getMessage()
    ]
    assert inserts and all("<parameters hidden>" in m for m in inserts)
    assert endpoint.secret and endpoint.secret not in debug_logs.text()
