"""A tiny scripted aiohttp server that records every request."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

from support.servers import serve_app


@dataclass
class Recorded:
    method: str
    path: str
    headers: Mapping[str, str]
    query: Mapping[str, str]
    content_type: str
    raw: bytes
    json: Any = None
    form: dict[str, Any] = field(default_factory=dict)
    files: dict[str, tuple[str | None, str | None, bytes]] = field(default_factory=dict)


@dataclass
class Reply:
    """A scripted answer. ``body`` may be a JSON-able value or raw text/bytes."""

    status: int = 200
    body: Any = None
    raw: str | bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0

    def to_response(self) -> web.Response:
        if self.raw is not None:
            data = self.raw.encode() if isinstance(self.raw, str) else self.raw
            return web.Response(status=self.status, body=data, headers=dict(self.headers))
        return web.Response(
            status=self.status,
            text=json.dumps(self.body, ensure_ascii=False),
            content_type="application/json",
            headers=dict(self.headers),
        )


Handler = Callable[[Recorded], Awaitable[Reply] | Reply]


class FakeServer:
    """Routes ``(method, path)`` to a default handler; ``script(path, ...)`` overrides the next
    replies for a path; ``requests`` lists what arrived."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._routes: dict[tuple[str, str], Handler] = {}
        self._scripts: dict[str, deque[Reply]] = {}
        self._serving = contextlib.AsyncExitStack()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def route(self, method: str, path: str, handler: Handler) -> None:
        self._routes[(method, path)] = handler

    def script(self, path: str, *replies: Reply) -> None:
        self._scripts.setdefault(path, deque()).extend(replies)

    def hits(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        content_type = request.headers.get("Content-Type", "")
        multipart = content_type.startswith("multipart/form-data")
        raw = b"" if multipart else await request.read()
        recorded = Recorded(
            method=request.method,
            path=request.path,
            headers=dict(request.headers),
            query=dict(request.query),
            content_type=content_type,
            raw=raw,
        )
        if content_type.startswith("application/json"):
            try:
                recorded.json = json.loads(raw)
            except ValueError:
                recorded.json = None
        elif multipart:
            for name, value in (await request.post()).items():
                if isinstance(value, web.FileField):
                    recorded.files[name] = (
                        value.filename,
                        value.content_type,
                        value.file.read(),
                    )
                else:
                    recorded.form[name] = str(value)
        self.requests.append(recorded)
        queued = self._scripts.get(request.path)
        if queued:
            reply = queued.popleft()
        else:
            handler = self._routes.get((request.method, request.path))
            if handler is None:
                return web.Response(status=404, text="no route")
            produced = handler(recorded)
            reply = await produced if asyncio.iscoroutine(produced) else produced  # type: ignore[assignment]
        if reply.delay:
            await asyncio.sleep(reply.delay)
        return reply.to_response()

    async def start(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        base = await self._serving.enter_async_context(serve_app(app))
        self.port = int(base.rsplit(":", 1)[1])
        return self

    async def stop(self) -> None:
        await self._serving.aclose()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def webhook_receiver(*paths: str) -> FakeServer:
    """A FakeServer standing in for a webhook endpoint: POSTs to ``paths`` get 200."""
    server = FakeServer()
    for path in paths:
        server.route("POST", path, lambda req: Reply(200, {"ok": True}))
    return server
