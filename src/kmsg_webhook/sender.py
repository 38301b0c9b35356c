"""One signed HTTP attempt: URL guard, headers, POST, truncated response, classified errors."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from .challenge import WEBHOOK_CHALLENGE
from .clock import Clock
from .config import SecurityOptions, WebhookConfig
from .errors import EndpointUrlError, InvalidEndpointError, SigningError
from .models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, build_attempt
from .signing import RESERVED_HEADERS, SignatureScheme, Signer
from .tls import client_context, trust_context
from .transport import (
    InvalidRequestError,
    Target,
    Transport,
    TransportError,
    TransportResponse,
    TransportTimeoutError,
)

_PREPARED_CACHE_SIZE = 4096
#: Why a request is refused before it leaves: retrying cannot help.
_REFUSALS = (EndpointUrlError, SigningError, InvalidEndpointError, InvalidRequestError)
#: What a POST raises when it got no answer (see ``Sender._unanswered``).
_UNANSWERED = (EndpointUrlError, TransportError)
#: The response header a receiver steers delivery with (Standard Webhooks proposal, Svix).
WEBHOOK_DELIVERY = "webhook-delivery"


@dataclass(slots=True)  # internal, one per attempt: a plain init is four times cheaper
class AttemptResult:
    """An attempt plus what the response said about retrying."""

    attempt: WebhookAttempt
    #: The request was refused before it left (URL guard, signing); retrying cannot help.
    refused: bool = False
    retry_after: str | None = None
    #: No answer within ``timeout_ms``.
    timed_out: bool = False
    #: The response's ``webhook-delivery`` header: the receiver steering delivery.
    delivery_control: str | None = None
    #: A challenge's ``webhook-challenge-response`` header (challenges only).
    challenge_answer: str | None = None


class Sender:
    """Sends one attempt of a delivery through the runtime's transport."""

    def __init__(
        self,
        transport: Transport,
        config: WebhookConfig,
        security: SecurityOptions,
        clock: Clock,
    ) -> None:
        self._transport = transport
        self._config = config
        self._security = security
        self._clock = clock
        self._time_limit = config.timeout_ms / 1000
        self._max_body_bytes = config.max_response_body_bytes
        # On every target, so a caller's aiohttp session trusts the same servers ours does.
        self._trust = trust_context(config.ssl)
        self._prepared: dict[str, _Prepared] = {}
        self._fixed = fixed_headers(config)

    async def send(self, endpoint: WebhookEndpoint, delivery: WebhookDelivery) -> AttemptResult:
        """POST ``delivery.payload`` to the endpoint's current URL; never raises for I/O."""
        started_at = self._clock.now()
        attempt_number = delivery.attempt_count + 1
        t0 = time.perf_counter()
        try:
            prepared = self._prepared.get(endpoint.id)
            if prepared is None or not prepared.fits(endpoint, started_at):
                prepared = self._prepare(endpoint, started_at)
            body = delivery.payload.encode()
            headers = self._headers(prepared, delivery, body, started_at)
        except _REFUSALS as exc:
            return _failed(attempt_number, started_at, t0, f"refused: {exc}", refused=True)
        # Awaited here, not in a helper coroutine: one coroutine layer fewer per attempt.
        try:
            response = await self._transport.post(
                prepared.target,
                headers,
                body,
                time_limit=self._time_limit,
                max_body_bytes=self._max_body_bytes,
            )
        except _UNANSWERED as exc:
            return self._unanswered(exc, attempt_number, started_at, t0)
        return _answered(response, attempt_number, started_at, t0)

    async def challenge(self, endpoint: WebhookEndpoint, challenge: str) -> AttemptResult:
        """POST an empty body with ``webhook-challenge`` (and the endpoint's own headers) to
        the endpoint; the answer is in ``challenge_answer``. Never raises for I/O."""
        started_at = self._clock.now()
        t0 = time.perf_counter()
        try:
            prepared = self._prepare(endpoint, started_at)
        except _REFUSALS as exc:
            return _failed(1, started_at, t0, f"refused: {exc}", refused=True)
        try:
            response = await self._transport.post(
                prepared.target,
                {WEBHOOK_CHALLENGE: challenge},
                b"",
                time_limit=self._time_limit,
                max_body_bytes=self._max_body_bytes,
            )
        except _UNANSWERED as exc:
            return self._unanswered(exc, 1, started_at, t0)
        result = _answered(response, 1, started_at, t0)
        result.challenge_answer = response.challenge_response
        return result

    def _unanswered(
        self, exc: Exception, attempt_number: int, started_at: datetime, t0: float
    ) -> AttemptResult:
        """The attempt of a POST that raised ``exc`` (one of ``_UNANSWERED``)."""
        if isinstance(exc, (EndpointUrlError, InvalidRequestError)):
            return _failed(attempt_number, started_at, t0, f"refused: {exc}", refused=True)
        if isinstance(exc, TransportTimeoutError):
            result = _failed(
                attempt_number, started_at, t0, f"timeout after {self._config.timeout_ms} ms"
            )
            result.timed_out = True
            return result
        return _failed(attempt_number, started_at, t0, f"{type(exc).__name__}: {exc}")

    def _headers(
        self, prepared: _Prepared, delivery: WebhookDelivery, body: bytes, now: datetime
    ) -> dict[str, str]:
        """This attempt's own headers; the target carries the fixed and the endpoint's."""
        timestamp = int(now.timestamp())
        if prepared.signer is None:
            return _unsigned_headers(self._config.signature_scheme, delivery, timestamp)
        return prepared.signer.headers(
            msg_id=delivery.event_id,
            timestamp=timestamp,
            body=body,
            event_type=str(delivery.event_type),  # a StrEnum's value, without Enum.value
        )

    def _prepare(self, endpoint: WebhookEndpoint, now: datetime) -> _Prepared:
        """Everything about an endpoint's request that does not change per attempt: its
        target (the URL checked by the URL guard, fixed headers, TLS context) and signer."""
        config = self._config
        url = self._security.check(endpoint.url)
        base = dict(self._fixed)
        signature_header = config.kmsg_signature.header.lower()
        for name, value in endpoint.headers.items():
            lowered = name.lower()
            if lowered not in RESERVED_HEADERS and lowered != signature_header:
                # An endpoint's own header replaces ours of the same name in any case, so its
                # own User-Agent wins (tested).
                for same in [n for n in base if n.lower() == lowered]:
                    del base[same]
                base[name] = value
        signer: Signer | None = None
        if config.enable_security:
            secrets = endpoint.signing_secrets(now)
            if not secrets and config.secret_key:
                secrets = [config.secret_key]
            if not secrets:
                raise SigningError(
                    f"signing is on but endpoint {endpoint.id} has no secret; "
                    "refusing an unsigned send"
                )
            signer = Signer(secrets, config.signature_scheme, kmsg_format=config.kmsg_signature)
        expiries = [s.expires_at for s in endpoint.previous_secrets if s.expires_at > now]
        tls = self._trust
        if endpoint.client_cert is not None and endpoint.client_key is not None:
            tls = client_context(config.ssl, endpoint.client_cert, endpoint.client_key)
        target = Target.from_url(url, base, ssl_context=tls)
        prepared = _Prepared(endpoint, target, signer, min(expiries) if expiries else None)
        if len(self._prepared) >= _PREPARED_CACHE_SIZE:
            self._prepared.clear()
        self._prepared[endpoint.id] = prepared
        return prepared


def fixed_headers(config: WebhookConfig) -> dict[str, str]:
    """Headers every delivery carries whatever the endpoint (before its custom headers)."""
    return {"Content-Type": "application/json", "User-Agent": config.user_agent}


@dataclass(slots=True)
class _Prepared:
    """An endpoint's target (checked URL, fixed headers, TLS context) and signer, valid while
    the endpoint object is the same (endpoints are immutable: any change makes a new one) and
    no retired secret has expired."""

    endpoint: WebhookEndpoint
    target: Target
    signer: Signer | None
    valid_until: datetime | None

    def fits(self, endpoint: WebhookEndpoint, now: datetime) -> bool:
        return self.endpoint is endpoint and (self.valid_until is None or now < self.valid_until)


def _attempt(
    attempt_number: int,
    started_at: datetime,
    t0: float,
    error: str | None,
    http_status: int | None = None,
    response_body: str | None = None,
) -> WebhookAttempt:
    """The attempt as recorded, ``t0`` (``perf_counter``) to now."""
    return build_attempt(
        attempt_number=attempt_number,
        started_at=started_at,
        latency_ms=(time.perf_counter() - t0) * 1000,
        http_status=http_status,
        response_body=response_body,
        error=error,
    )


def _answered(
    response: TransportResponse, attempt_number: int, started_at: datetime, t0: float
) -> AttemptResult:
    status = response.status
    attempt = _attempt(
        attempt_number,
        started_at,
        t0,
        None if 200 <= status < 300 else _status_text(status, response.reason),
        status,
        response.body.decode("utf-8", errors="replace"),
    )
    return AttemptResult(
        attempt=attempt,
        retry_after=response.retry_after,
        delivery_control=response.webhook_delivery,
    )


def _failed(
    attempt_number: int, started_at: datetime, t0: float, error: str, *, refused: bool = False
) -> AttemptResult:
    return AttemptResult(attempt=_attempt(attempt_number, started_at, t0, error), refused=refused)


def _unsigned_headers(
    scheme: SignatureScheme, delivery: WebhookDelivery, timestamp: int
) -> dict[str, str]:
    if scheme is SignatureScheme.KMSG:
        return {
            "X-Webhook-ID": delivery.event_id,
            "X-Webhook-Event": delivery.event_type.value,
            "X-Webhook-Timestamp": str(timestamp),
        }
    return {"webhook-id": delivery.event_id, "webhook-timestamp": str(timestamp)}


def _status_text(status: int, reason: str) -> str:
    return f"HTTP {status}: {reason}".rstrip(": ")
