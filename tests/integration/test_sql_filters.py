"""Delivery filters are the fixed ``where_*`` fragments of the ``.sql`` files, and a listing
with any one filter reads an index, not the whole table (SQLite's query plan)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import pytest

from kmsg_webhook.events import WebhookEventType
from kmsg_webhook.models import DeliveryFilter, DeliveryStatus
from kmsg_webhook.stores.sqlbind import SQLITE, delivery_where
from kmsg_webhook.stores.sqlfiles import TableNames, queries, render, schema_sql, without_comments

NOW = datetime(2026, 1, 1, tzinfo=UTC)
FILTERS = {
    "endpoint": DeliveryFilter(endpoint_id="ep"),
    "status": DeliveryFilter(statuses=(DeliveryStatus.FAILED,)),
    "event type": DeliveryFilter(event_type=next(iter(WebhookEventType))),
    "event id": DeliveryFilter(event_id="ev"),
    "created after": DeliveryFilter(created_after=NOW),
    "recipient": DeliveryFilter(to_hash="h"),
    "sender": DeliveryFilter(from_hash="h"),
}


@pytest.mark.parametrize("name", FILTERS)
def test_a_listing_with_one_filter_searches_an_index(name: str) -> None:
    sql = {k: render(without_comments(v), TableNames()) for k, v in queries("sqlite").items()}
    conn = sqlite3.connect(":memory:")
    conn.executescript(schema_sql("sqlite"))
    for before in (None, (NOW, "d_1")):
        where = delivery_where(sql, FILTERS[name], SQLITE, before=before)
        listing = sql["delivery_list"].replace("{where}", where.sql)
        plan = [
            row[3]
            for row in conn.execute("EXPLAIN QUERY PLAN " + listing, {**where.params, "limit": 5})
        ]
        table_steps = [step for step in plan if "kmsg_webhook_deliveries" in step]
        assert table_steps and all("USING INDEX" in step for step in table_steps), plan


def test_no_filter_is_no_where_clause_and_every_fragment_is_named() -> None:
    sql = queries("sqlite")
    assert delivery_where(sql, DeliveryFilter(), SQLITE).sql == ""
    where = delivery_where(
        sql,
        DeliveryFilter(endpoint_id="ep", statuses=(DeliveryStatus.FAILED,)),
        SQLITE,
        finished=True,
        ids=["a", "b"],
    )
    assert where.sql.startswith(" WHERE status <> 'pending' AND endpoint_id = :endpoint_id")
    assert where.params == {"endpoint_id": "ep", "statuses": '["failed"]', "ids": '["a","b"]'}
