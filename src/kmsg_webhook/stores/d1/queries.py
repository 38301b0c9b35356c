"""The D1 store's SQL: the SQLite queries of ``stores/sql/queries/sqlite.sql``, bound by position.

D1 is SQLite, so it runs the SQLite backend's text (the claim and record rules are written once).
What differs is the client's business, here: D1 binds parameters by position only, so each
``:name`` becomes a numbered parameter; D1 has no ``BEGIN``, so what must be atomic is one
statement or one batch (D1 runs a batch as a single transaction). Lists of values are bound as
one JSON-array parameter and expanded with ``json_each``, so they never count against D1's
100-parameter limit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..sqlfiles import TableNames, queries, render
from .client import D1Statement, D1Value

_PARAMETER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@dataclass(frozen=True, slots=True)
class D1Query:
    """One named query rendered for the tables: its text and, in order, its named parameters
    (empty when it binds ``?`` parameters by position)."""

    sql: str
    names: tuple[str, ...]

    def bind(self, values: Mapping[str, D1Value] | None = None, **named: D1Value) -> D1Statement:
        """The statement with its parameters bound from ``values`` and keywords, by name."""
        given = {**(values or {}), **named}
        return D1Statement(self.sql, tuple(given[name] for name in self.names))

    def positional(self, params: Sequence[D1Value], *, where: str = "") -> D1Statement:
        """The statement with ``?`` parameters, ``{where}`` replaced by a filter clause."""
        return D1Statement(self.sql.replace("{where}", where), tuple(params))


def _numbered(sql: str) -> D1Query:
    """``sql`` without comment lines, each ``:name`` turned into ``?N`` (one number a name)."""
    body = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"?{names.index(match[1]) + 1}"

    return D1Query(_PARAMETER.sub(number, body), tuple(names))


def load_queries(names: TableNames, family: str = "") -> dict[str, D1Query]:
    """The SQLite queries of ``queries/[<family>.]sqlite.sql`` by name, rendered for ``names``,
    ready to bind on D1."""
    return {name: _numbered(render(sql, names)) for name, sql in queries("sqlite", family).items()}


@dataclass(frozen=True, slots=True)
class Where:
    """A WHERE clause (empty, or starting with `` WHERE``) and its parameters."""

    sql: str
    params: tuple[object, ...]

    @staticmethod
    def of(clauses: Sequence[tuple[str, Sequence[object]]]) -> Where:
        if not clauses:
            return Where("", ())
        sql = " WHERE " + " AND ".join(c for c, _ in clauses)
        return Where(sql, tuple(p for _, ps in clauses for p in ps))
