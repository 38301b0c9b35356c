"""The send queue on SQLite and PostgreSQL, in the webhook store's database.

Jobs live in ``kmsg_webhook_message_jobs`` (migration 0008). Every query is reviewed SQL:
``sql/queries/jobs.sqlite.sql`` (the D1 store's too), with ``jobs.postgresql.sql`` replacing the
ones Postgres words differently.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from ..crypto.fields import FieldCrypto
from ..stores.sql.base import SqlDatabase
from .jobs import (
    JobCodec,
    SendJob,
    check_jobs,
)
from .jobs_queries import JobQueries
from .sql_store import SqlStoreBase


class SqlJobStore(SqlStoreBase, JobQueries[sa.TextClause]):
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
        rows = self._db.binding.rows(self._codec.to_row(job).values() for job in jobs)
        new = {str(row["id"]) for row in await self.returning([self._enqueue.bind({"jobs": rows})])}
        return [job.id for job in jobs if job.id in new]
