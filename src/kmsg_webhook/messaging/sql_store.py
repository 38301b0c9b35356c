"""What the messaging module's SQL stores (tracking, send jobs) share: a database, named
claim queries, and reads and writes run with the database's retries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ..stores.sql.base import SqlDatabase
from ..stores.sql.tables import Timestamp
from ..stores.sqlfiles import queries, render, without_comments


class SqlStoreBase:
    """A store over one :class:`SqlDatabase`. ``owns_database``: :meth:`close` closes it."""

    def __init__(self, db: SqlDatabase, *, owns_database: bool = False) -> None:
        self._db = db
        self._owns = owns_database

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._db.display_url!r})"

    async def init(self) -> None:
        await self._db.init()

    async def close(self) -> None:
        if self._owns:
            await self._db.close()

    def named_query(self, family: str, name: str) -> sa.TextClause:
        """``queries/<family>.<dialect>.sql``'s ``name``, rendered for the configured names;
        ``:now`` and ``:lease_until`` bind as timestamps."""
        text = render(queries(self._db.dialect, family)[name], self._db.names)
        return sa.text(without_comments(text)).bindparams(
            sa.bindparam("now", type_=Timestamp()),
            sa.bindparam("lease_until", type_=Timestamp()),
        )

    async def claim_rows(
        self, claim: sa.TextClause, params: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """Run a claiming ``UPDATE ... RETURNING`` in a write transaction; the rows it returns."""

        async def op(conn: AsyncConnection, attempt: int) -> list[dict[str, Any]]:
            await self._db.begin_write(conn)
            rows = [dict(r) for r in (await conn.execute(claim, dict(params))).mappings()]
            await conn.commit()
            return rows

        return await self._db.run(op)

    async def read(self, query: sa.Select[Any]) -> list[dict[str, Any]]:
        async def op(conn: AsyncConnection, attempt: int) -> list[dict[str, Any]]:
            return [dict(r) for r in (await conn.execute(query)).mappings()]

        return await self._db.run(op)

    async def write(self, statement: sa.Executable) -> int:
        """Run one write statement in a transaction; the rows it changed."""

        async def op(conn: AsyncConnection, attempt: int) -> int:
            await self._db.begin_write(conn)
            result = await conn.execute(statement)
            await conn.commit()
            return int(getattr(result, "rowcount", 0))

        return await self._db.run(op)
