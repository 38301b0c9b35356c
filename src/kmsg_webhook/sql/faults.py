"""Which database errors are worth retrying, the retry policy, and URLs safe to print.

Only *transient* failures are retried: the connection is gone or refused, the server is
restarting, SQLite is busy, a deadlock or serialization failure rolled the statement back.
Everything else (a constraint, a bad query) fails at once. Retrying is safe because every store
operation is idempotent at the row level (``record`` checks the lease, inserts skip existing
keys); see ``docs/sql-backends.md``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from urllib.parse import urlsplit

import sqlalchemy.exc
from tenacity import (
    AsyncRetrying,
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
    return isinstance(exc, sqlalchemy.exc.DBAPIError) and any(
        text in message for text in (*_CLOSED_MESSAGES, *_SQLITE_BUSY)
    )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter on transient errors, within ``timeout`` seconds in all."""

    timeout: float = 30.0
    initial: float = 0.05
    maximum: float = 2.0

    def attempts(self) -> AsyncRetrying:
        """``async for attempt in policy.attempts(): with attempt: ...`` (reraises the last)."""
        return AsyncRetrying(
            retry=retry_if_exception(is_transient),
            stop=stop_before_delay(self.timeout),
            wait=wait_exponential(multiplier=self.initial, max=self.maximum)
            + wait_random(0, self.initial),
            reraise=True,
        )


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (also in ``?password=`` query values)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    redacted = url
    if password is not None:
        userinfo, _, hostinfo = parts.netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        redacted = redacted.replace(parts.netloc, f"{user}:***@{hostinfo}", 1)
    if parts.query:
        query = "&".join(
            f"{key}=***" if key.lower() in ("password", "passwd", "pwd") else item
            for item in parts.query.split("&")
            for key in [item.split("=", 1)[0]]
        )
        redacted = redacted.replace(f"?{parts.query}", f"?{query}", 1)
    return redacted
