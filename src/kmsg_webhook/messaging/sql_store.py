"""What the messaging module's SQL stores (tracking, send jobs) share: a database, the
family's named queries (``stores/sql/queries/<family>.<dialect>.sql``) and reads and writes run
with the database's retries.

Every query is reviewed text run through ``sa.text()``. Values bind by name: times as the
dialect stores them (the database's :class:`~kmsg_webhook.stores.sqlbind.Binding`), lists as
JSON text (read back with ``json_each`` or ``json_array_elements_text``), the rest as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ..stores.rows import dumps
from ..stores.sql.base import SqlDatabase
from ..stores.sqlbind import Binding
from ..stores.sqlfiles import NAMED_PARAMETER, queries, render, without_comments
from .filtered import FilteredQueries


class SqlQuery:
    """One named query's text and the parameters it binds, with times as ``binding`` stamps
    them."""

    def __init__(self, sql: str, binding: Binding) -> None:
        self.sql = sql
        self.parameters = frozenset(NAMED_PARAMETER.findall(sql))
        self._binding = binding

    def bind(self, values: Mapping[str, Any]) -> sa.TextClause:
        """The statement with the query's parameters bound from ``values`` (missing: NULL)."""
        return sa.text(self.sql).bindparams(
            *(self._parameter(name, values.get(name)) for name in sorted(self.parameters))
        )

    def _parameter(self, name: str, value: Any) -> sa.BindParameter[Any]:
        if isinstance(value, datetime):
            return sa.bindparam(name, self._binding.stamp(value))
        if isinstance(value, list | tuple):
            return sa.bindparam(name, dumps(list(value)), type_=sa.Text())
        return sa.bindparam(name, value)


class SqlStoreBase:
    """A store over one :class:`SqlDatabase`. ``owns_database``: :meth:`close` closes it."""

    #: The query family: ``queries/<family>.<dialect>.sql``.
    family: ClassVar[str]

    def __init__(self, db: SqlDatabase, *, owns_database: bool = False) -> None:
        self._db = db
        self._owns = owns_database
        self._listings = FilteredQueries(self._text, self._query)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._db.display_url!r})"

    async def init(self) -> None:
        await self._db.init()

    async def close(self) -> None:
        if self._owns:
            await self._db.close()

    def _text(self, name: str) -> str:
        text = queries(self._db.dialect, self.family)[name]
        return without_comments(render(text, self._db.names))

    def named(self, name: str) -> SqlQuery:
        """The family's query ``name``, rendered for the configured names."""
        return self._query(self._text(name))

    def _query(self, sql: str) -> SqlQuery:
        return SqlQuery(sql, self._db.binding)

    def filtered(self, name: str, values: Mapping[str, Any], **fill: str) -> sa.TextClause:
        """The named listing bound to ``values``: its ``{where}`` holds the family's ``filter``
        conditions whose parameter has a value, its other ``{placeholders}`` the texts in
        ``fill``."""
        return self._listings.query(name, values, **fill).bind(values)

    async def read(self, statement: sa.TextClause) -> list[dict[str, Any]]:
        async def op(conn: AsyncConnection, attempt: int) -> list[dict[str, Any]]:
            return [dict(r) for r in (await conn.execute(statement)).mappings()]

        return await self._db.run(op)

    async def write(self, statements: Sequence[sa.TextClause]) -> int:
        """Run write statements in one transaction; the rows they changed."""

        async def op(conn: AsyncConnection, attempt: int) -> int:
            await self._db.begin_write(conn)
            changed = 0
            for statement in statements:  # one each: rowcount is per statement on every driver
                changed += int((await conn.execute(statement)).rowcount)
            await conn.commit()
            return changed

        return await self._db.run(op)

    async def returning(self, statements: Sequence[sa.TextClause]) -> list[dict[str, Any]]:
        """Run writes ending in ``RETURNING`` (a claim, inserts) in one write transaction; the
        rows they return."""

        async def op(conn: AsyncConnection, attempt: int) -> list[dict[str, Any]]:
            await self._db.begin_write(conn)
            rows = [dict(r) for s in statements for r in (await conn.execute(s)).mappings()]
            await conn.commit()
            return rows

        return await self._db.run(op)
