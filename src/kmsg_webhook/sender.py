"""One signed HTTP attempt: URL guard, headers, POST, truncated response, classified errors."""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from datetime import datetime

import aiohttp
from yarl import URL

from .challenge import WEBHOOK_CHALLENGE, WEBHOOK_CHALLENGE_RESPONSE
from .clock import Clock
from .config import SecurityOptions, WebhookConfig
from .errors import EndpointUrlError, InvalidEndpointError, SigningError
from .models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, build_attempt
from .signing import RESERVED_HEADERS, SignatureScheme, Signer
from .tls import client_context, trust_context
from .transport.aiohttp import read_prefix

_PREPARED_CACHE_SIZE = 4096
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
    """Sends one attempt of a delivery over a shared aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: WebhookConfig,
        security: SecurityOptions,
        clock: Clock,
        *,
        session_sends_fixed_headers: bool = False,
    ) -> None:
        self._session = session
        self._config = config
        self._security = security
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_ms / 1000)
        # Per request, so a caller's session trusts the same servers ours does.
        self._ssl: ssl.SSLContext | bool = trust_context(config.ssl) or True
        self._prepared: dict[str, _Prepared] = {}
        # Our own session sends the fixed headers as its defaults: aiohttp merges per-request
        # headers one by one in Python. A caller's session, whose defaults may change, gets
        # them with every request.
        self._fixed = {} if session_sends_fixed_headers else fixed_headers(config)

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
        except (EndpointUrlError, SigningError, InvalidEndpointError) as exc:
            return _failed(attempt_number, started_at, t0, f"refused: {exc}", refused=True)
        return await self._exchange(prepared, body, headers, attempt_number, started_at, t0)

    async def challenge(self, endpoint: WebhookEndpoint, challenge: str) -> AttemptResult:
        """POST an empty body with ``webhook-challenge`` (and the endpoint's own headers) to
        the endpoint; the answer is in ``challenge_answer``. Never raises for I/O."""
        started_at = self._clock.now()
        t0 = time.perf_counter()
        try:
            prepared = self._prepare(endpoint, started_at)
        except (EndpointUrlError, SigningError, InvalidEndpointError) as exc:
            return _failed(1, started_at, t0, f"refused: {exc}", refused=True)
        headers = {**prepared.base, WEBHOOK_CHALLENGE: challenge}
        return await self._exchange(prepared, b"", headers, 1, started_at, t0, challenge=True)

    async def _exchange(
        self,
        prepared: _Prepared,
        body: bytes,
        headers: dict[str, str],
        attempt_number: int,
        started_at: datetime,
        t0: float,
        *,
        challenge: bool = False,
    ) -> AttemptResult:
        try:
            async with self._session.post(
                prepared.url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=self._timeout,
                ssl=prepared.tls,
            ) as response:
                limit = self._config.max_response_body_bytes
                length = response.content_length
                if length is not None and length <= limit:
                    raw = await response.read()  # the usual small answer: one read
                else:
                    raw = await read_prefix(response.content, limit)
                status = response.status
                attempt = build_attempt(
                    attempt_number=attempt_number,
                    started_at=started_at,
                    latency_ms=(time.perf_counter() - t0) * 1000,
                    http_status=status,
                    response_body=raw.decode("utf-8", errors="replace"),
                    error=None if 200 <= status < 300 else _status_text(response),
                )
                answers = response.headers
                return AttemptResult(
                    attempt=attempt,
                    retry_after=answers.get("Retry-After"),
                    delivery_control=answers.get(WEBHOOK_DELIVERY),
                    challenge_answer=answers.get(WEBHOOK_CHALLENGE_RESPONSE) if challenge else None,
                )
        except aiohttp.ClientConnectorDNSError as exc:
            if isinstance(exc.os_error, EndpointUrlError):
                return _failed(
                    attempt_number, started_at, t0, f"refused: {exc.os_error}", refused=True
                )
            return _failed(attempt_number, started_at, t0, f"DNS lookup failed: {exc.os_error}")
        except TimeoutError:
            result = _failed(
                attempt_number, started_at, t0, f"timeout after {self._config.timeout_ms} ms"
            )
            result.timed_out = True
            return result
        except (aiohttp.ClientError, OSError) as exc:
            return _failed(attempt_number, started_at, t0, f"{type(exc).__name__}: {exc}")

    def _headers(
        self, prepared: _Prepared, delivery: WebhookDelivery, body: bytes, now: datetime
    ) -> dict[str, str]:
        timestamp = int(now.timestamp())
        if prepared.signer is None:
            signed = _unsigned_headers(self._config.signature_scheme, delivery, timestamp)
        else:
            signed = prepared.signer.headers(
                msg_id=delivery.event_id,
                timestamp=timestamp,
                body=body,
                event_type=delivery.event_type.value,
            )
        base = prepared.base
        return {**base, **signed} if base else signed

    def _prepare(self, endpoint: WebhookEndpoint, now: datetime) -> _Prepared:
        """Everything about an endpoint's request that does not change per attempt: its URL
        (checked by the URL guard), fixed headers and signer."""
        config = self._config
        url = self._security.check(endpoint.url)
        base = dict(self._fixed)
        signature_header = config.kmsg_signature.header.lower()
        for name, value in endpoint.headers.items():
            lowered = name.lower()
            if lowered not in RESERVED_HEADERS and lowered != signature_header:
                # After ours: aiohttp lets a later header replace an earlier one of the same
                # name in any case, so an endpoint's own User-Agent wins (tested).
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
        tls: ssl.SSLContext | bool = self._ssl
        if endpoint.client_cert is not None and endpoint.client_key is not None:
            tls = client_context(config.ssl, endpoint.client_cert, endpoint.client_key)
        prepared = _Prepared(endpoint, url, base, signer, min(expiries) if expiries else None, tls)
        if len(self._prepared) >= _PREPARED_CACHE_SIZE:
            self._prepared.clear()
        self._prepared[endpoint.id] = prepared
        return prepared


def fixed_headers(config: WebhookConfig) -> dict[str, str]:
    """Headers every delivery carries whatever the endpoint (before its custom headers)."""
    return {"Content-Type": "application/json", "User-Agent": config.user_agent}


@dataclass(slots=True)
class _Prepared:
    """An endpoint's checked URL, extra headers, signer and TLS context, valid while the
    endpoint object is the same (endpoints are immutable: any change makes a new one) and no
    retired secret has expired."""

    endpoint: WebhookEndpoint
    url: URL
    base: dict[str, str]
    signer: Signer | None
    valid_until: datetime | None
    tls: ssl.SSLContext | bool

    def fits(self, endpoint: WebhookEndpoint, now: datetime) -> bool:
        return self.endpoint is endpoint and (self.valid_until is None or now < self.valid_until)


def _failed(
    attempt_number: int, started_at: datetime, t0: float, error: str, *, refused: bool = False
) -> AttemptResult:
    attempt = build_attempt(
        attempt_number=attempt_number,
        started_at=started_at,
        latency_ms=(time.perf_counter() - t0) * 1000,
        error=error,
    )
    return AttemptResult(attempt=attempt, refused=refused)


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


def _status_text(response: aiohttp.ClientResponse) -> str:
    reason = response.reason or ""
    return f"HTTP {response.status}: {reason}".rstrip(": ")


async def close_session_gracefully(session: aiohttp.ClientSession) -> None:
    """Close a session and give the transports a moment to finish closing (aiohttp advice)."""
    await session.close()
    await asyncio.sleep(0)
