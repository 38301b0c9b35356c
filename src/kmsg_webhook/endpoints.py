"""Endpoint rules: turning an :class:`EndpointInput` into a valid endpoint, and a read cache."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime

from .errors import InvalidEndpointError
from .events import WebhookEvent, WebhookEventType
from .ids import new_id
from .models import EndpointInput, EndpointStatus, WebhookEndpoint
from .signing import RESERVED_HEADERS, SignatureScheme, Signer
from .stores.protocol import EndpointStore
from .tls import client_context

_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HEADER_VALUE = re.compile(r"(?:[\x21-\x7e](?:[\x20\x09\x21-\x7e]*[\x21-\x7e])?)?")


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


def check_headers(
    headers: Mapping[str, str] | None, *, reserved: Collection[str] = ()
) -> dict[str, str]:
    """Custom headers: token names, each once in any case; values of visible ASCII with inner
    spaces or tabs; none of :data:`~kmsg_webhook.signing.RESERVED_HEADERS` (signature, framing
    and hop-by-hop headers) nor of ``reserved`` (lower-case). ``Authorization``, ``Cookie`` and
    the like are allowed: field crypto seals every header value at rest."""
    if not headers:
        return {}
    if not isinstance(headers, Mapping):
        raise InvalidEndpointError("headers must be a mapping of names to values")
    out: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise InvalidEndpointError(f"invalid header name {name!r}")
        lower = name.lower()
        if lower in RESERVED_HEADERS or lower in reserved:
            raise InvalidEndpointError(
                f"header {name} is set by the sender (signature, body framing or connection) "
                "and cannot be given"
            )
        if lower in seen:
            raise InvalidEndpointError(f"header {name} is given twice (names ignore case)")
        seen.add(lower)
        if not isinstance(value, str) or not _HEADER_VALUE.fullmatch(value):
            # Non-ASCII has no single reading on the wire: aiohttp writes UTF-8, RFC 9110
            # readers take obs-text as Latin-1. Edge whitespace is stripped by receivers.
            raise InvalidEndpointError(
                f"invalid value for header {name}: use visible ASCII characters, with spaces "
                "or tabs only between them"
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


def check_client_certificate(cert: str | None, key: str | None) -> tuple[str | None, str | None]:
    """Both or neither, PEM text that loads as a certificate chain and its matching key."""
    if cert is None and key is None:
        return None, None
    if not isinstance(cert, str) or not isinstance(key, str) or not cert or not key:
        raise InvalidEndpointError("client_cert and client_key go together, both as PEM text")
    client_context(None, cert, key)  # raises InvalidEndpointError, naming no key material
    return cert, key


def build_endpoint(
    data: EndpointInput,
    *,
    url: str,
    secret: str | None,
    now: datetime,
    reserved_headers: Collection[str] = (),
) -> WebhookEndpoint:
    """A new endpoint from validated input (``url`` and ``secret`` already checked)."""
    client_cert, client_key = check_client_certificate(data.client_cert, data.client_key)
    return WebhookEndpoint(
        id=data.id or new_id("ep"),
        url=url,
        events=check_events(data.events),
        created_at=now,
        updated_at=now,
        status=_initial_status(data),
        name=data.name,
        description=data.description,
        headers=check_headers(data.headers, reserved=reserved_headers),
        secret=secret,
        retry_config=data.retry_config,
        filters=data.filters,
        client_cert=client_cert,
        client_key=client_key,
        ordered=check_flag("ordered", data.ordered),
    )


def check_flag(name: str, value: object) -> bool:
    """A yes/no option must be a bool (``"false"`` would read as true)."""
    if not isinstance(value, bool):
        raise InvalidEndpointError(f"{name} must be True or False, not {value!r}")
    return value


def _initial_status(data: EndpointInput) -> EndpointStatus:
    status = resolve_status(data.active, data.status)
    if not check_flag("verify", data.verify):
        return status
    if status not in (EndpointStatus.ACTIVE, EndpointStatus.PENDING_VERIFICATION):
        raise InvalidEndpointError(
            f"verify=True starts the endpoint pending_verification, not {status.value}; "
            "leave status and active unset"
        )
    return EndpointStatus.PENDING_VERIFICATION


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
        if time.monotonic() - self._loaded_at >= self._ttl_s:  # no await while fresh (per event)
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
        meta = event.metadata
        found = [route.unkeyed] if route.unkeyed else []
        for key, index in route.by_filter.items():
            value = getattr(meta, key)
            keyed = index.get(value) if value is not None else None
            if keyed:
                found.append(keyed)
        if not found:
            return []
        if len(found) == 1:
            candidates = found[0]
        else:  # several kinds match: keep the endpoints' own order
            position = route.position
            candidates = sorted((e for group in found for e in group), key=lambda e: position[e.id])
        # The routes may hold an older copy of an endpoint whose health changed since.
        by_id = self._by_id
        return [by_id[e.id] for e in candidates if e.filters is None or e.filters.matches(event)]

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
        old = self._by_id.get(endpoint.id)
        self._by_id[endpoint.id] = endpoint
        # A health update (every failed batch of a failing endpoint) keeps the routes.
        if old is None or not _same_routing(old, endpoint):
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
            old, self._by_id = self._by_id, {e.id: e for e in endpoints}
            # Rebuilding the routes of a thousand endpoints stalls the event loop for tens of
            # milliseconds: keep them unless a re-read endpoint routes differently.
            if len(old) != len(endpoints) or not all(
                (before := old.get(e.id)) is not None and _same_routing(before, e)
                for e in endpoints
            ):
                self._routes = None
            self._loaded_at = time.monotonic()


#: Metadata filters an endpoint can be indexed by (the event's value is looked up directly).
_FILTER_KEYS = ("template_id", "channel_id", "provider_id")


class _Route:
    """The active endpoints subscribed to one event type. Each endpoint with a metadata filter
    is indexed under one of its filters (the one listing the fewest values), so an event is
    checked only against endpoints that can match it: matching costs about the same with ten
    filtered endpoints as with a thousand."""

    __slots__ = ("by_filter", "position", "unkeyed")

    def __init__(self) -> None:
        self.unkeyed: list[WebhookEndpoint] = []  # no metadata filter
        # filter key → filter value → the endpoints indexed under it
        self.by_filter: dict[str, dict[str, list[WebhookEndpoint]]] = {}
        self.position: dict[str, int] = {}  # endpoint id → order of the endpoints


def _same_routing(a: WebhookEndpoint, b: WebhookEndpoint) -> bool:
    """Whether both versions of an endpoint route and address events alike."""
    return (
        a.url == b.url and a.status is b.status and a.events == b.events and a.filters == b.filters
    )


def _build_routes(endpoints: Iterable[WebhookEndpoint]) -> dict[WebhookEventType, _Route]:
    routes: dict[WebhookEventType, _Route] = {}
    for n, endpoint in enumerate(e for e in endpoints if e.active):
        key = _index_key(endpoint)
        values = dict.fromkeys(getattr(endpoint.filters, key)) if key else ()
        for event_type in endpoint.events:
            route = routes.get(event_type)
            if route is None:
                route = routes[event_type] = _Route()
            route.position[endpoint.id] = n
            if key is None:
                route.unkeyed.append(endpoint)
                continue
            index = route.by_filter.setdefault(key, {})
            for value in values:
                index.setdefault(value, []).append(endpoint)
    return routes


def _index_key(endpoint: WebhookEndpoint) -> str | None:
    """The endpoint's most selective metadata filter (fewest values), or ``None``."""
    filters = endpoint.filters
    if filters is None:
        return None
    listed = [(len(getattr(filters, k)), k) for k in _FILTER_KEYS if getattr(filters, k)]
    return min(listed)[1] if listed else None
