"""Kakao channels: Aligo's channel API against its fake, the mock, and the binding resolver."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from kmsg_webhook.errors import ConfigError
from kmsg_webhook.messaging import (
    AligoProvider,
    ChannelBinding,
    ChannelBindings,
    Fail,
    KakaoChannelCategory,
    KMsg,
    KMsgDefaults,
    KMsgErrorCode,
    MockProvider,
    Ok,
    RetryPolicy,
)
from kmsg_webhook.messaging.mock import MOCK_AUTH_NUMBER
from kmsg_webhook.messaging.provider import KST
from support.fakes.aligo import FakeAligoKakao, aligo_provider
from support.fakes.base import Reply


@pytest.fixture
async def aligo() -> Any:
    async with FakeAligoKakao() as server:
        provider = aligo_provider(
            server, sender="0212345678", test_mode=False, retry=RetryPolicy.never()
        )
        yield server, provider
        await provider.aclose()


async def test_aligo_lists_channels(aligo: tuple[FakeAligoKakao, AligoProvider]) -> None:
    fake, provider = aligo
    listed = await provider.list_kakao_channels()
    assert isinstance(listed, Ok)
    (channel,) = listed.value
    assert (channel.sender_key, channel.plus_id, channel.name) == ("SENDERKEY1", "@brand", "브랜드")
    assert channel.created_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=KST)
    form = fake.hits("/kakao/akv10/profile/list/")[0].form
    assert form == {"apikey": fake.api_key, "userid": fake.user_id}

    by_plus = await provider.list_kakao_channels(plus_id="brand")  # "@" added
    assert isinstance(by_plus, Ok) and len(by_plus.value) == 1
    assert fake.hits("/kakao/akv10/profile/list/")[1].form["plusid"] == "@brand"
    none = await provider.list_kakao_channels(sender_key="OTHER")
    assert none == Ok(())


async def test_aligo_categories_have_three_levels(
    aligo: tuple[FakeAligoKakao, AligoProvider],
) -> None:
    _, provider = aligo
    categories = await provider.list_kakao_channel_categories()
    assert isinstance(categories, Ok)
    tree = categories.value
    assert tree.first == (KakaoChannelCategory("001", "건강"),)
    assert tree.second == (KakaoChannelCategory("001001", "병원", "001"),)
    assert tree.third == (KakaoChannelCategory("001001001", "종합병원", "001001"),)
    assert tree.children("001001") == tree.third


async def test_aligo_registers_a_channel(aligo: tuple[FakeAligoKakao, AligoProvider]) -> None:
    fake, provider = aligo
    assert await provider.request_kakao_channel_auth("@newbrand", "01099998888") == Ok(None)
    assert fake.hits("/kakao/akv10/profile/auth/")[0].form == {
        "apikey": fake.api_key,
        "userid": fake.user_id,
        "plusid": "@newbrand",
        "phonenumber": "01099998888",
    }
    added = await provider.add_kakao_channel("@newbrand", "246810", "01099998888", "001001001")
    assert isinstance(added, Ok), added
    assert added.value.plus_id == "@newbrand"
    assert added.value.sender_key == fake.channels[-1]["senderKey"]
    form = fake.hits("/kakao/akv10/profile/add/")[0].form
    assert (form["authnum"], form["categorycode"]) == ("246810", "001001001")


async def test_aligo_channel_failures(aligo: tuple[FakeAligoKakao, AligoProvider]) -> None:
    fake, provider = aligo
    not_admin = await provider.request_kakao_channel_auth("@x", "01000000000")
    assert isinstance(not_admin, Fail)
    assert not_admin.error.code is KMsgErrorCode.INVALID_REQUEST
    assert not_admin.error.provider_error_code == "509"

    wrong_number = await provider.add_kakao_channel("@x", "000000", "01099998888", "001001001")
    assert isinstance(wrong_number, Fail)
    assert wrong_number.error.provider_error_code == "-99"
    assert wrong_number.error.code is KMsgErrorCode.INVALID_REQUEST

    blank = await provider.add_kakao_channel("@x", " ", "01099998888", "001001001")
    assert isinstance(blank, Fail)
    assert blank.error.code is KMsgErrorCode.INVALID_REQUEST
    assert not fake.hits("/kakao/akv10/profile/add/")[1:]  # refused before the vendor

    fake.script("/kakao/akv10/category/", Reply(200, {"code": 0, "message": "ok"}))
    no_data = await provider.list_kakao_channel_categories()
    assert isinstance(no_data, Fail)
    assert no_data.error.code is KMsgErrorCode.PROVIDER_ERROR
    assert not no_data.error.retryable

    fake.script("/kakao/akv10/profile/list/", Reply(200, {"code": 777, "message": "점검 중"}))
    unknown = await provider.list_kakao_channels()
    assert isinstance(unknown, Fail)
    assert unknown.error.code is KMsgErrorCode.PROVIDER_ERROR
    assert unknown.error.details["originalCode"] == "777"


async def test_mock_channels() -> None:
    mock = MockProvider()
    seeded = await mock.list_kakao_channels(plus_id="mock")
    assert isinstance(seeded, Ok)
    assert seeded.value[0].sender_key == "mock-sender-seed"
    early = await mock.add_kakao_channel("@m2", MOCK_AUTH_NUMBER, "010", "001001001")
    assert isinstance(early, Fail)  # no auth requested yet
    assert await mock.request_kakao_channel_auth("@m2", "01011112222") == Ok(None)
    added = await mock.add_kakao_channel("m2", MOCK_AUTH_NUMBER, "01011112222", "001001001")
    assert isinstance(added, Ok)
    assert (added.value.sender_key, added.value.plus_id) == ("mock-sender-1", "@m2")


# --------------------------------------------------------------------------- bindings


BINDINGS = ChannelBindings(
    [
        ChannelBinding("shop", "@shop", "SENDERKEY1", provider_id="aligo"),
        ChannelBinding("clinic", "@clinic", "SENDERKEY2"),
    ]
)


def test_bindings_resolve_alias_plus_id_and_sender_key() -> None:
    shop = BINDINGS.resolve("shop")
    assert shop is not None and shop.sender_key == "SENDERKEY1"
    assert BINDINGS.resolve("@shop") is shop
    assert BINDINGS.resolve("shop ") is shop
    assert BINDINGS.resolve("SENDERKEY1") is shop
    clinic = BINDINGS.resolve("clinic")
    assert BINDINGS.resolve("@clinic") is clinic
    assert BINDINGS.resolve("unknown") is None
    assert BINDINGS.resolve("") is None
    assert len(BINDINGS) == 2


def test_bindings_refuse_ambiguity_and_bad_tables() -> None:
    with pytest.raises(ConfigError, match="defined twice"):
        ChannelBindings([ChannelBinding("a", "@a", "K1"), ChannelBinding("b", "a", "K2")])
    with pytest.raises(ConfigError, match="needs"):
        ChannelBindings([ChannelBinding("a", "", "K1")])
    with pytest.raises(ConfigError, match="plus_id and sender_key"):
        ChannelBindings.from_mapping({"a": {"plus_id": "@a"}})
    table = ChannelBindings.from_mapping(
        {"a": {"plus_id": "@a", "sender_key": "K1", "provider": "aligo"}}
    )
    assert table.resolve("@a") == ChannelBinding("a", "@a", "K1", "aligo")


async def test_send_names_its_channel_by_alias(
    aligo: tuple[FakeAligoKakao, AligoProvider],
) -> None:
    fake, provider = aligo
    mock = MockProvider()
    kmsg = KMsg([mock, provider], channels=BINDINGS)  # the mock would be the default
    outcome = await kmsg.send(
        {
            "type": "ALIMTALK",
            "to": "01012345678",
            "templateId": "TP_1",
            "variables": {"code": "1"},
            "kakao": {"plusId": "shop"},
        }
    )
    assert isinstance(outcome, Ok), outcome
    assert outcome.value.provider_id == "aligo"  # routed by the binding
    form = fake.hits("/kakao/akv10/alimtalk/send/")[0].form
    assert form["senderkey"] == "SENDERKEY1"

    by_plus = await kmsg.send(
        {
            "type": "ALIMTALK",
            "to": "01012345678",
            "templateId": "TP_1",
            "variables": {"code": "1"},
            "kakao": {"profileId": "@clinic"},
            "providerId": "mock",
        }
    )
    assert isinstance(by_plus, Ok)
    sent = mock.calls[-1]
    assert sent.kakao is not None  # type: ignore[union-attr]
    assert (sent.kakao.profile_id, sent.kakao.plus_id) == ("SENDERKEY2", "@clinic")  # type: ignore[union-attr]


def _alimtalk(kakao: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "ALIMTALK",
        "to": "01012345678",
        "templateId": "TP_1",
        "variables": {"code": "1"},
        "kakao": kakao,
        "providerId": "aligo",
    }


async def test_callers_channel_wins_over_the_default_channel(
    aligo: tuple[FakeAligoKakao, AligoProvider],
) -> None:
    fake, provider = aligo
    defaults = KMsgDefaults(kakao_profile_id="shop")
    kmsg = KMsg([provider], channels=BINDINGS, defaults=defaults)

    named = await kmsg.send(_alimtalk({"plusId": "@clinic"}))
    assert isinstance(named, Ok), named
    assert fake.hits("/kakao/akv10/alimtalk/send/")[-1].form["senderkey"] == "SENDERKEY2"

    # Nothing named: the default channel.
    assert isinstance(await kmsg.send(_alimtalk({})), Ok)
    assert fake.hits("/kakao/akv10/alimtalk/send/")[-1].form["senderkey"] == "SENDERKEY1"

    # A plusId nobody bound never borrows the default channel's key; Aligo, configured with
    # no sender key of its own, refuses before calling the vendor.
    before = len(fake.requests)
    unbound = await kmsg.send(_alimtalk({"plusId": "@elsewhere"}))
    assert isinstance(unbound, Fail)
    assert unbound.error.code is KMsgErrorCode.INVALID_REQUEST
    assert "profileId is required" in unbound.error.message
    assert len(fake.requests) == before

    conflict = await kmsg.send(_alimtalk({"profileId": "shop", "plusId": "@clinic"}))
    assert isinstance(conflict, Fail)
    assert "different channels" in conflict.error.message
    assert len(fake.requests) == before


async def test_default_sender_key_fills_in_for_the_default_plus_id(
    aligo: tuple[FakeAligoKakao, AligoProvider],
) -> None:
    fake, provider = aligo
    defaults = KMsgDefaults(kakao_profile_id="SENDERKEY1", kakao_plus_id="brand")
    kmsg = KMsg([provider], defaults=defaults)
    assert isinstance(await kmsg.send(_alimtalk({"plusId": "@brand"})), Ok)
    assert fake.hits("/kakao/akv10/alimtalk/send/")[-1].form["senderkey"] == "SENDERKEY1"
