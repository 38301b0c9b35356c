"""``kmsg-webhook demo``: a local verifying receiver, a runtime, a handful of events (one of
them from a message sent through the mock provider), and a report."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web

from .config import WebhookConfig
from .display import print_table
from .errors import VerificationError
from .events import EventMetadata, WebhookEvent, WebhookEventType
from .messaging import KMsg, MockProvider, Ok
from .models import DeliveryFilter, DeliveryStatus, EndpointInput, WebhookDelivery
from .runtime import WebhookRuntimeService
from .sender import SecurityOptions
from .signing import generate_secret
from .store import WebhookPersistence
from .verify import verify

_EVENTS = (
    (WebhookEventType.MESSAGE_SENT, {"status": "sent", "to": "010-****-5678"}),
    (WebhookEventType.MESSAGE_DELIVERED, {"status": "delivered"}),
    (WebhookEventType.MESSAGE_FAILED, {"status": "failed", "errorCode": "NOT_KAKAO_USER"}),
    (WebhookEventType.MESSAGE_CLICKED, {"link": "https://example.com/promo"}),
    (WebhookEventType.MESSAGE_READ, {"readAt": "2026-01-01T09:00:00.000Z"}),
)


@dataclass
class _Receiver:
    secret: str
    verdicts: list[tuple[str, str]] = field(default_factory=list)
    hits: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        body = await request.read()
        if self.hits == 2:
            # One transient failure, to show a retry scheduled in the store.
            return web.json_response({"error": "busy"}, status=503)
        try:
            event = verify(body, request.headers, self.secret)
        except VerificationError as exc:
            self.verdicts.append((request.headers.get("webhook-id", "?"), f"rejected: {exc}"))
            return web.json_response({"error": exc.reason}, status=401)
        self.verdicts.append((event.id, f"verified {event.type.value}"))
        return web.json_response({"ok": True})


async def run_demo(persistence: WebhookPersistence | str | None = None) -> int:
    """Run the demo and print its report; returns the process exit code.

    Without ``persistence`` the outbox is an embedded SQLite file in a temporary directory.
    """
    if persistence is None:
        persistence = f"sqlite:///{tempfile.mkdtemp(prefix='kmsg-demo-')}/outbox.db"
    secret = generate_secret()
    receiver = _Receiver(secret)
    app = web.Application()
    app.router.add_post("/webhooks", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    url = f"http://127.0.0.1:{port}/webhooks"
    config = WebhookConfig(retry_delay_ms=200, jitter=False, timeout_ms=5_000)
    started = time.perf_counter()
    try:
        async with WebhookRuntimeService(
            config,
            persistence=persistence,
            security=SecurityOptions(allow_private_hosts=True),
        ) as runtime:
            endpoint = await runtime.add_endpoint(
                EndpointInput(
                    url=url, events=[t for t, _ in _EVENTS], secret=secret, name="demo receiver"
                )
            )
            print(f"store      {persistence if isinstance(persistence, str) else 'custom'}")
            print(f"receiver   {url}")
            print(f"endpoint   {endpoint.id}  (Standard Webhooks signatures, whsec_ secret)")
            now = datetime.now(UTC)
            await asyncio.gather(
                *(
                    runtime.emit(
                        WebhookEvent(
                            id=f"evt_demo_{n}_{int(now.timestamp())}",
                            type=event_type,
                            timestamp=now,
                            data=data,
                            metadata=EventMetadata(provider_id="mock", message_id=f"msg_{n}"),
                        )
                    )
                    for n, (event_type, data) in enumerate(_EVENTS, start=1)
                )
            )
            # The provider feed: a message sent through the mock provider arrives as a signed
            # message.sent webhook (recipient masked, deterministic event id).
            kmsg = KMsg([MockProvider()], webhooks=runtime)
            try:
                sent = await kmsg.send(
                    {"to": "010-1234-5678", "from": "02-123-4567", "text": "인증번호 123456"}
                )
            finally:
                await kmsg.aclose()
            if isinstance(sent, Ok):
                print(f"kmsg.send  {sent.value.message_id} via mock → {sent.value.status.value}")
            else:
                print(f"kmsg.send  failed: {sent.error}")
            deliveries = await _settle(runtime, endpoint.id)
    finally:
        await runner.cleanup()
    _print_deliveries(deliveries)
    print()
    print_table(("webhook-id", "receiver verdict"), receiver.verdicts)
    ok = all(d.status is DeliveryStatus.SUCCESS for d in deliveries)
    ok = ok and len(deliveries) == len(_EVENTS) + 1
    elapsed = time.perf_counter() - started
    print(f"\n{len(deliveries)} deliveries, all succeeded: {ok}  ({elapsed:.2f}s)")
    return 0 if ok else 1


async def _settle(runtime: WebhookRuntimeService, endpoint_id: str) -> list[WebhookDelivery]:
    """Flush until nothing is pending (the one retry is due 200 ms after its failure)."""
    deadline = time.monotonic() + 15
    while True:
        await runtime.flush()
        page = await runtime.list_deliveries(DeliveryFilter(endpoint_id=endpoint_id))
        pending = [d for d in page.items if d.status is DeliveryStatus.PENDING]
        if not pending or time.monotonic() > deadline:
            return sorted(page.items, key=lambda d: d.event_id)
        await asyncio.sleep(0.05)


def _print_deliveries(deliveries: Sequence[WebhookDelivery]) -> None:
    rows = []
    for d in deliveries:
        last = d.last_attempt
        rows.append(
            (
                d.id[:16] + "…",
                d.event_type.value,
                d.status.value,
                str(d.attempt_count),
                " → ".join(str(a.http_status or a.error) for a in d.attempts),
                f"{last.latency_ms:.1f}" if last else "-",
            )
        )
    print_table(("delivery", "event", "status", "attempts", "responses", "latency ms"), rows)
