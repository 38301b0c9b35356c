"""The worker as a service: real ``kmsg-webhook worker`` processes that keep up, log what they
do as JSON, serve ``/metrics``/``/healthz``/``/readyz``, and wake on LISTEN/NOTIFY (Postgres).

Each worker runs with a long ``--poll-ms``, so anything delivered sooner than that proves the
wake-up under test (room opening, a retry falling due, a NOTIFY), not the poll.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from standardwebhooks import Webhook

from kmsg_webhook import (
    DeliveryFilter,
    DeliveryStatus,
    EndpointFilters,
    EndpointInput,
    EventMetadata,
    SecurityOptions,
    WebhookEvent,
    WebhookEventType,
    WebhookRuntimeService,
    generate_secret,
)
from support.d1 import LocalD1, fresh_tables
from support.servers import serve_app
from support.stores import server_dsn, temporary_store_url
from support.workers import WorkerProcess, scrape, spawn

PRIVATE = SecurityOptions(allow_private_hosts=True)
LONG_POLL = ("--poll-ms", "60000")


@dataclass
class Hits:
    """A local receiver: ``/ok`` answers 200, ``/down`` 500, ``/gone`` 410; counts by id."""

    base: str = ""
    ids: Counter[str] = field(default_factory=Counter)
    paths: Counter[str] = field(default_factory=Counter)


@pytest.fixture
async def hits() -> AsyncIterator[Hits]:
    rec = Hits()
    answers = {"/ok": 200, "/down": 500, "/gone": 410}

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        rec.ids[request.headers["webhook-id"]] += 1
        rec.paths[request.path] += 1
        return web.json_response({}, status=answers.get(request.path, 200))

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    async with serve_app(app) as base:
        rec.base = base
        yield rec


@pytest.fixture
async def start_worker(processes: list[WorkerProcess]) -> Any:
    async def start(
        store: str, name: str, *extra: str, env: dict[str, str] | None = None
    ) -> WorkerProcess:
        worker = await spawn(
            "-m", "kmsg_webhook.cli", "worker", "--store", store, "--worker-id", name,
            "--allow-private-hosts", "--log-format", "json", *extra, env=env or {},
        )  # fmt: skip
        processes.append(worker)
        await worker.wait_logged(logger="kmsg_webhook.worker", worker_id=name)
        return worker

    return start


async def emit(store: str, targets: dict[str, str], per_target: int, *, start: int = 0) -> None:
    """Register endpoints (name → URL, each filtered to its own provider) and emit rows."""
    async with WebhookRuntimeService(persistence=store, dispatch=False, security=PRIVATE) as rt:
        known = {e.url for e in await rt.list_endpoints()}
        for name, url in targets.items():
            if url not in known:
                await rt.add_endpoint(
                    EndpointInput(
                        url=url,
                        events=[WebhookEventType.MESSAGE_SENT],
                        filters=EndpointFilters(provider_id=(name,)),
                        name=name,
                    )
                )
        now = datetime.now(UTC)
        for name in targets:
            for n in range(start, start + per_target):
                await rt.emit(
                    WebhookEvent(
                        id=f"evt_{name}_{n}",
                        type="message.sent",
                        timestamp=now,
                        data={"n": n},
                        metadata=EventMetadata(provider_id=name),
                    )
                )


async def cli_json(*argv: str) -> Any:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kmsg_webhook.cli", *argv, "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


async def get_status(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


async def wait_for(predicate: Any, within: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not (await predicate() if asyncio.iscoroutinefunction(predicate) else predicate()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not within {within}s")
        await asyncio.sleep(0.05)


@pytest.fixture
async def pg_store() -> AsyncIterator[str]:
    async with temporary_store_url() as url:
        yield url


async def test_the_start_line_on_a_d1_store_shows_no_token(
    local_d1: LocalD1, start_worker: Any
) -> None:
    endpoints, deliveries = fresh_tables()
    store = local_d1.store_url(endpoint_table=endpoints, delivery_table=deliveries)
    worker = await start_worker(store, "w-d1", *LONG_POLL)
    assert await worker.stop() == 0
    start = worker.logged(logger="kmsg_webhook.worker")[0]
    assert "token=***" in start["store"]
    assert local_d1.token not in json.dumps(worker.lines)


# -- SQLite: keeping up, logs, metrics, stats --------------------------------------------------


async def test_worker_drains_a_backlog_without_waiting_for_polls_and_reports_everything(
    tmp_path: Path, hits: Hits, start_worker: Any
) -> None:
    store = f"sqlite:///{tmp_path / 'outbox.db'}"
    targets = {"ok": f"{hits.base}/ok", "down": f"{hits.base}/down", "gone": f"{hits.base}/gone"}
    await emit(store, {"ok": targets["ok"]}, 200)
    await emit(store, {"down": targets["down"], "gone": targets["gone"]}, 1)
    worker = await start_worker(
        store, "w1", *LONG_POLL, "--per-endpoint", "5", "--max-retries", "1",
        "--retry-delay-ms", "200", "--metrics-port", "0", "--summary-interval", "0.5",
    )  # fmt: skip
    start = worker.logged(logger="kmsg_webhook.worker")[0]
    assert start["store"] == store and start["field_crypto"] == "off"
    assert start["url_policy"] == "private hosts allowed"
    port = start["metrics_port"]

    # 200 rows to one endpoint, 5 at a time: a poll-bound claimer would need 40 polls of 60 s.
    await wait_for(lambda: hits.paths["/ok"] >= 200, 60, "the backlog drained")
    # The 500 is retried once when its 200 ms retry falls due, then exhausted.
    exhausted = await worker.wait_logged(status="exhausted")
    assert exhausted["level"] == "WARNING" and exhausted["attempt"] == 2
    retry = worker.logged(status="pending")[0]
    assert retry["level"] == "INFO" and retry["next_attempt_at"] and retry["http_status"] == 500
    disabled = await worker.wait_logged(logger="kmsg_webhook.endpoint", change="disabled")
    assert disabled["level"] == "WARNING" and "410" in disabled["reason"]
    await wait_for(lambda: len(worker.logged(status="success")) == 200, 30, "all recorded")
    ok = worker.logged(status="success")
    assert {"delivery_id", "endpoint_id", "latency_ms"} <= ok[0].keys()
    assert ok[0]["event_type"] == "message.sent" and ok[0]["attempt"] == 1
    summary = await worker.wait_logged(logger="kmsg_webhook.worker", due=0)
    assert {"rate_per_s", "in_flight", "scheduled", "leased", "oldest_due_age_s"} <= summary.keys()

    async with WebhookRuntimeService(persistence=store, dispatch=False) as rt:
        page = await rt.list_deliveries(DeliveryFilter(statuses=(DeliveryStatus.EXHAUSTED,)))
    (down,) = page.items
    gap = (down.attempts[1].started_at - down.attempts[0].started_at).total_seconds()
    assert gap < 20, f"the retry waited {gap:.1f}s: it was picked up by a poll, not when due"

    samples = await scrape(port)
    attempts = "kmsg_webhook_attempts_total"
    assert samples[(attempts, (("outcome", "success"), ("status_class", "2xx")))] == 200
    assert samples[(attempts, (("outcome", "retry"), ("status_class", "5xx")))] == 1
    assert samples[(attempts, (("outcome", "exhausted"), ("status_class", "5xx")))] == 1
    assert samples[(attempts, (("outcome", "failed"), ("status_class", "4xx")))] == 1
    assert samples[("kmsg_webhook_deliveries_total", (("status", "exhausted"),))] == 1
    assert samples[("kmsg_webhook_deliveries_total", (("status", "failed"),))] == 1  # the 410
    assert samples[("kmsg_webhook_endpoints", (("status", "error"),))] == 1
    assert samples[("kmsg_webhook_endpoints", (("status", "active"),))] == 2
    assert samples[("kmsg_webhook_due_deliveries", ())] == 0
    assert samples[("kmsg_webhook_delivery_lag_seconds_count", ())] == 200
    assert samples[("kmsg_webhook_attempt_duration_seconds_count", ())] == 203
    assert samples[("kmsg_webhook_endpoint_changes_total", (("change", "disabled"),))] == 1
    assert await get_status(f"http://127.0.0.1:{port}/healthz") == (200, {"status": "ok"})
    assert await get_status(f"http://127.0.0.1:{port}/readyz") == (200, {"status": "ready"})

    stats = await cli_json("stats", "--store", store)
    assert stats["deliveries"] == {
        "total": 202, "pending": 0, "success": 200, "failed": 1, "exhausted": 1
    }  # fmt: skip
    assert stats["queue"]["due"] == 0 and stats["queue"]["oldest_due_at"] is None
    troubled = {e["url"]: e for e in stats["endpoints"]["troubled"]}
    assert troubled[targets["gone"]]["status"] == "error"
    assert troubled[targets["down"]]["consecutive_failures"] == 1
    assert stats["endpoints"]["by_status"]["active"] == 2
    assert await worker.stop() == 0
    assert worker.logged(message="worker w1 stopped")


async def test_stats_json_shows_the_backlog_waiting(tmp_path: Path, hits: Hits) -> None:
    store = f"sqlite:///{tmp_path / 'outbox.db'}"
    await emit(store, {"ok": f"{hits.base}/ok"}, 3)
    stats = await cli_json("stats", "--store", store)
    queue = stats["queue"]
    assert (queue["due"], queue["scheduled"], queue["leased"]) == (3, 0, 0)
    assert queue["oldest_due_age_s"] >= 0 and queue["oldest_due_at"] is not None
    assert stats["deliveries"]["pending"] == 3
    listed = await cli_json("deliveries", "list", "--store", store)
    assert [d["status"] for d in listed["deliveries"]] == ["pending"] * 3
    assert listed["next_cursor"] is None and listed["unreadable"] == []
    shown = await cli_json("deliveries", "show", listed["deliveries"][0]["id"], "--store", store)
    assert shown["delivery"]["attempts"] == [] and json.loads(shown["delivery"]["payload"])
    endpoints = await cli_json("endpoints", "list", "--store", store)
    (endpoint,) = endpoints["endpoints"]
    assert endpoint["url"] == f"{hits.base}/ok" and "secret" not in endpoint


async def test_a_metrics_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with_port = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = with_port.sockets[0].getsockname()[1]
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kmsg_webhook.cli", "worker",
            "--store", f"sqlite:///{tmp_path / 'x.db'}", "--create", "--metrics-port", str(port),
            stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        with_port.close()
    assert proc.returncode == 1
    assert err.decode().strip().splitlines() == [
        f"error: cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    ]


async def test_a_worker_sends_signed_operational_messages_with_the_secret_from_the_env(
    tmp_path: Path, hits: Hits, start_worker: Any
) -> None:
    secret = generate_secret()
    verifier = Webhook(secret)
    messages: list[dict[str, Any]] = []

    async def operator(request: web.Request) -> web.Response:
        body = await request.read()
        messages.append(verifier.verify(body, dict(request.headers)))  # raises if unsigned
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/ops", operator)
    async with serve_app(app) as ops_base:
        ops_url = f"{ops_base}/ops"
        store = f"sqlite:///{tmp_path / 'outbox.db'}"
        await emit(store, {"gone": f"{hits.base}/gone", "down": f"{hits.base}/down"}, 1)
        worker = await start_worker(
            store, "w-ops", *LONG_POLL, "--max-retries", "0", "--operational-url", ops_url,
            "--operational-event", "endpoint.disabled",
            env={"KMSG_WEBHOOK_OPERATIONAL_SECRET": secret},
        )  # fmt: skip
        await wait_for(lambda: messages, 60, "the operational message arrived")
        await wait_for(lambda: hits.paths["/down"] == 1, 60, "the other delivery was sent")
        assert await worker.stop() == 0
    # Only the type asked for: the exhausted delivery to /down sends nothing.
    (message,) = messages
    assert message["type"] == "endpoint.disabled"
    assert message["data"]["url"] == f"{hits.base}/gone"
    assert secret not in json.dumps(worker.lines)


async def test_an_operational_url_without_its_secret_is_a_one_line_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KMSG_WEBHOOK_OPERATIONAL_SECRET"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kmsg_webhook.cli", "worker",
        "--store", f"sqlite:///{tmp_path / 'x.db'}", "--operational-url", "http://127.0.0.1:9/",
        stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, env=env,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert err.decode().strip().splitlines() == [
        "error: --operational-url needs its signing secret in $KMSG_WEBHOOK_OPERATIONAL_SECRET"
    ]


# -- Postgres: LISTEN/NOTIFY across processes ----------------------------------------------------


async def test_two_postgres_workers_wake_on_notify_and_send_each_delivery_once(
    pg_store: str, hits: Hits, start_worker: Any
) -> None:
    targets = {f"e{i}": f"{hits.base}/ok/{i}" for i in range(4)}
    await emit(pg_store, targets, 0)  # the schema and endpoints, no rows yet
    # The workers' connections carry a name of this test's own, so only theirs are dropped below.
    app = f"t18-{uuid.uuid4().hex[:8]}"
    workers = [
        await start_worker(
            f"{pg_store}&application_name={app}", name, *LONG_POLL, "--concurrency", "16"
        )
        for name in ("w1", "w2")
    ]
    # Both workers polled once at start and now sleep 60 s: only a NOTIFY wakes them.
    await emit(pg_store, targets, 100)
    await wait_for(lambda: len(hits.ids) == 400, 40, "rows emitted elsewhere were sent")
    assert max(hits.ids.values()) == 1, "a delivery was sent twice"

    def sent() -> list[int]:
        return [len(w.logged(status="success")) for w in workers]

    await wait_for(lambda: sum(sent()) == 400, 30, "every success logged")
    assert min(sent()) > 0, f"one worker never woke: {sent()}"

    # A dropped LISTEN connection is re-established, and the worker looks for rows at once.
    dsn = await server_dsn()
    conn = await asyncpg.connect(dsn)
    try:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1",
            f"{app} listener",
        )
    finally:
        await conn.close()
    assert killed == 2
    for worker in workers:  # each notices and listens again
        await worker.wait_logged(logger="kmsg_webhook.store", level="INFO")
    await emit(pg_store, targets, 25, start=100)
    await wait_for(lambda: len(hits.ids) == 500, 40, "rows emitted after the reconnect were sent")
    assert max(hits.ids.values()) == 1
    for worker in workers:
        assert await worker.stop() == 0


async def test_readyz_says_when_the_store_is_unreachable(start_worker: Any, pg_store: str) -> None:
    worker = await start_worker(pg_store, "w1", "--metrics-port", "0")
    start = worker.logged(logger="kmsg_webhook.worker")[0]
    port = start["metrics_port"]
    assert (await get_status(f"http://127.0.0.1:{port}/readyz"))[0] == 200
    dsn = await server_dsn()
    conn = await asyncpg.connect(dsn)
    try:
        schema = pg_store.rsplit("schema=", 1)[1]
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await conn.close()
    status, body = await get_status(f"http://127.0.0.1:{port}/readyz")
    assert status == 503 and body["status"] == "unavailable" and body["reason"]
    assert (await get_status(f"http://127.0.0.1:{port}/healthz"))[0] == 200
    await worker.stop()
