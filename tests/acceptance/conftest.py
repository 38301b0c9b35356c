"""Fixtures of the whole-process tests: a store URL on PostgreSQL and the worker processes, which
are killed at teardown if a test left them running."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator

import pytest

from support.stores import migrated_store_url, temporary_store_url
from support.workers import WorkerProcess, kill_all


@pytest.fixture
async def store_url() -> AsyncIterator[str]:
    async with temporary_store_url() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
async def sql_store_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A fresh SQLite or Postgres store, schema created."""
    async with migrated_store_url(request.param) as url:
        yield url


@pytest.fixture
async def processes() -> AsyncIterator[list[WorkerProcess]]:
    """Worker processes started through ``support.workers.spawn``."""
    started: list[WorkerProcess] = []
    yield started
    await kill_all(started)


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
