"""``kmsg queue`` and ``kmsg tracking`` as processes (``python -m kmsg_webhook.messaging.cli``)
against SQLite and Postgres stores filled through the stores' own API: output, ``--json``, exit
codes, bad input, confirmation and sealed stores."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from kmsg_webhook.crypto import FieldCryptoConfig
from kmsg_webhook.messaging import (
    DeliveryStatus,
    FailoverOptions,
    FailoverState,
    MessageType,
    SmsSendOptions,
    TrackingRecord,
    job_store_from_url,
    tracking_store_from_url,
)
from kmsg_webhook.messaging.jobs import JobResult, JobStatus, SendJob
from kmsg_webhook.messaging.tracking_records import ApiAttemptStatus
from support.cli import Run, kmsg_process
from support.crypto_keys import KEYS_ENV

LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


async def kmsg(*args: str, env: Mapping[str, str] | None = None, store: str | None = None) -> Run:
    """``kmsg ARGS`` as a process, ``store`` as ``$KMSG_WEBHOOK_STORE_URL``."""
    default = {} if store is None else {"KMSG_WEBHOOK_STORE_URL": store}
    return await kmsg_process(*args, env={**default, **(env or {})})


def job(n: int, *, run_at: datetime) -> SendJob:
    return SendJob(
        id=f"job-{n}",
        options=SmsSendOptions(
            to=f"010-5555-{n:04d}", text=f"안내 {n}", message_id=f"job-{n}", from_="0212345678"
        ),
        run_at=run_at,
        created_at=run_at,
        batch_id="b1",
    )


def record(mid: str, status: DeliveryStatus, at: datetime, **extra: Any) -> TrackingRecord:
    """An ALIMTALK record to 010-1234-5678, requested, updated and due at ``at``."""
    return TrackingRecord(
        message_id=mid,
        provider_id="solapi",
        provider_message_id=f"P-{mid}",
        type=MessageType.ALIMTALK,
        to="010-1234-5678",
        requested_at=at,
        status=status,
        status_updated_at=at,
        next_check_at=at,
        **extra,
    )


async def fill(url: str, crypto: FieldCryptoConfig | None = None) -> None:
    """Jobs ``job-1`` sent, ``job-2`` and ``job-3`` failed, ``job-4`` pending; tracking records
    ``old-delivered`` (long ago), ``fell-back`` (failed, fallback sent) and ``checking``."""
    now = datetime.now(UTC)
    jobs = job_store_from_url(url, crypto=crypto)
    tracking = tracking_store_from_url(url, crypto=crypto)
    try:
        await jobs.enqueue([job(n, run_at=now - timedelta(minutes=5)) for n in range(1, 5)])
        claimed = await jobs.claim(
            worker_id="w", now=now, lease_until=now + timedelta(minutes=1), limit=3
        )
        assert [j.id for j in claimed] == ["job-1", "job-2", "job-3"]
        await jobs.complete(
            [
                JobResult("job-1", "w", JobStatus.SENT, now, "solapi", "P-1"),
                JobResult("job-2", "w", JobStatus.FAILED, now, "solapi", error_code="NETWORK"),
                JobResult("job-3", "w", JobStatus.FAILED, now, "solapi", error_code="NETWORK"),
            ]
        )

        fallback = FailoverState(
            FailoverOptions(enabled=True, fallback_content="문자 안내"),
            attempted=True,
            status=ApiAttemptStatus.SENT,
            fallback_message_id="fell-back:api-fallback",
            fallback_provider_id="solapi",
        )
        await tracking.upsert(record("old-delivered", DeliveryStatus.DELIVERED, LONG_AGO))
        await tracking.upsert(record("fell-back", DeliveryStatus.FAILED, now, failover=fallback))
        await tracking.upsert(record("checking", DeliveryStatus.SENT, now))
    finally:
        await jobs.close()
        await tracking.close()


async def test_queue_commands(sql_store_url: str) -> None:
    await fill(sql_store_url)
    stats = await kmsg("queue", "stats", "--json", store=sql_store_url)
    assert stats.code == 0, stats.err
    assert stats.json()["jobs"] == {"pending": 1, "sent": 1, "failed": 2}
    listed = await kmsg("queue", "list", "--status", "failed", store=sql_store_url)
    assert listed.code == 0, listed.err
    lines = listed.out.splitlines()
    assert lines[0].split()[:3] == ["ID", "BATCH", "STATUS"]
    assert [line.split()[0] for line in lines[2:]] == ["job-2", "job-3"]
    assert "010-****-0002" in listed.out and "010-5555-0002" not in listed.out  # masked

    # A sent job is never sent again; an unknown one is not found; nothing changes either way.
    sent = await kmsg("queue", "retry", "job-1", "job-2", store=sql_store_url)
    assert (sent.code, sent.out) == (5, "")
    assert "send the message twice" in sent.err
    unknown = await kmsg("queue", "retry", "job-2", "nope", store=sql_store_url)
    assert unknown.code == 3 and "nope" in unknown.err
    usage = await kmsg("queue", "retry", store=sql_store_url)
    assert usage.code == 2 and "--all-failed" in usage.err

    dry = await kmsg("queue", "retry", "--all-failed", "--dry-run", "--json", store=sql_store_url)
    assert dry.json() == {"requeued": 2, "already_pending": [], "dry_run": True}
    one = await kmsg("queue", "retry", "job-2", "job-4", store=sql_store_url)
    assert one.code == 0, one.err
    assert one.out.splitlines() == [
        "requeued 1 failed job(s); a worker sends them when it next looks",
        "job-4 is already pending",
    ]
    rest = await kmsg(
        "queue", "retry", "--all-failed", "--batch", "b1", "--json", store=sql_store_url
    )
    assert rest.json()["requeued"] == 1
    after = await kmsg("queue", "list", "--json", store=sql_store_url)
    by_id = {j["id"]: j for j in after.json()["jobs"]}
    assert {i: j["status"] for i, j in by_id.items()} == {
        "job-1": "sent",
        "job-2": "pending",
        "job-3": "pending",
        "job-4": "pending",
    }
    assert by_id["job-2"]["error_code"] is None and by_id["job-2"]["attempts"] == 1


async def test_tracking_commands(sql_store_url: str) -> None:
    await fill(sql_store_url)
    listed = await kmsg("tracking", "list", "--json", store=sql_store_url)
    assert listed.code == 0, listed.err
    records = listed.json()["records"]
    assert [r["message_id"] for r in records][-1] == "old-delivered"  # newest first
    assert {r["to"] for r in records} == {"010-****-5678"}
    failed = await kmsg(
        "tracking", "list", "--status", "FAILED", "--to", "010-1234-5678", store=sql_store_url
    )
    assert [line.split()[0] for line in failed.out.splitlines()[2:]] == ["fell-back"]

    shown = await kmsg("tracking", "show", "fell-back", "--json", store=sql_store_url)
    assert shown.code == 0, shown.err
    assert shown.json()["record"]["fallback"] == {
        "status": "sent",
        "message_id": "fell-back:api-fallback",
        "provider_id": "solapi",
        "error_code": None,
    }
    text = await kmsg("tracking", "show", "fell-back", store=sql_store_url)
    assert "status  FAILED" in text.out and "fallback  status sent" in text.out
    missing = await kmsg("tracking", "show", "nope", "--json", store=sql_store_url)
    assert missing.code == 3 and missing.json()["ok"] is False

    # Purging asks first; without a terminal it is refused, and nothing goes.
    dry = await kmsg("tracking", "purge", "--older-than", "30d", "--dry-run", store=sql_store_url)
    assert dry.code == 0 and dry.out.startswith("would purge 1 tracked message(s)")
    refused = await kmsg("tracking", "purge", "--preset", "ops-logs", store=sql_store_url)
    assert refused.code == 5 and "--yes" in refused.err
    both = await kmsg(
        "tracking", "purge", "--preset", "ops-logs", "--older-than", "1d", store=sql_store_url
    )
    assert both.code == 2
    polled = await kmsg(
        "tracking", "purge", "--older-than", "1d", "--status", "SENT", store=sql_store_url
    )
    assert polled.code == 2  # argparse: SENT is still checked, never purged
    purged = await kmsg(
        "tracking", "purge", "--preset", "ops-logs", "--yes", "--json", store=sql_store_url
    )
    assert purged.json() == {"purged": 1, "dry_run": False}
    left = await kmsg("tracking", "list", "--json", store=sql_store_url)
    assert sorted(r["message_id"] for r in left.json()["records"]) == ["checking", "fell-back"]


async def test_bad_stores_are_typed_errors_with_exit_codes(tmp_path: Any) -> None:
    cases = [
        ((), {}, 2, "no store"),
        (("--store", "memory://"), {}, 2, "keeps nothing"),
        (("--store", "ftp://host/db"), {}, 2, "unsupported store URL"),
        (("--store", f"sqlite:///{tmp_path}/missing.db"), {}, 4, "no SQLite database"),
        (("--store", f"sqlite:///{tmp_path}/no/dir.db"), {}, 4, "no directory"),
    ]
    for extra, env, code, message in cases:
        run = await kmsg("queue", "stats", *extra, env=env)
        assert (run.code, run.out) == (code, ""), (extra, run)
        assert message in run.err
    secret = "postgresql://kmsg:hunter2@127.0.0.1:1/db"
    down = await kmsg("tracking", "list", "--store", secret, "--store-timeout", "0.5")
    assert down.code == 4, down
    assert "hunter2" not in down.err + down.out


async def test_a_sealed_store_needs_its_keys(sql_store_url: str) -> None:
    await fill(sql_store_url, FieldCryptoConfig.from_env(KEYS_ENV))
    for args in (("queue", "list"), ("tracking", "list"), ("tracking", "show", "checking")):
        keyless = await kmsg(*args, store=sql_store_url)
        assert keyless.code == 5, keyless
        assert "KMSG_WEBHOOK_KEYS" in keyless.err and keyless.out == ""
    opened = await kmsg("tracking", "show", "checking", "--json", env=KEYS_ENV, store=sql_store_url)
    assert opened.code == 0, opened.err
    assert opened.json()["record"]["to"] == "010-****-5678"
    jobs = await kmsg(
        "queue", "list", "--status", "sent", "--json", env=KEYS_ENV, store=sql_store_url
    )
    assert [j["to"] for j in jobs.json()["jobs"]] == ["010-****-0001"]


async def test_purge_counts_only_what_it_deletes(sql_store_url: str) -> None:
    """A record whose SMS fallback is still being sent is never purged, so neither the dry run
    nor the question before a purge counts it."""
    tracking = tracking_store_from_url(sql_store_url)
    in_flight = FailoverState(
        FailoverOptions(enabled=True, fallback_content="문자 안내"),
        attempted=True,
        status=ApiAttemptStatus.ATTEMPTING,
    )
    try:
        for mid, failover in (("finished", None), ("falling-back", in_flight)):
            await tracking.upsert(record(mid, DeliveryStatus.FAILED, LONG_AGO, failover=failover))
    finally:
        await tracking.close()
    args = ("tracking", "purge", "--older-than", "30d")
    dry = await kmsg(*args, "--dry-run", "--json", store=sql_store_url)
    assert dry.code == 0, dry.err
    assert dry.json() == {"would_purge": 1, "dry_run": True}
    asked = await kmsg(*args, store=sql_store_url)
    assert asked.code == 5 and "purge 1 tracked message(s)" in asked.err
    purged = await kmsg(*args, "--yes", "--json", store=sql_store_url)
    assert purged.json() == {"purged": 1, "dry_run": False}
    left = await kmsg("tracking", "list", "--json", store=sql_store_url)
    assert [r["message_id"] for r in left.json()["records"]] == ["falling-back"]
