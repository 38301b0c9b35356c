"""Fake Aligo: SMS API under ``/sms``, Kakao API under ``/kakao``; multipart forms only."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from typing import Any, ClassVar

from kmsg_webhook.messaging import AligoConfig, AligoProvider
from kmsg_webhook.messaging.provider import SleepFn

from .base import FakeServer, Recorded, Reply


class FakeAligo(FakeServer):
    def __init__(self, api_key: str = "aligo-key", user_id: str = "aligo-user") -> None:
        super().__init__()
        self.api_key = api_key
        self.user_id = user_id
        self._ids = itertools.count(7001)
        self.route("POST", "/sms/send/", self._sms_send)
        self.route("POST", "/kakao/akv10/alimtalk/send/", self._alimtalk_send)
        self.route("POST", "/kakao/akv10/friendtalk/send/", self._friendtalk_send)

    @property
    def sms_url(self) -> str:
        return self.url + "/sms"

    @property
    def kakao_url(self) -> str:
        return self.url + "/kakao"

    @staticmethod
    def _not_multipart(req: Recorded) -> Reply | None:
        if not req.content_type.startswith("multipart/form-data"):
            return Reply(200, {"result_code": "-103", "message": "form 데이터가 아닙니다"})
        return None

    def _sms_send(self, req: Recorded) -> Reply:
        bad = self._not_multipart(req)
        if bad is not None:
            return bad
        form = req.form
        if form.get("key") != self.api_key or form.get("user_id") != self.user_id:
            return Reply(200, {"result_code": "-101", "message": "인증오류입니다."})
        for name in ("sender", "receiver", "msg", "msg_type"):
            if not form.get(name):
                return Reply(200, {"result_code": "-105", "message": f"{name} 누락"})
        if form["msg_type"] == "MMS" and not form.get("image"):
            return Reply(200, {"result_code": "-105", "message": "image 누락"})
        return Reply(
            200,
            {
                "result_code": "1",
                "message": "success",
                "msg_id": str(next(self._ids)),
                "success_cnt": 1,
                "error_cnt": 0,
                "msg_type": form["msg_type"],
            },
        )

    def _kakao_auth(self, req: Recorded) -> Reply | None:
        bad = self._not_multipart(req)
        if bad is not None:
            return bad
        if req.form.get("apikey") != self.api_key or req.form.get("userid") != self.user_id:
            return Reply(200, {"result_code": "-101", "message": "인증오류입니다."})
        for name in ("senderkey", "sender", "receiver_1", "message_1"):
            if not req.form.get(name):
                return Reply(200, {"result_code": "-105", "message": f"{name} 누락"})
        return None

    def _alimtalk_send(self, req: Recorded) -> Reply:
        bad = self._kakao_auth(req)
        if bad is not None:
            return bad
        if not req.form.get("tpl_code"):
            return Reply(200, {"result_code": "-501", "message": "템플릿 코드 없음"})
        return Reply(200, {"result_code": "0", "message": "성공", "msg_id": str(next(self._ids))})

    def _friendtalk_send(self, req: Recorded) -> Reply:
        bad = self._kakao_auth(req)
        if bad is not None:
            return bad
        return Reply(200, {"result_code": "0", "message": "성공", "msg_id": str(next(self._ids))})


class FakeAligoKakao(FakeAligo):
    """FakeAligo plus the Kakao management API (``/akv10/profile|category|template``): success
    is ``code: 0``; 509 a refused auth request, -99 any other refusal, -101 bad credentials."""

    CATEGORIES: ClassVar[dict[str, list[dict[str, str]]]] = {
        "firstBusinessType": [{"code": "001", "name": "건강"}],
        "secondBusinessType": [{"code": "001001", "name": "병원", "parentCode": "001"}],
        "thirdBusinessType": [{"code": "001001001", "name": "종합병원", "parentCode": "001001"}],
    }

    def __init__(self) -> None:
        super().__init__()
        self.admin_phones = {"01099998888"}
        self.auth_numbers: dict[str, str] = {}
        self.channels: list[dict[str, str]] = [
            {
                "senderKey": "SENDERKEY1",
                "uuid": "@brand",
                "name": "브랜드",
                "status": "A",
                "cdate": "2026-01-02 03:04:05",
                "udate": "2026-01-02 03:04:05",
            }
        ]
        #: (senderKey, templtCode) -> template: Aligo keeps templates per channel, so two
        #: channels may each have a TP_0001.
        self.templates: dict[tuple[str, str], dict[str, Any]] = {}
        self._tpl: dict[str, itertools.count[int]] = {}
        for path, handler in (
            ("profile/list/", self._profile_list),
            ("profile/auth/", self._profile_auth),
            ("profile/add/", self._profile_add),
            ("category/", self._category),
            ("template/add/", self._template_add),
            ("template/list/", self._template_list),
            ("template/modify/", self._template_modify),
            ("template/del/", self._template_del),
            ("template/request/", self._template_request),
        ):
            self.route("POST", "/kakao/akv10/" + path, self._guarded(handler))

    @staticmethod
    def _fail(code: int, message: str) -> Reply:
        return Reply(200, {"code": code, "message": message})

    def _guarded(self, handler: Callable[[Recorded], Reply]) -> Callable[[Recorded], Reply]:
        def guarded(req: Recorded) -> Reply:
            if not req.content_type.startswith("multipart/form-data"):
                return self._fail(-99, "form 데이터가 아닙니다")
            if req.form.get("apikey") != self.api_key or req.form.get("userid") != self.user_id:
                return self._fail(-101, "인증오류입니다.")
            return handler(req)

        return guarded

    def _sender(self, req: Recorded) -> str | None:
        key = req.form.get("senderkey")
        return key if any(c["senderKey"] == key for c in self.channels) else None

    # channels ---------------------------------------------------------------------------

    def _profile_list(self, req: Recorded) -> Reply:
        plus, key = req.form.get("plusid"), req.form.get("senderkey")
        listed = [
            c for c in self.channels if plus in (None, c["uuid"]) and key in (None, c["senderKey"])
        ]
        return Reply(200, {"code": 0, "message": "정상적으로 호출하였습니다.", "list": listed})

    def _category(self, req: Recorded) -> Reply:
        return Reply(
            200, {"code": 0, "message": "정상적으로 호출하였습니다.", "data": self.CATEGORIES}
        )

    def _profile_auth(self, req: Recorded) -> Reply:
        plus, phone = req.form.get("plusid", ""), req.form.get("phonenumber", "")
        if not plus.startswith("@") or phone not in self.admin_phones:
            return self._fail(
                509, "요청한 번호가 카카오채널 관리자 알림 설정 되어있는지 확인해주세요."
            )
        self.auth_numbers[plus] = "246810"
        return Reply(200, {"code": 0, "message": "정상적으로 호출하였습니다."})

    def _profile_add(self, req: Recorded) -> Reply:
        form = req.form
        plus = form.get("plusid", "")
        if self.auth_numbers.get(plus) != form.get("authnum"):
            return self._fail(-99, "인증번호가 일치하지 않습니다.")
        thirds = {c["code"] for c in self.CATEGORIES["thirdBusinessType"]}
        if (
            form.get("categorycode") not in thirds
            or form.get("phonenumber") not in self.admin_phones
        ):
            return self._fail(-99, "카테고리 또는 전화번호 오류")
        channel = {
            "senderKey": f"SK{len(self.channels) + 1:038d}",
            "uuid": plus,
            "name": plus.lstrip("@"),
            "status": "A",
            "cdate": "2026-03-02 10:00:00",
            "udate": "2026-03-02 10:00:00",
        }
        self.channels.append(channel)
        del self.auth_numbers[plus]
        return Reply(200, {"code": 0, "message": "정상적으로 호출하였습니다.", "data": [channel]})

    # templates --------------------------------------------------------------------------

    def _template_fields(self, req: Recorded) -> tuple[dict[str, Any] | None, Reply | None]:
        name, content = req.form.get("tpl_name"), req.form.get("tpl_content")
        if not name or not content:
            return None, self._fail(-99, "tpl_name, tpl_content 누락")
        buttons: list[Any] = []
        if req.form.get("tpl_button"):
            try:
                buttons = json.loads(req.form["tpl_button"])["button"]
            except (ValueError, KeyError, TypeError):
                return None, self._fail(-99, "tpl_button 형식 오류")
        return {"templtName": name, "templtContent": content, "buttons": buttons}, None

    def _template_add(self, req: Recorded) -> Reply:
        key = self._sender(req)
        if key is None:
            return self._fail(-99, "발신프로필 키 오류")
        fields, bad = self._template_fields(req)
        if bad is not None or fields is None:
            return bad or self._fail(-99, "?")
        code = f"TP_{next(self._tpl.setdefault(key, itertools.count(1))):04d}"
        template = {
            "senderKey": key,
            "templtCode": code,
            **fields,
            "inspStatus": "REG",
            "status": "R",
            "cdate": "2026-03-02 10:00:00",
            "udate": "2026-03-02 10:00:00",
        }
        self.templates[(key, code)] = template
        data = {k: v for k, v in template.items() if k not in ("buttons", "senderKey")}
        return Reply(200, {"code": 0, "message": "정상적으로 호출하였습니다.", "data": data})

    def _template_of(self, req: Recorded) -> tuple[dict[str, Any] | None, Reply | None]:
        key = self._sender(req)
        template = self.templates.get((key or "", req.form.get("tpl_code", "")))
        if template is None:
            return None, self._fail(-99, "템플릿 코드 오류")
        return template, None

    def _template_list(self, req: Recorded) -> Reply:
        key = self._sender(req)
        if key is None:
            return self._fail(-99, "발신프로필 키 오류")
        code = req.form.get("tpl_code")
        listed = [
            {k: v for k, v in t.items() if k != "senderKey"}
            for t in self.templates.values()
            if t["senderKey"] == key and code in (None, t["templtCode"])
        ]
        return Reply(200, {"code": 0, "message": "정상적으로 호출하였습니다.", "list": listed})

    def _template_modify(self, req: Recorded) -> Reply:
        template, bad = self._template_of(req)
        if template is None:
            return bad or self._fail(-99, "?")
        if template["inspStatus"] in ("REQ", "APR"):
            return self._fail(-99, "검수중이거나 승인된 템플릿은 수정할 수 없습니다.")
        fields, bad = self._template_fields(req)
        if fields is None:
            return bad or self._fail(-99, "?")
        template.update(fields, inspStatus="REG", udate="2026-03-02 11:00:00")
        return Reply(200, {"code": 0, "message": "정상적으로 호출하였습니다."})

    def _template_del(self, req: Recorded) -> Reply:
        template, bad = self._template_of(req)
        if template is None:
            return bad or self._fail(-99, "?")
        del self.templates[(template["senderKey"], template["templtCode"])]
        return Reply(200, {"code": 0, "message": "정상적으로 호출하였습니다."})

    def _template_request(self, req: Recorded) -> Reply:
        template, bad = self._template_of(req)
        if template is None:
            return bad or self._fail(-99, "?")
        if template["inspStatus"] != "REG":
            return self._fail(-99, "검수 요청할 수 없는 상태입니다.")
        template["inspStatus"] = "REQ"
        return Reply(200, {"code": 0, "message": "정상적으로 호출하였습니다."})

    def template(self, code: str, sender_key: str = "SENDERKEY1") -> dict[str, Any]:
        return self.templates[(sender_key, code)]

    def review(self, code: str, *, approve: bool, sender_key: str = "SENDERKEY1") -> None:
        """Kakao's decision on a template under inspection."""
        template = self.template(code, sender_key)
        template["inspStatus"] = "APR" if approve else "REJ"
        template["udate"] = "2026-03-03 09:00:00"


def aligo_provider(fake: FakeAligo, sleep: SleepFn = asyncio.sleep, **config: Any) -> AligoProvider:
    """An AligoProvider sending to ``fake`` with its credentials; ``config`` is the rest of its
    AligoConfig (sender, sender key, retry policy...)."""
    settings: dict[str, Any] = {
        "api_key": fake.api_key,
        "user_id": fake.user_id,
        "sms_base_url": fake.sms_url,
        "alimtalk_base_url": fake.kakao_url,
    }
    return AligoProvider(AligoConfig(**settings | config), sleep=sleep)
