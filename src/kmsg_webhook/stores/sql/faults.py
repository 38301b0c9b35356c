"""Which database errors are worth retrying, and the retry policy.

Only *transient* failures are retried: the connection is gone or refused, the server is
restarting, SQLite is busy, a deadlock or serialization failure rolled the statement back.
Everything else (a constraint, a bad query) fails at once. Retrying is safe because every store
operation is idempotent at the row level (``record`` checks the lease, inserts skip existing
keys); see ``docs/sql-backends.md``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import sqlalchemy.exc
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_before_delay,
    wait_exponential,
    wait_random,
)

try:  # asyncpg is only needed by the Postgres backend
    import asyncpg  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - depends on the installation
    asyncpg = None

# SQLSTATEs of transient server conditions: connection exceptions (class 08), admin/crash
# shutdown and "cannot connect now" (57P01-57P03), too many connections, serialization failure,
# deadlock.
_TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300", "40001", "40P01"})
_CLOSED_MESSAGES = ("connection is closed", "connection was closed", "underlying connection")
# OS errors about local files (a SQLite path) do not heal by waiting; network ones may.
_LOCAL_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
_SQLITE_BUSY = ("database is locked", "database table is locked", "database schema is locked")

T = TypeVar("T")
logger = logging.getLogger("kmsg_webhook.store")


def is_transient(exc: BaseException) -> bool:
    """True for errors a retry may cure: lost or refused connections, busy SQLite, deadlocks."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _is_transient_here(current):
            return True
        if isinstance(current, sqlalchemy.exc.DBAPIError):
            current = current.orig
        else:
            current = current.__cause__
    return False


def is_missing_database(exc: BaseException) -> bool:
    """True when the server says the database named in the URL does not exist (3D000)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if asyncpg is not None and isinstance(current, asyncpg.InvalidCatalogNameError):
            return True
        if isinstance(current, sqlalchemy.exc.DBAPIError):
            current = current.orig
        else:
            current = current.__cause__
    return False


def _is_transient_here(exc: BaseException) -> bool:
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if isinstance(exc, OSError) and not isinstance(exc, _LOCAL_OS_ERRORS):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        message = str(exc).lower()
        return any(text in message for text in _SQLITE_BUSY)
    if asyncpg is not None:
        if isinstance(exc, asyncpg.PostgresConnectionError | asyncpg.ConnectionDoesNotExistError):
            return True
        if isinstance(exc, asyncpg.PostgresError):
            return exc.sqlstate in _TRANSIENT_SQLSTATES or exc.sqlstate.startswith("08")
        if isinstance(exc, asyncpg.InterfaceError):
            return any(text in str(exc) for text in _CLOSED_MESSAGES)
        if isinstance(exc, asyncpg.InternalClientError):
            # The protocol lost track of an operation the server cut off: the connection is
            # unusable, a fresh one is not.
            return str(exc).startswith("cannot switch to state")
    message = str(exc).lower()
    if isinstance(exc, sqlalchemy.exc.InvalidRequestError):
        # "This connection is closed": a kill invalidated the pooled connection mid-operation
        # (seen under load); the next attempt checks out a fresh one.
        return "connection is closed" in message
    return isinstance(exc, sqlalchemy.exc.DBAPIError) and any(
        text in message for text in (*_CLOSED_MESSAGES, *_SQLITE_BUSY)
    )


@dataclass(frozen=True, slots=True)
class StoreRetryPolicy:
    """Exponential backoff with jitter on transient errors, within ``timeout`` seconds in all.

    After failure *n* it waits ``initial * 2**(n-1)`` capped at ``maximum``, plus a random
    ``[0, initial]``, and gives up (raising the failure) when that wait would end ``timeout``
    seconds or more after the first attempt. Each retry is logged at WARNING on
    ``kmsg_webhook.stores.protocol``, naming ``label`` (the store, password redacted).
    """

    timeout: float = 30.0
    initial: float = 0.05
    maximum: float = 2.0
    label: str = "store"

    def _log(self, attempt: int, exc: BaseException, wait: float) -> None:
        logger.warning(
            "%s: attempt %d failed (%s); retrying in %.2fs (gives up %gs after the first)",
            self.label,
            attempt,
            describe(exc),
            wait,
            self.timeout,
        )

    def _before_sleep(self, state: RetryCallState) -> None:
        outcome = state.outcome
        failure = outcome.exception() if outcome is not None else None
        if failure is not None:
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            self._log(state.attempt_number + 1, failure, wait)

    async def call(self, operation: Callable[[int], Awaitable[T]]) -> T:
        """``await operation(attempt_number)``, again after each transient failure."""
        # The first attempt runs bare: every store call comes through here, and tenacity's
        # retry state is a reference cycle (~35 objects) that only the cyclic garbage
        # collector frees. Only a call that failed pays for it.
        start = time.monotonic()
        try:
            return await operation(1)
        except Exception as exc:
            if not is_transient(exc):
                raise
            first_wait = self.initial + random.uniform(0, self.initial)
            if time.monotonic() - start + first_wait >= self.timeout:
                raise
            self._log(1, exc, first_wait)
        await asyncio.sleep(first_wait)
        retrying = AsyncRetrying(
            retry=retry_if_exception(is_transient),
            stop=stop_before_delay(max(0.0, self.timeout - (time.monotonic() - start))),
            # tenacity counts from the second attempt: its n-th failure is our (n+1)-th
            wait=wait_exponential(multiplier=2 * self.initial, max=self.maximum)
            + wait_random(0, self.initial),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        number = 1
        async for attempt in retrying:
            with attempt:
                number += 1
                return await operation(number)
        raise AssertionError("unreachable: tenacity re-raises the last failure")


def describe(exc: BaseException) -> str:
    """A one-line description of a driver error (no SQL text, no parameters)."""
    orig = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) else None
    inner = orig if orig is not None else exc
    text = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__
