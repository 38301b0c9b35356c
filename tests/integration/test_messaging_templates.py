"""AlimTalk templates: the vendor-free toolkit, then every provider against its local fake."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

import pytest

from kmsg_webhook.messaging import (
    AligoConfig,
    AligoProvider,
    Fail,
    IWINVConfig,
    IWINVProvider,
    KMsgErrorCode,
    MockProvider,
    Ok,
    ProviderManager,
    RetryPolicy,
    SolapiConfig,
    SolapiProvider,
    Template,
    TemplateButton,
    TemplateInput,
    TemplateInspectionProvider,
    TemplateLimits,
    TemplateProvider,
    TemplateStatus,
    TemplateUpdate,
    UnsupportedOperationError,
    placeholders,
    render,
    template_problems,
    validate_template,
)
from kmsg_webhook.messaging.provider import KST
from support.fakes.aligo import FakeAligoKakao, aligo_provider
from support.fakes.base import Reply
from support.fakes.iwinv import FakeIwinv
from support.fakes.solapi import FakeSolapi
from support.fakes.util import RecordingSleep

OTP = TemplateInput(
    name="OTP",
    content="#{name}님 인증번호는 #{code}입니다. #{code}",
    buttons=(TemplateButton("사이트", "WL", url_mobile="https://m.example.com"),),
)


# --------------------------------------------------------------------------- toolkit


def test_variables_are_extracted_in_order_without_duplicates() -> None:
    assert placeholders(OTP.content) == ("name", "code")
    assert placeholders("no variables") == ()


def test_render_fills_every_variable_or_names_the_missing_ones() -> None:
    assert render("#{a}+#{b}", {"a": 1, "b": True}) == Ok("1+true")
    missing = render("#{a}+#{b}+#{c}", {"a": 1})
    assert isinstance(missing, Fail)
    assert missing.error.code is KMsgErrorCode.INVALID_REQUEST
    assert "b, c" in missing.error.message


def test_a_valid_template_passes_validation() -> None:
    assert validate_template(OTP) == Ok(OTP)
    assert template_problems(OTP) == []


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        (TemplateInput("", "x"), "name is required"),
        (TemplateInput("x" * 16, "x"), "name is longer than 15"),
        (TemplateInput("n", " "), "content is required"),
        (TemplateInput("n", "x" * 1001), "content is longer than 1000"),
        (TemplateInput("n", "hi #{name"), "unclosed or nested"),
        (TemplateInput("n", "hi #{first name}"), "without spaces"),
        (TemplateInput("n", "x", buttons=(TemplateButton("b", "XX"),)), "unknown type 'XX'"),
        (TemplateInput("n", "x", buttons=(TemplateButton("b", "WL"),)), "needs url_mobile"),
        (TemplateInput("n", "x", buttons=(TemplateButton("b", "AL"),)), "needs scheme_ios"),
        (
            TemplateInput("n", "x", buttons=(TemplateButton("b", "WL", url_mobile="ftp://x"),)),
            "not an http(s) URL",
        ),
        (TemplateInput("n", "x", buttons=(TemplateButton("b", "BK"),) * 6), "at most 5"),
        (TemplateInput("n", "x", buttons=(TemplateButton("b" * 15, "BK"),)), "button 1: name"),
    ],
)
def test_validation_names_each_problem(template: TemplateInput, problem: str) -> None:
    checked = validate_template(template)
    assert isinstance(checked, Fail)
    assert checked.error.code is KMsgErrorCode.INVALID_REQUEST
    assert any(problem in p for p in checked.error.details["problems"]), checked.error.message


def test_limits_are_configurable_and_all_problems_are_reported() -> None:
    bad = TemplateInput("a" * 20, "b" * 30)
    assert len(template_problems(bad)) == 0 or template_problems(bad) == [
        "name is longer than 15 characters"
    ]
    assert template_problems(bad, TemplateLimits(max_name=10, max_content=10)) == [
        "name is longer than 10 characters",
        "content is longer than 10 characters",
    ]


def test_update_keeps_what_it_does_not_change() -> None:
    current = Template("c", "c", "old", "hello", TemplateStatus.APPROVED, "p", category="001")
    merged = TemplateUpdate(content="#{x}").apply(current)
    assert merged == TemplateInput("old", "#{x}", "001", ())


# --------------------------------------------------------------------------- IWINV


@pytest.fixture
async def iwinv() -> Any:
    async with FakeIwinv() as server:
        provider = IWINVProvider(
            IWINVConfig(api_key=server.api_key, base_url=server.alimtalk_url),
            sleep=RecordingSleep(),
        )
        yield server, provider
        await provider.aclose()


async def test_iwinv_template_lifecycle(iwinv: tuple[FakeIwinv, IWINVProvider]) -> None:
    fake, provider = iwinv
    created = await provider.create_template(OTP)
    assert isinstance(created, Ok), created
    template = created.value
    assert template.code == "IW0001"
    assert template.status is TemplateStatus.INSPECTION  # IWINV reviews by itself
    assert template.variables == ("name", "code")
    request = fake.hits("/alimtalk/api/template/add/")[0]
    assert base64.b64decode(request.headers["AUTH"]).decode() == fake.api_key
    assert request.content_type.startswith("application/json")
    assert request.json == {
        "templateName": "OTP",
        "templateContent": OTP.content,
        "buttons": [{"type": "WL", "name": "사이트", "linkMo": "https://m.example.com"}],
    }

    fetched = await provider.get_template("IW0001")
    assert isinstance(fetched, Ok)
    assert fetched.value.buttons == OTP.buttons
    assert fetched.value.created_at == datetime(2026, 3, 2, 10, 0, tzinfo=KST)
    listed_request = fake.hits("/alimtalk/api/template/")[-1].json
    assert listed_request == {"pageNum": "1", "pageSize": "15", "templateCode": "IW0001"}

    fake.templates["IW0001"]["status"] = "Y"
    approved = await provider.list_templates(status=TemplateStatus.APPROVED, page=1, limit=50)
    assert isinstance(approved, Ok)
    assert [t.code for t in approved.value] == ["IW0001"]
    assert fake.hits("/alimtalk/api/template/")[-1].json["templateStatus"] == "Y"
    rejected = await provider.list_templates(status=TemplateStatus.REJECTED)
    assert rejected == Ok(())

    updated = await provider.update_template("IW0001", TemplateUpdate(name="OTP2"))
    assert isinstance(updated, Ok)
    assert updated.value.name == "OTP2"
    assert updated.value.content == OTP.content  # merged with what IWINV had
    assert fake.templates["IW0001"]["templateName"] == "OTP2"
    assert fake.templates["IW0001"]["status"] == "I"
    assert fake.templates["IW0001"]["buttons"] == request.json["buttons"]  # sent again, kept

    cleared = await provider.update_template("IW0001", TemplateUpdate(buttons=()))
    assert isinstance(cleared, Ok)
    assert cleared.value.buttons == ()
    assert fake.hits("/alimtalk/api/template/modify/")[-1].json["buttons"] == []
    assert fake.templates["IW0001"]["buttons"] == []

    assert await provider.delete_template("IW0001") == Ok(None)
    missing = await provider.get_template("IW0001")
    assert isinstance(missing, Fail)
    assert missing.error.code is KMsgErrorCode.TEMPLATE_NOT_FOUND


async def test_iwinv_template_errors_map_to_our_kinds(
    iwinv: tuple[FakeIwinv, IWINVProvider],
) -> None:
    fake, provider = iwinv
    gone = await provider.delete_template("NOPE")
    assert isinstance(gone, Fail)
    assert gone.error.code is KMsgErrorCode.TEMPLATE_NOT_FOUND
    assert gone.error.provider_error_code == "404"

    modify_missing = await provider.update_template("NOPE", TemplateUpdate(name="x"))
    assert isinstance(modify_missing, Fail)
    assert modify_missing.error.code is KMsgErrorCode.TEMPLATE_NOT_FOUND

    # The vendor's own validation code (a name longer than IWINV allows slipped past ours).
    fake.script("/alimtalk/api/template/add/", Reply(200, {"code": 502, "message": "bad name"}))
    refused = await provider.create_template(TemplateInput("ok", "body"))
    assert isinstance(refused, Fail)
    assert refused.error.code is KMsgErrorCode.INVALID_REQUEST
    assert refused.error.provider_error_code == "502"

    fake.script("/alimtalk/api/template/add/", Reply(200, {"code": 200, "message": "?"}))
    no_code = await provider.create_template(TemplateInput("ok", "body"))
    assert isinstance(no_code, Fail)
    assert no_code.error.code is KMsgErrorCode.PROVIDER_ERROR

    bad_page = await provider.list_templates(limit=1001)
    assert isinstance(bad_page, Fail)
    assert bad_page.error.code is KMsgErrorCode.INVALID_REQUEST

    invalid = await provider.create_template(TemplateInput("x" * 16, "body"))
    assert isinstance(invalid, Fail)
    assert invalid.error.code is KMsgErrorCode.INVALID_REQUEST
    assert not fake.hits("/alimtalk/api/template/add/")[2:]  # never submitted


async def test_iwinv_wrong_key_is_an_authentication_failure() -> None:
    async with FakeIwinv() as fake:
        provider = IWINVProvider(
            IWINVConfig(api_key="wrong", base_url=fake.alimtalk_url, retry=RetryPolicy.never())
        )
        try:
            listed = await provider.list_templates()
        finally:
            await provider.aclose()
    assert isinstance(listed, Fail)
    assert listed.error.code is KMsgErrorCode.AUTHENTICATION_FAILED


async def test_iwinv_has_no_inspection_request() -> None:
    provider = IWINVProvider(IWINVConfig(api_key="k"))
    assert not hasattr(provider, "request_template_inspection")


# --------------------------------------------------------------------------- Aligo


@pytest.fixture
async def aligo() -> Any:
    async with FakeAligoKakao() as server:
        provider = aligo_provider(
            server, sender_key="SENDERKEY1", test_mode=False, retry=RetryPolicy.never()
        )
        yield server, provider
        await provider.aclose()


async def test_aligo_template_lifecycle(aligo: tuple[FakeAligoKakao, AligoProvider]) -> None:
    fake, provider = aligo
    created = await provider.create_template(OTP)
    assert isinstance(created, Ok), created
    assert created.value.code == "TP_0001"
    assert created.value.status is TemplateStatus.INSPECTION  # REG: registered
    assert created.value.buttons == OTP.buttons
    form = fake.hits("/kakao/akv10/template/add/")[0].form
    assert form["apikey"] == fake.api_key and form["userid"] == fake.user_id
    assert form["senderkey"] == "SENDERKEY1"
    assert (form["tpl_name"], form["tpl_content"]) == ("OTP", OTP.content)
    assert json.loads(form["tpl_button"]) == {
        "button": [
            {"ordering": "1", "name": "사이트", "linkType": "WL", "linkMo": "https://m.example.com"}
        ]
    }

    updated = await provider.update_template("TP_0001", TemplateUpdate(content="#{code} only"))
    assert isinstance(updated, Ok)
    assert updated.value.variables == ("code",)
    assert fake.template("TP_0001")["templtContent"] == "#{code} only"

    assert await provider.request_template_inspection("TP_0001") == Ok(None)
    under_review = await provider.get_template("TP_0001")
    assert isinstance(under_review, Ok)
    assert under_review.value.status is TemplateStatus.INSPECTION
    assert fake.template("TP_0001")["inspStatus"] == "REQ"

    fake.review("TP_0001", approve=True)
    approved = await provider.list_templates(status=TemplateStatus.APPROVED)
    assert isinstance(approved, Ok)
    assert [t.code for t in approved.value] == ["TP_0001"]
    assert approved.value[0].updated_at == datetime(2026, 3, 3, 9, 0, tzinfo=KST)

    assert await provider.delete_template("TP_0001") == Ok(None)
    assert fake.templates == {}


async def test_aligo_lists_are_paged_here(aligo: tuple[FakeAligoKakao, AligoProvider]) -> None:
    _, provider = aligo
    for n in range(5):
        assert isinstance(await provider.create_template(TemplateInput(f"t{n}", "x")), Ok)
    page2 = await provider.list_templates(page=2, limit=2)
    assert isinstance(page2, Ok)
    assert [t.name for t in page2.value] == ["t2", "t3"]


async def test_aligo_template_failures(aligo: tuple[FakeAligoKakao, AligoProvider]) -> None:
    fake, provider = aligo
    other_channel = await provider.list_templates(sender_key="UNKNOWN")
    assert isinstance(other_channel, Fail)
    assert other_channel.error.code is KMsgErrorCode.INVALID_REQUEST  # Aligo -99
    assert other_channel.error.provider_error_code == "-99"
    assert other_channel.error.details["response"] == {"code": -99, "message": "발신프로필 키 오류"}

    missing = await provider.get_template("TP_9999")
    assert isinstance(missing, Fail)
    assert missing.error.code is KMsgErrorCode.TEMPLATE_NOT_FOUND

    inspect_missing = await provider.request_template_inspection("TP_9999")
    assert isinstance(inspect_missing, Fail)
    assert inspect_missing.error.code is KMsgErrorCode.INVALID_REQUEST

    fake.api_key = "rotated"
    denied = await provider.list_templates()
    assert isinstance(denied, Fail)
    assert denied.error.code is KMsgErrorCode.AUTHENTICATION_FAILED

    fake.script("/kakao/akv10/template/list/", Reply(502, raw="bad gateway"))
    down = await provider.list_templates()
    assert isinstance(down, Fail)
    assert down.error.code is KMsgErrorCode.NETWORK_ERROR
    assert down.error.retryable

    fake.script("/kakao/akv10/template/list/", Reply(200, raw="<html>"))
    garbled = await provider.list_templates()
    assert isinstance(garbled, Fail)
    assert garbled.error.code is KMsgErrorCode.PROVIDER_ERROR


async def test_aligo_templates_need_a_sender_key() -> None:
    provider = AligoProvider(AligoConfig(api_key="k", user_id="u"))
    listed = await provider.list_templates()
    assert isinstance(listed, Fail)
    assert listed.error.code is KMsgErrorCode.INVALID_REQUEST
    assert "sender key" in listed.error.message


# --------------------------------------------------------------------------- mock and SOLAPI


async def test_mock_templates_in_memory() -> None:
    mock = MockProvider()
    seed = await mock.get_template("MOCK_TPL_SEED")
    assert isinstance(seed, Ok)
    assert (seed.value.content, seed.value.status) == ("Hello #{name}", TemplateStatus.APPROVED)
    created = await mock.create_template(OTP)
    assert isinstance(created, Ok)
    assert created.value.code == "MOCK_TPL_1"
    assert await mock.request_template_inspection("MOCK_TPL_1") == Ok(None)
    pending = await mock.list_templates(status=TemplateStatus.INSPECTION)
    assert isinstance(pending, Ok)
    assert [t.code for t in pending.value] == ["MOCK_TPL_1"]
    assert await mock.delete_template("MOCK_TPL_1") == Ok(None)
    again = await mock.delete_template("MOCK_TPL_1")
    assert isinstance(again, Fail)
    assert again.error.code is KMsgErrorCode.TEMPLATE_NOT_FOUND


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.create_template(OTP),
        lambda m: m.update_template("c", TemplateUpdate(name="n")),
        lambda m: m.delete_template("c"),
        lambda m: m.get_template("c"),
        lambda m: m.list_templates(),
        lambda m: m.request_template_inspection("c"),
        lambda m: m.watch_pending(),
    ],
)
async def test_solapi_has_no_template_capability(call: Any) -> None:
    async with FakeSolapi() as fake:
        provider = SolapiProvider(
            SolapiConfig(api_key=fake.api_key, api_secret=fake.api_secret, base_url=fake.url)
        )
        assert not isinstance(provider, TemplateProvider | TemplateInspectionProvider)
        manager = ProviderManager(provider)
        assert manager.watcher is None  # nothing to watch with
        try:
            refused = await call(manager)
        finally:
            await manager.aclose()
            await provider.aclose()
    assert isinstance(refused, Fail)
    assert isinstance(refused.error, UnsupportedOperationError)
    assert refused.error.code is KMsgErrorCode.INVALID_REQUEST
    assert not refused.error.retryable
    assert refused.error.provider_id == "solapi"
    assert fake.requests == []


# --------------------------------------------------------------------------- retries


def _aligo_with_retries(fake: FakeAligoKakao, sleep: RecordingSleep) -> AligoProvider:
    return aligo_provider(fake, sleep, sender_key="SENDERKEY1", retry=RetryPolicy(max_attempts=3))


ALIGO_CHANGES: list[tuple[str, Any]] = [
    ("template/add/", lambda p: p.create_template(OTP)),
    ("template/modify/", lambda p: p.update_template("TP_0001", TemplateUpdate(name="n2"))),
    ("template/del/", lambda p: p.delete_template("TP_0001")),
    ("template/request/", lambda p: p.request_template_inspection("TP_0001")),
    ("profile/auth/", lambda p: p.request_kakao_channel_auth("@brand", "01099998888")),
    ("profile/add/", lambda p: p.add_kakao_channel("@new", "246810", "01099998888", "001001001")),
]


@pytest.mark.parametrize(("path", "call"), ALIGO_CHANGES, ids=[p for p, _ in ALIGO_CHANGES])
async def test_aligo_state_changing_calls_are_sent_once(path: str, call: Any) -> None:
    sleep = RecordingSleep()
    async with FakeAligoKakao() as fake:
        provider = _aligo_with_retries(fake, sleep)
        try:
            assert isinstance(await provider.create_template(OTP), Ok)
            fake.script("/kakao/akv10/" + path, Reply(502, raw="bad gateway"))
            outcome = await call(provider)
        finally:
            await provider.aclose()
    assert isinstance(outcome, Fail)
    assert outcome.error.code is KMsgErrorCode.NETWORK_ERROR
    assert outcome.error.retryable  # the caller decides: the vendor may have acted
    assert len(fake.hits("/kakao/akv10/" + path)) == (2 if path == "template/add/" else 1)
    assert sleep.delays == []


async def test_aligo_reads_are_retried() -> None:
    sleep = RecordingSleep()
    async with FakeAligoKakao() as fake:
        provider = _aligo_with_retries(fake, sleep)
        try:
            for path in ("template/list/", "profile/list/", "category/"):
                fake.script("/kakao/akv10/" + path, Reply(502, raw="bad gateway"))
            assert isinstance(await provider.list_templates(), Ok)
            assert isinstance(await provider.list_kakao_channels(), Ok)
            assert isinstance(await provider.list_kakao_channel_categories(), Ok)
        finally:
            await provider.aclose()
    for path in ("template/list/", "profile/list/", "category/"):
        assert len(fake.hits("/kakao/akv10/" + path)) == 2
    assert len(sleep.delays) == 3


IWINV_CHANGES: list[tuple[str, Any]] = [
    ("add/", lambda p: p.create_template(OTP)),
    ("modify/", lambda p: p.update_template("IW0001", TemplateUpdate(name="n2"))),
    ("delete/", lambda p: p.delete_template("IW0001")),
]


@pytest.mark.parametrize(("path", "call"), IWINV_CHANGES, ids=[p for p, _ in IWINV_CHANGES])
async def test_iwinv_state_changing_calls_are_sent_once(path: str, call: Any) -> None:
    sleep = RecordingSleep()
    async with FakeIwinv() as fake:
        provider = IWINVProvider(
            IWINVConfig(
                api_key=fake.api_key,
                base_url=fake.alimtalk_url,
                retry=RetryPolicy(max_attempts=3),
            ),
            sleep=sleep,
        )
        try:
            assert isinstance(await provider.create_template(OTP), Ok)
            fake.script("/alimtalk/api/template/" + path, Reply(502, raw="Bad Gateway"))
            outcome = await call(provider)
            fake.script("/alimtalk/api/template/", Reply(503, raw="busy"))
            listed = await provider.list_templates()  # a read is retried
        finally:
            await provider.aclose()
    assert isinstance(outcome, Fail)
    assert outcome.error.retryable
    assert outcome.error.http_status == 502
    assert len(fake.hits("/alimtalk/api/template/" + path)) == (2 if path == "add/" else 1)
    assert isinstance(listed, Ok)
    assert len(sleep.delays) == 1
