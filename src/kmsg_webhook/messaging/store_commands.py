"""``kmsg queue`` and ``kmsg tracking``: the send queue and the tracked messages of a store.

Both open the store ``--store`` names (default ``$KMSG_WEBHOOK_STORE_URL``), which must persist
(``memory://`` keeps nothing) and exist. With ``KMSG_WEBHOOK_KEYS`` set, field crypto opens
what was sealed; without keys, sealed values are refused (exit 5). Recipients are shown masked
and store URLs without their passwords.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..cliargs import age, confirm, moment, positive, positive_float
from ..crypto.config import FieldCryptoConfig
from ..crypto.fields import FieldCrypto
from ..display import print_table
from ..errors import ConfigError, UnsafeOperationError
from ..phone import mask_phone
from ..redact import redact_url
from ..stores.sql.base import DEFAULT_RETRY_TIMEOUT
from ..stores.url import D1_SCHEMES, database_from_url, require_durable, scheme_of
from .errors import JobNotFoundError, TrackingRecordNotFoundError
from .jobs import JobStatus, JobStore, SendJob, job_store_from_url
from .jobs_sql import SqlJobStore
from .tracking_records import TrackingRecord
from .tracking_sql import SqlTrackingStore
from .tracking_store import (
    TERMINAL_STATUSES,
    RetentionPolicy,
    RetentionPreset,
    TrackingFilter,
    TrackingStore,
    tracking_store_from_url,
)
from .types import DeliveryStatus, MessageType

if TYPE_CHECKING:
    from .cli import Output, Setup

STORE_ENV = "KMSG_WEBHOOK_STORE_URL"


@dataclass(slots=True)
class MessagingStores:
    """The tracking store and the job queue of one database (closed together)."""

    url: str
    tracking: TrackingStore
    jobs: JobStore
    crypto: FieldCrypto | None

    @property
    def shown_url(self) -> str:
        return redact_url(self.url)

    async def init(self) -> None:
        await self.tracking.init()
        await self.jobs.init()

    async def close(self) -> None:
        await self.tracking.close()
        await self.jobs.close()


def store_url(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    url: str | None = args.store or env.get(STORE_ENV)
    if not url:
        raise ConfigError(f"no store: pass --store URL or set ${STORE_ENV}")
    return url


def open_stores(
    url: str, env: Mapping[str, str], *, retry_timeout: float = DEFAULT_RETRY_TIMEOUT
) -> MessagingStores:
    """The stores of the database ``url`` names (refused when it cannot persist or does not
    exist), with field crypto from ``env``; nothing connects yet."""
    require_durable(url)
    config = FieldCryptoConfig.from_env(env)
    crypto = None if config is None else FieldCrypto(config)
    if scheme_of(url) in D1_SCHEMES:
        return MessagingStores(
            url,
            tracking=tracking_store_from_url(url, crypto=crypto),
            jobs=job_store_from_url(url, crypto=crypto),
            crypto=crypto,
        )
    db = database_from_url(url, retry_timeout=retry_timeout)
    # One database under both: the job store closes it, the tracking store leaves it open.
    return MessagingStores(
        url,
        tracking=SqlTrackingStore(db, crypto=crypto),
        jobs=SqlJobStore(db, crypto=crypto, owns_database=True),
        crypto=crypto,
    )


def store_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        help=f"store URL (default: ${STORE_ENV}); memory:// is refused, as it keeps nothing",
    )
    parser.add_argument(
        "--store-timeout",
        type=positive_float,
        default=DEFAULT_RETRY_TIMEOUT,
        help="seconds to keep retrying an unreachable store",
    )


# --------------------------------------------------------------------------- output


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def job_json(job: SendJob) -> dict[str, Any]:
    return {
        "id": job.id,
        "batch_id": job.batch_id,
        "status": job.status.value,
        "type": job.options.type.value,
        "to": mask_phone(job.options.to),
        "run_at": job.run_at.isoformat(),
        "created_at": job.created_at.isoformat(),
        "attempts": job.attempts,
        "provider_id": job.provider_id,
        "provider_message_id": job.provider_message_id,
        "error_code": job.error_code,
        "error_message": job.error_message,
        "completed_at": job.completed_at.isoformat() if job.completed_at else None,
    }


def record_json(record: TrackingRecord) -> dict[str, Any]:
    failover = record.failover
    stamps = {
        name: value.isoformat() if value else None
        for name, value in (
            ("requested_at", record.requested_at),
            ("status_updated_at", record.status_updated_at),
            ("next_check_at", record.next_check_at),
            ("scheduled_at", record.scheduled_at),
            ("last_checked_at", record.last_checked_at),
            ("sent_at", record.sent_at),
            ("delivered_at", record.delivered_at),
            ("failed_at", record.failed_at),
        )
    }
    return {
        "message_id": record.message_id,
        "provider_id": record.provider_id,
        "provider_message_id": record.provider_message_id,
        "type": record.type.value,
        "to": mask_phone(record.to),
        "status": record.status.value,
        **stamps,
        "attempt_count": record.attempt_count,
        "provider_status_code": record.provider_status_code,
        "provider_status_message": record.provider_status_message,
        "last_error": None
        if record.last_error is None
        else {"code": record.last_error.code, "message": record.last_error.message},
        "template_id": record.template_id,
        "correlation_id": record.correlation_id,
        "fallback": None
        if failover is None
        else {
            "status": failover.status.value,
            "message_id": failover.fallback_message_id,
            "provider_id": failover.fallback_provider_id,
            "error_code": failover.error_code or failover.warning_code,
        },
    }


# --------------------------------------------------------------------------- commands


StoreAction = Callable[[argparse.Namespace, MessagingStores, "Output"], Awaitable[int]]


def on_stores(action: StoreAction) -> Callable[..., Awaitable[int]]:
    """A ``kmsg`` command running ``action`` on the stores ``--store`` names."""

    async def run(args: argparse.Namespace, setup: Setup, out: Output) -> int:
        url = store_url(args, setup.env)
        stores = open_stores(url, setup.env, retry_timeout=args.store_timeout)
        try:
            await stores.init()
            return await action(args, stores, out)
        finally:
            await stores.close()

    return run


async def _queue_stats(args: argparse.Namespace, stores: MessagingStores, out: Output) -> int:
    counts = await stores.jobs.count_by_status(batch_id=args.batch)
    if out.as_json:
        out.json({"store": stores.shown_url, "batch_id": args.batch, "jobs": counts})
        return 0
    total = sum(counts.values())
    shown = ", ".join(f"{n} {status.value}" for status, n in counts.items())
    scope = f" of batch {args.batch}" if args.batch else ""
    print(f"jobs{scope} in {stores.shown_url}: {total} total: {shown}")
    return 0


async def _queue_list(args: argparse.Namespace, stores: MessagingStores, out: Output) -> int:
    statuses = [JobStatus(s) for s in args.status or ()]
    jobs = await stores.jobs.list_jobs(
        batch_id=args.batch, statuses=statuses, limit=args.limit, offset=args.offset
    )
    if out.as_json:
        out.json({"jobs": [job_json(j) for j in jobs]})
        return 0
    print_table(
        ["ID", "BATCH", "STATUS", "TYPE", "TO", "RUN AT (UTC)", "ATTEMPTS", "PROVIDER", "ERROR"],
        [
            [
                j.id,
                j.batch_id or "-",
                j.status.value,
                j.options.type.value,
                mask_phone(j.options.to) or "-",
                _when(j.run_at),
                str(j.attempts),
                j.provider_id or "-",
                (j.error_code or "") + (f": {j.error_message[:40]}" if j.error_message else ""),
            ]
            for j in jobs
        ],
    )
    if len(jobs) == args.limit:
        print(f"more: --offset {args.offset + args.limit}")
    return 0


async def _queue_retry(args: argparse.Namespace, stores: MessagingStores, out: Output) -> int:
    if bool(args.job_ids) == args.all_failed:
        raise ConfigError("name the jobs to retry, or pass --all-failed (not both)")
    if args.batch and not args.all_failed:
        raise ConfigError("--batch goes with --all-failed")
    jobs = stores.jobs
    pending: list[str] = []
    for job_id in args.job_ids:
        job = await jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        if job.status is JobStatus.SENT:
            raise UnsafeOperationError(
                f"job {job_id!r} was sent (provider message {job.provider_message_id or '-'}): "
                "retrying it would send the message twice; nothing was changed"
            )
        if job.status is JobStatus.PENDING:
            pending.append(job_id)
    failed = [j for j in args.job_ids if j not in pending]
    if args.dry_run:
        due = (
            len(failed)
            if failed
            else (await jobs.count_by_status(batch_id=args.batch))[JobStatus.FAILED]
        )
        return _retried(out, due, pending, dry_run=True)
    now = datetime.now(UTC)
    if args.all_failed:
        count = await jobs.requeue(run_at=now, batch_id=args.batch)
    else:
        count = await jobs.requeue(run_at=now, job_ids=failed) if failed else 0
    return _retried(out, count, pending, dry_run=False)


def _retried(out: Output, count: int, pending: Sequence[str], *, dry_run: bool) -> int:
    if out.as_json:
        out.json({"requeued": count, "already_pending": list(pending), "dry_run": dry_run})
        return 0
    verb = "would requeue" if dry_run else "requeued"
    print(f"{verb} {count} failed job(s); a worker sends them when it next looks")
    for job_id in pending:
        print(f"{job_id} is already pending")
    return 0


async def _tracking_list(args: argparse.Namespace, stores: MessagingStores, out: Output) -> int:
    query = TrackingFilter(
        provider_id=args.provider,
        type=MessageType(args.type) if args.type else None,
        statuses=tuple(DeliveryStatus(s) for s in args.status or ()),
        to=args.to,
        requested_from=args.since,
    )
    records = await stores.tracking.list_records(query, limit=args.limit, offset=args.offset)
    if out.as_json:
        out.json({"records": [record_json(r) for r in records]})
        return 0
    print_table(
        ["MESSAGE ID", "PROVIDER", "TYPE", "TO", "STATUS", "REQUESTED (UTC)", "CHECKS", "FALLBACK"],
        [
            [
                r.message_id,
                r.provider_id,
                r.type.value,
                mask_phone(r.to) or "-",
                r.status.value,
                _when(r.requested_at),
                str(r.attempt_count),
                r.failover.status.value if r.failover else "-",
            ]
            for r in records
        ],
    )
    if len(records) == args.limit:
        print(f"more: --offset {args.offset + args.limit}")
    return 0


async def _tracking_show(args: argparse.Namespace, stores: MessagingStores, out: Output) -> int:
    record = await stores.tracking.get(args.message_id)
    if record is None:
        raise TrackingRecordNotFoundError(args.message_id)
    shown = record_json(record)
    if out.as_json:
        out.json({"record": shown})
        return 0
    fallback = shown.pop("fallback")
    error = shown.pop("last_error")
    for name, value in shown.items():
        print(f"{name.replace('_', ' '):>24}  {'-' if value is None else value}")
    problem = "-" if error is None else f"{error['code']}: {error['message']}"
    print(f"{'last error':>24}  {problem}")
    if fallback is not None:
        details = ", ".join(f"{k} {v}" for k, v in fallback.items() if v is not None)
        print(f"{'fallback':>24}  {details}")
    return 0


async def _tracking_purge(args: argparse.Namespace, stores: MessagingStores, out: Output) -> int:
    if (args.preset is None) == (args.older_than is None):
        raise ConfigError("give either --preset or --older-than")
    if args.preset is not None:
        if args.status:
            raise ConfigError("--status goes with --older-than; a preset names its own")
        policy = RetentionPolicy.preset(args.preset)
    else:
        statuses = [DeliveryStatus(s) for s in args.status or ()] or list(TERMINAL_STATUSES)
        policy = RetentionPolicy(dict.fromkeys(statuses, args.older_than))
    now = datetime.now(UTC)
    due = await policy.count(stores.tracking, now=now)
    what = ", ".join(
        f"{s.value} older than {_days(a.total_seconds())}" for s, a in policy.max_age.items()
    )
    if args.dry_run:
        if out.as_json:
            out.json({"would_purge": due, "dry_run": True})
        else:
            print(f"would purge {due} tracked message(s): {what} (dry run)")
        return 0
    if due and not args.yes:
        confirm(f"purge {due} tracked message(s) from {stores.shown_url} ({what})?")
    purged = await policy.apply(stores.tracking, now=now)
    if out.as_json:
        out.json({"purged": purged, "dry_run": False})
    else:
        print(f"purged {purged} tracked message(s): {what}")
    return 0


def _days(seconds: float) -> str:
    return f"{seconds / 86400:g}d" if seconds >= 86400 else f"{seconds:g}s"


# --------------------------------------------------------------------------- parser


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """The ``queue`` and ``tracking`` subcommands (``common`` brings ``--json``)."""
    queue = commands.add_parser("queue", help="the durable send queue (scheduled and bulk sends)")
    q_actions = queue.add_subparsers(dest="action", required=True)
    stats = q_actions.add_parser("stats", parents=[common], help="jobs per status")
    stats.add_argument("--batch", help="only this batch's jobs")
    listing = q_actions.add_parser("list", parents=[common], help="jobs, earliest due first")
    listing.add_argument("--status", action="append", choices=[s.value for s in JobStatus])
    listing.add_argument("--batch")
    listing.add_argument("--limit", type=positive, default=50)
    listing.add_argument("--offset", type=int, default=0)
    retry = q_actions.add_parser(
        "retry",
        parents=[common],
        help="send failed jobs again",
        description="Failed jobs become pending, due now; a sent job is never sent again.",
    )
    retry.add_argument("job_ids", nargs="*", metavar="JOB_ID")
    retry.add_argument("--all-failed", action="store_true", help="every failed job")
    retry.add_argument("--batch", help="with --all-failed: only this batch's")
    retry.add_argument("--dry-run", action="store_true", help="count, change nothing")
    for sub, action in ((stats, _queue_stats), (listing, _queue_list), (retry, _queue_retry)):
        store_args(sub)
        sub.set_defaults(run=on_stores(action))

    tracking = commands.add_parser("tracking", help="tracked messages (delivery status)")
    t_actions = tracking.add_subparsers(dest="action", required=True)
    tlist = t_actions.add_parser("list", parents=[common], help="tracked messages, newest first")
    tlist.add_argument("--status", action="append", choices=[s.value for s in DeliveryStatus])
    tlist.add_argument("--provider")
    tlist.add_argument("--type", choices=[t.value for t in MessageType])
    tlist.add_argument("--to", help="recipient number")
    tlist.add_argument("--since", type=moment, help="ISO time or age like 2h, 7d")
    tlist.add_argument("--limit", type=positive, default=50)
    tlist.add_argument("--offset", type=int, default=0)
    show = t_actions.add_parser("show", parents=[common], help="one tracked message")
    show.add_argument("message_id")
    purge = t_actions.add_parser(
        "purge",
        parents=[common],
        help="delete finished records older than an age",
        description="Asks before deleting when run on a terminal; elsewhere --yes is required. "
        "Records still checked, and records whose fallback is in flight, are never purged.",
    )
    purge.add_argument(
        "--older-than", type=age, help="age like 30d (with --status, or every finished status)"
    )
    purge.add_argument(
        "--status",
        action="append",
        choices=[s.value for s in TERMINAL_STATUSES],
        help="with --older-than (repeatable; default: every finished status)",
    )
    purge.add_argument("--preset", choices=[p.value for p in RetentionPreset])
    purge.add_argument("--dry-run", action="store_true", help="count what would go, delete nothing")
    purge.add_argument("--yes", action="store_true", help="delete without asking")
    for sub, action in ((tlist, _tracking_list), (show, _tracking_show), (purge, _tracking_purge)):
        store_args(sub)
        sub.set_defaults(run=on_stores(action))
