"""How the sender reaches endpoints: the :class:`Transport` seam and its two implementations.

:class:`LeanTransport` is a small HTTP/1.1 client built for webhook POSTs;
:class:`AiohttpTransport` sends through an :class:`aiohttp.ClientSession` (proxies, a caller's
own session).
"""

from .aiohttp import AiohttpTransport
from .base import Target, Transport, TransportResponse
from .errors import (
    ConnectError,
    InvalidRequestError,
    ProtocolError,
    TLSVerificationError,
    TransportError,
    TransportTimeoutError,
)
from .lean import LeanTransport

__all__ = [
    "AiohttpTransport",
    "ConnectError",
    "InvalidRequestError",
    "LeanTransport",
    "ProtocolError",
    "TLSVerificationError",
    "Target",
    "Transport",
    "TransportError",
    "TransportResponse",
    "TransportTimeoutError",
]
