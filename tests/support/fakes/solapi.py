"""Fake SOLAPI: checks the HMAC-SHA256 Authorization header on every request."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from .base import FakeServer, Recorded, Reply

_AUTH = re.compile(
    r"^HMAC-SHA256 apiKey=(?P<key>[^,\s]+), date=(?P<date>[^,\s]+), "
    r"salt=(?P<salt>[^,\s]+), signature=(?P<sig>[0-9a-f]{64})$"
)


def _error(status: int, code: str, message: str) -> Reply:
    return Reply(status, {"errorCode": code, "errorMessage": message})


class FakeSolapi(FakeServer):
    def __init__(self, api_key: str = "NCSTESTKEY", api_secret: str = "SOLAPISECRET") -> None:
        super().__init__()
        self.api_key = api_key
        self.api_secret = api_secret
        self.seen_salts: set[str] = set()
        self._ids = itertools.count(1)
        #: providerMessageId -> message entry served by /messages/v4/list
        self.statuses: dict[str, dict[str, Any]] = {}
        self.balance: dict[str, Any] = {"balance": 5000, "point": 100}
        self.route("POST", "/messages/v4/send", self._send)
        self.route("GET", "/messages/v4/list", self._list)
        self.route("GET", "/cash/v1/balance", self._balance)
        self.route("POST", "/storage/v1/files", self._upload)

    def env(self) -> dict[str, str]:
        """What ``kmsg`` (``SolapiProvider.from_env``) reads to send through this fake only."""
        return {
            "KMSG_PROVIDERS": "solapi",
            "SOLAPI_API_KEY": self.api_key,
            "SOLAPI_API_SECRET": self.api_secret,
            "SOLAPI_DEFAULT_FROM": "0212345678",
            "SOLAPI_KAKAO_PF_ID": "PF1",
            "SOLAPI_BASE_URL": self.url,
        }

    def auth_error(self, req: Recorded) -> Reply | None:
        match = _AUTH.match(req.headers.get("Authorization", ""))
        if match is None:
            return _error(401, "InvalidAuthorizationHeader", "malformed Authorization")
        if match["key"] != self.api_key:
            return _error(401, "InvalidAPIKey", "unknown api key")
        expected = hmac.new(
            self.api_secret.encode(), (match["date"] + match["salt"]).encode(), hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(expected, match["sig"]):
            return _error(401, "SignatureDoesNotMatch", "signature mismatch")
        try:
            sent = datetime.fromisoformat(match["date"].replace("Z", "+00:00"))
        except ValueError:
            return _error(401, "InvalidDate", "bad date")
        if abs(datetime.now(UTC) - sent) > timedelta(minutes=15):
            return _error(401, "RequestTimeTooSkewed", "date too far from now")
        if match["salt"] in self.seen_salts:
            return _error(401, "DuplicatedSignature", "salt reused")
        self.seen_salts.add(match["salt"])
        if req.method == "POST" and not req.content_type.startswith("application/json"):
            return _error(400, "ValidationError", "content type must be JSON")
        return None

    def _send(self, req: Recorded) -> Reply:
        bad = self.auth_error(req)
        if bad is not None:
            return bad
        message = (req.json or {}).get("message")
        if not isinstance(message, dict):
            return _error(400, "ValidationError", "message is required")
        to, kind = message.get("to"), message.get("type")
        if not isinstance(to, str) or not re.fullmatch(r"\+?\d+", to):
            return _error(400, "ValidationError", f"invalid to {to!r}")
        if kind in ("SMS", "LMS", "MMS") and not (message.get("from") and message.get("text")):
            return _error(400, "ValidationError", "from and text are required")
        if kind == "MMS" and not message.get("imageId"):
            return _error(400, "ValidationError", "imageId is required for MMS")
        if kind == "ATA":
            kakao = message.get("kakaoOptions") or {}
            if not kakao.get("pfId") or not kakao.get("templateId"):
                return _error(400, "ValidationError", "pfId and templateId are required")
            for key in kakao.get("variables", {}):
                if not re.fullmatch(r"#\{[^{}.]+\}", key):
                    return _error(400, "ValidationError", f"bad variable key {key}")
        message_id = f"M4V{next(self._ids):017d}"
        return Reply(
            200,
            {
                "groupId": "G4V00000000000000001",
                "to": to,
                "from": message.get("from"),
                "type": kind,
                "statusMessage": "정상 접수(이통사로 접수 예정) ",
                "country": message.get("country", "82"),
                "messageId": message_id,
                "statusCode": "2000",
                "accountId": "ACC1",
            },
        )

    def _list(self, req: Recorded) -> Reply:
        bad = self.auth_error(req)
        if bad is not None:
            return bad
        message_id = req.query.get("messageId", "")
        entry = self.statuses.get(message_id)
        listed = {message_id: {"messageId": message_id, **entry}} if entry else {}
        return Reply(200, {"startKey": None, "limit": 1, "messageList": listed})

    def _balance(self, req: Recorded) -> Reply:
        bad = self.auth_error(req)
        if bad is not None:
            return bad
        return Reply(200, self.balance)

    def _upload(self, req: Recorded) -> Reply:
        bad = self.auth_error(req)
        if bad is not None:
            return bad
        body = req.json or {}
        try:
            base64.b64decode(body.get("file", ""), validate=True)
        except binascii.Error:
            return _error(400, "ValidationError", "file must be base64")
        if body.get("type") not in ("MMS", "KAKAO", "RCS", "FAX", "DOCUMENT"):
            return _error(400, "ValidationError", "bad file type")
        return Reply(200, {"fileId": f"ST01FILE{next(self._ids)}", "type": body["type"]})
