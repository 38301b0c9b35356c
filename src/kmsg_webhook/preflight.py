"""What a dispatching runtime checks when it starts, so a misfit shows at once, not as failed
deliveries: stored endpoints its URL policy will refuse. (Sealed values it has no keys for are
checked by :meth:`~kmsg_webhook.stores.sealed.Sealing.check_keys`.)"""

from __future__ import annotations

from collections.abc import Sequence

from .config import SecurityOptions
from .errors import EndpointUrlError
from .models import WebhookEndpoint


def refused_endpoints(
    endpoints: Sequence[WebhookEndpoint], security: SecurityOptions
) -> list[tuple[WebhookEndpoint, EndpointUrlError]]:
    """The active endpoints ``security`` refuses to send to, each with the refusal."""
    refused = []
    for endpoint in endpoints:
        if not endpoint.active:
            continue
        try:
            security.check(endpoint.url)
        except EndpointUrlError as exc:
            refused.append((endpoint, exc))
    return refused
