"""Which endpoints an event goes to: the endpoint cache's routing index."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from kmsg_webhook import EndpointFilters, EndpointInput, EventMetadata, WebhookEvent
from kmsg_webhook.endpoints import EndpointCache, build_endpoint
from kmsg_webhook.stores.memory import InMemoryEndpointStore

NOW = datetime(2026, 1, 2, tzinfo=UTC)


async def _cache(*specs: tuple[str, tuple[str, ...]]) -> EndpointCache:
    store = InMemoryEndpointStore()
    for name, providers in specs:
        data = EndpointInput(
            id=name,
            url=f"https://example.com/{name}",
            events=["message.sent", "message.failed"],
            filters=EndpointFilters(provider_id=providers) if providers else None,
        )
        await store.add(build_endpoint(data, url=data.url, secret="s", now=NOW))
    cache = EndpointCache(store, ttl_s=60)
    await cache.refresh()
    return cache


def _event(provider_id: str | None, type: str = "message.sent") -> WebhookEvent:
    return WebhookEvent(
        id="evt_1",
        type=type,  # type: ignore[arg-type]
        timestamp=NOW,
        metadata=EventMetadata(provider_id=provider_id),
    )


async def test_filtered_and_unfiltered_endpoints_come_back_in_the_store_order() -> None:
    cache = await _cache(("a", ()), ("b", ("aligo",)), ("c", ()), ("d", ("iwinv", "aligo")))
    order = [e.id for e in await cache.all()]

    def ids(event: WebhookEvent) -> list[str]:
        found = [e.id for e in cache.matching(event)]
        assert found == sorted(found, key=order.index)
        return sorted(found)

    assert ids(_event("aligo")) == ["a", "b", "c", "d"]
    assert ids(_event("iwinv", "message.failed")) == ["a", "c", "d"]
    assert ids(_event(None)) == ["a", "c"]
    assert ids(_event("solapi")) == ["a", "c"]


async def test_changes_through_the_cache_rebuild_the_routes() -> None:
    cache = await _cache(("a", ("aligo",)))
    assert [e.id for e in cache.matching(_event("aligo"))] == ["a"]
    cache.drop("a")
    assert cache.matching(_event("aligo")) == []


async def test_a_reread_sees_routing_changes_made_in_the_store() -> None:
    # Another process changes the store; the cache re-reads it when its TTL has passed.
    store = InMemoryEndpointStore()
    for name in ("a", "b"):
        data = EndpointInput(
            id=name,
            url=f"https://example.com/{name}",
            events=["message.sent"],
            filters=EndpointFilters(provider_id=("aligo",)),
        )
        await store.add(build_endpoint(data, url=data.url, secret="s", now=NOW))
    cache = EndpointCache(store, ttl_s=0)
    await cache.refresh()
    assert sorted(e.id for e in cache.matching(_event("aligo"))) == ["a", "b"]
    b = await store.get("b")
    assert b is not None
    await store.update(dataclasses.replace(b, description="same routing"))
    await cache.refresh()
    seen = {e.id: e.description for e in cache.matching(_event("aligo"))}
    assert seen == {"a": None, "b": "same routing"}
    await store.update(dataclasses.replace(b, filters=EndpointFilters(provider_id=("iwinv",))))
    await cache.refresh()
    assert [e.id for e in cache.matching(_event("aligo"))] == ["a"]
    assert [e.id for e in cache.matching(_event("iwinv"))] == ["b"]
    await store.remove("a")
    await cache.refresh()
    assert cache.matching(_event("aligo")) == []


async def _filtered_cache(specs: dict[str, EndpointFilters | None]) -> EndpointCache:
    store = InMemoryEndpointStore()
    for name, filters in specs.items():
        data = EndpointInput(
            id=name, url=f"https://example.com/{name}", events=["message.sent"], filters=filters
        )
        await store.add(build_endpoint(data, url=data.url, secret="s", now=NOW))
    cache = EndpointCache(store, ttl_s=60)
    await cache.refresh()
    return cache


def _meta_event(**meta: str) -> WebhookEvent:
    return WebhookEvent(
        id="evt_1", type="message.sent", timestamp=NOW, metadata=EventMetadata(**meta)
    )


async def test_every_metadata_filter_routes_and_all_of_an_endpoints_filters_apply() -> None:
    cache = await _filtered_cache(
        {
            "all": None,
            "tpl_a": EndpointFilters(template_id=("A",)),
            "tpl_ab": EndpointFilters(template_id=("A", "B")),
            "chan_sms": EndpointFilters(channel_id=("sms",)),
            # Indexed under its template (one value), yet its provider filter still applies.
            "tpl_a_aligo": EndpointFilters(template_id=("A",), provider_id=("aligo", "iwinv")),
        }
    )
    order = [e.id for e in await cache.all()]

    def ids(**meta: str) -> list[str]:
        found = [e.id for e in cache.matching(_meta_event(**meta))]
        assert found == sorted(found, key=order.index)
        return sorted(found)

    assert ids(template_id="A") == ["all", "tpl_a", "tpl_ab"]
    assert ids(template_id="A", provider_id="aligo") == ["all", "tpl_a", "tpl_a_aligo", "tpl_ab"]
    assert ids(template_id="B", channel_id="sms") == ["all", "chan_sms", "tpl_ab"]
    assert ids(channel_id="kakao") == ["all"]
    assert ids() == ["all"]


async def test_a_thousand_template_filtered_endpoints_match_one_each() -> None:
    cache = await _filtered_cache(
        {f"ep{n}": EndpointFilters(template_id=(f"T{n}",)) for n in range(1000)}
    )
    assert [e.id for e in cache.matching(_meta_event(template_id="T417"))] == ["ep417"]
    assert cache.matching(_meta_event(template_id="T1000")) == []
