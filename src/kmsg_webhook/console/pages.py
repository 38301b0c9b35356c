"""The pages an operator reads: overview, endpoints, deliveries, one delivery, sign-in."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta

from aiohttp import web

from ..crypto.envelope import is_sealed
from ..events import WebhookEventType
from ..models import (
    FINISHED_STATUSES,
    DeliveryActivity,
    DeliveryStatus,
    EndpointOutcomes,
    EndpointStatus,
)
from ..runtime import WebhookRuntimeService
from .app import GUARD, RUNTIME, error_page, redirect, render, sign_in, url_for
from .chart import minute_chart
from .forms import DEFAULT_PAGE_SIZE, parse_delivery_query, parse_int

#: The window of the overview and of the endpoints' success rates (``?hours=`` up to 24).
DEFAULT_HOURS = 3
#: Outcome notices after a redirect (``?done=``): fixed texts, never echoed input.
NOTICES = {
    "disabled": "Endpoint disabled: it receives no new events.",
    "enabled": "Endpoint enabled; its failure counters were reset.",
    "retried": "Queued for another attempt now.",
    "replayed": "Queued to be sent again.",
}


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/", overview, name="overview")
    router.add_get("/endpoints", endpoints, name="endpoints")
    router.add_get("/deliveries", deliveries, name="deliveries")
    router.add_get("/deliveries/{delivery_id}", delivery, name="delivery")
    router.add_get("/login", login_form, name="login")
    router.add_post("/login", login, name="login_submit")


async def _runtime(request: web.Request) -> WebhookRuntimeService:
    runtime = request.app[RUNTIME]
    await runtime.start()  # idempotent; opens the store on first use
    return runtime


async def _activity(
    request: web.Request, runtime: WebhookRuntimeService
) -> tuple[int, DeliveryActivity]:
    """The window the page asks for (``?hours=``) and the store's activity over it."""
    hours = parse_int(request.query.get("hours"), "hours", DEFAULT_HOURS, 1, 24)
    now = runtime.clock.now()
    activity = await runtime.persistence.delivery_store.activity(
        since=now - timedelta(hours=hours), now=now
    )
    return hours, activity


async def overview(request: web.Request) -> web.Response:
    runtime = await _runtime(request)
    hours, activity = await _activity(request, runtime)
    queue = await runtime.persistence.delivery_store.queue_stats(now=activity.now)
    finished: Counter[DeliveryStatus] = Counter()
    for count in activity.per_minute:
        finished[count.status] += count.count
    listed = await runtime.list_endpoints()
    by_status = Counter(e.status for e in listed)
    return render(
        request,
        "overview.html",
        page="overview",
        hours=hours,
        activity=activity,
        chart=minute_chart(activity),
        finished=[(outcome.value, finished[outcome]) for outcome in FINISHED_STATUSES],
        queue=queue,
        oldest_due_age=activity.now - queue.oldest_due_at if queue.oldest_due_at else None,
        endpoint_counts=[(status.value, by_status[status]) for status in EndpointStatus],
        unreadable=len(listed.errors),
    )


async def endpoints(request: web.Request) -> web.Response:
    runtime = await _runtime(request)
    hours, activity = await _activity(request, runtime)
    outcomes = {o.endpoint_id: o for o in activity.by_endpoint}
    listed = await runtime.list_endpoints()
    return render(
        request,
        "endpoints.html",
        page="endpoints",
        hours=hours,
        rows=[(e, outcomes.get(e.id, EndpointOutcomes(e.id))) for e in listed],
        unreadable=listed.errors,
        notice=NOTICES.get(request.query.get("done", "")),
    )


async def deliveries(request: web.Request) -> web.Response:
    runtime = await _runtime(request)
    query = parse_delivery_query(request.query)
    page = await runtime.list_deliveries(query.filter, limit=query.limit, cursor=query.cursor)
    next_url = (
        url_for(request, "deliveries", [*query.params, ("cursor", page.next_cursor)])
        if page.next_cursor
        else None
    )
    return render(
        request,
        "deliveries.html",
        page="deliveries",
        items=page.items,
        unreadable=page.errors,
        next_url=next_url,
        first_url=url_for(request, "deliveries", list(query.params)) if query.cursor else None,
        chosen=query.filter,
        form={name: value for name, value in query.params if name != "status"},
        page_size=query.limit if query.limit != DEFAULT_PAGE_SIZE else None,
        statuses=[s.value for s in DeliveryStatus],
        event_types=[t.value for t in WebhookEventType],
        endpoints=await runtime.list_endpoints(),
    )


async def delivery(request: web.Request) -> web.Response:
    runtime = await _runtime(request)
    delivery_id = request.match_info["delivery_id"]
    found = await runtime.get_delivery(delivery_id)
    if found is None:
        return error_page(request, 404, f"No delivery {delivery_id}.")
    sealed = is_sealed(found.payload)
    payload = None if sealed else _pretty(found.payload)
    return render(
        request,
        "delivery.html",
        page="deliveries",
        d=found,
        sealed=sealed,
        keys_loaded=runtime.field_crypto is not None,
        payload=payload,
        notice=NOTICES.get(request.query.get("done", "")),
    )


async def login_form(request: web.Request) -> web.StreamResponse:
    if request.app[GUARD].authenticated(request):
        return redirect(url_for(request, "overview"))
    return render(request, "login.html", failed=False)


async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    token = form.get("token")
    if not isinstance(token, str) or not request.app[GUARD].token_matches(token):
        return render(request, "login.html", status=401, failed=True)
    response = redirect(url_for(request, "overview"))
    sign_in(request, response)
    return response


def _pretty(payload: str) -> str:
    """Indented JSON when the payload is JSON, else the text as stored."""
    try:
        return json.dumps(json.loads(payload), indent=2, ensure_ascii=False)
    except ValueError:
        return payload
