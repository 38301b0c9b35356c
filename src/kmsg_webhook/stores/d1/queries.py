"""The D1 store's SQL: the SQLite queries of ``stores/sql/queries/sqlite.sql``, bound by position.

D1 is SQLite, so it runs the SQLite backend's text (the claim and record rules are written once).
What differs is the client's business, here: D1 binds parameters by position only, so each
``:name`` becomes a numbered parameter; D1 has no ``BEGIN``, so what must be atomic is one
statement or one batch (D1 runs a batch as a single transaction). Lists of values are bound as
one JSON-array parameter and expanded with ``json_each``, so they never count against D1's
100-parameter limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from ..rows import dumps, to_millis
from ..sqlbind import Where
from ..sqlfiles import TableNames, numbered, queries, render, without_comments
from .client import D1Statement, D1Value


@dataclass(frozen=True, slots=True)
class D1Query:
    """A query whose ``:name`` parameters are numbered ``?1``, ``?2``... in order of first use
    (``names``); ``named`` is its text before numbering, for a ``{where}`` to fill in."""

    sql: str
    names: tuple[str, ...]
    named: str

    @classmethod
    def of(cls, sql: str) -> D1Query:
        """``sql`` without its comment lines (their ``:words`` bind nothing), numbered."""
        named = without_comments(sql).strip()
        return cls(*numbered(named, "?"), named)

    def bind(self, values: Mapping[str, object] | None = None, **named: object) -> D1Statement:
        """The statement with its parameters bound by name from ``values`` and keywords."""
        given = {**(values or {}), **named}
        return D1Statement(self.sql, tuple(d1_value(given[name]) for name in self.names))

    def filtered(self, where: Where, values: Mapping[str, object] | None = None) -> D1Statement:
        """The statement with ``{where}`` filled in and every parameter bound by name."""
        return D1Query.of(self.named.replace("{where}", where.sql)).bind(
            {**where.params, **(values or {})}
        )


def d1_value(value: object) -> D1Value:
    """A value as D1 binds it: times as epoch milliseconds (as the SQLite backend stores them),
    lists as JSON text (read back with ``json_each``), scalars as they are."""
    if isinstance(value, datetime):
        return to_millis(value)
    if isinstance(value, list | tuple):
        return dumps(list(value))
    if value is None or isinstance(value, str | int | float):
        return value
    raise TypeError(f"cannot bind a {type(value).__name__} to a D1 statement")


def load_queries(names: TableNames, family: str = "") -> dict[str, D1Query]:
    """The SQLite queries of ``queries/[<family>.]sqlite.sql`` by name, rendered for ``names``,
    ready to bind on D1."""
    return {name: D1Query.of(render(sql, names)) for name, sql in queries("sqlite", family).items()}
