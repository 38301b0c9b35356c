"""The ``kmsg-webhook`` command line, driven in-process through ``cli.main([...])``.

Store commands run against a SQLite file in a temporary directory (one case against a Postgres
schema). The store they inspect is seeded once per module by real runtimes sending to a local
aiohttp receiver, then copied for each test. ``listen`` is a blocking server: it runs as a
subprocess.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from kmsg_webhook import (
    DeliveryFilter,
    DeliveryStatus,
    EndpointInput,
    HealthPolicy,
    ManualClock,
    SecurityOptions,
    WebhookConfig,
    WebhookEndpoint,
    WebhookEvent,
    WebhookEventType,
    WebhookRuntimeService,
    generate_secret,
)
from kmsg_webhook.cli import STORE_ENV
from kmsg_webhook.signing import Signer
from kmsg_webhook.stores.sqlfiles import schema_version
from kmsg_webhook.stores.url import migrate_url, persistence_from_url
from support.cli import Run, cli
from support.servers import serve_app
from support.stores import drop_schema, free_port, new_schema, server_dsn

SENT = WebhookEventType.MESSAGE_SENT
FAILED = WebhookEventType.MESSAGE_FAILED
PRIVATE = SecurityOptions(allow_private_hosts=True)


def table_ids(out: str) -> list[str]:
    """The first column of a printed table's rows (the ids)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("--")) + 1
    rows = []
    for line in lines[start:]:
        if not line.strip() or line.startswith(("(none)", "more:")):
            break
        rows.append(line.split()[0])
    return rows


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def event(event_id: str, event_type: WebhookEventType = SENT) -> WebhookEvent:
    return WebhookEvent(
        id=event_id, type=event_type, timestamp=datetime.now(UTC), data={"id": event_id}
    )


# -- a seeded store ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    """What the seeded store holds.

    Endpoint ``ok`` answers 200, ``bad`` answers 400 (deliveries end ``failed`` at once).
    ``evt_old`` (to both) was sent 40 days ago; ``evt_1``-``evt_3`` (to both) and ``evt_f``
    (``message.failed``, only ``ok`` subscribes) were sent now; ``evt_p`` (to both) is stored
    but not sent yet. 11 deliveries: 5 success, 4 failed, 2 pending.
    """

    url: str
    ok: str
    bad: str
    deliveries: dict[tuple[str, str], str]  # (event id, "ok" | "bad") -> delivery id

    def delivery(self, event_id: str, endpoint: str) -> str:
        return self.deliveries[(event_id, endpoint)]


async def _seed(url: str) -> Seeded:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=200 if request.path == "/ok" else 400, text="answer")

    app = web.Application()
    app.router.add_post("/{name}", handle)
    # No health rule: "bad" fails since 40 days ago and must stay active for the later events.
    config = WebhookConfig(
        max_retries=0, jitter=False, timeout_ms=5_000, health=HealthPolicy(max_failing_ms=None)
    )
    async with serve_app(app) as base:
        old = ManualClock(datetime.now(UTC) - timedelta(days=40))
        async with WebhookRuntimeService(
            config, persistence=url, security=PRIVATE, clock=old
        ) as runtime:
            ok = await runtime.add_endpoint(EndpointInput(url=f"{base}/ok", events=[SENT, FAILED]))
            bad = await runtime.add_endpoint(EndpointInput(url=f"{base}/bad", events=[SENT]))
            await runtime.emit(event("evt_old"))
            await runtime.flush()
        async with WebhookRuntimeService(config, persistence=url, security=PRIVATE) as runtime:
            await asyncio.gather(*(runtime.emit(event(f"evt_{n}")) for n in (1, 2, 3)))
            await runtime.emit(event("evt_f", FAILED))
            await runtime.flush()
        async with WebhookRuntimeService(persistence=url, dispatch=False) as runtime:
            await runtime.emit(event("evt_p"))
            await runtime.flush()
            page = await runtime.list_deliveries(DeliveryFilter(), limit=100)
    names = {ok.id: "ok", bad.id: "bad"}
    statuses = [d.status for d in page.items]
    assert (
        statuses.count(DeliveryStatus.SUCCESS),
        statuses.count(DeliveryStatus.FAILED),
        statuses.count(DeliveryStatus.PENDING),
    ) == (5, 4, 2)
    return Seeded(
        url=url,
        ok=ok.id,
        bad=bad.id,
        deliveries={(d.event_id, names[d.endpoint_id]): d.id for d in page.items},
    )


@pytest.fixture(scope="module")
def seeded_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Seeded]:
    directory = tmp_path_factory.mktemp("seeded")
    return directory, asyncio.run(_seed(sqlite_url(directory / "store.db")))


@pytest.fixture
def seeded(seeded_template: tuple[Path, Seeded], tmp_path: Path) -> Seeded:
    """A private copy of the seeded store."""
    template, data = seeded_template
    copy = tmp_path / "seeded"
    shutil.copytree(template, copy)
    return Seeded(sqlite_url(copy / "store.db"), data.ok, data.bad, data.deliveries)


@pytest.fixture
def store(tmp_path: Path) -> str:
    """An empty, migrated SQLite store (commands other than migrate refuse a missing file)."""
    url = sqlite_url(tmp_path / "store.db")
    asyncio.run(migrate_url(url))
    return url


@pytest.fixture(autouse=True)
def no_store_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STORE_ENV, raising=False)


# -- migrate -------------------------------------------------------------------------------------


def _version_rows(path: Path) -> list[int]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT version FROM kmsg_webhook_schema_version ORDER BY version")
        return [version for (version,) in rows]
    finally:
        conn.close()


def test_migrate_prints_the_version_and_a_second_run_is_a_no_op(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = sqlite_url(tmp_path / "store.db")
    latest = schema_version("sqlite")
    first = cli(capsys, "migrate", "--store", url)
    assert (first.code, first.out) == (0, f"schema is at version {latest}\n")
    again = cli(capsys, "migrate", "--store", url)
    assert (again.code, again.out) == (0, f"schema is at version {latest}\n")
    assert _version_rows(tmp_path / "store.db") == list(range(1, latest + 1))


def test_migrate_a_postgres_schema(capsys: pytest.CaptureFixture[str]) -> None:
    dsn = asyncio.run(server_dsn())
    schema = new_schema()
    url = f"{dsn}?schema={schema}"

    async def versions() -> list[int]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                f'SELECT version FROM "{schema}".kmsg_webhook_schema_version ORDER BY version'
            )
            return [r["version"] for r in rows]
        finally:
            await conn.close()

    latest = schema_version("postgresql")
    printed = Run(0, f"schema is at version {latest}\n", "")
    try:
        assert cli(capsys, "migrate", "--store", url) == printed
        assert cli(capsys, "migrate", "--store", url) == printed
        assert asyncio.run(versions()) == list(range(1, latest + 1))
    finally:
        asyncio.run(drop_schema(dsn, schema))


def test_schema_prints_a_script_a_store_opens_without_migrating(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run = cli(capsys, "schema", "--dialect", "sqlite", "--delivery-table", "outbox")
    assert run.code == 0 and '"outbox"' in run.out
    conn = sqlite3.connect(tmp_path / "store.db")
    conn.executescript(run.out)
    conn.close()
    latest = schema_version("sqlite")
    assert _version_rows(tmp_path / "store.db") == list(range(1, latest + 1))

    async def open_unmigrated() -> list[WebhookEndpoint]:
        persistence = persistence_from_url(
            sqlite_url(tmp_path / "store.db"), delivery_table="outbox", initialize_schema=False
        )
        try:
            return await persistence.endpoint_store.list()
        finally:
            assert persistence.close is not None
            await persistence.close()

    assert asyncio.run(open_unmigrated()) == []


def test_schema_of_sqlite_takes_no_postgres_schema(capsys: pytest.CaptureFixture[str]) -> None:
    run = cli(capsys, "schema", "--dialect", "sqlite", "--schema", "tenant")
    assert (run.code, run.err) == (2, "error: SQLite has no schemas\n")


def test_migrate_memory_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    run = cli(capsys, "migrate", "--store", "memory://")
    assert run.code == 2
    assert run.err == "error: the memory:// store has no schema to migrate\n"


# -- endpoints -----------------------------------------------------------------------------------


def test_endpoints_add_prints_a_generated_secret_once(
    capsys: pytest.CaptureFixture[str], store: str
) -> None:
    run = cli(
        capsys, "endpoints", "add", "--store", store, "--url", "https://a.example.com/hooks",
        "--event", "message.sent", "--event", "message.failed", "--name", "crm",
        "--header", "X-Team = billing",
    )  # fmt: skip
    assert run.code == 0, run.err
    added, secret_line = run.out.splitlines()
    assert added.startswith("added ep_") and added.endswith(" https://a.example.com/hooks")
    secret = secret_line.split()[1]
    assert secret.startswith("whsec_") and "shown once" in secret_line
    listing = cli(capsys, "endpoints", "list", "--store", store)
    assert listing.code == 0
    assert table_ids(listing.out) == [added.split()[1]]
    assert "message.sent,message.failed" in listing.out
    assert secret not in listing.out


def test_endpoints_add_with_a_given_secret_does_not_print_it(
    capsys: pytest.CaptureFixture[str], store: str
) -> None:
    secret = generate_secret()
    run = cli(
        capsys, "endpoints", "add", "--store", store, "--url", "https://a.example.com/hooks",
        "--event", "message.sent", "--secret", secret,
    )  # fmt: skip
    assert run.code == 0 and len(run.out.splitlines()) == 1
    assert secret not in run.out


def test_endpoints_add_refuses_a_duplicate_url(
    capsys: pytest.CaptureFixture[str], store: str
) -> None:
    args = ("endpoints", "add", "--store", store, "--url", "https://a.example.com/hooks")
    first = cli(capsys, *args, "--event", "message.sent")
    assert first.code == 0
    again = cli(capsys, *args, "--event", "message.failed")
    assert again.code == 2 and again.out == ""
    owner = first.out.split()[1]
    assert again.err == (
        f"error: Webhook endpoint URL https://a.example.com/hooks is already used by endpoint "
        f"{owner}\n"
    )


def test_endpoints_add_refuses_a_private_url_unless_allowed(
    capsys: pytest.CaptureFixture[str], store: str
) -> None:
    args = ("endpoints", "add", "--store", store, "--url", "http://127.0.0.1:9/hooks")
    refused = cli(capsys, *args, "--event", "message.sent")
    assert refused.code == 5
    assert refused.err.startswith("error: Endpoint URL host '127.0.0.1' is not public")
    assert "--allow-network 127.0.0.1/32 (SecurityOptions(allowed_networks=[...]))" in refused.err
    assert "--allow-private-hosts (allow_private_hosts=True)" in refused.err
    allowed = cli(capsys, *args, "--event", "message.sent", "--allow-private-hosts")
    assert allowed.code == 0 and allowed.out.startswith("added ep_")


def test_endpoints_add_ordered_and_verified(capsys: pytest.CaptureFixture[str], store: str) -> None:
    """Nothing listens on port 9: the challenge fails and the endpoint waits, pending."""
    args = ("endpoints", "add", "--store", store, "--event", "message.sent")
    run = cli(
        capsys, *args, "--url", "http://127.0.0.1:9/hooks", "--allow-private-hosts", "--verify",
        "--ordered",
    )  # fmt: skip
    assert run.code == 0, run.err
    assert run.out.splitlines()[1] == "status pending_verification"
    listing = cli(capsys, "endpoints", "list", "--store", store)
    assert "pending_verification" in listing.out


@pytest.mark.parametrize(
    ("url", "code", "reason"),
    [
        ("notaurl", 2, "scheme must be https (got 'none')"),
        ("ftp://a.example.com/hooks", 2, "scheme must be https (got 'ftp')"),
        ("https://a.example.com:0/hooks", 2, "port 0 is not a valid"),
        ("https://user:pw@a.example.com/hooks", 2, "userinfo"),
        ("https://10.0.0.1/hooks", 5, "is not public"),
        ("https://hooks.internal/hooks", 5, "local-only suffix"),
        ("http://a.example.com/hooks", 5, "must use https"),
    ],
)
def test_a_malformed_url_is_a_usage_error_and_a_policy_refusal_exits_5(
    capsys: pytest.CaptureFixture[str], store: str, url: str, code: int, reason: str
) -> None:
    run = cli(capsys, "endpoints", "add", "--store", store, "--url", url, "--event", "message.sent")
    assert run.code == code, run.err
    assert run.err.startswith("error: ") and reason in run.err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--header", "X-Team"], "error: --header takes Name=value, got 'X-Team'\n"),
        (
            ["--header", "webhook-signature=v1,forged"],
            "error: header webhook-signature is set by the sender (signature, body framing or "
            "connection) and cannot be given\n",
        ),
        (["--event", "message.nope"], "error: Unknown event type: 'message.nope'\n"),
    ],
)
def test_endpoints_add_refuses_bad_input(
    capsys: pytest.CaptureFixture[str], store: str, extra: list[str], message: str
) -> None:
    run = cli(
        capsys, "endpoints", "add", "--store", store, "--url", "https://a.example.com/hooks",
        "--event", "message.sent", *extra,
    )  # fmt: skip
    assert (run.code, run.out, run.err) == (2, "", message)
    assert table_ids(cli(capsys, "endpoints", "list", "--store", store).out) == []


def test_endpoints_disable_enable_remove(
    capsys: pytest.CaptureFixture[str], seeded: Seeded
) -> None:
    store = seeded.url

    def status_of(endpoint_id: str) -> str:
        out = cli(capsys, "endpoints", "list", "--store", store).out
        (line,) = [row for row in out.splitlines() if row.startswith(endpoint_id)]
        return line.split()[1]

    assert status_of(seeded.bad) == "active"
    assert cli(capsys, "endpoints", "disable", "--store", store, seeded.bad).out == (
        f"disabled {seeded.bad}\n"
    )
    assert status_of(seeded.bad) == "inactive"
    assert cli(capsys, "endpoints", "enable", "--store", store, seeded.bad).code == 0
    assert status_of(seeded.bad) == "active"
    assert cli(capsys, "endpoints", "remove", "--store", store, seeded.bad).out == (
        f"removed {seeded.bad}\n"
    )
    assert table_ids(cli(capsys, "endpoints", "list", "--store", store).out) == [seeded.ok]


@pytest.mark.parametrize("action", ["disable", "enable", "remove"])
def test_endpoints_unknown_id_is_exit_3(
    capsys: pytest.CaptureFixture[str], seeded: Seeded, action: str
) -> None:
    run = cli(capsys, "endpoints", action, "--store", seeded.url, "ep_missing")
    assert run.code == 3 and run.out == ""
    assert run.err.startswith("error: ") and "ep_missing" in run.err


# -- deliveries ----------------------------------------------------------------------------------


def _listed(capsys: pytest.CaptureFixture[str], store: str, *filters: str) -> list[str]:
    run = cli(capsys, "deliveries", "list", "--store", store, *filters)
    assert run.code == 0, run.err
    return table_ids(run.out)


def test_deliveries_list_and_its_filters(
    capsys: pytest.CaptureFixture[str], seeded: Seeded
) -> None:
    store, d = seeded.url, seeded.delivery
    everything = _listed(capsys, store)
    assert sorted(everything) == sorted(seeded.deliveries.values())
    assert everything[-2:] == sorted([d("evt_old", "ok"), d("evt_old", "bad")], reverse=True)
    assert set(_listed(capsys, store, "--status", "failed")) == {
        d(e, "bad") for e in ("evt_old", "evt_1", "evt_2", "evt_3")
    }
    assert set(_listed(capsys, store, "--status", "pending", "--status", "success")) == {
        d(e, "ok") for e in ("evt_old", "evt_1", "evt_2", "evt_3", "evt_f", "evt_p")
    } | {d("evt_p", "bad")}
    assert _listed(capsys, store, "--event-type", "message.failed") == [d("evt_f", "ok")]
    assert set(_listed(capsys, store, "--endpoint", seeded.bad, "--since", "7d")) == {
        d(e, "bad") for e in ("evt_1", "evt_2", "evt_3", "evt_p")
    }
    since = (datetime.now(UTC) - timedelta(days=7)).isoformat()
    assert len(_listed(capsys, store, "--since", since)) == 9
    assert _listed(capsys, store, "--status", "exhausted") == []


def test_deliveries_list_pages_with_a_cursor(
    capsys: pytest.CaptureFixture[str], seeded: Seeded
) -> None:
    seen: list[str] = []
    cursor: list[str] = []
    for _ in range(10):
        run = cli(capsys, "deliveries", "list", "--store", seeded.url, "--limit", "4", *cursor)
        page = table_ids(run.out)
        seen += page
        more = [line for line in run.out.splitlines() if line.startswith("more: --cursor ")]
        if not more:
            break
        assert len(page) == 4
        cursor = ["--cursor", more[0].removeprefix("more: --cursor ")]
    assert seen == _listed(capsys, seeded.url)
    assert len(seen) == len(set(seen)) == 11


def test_deliveries_list_rejects_a_bad_filter(capsys: pytest.CaptureFixture[str]) -> None:
    run = cli(capsys, "deliveries", "list", "--store", "memory://", "--since", "yesterday")
    assert run.code == 2 and "not a time or an age: 'yesterday'" in run.err
    run = cli(capsys, "deliveries", "list", "--store", "memory://", "--status", "sent")
    assert run.code == 2 and "invalid choice: 'sent'" in run.err


def test_deliveries_show_prints_the_attempts(
    capsys: pytest.CaptureFixture[str], seeded: Seeded
) -> None:
    delivery_id = seeded.delivery("evt_2", "bad")
    run = cli(capsys, "deliveries", "show", "--store", seeded.url, delivery_id)
    assert run.code == 0, run.err
    fields = dict((line[:13].strip(), line[15:]) for line in run.out.split("\n\n")[0].splitlines())
    assert fields["id"] == delivery_id
    assert fields["endpoint"] == seeded.bad
    assert fields["event"] == "evt_2 (message.sent)"
    assert (fields["status"], fields["attempts"], fields["next attempt"]) == ("failed", "1", "-")
    assert json.loads(fields["payload"])["data"] == {"id": "evt_2"}
    attempts = run.out.split("\n\n")[1].splitlines()
    assert attempts[0].split("  ")[:2] == ["#", "started (UTC)"]
    (row,) = attempts[2:]
    number, _, _, status, latency, error = row.split(maxsplit=5)
    assert (number, status, error) == ("1", "400", "HTTP 400: Bad Request")
    assert float(latency) > 0


def test_deliveries_show_of_a_pending_delivery_has_no_attempts(
    capsys: pytest.CaptureFixture[str], seeded: Seeded
) -> None:
    run = cli(capsys, "deliveries", "show", "--store", seeded.url, seeded.delivery("evt_p", "ok"))
    assert run.code == 0
    assert run.out.rstrip().endswith("(none)")


def test_deliveries_show_and_retry_unknown_id_is_exit_3(
    capsys: pytest.CaptureFixture[str], seeded: Seeded
) -> None:
    for action in ("show", "retry"):
        run = cli(capsys, "deliveries", action, "--store", seeded.url, "dlv_missing")
        assert run.code == 3 and run.out == ""
        assert run.err.startswith("error: ") and "dlv_missing" in run.err


def test_deliveries_retry_queues_a_finished_delivery(
    capsys: pytest.CaptureFixture[str], seeded: Seeded
) -> None:
    delivery_id = seeded.delivery("evt_1", "bad")
    run = cli(capsys, "deliveries", "retry", "--store", seeded.url, delivery_id)
    assert run.code == 0, run.err
    assert run.out.startswith(f"{delivery_id} is pending, due 20")
    assert delivery_id in _listed(capsys, seeded.url, "--status", "pending")


def test_replay_requeues_recent_failures(
    capsys: pytest.CaptureFixture[str], seeded: Seeded
) -> None:
    run = cli(capsys, "replay", "--store", seeded.url, "--since", "1h")
    assert (run.code, run.out) == (0, "re-queued 3 deliveries\n")
    d = seeded.delivery
    assert set(_listed(capsys, seeded.url, "--status", "pending")) == {
        d("evt_1", "bad"), d("evt_2", "bad"), d("evt_3", "bad"), d("evt_p", "ok"), d("evt_p", "bad")
    }  # fmt: skip
    assert _listed(capsys, seeded.url, "--status", "failed") == [d("evt_old", "bad")]
    only_ok = cli(
        capsys, "replay", "--store", seeded.url, "--since", "60d", "--endpoint", seeded.ok
    )
    assert only_ok.out == "re-queued 0 deliveries\n"  # the ok endpoint has no failures


def test_purge_deletes_old_finished_deliveries(
    capsys: pytest.CaptureFixture[str], seeded: Seeded
) -> None:
    run = cli(capsys, "purge", "--store", seeded.url, "--older-than", "30d", "--yes")
    assert run.code == 0, run.err
    assert run.out.startswith("purged 2 finished deliveries created before ")
    remaining = _listed(capsys, seeded.url)
    assert len(remaining) == 9
    assert not {seeded.delivery("evt_old", "ok"), seeded.delivery("evt_old", "bad")} & set(
        remaining
    )
    again = cli(capsys, "purge", "--store", seeded.url, "--older-than", "30d")
    assert again.out.startswith("purged 0 ")  # nothing to delete: nothing to confirm


# -- the store URL -------------------------------------------------------------------------------


def test_store_is_required_without_the_environment_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = cli(capsys, "endpoints", "list")
    assert run.code == 2 and run.out == ""
    assert "the following arguments are required: --store" in run.err


def test_the_environment_variable_is_read_at_each_call(
    capsys: pytest.CaptureFixture[str],
    seeded: Seeded,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # The parser is built per main() call, so a variable set after an earlier call counts.
    assert cli(capsys, "deliveries", "list").code == 2
    monkeypatch.setenv(STORE_ENV, seeded.url)
    listing = cli(capsys, "endpoints", "list")
    assert listing.code == 0, listing.err
    assert sorted(table_ids(listing.out)) == sorted([seeded.ok, seeded.bad])
    # --store still wins over the variable.
    other = cli(capsys, "endpoints", "list", "--store", sqlite_url(tmp_path / "none.db"))
    assert other.code == 4 and "no SQLite database at" in other.err


# -- demo ----------------------------------------------------------------------------------------


@pytest.fixture
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Temporary files (the demo's default SQLite outbox) go below ``tmp_path``."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_demo_on_the_memory_store(capsys: pytest.CaptureFixture[str]) -> None:
    run = cli(capsys, "demo", "--store", "memory://")
    assert run.code == 0, run.out + run.err
    assert "store      memory://" in run.out
    assert "6 deliveries, all succeeded: True" in run.out


def test_demo_on_its_default_sqlite_outbox(
    capsys: pytest.CaptureFixture[str], temp_dir: Path
) -> None:
    run = cli(capsys, "demo")
    assert run.code == 0, run.out + run.err
    (outbox,) = temp_dir.glob("kmsg-demo-*/outbox.db")
    assert f"store      sqlite:///{outbox}" in run.out
    assert "6 deliveries, all succeeded: True" in run.out


def test_the_demo_stands_on_the_core_without_messaging() -> None:
    probe = (
        "import sys, kmsg_webhook.demo; "
        "print(sorted(m for m in sys.modules if m.startswith('kmsg_webhook.messaging')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"


# -- listen (a subprocess) -------------------------------------------------------------------------


@pytest.fixture
async def listener() -> AsyncIterator[tuple[str, str, asyncio.subprocess.Process]]:
    """``kmsg-webhook listen`` on a free port: (URL, secret, process)."""
    secret = generate_secret()
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-u", "-m", "kmsg_webhook.cli", "listen", "--port", str(port),
        "--secret", secret, "--path", "/in",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        banner = await asyncio.wait_for(proc.stdout.readline(), 20)
        url = f"http://127.0.0.1:{port}/in"
        assert banner.decode() == f"listening on {url} (Ctrl-C to stop)\n"
        yield url, secret, proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _post(session: aiohttp.ClientSession, url: str, body: bytes, secret: str) -> int:
    headers = Signer(secret).headers(
        msg_id="evt_listen", timestamp=int(time.time()), body=body, event_type="message.sent"
    )
    # The banner is printed just before the server binds: retry a refused connection briefly.
    for _ in range(100):
        try:
            async with session.post(
                url, data=body, headers={**headers, "content-type": "application/json"}
            ) as response:
                return response.status
        except aiohttp.ClientConnectorError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"nothing listens on {url}")


async def test_listen_verifies_and_prints_each_event(
    listener: tuple[str, str, asyncio.subprocess.Process],
) -> None:
    url, secret, proc = listener
    body = WebhookEvent(
        id="evt_listen", type=SENT, timestamp=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        data={"text": "안녕"},
    ).to_json().encode()  # fmt: skip
    async with aiohttp.ClientSession() as session:
        assert await _post(session, url, body, generate_secret()) == 401  # another secret
        assert await _post(session, url, body, secret) == 200
    assert proc.stdout is not None
    refused = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
    assert refused == {
        "verified": False,
        "status": 401,
        "reason": "invalid_signature",
        "detail": refused["detail"],
        "method": "POST",
        "path": "/in",
        "webhook_id": "evt_listen",
    }
    assert "signature" in refused["detail"]
    line = await asyncio.wait_for(proc.stdout.readline(), 10)
    assert json.loads(line) == {
        "verified": True,
        "id": "evt_listen",
        "type": "message.sent",
        "timestamp": "2026-01-02T03:04:05.000Z",
        "data": {"text": "안녕"},
        "metadata": {},
        "version": "1.0",
    }
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    assert await proc.stdout.read() == b""


@pytest.mark.parametrize(
    ("extra", "note"),
    [((), "gc threshold 20000"), (("--gc-threshold", "0"), "Python's gc settings")],
)
async def test_worker_tunes_its_own_collector_unless_told_not_to(
    tmp_path: Path, extra: tuple[str, ...], note: str
) -> None:
    # The worker process is only the dispatcher: it sets its own collector after start-up.
    store = f"sqlite:///{tmp_path / 'worker.db'}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-u", "-m", "kmsg_webhook.cli", "worker", "--store", store,
        "--worker-id", "w1", "--create", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    banner = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
    assert f"INFO kmsg_webhook.worker: worker w1 dispatching from {store} (" in banner
    assert f"; {note}; SIGTERM to stop)" in banner
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_worker_applies_retention_from_its_flags(seeded: Seeded) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-u", "-m", "kmsg_webhook.cli", "worker", "--store", seeded.url,
        "--worker-id", "w-retention", "--keep-success", "30d", "--keep-failed", "30d",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with WebhookRuntimeService(persistence=seeded.url, dispatch=False) as runtime:
            for _ in range(600):  # retention runs as the worker starts
                page = await runtime.list_deliveries(DeliveryFilter(), limit=100)
                if len(page.items) == 9:
                    break
                await asyncio.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    # evt_old's two deliveries (40 days old, success and failed) went; everything else stays.
    assert {d.event_id for d in page.items} == {"evt_1", "evt_2", "evt_3", "evt_f", "evt_p"}


def test_worker_refuses_a_malformed_age(capsys: pytest.CaptureFixture[str]) -> None:
    run = cli(capsys, "worker", "--store", "memory://", "--keep-success", "soon")
    assert run.code == 2
    assert "not an age like 90s, 15m, 2h or 7d: 'soon'" in run.err


def test_worker_refuses_a_metrics_port_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    # A port over 65535 would otherwise be served on another port (the number wrapped).
    run = cli(capsys, "worker", "--store", "memory://", "--metrics-port", "70000")
    assert run.code == 2
    assert "not a TCP port (0 to 65535): 70000" in run.err
