"""adapters/d1-worker on the local D1 engine: the REST API's /query and /raw contract."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from kmsg_webhook.stores.d1 import D1AuthError, D1Client, D1QueryError, D1Statement
from support.d1 import LocalD1


@pytest.fixture
async def client(local_d1: LocalD1) -> AsyncIterator[D1Client]:
    async with local_d1.client() as c:
        yield c


@pytest.fixture
def table() -> str:
    return f"w{uuid.uuid4().hex[:12]}"


async def post(
    local_d1: LocalD1, body: Any, *, mode: str = "query", token: str | None = None, **kw: Any
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token or local_d1.token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(local_d1.endpoint(mode), json=body, headers=headers, **kw) as response,
    ):
        return response.status, await response.json(content_type=None)


async def test_query_and_raw_answer_the_rest_api_shape(local_d1: LocalD1, table: str) -> None:
    status, created = await post(local_d1, {"sql": f"CREATE TABLE {table} (a INTEGER, b TEXT)"})
    assert status == 200 and created["success"] is True
    assert created["errors"] == [] and created["messages"] == []
    status, inserted = await post(
        local_d1,
        {
            "batch": [
                {"sql": f"INSERT INTO {table} VALUES (?, ?)", "params": [1, "가"]},
                {"sql": f"INSERT INTO {table} VALUES (?, ?) RETURNING a", "params": [2, None]},
            ]
        },
    )
    assert status == 200
    first, second = inserted["result"]
    assert first["success"] is True and first["results"] == []
    assert first["meta"]["changes"] == 1
    assert second["results"] == [{"a": 2}]
    _, objects = await post(local_d1, {"sql": f"SELECT * FROM {table} ORDER BY a"})
    assert objects["result"][0]["results"] == [{"a": 1, "b": "가"}, {"a": 2, "b": None}]
    _, raw = await post(local_d1, {"sql": f"SELECT * FROM {table} ORDER BY a"}, mode="raw")
    assert raw["result"][0]["results"] == {"columns": ["a", "b"], "rows": [[1, "가"], [2, None]]}


async def test_a_batch_is_atomic(client: D1Client, table: str) -> None:
    await client.query(f"CREATE TABLE {table} (a INTEGER PRIMARY KEY)")
    with pytest.raises(D1QueryError) as caught:
        await client.batch(
            [
                D1Statement(f"INSERT INTO {table} VALUES (1)"),
                D1Statement(f"INSERT INTO {table} VALUES (1)"),  # primary key clash
            ]
        )
    assert caught.value.code == 7500 and caught.value.status == 400
    assert "UNIQUE" in caught.value.message
    assert (await client.query(f"SELECT COUNT(*) AS n FROM {table}")).rows == [{"n": 0}]


@pytest.mark.parametrize("sql", ["BEGIN", "BEGIN TRANSACTION", "SAVEPOINT s1", "BEGIN IMMEDIATE"])
async def test_local_d1_rejects_transaction_statements_like_production(
    client: D1Client, sql: str
) -> None:
    # The store never relies on BEGIN/SAVEPOINT: D1 refuses them; batches are the transactions.
    with pytest.raises(D1QueryError) as caught:
        await client.query(sql)
    assert caught.value.code == 7500
    assert "transaction" in caught.value.message.lower()


async def test_the_token_is_checked(local_d1: LocalD1) -> None:
    status, body = await post(local_d1, {"sql": "SELECT 1"}, token="wrong")
    assert status == 401
    assert body == {
        "result": [],
        "success": False,
        "errors": [{"code": 10000, "message": "Authentication error"}],
        "messages": [],
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(local_d1.endpoint(), json={"sql": "SELECT 1"}) as response,
    ):
        assert response.status == 401
    bad = D1Client(
        local_d1.account_id, local_d1.database_id, token="nope", base_url=local_d1.base_url
    )
    async with bad:
        with pytest.raises(D1AuthError):
            await bad.query("SELECT 1")
        assert bad.round_trips == 1


async def test_malformed_requests_get_the_error_shape(local_d1: LocalD1) -> None:
    headers = {"Authorization": f"Bearer {local_d1.token}"}
    async with aiohttp.ClientSession() as session:
        async with session.post(local_d1.endpoint(), data=b"{not json", headers=headers) as r:
            assert r.status == 400
            body = await r.json()
            assert body["success"] is False and body["errors"][0]["code"] == 7400
        async with session.get(local_d1.endpoint(), headers=headers) as r:
            assert r.status == 405
        async with session.post(f"{local_d1.server_url}/elsewhere", headers=headers) as r:
            assert r.status == 404
            assert (await r.json())["success"] is False
    bodies: list[Any] = [{"batch": []}, {"sql": 5}, {"sql": "SELECT ?", "params": [{"x": 1}]}, []]
    for bad in bodies:
        status, body = await post(local_d1, bad)
        assert status == 400 and body["success"] is False, bad


async def test_keep_alive_survives_refused_requests(local_d1: LocalD1) -> None:
    # The Worker reads every body before answering, so the connection stays reusable.
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for token in ("wrong", local_d1.token, "wrong", local_d1.token):
            async with session.post(
                local_d1.endpoint(),
                json={"sql": "SELECT ? AS x", "params": ["y" * 50_000]},
                headers={"Authorization": f"Bearer {token}"},
            ) as response:
                await response.read()
                assert response.status == (200 if token == local_d1.token else 401)
        assert len(connector._conns) == 1  # one pooled connection, reused throughout
