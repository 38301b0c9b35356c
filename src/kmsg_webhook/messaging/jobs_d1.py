"""The send queue on Cloudflare D1, in the webhook store's D1 database.

Jobs live in ``kmsg_webhook_message_jobs`` (or the URL's ``jobs_table``), made by the SQLite
backend's migration 0008; every query is the SQLite dialect's
(``stores/sql/queries/jobs.sqlite.sql``). A claim is one statement; an enqueue and a set of
results each go as one batch (one transaction). A claim whose answer is lost leaves its jobs
leased until the lease expires; another claim then sends them (at least once).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from ..crypto.fields import FieldCrypto
from ..stores.d1.queries import D1Query
from ..stores.sqlfiles import JOBS_TABLE
from .d1_store import D1StoreBase
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
from .tracking_store import check_page

#: Jobs stored per batch: a bulk send of any size goes in requests of a bounded size.
ENQUEUE_BATCH = 500


class D1JobStore(D1StoreBase):
    """The job queue of one D1 database; the protocol is ``JobStore``."""

    family = "jobs"
    default_table = JOBS_TABLE
    migration = 8
    table_option = "jobs_table"

    def _prepare(self, crypto: FieldCrypto | None) -> None:
        self._codec = JobCodec(crypto)
        q = {
            name: D1Query.of(self.named(name))
            for name in ("claim_jobs", "enqueue", "complete", "get")
        }
        self._claim, self._enqueue, self._complete = q["claim_jobs"], q["enqueue"], q["complete"]
        self._get = q["get"]

    async def enqueue(self, jobs: Sequence[SendJob]) -> list[str]:
        check_jobs(jobs)
        new: set[str] = set()
        for start in range(0, len(jobs), ENQUEUE_BATCH):
            chunk = jobs[start : start + ENQUEUE_BATCH]
            statements = [self._enqueue.bind(self._codec.to_row(job).values()) for job in chunk]
            for result in await self.run(statements):
                new.update(str(row["id"]) for row in result.rows)
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
        rows = await self.read(self._claim.bind(params))
        return await self._codec.claimed(rows, worker_id=worker_id, now=now, complete=self.complete)

    async def complete(self, results: Sequence[JobResult]) -> int:
        if not results:
            return 0
        statements = [
            self._complete.bind({**result_values(r), "job_id": r.job_id, "worker_id": r.worker_id})
            for r in results
        ]
        return sum(result.changes for result in await self.run(statements))

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
        [result] = await self.run([self.filtered("requeue", values)])
        return result.changes
