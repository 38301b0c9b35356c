"""The durable queue of scheduled and bulk sends: one job per message, stored before it is sent.

Workers *claim* due jobs under a lease (several processes may), send them, and *complete* them
while the lease holds, so no message is sent twice while its lease holds; a worker killed
mid-send leaves leases that expire, and another worker sends those jobs (at least once). The job
id is the message id: a message is queued once. Backends: :class:`InMemoryJobStore` (here),
:class:`~kmsg_webhook.messaging.jobs_sql.SqlJobStore` (SQLite, PostgreSQL) and
:class:`~kmsg_webhook.messaging.jobs_d1.D1JobStore` (Cloudflare D1); open one from the
webhook store URL with :func:`job_store_from_url`.
``tests/conformance/test_job_store_conformance.py`` is the contract.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from ..crypto.config import FieldCryptoConfig, FieldMode
from ..crypto.fields import FieldCrypto
from ..errors import ConfigError
from ..stores.rows import to_datetime
from ..stores.url import D1_SCHEMES, resolve_url, scheme_of
from .options_codec import decode_options, encode_options
from .tracking_rows import UNREADABLE_ROW, refuse_sealed, unreadable_code
from .tracking_store import check_page
from .types import SendOptions

logger = logging.getLogger("kmsg_webhook.messaging.queue")
#: The logical table bound into sealed values' associated data.
JOBS = "jobs"


class JobStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class SendJob:
    """One message to send at ``run_at`` (its id is the message id)."""

    id: str
    options: SendOptions
    run_at: datetime
    created_at: datetime
    batch_id: str | None = None
    status: JobStatus = JobStatus.PENDING
    attempts: int = 0
    provider_id: str | None = None
    provider_message_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    completed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class JobResult:
    """How one claimed job's send went (recorded only while ``worker_id`` holds the lease)."""

    job_id: str
    worker_id: str
    status: JobStatus
    completed_at: datetime
    provider_id: str | None = None
    provider_message_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None


class JobStore(Protocol):
    """Send jobs by id, with leased claims."""

    async def init(self) -> None:
        """Connect and create (migrate) the table; idempotent."""

    async def close(self) -> None:
        """Release connections (a store opened by URL owns its database)."""

    async def enqueue(self, jobs: Sequence[SendJob]) -> list[str]:
        """Store pending jobs in one operation; a job whose id exists is skipped. Returns
        the ids that were new, in order."""

    async def claim(
        self,
        *,
        worker_id: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        batch_id: str | None = None,
    ) -> list[SendJob]:
        """Lease up to ``limit`` pending jobs due at ``now`` (earliest first), counting an
        attempt each; only batch ``batch_id``'s when given. Expired leases are claimable."""

    async def complete(self, results: Sequence[JobResult]) -> int:
        """Record results of jobs their workers still hold; returns how many applied."""

    async def get(self, job_id: str) -> SendJob | None:
        """The job, or ``None``."""

    async def list_jobs(
        self,
        *,
        batch_id: str | None = None,
        statuses: Sequence[JobStatus] = (),
        limit: int = 100,
        offset: int = 0,
    ) -> list[SendJob]:
        """Jobs (of one batch, in some statuses), earliest ``run_at`` first."""

    async def count_by_status(self, *, batch_id: str | None = None) -> dict[JobStatus, int]:
        """How many jobs are in each status (every status listed)."""

    async def requeue(
        self, *, run_at: datetime, job_ids: Sequence[str] | None = None, batch_id: str | None = None
    ) -> int:
        """Make failed jobs pending again, due at ``run_at`` (those of ``job_ids``, of batch
        ``batch_id``, or all); their result is cleared, their attempts kept. Returns how many.
        Jobs in other statuses are left alone: a sent one is never sent again."""


@dataclass(frozen=True, slots=True)
class JobRow:
    """The columns of one job row, as stored (``options`` sealed with field crypto)."""

    id: str
    batch_id: str | None
    options: str
    status: str
    run_at: datetime
    created_at: datetime
    attempts: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    provider_id: str | None
    provider_message_id: str | None
    error_code: str | None
    error_message: str | None
    completed_at: datetime | None

    def values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


JOB_COLUMNS = tuple(f.name for f in dataclasses.fields(JobRow))


def job_row_from_mapping(mapping: Mapping[str, Any]) -> JobRow:
    values = {name: mapping[name] for name in JOB_COLUMNS}
    for name in ("run_at", "created_at", "lease_expires_at", "completed_at"):
        values[name] = to_datetime(values[name])
    values["attempts"] = int(values["attempts"])
    return JobRow(**values)


class JobCodec:
    """Jobs to rows and back; seals the options (recipient and text) when field crypto
    encrypts payloads."""

    def __init__(self, crypto: FieldCrypto | None = None) -> None:
        self.crypto = crypto
        self._sealing = crypto is not None and crypto.config.payload is FieldMode.ENCRYPT

    def to_row(self, job: SendJob) -> JobRow:
        options = encode_options(job.options)
        if self.crypto is not None and self._sealing:
            options = self.crypto.seal(options, table=JOBS, column="options", record_id=job.id)
        return JobRow(
            id=job.id,
            batch_id=job.batch_id,
            options=options,
            status=job.status.value,
            run_at=job.run_at,
            created_at=job.created_at,
            attempts=job.attempts,
            lease_owner=None,
            lease_expires_at=None,
            provider_id=job.provider_id,
            provider_message_id=job.provider_message_id,
            error_code=job.error_code,
            error_message=job.error_message,
            completed_at=job.completed_at,
        )

    async def claimed(
        self,
        rows: Iterable[Mapping[str, Any]],
        *,
        worker_id: str,
        now: datetime,
        complete: Callable[[Sequence[JobResult]], Awaitable[int]],
    ) -> list[SendJob]:
        """Rows a claim returned (in no order), as jobs in claim order: earliest first.

        A row that does not open (a key not configured, a tampered or malformed value) is
        settled failed through ``complete`` and left out: left pending, it would sort first
        and every later claim would lease it again instead of the jobs behind it.
        """
        found = sorted((job_row_from_mapping(r) for r in rows), key=lambda r: (r.run_at, r.id))
        jobs: list[SendJob] = []
        refused: list[JobResult] = []
        for row in found:
            try:
                jobs.append(self.from_row(row))
            except UNREADABLE_ROW as exc:
                logger.error("job %s settled failed: %s", row.id, exc)
                refused.append(
                    JobResult(
                        row.id,
                        worker_id,
                        JobStatus.FAILED,
                        now,
                        error_code=unreadable_code(exc),
                        error_message=f"refused: {exc}",
                    )
                )
        if refused:
            await complete(refused)
        return jobs

    def from_row(self, row: JobRow) -> SendJob:
        options = row.options
        if self.crypto is None:
            refuse_sealed(options, f"job {row.id!r}")
        else:
            options = self.crypto.open(
                options,
                table=JOBS,
                column="options",
                record_id=row.id,
                sealed_mode=self._sealing,
            )
        return SendJob(
            id=row.id,
            options=decode_options(options),
            run_at=row.run_at,
            created_at=row.created_at,
            batch_id=row.batch_id,
            status=JobStatus(row.status),
            attempts=row.attempts,
            provider_id=row.provider_id,
            provider_message_id=row.provider_message_id,
            error_code=row.error_code,
            error_message=row.error_message,
            completed_at=row.completed_at,
        )


def check_jobs(jobs: Sequence[SendJob]) -> None:
    """Jobs to enqueue must be pending and carry their message id."""
    for job in jobs:
        if job.status is not JobStatus.PENDING:
            raise ConfigError(f"job {job.id!r} must be pending to be queued")
        if job.options.message_id != job.id:
            raise ConfigError(f"job {job.id!r} must have the message id of its options")


def count_statuses(counts: Mapping[str, int]) -> dict[JobStatus, int]:
    """Every status with its count (0 when absent)."""
    return {status: counts.get(status.value, 0) for status in JobStatus}


class InMemoryJobStore:
    """Process-local job queue (lost on restart); keeps rows as stored."""

    def __init__(self, *, crypto: FieldCrypto | None = None) -> None:
        self._codec = JobCodec(crypto)
        self._rows: dict[str, JobRow] = {}

    async def init(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def rows(self) -> list[JobRow]:
        return list(self._rows.values())

    async def enqueue(self, jobs: Sequence[SendJob]) -> list[str]:
        check_jobs(jobs)
        new: list[str] = []
        for job in jobs:
            if job.id not in self._rows:
                self._rows[job.id] = self._codec.to_row(job)
                new.append(job.id)
        return new

    async def claim(
        self,
        *,
        worker_id: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        batch_id: str | None = None,
    ) -> list[SendJob]:
        due = sorted(
            (
                row
                for row in self._rows.values()
                if row.status == JobStatus.PENDING.value
                and row.run_at <= now
                and (row.lease_expires_at is None or row.lease_expires_at <= now)
                and (batch_id is None or row.batch_id == batch_id)
            ),
            key=lambda r: (r.run_at, r.id),
        )
        claimed = []
        for row in due[: max(0, limit)]:
            leased = dataclasses.replace(
                row, lease_owner=worker_id, lease_expires_at=lease_until, attempts=row.attempts + 1
            )
            self._rows[row.id] = leased
            claimed.append(leased.values())
        return await self._codec.claimed(
            claimed, worker_id=worker_id, now=now, complete=self.complete
        )

    async def complete(self, results: Sequence[JobResult]) -> int:
        applied = 0
        for result in results:
            row = self._rows.get(result.job_id)
            if row is None or row.lease_owner != result.worker_id:
                continue
            self._rows[result.job_id] = dataclasses.replace(row, **result_values(result))
            applied += 1
        return applied

    async def get(self, job_id: str) -> SendJob | None:
        row = self._rows.get(job_id)
        return None if row is None else self._codec.from_row(row)

    async def list_jobs(
        self,
        *,
        batch_id: str | None = None,
        statuses: Sequence[JobStatus] = (),
        limit: int = 100,
        offset: int = 0,
    ) -> list[SendJob]:
        check_page(limit, offset)
        wanted = {JobStatus(s).value for s in statuses}
        rows = sorted(
            (
                row
                for row in self._rows.values()
                if (batch_id is None or row.batch_id == batch_id)
                and (not wanted or row.status in wanted)
            ),
            key=lambda r: (r.run_at, r.id),
        )
        return [self._codec.from_row(row) for row in rows[offset : offset + limit]]

    async def count_by_status(self, *, batch_id: str | None = None) -> dict[JobStatus, int]:
        return count_statuses(
            Counter(
                r.status for r in self._rows.values() if batch_id is None or r.batch_id == batch_id
            )
        )

    async def requeue(
        self, *, run_at: datetime, job_ids: Sequence[str] | None = None, batch_id: str | None = None
    ) -> int:
        wanted = None if job_ids is None else set(job_ids)
        chosen = [
            row
            for row in self._rows.values()
            if row.status == JobStatus.FAILED.value
            and (wanted is None or row.id in wanted)
            and (batch_id is None or row.batch_id == batch_id)
        ]
        for row in chosen:
            self._rows[row.id] = dataclasses.replace(row, **requeued_values(run_at))
        return len(chosen)


def requeued_values(run_at: datetime) -> dict[str, Any]:
    """The columns a requeue sets."""
    return {
        "status": JobStatus.PENDING.value,
        "run_at": run_at,
        "completed_at": None,
        "provider_id": None,
        "provider_message_id": None,
        "error_code": None,
        "error_message": None,
        "lease_owner": None,
        "lease_expires_at": None,
    }


def result_values(result: JobResult) -> dict[str, Any]:
    """The columns a recorded result sets (the lease is dropped)."""
    return {
        "status": result.status.value,
        "completed_at": result.completed_at,
        "provider_id": result.provider_id,
        "provider_message_id": result.provider_message_id,
        "error_code": result.error_code,
        "error_message": result.error_message,
        "lease_owner": None,
        "lease_expires_at": None,
    }


def job_store_from_url(
    url: str | None = None,
    *,
    crypto: FieldCryptoConfig | FieldCrypto | None = None,
    initialize_schema: bool = True,
) -> JobStore:
    """The job queue in the database a webhook store URL names (nothing connects yet).

    SQLite, PostgreSQL and D1 keep jobs in ``kmsg_webhook_message_jobs`` (migration 0008; a
    D1 URL may rename it with ``jobs_table``).
    """
    field_crypto = (
        None
        if crypto is None
        else crypto
        if isinstance(crypto, FieldCrypto)
        else FieldCrypto(crypto)
    )
    url = resolve_url(url)
    scheme = scheme_of(url)
    if scheme == "memory":
        return InMemoryJobStore(crypto=field_crypto)
    if scheme in D1_SCHEMES:
        from .jobs_d1 import D1JobStore

        return D1JobStore.from_url(url, crypto=field_crypto, initialize_schema=initialize_schema)
    from ..stores.url import database_from_url
    from .jobs_sql import SqlJobStore

    db = database_from_url(url, initialize_schema=initialize_schema)
    return SqlJobStore(db, crypto=field_crypto, owns_database=True)
