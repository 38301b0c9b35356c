"""The ``kmsg-webhook`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from aiohttp import web

from .errors import WebhookError
from .middleware import AiohttpVerifyWebhookMiddleware


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kmsg-webhook", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser(
        "demo", help="send a few signed events to a local verifying receiver and report"
    )

    listen = commands.add_parser("listen", help="run a verifying receiver that prints each event")
    listen.add_argument("--port", type=int, default=8787)
    listen.add_argument("--host", default="127.0.0.1")
    listen.add_argument(
        "--secret",
        action="append",
        required=True,
        help="a secret to verify with (repeat for several, e.g. during rotation)",
    )
    listen.add_argument("--path", default="/webhooks")
    listen.add_argument("--tolerance", type=int, default=300, help="timestamp tolerance in s")

    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run_demo

            return asyncio.run(run_demo())
        if args.command == "listen":
            return _listen(args.host, args.port, args.path, args.secret, args.tolerance)
    except WebhookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


def _listen(host: str, port: int, path: str, secrets: list[str], tolerance: int) -> int:
    async def handle(request: web.Request) -> web.Response:
        event = request["webhook_event"]
        print(
            json.dumps(
                {"verified": True, **event.to_wire()}, ensure_ascii=False, separators=(",", ":")
            ),
            flush=True,
        )
        return web.json_response({"ok": True})

    app = web.Application(
        middlewares=[AiohttpVerifyWebhookMiddleware(secrets=secrets, tolerance_s=tolerance)]
    )
    app.router.add_post(path, handle)
    print(f"listening on http://{host}:{port}{path} (Ctrl-C to stop)", flush=True)
    web.run_app(app, host=host, port=port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
