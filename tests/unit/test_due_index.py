"""The memory store's due index: earliest first across endpoints, excluded endpoints skipped
whole, stale entries dropped, and rows left where they were when a claim stops early."""

from __future__ import annotations

from collections.abc import Callable, Collection

from kmsg_webhook.stores.due_index import DueIndex


def _take_all(
    index: DueIndex,
    now: float,
    limit: int,
    exclude: Collection[str] = (),
    live: Callable[[str, float], bool] | None = None,
) -> list[str]:
    taken: list[str] = []

    def take(delivery_id: str, due_ts: float) -> bool:
        if live is not None and not live(delivery_id, due_ts):
            return False
        taken.append(delivery_id)
        return True

    index.take_due(now, limit, exclude, take)
    return taken


def test_rows_come_earliest_first_across_endpoints_and_only_when_due() -> None:
    index = DueIndex()
    index.push("a", 3.0, "a3")
    index.push("b", 1.0, "b1")
    index.push("a", 2.0, "a2")
    index.push("c", 9.0, "c9")
    index.push("b", 4.0, "b4")
    assert _take_all(index, now=5.0, limit=10) == ["b1", "a2", "a3", "b4"]
    assert _take_all(index, now=5.0, limit=10) == []
    assert _take_all(index, now=9.0, limit=10) == ["c9"]


def test_excluded_endpoints_keep_their_rows_and_a_limit_stops_early() -> None:
    index = DueIndex()
    for n in range(1000):  # a blocked backlog, due before everything else
        index.push("blocked", float(n), f"x{n}")
    index.push("a", 2000.0, "a1")
    index.push("b", 2001.0, "b1")
    index.push("a", 2002.0, "a2")
    assert _take_all(index, now=3000.0, limit=2, exclude={"blocked"}) == ["a1", "b1"]
    assert _take_all(index, now=3000.0, limit=5, exclude={"blocked"}) == ["a2"]
    assert _take_all(index, now=3000.0, limit=3) == ["x0", "x1", "x2"]


def test_stale_entries_are_dropped_and_a_changed_row_comes_back_when_pushed_again() -> None:
    index = DueIndex()
    index.push("a", 1.0, "r1")
    index.push("a", 2.0, "r2")
    # r1 changed meanwhile (say, leased); its entry no longer stands for a claimable row.
    assert _take_all(index, now=5.0, limit=5, live=lambda i, ts: i != "r1") == ["r2"]
    index.push("a", 3.0, "r1")  # released: due again
    assert _take_all(index, now=5.0, limit=5) == ["r1"]
