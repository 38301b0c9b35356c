"""KMsg.builder() and the persistence strategies none | log | queue | full."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kmsg_webhook.errors import ConfigError
from kmsg_webhook.messaging import (
    KMsg,
    KMsgDefaults,
    KMsgHooks,
    MessageType,
    MockProvider,
    Ok,
    PersistenceStrategy,
    RoutingConfig,
)
from kmsg_webhook.messaging.jobs import JobStatus
from support.fakes.util import FlakySink


@pytest.mark.parametrize(
    ("strategy", "tracked", "queued"),
    [("none", False, False), ("log", True, False), ("queue", False, True), ("full", True, True)],
)
async def test_persistence_strategies_map_onto_the_stores(
    tmp_path: Path, strategy: str, tracked: bool, queued: bool
) -> None:
    seen: list[str] = []
    sink = FlakySink()
    builder = (
        KMsg.builder()
        .providers(MockProvider(id="a"), MockProvider(id="b"))
        .routing(RoutingConfig(by_type={MessageType.SMS: "b"}))
        .defaults(KMsgDefaults(auto_lms_bytes=10))
        .hooks(KMsgHooks(on_success=lambda ctx, result: seen.append(result.message_id)))
        .webhooks(sink)
        .persistence(strategy, url=f"sqlite:///{os.path.join(tmp_path, 'app.db')}")
    )
    kmsg = builder.build()
    try:
        batch = await kmsg.send_many([{"to": "01012345678", "text": "hi", "messageId": "m1"}])
        [outcome] = batch.results
        assert isinstance(outcome, Ok) and outcome.value.provider_id == "b"
        assert seen == ["m1"] and "m1:message.sent" in sink.stored
        assert (builder.tracking is not None) is tracked
        assert (kmsg.queue is not None) is queued
        if builder.tracking is not None:
            assert await builder.tracking.store.get("m1") is not None
        if builder.jobs is not None:
            assert (await builder.jobs.count_by_status())[JobStatus.SENT] == 1
    finally:
        await kmsg.aclose()
        if builder.tracking is not None:
            await builder.tracking.store.close()
        if builder.jobs is not None:
            await builder.jobs.close()


def test_the_builder_refuses_what_cannot_work() -> None:
    with pytest.raises(ConfigError, match="unknown persistence strategy 'disk'"):
        KMsg.builder().persistence("disk")
    with pytest.raises(ConfigError, match="at least one provider"):
        KMsg.builder().build()
    assert PersistenceStrategy("full") is PersistenceStrategy.FULL
