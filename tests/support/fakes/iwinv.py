"""Fake IWINV: AlimTalk API under ``/alimtalk``, SMS v2 API under ``/sms``."""

from __future__ import annotations

import base64
import binascii
import itertools
from typing import Any

from .base import FakeServer, Recorded, Reply


def _b64decode(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


class FakeIwinv(FakeServer):
    def __init__(
        self,
        api_key: str = "iwinv-alimtalk-key",
        sms_api_key: str = "iwinv-sms-key",
        sms_auth_key: str = "iwinv-sms-auth",
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.sms_api_key = sms_api_key
        self.sms_auth_key = sms_auth_key
        self._seq = itertools.count(1001)
        self.alimtalk_history: list[dict[str, Any]] = []
        self.sms_history: list[dict[str, Any]] = []
        self.charge: Any = 12345
        self.route("POST", "/alimtalk/api/v2/send/", self._alimtalk_send)
        self.route("POST", "/alimtalk/api/history/", self._alimtalk_history)
        self.route("POST", "/alimtalk/api/charge/", self._alimtalk_charge)
        #: templateCode -> the template as IWINV lists it
        self.templates: dict[str, dict[str, Any]] = {}
        self._tpl = itertools.count(1)
        self.route("POST", "/alimtalk/api/template/", self._template_list)
        self.route("POST", "/alimtalk/api/template/add/", self._template_add)
        self.route("POST", "/alimtalk/api/template/modify/", self._template_modify)
        self.route("POST", "/alimtalk/api/template/delete/", self._template_delete)
        self.route("POST", "/sms/api/v2/send/", self._sms_send)
        self.route("POST", "/sms/api/history/", self._sms_history)
        self.route("POST", "/sms/api/charge/", self._sms_charge)

    @property
    def alimtalk_url(self) -> str:
        return self.url + "/alimtalk"

    @property
    def sms_url(self) -> str:
        return self.url + "/sms"

    # checks -----------------------------------------------------------------------------

    def _alimtalk_auth_error(self, req: Recorded) -> Reply | None:
        if _b64decode(req.headers.get("AUTH")) != self.api_key:
            return Reply(401, {"code": 401, "message": "인증 실패"})
        if req.content_type.replace(" ", "").lower() != "application/json;charset=utf-8":
            return Reply(200, {"code": 502, "message": f"bad content type {req.content_type}"})
        if not isinstance(req.json, dict):
            return Reply(200, {"code": 502, "message": "body is not a JSON object"})
        return None

    def _sms_auth_error(self, req: Recorded, *, multipart: bool = False) -> Reply | None:
        if _b64decode(req.headers.get("secret")) != f"{self.sms_api_key}&{self.sms_auth_key}":
            return Reply(200, {"resultCode": 14, "message": "인증 요청이 올바르지 않습니다."})
        if multipart:
            return None
        if not req.content_type.lower().startswith("application/json"):
            return Reply(200, {"resultCode": 1, "message": "bad content type"})
        if not isinstance(req.json, dict) or req.json.get("version") != "1.0":
            return Reply(200, {"resultCode": 1, "message": "version 1.0 required"})
        return None

    # AlimTalk ---------------------------------------------------------------------------

    def _alimtalk_send(self, req: Recorded) -> Reply:
        error = self._alimtalk_auth_error(req)
        if error is not None:
            return error
        body = req.json
        recipients = body.get("list")
        if not isinstance(body.get("templateCode"), str) or not body["templateCode"]:
            return Reply(200, {"code": 501, "message": "templateCode 오류"})
        if not isinstance(recipients, list) or len(recipients) != 1:
            return Reply(200, {"code": 503, "message": "list 오류"})
        phone = recipients[0].get("phone")
        if not isinstance(phone, str) or not phone.isdigit():
            return Reply(200, {"code": 504, "message": "phone 오류"})
        params = recipients[0].get("templateParam")
        if params is not None and not (
            isinstance(params, list) and all(isinstance(p, str) for p in params)
        ):
            return Reply(200, {"code": 508, "message": "templateParam 오류"})
        if body.get("reserve") not in ("Y", "N"):
            return Reply(200, {"code": 510, "message": "reserve 오류"})
        if body.get("reSend") == "Y" and not str(body.get("resendCallback", "")).isdigit():
            return Reply(200, {"code": 505, "message": "발신번호 미등록"})
        return Reply(
            200,
            {
                "code": 200,
                "message": "발송 성공",
                "success": 1,
                "fail": 0,
                "seqNo": next(self._seq),
            },
        )

    def _alimtalk_history(self, req: Recorded) -> Reply:
        error = self._alimtalk_auth_error(req)
        if error is not None:
            return error
        return Reply(200, {"code": 200, "message": "조회 성공", "list": self.alimtalk_history})

    def _alimtalk_charge(self, req: Recorded) -> Reply:
        error = self._alimtalk_auth_error(req)
        if error is not None:
            return error
        return Reply(200, {"code": 200, "message": "조회 성공", "charge": self.charge})

    # templates --------------------------------------------------------------------------

    @staticmethod
    def _template_shape_error(body: dict[str, Any]) -> Reply | None:
        name, content = body.get("templateName"), body.get("templateContent")
        if not isinstance(name, str) or not 0 < len(name) <= 15:
            return Reply(200, {"code": 502, "message": "templateName 오류"})
        if not isinstance(content, str) or not 0 < len(content) <= 1000:
            return Reply(200, {"code": 503, "message": "templateContent 오류"})
        buttons = body.get("buttons", [])
        if not isinstance(buttons, list) or not all(
            isinstance(b, dict)
            and b.get("type") in ("WL", "AL", "DB", "BK", "MD")
            and b.get("name")
            for b in buttons
        ):
            return Reply(200, {"code": 504, "message": "buttons 오류"})
        return None

    def _template_add(self, req: Recorded) -> Reply:
        error = self._alimtalk_auth_error(req) or self._template_shape_error(req.json)
        if error is not None:
            return error
        code = f"IW{next(self._tpl):04d}"
        self.templates[code] = {
            "templateCode": code,
            "templateName": req.json["templateName"],
            "templateContent": req.json["templateContent"],
            "status": "I",
            "buttons": req.json.get("buttons", []),
            "createDate": "2026-03-02 10:00:00",
        }
        return Reply(200, {"code": 200, "message": "등록 성공", "templateCode": code})

    def _template_modify(self, req: Recorded) -> Reply:
        error = self._alimtalk_auth_error(req) or self._template_shape_error(req.json)
        if error is not None:
            return error
        current = self.templates.get(req.json.get("templateCode", ""))
        if current is None:
            return Reply(200, {"code": 404, "message": "템플릿 없음"})
        current.update(
            templateName=req.json["templateName"],
            templateContent=req.json["templateContent"],
            buttons=req.json.get("buttons", current["buttons"]),  # absent: kept
            status="I",
        )
        return Reply(200, {"code": 200, "message": "수정 성공"})

    def _template_delete(self, req: Recorded) -> Reply:
        error = self._alimtalk_auth_error(req)
        if error is not None:
            return error
        if self.templates.pop(req.json.get("templateCode", ""), None) is None:
            return Reply(200, {"code": 404, "message": "템플릿 없음"})
        return Reply(200, {"code": 200, "message": "삭제 성공"})

    def _template_list(self, req: Recorded) -> Reply:
        error = self._alimtalk_auth_error(req)
        if error is not None:
            return error
        body = req.json
        page, size = body.get("pageNum"), body.get("pageSize")
        if not (
            isinstance(page, str) and page.isdigit() and isinstance(size, str) and size.isdigit()
        ):
            return Reply(200, {"code": 502, "message": "pageNum/pageSize는 문자열 숫자"})
        if not 1 <= int(size) <= 1000:
            return Reply(200, {"code": 502, "message": "pageSize 범위 오류"})
        items = [
            t
            for t in self.templates.values()
            if body.get("templateCode") in (None, t["templateCode"])
            and body.get("templateStatus") in (None, t["status"])
        ]
        start = (int(page) - 1) * int(size)
        chosen = items[start : start + int(size)]
        return Reply(
            200, {"code": 200, "message": "조회 성공", "totalCount": len(items), "list": chosen}
        )

    # SMS v2 -----------------------------------------------------------------------------

    def _sms_send(self, req: Recorded) -> Reply:
        multipart = req.content_type.startswith("multipart/form-data")
        error = self._sms_auth_error(req, multipart=multipart)
        if error is not None:
            return error
        if multipart:
            form = req.form
            if form.get("version") != "1.0" or "image" not in req.files:
                return Reply(200, {"resultCode": 33, "message": "이미지 업로드 실패"})
            sender, to, text = form.get("from"), form.get("to"), form.get("text")
            msg_type = "MMS"
        else:
            body = req.json
            sender, text = body.get("from"), body.get("text")
            to_list = body.get("to")
            if not isinstance(to_list, list) or len(to_list) != 1:
                return Reply(200, {"resultCode": 41, "message": "수신번호 없음"})
            to = to_list[0]
            msg_type = body.get("msgType") or ("LMS" if "title" in body else "SMS")
        if not isinstance(sender, str) or not sender.isdigit():
            return Reply(200, {"resultCode": 13, "message": "발신번호 미등록"})
        if not isinstance(to, str) or not to.isdigit():
            return Reply(200, {"resultCode": 41, "message": "수신번호 없음"})
        if not text:
            return Reply(200, {"resultCode": 1, "message": "본문 없음"})
        return Reply(
            200,
            {
                "resultCode": 0,
                "message": "전송 성공",
                "requestNo": f"REQ{next(self._seq)}",
                "msgType": msg_type,
            },
        )

    def _sms_history(self, req: Recorded) -> Reply:
        error = self._sms_auth_error(req)
        if error is not None:
            return error
        if not req.json.get("companyid"):
            return Reply(200, {"resultCode": 1, "message": "companyid 없음"})
        return Reply(200, {"resultCode": 0, "message": "조회 성공", "list": self.sms_history})

    def _sms_charge(self, req: Recorded) -> Reply:
        error = self._sms_auth_error(req)
        if error is not None:
            return error
        return Reply(200, {"code": 0, "message": "조회 성공", "charge": self.charge})
