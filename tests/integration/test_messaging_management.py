"""ProviderManager: template/channel/sender-number events, the review watcher, and the events
reaching a real local webhook endpoint through WebhookRuntimeService."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kmsg_webhook import (
    EndpointInput,
    SecurityOptions,
    WebhookConfig,
    WebhookEventType,
    WebhookRuntimeService,
    create_in_memory_persistence,
    verify,
)
from kmsg_webhook.errors import ConfigError
from kmsg_webhook.messaging import (
    AligoProvider,
    ChannelBinding,
    ChannelBindings,
    Fail,
    IWINVConfig,
    IWINVProvider,
    KMsg,
    KMsgErrorCode,
    MockProvider,
    Ok,
    ProviderManager,
    RetryPolicy,
    TemplateInput,
    TemplateStatus,
    TemplateStatusWatcher,
    TemplateUpdate,
    UnsupportedOperationError,
    WebhookFeed,
)
from kmsg_webhook.messaging.mock import MOCK_AUTH_NUMBER
from kmsg_webhook.models import EndpointFilters
from support.fakes.aligo import FakeAligoKakao, aligo_provider
from support.fakes.base import FakeServer, Recorded, Reply, webhook_receiver
from support.fakes.util import FlakySink, RecordingSleep

T = WebhookEventType


def types(sink: FlakySink) -> list[WebhookEventType]:
    return [event.type for event in sink.events]


async def test_template_operations_emit_events() -> None:
    sink, sleep = FlakySink(), RecordingSleep()
    manager = ProviderManager(
        MockProvider(),
        webhooks=sink,
        channels=ChannelBindings([ChannelBinding("main", "@mock", "mock-sender-seed")]),
        watch_interval=30,
        sleep=sleep,
    )
    created = await manager.create_template(TemplateInput("OTP", "code #{code}"), sender_key="main")
    assert isinstance(created, Ok)
    (event,) = sink.events
    assert event.type is T.TEMPLATE_CREATED
    assert event.metadata.provider_id == "mock"
    assert event.metadata.template_id == "MOCK_TPL_1"
    assert event.metadata.channel_id == "mock-sender-seed"  # alias resolved
    assert event.data == {
        "providerId": "mock",
        "templateCode": "MOCK_TPL_1",
        "name": "OTP",
        "status": "PENDING",
        "variables": ["code"],
        "senderKey": "mock-sender-seed",
    }
    assert event.id.startswith("tpl:mock:mock-sender-seed/MOCK_TPL_1@") and event.id.endswith(
        ":template.created"
    )

    updated = await manager.update_template("MOCK_TPL_1", TemplateUpdate(name="OTP2"))
    assert isinstance(updated, Ok)
    assert types(sink)[-1] is T.TEMPLATE_UPDATED
    assert await manager.delete_template("MOCK_TPL_1") == Ok(None)
    deleted = sink.events[-1]
    assert deleted.type is T.TEMPLATE_DELETED
    assert deleted.id == "tpl:mock:mock-sender-seed/MOCK_TPL_1:template.deleted"
    assert deleted.data["name"] == "OTP2"
    assert manager.watcher is not None and manager.watcher.pending == ()
    await manager.aclose()


async def test_failed_operations_emit_nothing() -> None:
    sink = FlakySink()
    manager = ProviderManager(MockProvider(), webhooks=sink)
    bad = await manager.create_template(TemplateInput("", "x"))
    assert isinstance(bad, Fail)
    missing = await manager.delete_template("NOPE")
    assert isinstance(missing, Fail)
    assert missing.error.code is KMsgErrorCode.TEMPLATE_NOT_FOUND
    assert sink.events == []
    await manager.aclose()


async def test_operations_a_provider_lacks_are_refused_with_a_typed_error() -> None:
    manager = ProviderManager(IWINVProvider(IWINVConfig(api_key="k")))
    for call in (
        manager.list_kakao_channels(),
        manager.list_kakao_channel_categories(),
        manager.request_kakao_channel_auth("@a", "010"),
        manager.add_kakao_channel("@a", "1", "010", "001"),
        manager.request_template_inspection("c"),
    ):
        refused = await call
        assert isinstance(refused, Fail)
        assert isinstance(refused.error, UnsupportedOperationError)
        assert refused.error.provider_id == "iwinv"
    await manager.aclose()


async def test_review_results_become_approved_and_rejected_events() -> None:
    sink, sleep, mock = FlakySink(), RecordingSleep(), MockProvider()
    manager = ProviderManager(mock, webhooks=sink, watch_interval=12.5, sleep=sleep)
    watcher = manager.watcher
    assert watcher is not None
    for name in ("a", "b"):
        assert isinstance(await manager.create_template(TemplateInput(name, "x")), Ok)
    assert watcher.pending == ((None, "MOCK_TPL_1"), (None, "MOCK_TPL_2"))
    assert await manager.request_template_inspection("MOCK_TPL_1") == Ok(None)

    await watcher.poll_once()  # nothing decided yet
    assert types(sink) == [T.TEMPLATE_CREATED, T.TEMPLATE_CREATED]

    mock.set_template_status("MOCK_TPL_1", TemplateStatus.APPROVED)
    mock.set_template_status("MOCK_TPL_2", TemplateStatus.REJECTED)
    await asyncio.wait_for(watcher.wait(), 5)  # the background loop ends by itself
    assert not watcher.running and watcher.pending == ()
    assert set(sleep.delays) == {12.5}
    approved, rejected = sink.events[-2:]
    assert (approved.type, approved.metadata.template_id) == (T.TEMPLATE_APPROVED, "MOCK_TPL_1")
    assert approved.data["previousStatus"] == "INSPECTION"
    assert (rejected.type, rejected.data["previousStatus"]) == (T.TEMPLATE_REJECTED, "PENDING")

    # Watching again restarts the loop.
    assert isinstance(await manager.create_template(TemplateInput("c", "x")), Ok)
    assert watcher.running
    await manager.aclose()
    assert not watcher.running and watcher.pending == ((None, "MOCK_TPL_3"),)


async def test_watcher_retries_failed_reads_and_forgets_deleted_templates() -> None:
    async with FakeAligoKakao() as fake:
        provider = aligo_provider(fake, sender_key="SENDERKEY1", retry=RetryPolicy.never())
        changes: list[tuple[str, TemplateStatus]] = []

        async def record(template: Any, previous: TemplateStatus, key: str | None) -> None:
            changes.append((template.code, template.status))

        watcher = TemplateStatusWatcher(provider, record, interval=1, sleep=RecordingSleep())
        try:
            one = await provider.create_template(TemplateInput("one", "x"))
            two = await provider.create_template(TemplateInput("two", "x"))
            assert isinstance(one, Ok) and isinstance(two, Ok)
            watcher.watch(one.value)
            watcher.watch(two.value)
            await watcher.aclose()  # drive it by hand below

            fake.script("/kakao/akv10/template/list/", Reply(500, raw="down"))
            await watcher.poll_once()
            assert watcher.failed_reads == 1 and len(watcher.pending) == 2

            del fake.templates[("SENDERKEY1", two.value.code)]
            fake.review(one.value.code, approve=False)
            await watcher.poll_once()
            assert changes == [(one.value.code, TemplateStatus.REJECTED)]
            assert watcher.pending == ()
        finally:
            await provider.aclose()
    with pytest.raises(ValueError):
        TemplateStatusWatcher(provider, record, interval=0)


def _aligo(fake: FakeAligoKakao) -> AligoProvider:
    return aligo_provider(fake, sender_key="SENDERKEY1", retry=RetryPolicy.never())


async def test_same_template_code_on_two_channels_is_watched_per_channel() -> None:
    sink = FlakySink()
    async with FakeAligoKakao() as fake:
        fake.channels.append({**fake.channels[0], "senderKey": "SENDERKEY2", "uuid": "@two"})
        provider = _aligo(fake)
        bindings = ChannelBindings([ChannelBinding("two", "@two", "SENDERKEY2")])
        manager = ProviderManager(
            provider, webhooks=sink, channels=bindings, sleep=RecordingSleep()
        )
        try:
            one = await manager.create_template(TemplateInput("one", "x"))
            two = await manager.create_template(TemplateInput("two", "y"), sender_key="two")
            assert isinstance(one, Ok) and isinstance(two, Ok)
            assert one.value.code == two.value.code == "TP_0001"  # codes are per channel
            watcher = manager.watcher
            assert watcher is not None
            await watcher.aclose()  # driven by hand below
            assert set(watcher.pending) == {("SENDERKEY1", "TP_0001"), ("SENDERKEY2", "TP_0001")}

            fake.review("TP_0001", approve=True, sender_key="SENDERKEY1")
            fake.review("TP_0001", approve=False, sender_key="SENDERKEY2")
            await watcher.poll_once()
        finally:
            await manager.aclose()
            await provider.aclose()
    decided = {(e.type, e.metadata.channel_id) for e in sink.events[2:]}
    assert decided == {(T.TEMPLATE_APPROVED, "SENDERKEY1"), (T.TEMPLATE_REJECTED, "SENDERKEY2")}
    assert watcher.pending == ()


async def test_watch_pending_resumes_after_a_restart() -> None:
    sink = FlakySink()
    async with FakeAligoKakao() as fake:
        fake.channels.append({**fake.channels[0], "senderKey": "SENDERKEY2", "uuid": "@two"})
        provider = _aligo(fake)
        try:
            # Submitted by an earlier process: nothing watches them now.
            for key in ("SENDERKEY1", "SENDERKEY2"):
                created = await provider.create_template(TemplateInput("t", "x"), sender_key=key)
                assert isinstance(created, Ok)
                done = await provider.create_template(TemplateInput("done", "x"), sender_key=key)
                assert isinstance(done, Ok)
                fake.review(done.value.code, approve=True, sender_key=key)
            bindings = ChannelBindings([ChannelBinding("two", "@two", "SENDERKEY2")])
            manager = ProviderManager(
                provider, webhooks=sink, channels=bindings, sleep=RecordingSleep()
            )
            resumed = await manager.watch_pending(sender_keys=[None, "@two"], page_size=1)
            assert isinstance(resumed, Ok), resumed
            assert [(t.sender_key, t.code) for t in resumed.value] == [
                ("SENDERKEY1", "TP_0001"),
                ("SENDERKEY2", "TP_0001"),
            ]
            watcher = manager.watcher
            assert watcher is not None
            await watcher.aclose()
            assert set(watcher.pending) == {("SENDERKEY1", "TP_0001"), ("SENDERKEY2", "TP_0001")}
            fake.review("TP_0001", approve=True, sender_key="SENDERKEY2")
            await watcher.poll_once()
            assert [(e.type, e.metadata.channel_id) for e in sink.events] == [
                (T.TEMPLATE_APPROVED, "SENDERKEY2")
            ]
            assert watcher.pending == (("SENDERKEY1", "TP_0001"),)

            fake.script("/kakao/akv10/template/list/", Reply(200, {"code": -101, "message": "x"}))
            denied = await manager.watch_pending()
            assert isinstance(denied, Fail)
            assert denied.error.code is KMsgErrorCode.AUTHENTICATION_FAILED
            await manager.aclose()
            off = ProviderManager(provider, watch_interval=None)
            refused = await off.watch_pending()
            assert isinstance(refused, Fail)
            assert refused.error.code is KMsgErrorCode.INVALID_REQUEST
        finally:
            await provider.aclose()


async def test_channel_and_sender_number_events() -> None:
    sink = FlakySink()
    manager = ProviderManager(MockProvider(), webhooks=WebhookFeed(sink))
    assert await manager.request_kakao_channel_auth("@new", "01011112222") == Ok(None)
    assert sink.events == []
    added = await manager.add_kakao_channel("@new", MOCK_AUTH_NUMBER, "01011112222", "001001001")
    assert isinstance(added, Ok)
    created, verified = sink.events
    assert (created.type, verified.type) == (T.CHANNEL_CREATED, T.CHANNEL_VERIFIED)
    assert created.metadata.channel_id == "mock-sender-1"
    assert created.data == {
        "providerId": "mock",
        "senderKey": "mock-sender-1",
        "plusId": "@new",
        "status": "A",
    }
    await manager.sender_number_added("010-9876-5432")
    await manager.sender_number_verified("010-9876-5432")
    added_number, verified_number = sink.events[-2:]
    assert added_number.type is T.SENDER_NUMBER_ADDED
    assert verified_number.type is T.SENDER_NUMBER_VERIFIED
    assert added_number.data["senderNumber"] == "010-****-5432"
    assert added_number.id == "sn:mock:01098765432:sender_number.added"
    await manager.aclose()


async def test_events_share_the_send_feed() -> None:
    sink = FlakySink(failures=1)
    sleep = RecordingSleep()
    feed = WebhookFeed(sink, sleep=sleep)
    mock = MockProvider()
    kmsg = KMsg([mock], webhooks=feed)
    manager = kmsg.manager("mock")
    with pytest.raises(ConfigError):
        kmsg.manager("nope")
    assert isinstance(await manager.create_template(TemplateInput("a", "x")), Ok)
    await feed.drain()  # the first emit failed; the feed's retry stored it
    assert types(sink) == [T.TEMPLATE_CREATED]
    assert feed.stats.retried == 1
    await manager.aclose()
    await kmsg.aclose()


# --------------------------------------------------------------------------- end to end


@pytest.fixture
async def receiver() -> AsyncIterator[FakeServer]:
    async with webhook_receiver("/hooks/templates", "/hooks/other") as server:
        yield server


async def test_template_review_reaches_a_real_webhook_endpoint(receiver: FakeServer) -> None:
    runtime = WebhookRuntimeService(
        WebhookConfig(jitter=False),
        persistence=create_in_memory_persistence(),
        security=SecurityOptions(allow_private_hosts=True),
    )
    async with FakeAligoKakao() as aligo:
        provider = aligo_provider(aligo, sender_key="SENDERKEY1")
        manager = ProviderManager(provider, webhooks=runtime, watch_interval=0.05)
        try:
            endpoint = await runtime.add_endpoint(
                EndpointInput(
                    url=receiver.url + "/hooks/templates",
                    events=[T.TEMPLATE_CREATED, T.TEMPLATE_APPROVED, T.CHANNEL_CREATED],
                    filters=EndpointFilters(provider_id=["aligo"], channel_id=["SENDERKEY1"]),
                )
            )
            await runtime.add_endpoint(
                EndpointInput(
                    url=receiver.url + "/hooks/other",
                    events=[T.TEMPLATE_CREATED, T.TEMPLATE_APPROVED],
                    filters=EndpointFilters(template_id=["SOMETHING_ELSE"]),
                )
            )
            assert endpoint.secret is not None
            created = await manager.create_template(TemplateInput("OTP", "code #{code}"))
            assert isinstance(created, Ok)
            code = created.value.code
            assert await manager.request_template_inspection(code) == Ok(None)
            aligo.review(code, approve=True)
            assert manager.watcher is not None
            await asyncio.wait_for(manager.watcher.wait(), 30)
            await runtime.flush()
            for _ in range(200):  # hang guard; flush normally returns after the attempts
                if len(receiver.hits("/hooks/templates")) >= 2:
                    break
                await asyncio.sleep(0.05)

            events = [
                verify(r.raw, r.headers, endpoint.secret) for r in receiver.hits("/hooks/templates")
            ]
            assert sorted(e.type.value for e in events) == ["template.approved", "template.created"]
            approved = next(e for e in events if e.type is T.TEMPLATE_APPROVED)
            assert approved.metadata.template_id == code
            assert approved.metadata.channel_id == "SENDERKEY1"
            assert approved.data["status"] == "APPROVED"
            assert receiver.hits("/hooks/other") == []  # its template filter matched nothing
        finally:
            await manager.aclose()
            await provider.aclose()
            await runtime.shutdown()


async def test_a_cancelled_operation_emits_nothing() -> None:
    sink = FlakySink()
    async with FakeAligoKakao() as fake:
        release = asyncio.Event()

        async def hold(req: Recorded) -> Reply:  # the vendor answers only after the cancel
            await release.wait()
            return Reply(200, {"code": 0, "data": {"templtCode": "TP_1"}})

        fake.route("POST", "/kakao/akv10/template/add/", hold)
        provider = aligo_provider(fake, sender_key="SENDERKEY1")
        manager = ProviderManager(provider, webhooks=sink)
        task = asyncio.create_task(manager.create_template(TemplateInput("a", "x")))
        for _ in range(200):
            if fake.hits("/kakao/akv10/template/add/"):
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        await manager.aclose()
        await provider.aclose()
    assert sink.events == []
    assert manager.watcher is not None and manager.watcher.pending == ()
