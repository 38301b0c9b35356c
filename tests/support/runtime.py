"""The call shapes of the runtime fixtures in ``tests/conftest.py``, for annotations, and what
runs them per transport."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver

from kmsg_webhook import SecurityOptions, WebhookEvent, WebhookRuntimeService
from kmsg_webhook.urlguard import GuardedResolver

#: ``make_runtime(config=None, *, security=None, **kwargs)``
RuntimeFactory = Callable[..., Awaitable[WebhookRuntimeService]]
#: ``make_event(event_id=None, type="message.sent", **fields)``
EventFactory = Callable[..., WebhookEvent]
#: ``wait_until(predicate, within=10.0, what="")``
WaitUntil = Callable[..., Awaitable[None]]

#: Mark a module ``pytestmark = BOTH_TRANSPORTS`` to run its ``make_runtime`` tests over the
#: default LeanTransport and over AiohttpTransport (a caller's aiohttp session).
BOTH_TRANSPORTS = pytest.mark.both_transports


def guarded_session(
    security: SecurityOptions, resolver: AbstractResolver | None = None
) -> aiohttp.ClientSession:
    """An aiohttp session as a caller should build one: behind the URL guard's connect-time
    check, without a cookie jar (a receiver's cookies must not reach later deliveries)."""
    guard = GuardedResolver(
        resolver,
        allow_private_hosts=security.allow_private_hosts,
        allowed_networks=security.allowed_networks,
    )
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(resolver=guard), cookie_jar=aiohttp.DummyCookieJar()
    )
