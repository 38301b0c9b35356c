"""What the messaging module's D1 stores (tracking, send jobs) share.

D1 is SQLite: a store's table is made by the SQLite backend's numbered migration, and its
queries are the SQLite dialect's named queries (``stores/sql/queries/<family>.sqlite.sql``), run
with positional parameters because D1 binds only ``?NNN``. D1 has no interactive transactions:
each claim, save or release is one statement, and writes that belong together go as one batch
(D1 runs a batch as one transaction).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Self

from ..crypto.fields import FieldCrypto
from ..stores.d1.client import D1Client, D1Result, D1Statement
from ..stores.d1.queries import D1Query
from ..stores.d1.schema import quote_identifier
from ..stores.d1.url import d1_client_from_url, url_flag
from ..stores.sqlfiles import migrations, queries, quote, split_statements, without_comments
from .filtered import FilteredQueries


class D1StoreBase:
    """A messaging store in one table of a D1 database.

    ``table`` renames the family's default table (and its indexes) in the migration and the
    queries. ``initialize_schema``: the first call creates the table if missing (idempotent,
    one batch). ``close_client``: :meth:`close` closes the client (a store opened by URL).
    ``crypto``: field crypto for the rows (a subclass's :meth:`_prepare` takes it).
    """

    #: The query family (``queries/<family>.sqlite.sql``), the default table, the migration
    #: that creates it, and the URL parameter that renames it.
    family: ClassVar[str]
    default_table: ClassVar[str]
    migration: ClassVar[int]
    table_option: ClassVar[str]

    def __init__(
        self,
        client: D1Client,
        *,
        table: str | None = None,
        crypto: FieldCrypto | None = None,
        initialize_schema: bool = True,
        close_client: bool = False,
    ) -> None:
        table = self.default_table if table is None else table
        quote_identifier(table)
        self._client = client
        self._rename = _renamer(self.default_table, table)
        self._create = [
            D1Statement(statement)
            for m in migrations("sqlite")
            if m.version == self.migration
            for statement in split_statements(self._rename(m.sql))
        ]
        self._initialize = initialize_schema
        self._close_client = close_client
        self._ready = False
        self._init_lock = asyncio.Lock()
        self._listings = FilteredQueries(self.named, D1Query.of)
        self._prepare(crypto)

    def _prepare(self, crypto: FieldCrypto | None) -> None:
        """Set up the row codec and load the queries."""
        raise NotImplementedError

    @classmethod
    def from_url(
        cls, url: str, *, crypto: FieldCrypto | None = None, initialize_schema: bool = True
    ) -> Self:
        """The store a D1 store URL names, owning its client (its table from the URL's
        ``table_option`` parameter; ``auto_init=false`` turns ``initialize_schema`` off)."""
        client, location = d1_client_from_url(url)
        options = location.options
        return cls(
            client,
            table=options.get(cls.table_option),
            crypto=crypto,
            initialize_schema=initialize_schema and url_flag(options, "auto_init", True),
            close_client=True,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._client!r})"

    def named(self, name: str) -> str:
        """The family's named query ``name`` for this store's table (``:name`` parameters),
        without its comments."""
        return without_comments(self._rename(queries("sqlite", self.family)[name]))

    def filtered(self, name: str, values: Mapping[str, Any], **fill: str) -> D1Statement:
        """The named listing bound to ``values``: its ``{where}`` holds the family's ``filter``
        conditions whose parameter has a value (not ``None``), its other ``{placeholders}``
        the texts in ``fill``."""
        return self._listings.query(name, values, **fill).bind(values)

    async def init(self) -> None:
        if self._ready:
            return
        async with self._init_lock:
            if not self._ready and self._initialize:
                await self._client.batch(self._create)
            self._ready = True

    async def close(self) -> None:
        if self._close_client:
            await self._client.close()

    async def run(self, statements: Sequence[D1Statement]) -> list[D1Result]:
        """Run ``statements`` as one batch (after :meth:`init`); one result each."""
        await self.init()
        return await self._client.batch(statements)

    async def read(self, statement: D1Statement) -> list[dict[str, Any]]:
        [result] = await self.run([statement])
        return result.rows

    async def write(self, statements: Sequence[D1Statement]) -> int:
        """Run write statements as one batch; the rows they changed."""
        return sum(result.changes for result in await self.run(statements))

    async def returning(self, statements: Sequence[D1Statement]) -> list[dict[str, Any]]:
        """Run writes ending in ``RETURNING`` (a claim) as one batch; the rows they return."""
        return [row for result in await self.run(statements) for row in result.rows]


def _renamer(default: str, table: str) -> Callable[[str], str]:
    index = re.compile(rf"\bidx_{default}_(\w+)")
    name = re.compile(rf"\b{default}\b")

    def rename(sql: str) -> str:
        sql = index.sub(lambda m: quote(f"idx_{table}_{m[1]}"), sql)
        return name.sub(quote(table), sql)

    return rename
