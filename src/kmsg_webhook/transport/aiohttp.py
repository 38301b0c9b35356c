"""The transport over an :class:`aiohttp.ClientSession`: for proxies and callers' own sessions.

The session decides DNS (give it a :class:`~kmsg_webhook.urlguard.GuardedResolver`), proxies
and, unless a target carries its own context, TLS; this class only maps a POST and its failures
onto the transport seam.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import aiohttp

from ..errors import EndpointUrlError
from .base import Target, TransportResponse
from .errors import (
    ConnectError,
    ProtocolError,
    TLSVerificationError,
    TransportTimeoutError,
)

__all__ = ["AiohttpTransport"]


class AiohttpTransport:
    """POSTs through ``session``; :meth:`aclose` closes it only when ``owns_session``."""

    def __init__(self, session: aiohttp.ClientSession, *, owns_session: bool = False) -> None:
        self.session = session
        self._owns_session = owns_session
        self._timeout = aiohttp.ClientTimeout()

    async def post(
        self,
        target: Target,
        headers: Mapping[str, str],
        body: bytes,
        *,
        time_limit: float,
        max_body_bytes: int,
    ) -> TransportResponse:
        """POST one request (see :meth:`kmsg_webhook.transport.Transport.post`)."""
        started = time.perf_counter()
        if self._timeout.total != time_limit:
            self._timeout = aiohttp.ClientTimeout(total=time_limit)
        try:
            async with self.session.post(
                target.url,
                data=body,
                headers={**target.headers, **headers} if target.headers else headers,
                allow_redirects=False,
                timeout=self._timeout,
                ssl=target.ssl_context or True,
            ) as response:
                length = response.content_length
                if length is not None and length <= max_body_bytes:
                    raw = await response.read()  # the usual small answer: one read
                else:
                    raw = await read_prefix(response.content, max_body_bytes)
                return TransportResponse(
                    status=response.status,
                    reason=response.reason or "",
                    retry_after=response.headers.get("Retry-After"),
                    webhook_delivery=response.headers.get("webhook-delivery"),
                    challenge_response=response.headers.get("webhook-challenge-response"),
                    body=raw,
                    elapsed=time.perf_counter() - started,
                )
        except aiohttp.ClientConnectorDNSError as exc:
            if isinstance(exc.os_error, EndpointUrlError):
                raise exc.os_error from None  # the guard's refusal, as the seam promises
            raise ConnectError(f"DNS lookup failed: {exc.os_error}") from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            raise TLSVerificationError(str(exc)) from exc
        except aiohttp.ClientConnectorError as exc:
            raise ConnectError(str(exc)) from exc
        except TimeoutError:
            raise TransportTimeoutError(time_limit) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ProtocolError(f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        """Close the session if it is ours (and give its transports a moment to close)."""
        if self._owns_session:
            await self.session.close()
            await asyncio.sleep(0)


async def read_prefix(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """Up to ``limit`` bytes of the body; one ``read(n)`` returns only what has arrived so far.
    The rest is left unread: aiohttp drops the connection when the response is released."""
    raw = bytearray()
    while len(raw) < limit:
        chunk = await stream.read(limit - len(raw))
        if not chunk:
            break
        raw += chunk
    return bytes(raw)
