"""The onboarding doctor against the local fake IWINV and Aligo."""

from __future__ import annotations

from kmsg_webhook.messaging import (
    AligoProvider,
    Fail,
    IWINVConfig,
    IWINVProvider,
    RetryPolicy,
    SenderKeyRequiredError,
)
from kmsg_webhook.messaging.doctor import CheckStatus, run_doctor
from kmsg_webhook.messaging.onboarding import (
    CheckScope,
    ProbeOperation,
    get_provider_onboarding_spec,
)
from support.fakes.aligo import FakeAligoKakao, aligo_provider
from support.fakes.base import Reply
from support.fakes.iwinv import FakeIwinv

SPEC = get_provider_onboarding_spec("iwinv")


async def test_configured_iwinv_passes_all_but_the_manual_check() -> None:
    async with FakeIwinv() as fake:
        provider = IWINVProvider(IWINVConfig(api_key=fake.api_key, base_url=fake.alimtalk_url))
        try:
            report = await run_doctor(SPEC, provider)
        finally:
            await provider.aclose()
    statuses = {r.check.id: r.status for r in report.results}
    assert statuses == {
        "channel_registered_in_console": CheckStatus.WARN,
        "iwinv_config_required": CheckStatus.PASS,
        "template_capability_available": CheckStatus.PASS,
        "template_list_probe": CheckStatus.PASS,
    }
    assert not report.blocked
    assert fake.hits("/alimtalk/api/template/")[0].json["pageSize"] == "1"


async def test_a_refused_probe_says_what_to_do() -> None:
    async with FakeIwinv() as fake:
        provider = IWINVProvider(
            IWINVConfig(api_key="wrong", base_url=fake.alimtalk_url, retry=RetryPolicy.never())
        )
        try:
            report = await run_doctor(SPEC, provider, scope=CheckScope.PREFLIGHT)
        finally:
            await provider.aclose()
    probe = next(r for r in report.results if r.check.id == "template_list_probe")
    assert probe.status is CheckStatus.WARN
    assert probe.detail.startswith("AUTHENTICATION_FAILED")
    assert probe.action is not None and "whitelisted" in probe.action


async def test_an_unbuilt_provider_is_blocked_on_its_config() -> None:
    report = await run_doctor(SPEC, None, missing=("IWINV_API_KEY",))
    config = next(r for r in report.results if r.check.id == "iwinv_config_required")
    assert (config.status, config.action) == (CheckStatus.BLOCKER, "set IWINV_API_KEY")
    probe = next(r for r in report.results if r.check.id == "template_list_probe")
    assert probe.action == "fix the config checks first"
    assert report.blocked
    assert await run_doctor(SPEC, None, scope=CheckScope.SEND) == type(report)("iwinv", ())


ALIGO_SPEC = get_provider_onboarding_spec("aligo")


def _aligo(fake: FakeAligoKakao, sender_key: str | None) -> AligoProvider:
    return aligo_provider(fake, sender_key=sender_key, retry=RetryPolicy.never())


async def test_a_missing_sender_key_is_recognised_by_its_type() -> None:
    async with FakeAligoKakao() as fake:
        provider = _aligo(fake, None)
        try:
            report = await run_doctor(ALIGO_SPEC, provider)
            listed = await provider.list_templates()
        finally:
            await provider.aclose()
    assert isinstance(listed, Fail)
    assert isinstance(listed.error, SenderKeyRequiredError)
    assert listed.error.setting == "ALIGO_SENDER_KEY"
    assert not fake.hits("/kakao/akv10/template/list/")  # refused before any call
    probe = next(
        r for r in report.results if r.check.probe_operation is ProbeOperation.LIST_TEMPLATES
    )
    assert probe.action == "set ALIGO_SENDER_KEY (the Kakao channel's sender key)"


async def test_a_vendor_message_naming_the_sender_key_is_not_a_missing_key() -> None:
    async with FakeAligoKakao() as fake:
        provider = _aligo(fake, "SENDERKEY1")
        refusal = {"code": -101, "message": "apikey not allowed for this sender key"}
        fake.script("/kakao/akv10/template/list/", Reply(200, refusal))
        try:
            report = await run_doctor(ALIGO_SPEC, provider)
        finally:
            await provider.aclose()
    probe = next(
        r for r in report.results if r.check.probe_operation is ProbeOperation.LIST_TEMPLATES
    )
    assert probe.detail.startswith("AUTHENTICATION_FAILED")
    assert probe.action is not None and "whitelisted" in probe.action
