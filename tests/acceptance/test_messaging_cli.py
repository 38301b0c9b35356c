"""The ``kmsg`` command line, run as ``python -m kmsg_webhook.messaging.cli`` against the local
fake vendors (the fakes run in this test's event loop, so the process is awaited, not blocked on).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import pty
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest

from kmsg_webhook.messaging.cli import main
from support.cli import Run, kmsg_process
from support.fakes.aligo import FakeAligoKakao
from support.fakes.base import Reply
from support.fakes.iwinv import FakeIwinv

SECRET_KEY = "aligo-key"  # FakeAligo's API key: must never appear in output


async def kmsg(*args: str, env: Mapping[str, str]) -> Run:
    """``main`` in a worker thread (the fakes keep serving on this loop); output captured."""

    def run() -> Run:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args), env)
            except SystemExit as exc:  # argparse usage errors
                code = int(exc.code or 0)
        return Run(code, out.getvalue(), err.getvalue())

    return await asyncio.to_thread(run)


@pytest.fixture
async def aligo() -> AsyncIterator[FakeAligoKakao]:
    async with FakeAligoKakao() as server:
        yield server


def aligo_env(fake: FakeAligoKakao, **extra: str) -> dict[str, str]:
    return {
        "ALIGO_API_KEY": fake.api_key,
        "ALIGO_USER_ID": fake.user_id,
        "ALIGO_SENDER_KEY": "SENDERKEY1",
        "ALIGO_SENDER": "0212345678",
        "ALIGO_TEST_MODE": "N",
        "ALIGO_ALIMTALK_BASE_URL": fake.kakao_url,
        "ALIGO_SMS_BASE_URL": fake.sms_url,
        **extra,
    }


async def test_template_commands(aligo: FakeAligoKakao) -> None:
    env = aligo_env(aligo)
    created = await kmsg_process(
        "templates",
        "create",
        "--name",
        "OTP",
        "--content",
        "#{name}님 인증번호 #{code}",
        "--button",
        "열기,WL,https://m.example.com",
        "--json",
        env=env,
    )
    assert created.code == 0, created.err
    body = created.json()
    assert body["ok"] is True
    assert body["result"]["code"] == "TP_0001"
    assert body["result"]["variables"] == ["name", "code"]
    assert body["result"]["buttons"][0]["url_mobile"] == "https://m.example.com"

    inspected = await kmsg("templates", "inspect", "TP_0001", env=env)
    assert (inspected.code, inspected.out.strip()) == (0, "ok")
    aligo.review("TP_0001", approve=True)

    listed = await kmsg("templates", "list", "--status", "approved", env=env)
    assert listed.code == 0, listed.err
    header, _rule, row = listed.out.splitlines()[:3]
    assert header.split() == ["CODE", "NAME", "STATUS", "VARIABLES", "UPDATED"]
    assert row.split()[:3] == ["TP_0001", "OTP", "APPROVED"]

    shown = await kmsg("templates", "get", "TP_0001", env=env)
    assert "#{name}님 인증번호 #{code}" in shown.out
    assert "[WL] 열기 https://m.example.com" in shown.out

    rejected_update = await kmsg("templates", "update", "TP_0001", "--name", "x", "--json", env=env)
    assert rejected_update.code == 1  # approved templates cannot be edited at Aligo
    assert rejected_update.json()["error"]["code"] == "INVALID_REQUEST"
    assert rejected_update.json()["error"]["providerErrorCode"] == "-99"

    deleted = await kmsg("templates", "delete", "TP_0001", env=env)
    assert deleted.code == 0
    missing = await kmsg("templates", "get", "TP_0001", env=env)
    assert missing.code == 1
    assert "TEMPLATE_NOT_FOUND" in missing.err
    for run in (created, inspected, listed, shown, rejected_update, deleted, missing):
        assert SECRET_KEY not in run.out + run.err


async def test_channel_commands(aligo: FakeAligoKakao) -> None:
    env = aligo_env(aligo)
    listed = await kmsg("channels", "list", env=env)
    assert listed.code == 0, listed.err
    assert "@brand" in listed.out and "SENDERKEY1" in listed.out
    categories = await kmsg("channels", "categories", "--json", env=env)
    tree = categories.json()["result"]
    assert [len(tree[level]) for level in ("first", "second", "third")] == [1, 1, 1]
    assert tree["third"][0] == {"code": "001001001", "name": "종합병원", "parent_code": "001001"}
    auth = await kmsg("channels", "auth", "--plus-id", "@new", "--phone", "01099998888", env=env)
    assert auth.code == 0, auth.err
    added = await kmsg(
        "channels",
        "add",
        "--plus-id",
        "@new",
        "--phone",
        "01099998888",
        "--auth-num",
        "246810",
        "--category",
        "001001001",
        "--json",
        env=env,
    )
    assert added.code == 0, added.err
    assert added.json()["result"]["plus_id"] == "@new"
    refused = await kmsg("channels", "auth", "--plus-id", "@x", "--phone", "0100", env=env)
    assert refused.code == 1
    assert "카카오채널 관리자" in refused.err


async def test_providers_list_hides_secrets_and_doctor_reports_blockers(
    aligo: FakeAligoKakao,
) -> None:
    env = aligo_env(aligo, SOLAPI_API_KEY="solapi-key-value")  # SOLAPI half-configured
    listed = await kmsg("providers", "list", env=env)
    assert listed.code == 0, listed.err
    lines = {line.split()[0]: line for line in listed.out.splitlines()[2:]}
    assert "templates, inspection, channels" in lines["aligo"]
    assert "missing IWINV_API_KEY" in lines["iwinv"]
    assert "missing SOLAPI_API_SECRET" in lines["solapi"]
    as_json = await kmsg("providers", "list", "--json", env=env)
    settings = {row["id"]: row["settings"] for row in as_json.json()}
    assert settings["aligo"]["ALIGO_API_KEY"] == "****"
    assert settings["aligo"]["ALIGO_SENDER_KEY"] == "****"
    assert settings["aligo"]["ALIGO_USER_ID"] == aligo.user_id
    assert settings["solapi"] == {"SOLAPI_API_KEY": "****"}
    for run in (listed, as_json):
        assert SECRET_KEY not in run.out and "solapi-key-value" not in run.out

    doctor = await kmsg_process("providers", "doctor", "--json", env=env)
    assert doctor.code == 1  # IWINV and SOLAPI are not configured
    reports = {r["provider_id"]: r["results"] for r in doctor.json()}
    aligo_checks = {r["check"]["id"]: r["status"] for r in reports["aligo"]}
    assert aligo_checks == {
        "aligo_config_required": "pass",
        "channel_api_capability_available": "pass",
        "channel_list_probe": "pass",
        "template_list_probe": "pass",
    }
    iwinv = {r["check"]["id"]: r for r in reports["iwinv"]}
    assert iwinv["iwinv_config_required"]["status"] == "blocker"
    assert iwinv["iwinv_config_required"]["action"] == "set IWINV_API_KEY"
    assert iwinv["channel_registered_in_console"]["status"] == "warn"
    (solapi,) = reports["solapi"]
    assert (solapi["status"], solapi["action"]) == ("blocker", "set SOLAPI_API_SECRET")

    aligo.api_key = "rotated"  # the probes now fail with the vendor's auth error
    table = await kmsg("providers", "doctor", "--provider", "aligo", env=env)
    assert table.code == 0  # probes are warnings, not blockers
    assert "WARN" in table.out and "AUTHENTICATION_FAILED" in table.out
    assert "whitelisted" in table.out
    assert table.out.rstrip().endswith("no blockers")


async def test_send_commands_and_config_file(tmp_path: Path, aligo: FakeAligoKakao) -> None:
    async with FakeIwinv() as iwinv:
        env = {
            "IWINV_API_KEY": iwinv.api_key,
            "IWINV_SMS_API_KEY": iwinv.sms_api_key,
            "IWINV_SMS_AUTH_KEY": iwinv.sms_auth_key,
            "IWINV_BASE_URL": iwinv.alimtalk_url,
            "IWINV_SMS_BASE_URL": iwinv.sms_url,
            "KMSG_PROVIDERS": "iwinv",
        }
        sms = await kmsg(
            "sms", "--to", "010-1234-5678", "--text", "hi", "--from", "0212345678", env=env
        )
        assert sms.code == 0, sms.err
        assert "iwinv" in sms.out and "SMS" in sms.out
        assert iwinv.hits("/sms/api/v2/send/")[0].json["to"] == ["01012345678"]
        alimtalk = await kmsg(
            "alimtalk",
            "--to",
            "01012345678",
            "--template",
            "AUTH",
            "--var",
            "code=1",
            "--json",
            env=env,
        )
        assert alimtalk.code == 0, alimtalk.err
        assert alimtalk.json()["result"]["provider_message_id"] == "1002"
        bad_var = await kmsg("alimtalk", "--to", "010", "--template", "T", "--var", "x", env=env)
        assert bad_var.code == 2 and "name=value" in bad_var.err

    config = tmp_path / "kmsg.toml"
    config.write_text(
        f"""
[providers.aligo]
api_key = "{aligo.api_key}"
user_id = "{aligo.user_id}"
sender = "0212345678"
test_mode = false
alimtalk_base_url = "{aligo.kakao_url}"
sms_base_url = "{aligo.sms_url}"

[channels.shop]
plus_id = "@brand"
sender_key = "SENDERKEY1"
""",
        encoding="utf-8",
    )
    sent = await kmsg(
        "send",
        "--type",
        "ALIMTALK",
        "--to",
        "01012345678",
        "--template",
        "TP_1",
        "--var",
        "code=9",
        "--channel",
        "shop",
        "--config",
        str(config),
        env={},
    )
    assert sent.code == 0, sent.err
    form = aligo.hits("/kakao/akv10/alimtalk/send/")[0].form
    assert (form["senderkey"], form["tpl_code"]) == ("SENDERKEY1", "TP_1")
    channels = await kmsg("channels", "list", "--config", str(config), env={})
    assert channels.code == 0 and "@brand" in channels.out


async def test_usage_errors(tmp_path: Path) -> None:
    unknown = await kmsg_process("providers", "list", env={"KMSG_PROVIDERS": "nope"})
    assert unknown.code == 2 and "unknown provider 'nope'" in unknown.err
    nothing = await kmsg("templates", "list", "--json", env={})
    assert nothing.code == 2
    assert "no configured provider can manage templates" in nothing.json()["error"]["message"]
    broken = tmp_path / "bad.toml"
    broken.write_text("[providers.aligo\n", encoding="utf-8")
    unreadable = await kmsg("providers", "list", "--config", str(broken), env={})
    assert unreadable.code == 2 and "cannot read config" in unreadable.err
    mock = await kmsg("templates", "inspect", "MOCK_TPL_SEED", env={"KMSG_PROVIDERS": "mock"})
    assert mock.code == 0
    solapi_only = {"SOLAPI_API_KEY": "k", "SOLAPI_API_SECRET": "s", "KMSG_PROVIDERS": "solapi"}
    refused = await kmsg("templates", "list", "--provider", "solapi", env=solapi_only)
    assert refused.code == 1 and "solapi does not support list_templates" in refused.err


async def test_network_waits_show_progress_on_a_terminal(aligo: FakeAligoKakao) -> None:
    aligo.script(
        "/kakao/akv10/template/list/",
        Reply(200, {"code": 0, "message": "ok", "list": []}, delay=0.5),
    )
    master, slave = pty.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kmsg_webhook.messaging.cli",
            "templates",
            "list",
            env={"PATH": os.environ.get("PATH", ""), **aligo_env(aligo)},
            stdout=asyncio.subprocess.PIPE,
            stderr=slave,
        )
        os.close(slave)
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        shown = os.read(master, 65536).decode(errors="replace")
    finally:
        os.close(master)
    assert process.returncode == 0
    assert "list on aligo..." in shown  # the spinner, on the terminal only
    assert "list on aligo" not in out.decode()  # never mixed into the output


async def test_health_and_balance() -> None:
    async with FakeIwinv() as iwinv:
        env = {
            "IWINV_API_KEY": iwinv.api_key,
            "IWINV_BASE_URL": iwinv.alimtalk_url,
            "KMSG_PROVIDERS": "iwinv,mock",
        }
        balance = await kmsg("providers", "balance", env=env)
        assert balance.code == 0, balance.err
        rows = {line.split()[0]: line for line in balance.out.splitlines()[2:]}
        assert "12,345 KRW" in rows["iwinv"]
        assert "no balance API" in rows["mock"]
        iwinv.charge = "not a number"
        failed = await kmsg("providers", "balance", "--provider", "iwinv", "--json", env=env)
        assert failed.code == 1
        assert "numeric" in failed.json()[0]["error"]
        health = await kmsg("providers", "health", "--json", env=env)
        assert health.code == 0
        assert set(health.json()["providers"]) == {"iwinv", "mock"}
        assert health.json()["healthy"] is True
