"""The ``kmsg-webhook`` command line: demo, receiver, worker and store operations.

Store commands take ``--store URL`` (default: ``$KMSG_WEBHOOK_STORE_URL``). With
``KMSG_WEBHOOK_KEYS`` set they apply field crypto (``docs/field-crypto.md``): values are
sealed when written and opened when read; ``rekey`` re-seals what is stored.

Exit status: 0 ok, 1 other failure, 2 usage, 3 not found, 4 store unavailable, 5 refused as
unsafe (URL policy, sealed values without keys, not confirmed), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from . import eventloop
from .cliargs import (
    age,
    confirm,
    moment,
    policy_args,
    positive,
    positive_float,
    security_options,
    tcp_port,
)
from .config import RetentionPolicy, SecurityOptions, WebhookConfig
from .crypto import FieldCryptoConfig, RekeyReport, generate_key, is_sealed, rekey
from .display import (
    delivery_json,
    endpoint_json,
    print_json,
    print_table,
    stats_json,
    unreadable_json,
)
from .errors import (
    ConfigError,
    DeliveryNotFoundError,
    EndpointNotFoundError,
    WebhookError,
)
from .events import WebhookEventType
from .exitcodes import ExitCode, exit_code_for
from .middleware import AiohttpVerifyWebhookMiddleware
from .models import DeliveryFilter, DeliveryStatus, EndpointInput, EndpointStatus
from .operational import OPERATIONAL_EVENTS, OperationalWebhook
from .redact import redact_url
from .runtime import WebhookRuntimeService
from .signing import SignatureScheme
from .stores.protocol import WebhookPersistence
from .stores.sql.base import DEFAULT_RETRY_TIMEOUT

STORE_ENV = "KMSG_WEBHOOK_STORE_URL"
OPERATIONAL_SECRET_ENV = "KMSG_WEBHOOK_OPERATIONAL_SECRET"
#: Mirrors kmsg_webhook.console.TOKEN_ENV (not imported: the console needs its extra).
CONSOLE_TOKEN_ENV = "KMSG_WEBHOOK_CONSOLE_TOKEN"
# A young collection per 20,000 net allocations instead of 700 (docs/performance.md).
WORKER_GC_THRESHOLD = 20_000
_DEFAULTS = WebhookConfig()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.run(args)
        return result
    except WebhookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


class _Parser(argparse.ArgumentParser):
    """Every option's help shows its default (what ArgumentDefaultsHelpFormatter does, also for
    options without help text); subcommand parsers are built by this class too."""

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        shown = action.default not in (None, False, argparse.SUPPRESS, [])
        # --store's help names the variable instead: its value may hold a password.
        if action.option_strings and shown and action.dest != "store":
            action.help = f"{action.help or ''} (default: %(default)s)".lstrip()
        return action


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kmsg-webhook", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo",
        help="signed events to a local verifying receiver",
        description="Adds its own endpoint, sends it test events (only it: other endpoints of "
        "the store see nothing), and removes it again, also on failure or Ctrl-C.",
    )
    demo.add_argument("--store", help="store URL (default: a temporary SQLite file)")
    demo.add_argument("--yes", action="store_true", help="go ahead on a store that has endpoints")
    demo.set_defaults(run=_demo)

    listen = commands.add_parser(
        "listen", help="a verifying receiver that prints each request and its verdict"
    )
    listen.add_argument("--port", type=_port, default=8787)
    listen.add_argument("--host", default="127.0.0.1")
    listen.add_argument(
        "--secret", action="append", required=True, help="verify with this (repeatable)"
    )
    listen.add_argument("--path", default="/webhooks")
    listen.add_argument("--tolerance", type=positive, default=300, help="timestamp tolerance, s")
    listen.set_defaults(run=_listen)

    worker = commands.add_parser("worker", help="run only the dispatcher against a store")
    _store_arg(worker)
    worker.add_argument(
        "--concurrency",
        type=positive,
        default=_DEFAULTS.max_concurrency,
        help="attempts in flight",
    )
    worker.add_argument(
        "--per-endpoint",
        type=positive,
        default=_DEFAULTS.max_concurrency_per_endpoint,
        help="the most attempts in flight to one endpoint (its limit adapts up to this)",
    )
    worker.add_argument("--worker-id", help="lease owner name (default: a random id)")
    worker.add_argument("--max-retries", type=int, default=3, help="retries after the first try")
    worker.add_argument(
        "--retry-delay-ms", type=int, default=1_000, help="wait before the first retry (doubles)"
    )
    worker.add_argument("--timeout-ms", type=positive, default=30_000, help="per attempt")
    worker.add_argument(
        "--lease-ms", type=positive, help="claim length (default: 2 x timeout + 10 s)"
    )
    worker.add_argument("--poll-ms", type=positive, default=500, help="idle poll interval")
    worker.add_argument(
        "--scheme",
        choices=[s.value for s in SignatureScheme],
        default="standard",
        help="signature headers",
    )
    policy_args(worker)
    worker.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="INFO logs every attempt; WARNING only exhaustions, refusals and endpoint changes",
    )
    worker.add_argument("--log-format", choices=["text", "json"], default="text")
    worker.add_argument(
        "--summary-interval",
        type=float,
        default=60.0,
        help="seconds between summary lines (rate, in flight, backlog); 0: none",
    )
    worker.add_argument(
        "--metrics-port",
        type=tcp_port,
        help="serve /metrics, /healthz and /readyz on this port (needs kmsg-webhook[metrics])",
    )
    worker.add_argument("--metrics-host", default="127.0.0.1")
    worker.add_argument(
        "--operational-url",
        help=f"POST signed operational messages (endpoint disabled, delivery exhausted, ...) "
        f"here; the signing secret comes from ${OPERATIONAL_SECRET_ENV}",
    )
    worker.add_argument(
        "--operational-event",
        action="append",
        choices=sorted(OPERATIONAL_EVENTS),
        dest="operational_events",
        help="send only this operational message type (repeatable; default: all)",
    )
    worker.add_argument(
        "--ca-file", help="trust the CAs in this PEM file instead of the system's (private CA)"
    )
    worker.add_argument(
        "--gc-threshold",
        type=int,
        default=WORKER_GC_THRESHOLD,
        help="this process's young-generation GC threshold, set (with gc.freeze()) once the "
        "store is open; 0 keeps Python's settings (docs/performance.md)",
    )
    for status in ("success", "failed", "exhausted"):
        worker.add_argument(
            f"--keep-{status}",
            type=age,
            metavar="AGE",
            help=f"delete {status} deliveries older than AGE (90s, 15m, 2h, 7d; default: keep)",
        )
    worker.add_argument(
        "--loop",
        choices=eventloop.LOOP_NAMES,
        default="auto",
        help="event loop: uvloop (kmsg-webhook[speed]) or asyncio; auto picks uvloop if installed",
    )
    worker.set_defaults(run=_worker)

    migrate = commands.add_parser("migrate", help="create or upgrade the store's schema")
    _store_arg(migrate, create=False)
    migrate.set_defaults(run=_migrate)

    schema = commands.add_parser(
        "schema", help="print the SQL schema the migrations build, for your own DDL tooling"
    )
    schema.add_argument("--dialect", choices=("postgresql", "sqlite"), required=True)
    schema.add_argument("--endpoint-table", help="endpoint table name (default: the store's)")
    schema.add_argument("--delivery-table", help="delivery table name (default: the store's)")
    schema.add_argument("--schema", dest="pg_schema", help="PostgreSQL schema to qualify names")
    schema.set_defaults(run=_schema)

    endpoints = commands.add_parser("endpoints", help="manage endpoints")
    ep = endpoints.add_subparsers(dest="action", required=True)
    add = ep.add_parser("add")
    _store_arg(add)
    add.add_argument("--url", required=True)
    add.add_argument("--event", action="append", required=True, dest="events")
    add.add_argument("--secret")
    add.add_argument("--name")
    add.add_argument("--header", action="append", default=[], help="Name=value (repeatable)")
    add.add_argument(
        "--ordered", action="store_true", help="deliver each ordering key's events in order"
    )
    add.add_argument(
        "--verify", action="store_true", help="challenge the receiver; active once it answers"
    )
    policy_args(add)
    add.set_defaults(run=_endpoints_add)
    listing = ep.add_parser("list")
    _store_arg(listing)
    _json_arg(listing)
    listing.set_defaults(run=_endpoints_list)
    for action in ("remove", "disable", "enable"):
        sub = ep.add_parser(action)
        _store_arg(sub)
        sub.add_argument("endpoint_id")
        sub.set_defaults(run=_endpoints_change, action=action)

    deliveries = commands.add_parser("deliveries", help="inspect and retry deliveries")
    dl = deliveries.add_subparsers(dest="action", required=True)
    dlist = dl.add_parser("list")
    _store_arg(dlist)
    dlist.add_argument("--endpoint")
    dlist.add_argument("--status", action="append", choices=[s.value for s in DeliveryStatus])
    dlist.add_argument("--event-type", choices=[t.value for t in WebhookEventType])
    dlist.add_argument("--since", type=moment, help="ISO time or age like 2h, 7d")
    dlist.add_argument("--limit", type=positive, default=50)
    dlist.add_argument("--cursor")
    _json_arg(dlist)
    dlist.set_defaults(run=_deliveries_list)
    show = dl.add_parser("show")
    _store_arg(show)
    show.add_argument("delivery_id")
    _json_arg(show)
    show.set_defaults(run=_deliveries_show)
    retry = dl.add_parser("retry")
    _store_arg(retry)
    retry.add_argument("delivery_id")
    retry.set_defaults(run=_deliveries_retry)

    replay = commands.add_parser("replay", help="re-queue failed and exhausted deliveries")
    _store_arg(replay)
    replay.add_argument("--since", type=moment, required=True, help="ISO time or age (2h, 7d)")
    replay.add_argument("--until", type=moment)
    replay.add_argument("--endpoint")
    replay.set_defaults(run=_replay)

    purge = commands.add_parser(
        "purge",
        help="delete finished deliveries older than an age",
        description="Asks before deleting when run on a terminal; elsewhere --yes is required.",
    )
    _store_arg(purge)
    purge.add_argument("--older-than", type=moment, required=True, help="age like 30d")
    purge.add_argument("--dry-run", action="store_true", help="count what would go, delete nothing")
    purge.add_argument("--yes", action="store_true", help="delete without asking")
    purge.set_defaults(run=_purge)

    rekey_cmd = commands.add_parser(
        "rekey",
        help="re-encrypt stored values under the active key (keys from KMSG_WEBHOOK_KEYS)",
    )
    _store_arg(rekey_cmd)
    rekey_cmd.add_argument("--batch-size", type=positive, default=500, help="deliveries per batch")
    rekey_cmd.add_argument("--after", help="resume after this delivery id (printed as it goes)")
    rekey_cmd.add_argument("--skip-endpoints", action="store_true", help="deliveries only")
    rekey_cmd.add_argument("--dry-run", action="store_true", help="count, write nothing")
    rekey_cmd.set_defaults(run=_rekey)

    stats = commands.add_parser(
        "stats", help="queue depth, status counts and troubled endpoints of a store"
    )
    _store_arg(stats)
    _json_arg(stats)
    stats.set_defaults(run=_stats)

    _console_parser(commands)

    keygen = commands.add_parser("keygen", help="print a new random key (base64, 32 bytes)")
    keygen.set_defaults(run=_keygen)
    return parser


def _store_arg(parser: argparse.ArgumentParser, *, create: bool = True) -> None:
    parser.add_argument(
        "--store",
        default=os.environ.get(STORE_ENV),
        required=STORE_ENV not in os.environ,
        help=f"store URL (default: ${STORE_ENV}); memory:// is refused, as it keeps nothing",
    )
    parser.add_argument(
        "--store-timeout",
        type=positive_float,
        default=DEFAULT_RETRY_TIMEOUT,
        help="seconds to keep retrying an unreachable store (a log line per attempt)",
    )
    if create:
        parser.add_argument(
            "--create",
            action="store_true",
            help="create a SQLite file that does not exist (otherwise an error: a typo in the "
            "path would silently give an empty store)",
        )


def _open_store(args: argparse.Namespace) -> WebhookPersistence:
    """The store ``--store`` names, refused when it cannot persist or does not exist."""
    from .stores.url import persistence_from_url, require_durable

    require_durable(args.store, create=args.create)
    return persistence_from_url(args.store, retry_timeout=args.store_timeout)


def _port(text: str) -> int:
    value = tcp_port(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be 1 or more, got 0")
    return value


def _json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document (docs/production.md)"
    )


def _admin(
    args: argparse.Namespace,
    action: Callable[[WebhookRuntimeService], Awaitable[int]],
    *,
    security: SecurityOptions | None = None,
) -> int:
    persistence = _open_store(args)

    async def run() -> int:
        runtime = WebhookRuntimeService(
            persistence=persistence,
            dispatch=False,
            security=security,
            field_crypto=FieldCryptoConfig.from_env(),
        )
        try:
            await runtime.start()
        except BaseException:
            # The store may hold open sessions or connections from the failed start.
            if persistence.close is not None:
                await persistence.close()
            raise
        async with runtime:
            return await action(runtime)

    return asyncio.run(run())


# -- commands ------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .stores.url import require_durable

    if args.store is not None and not args.store.startswith("memory:"):
        require_durable(args.store)  # a mistyped SQLite path is an error, not a new database
    return asyncio.run(run_demo(args.store, yes=args.yes))


def _listen(args: argparse.Namespace) -> int:
    async def handle(request: web.Request) -> web.Response:
        event = request["webhook_event"]
        line = json.dumps({"verified": True, **event.to_wire()}, ensure_ascii=False)
        print(line, flush=True)
        return web.json_response({"ok": True})

    @web.middleware
    async def report_refusals(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Outermost: sees the verifier's refusals and routing's 404/405 as well.
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            _print_refusal(request, exc.status, exc.reason, exc.reason)
            raise
        if response.status >= 400:
            # The verifier answers {"error": reason, "detail": message}.
            body = response.body if isinstance(response, web.Response) else None
            answer = json.loads(body) if isinstance(body, bytes) else {}
            reason = answer.get("error", response.reason)
            _print_refusal(request, response.status, reason, answer.get("detail", reason))
        return response

    app = web.Application(
        middlewares=[
            report_refusals,
            AiohttpVerifyWebhookMiddleware(
                secrets=args.secret, tolerance_s=args.tolerance, paths=[args.path]
            ),
        ]
    )
    app.router.add_post(args.path, handle)
    banner = f"listening on http://{args.host}:{args.port}{args.path} (Ctrl-C to stop)"
    try:
        # run_app calls `print` once the socket is bound, so the banner means "ready".
        web.run_app(
            app,
            host=args.host,
            port=args.port,
            access_log=None,
            print=lambda _: print(banner, flush=True),
        )
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise WebhookError(f"cannot listen on {args.host}:{args.port}: {why}") from None
    return 0


def _print_refusal(request: web.Request, status: int, reason: str, detail: str) -> None:
    """One JSON line for a request ``listen`` refused: what came in, the verdict and why."""
    line = {
        "verified": False,
        "status": status,
        "reason": reason,
        "detail": detail,
        "method": request.method,
        "path": request.path,
        "webhook_id": request.headers.get("webhook-id") or request.headers.get("x-webhook-id"),
    }
    print(json.dumps(line, ensure_ascii=False), flush=True)


def _worker(args: argparse.Namespace) -> int:
    from .logs import configure_logging
    from .monitor import WorkerMonitor

    configure_logging(args.log_level, args.log_format)
    log = logging.getLogger("kmsg_webhook.worker")
    metrics = None
    if args.metrics_port is not None:
        from .metrics import DeliveryMetrics

        metrics = DeliveryMetrics()
    monitor = WorkerMonitor(metrics)
    hooks = [monitor.hooks] if metrics is None else [monitor.hooks, metrics.hooks]
    config = WebhookConfig(
        operational_webhook=_operational_webhook(args),
        max_concurrency=args.concurrency,
        max_concurrency_per_endpoint=args.per_endpoint,
        max_retries=args.max_retries,
        retry_delay_ms=args.retry_delay_ms,
        timeout_ms=args.timeout_ms,
        lease_ms=args.lease_ms,
        poll_interval_ms=args.poll_ms,
        signature_scheme=SignatureScheme(args.scheme),
        ssl=args.ca_file,
        retention=RetentionPolicy(
            success=args.keep_success, failed=args.keep_failed, exhausted=args.keep_exhausted
        ),
    )

    persistence = _open_store(args)
    security = security_options(args)

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        runtime = WebhookRuntimeService(
            config,
            persistence=persistence,
            worker_id=args.worker_id,
            security=security,
            field_crypto=FieldCryptoConfig.from_env(),
            hooks=hooks,
        )
        try:
            # Refuses sealed values without keys; warns of endpoints the policy refuses.
            await runtime.start()
        except WebhookError:
            await runtime.shutdown(drain=False)
            raise
        serving = ""
        fields: dict[str, object] = {}
        if args.metrics_port is not None:
            try:
                port = await monitor.serve(runtime, args.metrics_host, args.metrics_port)
            except OSError as exc:
                await runtime.shutdown(drain=False)
                raise WebhookError(
                    f"cannot serve metrics on {args.metrics_host}:{args.metrics_port}: "
                    f"{os.strerror(exc.errno) if exc.errno else exc}"
                ) from None
            serving = f"; metrics on http://{args.metrics_host}:{port}/metrics"
            fields = {"metrics_host": args.metrics_host, "metrics_port": port}
        monitor.start_summary(runtime, args.summary_interval)
        gc_note = "Python's gc settings"
        if args.gc_threshold > 0:
            # This process is only the dispatcher, so its collector is ours to tune: what
            # start-up loaded is never scanned again, and batched sends stop triggering a
            # young collection every few deliveries (docs/performance.md).
            gc.freeze()
            gc.set_threshold(args.gc_threshold)
            gc_note = f"gc threshold {args.gc_threshold}"
        policy = security.describe()
        crypto = "on" if runtime.field_crypto is not None else "off"
        store = redact_url(args.store)
        event_loop = eventloop.resolve_loop(args.loop)
        log.info(
            "worker %s dispatching from %s (URL policy: %s; field crypto %s; %s loop; %s%s; "
            "SIGTERM to stop)",
            runtime.worker_id,
            store,
            policy,
            crypto,
            event_loop,
            gc_note,
            serving,
            extra={
                "worker_id": runtime.worker_id,
                "store": store,
                "url_policy": policy,
                "field_crypto": crypto,
                "event_loop": event_loop,
                **fields,
            },
        )
        try:
            await stop.wait()
        finally:
            # In-flight attempts finish and are recorded; unsent claims go back to the store.
            await monitor.close()
            await runtime.shutdown(drain=False)
        log.info("worker %s stopped", runtime.worker_id, extra={"worker_id": runtime.worker_id})
        return 0

    return eventloop.run(run(), loop=args.loop)


def _operational_webhook(args: argparse.Namespace) -> OperationalWebhook | None:
    """The worker's operational webhook; its secret only ever comes from the environment
    (a flag's value shows in ``ps`` and shell history)."""
    if args.operational_url is None:
        if args.operational_events:
            raise ConfigError("--operational-event needs --operational-url")
        return None
    secret = os.environ.get(OPERATIONAL_SECRET_ENV)
    if not secret:
        raise ConfigError(
            f"--operational-url needs its signing secret in ${OPERATIONAL_SECRET_ENV}"
        )
    events = frozenset(args.operational_events or OPERATIONAL_EVENTS)
    return OperationalWebhook(url=args.operational_url, secret=secret, events=events)


def _migrate(args: argparse.Namespace) -> int:
    from .stores.url import migrate_url, require_durable

    if not args.store.startswith("memory:"):  # migrate_url says why memory:// has no schema
        require_durable(args.store, create=True)
    version = asyncio.run(migrate_url(args.store, retry_timeout=args.store_timeout))
    print(f"schema is at version {version}")
    return 0


def _schema(args: argparse.Namespace) -> int:
    from .stores.sqlfiles import schema_sql

    print(
        schema_sql(
            args.dialect,
            endpoint_table=args.endpoint_table,
            delivery_table=args.delivery_table,
            schema=args.pg_schema,
        ),
        end="",
    )
    return 0


def _endpoints_add(args: argparse.Namespace) -> int:
    headers = {}
    for item in args.header:
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--header takes Name=value, got {item!r}")
        headers[name.strip()] = value.strip()

    async def action(runtime: WebhookRuntimeService) -> int:
        endpoint = await runtime.add_endpoint(
            EndpointInput(
                url=args.url,
                events=args.events,
                secret=args.secret,
                name=args.name,
                headers=headers,
                ordered=args.ordered,
                verify=args.verify,
            )
        )
        print(f"added {endpoint.id} {endpoint.url}")
        if not endpoint.active:  # verify=True and the receiver did not answer (yet)
            print(f"status {endpoint.status.value}")
        if endpoint.secret and not args.secret:
            print(f"secret {endpoint.secret}  (give it to the receiver; shown once)")
        return 0

    return _admin(args, action, security=security_options(args))


def _endpoints_list(args: argparse.Namespace) -> int:
    async def action(runtime: WebhookRuntimeService) -> int:
        endpoints = await runtime.list_endpoints()
        if args.json:
            print_json(
                {
                    "endpoints": [endpoint_json(e) for e in endpoints],
                    "unreadable": unreadable_json(endpoints.errors),
                }
            )
            return 0
        rows = [
            (
                e.id,
                e.status.value,
                e.url,
                ",".join(t.value for t in e.events),
                str(e.consecutive_failures),
                e.disabled_reason or "",
            )
            for e in endpoints
        ]
        print_table(("id", "status", "url", "events", "failures", "reason"), rows)
        for problem in endpoints.errors:
            print(f"unreadable: {problem.error}")
        return 0

    return _admin(args, action)


def _endpoints_change(args: argparse.Namespace) -> int:
    async def action(runtime: WebhookRuntimeService) -> int:
        if args.action == "remove":
            if not await runtime.remove_endpoint(args.endpoint_id):
                raise EndpointNotFoundError(args.endpoint_id)
        else:
            status = EndpointStatus.ACTIVE if args.action == "enable" else EndpointStatus.INACTIVE
            await runtime.update_endpoint(args.endpoint_id, status=status)
        print(f"{args.action}d {args.endpoint_id}")
        return 0

    return _admin(args, action)


def _deliveries_list(args: argparse.Namespace) -> int:
    async def action(runtime: WebhookRuntimeService) -> int:
        await _require_endpoint(runtime, args.endpoint)
        page = await runtime.list_deliveries(
            DeliveryFilter(
                endpoint_id=args.endpoint,
                event_type=WebhookEventType(args.event_type) if args.event_type else None,
                statuses=tuple(DeliveryStatus(s) for s in args.status or ()),
                created_after=args.since,
            ),
            limit=args.limit,
            cursor=args.cursor,
        )
        if args.json:
            print_json(
                {
                    "deliveries": [delivery_json(d) for d in page.items],
                    "next_cursor": page.next_cursor,
                    "unreadable": unreadable_json(page.errors),
                }
            )
            return 0
        rows = [
            (
                d.id,
                d.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                d.event_type.value,
                d.status.value,
                str(d.attempt_count),
                (d.last_error or "")[:60],
            )
            for d in page.items
        ]
        print_table(("id", "created (UTC)", "event", "status", "attempts", "last error"), rows)
        for problem in page.errors:
            print(f"unreadable: {problem.error}")
        if page.next_cursor:
            print(f"more: --cursor {page.next_cursor}")
        return 0

    return _admin(args, action)


def _deliveries_show(args: argparse.Namespace) -> int:
    async def action(runtime: WebhookRuntimeService) -> int:
        d = await runtime.get_delivery(args.delivery_id)
        if d is None:
            raise DeliveryNotFoundError(args.delivery_id)
        if args.json:
            print_json({"delivery": delivery_json(d, detail=True)})
            return 0
        payload = d.payload
        if is_sealed(payload):
            payload = f"(sealed by field crypto; set KMSG_WEBHOOK_KEYS to open it) {payload}"
        for label, value in (
            ("id", d.id),
            ("endpoint", d.endpoint_id),
            ("event", f"{d.event_id} ({d.event_type.value})"),
            ("url", d.url),
            ("status", d.status.value),
            ("attempts", str(d.attempt_count)),
            ("created", d.created_at.isoformat()),
            ("next attempt", d.next_attempt_at.isoformat() if d.next_attempt_at else "-"),
            ("completed", d.completed_at.isoformat() if d.completed_at else "-"),
            ("last error", d.last_error or "-"),
            ("payload", payload),
        ):
            print(f"{label:>13}  {value}")
        print()
        print_table(
            ("#", "started (UTC)", "status", "latency ms", "error / response"),
            [
                (
                    str(a.attempt_number),
                    a.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                    str(a.http_status or "-"),
                    f"{a.latency_ms:.1f}",
                    (a.error or a.response_body or "")[:60],
                )
                for a in d.attempts
            ],
        )
        return 0

    return _admin(args, action)


def _deliveries_retry(args: argparse.Namespace) -> int:
    async def action(runtime: WebhookRuntimeService) -> int:
        d = await runtime.retry_delivery(args.delivery_id)
        print(f"{d.id} is {d.status.value}, due {d.next_attempt_at}")
        return 0

    return _admin(args, action)


def _stats(args: argparse.Namespace) -> int:
    async def action(runtime: WebhookRuntimeService) -> int:
        deliveries = (await runtime.stats()).deliveries
        queue = await runtime.queue_stats()
        endpoints = await runtime.endpoint_health()
        doc = stats_json(
            now=runtime.clock.now(), deliveries=deliveries, queue=queue, endpoints=endpoints
        )
        if args.json:
            print_json(doc)
            return 0
        q = doc["queue"]
        age = q["oldest_due_age_s"]
        print(
            f"deliveries  {deliveries.total} total: {deliveries.pending} pending, "
            f"{deliveries.success} success, {deliveries.failed} failed, "
            f"{deliveries.exhausted} exhausted"
        )
        print(
            f"queue       {queue.due} due now"
            + (f" (oldest waiting {age:.1f}s)" if age is not None else "")
            + f", {queue.scheduled} scheduled, {queue.leased} leased (in flight)"
        )
        by_status = ", ".join(f"{n} {s}" for s, n in doc["endpoints"]["by_status"].items() if n)
        print(f"endpoints   {len(endpoints)} total" + (f": {by_status}" if by_status else ""))
        troubled = [e for e in endpoints if e.troubled]
        if troubled:
            print()
            print_table(
                ("endpoint", "status", "failures", "failing since", "reason", "url"),
                [
                    (
                        e.id,
                        e.status.value,
                        str(e.consecutive_failures),
                        e.failing_since.strftime("%Y-%m-%d %H:%M:%S") if e.failing_since else "",
                        e.disabled_reason or "",
                        e.url,
                    )
                    for e in troubled
                ],
            )
        return 0

    return _admin(args, action)


def _replay(args: argparse.Namespace) -> int:
    async def action(runtime: WebhookRuntimeService) -> int:
        await _require_endpoint(runtime, args.endpoint)
        count = await runtime.replay(args.since, until=args.until, endpoint_id=args.endpoint)
        print(f"re-queued {count} deliveries")
        return 0

    return _admin(args, action)


def _purge(args: argparse.Namespace) -> int:
    before = f"created before {args.older_than:%Y-%m-%d %H:%M} UTC"

    async def action(runtime: WebhookRuntimeService) -> int:
        finished = (DeliveryStatus.SUCCESS, DeliveryStatus.FAILED, DeliveryStatus.EXHAUSTED)
        stats = await runtime.stats(
            DeliveryFilter(statuses=finished, created_before=args.older_than)
        )
        due = stats.deliveries.total
        if args.dry_run:
            print(f"would purge {due} finished deliveries {before} (dry run)")
            return 0
        if due and not args.yes:
            confirm(f"purge {due} finished deliveries {before}?")
        count = await runtime.purge(older_than=args.older_than)
        print(f"purged {count} finished deliveries {before}")
        return 0

    return _admin(args, action)


async def _require_endpoint(runtime: WebhookRuntimeService, endpoint_id: str | None) -> None:
    """An ``--endpoint`` filter naming no endpoint is a mistake, not an empty result."""
    if endpoint_id is not None and await runtime.get_endpoint(endpoint_id) is None:
        raise EndpointNotFoundError(endpoint_id)


def _rekey(args: argparse.Namespace) -> int:
    persistence = _open_store(args)
    config = FieldCryptoConfig.from_env()
    if config is None:
        raise ConfigError(
            "rekey needs the keys in KMSG_WEBHOOK_KEYS (and KMSG_WEBHOOK_ACTIVE_KID, "
            "KMSG_WEBHOOK_HASH_KEY); see docs/field-crypto.md"
        )
    verb = "would rewrite" if args.dry_run else "rewrote"

    def progress(report: RekeyReport) -> None:
        print(
            f"deliveries: checked {report.deliveries_checked}, {verb} "
            f"{report.deliveries_rewritten}; resume with --after {report.last_id}",
            flush=True,
        )

    async def run() -> RekeyReport:
        try:
            if persistence.init is not None:
                await persistence.init()
            return await rekey(
                persistence,
                config,
                batch_size=args.batch_size,
                after=args.after,
                endpoints=not args.skip_endpoints,
                dry_run=args.dry_run,
                on_batch=progress,
            )
        finally:
            if persistence.close is not None:
                await persistence.close()

    report = asyncio.run(run())
    print(
        f"done: endpoints {verb} {report.endpoints_rewritten}/{report.endpoints_checked}, "
        f"deliveries {verb} {report.deliveries_rewritten}/{report.deliveries_checked}, "
        f"skipped {report.skipped} (changed meanwhile: run again), "
        f"unreadable {report.failed}; active key {config.keys.active_kid}"
    )
    for problem in report.failures:
        print(f"unreadable: {problem.error}")
    return 1 if report.failed else 0


def _console_parser(commands: argparse._SubParsersAction[_Parser]) -> None:
    console = commands.add_parser(
        "console", help="the operator console: deliveries and endpoints in a browser"
    )
    _store_arg(console)
    console.add_argument("--host", default="127.0.0.1", help="any other needs a token")
    console.add_argument("--port", type=int, default=8790, help="0 picks a free port")
    # No default here: --help shows defaults, and this one would be the secret itself.
    console.add_argument(
        "--token", help=f"sign-in token (default: ${CONSOLE_TOKEN_ENV}); required beyond 127.0.0.1"
    )
    policy_args(console)  # what probes may reach
    console.set_defaults(run=_console)


def _console(args: argparse.Namespace) -> int:
    try:
        from .console.serve import serve_console
    except ImportError as exc:
        raise ConfigError(
            f"the console needs the console extra: pip install 'kmsg-webhook[console]' ({exc})"
        ) from None
    from .console.security import check_bind

    token = args.token or os.environ.get(CONSOLE_TOKEN_ENV) or None
    check_bind(args.host, token)  # before the store is opened
    asyncio.run(
        serve_console(
            _open_store(args),
            host=args.host,
            port=args.port,
            token=token,
            security=security_options(args),
        )
    )
    return 0


def _keygen(args: argparse.Namespace) -> int:
    print(generate_key())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
