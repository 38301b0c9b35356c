"""The messaging stores on D1 beyond the conformance suites: opening them from a D1 store URL,
bad URLs, the SQLite queries made positional, and requests D1 applied whose answers were lost
(a fake in front of the local engine)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from kmsg_webhook.errors import ConfigError
from kmsg_webhook.messaging import (
    DeliveryStatus,
    MessageType,
    SmsSendOptions,
    TrackingRecord,
    job_store_from_url,
    tracking_store_from_url,
)
from kmsg_webhook.messaging.jobs import SendJob
from kmsg_webhook.messaging.jobs_d1 import D1JobStore
from kmsg_webhook.messaging.tracking_d1 import D1TrackingStore
from kmsg_webhook.stores.d1 import D1LimitError, D1Limits, D1QueryError
from kmsg_webhook.stores.d1.queries import D1Query
from support.d1 import FakeD1, LocalD1
from support.stores import JOBS_TABLE, TRACKING_TABLE, fresh_messaging_tables

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LOST = ("applied", ("status", 502, {"success": False, "errors": [{"code": 1, "message": "gw"}]}))


def record(n: int) -> TrackingRecord:
    return TrackingRecord(
        message_id=f"msg-{n}",
        provider_id="solapi",
        provider_message_id=f"P{n}",
        type=MessageType.SMS,
        to="010-5555-0001",
        requested_at=T0,
        status=DeliveryStatus.SENT,
        status_updated_at=T0,
        next_check_at=T0,
    )


def job(n: int) -> SendJob:
    options = SmsSendOptions(to="010-7777-0001", text="안내", message_id=f"m-{n}")
    return SendJob(id=f"m-{n}", options=options, run_at=T0, created_at=T0)


def test_named_parameters_become_positional_in_order_of_first_use() -> None:
    query = D1Query.of(
        "-- a comment naming :ignored\n"
        "SELECT * FROM t WHERE (:b IS NULL OR b = :b) AND a = :a AND c::text = 'x:y'"
    )
    assert (
        query.sql == "SELECT * FROM t WHERE (?1 IS NULL OR b = ?1) AND a = ?2 AND c::text = 'x:y'"
    )
    assert query.names == ("b", "a")
    statement = query.bind({"a": T0, "b": ["x", "y"], "unused": 1})
    assert statement.params == ('["x","y"]', 1772366400000)
    with pytest.raises(TypeError, match="cannot bind a set"):
        query.bind({"a": 1, "b": {1}})


async def test_the_stores_open_from_a_d1_store_url_in_the_tables_it_names(
    local_d1: LocalD1,
) -> None:
    tables = fresh_messaging_tables()
    url = local_d1.store_url(tracking_table=tables[TRACKING_TABLE], jobs_table=tables[JOBS_TABLE])
    tracking, jobs = tracking_store_from_url(url), job_store_from_url(url)
    assert isinstance(tracking, D1TrackingStore) and isinstance(jobs, D1JobStore)
    try:
        await tracking.upsert(record(1))
        assert await jobs.enqueue([job(1)]) == ["m-1"]
    finally:
        await tracking.close()
        await jobs.close()
    async with local_d1.client() as client:
        for table, key in ((TRACKING_TABLE, "message_id"), (JOBS_TABLE, "id")):
            rows = (await client.query(f'SELECT {key} FROM "{tables[table]}"')).rows
            assert len(rows) == 1


async def test_a_bulk_enqueue_goes_in_requests_within_d1s_size_of_a_value(
    local_d1: LocalD1,
) -> None:
    tables = fresh_messaging_tables()
    client = local_d1.client(limits=D1Limits(max_value_bytes=2_000))
    jobs = D1JobStore(client, table=tables[JOBS_TABLE], close_client=True)
    try:
        await jobs.init()
        before = client.round_trips
        bulk = [job(n) for n in range(1, 31)]  # a few hundred bytes of JSON each
        assert await jobs.enqueue(bulk) == [j.id for j in bulk]
        assert client.round_trips - before > 1
        assert [await jobs.get(j.id) for j in bulk] == bulk
        # Stored ones are skipped, whichever request carries them.
        assert await jobs.enqueue([job(31), *bulk, job(32)]) == ["m-31", "m-32"]
        huge = dataclasses.replace(
            job(33),
            options=SmsSendOptions(to="010-7777-0001", text="안" * 2_000, message_id="m-33"),
        )
        with pytest.raises(D1LimitError, match="per value"):
            await jobs.enqueue([huge])
        assert await jobs.get("m-33") is None
    finally:
        await jobs.close()


async def test_without_auto_init_a_missing_table_is_a_query_error(local_d1: LocalD1) -> None:
    tables = fresh_messaging_tables()
    url = local_d1.store_url(tracking_table=tables[TRACKING_TABLE], auto_init="false")
    store = tracking_store_from_url(url)
    try:
        with pytest.raises(D1QueryError, match="no such table"):
            await store.get("msg-1")
    finally:
        await store.close()


def test_bad_d1_urls_are_config_errors(local_d1: LocalD1) -> None:
    with pytest.raises(ConfigError, match="invalid table name"):
        tracking_store_from_url(local_d1.store_url(tracking_table="no-dashes"))
    with pytest.raises(ConfigError, match="invalid table name"):
        job_store_from_url(local_d1.store_url(jobs_table="sqlite_jobs"))
    with pytest.raises(ConfigError, match="unknown D1 URL parameter 'job_table'"):
        job_store_from_url(local_d1.store_url(job_table="x"))
    with pytest.raises(ConfigError, match="no API token"):
        tracking_store_from_url("d1://account/database", crypto=None)


@pytest.fixture
async def stores(faulty_d1: FakeD1) -> AsyncIterator[tuple[D1TrackingStore, D1JobStore]]:
    tables = fresh_messaging_tables()
    client = faulty_d1.client()
    tracking = D1TrackingStore(client, table=tables[TRACKING_TABLE])
    jobs = D1JobStore(client, table=tables[JOBS_TABLE], close_client=True)
    await tracking.init()
    await jobs.init()
    try:
        yield tracking, jobs
    finally:
        await jobs.close()


async def test_a_claim_whose_answer_is_lost_leaves_the_record_leased_until_it_expires(
    stores: tuple[D1TrackingStore, D1JobStore], faulty_d1: FakeD1
) -> None:
    tracking, _ = stores
    await tracking.upsert(record(1))
    lease = T0 + timedelta(minutes=2)
    faulty_d1.then(LOST)
    # The retry finds the record leased (by this very claim): nobody holds it twice.
    assert await tracking.claim_due(worker_id="w1", now=T0, lease_until=lease, limit=5) == []
    assert await tracking.claim_due(worker_id="w2", now=T0, lease_until=lease, limit=5) == []
    later = lease + timedelta(seconds=1)
    [claimed] = await tracking.claim_due(worker_id="w2", now=later, lease_until=later, limit=5)
    assert claimed == record(1)


async def test_replayed_writes_store_nothing_twice(
    stores: tuple[D1TrackingStore, D1JobStore], faulty_d1: FakeD1
) -> None:
    tracking, jobs = stores
    faulty_d1.then(LOST)
    assert await jobs.enqueue([job(1), job(2)]) == []  # stored by the lost attempt
    assert [j.id for j in await jobs.list_jobs()] == ["m-1", "m-2"]
    await tracking.upsert(record(1))
    [claimed] = await tracking.claim_due(worker_id="w1", now=T0, lease_until=T0, limit=1)
    delivered = dataclasses.replace(claimed, status=DeliveryStatus.DELIVERED)
    faulty_d1.then(LOST)
    # The first application saved and dropped the lease; the replay then writes nothing.
    assert not await tracking.save(delivered, worker_id="w1")
    assert await tracking.get("msg-1") == delivered
    assert await tracking.count_records() == 1
