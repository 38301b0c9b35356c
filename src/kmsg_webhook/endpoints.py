"""Endpoint rules: turning an :class:`EndpointInput` into a valid endpoint, and a read cache."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from .errors import InvalidEndpointError
from .events import WebhookEvent, WebhookEventType
from .ids import new_id
from .models import EndpointInput, EndpointStatus, WebhookEndpoint
from .signing import RESERVED_HEADERS, SignatureScheme, Signer
from .store import EndpointStore

_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def resolve_status(active: bool | None, status: EndpointStatus | str | None) -> EndpointStatus:
    """``status`` wins; otherwise ``active`` maps to active/inactive; default active."""
    if status is not None:
        try:
            return EndpointStatus(status)
        except ValueError:
            raise InvalidEndpointError(f"unknown endpoint status {status!r}") from None
    if active is None or active:
        return EndpointStatus.ACTIVE
    return EndpointStatus.INACTIVE


def check_events(events: Sequence[WebhookEventType | str]) -> tuple[WebhookEventType, ...]:
    """At least one event type, each a known one; duplicates removed, order kept."""
    if isinstance(events, str) or not events:
        raise InvalidEndpointError("an endpoint must subscribe to at least one event type")
    try:
        parsed = [WebhookEventType.parse(e) for e in events]
    except ValueError as exc:
        raise InvalidEndpointError(str(exc)) from None
    return tuple(dict.fromkeys(parsed))


def check_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """Custom headers: valid names, no line breaks, and none that could override signing."""
    if not headers:
        return {}
    out: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise InvalidEndpointError(f"invalid header name {name!r}")
        if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
            raise InvalidEndpointError(f"invalid value for header {name}")
        if name.lower() in RESERVED_HEADERS:
            raise InvalidEndpointError(
                f"header {name} is set by the signer and cannot be overridden"
            )
        out[name] = value
    return out


def check_secret(secret: str | None, scheme: SignatureScheme) -> str | None:
    """Reject a secret the signer cannot use (bad ``whsec_`` base64, a public key, ...)."""
    if secret is None:
        return None
    if not secret:
        raise InvalidEndpointError("secret must not be empty (omit it to have one generated)")
    Signer([secret], scheme)  # raises InvalidSecretError with a message that hides the secret
    return secret


def build_endpoint(
    data: EndpointInput, *, url: str, secret: str | None, now: datetime
) -> WebhookEndpoint:
    """A new endpoint from validated input (``url`` and ``secret`` already checked)."""
    return WebhookEndpoint(
        id=data.id or new_id("ep"),
        url=url,
        events=check_events(data.events),
        created_at=now,
        updated_at=now,
        status=resolve_status(data.active, data.status),
        name=data.name,
        description=data.description,
        headers=check_headers(data.headers),
        secret=secret,
        retry_config=data.retry_config,
        filters=data.filters,
    )


class EndpointCache:
    """Endpoints as the dispatcher and intake see them, re-read at most every ``ttl_s``.

    Changes made through the owning runtime are applied at once (``put``/``drop``); changes made
    by other processes become visible within ``ttl_s``.
    """

    def __init__(self, store: EndpointStore, *, ttl_s: float) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._by_id: dict[str, WebhookEndpoint] = {}
        # Active endpoints per subscribed event type, rebuilt lazily after any change.
        self._routes: dict[WebhookEventType, _Route] | None = None
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    async def all(self) -> list[WebhookEndpoint]:
        await self._refresh_if_stale()
        return list(self._by_id.values())

    async def refresh(self) -> None:
        """Re-read the endpoints if the cached list is older than the TTL."""
        await self._refresh_if_stale()

    def matching(self, event: WebhookEvent) -> list[WebhookEndpoint]:
        """The endpoints that receive ``event`` (same rule as :meth:`WebhookEndpoint.matches`).

        Synchronous (it runs for every event of a batch): call :meth:`refresh` first.
        """
        if self._routes is None:
            self._routes = _build_routes(self._by_id.values())
        route = self._routes.get(event.type)
        if route is None:
            return []
        provider_id = event.metadata.provider_id
        keyed = route.by_provider.get(provider_id) if provider_id is not None else None
        if not keyed:
            candidates = route.unkeyed
        elif not route.unkeyed:
            candidates = keyed
        else:  # both kinds match: keep the endpoints' own order
            position = route.position
            candidates = sorted((*route.unkeyed, *keyed), key=lambda e: position[e.id])
        return [e for e in candidates if e.filters is None or e.filters.matches(event)]

    def cached(self, endpoint_id: str) -> WebhookEndpoint | None:
        """The endpoint if the cache is fresh and holds it, without awaiting; else ``None``
        (then :meth:`get` refreshes or looks it up)."""
        if time.monotonic() - self._loaded_at < self._ttl_s:
            return self._by_id.get(endpoint_id)
        return None

    async def get(self, endpoint_id: str) -> WebhookEndpoint | None:
        await self._refresh_if_stale()
        endpoint = self._by_id.get(endpoint_id)
        if endpoint is None:
            # Created by another process since the last refresh: look it up directly.
            endpoint = await self._store.get(endpoint_id)
            if endpoint is not None:
                self.put(endpoint)
        return endpoint

    def put(self, endpoint: WebhookEndpoint) -> None:
        self._by_id[endpoint.id] = endpoint
        self._routes = None

    def drop(self, endpoint_id: str) -> None:
        self._by_id.pop(endpoint_id, None)
        self._routes = None

    def invalidate(self) -> None:
        self._loaded_at = float("-inf")

    async def _refresh_if_stale(self) -> None:
        if time.monotonic() - self._loaded_at < self._ttl_s:
            return
        async with self._lock:
            if time.monotonic() - self._loaded_at < self._ttl_s:
                return
            endpoints = await self._store.list()
            self._by_id = {e.id: e for e in endpoints}
            self._routes = None
            self._loaded_at = time.monotonic()


class _Route:
    """The active endpoints subscribed to one event type, split by their provider filter so
    an event is checked only against endpoints that can match its provider."""

    __slots__ = ("by_provider", "position", "unkeyed")

    def __init__(self) -> None:
        self.unkeyed: list[WebhookEndpoint] = []  # no provider filter
        self.by_provider: dict[str, list[WebhookEndpoint]] = {}
        self.position: dict[str, int] = {}  # endpoint id → order of the endpoints


def _build_routes(endpoints: Iterable[WebhookEndpoint]) -> dict[WebhookEventType, _Route]:
    routes: dict[WebhookEventType, _Route] = {}
    for n, endpoint in enumerate(e for e in endpoints if e.active):
        for event_type in endpoint.events:
            route = routes.get(event_type)
            if route is None:
                route = routes[event_type] = _Route()
            route.position[endpoint.id] = n
            providers = endpoint.filters.provider_id if endpoint.filters else ()
            if not providers:
                route.unkeyed.append(endpoint)
            for provider_id in dict.fromkeys(providers):
                route.by_provider.setdefault(provider_id, []).append(endpoint)
    return routes
