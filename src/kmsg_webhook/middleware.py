"""Receiver middlewares: verify incoming webhooks before the application sees them.

ASGI (Starlette, FastAPI, any ASGI app)::

    app = Starlette(routes=..., middleware=[Middleware(VerifyWebhookMiddleware, secrets=[...])])
    # in the endpoint: request.state.webhook_event

aiohttp::

    app = web.Application(middlewares=[AiohttpVerifyWebhookMiddleware(secrets=[...])])
    # in the handler: request["webhook_event"]

A request that fails verification gets ``401`` with ``{"error": <reason>, "detail": <message>}``;
a body over ``max_body_bytes`` gets ``413``. An endpoint verification challenge (a POST with a
``webhook-challenge`` header, see :mod:`kmsg_webhook.challenge`) is answered by the middleware
itself with the ``webhook-challenge-response`` the secret proves; the application never sees it.

With a :class:`ReplayGuard`, a message the application did not answer with 2xx is forgotten
again, so the sender's retry is not refused as a replay.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any, TypeAlias

from aiohttp import web
from aiohttp.typedefs import Handler

from .challenge import (
    WEBHOOK_CHALLENGE,
    WEBHOOK_CHALLENGE_RESPONSE,
    challenge_key,
    challenge_response,
)
from .errors import VerificationError
from .signing import DEFAULT_KMSG_SIGNATURE, KmsgSignatureFormat, SignatureScheme
from .verify import ReplayGuard, Verifier

__all__ = ["AiohttpVerifyWebhookMiddleware", "VerifyWebhookMiddleware"]

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]

EVENT_KEY = "webhook_event"


class _Options:
    """What both middlewares share: which requests to check, and how."""

    def __init__(
        self,
        *,
        secrets: str | Sequence[str],
        tolerance_s: int,
        paths: Sequence[str] | None,
        replay_guard: ReplayGuard | None,
        scheme: SignatureScheme | None,
        max_body_bytes: int,
        kmsg_format: KmsgSignatureFormat,
    ) -> None:
        if max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be positive")
        self.verifier = Verifier(
            secrets,
            tolerance_s=tolerance_s,
            scheme=scheme,
            replay_guard=replay_guard,
            kmsg_format=kmsg_format,
        )
        self.paths = None if paths is None else frozenset(paths)
        self.replay_guard = replay_guard
        self.max_body_bytes = max_body_bytes
        # Challenges are answered with the first HMAC secret, keyed as the sender signs: the
        # standard scheme's unless the middleware is fixed to kmsg (one value: the official
        # package compares the whole header).
        items = [secrets] if isinstance(secrets, str) else list(secrets)
        keyed_as = scheme or SignatureScheme.STANDARD
        keys = [key for s in items if (key := challenge_key(s, keyed_as)) is not None]
        self.challenge_key = keys[0] if keys else None

    def applies(self, method: str, path: str) -> bool:
        return method == "POST" and (self.paths is None or path in self.paths)

    def release(self, msg_id: str, status: int | None) -> None:
        """Forget a message the app did not accept, so its retry gets through."""
        if self.replay_guard is not None and not (status is not None and 200 <= status < 300):
            self.replay_guard.forget(msg_id)

    def answer(self, challenge: str) -> tuple[int, bytes, str | None]:
        """Status, body and ``webhook-challenge-response`` for a challenge request."""
        if self.challenge_key is None:
            return 401, _error_body("challenge_unsupported", "No HMAC secret to answer with"), None
        if not (0 < len(challenge) <= 256 and challenge.isascii() and challenge.isprintable()):
            return 400, _error_body("invalid_challenge", "The challenge is not short ASCII"), None
        return 200, b"{}", challenge_response(self.challenge_key, challenge)

    def too_large(self) -> tuple[int, bytes]:
        limit = f"The body is over {self.max_body_bytes} bytes"
        return 413, _error_body("payload_too_large", limit)


def _error_body(reason: str, detail: str) -> bytes:
    return json.dumps({"error": reason, "detail": detail}).encode()


class VerifyWebhookMiddleware:
    """ASGI middleware: verified event in ``scope["state"]["webhook_event"]``, else 401/413.

    ``paths=None`` checks every POST; otherwise only POSTs to exactly these paths.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        secrets: str | Sequence[str],
        tolerance_s: int = 300,
        paths: Sequence[str] | None = None,
        replay_guard: ReplayGuard | None = None,
        scheme: SignatureScheme | None = None,
        max_body_bytes: int = 1_048_576,
        kmsg_format: KmsgSignatureFormat = DEFAULT_KMSG_SIGNATURE,
    ) -> None:
        self.app = app
        self.options = _Options(
            secrets=secrets,
            tolerance_s=tolerance_s,
            paths=paths,
            replay_guard=replay_guard,
            scheme=scheme,
            max_body_bytes=max_body_bytes,
            kmsg_format=kmsg_format,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        options = self.options
        if scope["type"] != "http" or not options.applies(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        # UTF-8 with surrogateescape gives back the exact header bytes when re-encoded.
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            headers.setdefault(name, raw_value.decode("utf-8", "surrogateescape"))
        challenge = headers.get(WEBHOOK_CHALLENGE)
        if challenge is not None:
            await _respond(send, *options.answer(challenge))
            return
        if _declared_size(headers.get("content-length", "")) > options.max_body_bytes:
            await _respond(send, *options.too_large())
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # http.disconnect: nobody is left to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > options.max_body_bytes:
                await _respond(send, *options.too_large())
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            event, msg_id = options.verifier.verify_with_id(body, headers)
        except VerificationError as exc:
            await _respond(send, 401, _error_body(exc.reason, str(exc)))
            return
        scope.setdefault("state", {})[EVENT_KEY] = event

        replayed = False

        async def replay_body() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        if options.replay_guard is None:
            await self.app(scope, replay_body, send)
            return
        status: int | None = None

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, replay_body, send_status)
        finally:
            options.release(msg_id, status)


def _declared_size(value: str) -> int:
    """Content-Length as a number; absent or malformed is 0 (the read loop still enforces it)."""
    if not (value.isascii() and value.isdigit()):
        return 0
    return int(value) if len(value) <= 18 else 10**18


async def _respond(send: Send, status: int, body: bytes, answer: str | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if answer is not None:
        headers.append((WEBHOOK_CHALLENGE_RESPONSE.encode(), answer.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AiohttpVerifyWebhookMiddleware:
    """aiohttp middleware (new style): verified event in ``request["webhook_event"]``, else 401/413.

    ``paths=None`` checks every POST; otherwise only POSTs to exactly these paths.
    """

    __middleware_version__ = 1  # what @web.middleware sets; aiohttp then calls (request, handler)

    def __init__(
        self,
        *,
        secrets: str | Sequence[str],
        tolerance_s: int = 300,
        paths: Sequence[str] | None = None,
        replay_guard: ReplayGuard | None = None,
        scheme: SignatureScheme | None = None,
        max_body_bytes: int = 1_048_576,
        kmsg_format: KmsgSignatureFormat = DEFAULT_KMSG_SIGNATURE,
    ) -> None:
        self.options = _Options(
            secrets=secrets,
            tolerance_s=tolerance_s,
            paths=paths,
            replay_guard=replay_guard,
            scheme=scheme,
            max_body_bytes=max_body_bytes,
            kmsg_format=kmsg_format,
        )

    async def __call__(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        options = self.options
        if not options.applies(request.method, request.path):
            return await handler(request)
        challenge = request.headers.get(WEBHOOK_CHALLENGE)
        if challenge is not None:
            return _aiohttp_response(*options.answer(challenge))
        if (request.content_length or 0) > options.max_body_bytes:
            return _aiohttp_response(*options.too_large())
        try:
            body = await request.read()  # cached: the handler can read it again
        except web.HTTPRequestEntityTooLarge:  # the app's client_max_size is lower than ours
            return _aiohttp_response(*options.too_large())
        if len(body) > options.max_body_bytes:
            return _aiohttp_response(*options.too_large())
        try:
            event, msg_id = options.verifier.verify_with_id(body, request.headers)
        except VerificationError as exc:
            return _aiohttp_response(401, _error_body(exc.reason, str(exc)))
        request[EVENT_KEY] = event
        status: int | None = None
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            options.release(msg_id, status)


def _aiohttp_response(status: int, body: bytes, answer: str | None = None) -> web.Response:
    headers = None if answer is None else {WEBHOOK_CHALLENGE_RESPONSE: answer}
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)
