"""Listings whose conditions are the fixed lines of a query family's ``filter`` block.

A family's ``filter`` query holds one condition per line, each binding one parameter; a listing
holds ``{where}``. :class:`FilteredQueries` replaces it with the conditions of the parameters
that have a value, so the SQL is always reviewed text, never built from input. The D1 and the
SQL stores share it; each compiles the text its own way (and the result is cached per shape).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from ..stores.sqlfiles import NAMED_PARAMETER

Q = TypeVar("Q")


class FilteredQueries(Generic[Q]):
    """The listings of one family: ``named`` gives a query's text, ``compile`` prepares it."""

    def __init__(self, named: Callable[[str], str], compile: Callable[[str], Q]) -> None:
        self._named = named
        self._compile = compile
        # The filter conditions by the parameter each binds.
        lines = named("filter").splitlines()
        self._conditions = {m[1]: line for line in lines if (m := NAMED_PARAMETER.search(line))}
        self._cache: dict[tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]], Q] = {}

    def query(self, name: str, values: Mapping[str, Any], **fill: str) -> Q:
        """The listing ``name`` for ``values``: its ``{where}`` holds the conditions whose
        parameter is not ``None``, its other ``{placeholders}`` the texts in ``fill``."""
        used = tuple(p for p in self._conditions if values.get(p) is not None)
        key = (name, used, tuple(sorted(fill.items())))
        query = self._cache.get(key)
        if query is None:
            conditions = " AND ".join(self._conditions[p] for p in used)
            sql = self._named(name).replace("{where}", f" WHERE {conditions}" if used else "")
            for placeholder, text in fill.items():
                sql = sql.replace(f"{{{placeholder}}}", text)
            query = self._cache[key] = self._compile(sql)
        return query
