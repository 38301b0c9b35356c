"""The messaging module in real processes, killed with SIGKILL (SQLite, PostgreSQL and D1 on the
local engine; SOLAPI is a local fake): ``kmsg worker`` during a fallback wait (its webhook
dispatcher delivers the events to a local receiver) and during scheduled sends, and a bulk send
mid-way."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web

from kmsg_webhook import EndpointInput, SecurityOptions, WebhookEventType, WebhookRuntimeService
from kmsg_webhook.messaging import (
    ApiAttemptStatus,
    DeliveryStatus,
    DeliveryTrackingService,
    KMsg,
    KMsgDefaults,
    Ok,
    PollingConfig,
    SolapiConfig,
    SolapiProvider,
    TrackingFilter,
    TrackingStore,
    job_store_from_url,
    tracking_store_from_url,
)
from kmsg_webhook.messaging.jobs import JobStatus
from support.d1 import fresh_tables, require_local_d1
from support.fakes.base import Recorded, Reply
from support.fakes.solapi import FakeSolapi
from support.servers import serve_app
from support.stores import (
    JOBS_TABLE,
    TRACKING_TABLE,
    drop_schema,
    fresh_messaging_tables,
    migrated_store_url,
    new_schema,
    server_dsn,
)
from support.workers import WorkerProcess, spawn

WORKER = str(Path(__file__).resolve().parents[1] / "support" / "messaging_worker.py")
MESSAGES = 6
STALLED = "order-3"


class StallingSolapi(FakeSolapi):
    """Fake SOLAPI whose first status query for one message never answers (the worker asking
    it is killed while it waits)."""

    def __init__(self) -> None:
        super().__init__()
        self.send_delay = 0.0
        #: Sends after this many wait for ``release_sends`` (the sender is killed meanwhile).
        self.hold_sends_after: int | None = None
        self.release_sends = asyncio.Event()
        self.stall_provider_id: str | None = None
        self.stalled = asyncio.Event()
        self.release = asyncio.Event()
        self.route("GET", "/messages/v4/list", self._maybe_stall)
        self.route("POST", "/messages/v4/send", self._slow_send)

    async def _slow_send(self, req: Recorded) -> Reply:
        await asyncio.sleep(self.send_delay)
        held = self.hold_sends_after
        if held is not None and len(self.hits("/messages/v4/send")) > held:
            await self.release_sends.wait()
        return self._send(req)

    def sends_by_recipient(self) -> Counter[str]:
        return Counter(r.json["message"]["to"] for r in self.hits("/messages/v4/send"))

    async def _maybe_stall(self, req: Recorded) -> Reply:
        if req.query.get("messageId") == self.stall_provider_id and not self.stalled.is_set():
            self.stalled.set()
            await self.release.wait()
        return self._list(req)

    def fallback_recipients(self) -> Counter[str]:
        sends = [r.json["message"] for r in self.hits("/messages/v4/send")]
        return Counter(m["to"] for m in sends if m["type"] == "SMS")


@pytest.fixture
async def solapi() -> AsyncIterator[StallingSolapi]:
    async with StallingSolapi() as server:
        try:
            yield server
        finally:
            server.release.set()
            server.release_sends.set()


@pytest.fixture
async def events() -> AsyncIterator[tuple[str, Counter[str]]]:
    """A receiver of webhook deliveries: its URL and how often each event id arrived."""
    seen: Counter[str] = Counter()

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        seen[request.headers["webhook-id"]] += 1
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hooks", handle)
    async with serve_app(app) as base:
        yield f"{base}/hooks", seen


# Overrides acceptance/conftest.py's store_url: these workers run on SQLite and D1 too.
@pytest.fixture(params=["sqlite", "postgres", "d1"])
async def store_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    if request.param == "sqlite":  # kmsg worker opens only a SQLite file that exists
        async with migrated_store_url("sqlite") as url:
            yield url
        return
    if request.param == "d1":
        local = await asyncio.to_thread(require_local_d1)
        endpoints, deliveries = fresh_tables()
        messaging = fresh_messaging_tables()
        yield local.store_url(
            endpoint_table=endpoints,
            delivery_table=deliveries,
            tracking_table=messaging[TRACKING_TABLE],
            jobs_table=messaging[JOBS_TABLE],
        )
        return
    dsn = await server_dsn()
    schema = new_schema()
    try:
        yield f"{dsn}?schema={schema}"
    finally:
        await drop_schema(dsn, schema)


#: ``kmsg worker`` as each test runs it: the reconciler checks one record after another (the
#: tests know where a kill lands) and delivers the webhook events; the queue sends 8 at once.
MODES = {
    "reconciler": (
        "--no-queue",
        "--tracking-concurrency",
        "1",
        "--with-webhooks",
        "--allow-private-hosts",
    ),
    "queue": ("--no-tracking", "--concurrency", "8"),
}


async def start_worker(
    procs: list[WorkerProcess],
    store_url: str,
    solapi: FakeSolapi,
    name: str,
    mode: str = "reconciler",
    *extra: str,
) -> WorkerProcess:
    """``kmsg worker``, once it logged its start (``bulk``: the bulk-sending client of
    tests/support/messaging_worker.py, at once)."""
    if mode == "bulk":
        args = [WORKER, "--store", store_url, "--solapi", solapi.url, *extra]
    else:
        args = [
            *("-m", "kmsg_webhook.messaging.cli", "worker", "--log-format", "json"),
            *("--store", store_url, "--worker-id", name, "--lease-s", "3", "--poll-s", "0.1"),
            *MODES[mode],
            *extra,
        ]
    worker = await spawn(*args, env=solapi.env())
    procs.append(worker)
    if mode != "bulk":
        await worker.wait_logged(logger="kmsg_webhook.messaging.worker", worker_id=name)
    return worker


async def send_alimtalks(
    store_url: str, store: TrackingStore, solapi: StallingSolapi, endpoint: str
) -> None:
    """Register the webhook endpoint and send the ALIMTALKs (tracked, checks due at once)."""
    async with WebhookRuntimeService(
        persistence=store_url,
        dispatch=False,
        security=SecurityOptions(allow_private_hosts=True),
    ) as runtime:
        await runtime.add_endpoint(
            EndpointInput(
                url=endpoint,
                events=[WebhookEventType.MESSAGE_FAILED, WebhookEventType.MESSAGE_SENT],
            )
        )
    provider = SolapiProvider(
        SolapiConfig(
            api_key=solapi.api_key,
            api_secret=solapi.api_secret,
            default_from="0212345678",
            kakao_pf_id="PF1",
            base_url=solapi.url,
        )
    )
    tracking = DeliveryTrackingService(
        [provider], store=store, polling=PollingConfig(initial_delay=timedelta(0))
    )
    kmsg = KMsg([provider], hooks=tracking.hooks(), defaults=KMsgDefaults(kakao_plus_id="@brand"))
    try:
        for n in range(1, MESSAGES + 1):
            outcome = await kmsg.send(
                {
                    "type": "ALIMTALK",
                    "to": f"010-1234-{n:04d}",
                    "templateId": "KA01",
                    "variables": {"name": "홍길동"},
                    "messageId": f"order-{n}",
                    "failover": {"enabled": True, "fallbackContent": "문자로 대신 안내드립니다"},
                }
            )
            assert isinstance(outcome, Ok), outcome
            provider_id = outcome.value.provider_message_id
            assert provider_id is not None
            solapi.statuses[provider_id] = {
                "statusCode": "3104",
                "statusMessage": "카카오톡 미사용자",
            }
            if outcome.value.message_id == STALLED:
                solapi.stall_provider_id = provider_id
    finally:
        await kmsg.aclose()


async def wait_for(predicate: object, timeout_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = predicate() if callable(predicate) else predicate
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_kill_during_a_fallback_wait_loses_nothing_and_sends_each_fallback_once(
    store_url: str,
    solapi: StallingSolapi,
    events: tuple[str, Counter[str]],
    processes: list[WorkerProcess],
) -> None:
    endpoint, seen = events
    store = tracking_store_from_url(store_url)
    try:
        await send_alimtalks(store_url, store, solapi, endpoint)
        victim = await start_worker(processes, store_url, solapi, "victim")
        # The victim checks one message after another; it falls back for order-1 and
        # order-2, then waits on order-3's status, and dies there.
        await asyncio.wait_for(solapi.stalled.wait(), 60)
        assert sum(solapi.fallback_recipients().values()) == 2
        victim.proc.send_signal(signal.SIGKILL)
        assert await victim.exit_code() == -signal.SIGKILL

        for name in ("heir-1", "heir-2"):
            await start_worker(processes, store_url, solapi, name)

        async def all_fell_back() -> bool:
            done = await store.list_records(TrackingFilter(statuses=(DeliveryStatus.FAILED,)))
            settled = [r for r in done if r.failover and r.failover.status.value == "sent"]
            return len(settled) == MESSAGES

        await wait_for(all_fell_back, 90, "every fallback")
        wanted = {f"order-{n}:message.failed" for n in range(1, MESSAGES + 1)} | {
            f"order-{n}:api-fallback:message.sent" for n in range(1, MESSAGES + 1)
        }
        await wait_for(lambda: wanted <= set(seen), 60, "every webhook event")
        for heir in processes[1:]:
            assert await heir.stop() == 0, heir.lines

        # Every message tracked, the fallbacks too; each fallback sent exactly once.
        assert await store.count_records() == 2 * MESSAGES
        for n in range(1, MESSAGES + 1):
            record = await store.get(f"order-{n}")
            assert record is not None and record.failover is not None
            assert record.status is DeliveryStatus.FAILED
            assert record.failover.status is ApiAttemptStatus.SENT
            assert record.failover.fallback_message_id == f"order-{n}:api-fallback"
            assert await store.get(f"order-{n}:api-fallback") is not None
        recipients = solapi.fallback_recipients()
        assert recipients == Counter({f"0101234{n:04d}": 1 for n in range(1, MESSAGES + 1)})
    finally:
        await store.close()


BULK = 120
# What a killed sender may leave unrecorded: its sends in flight (8 at once, in the bulk client
# and in `kmsg worker --concurrency 8`) and the finished ones waiting for the next group write.
IN_FLIGHT = 2 * 8


async def test_kill_during_a_bulk_send_loses_nothing(
    store_url: str, solapi: StallingSolapi, processes: list[WorkerProcess]
) -> None:
    solapi.send_delay = 0.05
    solapi.hold_sends_after = 30  # then every send waits: the bulk process dies mid-send
    bulk = await start_worker(processes, store_url, solapi, "bulk", "bulk", "--count", str(BULK))
    # A queue worker shares the batch from the start: leases keep the two apart.
    await start_worker(processes, store_url, solapi, "helper", "queue")
    await wait_for(lambda: len(solapi.hits("/messages/v4/send")) > 30, 60, "held sends")
    bulk.proc.send_signal(signal.SIGKILL)
    assert await bulk.exit_code() == -signal.SIGKILL
    solapi.release_sends.set()
    await start_worker(processes, store_url, solapi, "heir", "queue")
    jobs = job_store_from_url(store_url)
    try:

        async def all_sent() -> bool:
            counts = await jobs.count_by_status()
            return counts[JobStatus.SENT] == BULK

        await wait_for(all_sent, 90, "every job sent")
        assert await jobs.count_by_status() == {
            JobStatus.PENDING: 0,
            JobStatus.SENT: BULK,
            JobStatus.FAILED: 0,
        }
    finally:
        await jobs.close()
    sends = solapi.sends_by_recipient()
    assert set(sends) == {f"0109{n:03d}0000" for n in range(BULK)}
    # At least once: only the sends in flight when the bulk process died may repeat.
    assert sum(sends.values()) - BULK <= IN_FLIGHT


async def test_kill_during_scheduled_sends_loses_nothing(
    store_url: str, solapi: StallingSolapi, processes: list[WorkerProcess]
) -> None:
    solapi.send_delay = 0.1
    jobs = job_store_from_url(store_url)
    provider = SolapiProvider(
        SolapiConfig(
            api_key=solapi.api_key,
            api_secret=solapi.api_secret,
            default_from="0212345678",
            base_url=solapi.url,
        )
    )
    kmsg = KMsg([provider], jobs=jobs)
    try:
        at = datetime.now(UTC) + timedelta(seconds=1)
        scheduled = [
            {"to": f"010-8{n:03d}-0000", "text": f"예약 {n}", "messageId": f"later-{n}"}
            for n in range(SCHEDULED)
        ]
        batch = await kmsg.send(scheduled, scheduled_at=at)
        assert all(isinstance(r, Ok) for r in batch.results)
        assert solapi.hits("/messages/v4/send") == []  # stored, nothing sent yet
        victim = await start_worker(processes, store_url, solapi, "victim", "queue")
        await wait_for(lambda: len(solapi.hits("/messages/v4/send")) >= 15, 60, "15 sends")
        victim.proc.send_signal(signal.SIGKILL)
        assert await victim.exit_code() == -signal.SIGKILL
        await start_worker(processes, store_url, solapi, "heir", "queue")

        async def all_sent() -> bool:
            return (await jobs.count_by_status())[JobStatus.SENT] == SCHEDULED

        await wait_for(all_sent, 90, "every scheduled job sent")
    finally:
        await kmsg.aclose()
        await jobs.close()
    sends = solapi.sends_by_recipient()
    assert set(sends) == {f"0108{n:03d}0000" for n in range(SCHEDULED)}
    assert sum(sends.values()) - SCHEDULED <= IN_FLIGHT


SCHEDULED = 60
