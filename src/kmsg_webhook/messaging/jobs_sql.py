"""The send queue on SQLite and PostgreSQL, in the webhook store's database.

Jobs live in ``kmsg_webhook_message_jobs`` (migration 0008). The claim is reviewed SQL
(``sql/queries/jobs.<dialect>.sql``); the rest is SQLAlchemy Core, one path for both dialects.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ..crypto.fields import FieldCrypto
from ..stores.sql.base import SqlDatabase
from ..stores.sql.tables import Timestamp
from ..stores.sqlfiles import JOBS_TABLE
from .jobs import (
    JobCodec,
    JobResult,
    JobStatus,
    SendJob,
    check_jobs,
    count_statuses,
    job_row_from_mapping,
    requeued_values,
    result_values,
)
from .sql_store import SqlStoreBase
from .tracking_store import check_page


def jobs_table(schema: str | None) -> sa.Table:
    """The job table (queries only; the DDL is migration 0008)."""
    return sa.Table(
        JOBS_TABLE,
        sa.MetaData(schema=schema),
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("batch_id", sa.Text),
        sa.Column("options", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("run_at", Timestamp, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("lease_owner", sa.Text),
        sa.Column("lease_expires_at", Timestamp),
        sa.Column("provider_id", sa.Text),
        sa.Column("provider_message_id", sa.Text),
        sa.Column("error_code", sa.Text),
        sa.Column("error_message", sa.Text),
        sa.Column("completed_at", Timestamp),
    )


class SqlJobStore(SqlStoreBase):
    """The job queue of one SQL database; the protocol is ``JobStore``."""

    def __init__(
        self, db: SqlDatabase, *, crypto: FieldCrypto | None = None, owns_database: bool = False
    ) -> None:
        super().__init__(db, owns_database=owns_database)
        self._codec = JobCodec(crypto)
        self._t = jobs_table(db.names.schema)
        self._claim = self.named_query("jobs", "claim_jobs").bindparams(
            sa.bindparam("batch_id", type_=sa.Text())
        )

    async def enqueue(self, jobs: Sequence[SendJob]) -> list[str]:
        check_jobs(jobs)
        if not jobs:
            return []
        t = self._t
        rows = [self._codec.to_row(job).values() for job in jobs]
        statement = self._db.insert_statement(t).on_conflict_do_nothing().returning(t.c.id)

        async def op(conn: AsyncConnection, attempt: int) -> set[str]:
            await self._db.begin_write(conn)
            new = set((await conn.execute(statement, rows)).scalars())
            await conn.commit()
            return new

        new = await self._db.run(op)
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
        rows = await self.claim_rows(self._claim, params)
        return await self._codec.claimed(rows, worker_id=worker_id, now=now, complete=self.complete)

    async def complete(self, results: Sequence[JobResult]) -> int:
        if not results:
            return 0
        t = self._t
        statements = [
            sa.update(t)
            .where(t.c.id == result.job_id, t.c.lease_owner == result.worker_id)
            .values(result_values(result))
            for result in results
        ]

        async def op(conn: AsyncConnection, attempt: int) -> int:
            await self._db.begin_write(conn)
            applied = 0
            for statement in statements:  # one each: rowcount is per row on every driver
                applied += int((await conn.execute(statement)).rowcount)
            await conn.commit()
            return applied

        return await self._db.run(op)

    async def get(self, job_id: str) -> SendJob | None:
        found = await self._jobs(sa.select(self._t).where(self._t.c.id == job_id))
        return found[0] if found else None

    async def list_jobs(
        self,
        *,
        batch_id: str | None = None,
        statuses: Sequence[JobStatus] = (),
        limit: int = 100,
        offset: int = 0,
    ) -> list[SendJob]:
        check_page(limit, offset)
        t = self._t
        query = sa.select(t).where(*self._conditions(batch_id, statuses))
        query = query.order_by(t.c.run_at, t.c.id).limit(limit).offset(offset)
        return await self._jobs(query)

    async def count_by_status(self, *, batch_id: str | None = None) -> dict[JobStatus, int]:
        t = self._t
        query = (
            sa.select(t.c.status, sa.func.count())
            .where(*self._conditions(batch_id, ()))
            .group_by(t.c.status)
        )

        async def op(conn: AsyncConnection, attempt: int) -> dict[str, int]:
            return {str(status): int(count) for status, count in await conn.execute(query)}

        return count_statuses(await self._db.run(op))

    async def requeue(
        self, *, run_at: datetime, job_ids: Sequence[str] | None = None, batch_id: str | None = None
    ) -> int:
        t = self._t
        conditions = self._conditions(batch_id, (JobStatus.FAILED,))
        if job_ids is not None:
            conditions.append(t.c.id.in_(list(job_ids)))
        return await self.write(sa.update(t).where(*conditions).values(requeued_values(run_at)))

    async def _jobs(self, query: sa.Select[Any]) -> list[SendJob]:
        return [self._codec.from_row(job_row_from_mapping(r)) for r in await self.read(query)]

    def _conditions(
        self, batch_id: str | None, statuses: Sequence[JobStatus]
    ) -> list[sa.ColumnElement[bool]]:
        t = self._t
        conditions: list[sa.ColumnElement[bool]] = []
        if batch_id is not None:
            conditions.append(t.c.batch_id == batch_id)
        if statuses:
            conditions.append(t.c.status.in_([JobStatus(s).value for s in statuses]))
        return conditions
