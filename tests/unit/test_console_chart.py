"""The overview chart's geometry and the deliveries page's query parsing (no browser)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from multidict import MultiDict, MultiDictProxy

from kmsg_webhook import ConsoleError, DeliveryActivity, DeliveryStatus, MinuteCount
from kmsg_webhook.console.chart import minute_chart
from kmsg_webhook.console.forms import parse_delivery_query

NOW = datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC)
S, F, X = DeliveryStatus.SUCCESS, DeliveryStatus.FAILED, DeliveryStatus.EXHAUSTED


def test_columns_stack_outcomes_bottom_up_scaled_to_the_busiest_minute() -> None:
    since = NOW - timedelta(hours=1)
    first = since.replace(second=0)
    activity = DeliveryActivity(
        since=since,
        now=NOW,
        per_minute=(
            MinuteCount(first, S, 6),
            MinuteCount(first, F, 2),
            MinuteCount(first + timedelta(minutes=30), X, 4),
            MinuteCount(first - timedelta(minutes=5), S, 99),  # before the window: ignored
        ),
    )
    chart = minute_chart(activity, width=610, height=100)
    assert chart.minutes == 61 and chart.peak == 8
    success, failed, exhausted = chart.bars
    assert (success.outcome, success.y, success.height) == ("success", 25.0, 75.0)
    assert (failed.outcome, failed.y, failed.height) == ("failed", 0.0, 25.0)
    assert (exhausted.x, exhausted.y, exhausted.height) == (300.0, 50.0, 50.0)
    assert failed.label == "11:00 UTC: 2 failed"
    assert [t.label for t in chart.ticks] == ["11:00", "11:15", "11:30", "11:45", "12:00"]


def test_an_empty_window_draws_no_bars() -> None:
    chart = minute_chart(DeliveryActivity(since=NOW - timedelta(hours=24), now=NOW))
    assert (chart.bars, chart.peak, chart.minutes) == ((), 0, 1441)
    # Beyond two hours, labels on whole hours, spaced to keep about eight of them.
    assert [t.label for t in chart.ticks][:3] == ["12:00", "15:00", "18:00"]
    assert len(chart.ticks) == 9


def query(**params: str | list[str]) -> MultiDictProxy[str]:
    pairs = [(k, v) for k, vs in params.items() for v in ([vs] if isinstance(vs, str) else vs)]
    return MultiDictProxy(MultiDict(pairs))


def test_query_becomes_a_store_filter() -> None:
    parsed = parse_delivery_query(
        query(
            status=["failed", "exhausted"],
            endpoint="ep_1",
            event_type="message.sent",
            event_id=" evt_9 ",
            since="2026-03-01T10:00",
            until="2026-03-01T11:30:00+09:00",
            limit="200",
            cursor="abc",
        )
    )
    f = parsed.filter
    assert f.statuses == (F, X) and f.endpoint_id == "ep_1" and f.event_id == "evt_9"
    assert f.created_after == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert f.created_before == datetime(2026, 3, 1, 2, 30, tzinfo=UTC)
    assert (parsed.limit, parsed.cursor) == (200, "abc")
    assert ("status", "exhausted") in parsed.params and ("cursor", "abc") not in parsed.params


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"status": "lost"}, "status must be one of"),
        ({"event_type": "message.nope"}, "unknown event type"),
        ({"limit": "0"}, "limit must be between 1 and 500"),
        ({"limit": "many"}, "limit must be a whole number"),
        ({"until": "tomorrow"}, "until must be a time"),
    ],
)
def test_invalid_query_values_are_named(params: dict[str, str], message: str) -> None:
    with pytest.raises(ConsoleError, match=message):
        parse_delivery_query(query(**params))
