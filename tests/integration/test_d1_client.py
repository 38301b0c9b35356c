"""The D1 REST client against a scripted fake server: retries, typed errors, limits, secrecy."""

from __future__ import annotations

import logging
import time
from email.utils import formatdate

import pytest

from kmsg_webhook import StoreError
from kmsg_webhook.errors import ConfigError
from kmsg_webhook.stores.d1 import (
    D1AuthError,
    D1Client,
    D1LimitError,
    D1QueryError,
    D1RateLimitedError,
    D1Statement,
    D1UnavailableError,
)
from support.d1 import FakeD1


class Sleeps:
    """Records the retry loop's waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def sql_error(code: int, message: str) -> dict[str, object]:
    return {
        "result": [],
        "success": False,
        "errors": [{"code": code, "message": message}],
        "messages": [],
    }


async def test_query_sends_the_rest_api_shape_and_counts_round_trips(fake_d1: FakeD1) -> None:
    async with fake_d1.client() as client:
        result = await client.query("SELECT ?", ["x"])
        assert result.rows == [] and result.changes == 0
        results = await client.batch(
            [D1Statement("SELECT 1"), D1Statement("SELECT ?", (2, None, True))]
        )
        assert len(results) == 2
        assert client.round_trips == 2 and client.retries == 0
    single, batch = fake_d1.seen
    assert single.path.endswith("/accounts/local-account/d1/database/local-database/query")
    assert single.headers["Authorization"] == f"Bearer {fake_d1.token}"
    assert single.body == {"sql": "SELECT ?", "params": ["x"]}
    assert batch.body == {
        "batch": [{"sql": "SELECT 1", "params": []}, {"sql": "SELECT ?", "params": [2, None, 1]}]
    }


async def test_raw_returns_columns_and_rows(fake_d1: FakeD1) -> None:
    body = {
        "result": [
            {"results": {"columns": ["a", "b"], "rows": [[1, "x"]]}, "success": True, "meta": {}}
        ],
        "success": True,
        "errors": [],
        "messages": [],
    }
    fake_d1.then(("status", 200, body))
    async with fake_d1.client() as client:
        raw = await client.raw("SELECT a, b FROM t")
    assert (raw.columns, raw.rows) == (["a", "b"], [[1, "x"]])
    assert fake_d1.seen[0].path.endswith("/raw")


async def test_429_waits_for_retry_after_then_succeeds(fake_d1: FakeD1) -> None:
    sleeps = Sleeps()
    fake_d1.then(
        ("status", 429, sql_error(971, "Please wait"), {"Retry-After": "7"}),
        (
            "status",
            429,
            sql_error(971, "Please wait"),
            {"Retry-After": formatdate(time.time() + 30, usegmt=True)},
        ),
    )
    async with fake_d1.client(sleep=sleeps) as client:
        await client.query("SELECT 1")
        assert client.round_trips == 3 and client.retries == 2
    assert sleeps.waits[0] == 7
    assert 25 <= sleeps.waits[1] <= 31


async def test_retry_after_is_capped(fake_d1: FakeD1) -> None:
    sleeps = Sleeps()
    fake_d1.then(("status", 429, {}, {"Retry-After": "3600"}))
    async with fake_d1.client(sleep=sleeps, max_retry_after=5) as client:
        await client.query("SELECT 1")
    assert sleeps.waits == [5]


async def test_persistent_429_is_a_typed_error_after_the_budget(fake_d1: FakeD1) -> None:
    sleeps = Sleeps()
    fake_d1.then(*[("status", 429, sql_error(971, "slow down"), {"Retry-After": "1"})] * 3)
    async with fake_d1.client(sleep=sleeps, max_attempts=3) as client:
        with pytest.raises(D1RateLimitedError) as caught:
            await client.query("SELECT 1")
    assert caught.value.retry_after == 1 and caught.value.code == 971
    assert "3 attempts" in str(caught.value)
    assert isinstance(caught.value, StoreError)
    assert len(fake_d1.seen) == 3


async def test_5xx_and_malformed_answers_are_retried_with_backoff(fake_d1: FakeD1) -> None:
    sleeps = Sleeps()
    fake_d1.then(
        ("status", 503, {"oops": True}), ("garbage",), ("status", 500, sql_error(7500, "x"))
    )
    async with fake_d1.client(sleep=sleeps, backoff_initial=0.1, backoff_max=10) as client:
        response = await client.execute([D1Statement("SELECT 1")])
    assert response.attempts == 4 and response.maybe_applied_earlier
    assert len(sleeps.waits) == 3
    # Exponential steps (0.1, 0.2, 0.4) plus up to one initial step of jitter.
    for wait, step in zip(sleeps.waits, (0.1, 0.2, 0.4), strict=True):
        assert step <= wait <= step + 0.1


async def test_a_slow_answer_times_out_and_is_retried(fake_d1: FakeD1) -> None:
    fake_d1.then(("slow", 5.0))
    async with fake_d1.client(timeout=0.3) as client:
        started = time.monotonic()
        response = await client.execute([D1Statement("SELECT 1")])
    assert response.attempts == 2 and response.maybe_applied_earlier
    assert time.monotonic() - started < 1.0


async def test_unavailable_after_the_budget(fake_d1: FakeD1) -> None:
    fake_d1.then(*[("status", 502, {})] * 2)
    async with fake_d1.client(max_attempts=2) as client:
        with pytest.raises(D1UnavailableError) as caught:
            await client.query("SELECT 1")
    assert caught.value.status == 502
    assert not isinstance(caught.value, D1RateLimitedError)


async def test_connection_refused_is_unavailable_not_ambiguous() -> None:
    sleeps = Sleeps()
    client = D1Client(
        "a",
        "d",
        token="t0ken",
        base_url="http://127.0.0.1:9/client/v4",
        sleep=sleeps,
        max_attempts=2,
    )
    async with client:
        with pytest.raises(D1UnavailableError, match="cannot connect"):
            await client.query("SELECT 1")
    assert client.round_trips == 2


async def test_sql_errors_are_typed_and_not_retried(fake_d1: FakeD1) -> None:
    fake_d1.then(("status", 400, sql_error(7500, 'near "SELEC": syntax error: SQLITE_ERROR')))
    async with fake_d1.client() as client:
        with pytest.raises(D1QueryError) as caught:
            await client.query("SELEC 1")
        assert client.round_trips == 1
    assert caught.value.code == 7500 and caught.value.status == 400
    assert "syntax error" in caught.value.message
    assert isinstance(caught.value, StoreError)


async def test_success_false_in_a_200_is_a_query_error(fake_d1: FakeD1) -> None:
    fake_d1.then(("status", 200, sql_error(7500, "no such table: t")))
    async with fake_d1.client() as client:
        with pytest.raises(D1QueryError, match="no such table"):
            await client.query("SELECT * FROM t")


async def test_auth_errors_are_typed_and_not_retried(fake_d1: FakeD1) -> None:
    fake_d1.then(("status", 401, sql_error(10000, "Authentication error")))
    async with fake_d1.client() as client:
        with pytest.raises(D1AuthError) as caught:
            await client.query("SELECT 1")
        assert client.round_trips == 1
    assert caught.value.code == 10000


async def test_the_token_never_shows(fake_d1: FakeD1, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = fake_d1.token
    # A server echoing the token in its error text does not get it into our messages.
    fake_d1.then(
        ("status", 503, sql_error(1, f"bad {token}")),
        ("status", 400, sql_error(7500, f"bad token {token}")),
    )
    client = fake_d1.client(max_attempts=2)
    assert token not in repr(client) and token not in str(client)
    async with client:
        with pytest.raises(D1QueryError) as caught:
            await client.query("SELECT 1")
    text = f"{caught.value!s} {caught.value!r} {caught.value.message}"
    assert token not in text and "***" in text
    assert token not in caplog.text
    chained: BaseException | None = caught.value
    while chained is not None:
        assert token not in str(chained) and token not in repr(chained.args)
        chained = chained.__cause__ or chained.__context__


async def test_limits_are_enforced_before_sending(fake_d1: FakeD1) -> None:
    async with fake_d1.client() as client:
        with pytest.raises(D1LimitError, match="101 parameters"):
            await client.query("SELECT " + ",".join("?" * 101), [1] * 101)
        with pytest.raises(D1LimitError, match="bytes long"):
            await client.query("SELECT '" + "x" * 100_000 + "'")
        with pytest.raises(D1LimitError, match="per value"):
            await client.query("SELECT ?", ["가" * 700_000])  # 2.1 MB of UTF-8
        with pytest.raises(D1LimitError, match="2\\*\\*53"):
            await client.query("SELECT ?", [2**60])
        with pytest.raises(D1LimitError, match="finite"):
            await client.query("SELECT ?", [float("nan")])
        with pytest.raises(TypeError):
            await client.query("SELECT ?", [b"bytes"])  # type: ignore[list-item]
        # At the limits exactly, it goes out.
        await client.query("SELECT " + ",".join("?" * 100), [1] * 100)
        assert client.round_trips == 1
    assert len(fake_d1.seen) == 1


async def test_a_result_count_mismatch_is_an_error(fake_d1: FakeD1) -> None:
    fake_d1.then(("status", 200, {"result": [], "success": True, "errors": [], "messages": []}))
    async with fake_d1.client() as client:
        with pytest.raises(StoreError, match="0 results for 1 statements"):
            await client.query("SELECT 1")


def test_configuration_is_validated() -> None:
    with pytest.raises(ConfigError):
        D1Client("", "db", token="t")
    with pytest.raises(ConfigError, match="token"):
        D1Client("a", "db", token=" ")
    with pytest.raises(ConfigError):
        D1Client("a", "db", token="t", base_url="ftp://x")
    with pytest.raises(ConfigError):
        D1Client("a", "db", token="t", base_url="https://u:p@x/client/v4")
    client = D1Client("a/b", "db", token="t", base_url="https://x.example/client/v4/")
    assert client._url == "https://x.example/client/v4/accounts/a%2Fb/d1/database/db"
