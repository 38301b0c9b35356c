"""``WebhookRuntimeService``: endpoints, event intake into the outbox, and the dispatcher.

event → validate → ``enabled_events`` → match endpoints → delivery rows stored (pending)
→ dispatcher claims due rows → signed POST → attempt and new status recorded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from enum import Enum
from types import TracebackType
from typing import Any, Final, TypeAlias

import aiohttp
from aiohttp.abc import AbstractResolver

from .batcher import GroupCommit
from .challenge import WEBHOOK_CHALLENGE_RESPONSE, challenge_key, new_challenge, response_matches
from .clock import Clock, SystemClock
from .config import SecurityOptions, WebhookConfig
from .dispatcher import Dispatcher
from .endpoints import (
    EndpointCache,
    build_endpoint,
    check_client_certificate,
    check_events,
    check_flag,
    check_headers,
    check_secret,
    resolve_status,
)
from .errors import (
    ConfigError,
    DeliveryNotFoundError,
    EmitTimeoutError,
    EndpointNotFoundError,
    FlushTimeoutError,
    InvalidArgumentError,
    InvalidBatchError,
    InvalidEndpointError,
    InvalidEventError,
    MissingKeysError,
    PayloadTooLargeError,
    RuntimeClosedError,
)
from .events import EventMetadata, JSONObject, WebhookEvent, WebhookEventType
from .hooks import DeliveryHooks, EndpointChange, EndpointStatusEvent, HookSet
from .ids import new_id
from .logs import DELIVERY_LOG, successes_logged
from .models import (
    DeliveryFilter,
    DeliveryPage,
    DeliveryStatus,
    EmitResult,
    EndpointFilters,
    EndpointHealth,
    EndpointInput,
    EndpointList,
    EndpointStatus,
    EndpointVerification,
    ProbeResult,
    QueueStats,
    RetiredSecret,
    RetryConfig,
    RuntimeStats,
    WebhookDelivery,
    WebhookEndpoint,
    build_delivery,
)
from .operational import OperationalNotifier
from .preflight import refused_endpoints
from .retention import Retention
from .sender import Sender, fixed_headers
from .signing import generate_secret
from .stores.protocol import (
    DeliveryStore,
    EndpointStore,
    Watch,
    WebhookPersistence,
    require_complete,
)
from .stores.sealed import FieldCryptoOption, Sealing
from .tls import trust_context
from .transport import AiohttpTransport, LeanTransport, Target, Transport
from .urlguard import GuardedResolver

logger = logging.getLogger("kmsg_webhook.runtime")


class _Unset(Enum):
    UNSET = "UNSET"


UNSET: Final = _Unset.UNSET
#: An event as sent (prepared for field crypto) and its JSON body.
_Encoded: TypeAlias = tuple[WebhookEvent, str]
DEFAULT_SECRET_GRACE = timedelta(hours=24)
# The default emit bound: the store's retry limit (30 s when it does not say) plus a little.
DEFAULT_STORE_RETRY_S = 30.0
EMIT_TIMEOUT_SLACK_S = 5.0


class WebhookRuntimeService:
    """Durable, signed webhook delivery for one service.

    Start it with ``async with WebhookRuntimeService(...) as runtime:`` (or ``await start()`` /
    ``await shutdown()``); any call starts it lazily too. ``persistence`` is a
    :class:`WebhookPersistence` or a store URL (``memory://``, ``sqlite:///path.db``,
    ``postgresql://…``, ``d1://…``); when omitted, ``KMSG_WEBHOOK_STORE_URL`` decides, else
    memory. Deliveries go out through a :class:`~kmsg_webhook.transport.LeanTransport` of the
    runtime's own; ``resolver`` is a seam its connect-time private-address guard wraps.
    ``session`` sends them through your aiohttp session instead (proxies; its connector then
    decides DNS, our URL check still runs before each send), and ``transport`` through any
    :class:`~kmsg_webhook.transport.Transport`; either is yours to close. ``dispatch=False``
    makes an intake-only runtime (deliveries are sent by workers elsewhere).

    ``field_crypto`` (a :class:`~kmsg_webhook.crypto.FieldCryptoConfig`) protects what is
    stored: endpoint secrets and header values, payloads, phone numbers in payloads (see
    ``docs/field-crypto.md``). A persistence already wrapped with ``with_field_crypto`` works
    the same without it. ``self.persistence`` reads and writes plaintext; sealing and opening
    happen only there (:class:`~kmsg_webhook.stores.sealed.Sealing`).

    ``hooks`` (:class:`~kmsg_webhook.hooks.DeliveryHooks`, or several) are called after each
    recorded attempt, settled delivery and endpoint status change (see ``kmsg_webhook.hooks``);
    the runtime's own log lines (``kmsg_webhook.logs``) and, when configured, operational
    webhooks (``config.operational_webhook``) use the same seam.

    Stores lacking methods of the persistence protocol are refused here
    (:class:`~kmsg_webhook.errors.IncompleteStoreError`).
    """

    def __init__(
        self,
        config: WebhookConfig | None = None,
        *,
        persistence: WebhookPersistence | str | None = None,
        endpoint_store: EndpointStore | None = None,
        delivery_store: DeliveryStore | None = None,
        security: SecurityOptions | None = None,
        session: aiohttp.ClientSession | None = None,
        transport: Transport | None = None,
        resolver: AbstractResolver | None = None,
        clock: Clock | None = None,
        worker_id: str | None = None,
        dispatch: bool = True,
        rng: random.Random | None = None,
        field_crypto: FieldCryptoOption | None = None,
        hooks: DeliveryHooks | Sequence[DeliveryHooks] | None = None,
    ) -> None:
        self.config = config or WebhookConfig()
        if not isinstance(self.config, WebhookConfig):
            raise ConfigError("config must be a WebhookConfig")
        given = [hooks] if isinstance(hooks, DeliveryHooks) else list(hooks or ())
        if not all(isinstance(h, DeliveryHooks) for h in given):
            raise ConfigError("hooks must be DeliveryHooks (or a sequence of them)")
        self._hooks = HookSet(given, log=DELIVERY_LOG, log_successes=successes_logged)
        self._notifier: OperationalNotifier | None = None
        self._watch: Watch | None = None
        resolved = _resolve_persistence(persistence, endpoint_store, delivery_store)
        require_complete(resolved)
        # Field crypto (or its absence) at the store boundary: nothing else here seals or opens.
        self._sealing = sealing = Sealing(resolved, field_crypto)
        self.persistence = sealing.persistence
        #: What field crypto applies (``None``: off).
        self.field_crypto = sealing.crypto
        # Values as stored: the endpoint cache, counts, and what moves rows without reading them.
        self._stored = sealing.stored
        self.security = security or SecurityOptions()
        if self.config.operational_webhook is not None:
            self._check_url(self.config.operational_webhook.url)
        self.clock: Clock = clock or SystemClock()
        self.worker_id = worker_id or new_id("worker")
        if session is not None and transport is not None:
            raise ConfigError("pass session or transport, not both")
        self._given_transport = AiohttpTransport(session) if session is not None else transport
        self._resolver = resolver
        self._dispatch_enabled = dispatch
        self._rng = rng
        self._transport: Transport | None = None
        self._sender: Sender | None = None
        self._dispatcher: Dispatcher | None = None
        self._intake: GroupCommit[_Encoded] | None = None
        self._retention: Retention | None = None
        emit_timeout_ms = self.config.emit_timeout_ms
        #: The longest an emit waits to be stored (see ``WebhookConfig.emit_timeout_ms``).
        self.emit_timeout_s = (
            emit_timeout_ms / 1000
            if emit_timeout_ms is not None
            else (resolved.retry_timeout or DEFAULT_STORE_RETRY_S) + EMIT_TIMEOUT_SLACK_S
        )
        self._endpoints = EndpointCache(
            self._stored.endpoint_store, ttl_s=self.config.endpoint_cache_ttl_ms / 1000
        )
        # The configured k-msg signature header, besides the fixed reserved names.
        self._reserved_headers = frozenset({self.config.kmsg_signature.header.lower()})
        self._start_lock = asyncio.Lock()
        self._started = False
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Initialise persistence, open the transport and start the dispatcher (idempotent).

        A dispatching runtime first checks the store: without field crypto, sealed values are a
        :class:`~kmsg_webhook.errors.MissingKeysError` (the store is closed again), and each
        active endpoint the URL policy refuses is logged at WARNING.
        """
        if self._closed:
            raise RuntimeClosedError("the runtime is shut down")
        if self._started:
            return
        async with self._start_lock:
            if self._started:
                return
            if self.persistence.init is not None:
                await self.persistence.init()
            if self._dispatch_enabled:
                try:
                    await self._preflight()
                except MissingKeysError:
                    if self.persistence.close is not None:
                        await self.persistence.close()
                    raise
            transport = self._transport = self._given_transport or self._new_transport()
            sender = self._sender = Sender(transport, self.config, self.security, self.clock)
            self._dispatcher = Dispatcher(
                self._sealing,
                sender,
                self._endpoints,
                self.config,
                clock=self.clock,
                worker_id=self.worker_id,
                rng=self._rng,
                hooks=self._hooks,
            )
            operational = self.config.operational_webhook
            if operational is not None:
                destination = Target.from_url(
                    self.security.check(operational.url),
                    fixed_headers(self.config),
                    ssl_context=trust_context(self.config.ssl),
                )
                self._notifier = OperationalNotifier(
                    operational, transport, destination, self.config.signature_scheme, self.clock
                )
                self._hooks.add(self._notifier.hooks)
                self._notifier.start()
            self._intake = GroupCommit(
                self._write_events,
                max_batch=self.config.batch_size,
                max_wait_s=self.config.batch_timeout_ms / 1000,
                max_pending=self.config.intake_queue_size,
            )
            if self._dispatch_enabled:
                self._dispatcher.start()
                if self.persistence.watch is not None:
                    # Rows other processes make pending wake this dispatcher (LISTEN/NOTIFY).
                    self._watch = await self.persistence.watch(self._dispatcher.due_at)
            self._retention = Retention(
                self._stored.delivery_store, self.config.retention, self.clock
            )
            self._retention.start()
            self._started = True

    # A timeout argument, not only asyncio.timeout around the call: a timed-out flush says so
    # with its own error, and shutdown's timeout cancels in-flight sends instead of raising.
    async def flush(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Store everything emitted so far and send every delivery that is due now: first
        attempts, and retries due by now. Returns once each is recorded, except those of
        endpoints resting after timeouts: they stay pending in the store, untouched, until the
        rest ends (a flush does not wait for a rest). Nor does it wait for an attempt already
        in flight, when it is called, to an endpoint whose last attempt timed out: the
        background loop records it. Retries scheduled for later stay scheduled.

        ``timeout`` (seconds) bounds the wait: :class:`~kmsg_webhook.errors.FlushTimeoutError`
        when it runs out. Then, as when a flush is cancelled, nothing is lost: the background
        loop goes on sending, and every row stays claimable.
        """
        await self.start()
        assert self._intake is not None and self._dispatcher is not None
        try:
            async with asyncio.timeout(timeout):
                await self._intake.drain()
                if self._dispatch_enabled:
                    # Due by now: whatever the intake just stored, not what falls due later.
                    await self._dispatcher.drain(due_by=self.clock.now())
        except TimeoutError:
            raise FlushTimeoutError(f"flush did not finish within {timeout}s") from None

    async def shutdown(
        self,
        *,
        drain: bool = True,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        """Flush (store what was emitted and, when this runtime dispatches, send what is due),
        stop the dispatcher (in-flight attempts finish and are recorded), close the transport
        (if we opened it) and the store. Safe to call twice.

        ``drain=False`` skips sending what is due (a worker stopping on SIGTERM with a backlog):
        emitted events are still stored, and claimed but unsent deliveries are given back.
        ``timeout`` (seconds) bounds the graceful part; when it runs out, or when shutdown is
        cancelled, attempts in flight are cancelled and their rows given back (claimable at
        once), then the transport and store close.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self._started:
                await self._stop_dispatching(drain=drain, grace_s=timeout)
        finally:
            if self._given_transport is None and self._transport is not None:
                await self._transport.aclose()
            if self.persistence.close is not None:
                await self.persistence.close()

    async def _stop_dispatching(self, *, drain: bool, grace_s: float | None) -> None:
        assert self._intake is not None and self._dispatcher is not None
        try:
            try:
                async with asyncio.timeout(grace_s):
                    await self._intake.close()
                    if self._dispatch_enabled and drain:
                        # Without this, rows emitted just before shutdown stay pending (and are
                        # lost with the in-memory store) although the runtime could still send
                        # them.
                        await self._drain_for_shutdown()
                    await self._close_watch()
                    await self._dispatcher.stop()
            except TimeoutError:
                logger.warning(
                    "shutdown did not finish within %ss; cancelling what is in flight", grace_s
                )
                await self._close_watch()
                await self._dispatcher.stop(cancel=True)
            except asyncio.CancelledError:
                await self._close_watch()
                await self._dispatcher.stop(cancel=True)
                raise
        finally:
            if self._notifier is not None:
                await self._notifier.close()
            if self._retention is not None:
                await self._retention.stop()

    async def _drain_for_shutdown(self) -> None:
        assert self._dispatcher is not None
        try:
            await self._dispatcher.drain()
        except Exception:
            # A failing store must not keep the process from stopping: what is not sent stays
            # in the store for the next worker.
            logger.exception("sending what is due at shutdown failed; stopping anyway")

    async def _close_watch(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            await watch.close()

    async def __aenter__(self) -> WebhookRuntimeService:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    async def _preflight(self) -> None:
        """Refuse to dispatch sealed values without keys; name the endpoints the URL policy
        will refuse (one warning each), before any delivery is claimed."""
        endpoints = await self._stored.endpoint_store.list()
        warning = await self._sealing.check_keys(endpoints)
        if warning is not None:
            logger.warning("%s", warning)
        for endpoint, error in refused_endpoints(endpoints, self.security):
            logger.warning(
                "endpoint %s (%s) will be refused under this runtime's URL policy (%s): %s",
                endpoint.id,
                endpoint.url,
                self.security.describe(),
                error,
            )

    def _new_transport(self) -> Transport:
        security = self.security
        resolver = GuardedResolver(
            self._resolver,
            allow_private_hosts=security.allow_private_hosts,
            allowed_networks=security.allowed_networks,
        )
        # The dispatcher bounds concurrency; the pool only must not be the tighter limit.
        return LeanTransport(
            resolver=resolver,
            ssl_context=trust_context(self.config.ssl),
            max_connections_per_origin=self.config.max_concurrency,
        )

    # -- endpoints ---------------------------------------------------------------------------

    async def add_endpoint(self, data: EndpointInput) -> WebhookEndpoint:
        """Validate and store an endpoint. No request is sent (use :meth:`probe_endpoint`),
        except with ``verify=True``: the endpoint is stored ``pending_verification`` and one
        challenge is sent (:meth:`verify_endpoint`); it is returned active if answered, else
        still pending (call :meth:`verify_endpoint` again once the receiver is ready).

        With signing on and no secret given, a ``whsec_`` secret is generated; it is on the
        returned endpoint. A URL already registered is a :class:`DuplicateEndpointError`.
        """
        if not isinstance(data, EndpointInput):
            raise InvalidArgumentError(
                f"add_endpoint() takes an EndpointInput, not {type(data).__name__}"
            )
        await self.start()
        url = self._check_url(data.url)
        secret = check_secret(data.secret, self.config.signature_scheme)
        if secret is None and self.config.enable_security and not self.config.secret_key:
            secret = generate_secret()
        endpoint = build_endpoint(
            data,
            url=url,
            secret=secret,
            now=self.clock.now(),
            reserved_headers=self._reserved_headers,
        )
        if data.verify:
            self._challenge_keys(endpoint)  # refuse before storing what can never verify
        stored = self._sealing.seal_endpoint(endpoint)
        await self._stored.endpoint_store.add(stored)
        self._endpoints.put(stored)
        if data.verify:
            return (await self.verify_endpoint(endpoint.id)).endpoint
        return endpoint

    async def add_endpoints(self, inputs: Iterable[EndpointInput]) -> list[WebhookEndpoint]:
        """Add each in order; stops at the first error (earlier ones stay added)."""
        return [await self.add_endpoint(data) for data in inputs]

    async def update_endpoint(
        self,
        endpoint_id: str,
        *,
        url: str | _Unset = UNSET,
        events: Sequence[WebhookEventType | str] | _Unset = UNSET,
        status: EndpointStatus | str | _Unset = UNSET,
        active: bool | _Unset = UNSET,
        name: str | _Unset | None = UNSET,
        description: str | _Unset | None = UNSET,
        headers: Mapping[str, str] | _Unset | None = UNSET,
        secret: str | _Unset = UNSET,
        retry_config: RetryConfig | _Unset | None = UNSET,
        filters: EndpointFilters | _Unset | None = UNSET,
        client_cert: str | _Unset | None = UNSET,
        client_key: str | _Unset | None = UNSET,
        ordered: bool | _Unset = UNSET,
    ) -> WebhookEndpoint:
        """Change the given fields. Re-enabling (status active) clears the health counters.
        A client certificate and its key change together (``None`` for both removes them).

        Changing ``secret`` replaces it at once; use :meth:`rotate_secret` for a grace period.
        """
        await self.start()
        current = await self._require_endpoint(endpoint_id)
        changes: dict[str, Any] = {"updated_at": self.clock.now()}
        reset_health = False
        if not isinstance(url, _Unset) and url != current.url:
            changes["url"] = self._check_url(url)
        if not isinstance(events, _Unset):
            changes["events"] = check_events(events)
        if not isinstance(status, _Unset) or not isinstance(active, _Unset):
            new_status = resolve_status(
                None if isinstance(active, _Unset) else active,
                None if isinstance(status, _Unset) else status,
            )
            changes["status"] = new_status
            reset_health = new_status is EndpointStatus.ACTIVE and current.status is not new_status
            if reset_health:
                changes.update(disabled_reason=None, consecutive_failures=0, failing_since=None)
        for field_name, value in (
            ("name", name),
            ("description", description),
            ("retry_config", retry_config),
            ("filters", filters),
        ):
            if not isinstance(value, _Unset):
                changes[field_name] = value
        if not isinstance(ordered, _Unset):
            changes["ordered"] = check_flag("ordered", ordered)
        if not isinstance(headers, _Unset):
            changes["headers"] = check_headers(headers, reserved=self._reserved_headers)
        if not isinstance(secret, _Unset):
            changes["secret"] = check_secret(secret, self.config.signature_scheme)
        if not isinstance(client_cert, _Unset) or not isinstance(client_key, _Unset):
            changes["client_cert"], changes["client_key"] = check_client_certificate(
                current.client_cert if isinstance(client_cert, _Unset) else client_cert,
                current.client_key if isinstance(client_key, _Unset) else client_key,
            )
        updated = dataclasses.replace(current, **changes)
        result = await self._store_update(updated, reset_health=reset_health)
        if reset_health:
            self._hooks.endpoint_status(
                EndpointStatusEvent(
                    endpoint_id=result.id,
                    url=result.url,
                    change=EndpointChange.ENABLED,
                    status=result.status,
                    reason=f"was {current.status.value}"
                    + (f" ({current.disabled_reason})" if current.disabled_reason else ""),
                    at=self.clock.now(),
                )
            )
        return result

    async def rotate_secret(
        self,
        endpoint_id: str,
        *,
        new_secret: str | None = None,
        grace: timedelta = DEFAULT_SECRET_GRACE,
    ) -> WebhookEndpoint:
        """Make ``new_secret`` (generated if omitted) current; the old one keeps signing too
        until ``now + grace``, so receivers holding either secret keep verifying."""
        await self.start()
        current = await self._require_endpoint(endpoint_id)
        now = self.clock.now()
        secret = check_secret(new_secret, self.config.signature_scheme) or generate_secret()
        kept = tuple(s for s in current.previous_secrets if s.expires_at > now)
        if current.secret:
            kept = (*kept, RetiredSecret(secret=current.secret, expires_at=now + grace))
        updated = dataclasses.replace(current, secret=secret, previous_secrets=kept, updated_at=now)
        return await self._store_update(updated)

    async def remove_endpoint(self, endpoint_id: str) -> bool:
        """Delete the endpoint; its pending deliveries end ``failed`` ("endpoint was removed")."""
        await self.start()
        removed = await self.persistence.endpoint_store.remove(endpoint_id)
        self._endpoints.drop(endpoint_id)
        return removed

    async def get_endpoint(self, endpoint_id: str) -> WebhookEndpoint | None:
        """The endpoint; with field crypto, a value that does not decrypt raises
        :class:`~kmsg_webhook.errors.DecryptionError` (``fail_mode="open"``: reads as a marker)."""
        await self.start()
        return await self.persistence.endpoint_store.get(endpoint_id)

    async def list_endpoints(self) -> EndpointList:
        """Every endpoint, most recently updated first. With field crypto, endpoints that do not
        decrypt are named in ``.errors`` instead (``fail_mode="open"``: listed with markers)."""
        await self.start()
        endpoints = await self.persistence.endpoint_store.list()
        return endpoints if isinstance(endpoints, EndpointList) else EndpointList(endpoints)

    async def verify_endpoint(self, endpoint_id: str) -> EndpointVerification:
        """Send the endpoint one ``webhook-challenge`` now (not stored, not retried); a
        ``pending_verification`` endpoint whose receiver answers it becomes active.

        The answer must prove the endpoint's secret (any of its signing secrets, or the
        config's ``secret_key`` when it has none), as the ``standardwebhooks`` package and
        this library's receiver middlewares compute it. Any other status is left as it is; set
        ``status="pending_verification"`` with :meth:`update_endpoint` to verify again.
        """
        await self.start()
        assert self._sender is not None
        endpoint = await self._require_endpoint(endpoint_id)
        keys = self._challenge_keys(endpoint)
        challenge = new_challenge()
        result = await self._sender.challenge(endpoint, challenge)
        attempt = result.attempt
        error = attempt.error
        verified = False
        if attempt.ok:
            verified = response_matches(keys, challenge, result.challenge_answer)
            if not verified:
                error = (
                    f"no {WEBHOOK_CHALLENGE_RESPONSE} header in the answer"
                    if not result.challenge_answer
                    else f"the {WEBHOOK_CHALLENGE_RESPONSE} does not prove the endpoint's secret"
                )
        if verified and endpoint.status is EndpointStatus.PENDING_VERIFICATION:
            activated = dataclasses.replace(
                endpoint, status=EndpointStatus.ACTIVE, updated_at=self.clock.now()
            )
            endpoint = await self._store_update(activated, reset_health=True)
        return EndpointVerification(
            endpoint=endpoint,
            verified=verified,
            response_time_ms=attempt.latency_ms,
            http_status=attempt.http_status,
            error=None if verified else error,
        )

    def _challenge_keys(self, endpoint: WebhookEndpoint) -> list[bytes]:
        """The HMAC keys a challenge answer may prove; raises :class:`InvalidEndpointError`
        when there are none (no secret, or only ed25519 keys)."""
        secrets = endpoint.signing_secrets(self.clock.now())
        if not secrets and self.config.secret_key:
            secrets = [self.config.secret_key]
        scheme = self.config.signature_scheme
        keys = [key for s in secrets if (key := challenge_key(s, scheme)) is not None]
        if not keys:
            raise InvalidEndpointError(
                "endpoint verification needs an HMAC secret (a whsec_ or raw secret, or the "
                "config's secret_key): the receiver proves it holds it"
            )
        return keys

    async def probe_endpoint(
        self,
        endpoint_id: str,
        *,
        data: JSONObject | None = None,
    ) -> ProbeResult:
        """Send one signed ``system.maintenance`` test event now (one attempt, not stored).

        Probes ignore subscriptions, filters and the endpoint's status.
        """
        await self.start()
        endpoint = await self._require_endpoint(endpoint_id)
        assert self._dispatcher is not None
        now = self.clock.now()
        event = WebhookEvent(
            id=new_id("probe"),
            type=WebhookEventType.SYSTEM_MAINTENANCE,
            timestamp=now,
            data=data if data is not None else {"test": True, "message": "Webhook endpoint probe"},
            metadata=EventMetadata(correlation_id=f"probe_{endpoint.id}"),
        )
        delivery = self._new_delivery(event, endpoint, event.to_json(), now)
        result = await self._dispatcher.probe(endpoint, delivery)
        attempt = result.attempt
        return ProbeResult(
            endpoint_id=endpoint.id,
            url=endpoint.url,
            success=attempt.ok,
            response_time_ms=attempt.latency_ms,
            tested_at=now,
            http_status=attempt.http_status,
            error=attempt.error,
        )

    # -- events ------------------------------------------------------------------------------

    async def emit(self, event: WebhookEvent, *, connection: object | None = None) -> None:
        """Store the event's deliveries (group-committed with concurrent emits), then return.

        The dispatcher sends them in the background. Event types outside
        ``config.enabled_events`` are dropped silently, as in the original.

        An emit waits at most ``emit_timeout_s`` (see ``WebhookConfig.emit_timeout_ms``),
        then raises :class:`~kmsg_webhook.errors.EmitTimeoutError`; any store failure is a
        :class:`~kmsg_webhook.errors.StoreError`. Either way, emit the same event again (same
        ``id``): deliveries are unique per endpoint and event id, so a retry stores nothing
        twice and sends nothing twice.

        Transactional outbox: pass ``connection`` (your open database connection, inside your
        transaction) and the delivery rows are written in that transaction. Roll back and
        nothing is ever sent; commit and the dispatcher sends. Such an emit is not batched.
        """
        if not isinstance(event, WebhookEvent):
            raise InvalidArgumentError(
                f"emit() takes a WebhookEvent, not {type(event).__name__} "
                "(see WebhookEvent.from_wire)"
            )
        if self._closed:
            raise RuntimeClosedError("the runtime is shut down")
        if event.type not in self.config.enabled_events:
            return
        # Encoded here, not in the group commit: a bad event fails its own emit only.
        encoded = self._encode(event)
        if not self._started:
            await self.start()
        if connection is not None:
            await self._write_events([encoded], connection=connection)
            return
        assert self._intake is not None
        try:
            # On timeout the wait is cancelled: an event whose batch has not started is
            # dropped from the queue; one being written may still be stored.
            async with asyncio.timeout(self.emit_timeout_s):
                await self._intake.submit(encoded)
        except TimeoutError:
            raise EmitTimeoutError(
                f"event {event.id} was not stored within {self.emit_timeout_s:g}s (the store "
                "is failing or slow); emit it again with the same id, nothing is stored twice"
            ) from None

    async def emit_many(
        self, events: Iterable[WebhookEvent], *, connection: object | None = None
    ) -> list[EmitResult]:
        """Store many events' deliveries in one store write, then return what each stored
        (in the order given).

        Each event is validated and encoded as :meth:`emit` does, all before anything is
        written: one invalid event raises :class:`~kmsg_webhook.errors.InvalidBatchError`
        naming its position, and nothing of the call is stored. Idempotency, the event types
        outside ``config.enabled_events``, ``emit_timeout_s`` and ``connection`` (your
        transaction) work as for :meth:`emit`; the write is not batched with other emits.
        A call's rows go to the store in one call, so keep calls to thousands of events.
        """
        if isinstance(events, WebhookEvent) or not isinstance(events, Iterable):
            raise InvalidArgumentError(
                f"emit_many() takes an iterable of WebhookEvents, not {type(events).__name__}"
            )
        given = list(events)
        for index, event in enumerate(given):
            if not isinstance(event, WebhookEvent):
                raise InvalidArgumentError(
                    f"emit_many(): events[{index}] is a {type(event).__name__}, not a "
                    "WebhookEvent (see WebhookEvent.from_wire)"
                )
        if self._closed:
            raise RuntimeClosedError("the runtime is shut down")
        enabled = self.config.enabled_events
        encoded: list[_Encoded] = []
        for index, event in enumerate(given):
            if event.type in enabled:
                try:
                    encoded.append(self._encode(event))
                except InvalidEventError as exc:
                    raise InvalidBatchError(index, event.id, exc) from exc
        if not self._started:
            await self.start()
        written: list[EmitResult] = []
        if encoded and connection is not None:
            written = await self._write_events(encoded, connection=connection)
        elif encoded:
            try:
                async with asyncio.timeout(self.emit_timeout_s):
                    written = await self._write_events(encoded)
            except TimeoutError:
                raise EmitTimeoutError(
                    f"{len(given)} events were not stored within {self.emit_timeout_s:g}s "
                    "(the store is failing or slow); emit them again with the same ids, "
                    "nothing is stored twice"
                ) from None
        results = iter(written)
        return [
            next(results) if event.type in enabled else EmitResult(event.id, 0, 0)
            for event in given
        ]

    async def emit_sync(self, event: WebhookEvent) -> list[WebhookDelivery]:
        """Store the event's deliveries and make their first attempt now; return them.

        Failed first attempts are retried later by the dispatcher like any other.
        """
        if not isinstance(event, WebhookEvent):
            raise InvalidArgumentError(
                f"emit_sync() takes a WebhookEvent, not {type(event).__name__} "
                "(see WebhookEvent.from_wire)"
            )
        if self._closed:
            raise RuntimeClosedError("the runtime is shut down")
        if event.type not in self.config.enabled_events:
            return []
        event, payload = self._encode(event)
        if not self._started:
            await self.start()
        assert self._dispatcher is not None
        await self._endpoints.refresh()
        endpoints = self._endpoints.matching(event)
        now = self.clock.now()
        # Written leased to the dispatcher (built so: no copy per row), which sends them in
        # this task without a claim; ordered rows wait their turn in the store.
        lease_until = self._dispatcher.lease_for_sending(now)
        rows = [
            self._new_delivery(event, endpoint, payload, now, lease_until=lease_until)
            for endpoint in endpoints
        ]
        # Sealed on the way in; the rows as built (plaintext, in memory) are what is sent.
        return await self._dispatcher.send_now(rows, self.persistence.delivery_store.insert_many)

    def _encode(self, event: WebhookEvent) -> _Encoded:
        """The event as it is sent (field crypto may mask numbers) and its body; raises
        :class:`InvalidEventError` for a body JSON cannot hold or one over the size limit."""
        event = self._sealing.prepare(event)
        payload = event.to_json()
        limit = self.config.max_payload_bytes
        # A character is at most 4 UTF-8 bytes: most bodies need no exact count.
        if len(payload) * 4 > limit and (size := len(payload.encode())) > limit:
            raise PayloadTooLargeError(size, limit)
        return event, payload

    async def _write_events(
        self, events: Sequence[_Encoded], *, connection: object | None = None
    ) -> list[EmitResult]:
        """Write the events' deliveries in one store call; what each stored, in order."""
        dispatcher = self._dispatcher
        assert dispatcher is not None  # built by start(), before any write
        now = self.clock.now()
        await self._endpoints.refresh()
        matching = self._endpoints.matching
        rows: list[WebhookDelivery] = []
        ends: list[int] = []  # events[i]'s rows end at rows[ends[i]]
        for event, payload in events:
            rows.extend(
                self._new_delivery(event, endpoint, payload, now) for endpoint in matching(event)
            )
            ends.append(len(rows))
        if not rows:
            return [EmitResult(event.id, 0, 0) for event, _ in events]
        insert = self.persistence.delivery_store.insert_many  # seals them on the way in
        inserted: list[str] = []

        async def write(rows: Sequence[WebhookDelivery]) -> list[str]:
            inserted.extend(await insert(rows, connection=connection))
            return inserted

        # The dispatcher decides which rows it sends at once (written leased to it); rows in
        # a caller's transaction may never commit, so they wait for a claim.
        await dispatcher.hand_off(rows, write, leasable=connection is None)
        return _results(events, ends, rows, None if len(inserted) == len(rows) else set(inserted))

    def _new_delivery(
        self,
        event: WebhookEvent,
        endpoint: WebhookEndpoint,
        payload: str,
        now: datetime,
        *,
        lease_until: datetime | None = None,
    ) -> WebhookDelivery:
        """A new outbox row, due now, its payload as sent (plaintext); leased to this
        runtime's worker until ``lease_until`` when given, unless it is ordered."""
        ordering_key = event.ordering_key if endpoint.ordered else None
        if ordering_key is not None:
            lease_until = None
        return build_delivery(
            id=new_id("dlv"),
            endpoint_id=endpoint.id,
            event_id=event.id,
            event_type=event.type,
            url=endpoint.url,
            payload=payload,
            status=DeliveryStatus.PENDING,
            created_at=now,
            next_attempt_at=now,
            ordering_key=ordering_key,
            lease_owner=None if lease_until is None else self.worker_id,
            lease_expires_at=lease_until,
        )

    # -- deliveries --------------------------------------------------------------------------

    async def list_deliveries(
        self,
        filter: DeliveryFilter | None = None,
        *,
        limit: int = 100,
        cursor: str | None = None,
    ) -> DeliveryPage:
        """Newest first; pass ``page.next_cursor`` back for the next page.

        With field crypto, rows that do not decrypt are named in ``page.errors`` (and left out
        of ``items``, or listed with a marker payload under ``fail_mode="open"``).
        """
        await self.start()
        return await self.persistence.delivery_store.list(
            filter or DeliveryFilter(), limit=max(0, int(limit)), cursor=cursor
        )

    async def list_deliveries_for_recipient(
        self,
        to: str,
        filter: DeliveryFilter | None = None,
        *,
        limit: int = 100,
        cursor: str | None = None,
    ) -> DeliveryPage:
        """Deliveries whose payload was sent to the phone number ``to``, found by its keyed
        hash (field crypto ``to="encrypt+hash"``): no payload is decrypted to search."""
        digest = self._sealing.recipient_hash(to)
        narrowed = dataclasses.replace(filter or DeliveryFilter(), to_hash=digest)
        return await self.list_deliveries(narrowed, limit=limit, cursor=cursor)

    async def get_delivery(self, delivery_id: str) -> WebhookDelivery | None:
        """The delivery; with field crypto, a payload that does not decrypt raises
        :class:`~kmsg_webhook.errors.DecryptionError` (``fail_mode="open"``: a marker)."""
        await self.start()
        return await self.persistence.delivery_store.get(delivery_id)

    async def retry_delivery(self, delivery_id: str) -> WebhookDelivery:
        """Queue a finished delivery (any terminal status) for another round of attempts now."""
        await self.start()
        store = self._stored.delivery_store
        if await store.get(delivery_id) is None:
            raise DeliveryNotFoundError(delivery_id)
        await store.requeue(DeliveryFilter(), now=self.clock.now(), ids=[delivery_id])
        self._wake()
        delivery = await self.persistence.delivery_store.get(delivery_id)
        if delivery is None:
            raise DeliveryNotFoundError(delivery_id)
        return delivery

    async def replay(
        self,
        since: datetime,
        *,
        until: datetime | None = None,
        endpoint_id: str | None = None,
    ) -> int:
        """Re-queue failed/exhausted deliveries created in ``[since, until)``; return the count."""
        await self.start()
        count = await self.persistence.delivery_store.requeue(
            DeliveryFilter(
                endpoint_id=endpoint_id,
                statuses=(DeliveryStatus.FAILED, DeliveryStatus.EXHAUSTED),
                created_after=since,
                created_before=until,
            ),
            now=self.clock.now(),
        )
        self._wake()
        return count

    async def stats(self, filter: DeliveryFilter | None = None) -> RuntimeStats:
        await self.start()
        endpoints = await self._stored.endpoint_store.list()  # counted, not opened
        deliveries = await self._stored.delivery_store.stats(filter or DeliveryFilter())
        return RuntimeStats(
            total_endpoints=len(endpoints),
            active_endpoints=sum(e.active for e in endpoints),
            deliveries=deliveries,
        )

    async def endpoint_health(self) -> list[EndpointHealth]:
        """Every endpoint's status and health counters (read as stored: no secrets opened)."""
        await self.start()
        return [
            EndpointHealth(
                id=e.id,
                url=e.url,
                status=e.status,
                consecutive_failures=e.consecutive_failures,
                failing_since=e.failing_since,
                last_success_at=e.last_success_at,
                disabled_reason=e.disabled_reason,
            )
            for e in await self._stored.endpoint_store.list()
        ]

    async def queue_stats(self) -> QueueStats:
        """The outbox now: rows due, scheduled for later and leased (see :class:`QueueStats`)."""
        await self.start()
        return await self._stored.delivery_store.queue_stats(now=self.clock.now())

    @property
    def in_flight(self) -> int:
        """Attempts this runtime is sending right now."""
        return self._dispatcher.in_flight if self._dispatcher is not None else 0

    async def apply_retention(self) -> int:
        """Delete now the finished deliveries ``config.retention`` lets go (the runtime also
        does so every ``retention.interval_ms``); returns how many."""
        await self.start()
        assert self._retention is not None
        return await self._retention.apply()

    async def purge(self, *, older_than: datetime | timedelta) -> int:
        """Delete finished deliveries created before ``older_than`` (a time, or an age)."""
        await self.start()
        cutoff = self.clock.now() - older_than if isinstance(older_than, timedelta) else older_than
        return await self.persistence.delivery_store.purge(older_than=cutoff)

    # -- helpers -----------------------------------------------------------------------------

    def _wake(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.wake()

    def _check_url(self, url: str) -> str:
        if not isinstance(url, str):
            raise InvalidEndpointError("url must be a string")
        self.security.check(url)
        return url

    async def _require_endpoint(self, endpoint_id: str) -> WebhookEndpoint:
        """The endpoint opened strictly: what is written back or sent is never a marker."""
        endpoint = await self._stored.endpoint_store.get(endpoint_id)
        if endpoint is None:
            raise EndpointNotFoundError(endpoint_id)
        return self._sealing.open_endpoint(endpoint)

    async def _store_update(
        self, endpoint: WebhookEndpoint, *, reset_health: bool = False
    ) -> WebhookEndpoint:
        """Write ``endpoint``; returns it with the health fields as stored (the store keeps
        its own: failures recorded since ``endpoint`` was read are not undone)."""
        store = self._stored.endpoint_store
        await store.update(self._sealing.seal_endpoint(endpoint), reset_health=reset_health)
        fresh = await store.get(endpoint.id)
        if fresh is None:  # removed meanwhile
            self._endpoints.drop(endpoint.id)
            return endpoint
        self._endpoints.put(fresh)
        return dataclasses.replace(
            endpoint,
            consecutive_failures=fresh.consecutive_failures,
            failing_since=fresh.failing_since,
            last_success_at=fresh.last_success_at,
            last_triggered_at=fresh.last_triggered_at,
        )


def _results(
    events: Sequence[_Encoded],
    ends: Sequence[int],
    rows: Sequence[WebhookDelivery],
    inserted: set[str] | None,
) -> list[EmitResult]:
    """What each event stored: its rows, less those the store already held (``inserted``
    ``None``: every row was new)."""
    results = []
    start = 0
    for (event, _), end in zip(events, ends, strict=True):
        count = end - start
        new = count if inserted is None else sum(row.id in inserted for row in rows[start:end])
        results.append(EmitResult(event.id, new, count - new))
        start = end
    return results


def _resolve_persistence(
    persistence: WebhookPersistence | str | None,
    endpoint_store: EndpointStore | None,
    delivery_store: DeliveryStore | None,
) -> WebhookPersistence:
    if persistence is not None and not isinstance(persistence, WebhookPersistence | str):
        raise InvalidArgumentError(
            "persistence must be a WebhookPersistence or a store URL such as "
            f"'sqlite:///app.db', not {type(persistence).__name__}"
        )
    if isinstance(persistence, str) or (
        persistence is None and endpoint_store is None and delivery_store is None
    ):
        # A store URL, or KMSG_WEBHOOK_STORE_URL when nothing is given (memory if unset).
        from .stores.url import persistence_from_url

        persistence = persistence_from_url(persistence)
    if persistence is not None:
        return WebhookPersistence(
            endpoint_store=endpoint_store or persistence.endpoint_store,
            delivery_store=delivery_store or persistence.delivery_store,
            init=persistence.init,
            close=persistence.close,
            # Notifications describe the persistence's own delivery store only.
            watch=persistence.watch if delivery_store is None else None,
            retry_timeout=persistence.retry_timeout,
        )
    if endpoint_store is not None and delivery_store is not None:
        return WebhookPersistence(endpoint_store=endpoint_store, delivery_store=delivery_store)
    raise ConfigError("Both endpoint_store and delivery_store must be provided together")


async def add_endpoints(
    runtime: WebhookRuntimeService, inputs: Iterable[EndpointInput]
) -> list[WebhookEndpoint]:
    """Module-level form of :meth:`WebhookRuntimeService.add_endpoints`."""
    return await runtime.add_endpoints(inputs)


async def probe_endpoint(
    runtime: WebhookRuntimeService, endpoint_id: str, *, data: JSONObject | None = None
) -> ProbeResult:
    """Module-level form of :meth:`WebhookRuntimeService.probe_endpoint`."""
    return await runtime.probe_endpoint(endpoint_id, data=data)
