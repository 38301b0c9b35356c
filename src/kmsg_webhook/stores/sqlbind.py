"""How the SQL-speaking stores bind values, and a delivery filter as a WHERE clause.

The SQLite, PostgreSQL and D1 stores run the queries of ``sql/queries/*.sql``. A filtered
query holds ``{where}``: :func:`delivery_where` fills it from the fixed ``where_*`` fragments of
those files (each an indexed column compared with a named parameter), joined by ``AND``, so no
condition is built as a string here. :class:`Binding` says how a dialect stores what the
parameters compare: SQLite (and D1) keeps times as epoch milliseconds and lists as JSON text
read with ``json_each``; PostgreSQL binds datetimes and arrays as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..models import DeliveryFilter
from .rows import ceil_millis, dumps, to_millis


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True, slots=True)
class Binding:
    """A dialect's parameter values: ``stamp`` an exact stored time, ``bound`` a lower or strict
    upper bound on stored times (SQLite rounds it up, so ``ms >= bound`` is ``time >= t``),
    ``values`` a list compared with ``IN``/``ANY``."""

    stamp: Callable[[datetime], object]
    bound: Callable[[datetime], object]
    values: Callable[[Sequence[str]], object]

    def column(self, value: object) -> object:
        """A column value of ``rows.endpoint_to_row``: times stamped, nested values as JSON
        text (cast or stored as text by the queries)."""
        if isinstance(value, datetime):
            return self.stamp(value)
        if isinstance(value, list | dict):
            return dumps(value)
        return value

    def optional(self, value: datetime | None) -> object:
        return None if value is None else self.stamp(value)

    def row(self, row: Mapping[str, object]) -> dict[str, object]:
        """A row's column values with its times stamped, for :func:`~.rows.dumps` (which
        writes a datetime the dialect binds as such in RFC 3339)."""
        return {k: self.stamp(v) if isinstance(v, datetime) else v for k, v in row.items()}

    def rows(self, rows: Iterable[Mapping[str, object]]) -> str:
        """Rows as one JSON array of objects keyed by column (see :meth:`row`): the one
        parameter of a batch insert that reads them with ``json_each`` or
        ``json_to_recordset``."""
        return dumps([self.row(row) for row in rows])


SQLITE = Binding(stamp=to_millis, bound=ceil_millis, values=lambda v: dumps(list(v)))
POSTGRES = Binding(stamp=_same, bound=_same, values=list)


@dataclass(frozen=True, slots=True)
class Where:
    """A WHERE clause (empty, or starting with `` WHERE``) and its named parameters."""

    sql: str
    params: dict[str, object]


def delivery_where(
    fragments: Mapping[str, str],
    f: DeliveryFilter,
    binding: Binding,
    *,
    finished: bool = False,
    ids: Sequence[str] | None = None,
    before: tuple[datetime, str] | None = None,
) -> Where:
    """``f`` (plus: only finished rows, only ``ids``, only rows before a keyset cursor) from the
    ``where_<name>`` fragments of ``fragments``."""
    parts: list[str] = []
    params: dict[str, object] = {}

    def add(name: str, **values: object) -> None:
        parts.append(fragments[f"where_{name}"])
        params.update(values)

    if finished:
        add("finished")
    if f.endpoint_id is not None:
        add("endpoint_id", endpoint_id=f.endpoint_id)
    if f.event_type is not None:
        add("event_type", event_type=f.event_type.value)
    if f.event_id is not None:
        add("event_id", event_id=f.event_id)
    if f.statuses:
        add("statuses", statuses=binding.values([s.value for s in f.statuses]))
    if f.created_after is not None:
        add("created_after", created_after=binding.bound(f.created_after))
    if f.created_before is not None:
        add("created_before", created_before=binding.bound(f.created_before))
    if f.to_hash is not None:
        add("to_hash", to_hash=f.to_hash)
    if f.from_hash is not None:
        add("from_hash", from_hash=f.from_hash)
    if ids is not None:
        add("ids", ids=binding.values(ids))
    if before is not None:
        add("before_cursor", cursor_at=binding.stamp(before[0]), cursor_id=before[1])
    return Where(" WHERE " + " AND ".join(parts) if parts else "", params)
