"""Why an HTTP attempt failed on the wire, rooted in :class:`~kmsg_webhook.errors.WebhookError`.

A refusal by the URL guard is not one of these: transports let the guard's
:class:`~kmsg_webhook.errors.EndpointUrlError` through unchanged, because retrying cannot help.
"""

from __future__ import annotations

from ..errors import WebhookError


class TransportError(WebhookError):
    """An attempt failed between sending the request and reading the whole answer."""


class InvalidRequestError(TransportError, ValueError):
    """The request cannot be written as HTTP/1.1 (a line break in a header, ...)."""


class ConnectError(TransportError):
    """No connection could be opened: DNS failure, refused, unreachable, TLS handshake."""


class TLSVerificationError(ConnectError):
    """The server's certificate is not trusted or does not name the host."""


class TransportTimeoutError(TransportError, TimeoutError):
    """The attempt did not finish (connect, send and the whole answer) within its timeout."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"timeout after {timeout * 1000:.0f} ms")
        self.timeout = timeout


class ProtocolError(TransportError):
    """The answer broke HTTP/1.1: malformed, headers too large, or cut off by a close or reset."""
