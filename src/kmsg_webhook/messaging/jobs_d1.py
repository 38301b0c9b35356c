"""The send queue on Cloudflare D1, in the webhook store's D1 database.

Jobs live in ``kmsg_webhook_message_jobs`` (or the URL's ``jobs_table``), made by the SQLite
backend's migration 0008; every query is the SQLite dialect's
(``stores/sql/queries/jobs.sqlite.sql``). A claim is one statement; an enqueue is one statement
per request (its jobs as one JSON array, cut to D1's size of a value); a set of results goes as
one batch (one transaction). A claim whose answer is lost leaves its jobs
leased until the lease expires; another claim then sends them (at least once).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from ..crypto.fields import FieldCrypto
from ..stores.d1.client import D1Statement
from ..stores.d1.queries import D1Query
from ..stores.rows import dumps
from ..stores.sqlbind import SQLITE
from ..stores.sqlfiles import JOBS_TABLE
from .d1_store import D1StoreBase
from .jobs import (
    JobCodec,
    SendJob,
    check_jobs,
)
from .jobs_queries import JobQueries


def _json_arrays(elements: Sequence[str], max_bytes: int) -> Iterator[str]:
    """The JSON texts ``elements`` joined into as few JSON arrays as keep each within
    ``max_bytes`` (UTF-8); an element larger than that goes alone (and D1 refuses it)."""
    batch: list[str] = []
    size = 2  # the brackets
    for element in elements:
        length = len(element.encode()) + 1  # and a comma
        if batch and size + length > max_bytes:
            yield "[" + ",".join(batch) + "]"
            batch, size = [], 2
        batch.append(element)
        size += length
    if batch:
        yield "[" + ",".join(batch) + "]"


class D1JobStore(D1StoreBase, JobQueries[D1Statement]):
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
        rows = [dumps(SQLITE.row(self._codec.to_row(job).values())) for job in jobs]
        new: set[str] = set()
        # A bulk send of any size goes in requests of a bounded size.
        for batch in _json_arrays(rows, self._client.limits.max_value_bytes):
            [result] = await self.run([self._enqueue.bind(jobs=batch)])
            new.update(str(row["id"]) for row in result.rows)
        return [job.id for job in jobs if job.id in new]
