"""Fixtures of the whole-process tests: a store URL on PostgreSQL and the worker processes, which
are killed at teardown if a test left them running."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator

import pytest

from support.stores import temporary_store_url


@pytest.fixture
async def store_url() -> AsyncIterator[str]:
    async with temporary_store_url() as url:
        yield url


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
