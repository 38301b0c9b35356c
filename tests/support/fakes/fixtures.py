"""The fixtures every provider test module builds the same way.

Each module binds them to its own fake server and its own ``make`` with one line,
``fake, sleep, provider, once = provider_fixtures(FakeX, make)``; pytest collects them by
those names. A factory, not a conftest, keeps them out of the rest of the suite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

import pytest

from kmsg_webhook.messaging import RetryPolicy

from .base import FakeServer
from .util import RecordingSleep


class _Closable(Protocol):
    async def aclose(self) -> None: ...


P = TypeVar("P", bound=_Closable)


def provider_fixtures(
    fake_factory: Callable[[], FakeServer], make: Callable[..., P]
) -> tuple[Any, Any, Any, Any]:
    """``fake`` (served for one test), ``sleep`` (records delays), ``provider`` (default
    retries) and ``once`` (no retries); both providers are closed after the test."""

    @pytest.fixture
    async def fake() -> AsyncIterator[FakeServer]:
        async with fake_factory() as server:
            yield server

    @pytest.fixture
    def sleep() -> RecordingSleep:
        return RecordingSleep()

    @pytest.fixture
    async def provider(fake: Any, sleep: RecordingSleep) -> AsyncIterator[P]:
        p = make(fake, sleep)
        yield p
        await p.aclose()

    @pytest.fixture
    async def once(fake: Any, sleep: RecordingSleep) -> AsyncIterator[P]:
        p = make(fake, sleep, retry=RetryPolicy.never())
        yield p
        await p.aclose()

    return fake, sleep, provider, once
