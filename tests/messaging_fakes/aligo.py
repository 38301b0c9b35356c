"""Fake Aligo: SMS API under ``/sms``, Kakao API under ``/kakao``; multipart forms only."""

from __future__ import annotations

import itertools

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
