"""What a dispatching runtime checks when it starts, so a misfit shows at once, not as failed
deliveries: stored endpoints its URL policy will refuse, and sealed values it has no keys for
(none at all, or not the key ids they were sealed under)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .crypto.envelope import is_sealed
from .crypto.fields import FieldCrypto
from .errors import EndpointUrlError
from .models import DeliveryFilter, DeliveryStatus, WebhookEndpoint
from .sender import SecurityOptions
from .stores.protocol import DeliveryStore

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


@dataclass(frozen=True, slots=True)
class SealedSample:
    """Sealed values found in a store: every endpoint's, and the newest pending payloads'."""

    endpoint_values: tuple[str, ...]
    endpoints: int
    payloads: tuple[str, ...]

    def where(self) -> str:
        """Where they are, as a phrase for an error message."""
        found = []
        if self.endpoints:
            found.append(f"{self.endpoints} endpoint(s) with sealed secrets or headers")
        if self.payloads:
            found.append(f"{len(self.payloads)} pending delivery payload(s) among the newest")
        return " and ".join(found)


def _sealed_of(endpoint: WebhookEndpoint) -> list[str]:
    values = [endpoint.secret or "", *endpoint.headers.values()]
    values += [retired.secret for retired in endpoint.previous_secrets]
    return [value for value in values if is_sealed(value)]


async def sample_sealed(
    endpoints: Sequence[WebhookEndpoint], deliveries: DeliveryStore
) -> SealedSample:
    """The sealed values of ``endpoints`` and of the newest pending deliveries (as stored).

    Endpoints are all checked; deliveries by one page of the newest pending ones, which are
    what a worker would send first.
    """
    per_endpoint = [_sealed_of(endpoint) for endpoint in endpoints]
    page = await deliveries.list(
        DeliveryFilter(statuses=(DeliveryStatus.PENDING,)), limit=SEALED_SAMPLE
    )
    return SealedSample(
        endpoint_values=tuple(value for values in per_endpoint for value in values),
        endpoints=sum(1 for values in per_endpoint if values),
        payloads=tuple(d.payload for d in page.items if is_sealed(d.payload)),
    )


def unknown_kids(sample: SealedSample, crypto: FieldCrypto) -> tuple[set[str], int]:
    """Key ids of sampled values that ``crypto`` has no key for, and how many values it can
    open."""
    unknown: set[str] = set()
    openable = 0
    for value in (*sample.endpoint_values, *sample.payloads):
        kid = crypto.kid_of(value)
        if kid is not None and crypto.config.keys.key(kid) is None:
            unknown.add(kid)
        else:
            openable += 1
    return unknown, openable
