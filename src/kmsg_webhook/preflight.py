"""What a dispatching runtime checks when it starts, so a misfit shows at once, not as failed
deliveries: stored endpoints its URL policy will refuse, and sealed values it has no keys for."""

from __future__ import annotations

from collections.abc import Sequence

from .crypto.envelope import is_sealed
from .errors import EndpointUrlError
from .models import DeliveryFilter, DeliveryStatus, WebhookEndpoint
from .sender import SecurityOptions
from .store import DeliveryStore

#: Pending deliveries sampled for sealed payloads (newest first): one page, one query.
SEALED_SAMPLE = 100


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


def _sealed_endpoint(endpoint: WebhookEndpoint) -> bool:
    values = [endpoint.secret or "", *endpoint.headers.values()]
    values += [retired.secret for retired in endpoint.previous_secrets]
    return any(is_sealed(value) for value in values)


async def sealed_values(
    endpoints: Sequence[WebhookEndpoint], deliveries: DeliveryStore
) -> str | None:
    """Where the store holds sealed values (a phrase for an error message), or ``None``.

    ``endpoints`` and ``deliveries`` are as stored (not opened). Endpoints are all checked;
    deliveries by a sample of the newest pending ones, which are what a worker would send.
    """
    found = []
    sealed_endpoints = sum(map(_sealed_endpoint, endpoints))
    if sealed_endpoints:
        found.append(f"{sealed_endpoints} endpoint(s) with sealed secrets or headers")
    page = await deliveries.list(
        DeliveryFilter(statuses=(DeliveryStatus.PENDING,)), limit=SEALED_SAMPLE
    )
    sealed_payloads = sum(is_sealed(d.payload) for d in page.items)
    if sealed_payloads:
        found.append(f"{sealed_payloads} pending delivery payload(s) among the newest")
    return " and ".join(found) or None
