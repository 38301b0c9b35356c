"""PostgreSQL ``LISTEN``: wake workers when another process makes rows pending.

The store's inserts, recorded retries and re-queues send ``NOTIFY <channel>, '<epoch seconds>'``
in the same transaction, so a notification arrives only once the rows are committed; its payload
is the earliest due time of those rows. One dedicated connection per watching runtime listens.
Once ``LISTEN`` is in place, at start and after a lost connection is re-established (with a log
line per failed attempt), the callback is told to look now: rows committed before it (between a
dispatcher's first claim and the ``LISTEN``, or while disconnected) sent notifications nobody
heard. Polling stays the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg  # type: ignore[import-untyped]

from ..protocol import DueCallback

logger = logging.getLogger("kmsg_webhook.store")

Connect = Callable[[], Awaitable[asyncpg.Connection]]
#: How often an idle listening connection is checked (a half-open TCP connection stays silent).
CHECK_INTERVAL_S = 15.0
_RECONNECT_MAX_S = 30.0
# What a failed connect, LISTEN or check raises (network, server, driver state).
_FAILURES = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class PostgresWatch:
    """A running ``LISTEN`` on one channel; :meth:`close` stops it."""

    def __init__(
        self, connect: Connect, channel: str, callback: DueCallback, *, where: str
    ) -> None:
        self._connect = connect
        self._channel = channel
        self._callback = callback
        self._where = where
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen now if the database answers; otherwise keep trying in the background."""
        try:
            await self._listen()
        except _FAILURES as exc:
            logger.warning(
                "LISTEN on %s failed (%s); retrying, polling meanwhile", self._where, exc
            )
            self._lost.set()
        else:
            self._callback(None)  # rows committed before the LISTEN were announced to no one
        self._task = asyncio.get_running_loop().create_task(self._supervise())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop()

    async def _listen(self) -> None:
        conn = await self._connect()
        try:
            conn.add_termination_listener(self._on_terminated)
            await conn.add_listener(self._channel, self._on_notify)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        self._lost.clear()

    def _on_notify(self, conn: object, pid: int, channel: str, payload: str) -> None:
        try:
            at: datetime | None = datetime.fromtimestamp(float(payload), UTC)
        except ValueError:
            at = None
        self._callback(at)

    def _on_terminated(self, conn: object) -> None:
        self._lost.set()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=2)

    async def _supervise(self) -> None:
        delay = 0.5
        while True:
            if not self._lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._lost.wait(), timeout=CHECK_INTERVAL_S)
                if not self._lost.is_set() and not await self._alive():
                    self._lost.set()
                if not self._lost.is_set():
                    continue
            await self._drop()
            try:
                await self._listen()
            except _FAILURES as exc:
                logger.warning(
                    "LISTEN on %s lost; reconnecting in %.1fs (%s)", self._where, delay, exc
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RECONNECT_MAX_S)
                continue
            delay = 0.5
            logger.info("LISTEN on %s re-established", self._where)
            self._callback(None)  # notifications sent while we were away are lost: look now

    async def _alive(self) -> bool:
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        try:
            await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout=5)
        except _FAILURES:
            return False
        return True
