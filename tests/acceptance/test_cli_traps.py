"""The command line's safety rails ("no traps"), one test per trap.

Worker, demo, listen and the terminal prompt of ``purge`` run as real processes
(``sys.executable -m kmsg_webhook.cli``) against SQLite and Postgres stores and local aiohttp
receivers; the rest go through ``cli.main`` in-process, as in ``test_cli.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from kmsg_webhook import (
    DeliveryFilter,
    DeliveryStatus,
    EndpointInput,
    ManualClock,
    SecurityOptions,
    WebhookConfig,
    WebhookEvent,
    WebhookEventType,
    WebhookRuntimeService,
)
from kmsg_webhook.cli import STORE_ENV
from kmsg_webhook.stores.url import migrate_url
from support.cli import Run, cli
from support.crypto_keys import KEYS_ENV, config
from support.servers import Receiver
from support.stores import drop_schema, free_port, new_schema, server_dsn

SENT = WebhookEventType.MESSAGE_SENT
LOOPBACK = SecurityOptions(allowed_networks=["127.0.0.0/8"])


def event(event_id: str) -> WebhookEvent:
    return WebhookEvent(id=event_id, type=SENT, timestamp=datetime.now(UTC), data={"n": 1})


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMSG_WEBHOOK_")}
    return {**env, **extra}


async def _spawn(*argv: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-u", "-m", "kmsg_webhook.cli", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env or _env(),
    )  # fmt: skip


async def _finish(proc: asyncio.subprocess.Process) -> Run:
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()  # never leave a hung command behind the test
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


@pytest.fixture(autouse=True)
def no_store_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STORE_ENV, raising=False)
    for name in KEYS_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty store: a SQLite file, or a Postgres schema of its own."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        asyncio.run(migrate_url(url))
        yield url
        return
    dsn = asyncio.run(server_dsn())
    schema = new_schema()
    url = f"{dsn}?schema={schema}"
    asyncio.run(migrate_url(url))
    try:
        yield url
    finally:
        asyncio.run(drop_schema(dsn, schema))


@pytest.fixture
def sqlite_store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    asyncio.run(migrate_url(url))
    return url


async def _statuses(url: str) -> list[DeliveryStatus]:
    async with WebhookRuntimeService(persistence=url, dispatch=False) as runtime:
        page = await runtime.list_deliveries(DeliveryFilter(), limit=100)
        return [d.status for d in page.items]


async def _endpoint_ids(url: str) -> list[str]:
    async with WebhookRuntimeService(persistence=url, dispatch=False) as runtime:
        return [e.id for e in await runtime.list_endpoints()]


# -- the URL policy's allow-list -------------------------------------------------------------------


async def test_a_worker_allowed_a_network_delivers_there_and_one_without_names_the_refusal(
    store_url: str, receiver: Receiver
) -> None:
    async with WebhookRuntimeService(persistence=store_url, security=LOOPBACK) as runtime:
        endpoint = await runtime.add_endpoint(
            EndpointInput(url=f"{receiver.base_url}/in", events=[SENT])
        )
    # Public hosts only: the worker says at start which stored endpoint it will refuse.
    refusing = await _spawn("worker", "--store", store_url, "--worker-id", "w0")
    assert refusing.stdout is not None and refusing.stderr is not None
    lines: list[str] = []
    while not lines or "will be refused" not in lines[-1]:
        line = (await asyncio.wait_for(refusing.stderr.readline(), 60)).decode()
        assert line, "".join(lines)  # the worker ended without the warning
        lines.append(line)
    warning = lines[-1]
    assert f"endpoint {endpoint.id} ({receiver.base_url}/in) will be refused" in warning
    assert "--allow-network 127.0.0.1/32 (SecurityOptions(allowed_networks=[...]))" in warning
    refusing.send_signal(signal.SIGTERM)
    assert (await _finish(refusing)).code == 0

    async with WebhookRuntimeService(persistence=store_url, dispatch=False) as runtime:
        await runtime.emit(event("evt_allowed"))
    worker = await _spawn(
        "worker", "--store", store_url, "--allow-network", "127.0.0.0/8", "--poll-ms", "50"
    )
    try:
        for _ in range(600):
            if await _statuses(store_url) == [DeliveryStatus.SUCCESS]:
                break
            await asyncio.sleep(0.05)
        assert [r.path for r in receiver.received] == ["/in"]
    finally:
        worker.send_signal(signal.SIGTERM)
        done = await _finish(worker)
    assert done.code == 0 and "will be refused" not in done.err


def test_endpoints_add_takes_the_allow_list(
    capsys: pytest.CaptureFixture[str], sqlite_store: str
) -> None:
    args = ("endpoints", "add", "--store", sqlite_store, "--event", "message.sent")
    by_network = cli(
        capsys, *args, "--url", "http://127.0.0.1:9/in", "--allow-network", "127.0.0.0/8"
    )
    assert by_network.code == 0, by_network.err
    other = cli(capsys, *args, "--url", "http://10.0.0.7/in", "--allow-network", "127.0.0.0/8")
    assert other.code == 5 and "--allow-network 10.0.0.7/32" in other.err
    by_name = cli(
        capsys, *args, "--url", "https://a.hooks.internal/in", "--allow-host", "*.hooks.internal"
    )
    assert by_name.code == 0, by_name.err
    named = cli(capsys, *args, "--url", "https://billing.corp/in")
    assert named.code == 5
    assert "--allow-host billing.corp (SecurityOptions(allowed_hosts=[...]))" in named.err
    bad = cli(capsys, *args, "--url", "https://a.example.com/in", "--allow-network", "10.0.0.1/8")
    assert bad.code == 2 and "allowed_networks" in bad.err


# -- sealed values without keys ----------------------------------------------------------------


async def test_a_worker_without_keys_refuses_a_sealed_store_and_with_them_delivers(
    store_url: str, receiver: Receiver
) -> None:
    async with WebhookRuntimeService(
        persistence=store_url, security=LOOPBACK, field_crypto=config("A"), dispatch=False
    ) as runtime:
        await runtime.add_endpoint(EndpointInput(url=f"{receiver.base_url}/in", events=[SENT]))
        await runtime.emit(event("evt_sealed"))
    keyless = await _finish(
        await _spawn("worker", "--store", store_url, "--allow-network", "127.0.0.0/8")
    )
    assert keyless.code == 5
    (line,) = keyless.err.splitlines()
    assert line.startswith("error: the store holds sealed values (1 endpoint(s)")
    assert "KMSG_WEBHOOK_KEYS" in line and keyless.out == ""
    assert receiver.received == []
    assert await _statuses(store_url) == [DeliveryStatus.PENDING]

    worker = await _spawn(
        "worker", "--store", store_url, "--allow-network", "127.0.0.0/8", "--poll-ms", "50",
        env=_env(**KEYS_ENV),
    )  # fmt: skip
    await _stop_after_delivery(worker, receiver)


async def test_a_worker_with_allow_host_still_checks_what_the_name_resolves_to(
    sqlite_store: str, receiver: Receiver
) -> None:
    url = receiver.base_url.replace("127.0.0.1", "localhost") + "/in"
    both = SecurityOptions(allowed_hosts=["localhost"], allowed_networks=["127.0.0.0/8", "::1/128"])
    async with WebhookRuntimeService(persistence=sqlite_store, security=both, dispatch=False) as rt:
        await rt.add_endpoint(EndpointInput(url=url, events=[SENT]))
        await rt.emit(event("evt_by_name"))
    # The name alone passes the URL check, but its loopback answer is refused, with the hint.
    name_only = await _spawn(
        "worker", "--store", sqlite_store, "--allow-host", "localhost", "--poll-ms", "50"
    )
    assert name_only.stderr is not None
    try:
        line = b""
        while b"--allow-network" not in line:
            line = await asyncio.wait_for(name_only.stderr.readline(), 60)
            assert line, "the worker ended without reporting the refusal"
        assert b"Refusing to connect to 'localhost'" in line
        assert b"/32" in line or b"/128" in line
    finally:
        name_only.send_signal(signal.SIGTERM)
        await _finish(name_only)
    assert receiver.received == []
    await _requeue(sqlite_store)
    worker = await _spawn(
        "worker", "--store", sqlite_store, "--allow-host", "localhost",
        "--allow-network", "127.0.0.0/8", "--allow-network", "::1/128", "--poll-ms", "50",
    )  # fmt: skip
    await _stop_after_delivery(worker, receiver)


async def _stop_after_delivery(worker: asyncio.subprocess.Process, receiver: Receiver) -> None:
    """Wait (30 s at most) for ``worker`` to deliver to ``/in``, then stop it; it exits 0."""
    try:
        for _ in range(600):
            if receiver.received:
                break
            await asyncio.sleep(0.05)
        assert [r.path for r in receiver.received] == ["/in"]
    finally:
        worker.send_signal(signal.SIGTERM)
        assert (await _finish(worker)).code == 0


async def _requeue(url: str) -> None:
    """Queue every finished delivery for another round of attempts now."""
    async with WebhookRuntimeService(persistence=url, dispatch=False) as runtime:
        page = await runtime.list_deliveries(DeliveryFilter())
        for delivery in page.items:
            if delivery.status is not DeliveryStatus.PENDING:
                await runtime.retry_delivery(delivery.id)


def test_read_commands_say_when_they_show_sealed_values(
    capsys: pytest.CaptureFixture[str], sqlite_store: str
) -> None:
    async def seal_one() -> str:
        async with WebhookRuntimeService(
            persistence=sqlite_store, security=LOOPBACK, field_crypto=config("A"), dispatch=False
        ) as runtime:
            await runtime.add_endpoint(EndpointInput(url="http://127.0.0.1:9/in", events=[SENT]))
            await runtime.emit(event("evt_sealed"))
            await runtime.flush()
            (row,) = (await runtime.list_deliveries()).items
            return row.id

    delivery_id = asyncio.run(seal_one())
    shown = cli(capsys, "deliveries", "show", "--store", sqlite_store, delivery_id)
    assert shown.code == 0, shown.err
    note = "payload  (sealed by field crypto; set KMSG_WEBHOOK_KEYS to open it) kmsg:enc:v1:"
    assert note in shown.out
    as_json = cli(capsys, "deliveries", "show", "--store", sqlite_store, delivery_id, "--json")
    assert json.loads(as_json.out)["delivery"]["payload_sealed"] is True


# -- demo ----------------------------------------------------------------------------------------


async def _real_store(url: str, receiver: Receiver) -> str:
    """A store in use: one real endpoint with one delivery queued for it."""
    async with WebhookRuntimeService(persistence=url, security=LOOPBACK, dispatch=False) as rt:
        real = await rt.add_endpoint(
            EndpointInput(url=f"{receiver.base_url}/real", events=list(WebhookEventType))
        )
        await rt.emit(event("evt_real"))
    return real.id


async def test_demo_refuses_a_store_in_use_and_with_yes_stays_in_its_own_lane(
    store_url: str, receiver: Receiver
) -> None:
    real = await _real_store(store_url, receiver)
    refused = await _finish(await _spawn("demo", "--store", store_url))
    assert refused.code == 5 and refused.out == ""
    assert "already holds 1 endpoint(s)" in refused.err and "--yes" in refused.err

    ran = await _finish(await _spawn("demo", "--store", store_url, "--yes"))
    assert ran.code == 0, ran.out + ran.err
    assert "6 deliveries, all succeeded: True" in ran.out
    assert [
        r.path for r in receiver.received
    ] == []  # the real endpoint got none of the demo's events
    assert await _endpoint_ids(store_url) == [real]  # the demo's endpoint is gone
    async with WebhookRuntimeService(persistence=store_url, dispatch=False) as runtime:
        page = await runtime.list_deliveries(DeliveryFilter(endpoint_id=real))
    # The real endpoint's queued row was neither sent nor claimed by the demo.
    assert [(d.event_id, d.status, d.attempt_count) for d in page.items] == [
        ("evt_real", DeliveryStatus.PENDING, 0)
    ]


async def test_demo_never_prints_the_store_password(receiver: Receiver) -> None:
    dsn = await server_dsn()
    schema = new_schema()
    # Trust auth accepts any password, so the run succeeds with one in the URL.
    url = dsn.replace("://postgres@", "://postgres:s3cr3t-pw@") + f"?schema={schema}"
    assert "s3cr3t-pw" in url
    try:
        await migrate_url(url)
        ran = await _finish(await _spawn("demo", "--store", url))
    finally:
        await drop_schema(dsn, schema)
    assert ran.code == 0, ran.out + ran.err
    assert "store      postgresql://postgres:***@127.0.0.1" in ran.out
    assert "s3cr3t-pw" not in ran.out + ran.err


async def test_demo_refuses_a_mistyped_sqlite_path(tmp_path: Path) -> None:
    typo = tmp_path / "typo.db"
    ran = await _finish(await _spawn("demo", "--store", f"sqlite:///{typo}"))
    assert ran.code == 4 and "no SQLite database at" in ran.err
    assert not typo.exists()


async def test_real_events_emitted_during_the_demo_do_not_reach_its_endpoint(
    sqlite_store: str, receiver: Receiver
) -> None:
    await _real_store(sqlite_store, receiver)
    proc = await _spawn("demo", "--store", sqlite_store, "--yes")
    assert proc.stdout is not None
    line = b""
    while not line.startswith(b"endpoint"):
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
    demo_endpoint = line.split()[1].decode()
    # Another process emits a real event while the demo's endpoint exists.
    async with WebhookRuntimeService(persistence=sqlite_store, dispatch=False) as runtime:
        await runtime.emit(event("evt_real_during_demo"))
        page = await runtime.list_deliveries(DeliveryFilter(endpoint_id=demo_endpoint))
    assert "evt_real_during_demo" not in {d.event_id for d in page.items}
    done = await _finish(proc)
    assert done.code == 0, done.out + done.err
    assert "evt_real_during_demo" not in done.out


async def test_demo_removes_its_endpoint_when_interrupted(
    sqlite_store: str, receiver: Receiver
) -> None:
    real = await _real_store(sqlite_store, receiver)
    proc = await _spawn("demo", "--store", sqlite_store, "--yes")
    assert proc.stdout is not None
    while not (await asyncio.wait_for(proc.stdout.readline(), 60)).startswith(b"endpoint"):
        pass
    proc.send_signal(signal.SIGINT)
    done = await _finish(proc)
    assert done.code == 130, done.out + done.err
    assert "removed    ep_" in done.out
    assert await _endpoint_ids(sqlite_store) == [real]


# -- purge ---------------------------------------------------------------------------------------


async def _old_finished(url: str, count: int) -> None:
    """``count`` deliveries that ended ``exhausted`` 40 days ago (nothing listens there)."""
    clock = ManualClock(datetime.now(UTC) - timedelta(days=40))
    async with WebhookRuntimeService(
        WebhookConfig(max_retries=0), persistence=url, security=LOOPBACK, clock=clock
    ) as runtime:
        await runtime.add_endpoint(
            EndpointInput(url=f"http://127.0.0.1:{free_port()}/old", events=[SENT])
        )
        for n in range(count):
            await runtime.emit(event(f"evt_old_{n}"))
        await runtime.flush()


def test_purge_dry_run_and_refusal_without_a_terminal(
    capsys: pytest.CaptureFixture[str], store_url: str
) -> None:
    asyncio.run(_old_finished(store_url, 3))
    args = ("purge", "--store", store_url, "--older-than", "0s")
    dry = cli(capsys, *args, "--dry-run")
    assert (dry.code, dry.out.split(" created")[0]) == (0, "would purge 3 finished deliveries")
    refused = cli(capsys, *args)  # pytest's stdin is not a terminal
    assert refused.code == 5
    assert "not a terminal, so not asking: purge 3 finished deliveries" in refused.err
    assert "Pass --yes" in refused.err
    assert asyncio.run(_statuses(store_url)) == [DeliveryStatus.EXHAUSTED] * 3
    done = cli(capsys, *args, "--yes")
    assert done.code == 0 and done.out.startswith("purged 3 ")
    assert asyncio.run(_statuses(store_url)) == []


def _purge_on_a_terminal(url: str, answer: bytes) -> tuple[int, str]:
    """Run ``purge`` with a pseudo-terminal as stdin/stdout, answer its question."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: become the command
        os.execve(
            sys.executable,
            [
                sys.executable,
                "-m",
                "kmsg_webhook.cli",
                "purge",
                "--store",
                url,
                "--older-than",
                "0s",
            ],
            _env(),
        )
    seen = b""
    while b"[y/N]" not in seen:
        seen += os.read(fd, 1024)
    os.write(fd, answer + b"\n")
    while True:
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), seen.decode()


async def test_purge_asks_on_a_terminal(sqlite_store: str) -> None:
    await _old_finished(sqlite_store, 2)
    code, screen = await asyncio.to_thread(_purge_on_a_terminal, sqlite_store, b"n")
    assert code == 5 and "purge 2 finished deliveries created before" in screen
    assert "not confirmed; nothing was changed" in screen
    assert len(await _statuses(sqlite_store)) == 2
    code, screen = await asyncio.to_thread(_purge_on_a_terminal, sqlite_store, b"y")
    assert code == 0 and "purged 2 finished deliveries" in screen
    assert await _statuses(sqlite_store) == []


# -- listen --------------------------------------------------------------------------------------


async def test_listen_reports_every_request_and_a_bind_error_in_one_line() -> None:
    port = free_port()
    proc = await _spawn("listen", "--port", str(port), "--secret", "whsec_" + "A" * 32)
    assert proc.stdout is not None
    try:
        await asyncio.wait_for(proc.stdout.readline(), 30)  # the banner: bound
        busy = await _finish(await _spawn("listen", "--port", str(port), "--secret", "s"))
        assert busy.code == 1
        assert busy.err.splitlines() == [
            f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
        ]
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{port}/elsewhere", data=b"{}") as response:
                assert response.status == 404
            async with session.post(f"http://127.0.0.1:{port}/webhooks", data=b"{}") as response:
                assert response.status == 401
        lines = [await asyncio.wait_for(proc.stdout.readline(), 10) for _ in range(2)]
    finally:
        proc.send_signal(signal.SIGTERM)
        await _finish(proc)
    not_found, unsigned = map(json.loads, lines)
    assert (not_found["verified"], not_found["status"], not_found["path"]) == (
        False, 404, "/elsewhere"
    )  # fmt: skip
    assert (unsigned["status"], unsigned["reason"]) == (401, "missing_header")


def test_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    listen = cli(capsys, "listen", "--help")
    assert listen.code == 0
    assert "(default: 8787)" in listen.out and "(default: /webhooks)" in listen.out
    worker = cli(capsys, "worker", "--help")
    assert "(default: 500)" in worker.out and "(default: 30.0)" in worker.out
    deliveries = cli(capsys, "deliveries", "list", "--help")
    assert "(default: 50)" in deliveries.out


# -- opening the store ---------------------------------------------------------------------------


async def test_an_unreachable_store_is_retried_aloud_then_exit_4() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    run = await _finish(await _spawn("endpoints", "list", "--store", url, "--store-timeout", "1"))
    assert run.code == 4 and run.out == ""
    lines = run.err.splitlines()
    retries = [line for line in lines if " failed (ConnectionRefusedError" in line]
    assert len(retries) >= 2 and retries[0].startswith(
        f"postgresql store at {url}: attempt 1 failed"
    )
    assert lines[-1].startswith(f"error: cannot reach the postgresql store at {url}")


async def test_an_unreachable_d1_exits_4_within_the_store_timeout() -> None:
    # 50 attempts with the default backoff would take minutes; --store-timeout bounds them.
    url = f"d1+http://127.0.0.1:{free_port()}/acct/db?token=t&max_attempts=50"
    started = time.monotonic()
    run = await _finish(await _spawn("endpoints", "list", "--store", url, "--store-timeout", "1"))
    assert run.code == 4 and run.out == "", run.err
    assert time.monotonic() - started < 30
    assert "cannot connect to D1" in run.err
    assert "Unclosed client session" not in run.err


async def test_a_postgres_database_that_does_not_exist_exits_4() -> None:
    dsn = await server_dsn()
    url = dsn.rsplit("/", 1)[0] + "/no_such_database_kmsg"
    run = await _finish(await _spawn("endpoints", "list", "--store", url, "--store-timeout", "1"))
    assert run.code == 4 and run.out == "", run.err
    assert 'database "no_such_database_kmsg" does not exist' in run.err
    assert "create the database first" in run.err


def test_a_missing_sqlite_file_is_an_error_except_for_migrate_or_create(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "typo.db"
    url = f"sqlite:///{path}"
    listing = cli(capsys, "endpoints", "list", "--store", url)
    assert listing.code == 4 and f"no SQLite database at {path}" in listing.err
    assert not path.exists()
    nowhere = cli(capsys, "migrate", "--store", f"sqlite:///{tmp_path / 'no' / 'dir.db'}")
    assert nowhere.code == 4 and f"no directory {tmp_path / 'no'}" in nowhere.err
    created = cli(capsys, "endpoints", "list", "--store", url, "--create")
    assert created.code == 0 and path.exists()
    other = tmp_path / "fresh.db"
    assert cli(capsys, "migrate", "--store", f"sqlite:///{other}").code == 0
    assert sqlite3.connect(other).execute("SELECT count(*) FROM kmsg_webhook_endpoints").fetchone()


@pytest.mark.parametrize(
    ("command", "rest"),
    [
        (["worker"], []),
        (["endpoints", "list"], []),
        (["endpoints", "add"], ["--url", "https://a.example.com/", "--event", "message.sent"]),
        (["endpoints", "remove"], ["ep_x"]),
        (["deliveries", "list"], []),
        (["deliveries", "show"], ["dlv_x"]),
        (["replay"], ["--since", "1h"]),
        (["purge"], ["--older-than", "1d"]),
        (["rekey"], []),
    ],
)
@pytest.mark.parametrize("memory", ["memory://", "sqlite:///:memory:"])
def test_a_store_that_cannot_persist_is_refused(
    capsys: pytest.CaptureFixture[str], command: list[str], rest: list[str], memory: str
) -> None:
    run = cli(capsys, *command, "--store", memory, *rest)
    assert run.code == 2 and "keeps nothing once this command exits" in run.err


def test_limit_zero_and_unknown_ids_are_errors(
    capsys: pytest.CaptureFixture[str], sqlite_store: str
) -> None:
    zero = cli(capsys, "deliveries", "list", "--store", sqlite_store, "--limit", "0")
    assert zero.code == 2 and "must be 1 or more, got 0" in zero.err
    replay = cli(capsys, "replay", "--store", sqlite_store, "--since", "1h", "--endpoint", "ep_no")
    assert (replay.code, replay.out) == (3, "")
    assert replay.err == "error: Webhook endpoint ep_no not found\n"
    listing = cli(capsys, "deliveries", "list", "--store", sqlite_store, "--endpoint", "ep_no")
    assert listing.code == 3
