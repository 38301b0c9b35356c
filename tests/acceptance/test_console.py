"""The operator console in a real browser (Debian's Chromium, installed by ``.ci/run`` when
missing, driven by Playwright), served on loopback over a SQLite store with 10,000
deliveries; plus its guard and its command."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, async_playwright

from kmsg_webhook import (
    DeliveryFilter,
    DeliveryStatus,
    EndpointInput,
    EndpointStatus,
    WebhookConfig,
    WebhookEvent,
    WebhookEventType,
)
from kmsg_webhook.console.security import CONTENT_SECURITY_POLICY
from support.console import (
    CHROMIUM,
    CHROMIUM_ARGS,
    HOSTILE_NAME,
    TOKEN,
    Console,
    seeded_rows,
    serve_console,
)
from support.crypto_keys import config as crypto_config
from support.runtime import RuntimeFactory
from support.servers import Receiver

# The console page's screenshot is refreshed only on request, so a test run leaves the tree clean:
# KMSG_CONSOLE_SCREENSHOT=docs/console-overview.png \
#   python -m pytest tests/acceptance/test_console.py
SCREENSHOT_ENV = "KMSG_CONSOLE_SCREENSHOT"


@pytest.fixture
async def console(
    request: pytest.FixtureRequest, make_runtime: RuntimeFactory, receiver: Receiver, tmp_path: Any
) -> AsyncIterator[Console]:
    """A SQLite-backed runtime (dispatching, one attempt per delivery) with two endpoints at
    the local receiver and seeded deliveries (1,000, or the count a test parametrizes with
    ``indirect=True``); its console on loopback, no token."""
    runtime = await make_runtime(
        WebhookConfig(jitter=False, max_retries=0),
        persistence=f"sqlite:///{tmp_path / 'console.db'}",
    )
    endpoints = [
        await runtime.add_endpoint(
            EndpointInput(
                url=receiver.url("/orders"),
                events=[WebhookEventType.MESSAGE_SENT, WebhookEventType.MESSAGE_FAILED],
                name="orders",
            )
        ),
        await runtime.add_endpoint(
            EndpointInput(
                url=receiver.url("/audit"),
                events=[WebhookEventType.MESSAGE_SENT],
                name=HOSTILE_NAME,
            )
        ),
    ]
    now = datetime.now(UTC)
    await runtime.persistence.delivery_store.insert_many(
        seeded_rows([e.id for e in endpoints], getattr(request, "param", 1_000), now)
    )
    async with serve_console(runtime) as url:
        yield Console(runtime=runtime, base_url=url, endpoints=endpoints)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 (one stat before the browser starts)
        reason = f"no Chromium at {CHROMIUM}: `apt-get install chromium` runs these tests"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the console tests need Chromium under CI=true: {reason}", pytrace=False)
        pytest.skip(reason)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A fresh page that fails the test on any script error or CSP violation it logs."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    tab = await context.new_page()
    problems: list[str] = []
    tab.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda exc: problems.append(str(exc)))
    try:
        yield tab
        # 401/403/404 pages are expected in some tests; the browser logs them as errors too.
        unexpected = [p for p in problems if "status of 4" not in p]
        assert not unexpected, unexpected
    finally:
        await context.close()


async def ids_on(page: Page) -> list[str]:
    return await page.eval_on_selector_all(
        "#deliveries tbody tr[data-delivery]", "rows => rows.map(r => r.dataset.delivery)"
    )


@pytest.mark.parametrize("console", [10_000], indirect=True)
async def test_each_page_renders_its_figures_escaped(
    console: Console, page: Page, tmp_path: Path
) -> None:
    """Overview (chart, backlog, latency, endpoints; the console page's screenshot), the endpoints
    page (names escaped, no secret anywhere) and a delivery (payload and attempts)."""
    response = await page.goto(console.url())
    assert response is not None and response.status == 200
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    # One stacked column per minute with finished deliveries, drawn on the server.
    bars = await page.locator("#chart rect.bar").count()
    assert bars >= 150
    assert await page.locator("#chart rect.bar-failed").count() > 0
    assert await page.inner_text("#due") == "0"
    assert (await page.inner_text("#latency")).endswith("ms")
    assert "active 2" in await page.inner_text("#endpoint-counts")
    screenshot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "overview.png")
    assert len(await page.screenshot(path=str(screenshot), full_page=True)) > 10_000
    # The live toggle exists only with the script; the page was readable before it ran.
    assert await page.is_visible("#live-refresh")

    await page.goto(console.url("endpoints"))
    rows = page.locator("#endpoints tbody tr[data-endpoint]")
    assert await rows.count() == 2
    text = await page.inner_text("#endpoints")
    assert HOSTILE_NAME in text  # shown as text, not markup
    assert await page.locator("#endpoints img").count() == 0
    assert await page.title() != "1"
    assert "100.0%" not in text and "%" in text  # success rates over the seeded mix
    html = await page.content()
    for endpoint in console.endpoints:
        assert endpoint.secret and endpoint.secret not in html

    await page.goto(console.url("deliveries?status=failed"))
    await page.click("#deliveries tbody tr[data-delivery] a")
    await page.wait_for_load_state()
    assert "dlv_seed_00004" in page.url
    assert "안녕 4" in await page.inner_text("#payload")
    attempts = await page.inner_text("#attempts tbody")
    assert "500" in attempts and "upstream failed" in attempts and "HTTP 500" in attempts
    assert await page.locator("button", has_text="Retry now").count() == 1


@pytest.mark.parametrize("console", [10_000], indirect=True)
async def test_deliveries_filter_and_page_through_ten_thousand(
    console: Console, page: Page
) -> None:
    await page.goto(console.url("deliveries?limit=500"))
    seen: list[str] = []
    pages = 0
    while True:
        seen.extend(await ids_on(page))
        pages += 1
        next_link = page.locator("#next-page")
        if await next_link.count() == 0:
            break
        await next_link.click()
        await page.wait_for_load_state()
    assert pages == 20
    assert len(seen) == 10_000 and len(set(seen)) == 10_000
    assert seen == sorted(seen)  # newest first: seeded ids grow with age

    # Filters through the form: failed deliveries of the first endpoint.
    orders = console.endpoints[0]
    await page.goto(console.url("deliveries?limit=500"))
    await page.check("input[name=status][value=failed]")
    await page.select_option("select[name=endpoint]", orders.id)
    await page.click("#filters button[type=submit]")
    await page.wait_for_load_state()
    assert "status=failed" in page.url
    statuses = await page.eval_on_selector_all(
        "#deliveries tbody tr[data-delivery] .status", "cells => cells.map(c => c.textContent)"
    )
    assert statuses and set(statuses) == {"failed"}
    expected = await console.runtime.stats(
        DeliveryFilter(endpoint_id=orders.id, statuses=(DeliveryStatus.FAILED,))
    )
    counted = len(await ids_on(page))
    while await page.locator("#next-page").count():
        await page.click("#next-page")
        await page.wait_for_load_state()
        counted += len(await ids_on(page))
    assert counted == expected.deliveries.total
    # The pager keeps the filters; "First page" goes back.
    assert await page.locator("#first-page").count() == 1

    # Event type, event id and a time range.
    await page.goto(console.url("deliveries?event_id=evt_seed_00042"))
    assert await ids_on(page) == ["dlv_seed_00042"]
    await page.goto(console.url("deliveries?event_type=message.failed&limit=500"))
    assert (await ids_on(page))[:2] == ["dlv_seed_00000", "dlv_seed_00003"]
    # A time range: from the 10th newest (inclusive) to the 5th newest (exclusive).
    bounds = [await console.runtime.get_delivery(f"dlv_seed_{i:05d}") for i in (10, 5)]
    since, until = (quote(d.created_at.isoformat()) for d in bounds if d is not None)
    await page.goto(console.url(f"deliveries?since={since}&until={until}"))
    assert await ids_on(page) == [f"dlv_seed_{i:05d}" for i in range(6, 11)]
    # Invalid input is a clear 400, not a stack trace.
    response = await page.goto(console.url("deliveries?cursor=not-a-cursor"))
    assert response is not None and response.status == 400
    assert "invalid delivery cursor" in await page.inner_text("#error-message")
    response = await page.goto(console.url("deliveries?since=yesterday"))
    assert response is not None and response.status == 400
    assert "since must be a time" in await page.inner_text("#error-message")


async def test_retry_now_and_replay_send_a_delivery_again(
    console: Console, receiver: Receiver, page: Page
) -> None:
    async def fail_first(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=503 if n == 1 else 200, text=f"answer {n}")

    receiver.on("/orders", fail_first)
    event = WebhookEvent(
        id="evt_retry", type=WebhookEventType.MESSAGE_SENT, timestamp=datetime.now(UTC), data={}
    )
    runtime = console.runtime
    await runtime.emit(event)
    await runtime.flush()
    orders = console.endpoints[0]
    (failed,) = (
        await runtime.list_deliveries(DeliveryFilter(event_id="evt_retry", endpoint_id=orders.id))
    ).items
    assert failed.status is DeliveryStatus.EXHAUSTED and receiver.hits["/orders"] == 1

    await page.goto(console.url(f"deliveries/{failed.id}"))
    assert await page.inner_text("#delivery-status") == "exhausted"
    await page.click("button:has-text('Retry now')")
    await page.wait_for_load_state()
    assert "Queued for another attempt" in await page.inner_text("main")
    for _ in range(300):  # a generous 30 s: the machine may be busy
        if (await runtime.get_delivery(failed.id)).status is DeliveryStatus.SUCCESS:  # type: ignore[union-attr]
            break
        await asyncio.sleep(0.1)
    await page.reload()
    assert await page.inner_text("#delivery-status") == "success"
    attempts = await page.inner_text("#attempts tbody")
    assert "answer 2" in attempts and "503" in attempts
    assert receiver.hits["/orders"] == 2
    assert receiver.at("/orders")[1].body == receiver.at("/orders")[0].body
    # A delivered one can be replayed (after a confirmation): it is sent once more.
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.click("button:has-text('Replay')")
    await page.wait_for_url(re.compile(r"done=replayed"))
    assert "Queued to be sent again" in await page.inner_text("main")
    for _ in range(300):
        replayed = await runtime.get_delivery(failed.id)
        if replayed is not None and replayed.attempt_count == 3 and replayed.status.terminal:
            break
        await asyncio.sleep(0.1)
    assert receiver.hits["/orders"] == 3
    assert receiver.at("/orders")[2].body == receiver.at("/orders")[0].body
    # A queued delivery cannot be queued twice: the action answers with the reason.
    await runtime.persistence.delivery_store.requeue(
        DeliveryFilter(), now=datetime.now(UTC) + timedelta(hours=1), ids=[failed.id]
    )
    await page.goto(console.url("endpoints"))
    csrf = await page.get_attribute("input[name=csrf_token]", "value")
    refused = await page.request.post(
        console.url(f"deliveries/{failed.id}/retry"), form={"csrf_token": csrf or ""}
    )
    assert refused.status == 400 and "still pending" in await refused.text()


async def test_disable_enable_probe_and_rotate_an_endpoint(
    console: Console, receiver: Receiver, page: Page
) -> None:
    dialogs: list[str] = []

    async def accept(dialog: object) -> None:
        dialogs.append(dialog.message)  # type: ignore[attr-defined]
        await dialog.accept()  # type: ignore[attr-defined]

    page.on("dialog", accept)
    orders = console.endpoints[0]
    runtime = console.runtime
    row = f"tr[data-endpoint='{orders.id}']"
    await page.goto(console.url("endpoints"))
    await page.click(f"{row} button:has-text('Disable')")
    await page.wait_for_url(re.compile(r"done=disabled"))
    assert dialogs == ["Disable orders?"]
    assert (await runtime.get_endpoint(orders.id)).status is EndpointStatus.INACTIVE  # type: ignore[union-attr]
    assert "inactive" in await page.inner_text(row)

    await page.click(f"{row} button:has-text('Enable')")
    await page.wait_for_url(re.compile(r"done=enabled"))
    assert (await runtime.get_endpoint(orders.id)).status is EndpointStatus.ACTIVE  # type: ignore[union-attr]

    await page.click(f"{row} button:has-text('Send probe')")
    await page.wait_for_load_state()
    assert "delivered" in await page.inner_text("#probe-result")
    assert receiver.at("/orders")[-1].headers["Content-Type"].startswith("application/json")

    await page.goto(console.url("endpoints"))
    await page.click(f"{row} button:has-text('Rotate secret')")
    await page.wait_for_load_state()
    shown = (await page.inner_text("#new-secret")).strip()
    rotated = await runtime.get_endpoint(orders.id)
    assert rotated is not None and shown == rotated.secret and shown != orders.secret
    # Shown once: reloading the list (or going back) never renders it again.
    await page.goto(console.url("endpoints"))
    assert shown not in await page.content()


async def test_requests_without_the_token_or_the_csrf_token_are_refused(
    make_runtime: RuntimeFactory, receiver: Receiver, page: Page
) -> None:
    runtime = await make_runtime(persistence="memory://")  # mounted in-process
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/hook"), events=[WebhookEventType.MESSAGE_SENT])
    )
    async with serve_console(runtime, token=TOKEN) as url:
        disable = f"{url}endpoints/{endpoint.id}/disable"
        async with aiohttp.ClientSession() as http:
            for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
                async with http.get(url, headers=headers) as r:
                    assert r.status == 401
                    assert r.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
                async with http.post(disable, headers=headers) as r:
                    assert r.status == 401
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            for path in ("", "endpoints", "deliveries"):
                async with http.get(url + path, headers=bearer) as r:
                    assert r.status == 200, path
            # Signed in but without the CSRF token, or with a forged one: refused.
            async with http.post(disable, headers=bearer, data={}) as r:
                assert r.status == 403
            async with http.post(disable, headers=bearer, data={"csrf_token": "x" * 64}) as r:
                assert r.status == 403
        assert (await runtime.get_endpoint(endpoint.id)).status is EndpointStatus.ACTIVE  # type: ignore[union-attr]

        # A browser signs in with the token, then its forms carry the CSRF token.
        response = await page.goto(url + "endpoints")
        assert response is not None and response.status == 401
        await page.fill("input[name=token]", "not-the-token-at-all")
        await page.click("button:has-text('Sign in')")
        assert "not the console's token" in await page.inner_text("main")
        await page.fill("input[name=token]", TOKEN)
        await page.click("button:has-text('Sign in')")
        await page.wait_for_selector("#chart")
        await page.goto(url + "endpoints")
        page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))
        await page.click("button:has-text('Disable')")
        await page.wait_for_url(re.compile(r"done=disabled"))
        assert (await runtime.get_endpoint(endpoint.id)).status is EndpointStatus.INACTIVE  # type: ignore[union-attr]
        # The same form posted from another origin is refused even with the cookies.
        cross = await page.request.post(
            f"{url}endpoints/{endpoint.id}/enable",
            headers={"Origin": "http://evil.example"},
            form={"csrf_token": "anything"},
        )
        assert cross.status == 403


async def test_sealed_payloads_stay_sealed_without_the_keys(
    make_runtime: RuntimeFactory, receiver: Receiver, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'sealed.db'}"
    keyed = await make_runtime(field_crypto=crypto_config("A"), persistence=store, dispatch=False)
    endpoint = await keyed.add_endpoint(
        EndpointInput(url=receiver.url("/sealed"), events=[WebhookEventType.MESSAGE_SENT])
    )
    await keyed.emit(
        WebhookEvent(
            id="evt_sealed",
            type=WebhookEventType.MESSAGE_SENT,
            timestamp=datetime.now(UTC),
            data={"text": "private words"},
        )
    )
    await keyed.flush()
    (sealed,) = (await keyed.list_deliveries()).items
    keyless = await make_runtime(persistence=store, dispatch=False)
    for runtime, readable in ((keyless, False), (keyed, True)):
        async with (
            serve_console(runtime) as url,
            aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http,
        ):
            async with http.get(f"{url}deliveries/{sealed.id}") as r:
                body = await r.text()
                assert r.status == 200
                assert ("private words" in body) is readable
                assert ("Start the console with the keys" in body) is not readable
            # Without the keys a sealed secret cannot be used: a clear refusal.
            if not readable:
                async with http.get(f"{url}endpoints") as r:
                    csrf = re.search(r'name="csrf_token" value="([^"]+)"', await r.text())
                assert csrf is not None
                async with http.post(
                    f"{url}endpoints/{endpoint.id}/rotate", data={"csrf_token": csrf[1]}
                ) as r:
                    assert r.status == 400
                    assert "secret is sealed" in await r.text()


def _console_command(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kmsg_webhook.cli", "console", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_the_command_refuses_a_public_bind_without_a_token(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'c.db'}"
    # Refused as unsafe (5), and a guessable token as a bad value (2), before opening the store.
    for args, code in ((("--host", "0.0.0.0"), 5), (("--token", "short"), 2)):
        proc = _console_command("--store", store, *args)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err
        assert "token" in err
    assert not (tmp_path / "c.db").exists()


async def test_the_command_serves_the_console_behind_its_token(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'c.db'}"
    proc = _console_command(
        "--store", store, "--create", "--port", "0", env={"KMSG_WEBHOOK_CONSOLE_TOKEN": TOKEN}
    )
    try:
        assert proc.stdout is not None
        banner = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        match = re.search(r"console on (http://127\.0\.0\.1:\d+/)", banner)
        assert match, banner
        url = match[1]
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as r:
                assert r.status == 401
            for path in ("", "endpoints", "deliveries"):
                async with http.get(url + path, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                    assert r.status == 200, path
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0
