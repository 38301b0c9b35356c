"""``kmsg-webhook demo``: a local verifying receiver, a runtime, a handful of events and a
report.

On a store that is in use (``--store`` with endpoints, and ``--yes``) the demo stays in its own
lane: its runtime sees only the demo's endpoint, so events match nothing else, and claims only
that endpoint's rows, so nothing queued for real endpoints is sent. The endpoint subscribes
only to events of a provider id unique to the run, so real events emitted meanwhile by other
processes never reach the demo's receiver. The endpoint is removed when the demo ends, however
it ends; its delivery rows stay as history. The store URL is printed with its password
redacted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from .config import SecurityOptions, WebhookConfig
from .display import print_table
from .errors import UnsafeOperationError, VerificationError
from .events import EventMetadata, WebhookEvent, WebhookEventType
from .ids import new_id
from .models import (
    DeliveryFilter,
    DeliveryPage,
    DeliveryStatus,
    EndpointFilters,
    EndpointInput,
    WebhookDelivery,
    WebhookEndpoint,
)
from .redact import redact_url
from .runtime import WebhookRuntimeService
from .signing import generate_secret
from .stores.protocol import DeliveryStore, EndpointStore, WebhookPersistence
from .stores.url import persistence_from_url
from .verify import verify

_EVENTS = (
    (WebhookEventType.MESSAGE_SENT, {"status": "sent", "to": "010-****-5678"}),
    (WebhookEventType.MESSAGE_DELIVERED, {"status": "delivered"}),
    (WebhookEventType.MESSAGE_FAILED, {"status": "failed", "errorCode": "NOT_KAKAO_USER"}),
    (WebhookEventType.MESSAGE_CLICKED, {"link": "https://example.com/promo"}),
    (WebhookEventType.MESSAGE_READ, {"readAt": "2026-01-01T09:00:00.000Z"}),
    (WebhookEventType.TEMPLATE_APPROVED, {"templateCode": "WELCOME_01"}),
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


class _OwnEndpoint:
    """The store's endpoints as the demo's runtime sees them: only the demo's own."""

    def __init__(self, inner: EndpointStore, endpoint_id: str) -> None:
        self._inner = inner
        self._id = endpoint_id

    async def list(self) -> list[WebhookEndpoint]:
        return [e for e in await self._inner.list() if e.id == self._id]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _OwnDeliveries:
    """The outbox as the demo's runtime sees it: only rows of the demo's endpoint are claimed
    (and listed), so a demo on a store in use never sends what real endpoints have queued."""

    def __init__(self, inner: DeliveryStore, endpoints: EndpointStore, endpoint_id: str) -> None:
        self._inner = inner
        self._endpoints = endpoints
        self._id = endpoint_id

    async def claim(
        self,
        *,
        worker_id: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        exclude_endpoints: Collection[str] = (),
    ) -> list[WebhookDelivery]:
        others = {e.id for e in await self._endpoints.list()} - {self._id}
        rows = await self._inner.claim(
            worker_id=worker_id,
            now=now,
            lease_until=lease_until,
            limit=limit,
            exclude_endpoints={*exclude_endpoints, *others},
        )
        strays = [d.id for d in rows if d.endpoint_id != self._id]
        if strays:  # an endpoint added since the listing: its rows go straight back
            await self._inner.release(strays, worker_id=worker_id)
        return [d for d in rows if d.endpoint_id == self._id]

    async def list(
        self, filter: DeliveryFilter, *, limit: int = 100, cursor: str | None = None
    ) -> DeliveryPage:
        own = dataclasses.replace(filter, endpoint_id=self._id)
        return await self._inner.list(own, limit=limit, cursor=cursor)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _own_lane(persistence: WebhookPersistence, endpoint_id: str) -> WebhookPersistence:
    endpoints = persistence.endpoint_store
    return WebhookPersistence(
        endpoint_store=_OwnEndpoint(endpoints, endpoint_id),
        delivery_store=_OwnDeliveries(persistence.delivery_store, endpoints, endpoint_id),
        init=persistence.init,
        close=persistence.close,
    )


async def _refuse_if_in_use(persistence: WebhookPersistence, label: str) -> None:
    """Without ``--yes``, a store that has endpoints is someone's real store: leave it be."""
    if persistence.init is not None:
        await persistence.init()
    count = len(await persistence.endpoint_store.list())
    if count:
        if persistence.close is not None:
            await persistence.close()
        raise UnsafeOperationError(
            f"the store at {label} already holds {count} endpoint(s). The demo would add its "
            "own endpoint next to them (it sends only to that one and removes it afterwards); "
            "run again with --yes to go ahead"
        )


async def run_demo(
    persistence: WebhookPersistence | str | None = None, *, yes: bool = False
) -> int:
    """Run the demo and print its report; returns the process exit code.

    Without ``persistence`` the outbox is an embedded SQLite file in a temporary directory.
    A store that already holds endpoints is refused (:class:`UnsafeOperationError`) unless
    ``yes``; the demo then sends only to its own endpoint and removes it when it ends.
    """
    if persistence is None:
        persistence = f"sqlite:///{tempfile.mkdtemp(prefix='kmsg-demo-')}/outbox.db"
    label = redact_url(persistence) if isinstance(persistence, str) else "custom"
    store = persistence_from_url(persistence) if isinstance(persistence, str) else persistence
    if not yes:
        await _refuse_if_in_use(store, label)
    endpoint_id = new_id("ep")
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
            persistence=_own_lane(store, endpoint_id),
            # Only the demo's own receiver: the allow-list, not every private host.
            security=SecurityOptions(allowed_networks=("127.0.0.1/32",)),
        ) as runtime:
            try:
                deliveries = await _run_events(runtime, endpoint_id, url, secret, label)
            finally:
                # Also on failure and Ctrl-C (asyncio.run cancels this task, finally runs).
                await runtime.remove_endpoint(endpoint_id)
                print(f"removed    {endpoint_id}")
    finally:
        await runner.cleanup()
    _print_deliveries(deliveries)
    print()
    print_table(("webhook-id", "receiver verdict"), receiver.verdicts)
    ok = all(d.status is DeliveryStatus.SUCCESS for d in deliveries)
    ok = ok and len(deliveries) == len(_EVENTS)
    elapsed = time.perf_counter() - started
    print(f"\n{len(deliveries)} deliveries, all succeeded: {ok}  ({elapsed:.2f}s)")
    return 0 if ok else 1


async def _run_events(
    runtime: WebhookRuntimeService, endpoint_id: str, url: str, secret: str, label: str
) -> list[WebhookDelivery]:
    """Add the demo's endpoint, emit the events, and wait for the results."""
    # A provider id only this run emits: the endpoint's filter keeps real events out.
    provider_id = f"demo_{endpoint_id}"
    endpoint = await runtime.add_endpoint(
        EndpointInput(
            id=endpoint_id,
            url=url,
            events=[t for t, _ in _EVENTS],
            secret=secret,
            name="demo receiver",
            filters=EndpointFilters(provider_id=(provider_id,)),
        )
    )
    print(f"store      {label}")
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
                    metadata=EventMetadata(provider_id=provider_id, message_id=f"msg_{n}"),
                )
            )
            for n, (event_type, data) in enumerate(_EVENTS, start=1)
        )
    )
    return await _settle(runtime, endpoint.id)


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
