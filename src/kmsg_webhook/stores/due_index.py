"""Due rows of the in-memory outbox, indexed per endpoint.

A claim must skip the endpoints the dispatcher excludes (saturated, or slow), and one flat heap
of every due row would make it pop and push back each of their rows on every claim: a cost
that grows with what is blocked. Here each endpoint has its own heap of rows, and a heap of
endpoints orders them by their earliest row, so a claim touches one entry per excluded
endpoint, never its rows.

Entries go stale when a row changes (claimed, recorded, released); the caller says which are
live, and stale ones are dropped when they reach the top.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection

#: (due timestamp, sequence, delivery id)
_Entry = tuple[float, int, str]


class DueIndex:
    """Rows by due time, per endpoint; :meth:`take_due` takes the earliest across endpoints."""

    def __init__(self) -> None:
        self._rows: dict[str, list[_Entry]] = {}  # endpoint id → heap of its rows
        # (earliest due, sequence, endpoint id); an endpoint's entry is current only while it
        # equals _heads[endpoint id], older ones are skipped.
        self._endpoints: list[tuple[float, int, str]] = []
        self._heads: dict[str, tuple[float, int]] = {}
        self._seq = 0

    def push(self, endpoint_id: str, due_ts: float, delivery_id: str) -> None:
        """Index a row due at ``due_ts`` (a re-push after a change makes the old entry stale)."""
        self._seq += 1
        seq = self._seq
        rows = self._rows.get(endpoint_id)
        if rows is None:
            rows = self._rows[endpoint_id] = []
        heapq.heappush(rows, (due_ts, seq, delivery_id))
        head = self._heads.get(endpoint_id)
        if head is None or due_ts < head[0]:
            self._heads[endpoint_id] = (due_ts, seq)
            heapq.heappush(self._endpoints, (due_ts, seq, endpoint_id))

    def take_due(
        self,
        now_ts: float,
        limit: int,
        exclude: Collection[str],
        take: Callable[[str, float], bool],
    ) -> None:
        """Offer ``take`` the rows due at ``now_ts``, earliest first, skipping the rows of
        ``exclude``, until it has accepted ``limit``. ``take(delivery_id, due_ts)`` answers
        whether the entry stood for a claimable row (it took it) or was stale; either way the
        entry leaves the index (push the row again when it changes).
        """
        endpoints = self._endpoints
        skipped: list[tuple[float, int, str]] = []
        taken = 0
        while taken < limit and endpoints and endpoints[0][0] <= now_ts:
            entry = heapq.heappop(endpoints)
            endpoint_id = entry[2]
            if self._heads.get(endpoint_id) != entry[:2]:
                continue  # stale: the endpoint has a newer entry
            if endpoint_id in exclude:
                skipped.append(entry)
                continue
            rows = self._rows[endpoint_id]
            due_ts, _, delivery_id = heapq.heappop(rows)
            self._reschedule(endpoint_id, rows)
            if take(delivery_id, due_ts):
                taken += 1
        for entry in skipped:
            heapq.heappush(endpoints, entry)

    def _reschedule(self, endpoint_id: str, rows: list[_Entry]) -> None:
        """Put the endpoint back under its next row (or forget it when it has none)."""
        if not rows:
            del self._rows[endpoint_id]
            del self._heads[endpoint_id]
            return
        due_ts, seq, _ = rows[0]
        self._heads[endpoint_id] = (due_ts, seq)
        heapq.heappush(self._endpoints, (due_ts, seq, endpoint_id))
