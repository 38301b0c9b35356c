"""The console as an aiohttp application: routes, templates, and the guard every request
passes (sign-in, CSRF, security headers)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from yarl import URL

from ..errors import (
    DeliveryNotFoundError,
    EndpointNotFoundError,
    FieldCryptoError,
    WebhookError,
)
from ..runtime import WebhookRuntimeService
from .security import (
    CSRF_COOKIE,
    CSRF_FIELD,
    SECURITY_HEADERS,
    SESSION_COOKIE,
    Guard,
    new_nonce,
    same_origin,
)

RUNTIME = web.AppKey("kmsg_console_runtime", WebhookRuntimeService)
GUARD = web.AppKey("kmsg_console_guard", Guard)
TEMPLATES = web.AppKey("kmsg_console_templates", jinja2.Environment)
#: This request's CSRF cookie value, and whether the response must set it (a new one).
_NONCE: ContextVar[tuple[str, bool]] = ContextVar("kmsg_console_nonce")
_HERE = Path(__file__).parent
#: Routes reachable before signing in.
_PUBLIC = frozenset({"login", "login_submit", "static"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_console_app(
    runtime: WebhookRuntimeService, *, token: str | None = None
) -> web.Application:
    """The console for ``runtime``'s stores, as an application of its own.

    Serve it (``kmsg-webhook console``) or mount it into an existing aiohttp application,
    e.g. ``app.add_subapp("/console/", create_console_app(runtime))`` (the way to watch an
    in-process memory store). ``token``, when given, is required to sign in; without one the
    console trusts whoever reaches it, so the application that serves it must be reachable
    only by operators. It never dispatches: retried deliveries are sent by whatever
    dispatches for the store (this runtime, or workers).
    """
    from . import actions, pages

    app = web.Application(middlewares=[_guard])
    app[RUNTIME] = runtime
    app[GUARD] = Guard(token)
    app[TEMPLATES] = _environment()
    pages.add_routes(app.router)
    actions.add_routes(app.router)
    app.router.add_static("/static/", _HERE / "static", name="static")
    app.on_response_prepare.append(_finish)
    return app


def render(
    request: web.Request, template: str, *, status: int = 200, **context: Any
) -> web.Response:
    """An HTML page from ``templates/`` (autoescaped), with the CSRF token and URL helpers."""
    guard = request.app[GUARD]
    html = (
        request.app[TEMPLATES]
        .get_template(template)
        .render(
            url=lambda name, query=None, **parts: url_for(request, name, query, **parts),
            csrf_field=CSRF_FIELD,
            csrf_token=guard.csrf_token(_NONCE.get()[0]),
            token_required=guard.token is not None,
            **context,
        )
    )
    return web.Response(text=html, status=status, content_type="text/html")


def url_for(request: web.Request, name: str, query: Any = None, **parts: str) -> URL:
    """The path of the named route of this console (mount prefix included)."""
    url = request.app.router[name].url_for(**parts)
    return url.with_query(query) if query else url


def redirect(url: URL) -> web.Response:
    """See other: where a browser goes after a change (a reload does not repeat it)."""
    return web.Response(status=303, headers={"Location": str(url)})


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    return render(request, "error.html", status=status, message=message)


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    # The middleware and the handler run in this request's own task (and context).
    _NONCE.set((cookie, False) if 20 <= len(cookie) <= 100 else (new_nonce(), True))
    response = await _checked(request, handler, cookie)
    nonce, new = _NONCE.get()
    if new:
        response.set_cookie(
            CSRF_COOKIE, nonce, httponly=True, samesite="Strict", secure=request.secure
        )
    return response


async def _checked(request: web.Request, handler: Handler, cookie: str) -> web.StreamResponse:
    """Sign-in, then origin and CSRF for state changes, then the handler."""
    guard = request.app[GUARD]
    if request.match_info.route.name not in _PUBLIC and not guard.authenticated(request):
        if request.method in ("GET", "HEAD"):
            return render(request, "login.html", status=401, failed=False)
        return error_page(request, 401, "Sign in first.")
    if request.method not in ("GET", "HEAD"):
        if not same_origin(request):
            return error_page(request, 403, "Cross-origin requests are refused.")
        form = await request.post()
        submitted = form.get(CSRF_FIELD)
        if not isinstance(submitted, str) or not guard.csrf_valid(cookie, submitted):
            return error_page(
                request, 403, "The form's security token is missing or stale: reload the page."
            )
    return await _answer(request, handler)


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler's response, or a page saying what was wrong."""
    try:
        return await handler(request)
    except (DeliveryNotFoundError, EndpointNotFoundError) as exc:
        return error_page(request, 404, f"Not found: {exc}")
    except FieldCryptoError as exc:
        return error_page(request, 422, f"Cannot open a stored value: {exc}")
    except WebhookError as exc:
        # Invalid input (ConsoleError), a rejected change, a tampered cursor (StoreError).
        return error_page(request, 400, str(exc))


async def _finish(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)
    if request.match_info.route.name == "static":
        # Public files: a browser may keep them, asking again (ETag) before each use.
        response.headers["Cache-Control"] = "no-cache"


def sign_in(request: web.Request, response: web.StreamResponse) -> None:
    """Give the browser its session cookie (after the token matched)."""
    response.set_cookie(
        SESSION_COOKIE,
        request.app[GUARD].session_cookie(),
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["age"] = _age
    env.filters["ms"] = _ms
    return env


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}"


def _age(span: timedelta | None) -> str:
    if span is None:
        return "-"
    seconds = max(0, int(span.total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"
