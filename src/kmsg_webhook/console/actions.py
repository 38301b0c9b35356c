"""What an operator changes: endpoint status, secrets and probes; delivery retries.

Every action is a POST that passed the guard's CSRF check (``app._guard``). Changes answer
with a redirect to the page they were made on; the rotated secret and a probe's result are
shown once, on the response itself (never stored for a later page).
"""

from __future__ import annotations

from aiohttp import web

from ..crypto.envelope import is_sealed
from ..errors import ConsoleError, DeliveryNotFoundError, EndpointNotFoundError
from ..models import DeliveryStatus, EndpointStatus
from ..runtime import WebhookRuntimeService
from .app import RUNTIME, redirect, render, url_for


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/endpoints/{endpoint_id}/disable", disable, name="endpoint_disable")
    router.add_post("/endpoints/{endpoint_id}/enable", enable, name="endpoint_enable")
    router.add_post("/endpoints/{endpoint_id}/rotate", rotate, name="endpoint_rotate")
    router.add_post("/endpoints/{endpoint_id}/probe", probe, name="endpoint_probe")
    router.add_post("/deliveries/{delivery_id}/retry", retry, name="delivery_retry")


async def disable(request: web.Request) -> web.Response:
    return await _set_status(request, EndpointStatus.INACTIVE, "disabled")


async def enable(request: web.Request) -> web.Response:
    return await _set_status(request, EndpointStatus.ACTIVE, "enabled")


async def _set_status(request: web.Request, status: EndpointStatus, done: str) -> web.Response:
    runtime = request.app[RUNTIME]
    await runtime.update_endpoint(request.match_info["endpoint_id"], status=status)
    return redirect(url_for(request, "endpoints", {"done": done}))


async def rotate(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    endpoint_id = await _signing_endpoint(runtime, request.match_info["endpoint_id"])
    rotated = await runtime.rotate_secret(endpoint_id)
    return render(request, "secret.html", page="endpoints", endpoint=rotated)


async def probe(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    endpoint_id = await _signing_endpoint(runtime, request.match_info["endpoint_id"])
    result = await runtime.probe_endpoint(endpoint_id)
    return render(request, "probe.html", page="endpoints", result=result)


async def retry(request: web.Request) -> web.Response:
    """Retry now (failed, exhausted) or replay (success): the same row goes back to pending,
    due now, its attempts kept."""
    runtime = request.app[RUNTIME]
    delivery_id = request.match_info["delivery_id"]
    before = await runtime.get_delivery(delivery_id)
    if before is None:
        raise DeliveryNotFoundError(delivery_id)
    if before.status is DeliveryStatus.PENDING:
        raise ConsoleError(f"delivery {delivery_id} is still pending: it is queued already")
    await runtime.retry_delivery(delivery_id)
    done = "replayed" if before.status is DeliveryStatus.SUCCESS else "retried"
    return redirect(url_for(request, "delivery", {"done": done}, delivery_id=delivery_id))


async def _signing_endpoint(runtime: WebhookRuntimeService, endpoint_id: str) -> str:
    """The endpoint's id, once sure its secret can be used: a sealed secret without the keys
    would be rotated away or sign with ciphertext."""
    await runtime.start()
    endpoint = await runtime.get_endpoint(endpoint_id)
    if endpoint is None:
        raise EndpointNotFoundError(endpoint_id)
    if runtime.field_crypto is None and endpoint.secret and is_sealed(endpoint.secret):
        raise ConsoleError(
            "this endpoint's secret is sealed: start the console with the field crypto keys "
            "(KMSG_WEBHOOK_KEYS) to rotate it or send a probe"
        )
    return endpoint_id
