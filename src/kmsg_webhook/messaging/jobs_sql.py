"""The send queue on SQLite and PostgreSQL, in the webhook store's database.

Jobs live in ``kmsg_webhook_message_jobs`` (migration 0008). Every query is reviewed SQL:
``sql/queries/jobs.sqlite.sql`` (the D1 store's too), with ``jobs.postgresql.sql`` replacing the
ones Postgres words differently.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from ..crypto.fields import FieldCrypto
from ..stores.sql.base import SqlDatabase
from .jobs import (
    JobCodec,
    JobResult,
    JobStatus,
    SendJob,
    check_jobs,
    count_statuses,
    job_row_from_mapping,
    result_values,
)
from .sql_store import SqlStoreBase
from .tracking_store import check_page


class SqlJobStore(SqlStoreBase):
    """The job queue of one SQL database; the protocol is ``JobStore``."""

    family = "jobs"

    def __init__(
        self, db: SqlDatabase, *, crypto: FieldCrypto | None = None, owns_database: bool = False
    ) -> None:
        super().__init__(db, owns_database=owns_database)
        self._codec = JobCodec(crypto)
        self._claim, self._enqueue, self._complete, self._get = (
            self.named(name) for name in ("claim_jobs", "enqueue", "complete", "get")
        )

    async def enqueue(self, jobs: Sequence[SendJob]) -> list[str]:
        check_jobs(jobs)
        if not jobs:
            return []
        statements = [self._enqueue.bind(self._codec.to_row(job).values()) for job in jobs]
        new = {str(row["id"]) for row in await self.returning(statements)}
        return [job.id for job in jobs if job.id in new]

    async def claim(
        self,
        *,
        worker_id: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        batch_id: str | None = None,
    ) -> list[SendJob]:
        if limit <= 0:
            return []
        params = {
            "worker_id": worker_id,
            "now": now,
            "lease_until": lease_until,
            "limit": limit,
            "batch_id": batch_id,
        }
        rows = await self.returning([self._claim.bind(params)])
        return await self._codec.claimed(rows, worker_id=worker_id, now=now, complete=self.complete)

    async def complete(self, results: Sequence[JobResult]) -> int:
        if not results:
            return 0
        return await self.write(
            [
                self._complete.bind(
                    {**result_values(r), "job_id": r.job_id, "worker_id": r.worker_id}
                )
                for r in results
            ]
        )

    async def get(self, job_id: str) -> SendJob | None:
        found = await self.read(self._get.bind({"id": job_id}))
        return self._codec.from_row(job_row_from_mapping(found[0])) if found else None

    async def list_jobs(
        self,
        *,
        batch_id: str | None = None,
        statuses: Sequence[JobStatus] = (),
        limit: int = 100,
        offset: int = 0,
    ) -> list[SendJob]:
        check_page(limit, offset)
        params = {
            "batch_id": batch_id,
            "statuses": [JobStatus(s).value for s in statuses] or None,
            "limit": limit,
            "offset": offset,
        }
        rows = await self.read(self.filtered("list_jobs", params))
        return [self._codec.from_row(job_row_from_mapping(r)) for r in rows]

    async def count_by_status(self, *, batch_id: str | None = None) -> dict[JobStatus, int]:
        rows = await self.read(self.filtered("count_by_status", {"batch_id": batch_id}))
        return count_statuses({str(r["status"]): int(r["n"]) for r in rows})

    async def requeue(
        self, *, run_at: datetime, job_ids: Sequence[str] | None = None, batch_id: str | None = None
    ) -> int:
        values = {
            "run_at": run_at,
            "statuses": [JobStatus.FAILED.value],
            "batch_id": batch_id,
            "job_ids": None if job_ids is None else list(job_ids),
        }
        return await self.write([self.filtered("requeue", values)])
