"""The job store's operations over named queries, shared by the SQL and D1 stores.

Both run the same query text (``queries/jobs.<dialect>.sql``); each store supplies how a
statement runs (``read``, ``write``, ``returning``, ``filtered``) and its enqueue.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar

from .jobs import (
    JobCodec,
    JobResult,
    JobStatus,
    SendJob,
    count_statuses,
    job_row_from_mapping,
    result_values,
)
from .tracking_queries import Bindable
from .tracking_store import check_page

S = TypeVar("S")


class JobQueries(Generic[S]):
    """``JobStore``'s methods other than enqueue, on a store's statement type ``S``.

    A store class lists its base (which runs statements) before this one, so its ``read``,
    ``write``, ``returning`` and ``filtered`` come first in the method order."""

    _codec: JobCodec
    _claim: Bindable[S]
    _complete: Bindable[S]
    _get: Bindable[S]

    async def read(self, statement: S) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def write(self, statements: Sequence[S]) -> int:
        raise NotImplementedError

    async def returning(self, statements: Sequence[S]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def filtered(self, name: str, values: Mapping[str, Any], **fill: str) -> S:
        raise NotImplementedError

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
