"""The transport seam: what the sender needs from an HTTP client, and nothing more.

A transport sends one signed POST to an endpoint the URL guard has vetted and returns what the
sender records: the status, the two response headers it reads, a body capped at a given size
and the time taken. Failures raise :mod:`~kmsg_webhook.transport.errors`; a refusal by the
guard's connect-time check raises the guard's own
:class:`~kmsg_webhook.errors.EndpointUrlError`.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from yarl import URL

from .errors import InvalidRequestError

#: Framing is the transport's: a caller's value would make the request unreadable.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(frozen=True, slots=True, eq=False)
class Target:
    """An endpoint's vetted URL and the headers its every request carries, checked once.

    ``host`` is the name used for DNS (through the guard), SNI and certificate checks;
    ``head`` is the start of every request to it (request line, ``Host`` and ``headers``),
    encoded once. ``ssl_context`` (https only) replaces the transport's own for this target:
    an endpoint's client certificate (mutual TLS) or the runtime's trusted CAs.
    """

    url: URL
    tls: bool
    host: str
    port: int
    headers: Mapping[str, str]
    head: bytes
    ssl_context: ssl.SSLContext | None
    #: Requests with the same origin may share a kept-alive connection: the same scheme,
    #: host and port, and the same TLS context, so two client certificates never share one.
    origin: tuple[bool, str, int, ssl.SSLContext | None]

    @classmethod
    def from_url(
        cls,
        url: URL,
        headers: Mapping[str, str] | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> Target:
        """A target for a URL returned by :func:`~kmsg_webhook.urlguard.validate_endpoint_url`.

        ``headers`` (the fixed ones and the endpoint's own) are sent in this order with every
        request; a ``Host`` among them replaces the URL's. Raises
        :class:`~kmsg_webhook.transport.errors.InvalidRequestError` for a header that cannot
        be sent or that would change the request's framing.
        """
        host = url.raw_host
        port = url.port
        if url.scheme not in ("http", "https") or not host or port is None:
            raise InvalidRequestError(f"not an absolute http(s) URL: {url}")
        fixed = dict(headers or {})
        lines = []
        host_header = url.host_port_subcomponent or host
        for name, value in fixed.items():
            _check_header(name, value)
            lowered = name.lower()
            if lowered in _FRAMING_HEADERS:
                raise InvalidRequestError(f"header {name} is set by the transport")
            if lowered == "host":
                host_header = value
            else:
                lines.append(f"{name}: {value}\r\n")
        request_line = f"POST {url.raw_path_qs or '/'} HTTP/1.1\r\nHost: {host_header}\r\n"
        tls = url.scheme == "https"
        context = ssl_context if tls else None
        # One trailing dot names the same host; certificates never carry it.
        name = host[:-1] if host.endswith(".") else host
        return cls(
            url=url,
            tls=tls,
            host=name,
            port=port,
            headers=fixed,
            head=(request_line + "".join(lines)).encode(),
            ssl_context=context,
            origin=(tls, name, port, context),
        )


def _check_header(name: str, value: str) -> None:
    """Refuse a header that cannot be written as one HTTP/1.1 field line."""
    if not _TOKEN.fullmatch(name):
        raise InvalidRequestError(f"invalid header name {name!r}")
    if "\r" in value or "\n" in value or "\0" in value:
        raise InvalidRequestError(f"header {name} has a line break or NUL in its value")


@dataclass(slots=True)  # one per attempt: a plain init is cheaper than a frozen one
class TransportResponse:
    """What an answer said, as far as the sender uses it."""

    status: int
    reason: str
    #: The ``Retry-After`` header, verbatim, when present.
    retry_after: str | None
    #: The receiver's ``webhook-delivery`` header, verbatim, when present.
    webhook_delivery: str | None
    #: The ``webhook-challenge-response`` header (endpoint verification), when present.
    challenge_response: str | None
    #: The body's first ``max_body_bytes`` bytes; the rest was read and dropped.
    body: bytes
    #: Seconds from the call to the end of the answer.
    elapsed: float


class Transport(Protocol):
    """Sends signed POSTs; one instance is shared by all of a runtime's attempts."""

    async def post(
        self,
        target: Target,
        headers: Mapping[str, str],
        body: bytes,
        *,
        time_limit: float,
        max_body_bytes: int,
    ) -> TransportResponse:
        """POST ``body`` to ``target`` with its headers, then ``headers`` (this request's
        own, such as the signature) and ``Content-Length``; never follows a redirect.
        ``time_limit`` (seconds) bounds the whole attempt: connect, send, the whole answer."""
        ...

    async def aclose(self) -> None:
        """Close kept-alive connections (and anything else the transport owns)."""
        ...
