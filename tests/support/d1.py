"""D1 test fixtures: the Worker on a real local D1 engine, and a fault-injecting fake.

``local_d1``: ``adapters/d1-worker`` served by miniflare (workerd + its D1), started once per
test session by ``adapters/d1-worker/scripts/serve.mjs``. When its ``node_modules`` are missing
and npm is installed, the first D1 test installs them (``npm ci``, once). Without node or npm
the D1 tests skip with one line, except under ``CI=true`` where they fail. Tests get empty
tables by using fresh table names (``fresh_tables``), so the one database never needs a reset.

``fake_d1``: an aiohttp server on 127.0.0.1 speaking the same contract that answers from a
script: 429 with ``Retry-After``, 5xx, slow answers, malformed JSON, optionally after forwarding
the request to the local D1 (the request *was* applied, the answer is lost) — the failures the
real engine cannot produce on demand.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web

from kmsg_webhook import WebhookPersistence
from kmsg_webhook.stores.d1 import D1Client, d1_persistence_from_url
from support.servers import serve_app

WORKER_DIR = Path(__file__).resolve().parents[2] / "adapters" / "d1-worker"
READY_MARK = "D1_WORKER_READY"
START_TIMEOUT_S = 60.0
ACCOUNT_ID = "local-account"
DATABASE_ID = "local-database"


@dataclass(frozen=True)
class LocalD1:
    """A running local Worker: where it listens and the token it wants."""

    server_url: str
    token: str = field(repr=False)
    account_id: str = ACCOUNT_ID
    database_id: str = DATABASE_ID

    @property
    def base_url(self) -> str:
        return f"{self.server_url}/client/v4"

    def endpoint(self, mode: str = "query") -> str:
        return f"{self.base_url}/accounts/{self.account_id}/d1/database/{self.database_id}/{mode}"

    def client(self, **kwargs: Any) -> D1Client:
        return D1Client(
            self.account_id, self.database_id, token=self.token, base_url=self.base_url, **kwargs
        )

    def store_url(self, **params: object) -> str:
        host = self.server_url.removeprefix("http://")
        query = urlencode({"token": self.token, **{k: str(v) for k, v in params.items()}})
        return f"d1+http://{host}/{self.account_id}/{self.database_id}?{query}"


def fresh_tables() -> tuple[str, str]:
    """Table names no other test uses: an empty store on the shared database."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    return f"{prefix}_endpoints", f"{prefix}_deliveries"


_INSTALL_LOCK = threading.Lock()
_install_error: str | None = None


def unavailable_reason() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (the local D1 engine runs on node + miniflare)"
    if not (WORKER_DIR / "node_modules" / "miniflare").is_dir():
        return _install_engine()
    return None


def _install_engine() -> str | None:
    """Install the Worker's packages (miniflare) once per test session, so a fresh checkout's
    test command runs the D1 tests too; the reason when it cannot."""
    global _install_error
    with _INSTALL_LOCK:
        if (WORKER_DIR / "node_modules" / "miniflare").is_dir():
            return None
        if _install_error is not None:
            return _install_error
        npm = shutil.which("npm")
        if npm is None:
            _install_error = f"npm is not installed: the D1 engine cannot be set up in {WORKER_DIR}"
            return _install_error
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=WORKER_DIR,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            _install_error = f"`npm ci` in {WORKER_DIR} failed: {done.stderr.strip()[-500:]}"
        return _install_error


class _WorkerProcess:
    """The one miniflare process of this test session."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: Any = None
        self.local: LocalD1 | None = None

    def ensure(self) -> LocalD1:
        with self._lock:
            if self.local is not None and self._proc is not None and self._proc.poll() is None:
                return self.local
            self.local = self._start()
            return self.local

    def _start(self) -> LocalD1:
        token = secrets.token_urlsafe(24)
        env = {
            **os.environ,
            "D1_WORKER_API_TOKEN": token,
            # No telemetry, no update checks, no colours in captured output.
            "WRANGLER_SEND_METRICS": "false",
            "NO_UPDATE_NOTIFIER": "1",
            "NO_COLOR": "1",
        }
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (outlives this call)
        proc = subprocess.Popen(
            ["node", "scripts/serve.mjs", "--port", "0", "--database-id", DATABASE_ID],
            cwd=WORKER_DIR,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self._proc = proc
        found: list[str] = []
        done = threading.Event()

        def read_ready() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(READY_MARK):
                    found.append(line.split()[1])
                    break
            done.set()  # ready, or the output ended (the process died)
            # Keep draining so the child never blocks on a full pipe.
            for _ in proc.stdout:
                pass

        threading.Thread(target=read_ready, daemon=True).start()
        done.wait(START_TIMEOUT_S)
        if not found:
            self.stop()
            raise RuntimeError(f"the local D1 Worker did not start: {self._stderr_text()}")
        return LocalD1(server_url=found[0], token=token)

    def _stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        try:
            self._stderr.seek(0)
            return str(self._stderr.read())[-2000:]
        except (OSError, ValueError):
            return ""

    def stop(self) -> None:
        proc, self._proc, self.local = self._proc, None, None
        if proc is not None and proc.poll() is None:
            # Closing stdin asks serve.mjs to dispose miniflare and exit; then insist.
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


_WORKER = _WorkerProcess()
atexit.register(_WORKER.stop)


def require_local_d1() -> LocalD1:
    """The session's local D1, started on first use; skip (or fail under CI) without node."""
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"D1 tests cannot run under CI: {reason}", pytrace=False)
        pytest.skip(reason)
    return _WORKER.ensure()


@pytest.fixture(scope="session")
def local_d1() -> Iterator[LocalD1]:
    yield require_local_d1()
    _WORKER.stop()


async def d1_backend() -> WebhookPersistence:
    """The conformance suite's ``d1`` backend: empty tables on the shared local D1."""
    local = await asyncio.to_thread(require_local_d1)
    endpoints, deliveries = fresh_tables()
    return d1_persistence_from_url(
        local.store_url(endpoint_table=endpoints, delivery_table=deliveries, max_stored_attempts=5)
    )


# -- the fault-injecting fake ------------------------------------------------------------------


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeD1:
    """Answers each request with the next scripted action (default: ``forward`` or ``ok``).

    Actions: ``("forward",)``, ``("status", code, body, headers)``, ``("slow", seconds)``,
    ``("garbage",)``, and ``("applied", action)``: forward first (the request takes effect),
    then answer with ``action`` instead of the real answer.
    """

    token: str = "fake-token-0123456789"
    base_url: str = ""
    upstream: LocalD1 | None = None
    script: deque[tuple[Any, ...]] = field(default_factory=deque)
    seen: list[Seen] = field(default_factory=list)
    session: aiohttp.ClientSession | None = None

    def then(self, *actions: tuple[Any, ...]) -> FakeD1:
        self.script.extend(actions)
        return self

    def client(self, **kwargs: Any) -> D1Client:
        kwargs.setdefault("timeout", 1.0)
        kwargs.setdefault("backoff_initial", 0.01)
        kwargs.setdefault("backoff_max", 0.05)
        return D1Client(ACCOUNT_ID, DATABASE_ID, token=self.token, base_url=self.base_url, **kwargs)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.seen.append(Seen(request.path, dict(request.headers), body))
        action = self.script.popleft() if self.script else ("forward",)
        if action[0] == "applied":
            await self._forward(request.match_info["mode"], raw)
            action = action[1]
        return await self._answer(action, request.match_info["mode"], raw)

    async def _answer(self, action: tuple[Any, ...], mode: str, raw: bytes) -> web.StreamResponse:
        kind = action[0]
        if kind == "forward":
            status, text = await self._forward(mode, raw)
            return web.Response(status=status, text=text, content_type="application/json")
        if kind == "status":
            _, code, body, *rest = action
            headers = rest[0] if rest else {}
            return web.json_response(body, status=code, headers=headers)
        if kind == "slow":
            await asyncio.sleep(action[1])
            return web.json_response(_ok_body(raw))
        if kind == "garbage":
            return web.Response(status=200, text='{"result": [', content_type="application/json")
        raise AssertionError(f"unknown action {action!r}")

    async def _forward(self, mode: str, raw: bytes) -> tuple[int, str]:
        if self.upstream is None:
            return 200, json.dumps(_ok_body(raw))
        assert self.session is not None
        async with self.session.post(
            self.upstream.endpoint(mode),
            data=raw,
            headers={
                "Authorization": f"Bearer {self.upstream.token}",
                "Content-Type": "application/json",
            },
        ) as response:
            return response.status, await response.text()


def _ok_body(raw: bytes) -> dict[str, Any]:
    """A successful answer with one empty result per statement of the request."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = {}
    count = len(body["batch"]) if isinstance(body, dict) and "batch" in body else 1
    result = [{"results": [], "success": True, "meta": {"changes": 0}} for _ in range(count)]
    return {"result": result, "success": True, "errors": [], "messages": []}


@contextlib.asynccontextmanager
async def serve_fake_d1(upstream: LocalD1 | None = None) -> AsyncIterator[FakeD1]:
    fake = FakeD1(upstream=upstream)
    app = web.Application()
    app.router.add_post("/client/v4/accounts/{account}/d1/database/{db}/{mode}", fake.handle)
    # A client that gave up (timeout) disconnects; its slow handler is then cancelled at once.
    async with (
        aiohttp.ClientSession() as fake.session,
        serve_app(app, handler_cancellation=True) as base,
    ):
        fake.base_url = f"{base}/client/v4"
        yield fake


@pytest.fixture
async def fake_d1() -> AsyncIterator[FakeD1]:
    """A fake answering from its script alone (nothing is stored)."""
    async with serve_fake_d1() as fake:
        yield fake


@pytest.fixture
async def faulty_d1(local_d1: LocalD1) -> AsyncIterator[FakeD1]:
    """A fake in front of the local D1: requests reach the real engine unless scripted."""
    async with serve_fake_d1(upstream=local_d1) as fake:
        yield fake
