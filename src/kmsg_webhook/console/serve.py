"""Serving the console on its own (``kmsg-webhook console``) until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal

from aiohttp import web

from ..config import SecurityOptions
from ..crypto import FieldCryptoConfig
from ..errors import WebhookError
from ..runtime import WebhookRuntimeService
from ..stores.protocol import WebhookPersistence
from .app import create_console_app
from .security import check_bind


async def serve_console(
    store: WebhookPersistence | str,
    *,
    host: str = "127.0.0.1",
    port: int = 8790,
    token: str | None = None,
    security: SecurityOptions | None = None,
) -> None:
    """Open the store (field crypto keys from the environment, when set) and serve the
    console until a signal; port 0 picks a free port (the banner names it). ``security``
    is the URL policy probes obey."""
    check_bind(host, token)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with WebhookRuntimeService(
        persistence=store,
        dispatch=False,
        security=security,
        field_crypto=FieldCryptoConfig.from_env(),
    ) as runtime:
        runner = web.AppRunner(create_console_app(runtime, token=token), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            try:
                await site.start()
            except OSError as exc:
                why = os.strerror(exc.errno) if exc.errno else str(exc)
                raise WebhookError(f"cannot serve the console on {host}:{port}: {why}") from None
            print(f"console on {_address(runner)} (Ctrl-C to stop)", flush=True)
            await stop.wait()
        finally:
            await runner.cleanup()


def _address(runner: web.AppRunner) -> str:
    """The URL the console actually listens on (the real port when 0 was asked)."""
    address, bound_port = runner.addresses[0][:2]
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{bound_port}/"
