"""``kmsg worker`` as a process against SQLite and Postgres, SOLAPI faked as a local HTTP server:
it sends due jobs, tracks them, falls back, dispatches the webhook events, logs as JSON and
serves ``/metrics``, ``/healthz`` and ``/readyz``; SIGTERM mid-send loses and repeats nothing;
bad configurations are refused with typed errors and exit codes."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from kmsg_webhook import EndpointInput, SecurityOptions, WebhookEventType, WebhookRuntimeService
from kmsg_webhook.crypto import FieldCryptoConfig
from kmsg_webhook.messaging import (
    ApiAttemptStatus,
    KMsg,
    KMsgDefaults,
    Ok,
    SolapiConfig,
    SolapiProvider,
    job_store_from_url,
    tracking_store_from_url,
)
from kmsg_webhook.messaging.jobs import JobStatus
from kmsg_webhook.redact import redact_url
from kmsg_webhook.stores.url import migrate
from support.cli import kmsg_process
from support.crypto_keys import KEYS_ENV
from support.fakes.base import Recorded, Reply
from support.fakes.solapi import FakeSolapi
from support.runtime import WaitUntil
from support.servers import serve_app
from support.workers import WorkerProcess, scrape, spawn


class ReportingSolapi(FakeSolapi):
    """Fake SOLAPI whose status answers say every ALIMTALK failed for a recipient without
    KakaoTalk and every SMS was delivered; sends wait while ``open`` is clear."""

    def __init__(self) -> None:
        super().__init__()
        self.kinds: dict[str, str] = {}
        self.open = asyncio.Event()
        self.open.set()
        self.route("POST", "/messages/v4/send", self._held_send)
        self.route("GET", "/messages/v4/list", self._reported)

    async def _held_send(self, req: Recorded) -> Reply:
        await self.open.wait()
        reply = self._send(req)
        if reply.status == 200:
            self.kinds[reply.body["messageId"]] = reply.body["type"]
        return reply

    def _reported(self, req: Recorded) -> Reply:
        kind = self.kinds.get(req.query.get("messageId", ""))
        if kind == "ATA":
            self.statuses[req.query["messageId"]] = {
                "statusCode": "3104",
                "statusMessage": "카카오톡 미사용자",
            }
        elif kind is not None:
            self.statuses[req.query["messageId"]] = {"statusCode": "4000"}
        return self._list(req)

    def sends_to(self) -> Counter[str]:
        return Counter(r.json["message"]["to"] for r in self.hits("/messages/v4/send"))


@pytest.fixture
async def solapi() -> AsyncIterator[ReportingSolapi]:
    async with ReportingSolapi() as server:
        try:
            yield server
        finally:
            server.open.set()


@pytest.fixture
async def start_worker(processes: list[WorkerProcess]) -> Any:
    """``kmsg worker --store URL``, logging JSON; by default until its start line is logged."""

    async def start(
        store: str, env: Mapping[str, str], *args: str, ready: bool = True
    ) -> WorkerProcess:
        worker = await spawn(
            *("-m", "kmsg_webhook.messaging.cli", "worker", "--store", store),
            *("--log-format", "json", "--poll-s", "0.1", *args),
            env=env,
        )
        processes.append(worker)
        if ready:
            await worker.wait_logged(
                logger="kmsg_webhook.messaging.worker", services=_services(args)
            )
        return worker

    return start


def _services(args: tuple[str, ...]) -> list[str]:
    return [
        name
        for name, off, on in (
            ("queue", "--no-queue", None),
            ("tracking", "--no-tracking", None),
            ("webhooks", None, "--with-webhooks"),
        )
        if (off is not None and off not in args) or (on is not None and on in args)
    ]


async def schedule(url: str, solapi: FakeSolapi, messages: list[dict[str, Any]]) -> None:
    """Store ``messages`` as jobs due now (nothing is sent by this process)."""
    jobs = job_store_from_url(url)
    provider = SolapiProvider(
        SolapiConfig(
            api_key=solapi.api_key,
            api_secret=solapi.api_secret,
            default_from="0212345678",
            kakao_pf_id="PF1",
            base_url=solapi.url,
        )
    )
    kmsg = KMsg([provider], jobs=jobs, defaults=KMsgDefaults(kakao_plus_id="@brand"))
    try:
        batch = await kmsg.send(messages, scheduled_at=datetime.now(UTC))
        assert all(isinstance(r, Ok) for r in batch.results), batch
    finally:
        await kmsg.aclose()
        await jobs.close()


ORDERS = 4


async def test_the_worker_sends_tracks_falls_back_and_reports(
    sql_store_url: str, solapi: ReportingSolapi, start_worker: Any, wait_until: WaitUntil
) -> None:
    seen: Counter[str] = Counter()

    async def receive(request: web.Request) -> web.Response:
        await request.read()
        seen[request.headers["webhook-id"]] += 1
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/hooks", receive)
    async with serve_app(app) as base:
        async with WebhookRuntimeService(
            persistence=sql_store_url,
            dispatch=False,
            security=SecurityOptions(allow_private_hosts=True),
        ) as runtime:
            await runtime.add_endpoint(
                EndpointInput(
                    url=f"{base}/hooks",
                    events=[WebhookEventType.MESSAGE_SENT, WebhookEventType.MESSAGE_FAILED],
                )
            )
        await schedule(
            sql_store_url,
            solapi,
            [
                {
                    "type": "ALIMTALK",
                    "to": f"010-2222-{n:04d}",
                    "templateId": "KA01",
                    "variables": {"name": "홍길동"},
                    "messageId": f"order-{n}",
                    "failover": {"enabled": True, "fallbackContent": "문자로 안내드립니다"},
                }
                for n in range(1, ORDERS + 1)
            ],
        )
        worker = await start_worker(
            sql_store_url,
            solapi.env(),
            *("--worker-id", "w1", "--first-check-s", "0", "--metrics-port", "0"),
            *("--with-webhooks", "--allow-private-hosts", "--rate-limit", "solapi=50:1"),
        )
        started = worker.logged(worker_id="w1", services=["queue", "tracking", "webhooks"])[0]
        port = started["metrics_port"]
        assert started["store"] == redact_url(sql_store_url)
        wanted = {f"order-{n}:message.failed" for n in range(1, ORDERS + 1)} | {
            f"order-{n}:api-fallback:message.sent" for n in range(1, ORDERS + 1)
        }
        await wait_until(lambda: wanted <= set(seen), 90, "the failures and fallbacks delivered")

        tracking = tracking_store_from_url(sql_store_url)
        try:
            for n in range(1, ORDERS + 1):
                record = await tracking.get(f"order-{n}")
                assert record is not None and record.failover is not None
                assert record.failover.status is ApiAttemptStatus.SENT
        finally:
            await tracking.close()
        for path, answer in (("healthz", {"status": "ok"}), ("readyz", {"status": "ready"})):
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/{path}") as response,
            ):
                assert (response.status, await response.json()) == (200, answer)
        samples = await scrape(port)
        jobs_sent = ("kmsg_jobs_total", (("outcome", "sent"), ("provider", "solapi")))
        assert samples[jobs_sent] == ORDERS
        assert samples[("kmsg_fallbacks_total", (("status", "sent"),))] == ORDERS
        assert samples[("kmsg_tracking_checks_total", (("status", "FAILED"),))] == ORDERS
        assert samples[("kmsg_stored_jobs", (("status", "sent"),))] == ORDERS
        closed = ("kmsg_circuit_state", (("provider", "solapi"), ("state", "closed")))
        assert samples[closed] == 1
        # Burst 1 and four jobs sent at once: the later ones waited for tokens.
        assert samples[("kmsg_rate_limit_waits_total", (("provider", "solapi"),))] >= 1
        assert samples[("kmsg_webhook_deliveries_total", (("status", "success"),))] >= len(wanted)

        worker.proc.send_signal(signal.SIGTERM)
        assert await worker.exit_code() == 0
    assert worker.logged(message="worker w1 stopped")
    sent = worker.logged(logger="kmsg_webhook.messaging.worker", job_id="order-1")
    assert sent and sent[0]["status"] == "sent" and sent[0]["provider_id"] == "solapi"
    assert worker.logged(message_id="order-1", fallback_status="sent")
    # Each recipient got its ALIMTALK and one fallback SMS.
    assert solapi.sends_to() == Counter({f"0102222{n:04d}": 2 for n in range(1, ORDERS + 1)})


JOBS = 12
IN_FLIGHT = 4


QUEUE_ONLY = ("--no-tracking", "--concurrency", str(IN_FLIGHT))


async def held_mid_send(
    url: str, solapi: ReportingSolapi, start_worker: Any, wait_until: WaitUntil, *args: str
) -> WorkerProcess:
    """``JOBS`` SMS due now, every send held, and a queue worker with ``IN_FLIGHT`` of them in
    flight."""
    messages = [
        {"to": f"010-3333-{n:04d}", "text": f"안내 {n}", "messageId": f"n-{n}"} for n in range(JOBS)
    ]
    await schedule(url, solapi, messages)
    solapi.open.clear()
    worker = await start_worker(url, solapi.env(), *QUEUE_ONLY, *args)
    await wait_until(lambda: len(solapi.hits("/messages/v4/send")) == IN_FLIGHT, 60, "sends held")
    return worker


async def a_second_worker_sends_the_rest(
    url: str, solapi: ReportingSolapi, start_worker: Any, wait_until: WaitUntil, *args: str
) -> None:
    jobs = job_store_from_url(url)
    try:
        second = await start_worker(url, solapi.env(), *QUEUE_ONLY, *args)

        async def all_sent() -> bool:
            return (await jobs.count_by_status())[JobStatus.SENT] == JOBS

        await wait_until(all_sent, 60, "every job sent")
        assert await second.stop() == 0
    finally:
        await jobs.close()


async def test_sigterm_mid_send_records_what_was_in_flight_and_leaves_the_rest_claimable(
    sql_store_url: str, solapi: ReportingSolapi, start_worker: Any, wait_until: WaitUntil
) -> None:
    # Long leases: the jobs the second worker sends must never have been claimed.
    long_lease = ("--lease-s", "600")
    first = await held_mid_send(sql_store_url, solapi, start_worker, wait_until, *long_lease)
    first.proc.send_signal(signal.SIGTERM)
    await first.wait_logged(message="send queue stopped claiming; the sends in flight get 30.0s")
    solapi.open.set()
    assert await first.exit_code() == 0
    jobs = job_store_from_url(sql_store_url)
    try:
        assert await jobs.count_by_status() == {
            JobStatus.PENDING: JOBS - IN_FLIGHT,
            JobStatus.SENT: IN_FLIGHT,
            JobStatus.FAILED: 0,
        }
    finally:
        await jobs.close()
    await a_second_worker_sends_the_rest(
        sql_store_url, solapi, start_worker, wait_until, *long_lease
    )
    assert solapi.sends_to() == Counter({f"0103333{n:04d}": 1 for n in range(JOBS)})


async def test_sends_outliving_the_stop_grace_are_cancelled_and_sent_after_their_lease(
    sql_store_url: str, solapi: ReportingSolapi, start_worker: Any, wait_until: WaitUntil
) -> None:
    first = await held_mid_send(
        sql_store_url, solapi, start_worker, wait_until, "--lease-s", "3", "--stop-grace", "0.5"
    )
    first.proc.send_signal(signal.SIGTERM)
    assert await first.exit_code() == 0  # while its sends are still held
    assert first.logged(message="Sends still in flight after 0.5s were cancelled")
    jobs = job_store_from_url(sql_store_url)
    try:
        assert (await jobs.count_by_status())[JobStatus.PENDING] == JOBS
    finally:
        await jobs.close()
    solapi.open.set()
    # The cancelled sends' leases expire after 3 s; then a second worker sends them too.
    await a_second_worker_sends_the_rest(
        sql_store_url, solapi, start_worker, wait_until, "--lease-s", "3"
    )
    sends = solapi.sends_to()
    assert set(sends) == {f"0103333{n:04d}" for n in range(JOBS)}
    # At least once: only the cancelled sends (which the vendor may have taken) repeat.
    assert sum(sends.values()) - JOBS <= IN_FLIGHT


async def test_the_worker_refuses_what_it_cannot_run(
    solapi: ReportingSolapi, start_worker: Any, tmp_path: Any
) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    await migrate(url)
    env = solapi.env()
    await schedule(url, solapi, [{"to": "010-4444-0000", "text": "x", "messageId": "plain"}])
    jobs = job_store_from_url(url, crypto=FieldCryptoConfig.from_env(KEYS_ENV))
    kmsg = KMsg([SolapiProvider(SolapiConfig("k", "s", default_from="0212345678"))], jobs=jobs)
    try:
        later = datetime.now(UTC) + timedelta(days=1)
        sealed = {"to": "010-4444-0001", "text": "y", "messageId": "sealed"}
        assert isinstance(await kmsg.send(sealed, scheduled_at=later), Ok)
    finally:
        await kmsg.aclose()
        await jobs.close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = str(taken.getsockname()[1])
        cases = [
            ({}, (), 2, "no provider is configured"),
            (env, (), 5, "KMSG_WEBHOOK_KEYS"),  # a sealed job and no keys
            ({**env, **KEYS_ENV}, ("--no-queue", "--no-tracking"), 2, "nothing to run"),
            ({**env, **KEYS_ENV}, ("--rate-limit", "solapi"), 2, "provider=per_second"),
            ({**env, **KEYS_ENV}, ("--metrics-port", busy), 1, "cannot serve metrics"),
            ({**env, **KEYS_ENV}, ("--metrics-port", "70000"), 2, "not a TCP port"),
        ]
        for case_env, args, code, message in cases:
            worker = await start_worker(url, case_env, *args, ready=False)
            assert await worker.exit_code() == code, (args, worker.lines)
            assert any(message in line.get("raw", "") for line in worker.lines), worker.lines
    assert solapi.hits("/messages/v4/send") == []  # the refused workers sent nothing


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--first-check-s", "-1"), "argument --first-check-s: must be 0 or more, got -1"),
        (("--stop-grace=-0.5",), "argument --stop-grace: must be 0 or more, got -0.5"),
        (("--stop-grace", "inf"), "argument --stop-grace: must be 0 or more, got inf"),
        (("--rate-limit", "solapi=0"), "argument --rate-limit: takes provider=per_second"),
        (("--rate-limit", "solapi=-5:2"), "argument --rate-limit: takes provider=per_second"),
        (("--rate-limit", "solapi=nan"), "argument --rate-limit: takes provider=per_second"),
        (("--rate-limit", "solapi=5:0"), "argument --rate-limit: takes provider=per_second"),
    ],
)
async def test_bad_worker_numbers_are_usage_errors(args: tuple[str, ...], message: str) -> None:
    """Refused by argparse before anything opens: exit 2, the usage line, the option named."""
    refused = await kmsg_process("worker", *args, env={})
    assert refused.code == 2, refused.err
    assert refused.err.startswith("usage: ") and message in refused.err
    assert "Traceback" not in refused.err
