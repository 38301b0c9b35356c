"""Aligo: SMS/LMS/MMS (``apis.aligo.in``) and Kakao AlimTalk/FriendTalk (``kakaoapi.aligo.in``).

Wire facts (providers spec §4.2): every call is a multipart form POST and the credentials
travel as form fields (``key``/``user_id`` on the SMS API, ``apikey``/``userid`` on the Kakao
API). SMS success is ``result_code == 1``, Kakao success ``result_code == 0`` (``code == 0``
is accepted too); the status right after a send is always PENDING. Numbers are sent exactly
as given. Aligo renders nothing itself: the AlimTalk text (``message_1``) is filled in here.

``provider_options`` keys read: ``templateContent`` (the approved template text to fill),
``failover`` (``Y``/``N``), ``fsubject_1``, ``fmessage_1``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import aiohttp

from .errors import KMsgError, KMsgErrorCode, ProviderConfigError, fail_invalid_request
from .onboarding import ProviderOnboardingSpec, get_provider_onboarding_spec
from .provider import (
    HttpProviderBase,
    HttpResponse,
    MalformedResponse,
    RetryPolicy,
    SleepFn,
    env_value,
    join_url,
    malformed_response_error,
    parse_env_bool,
    parse_json,
    require_env,
    to_kst,
    unexpected_error,
    validate_base_url,
)
from .result import Fail, Ok, Result
from .templates import interpolate, missing_variables, stringify_variable
from .types import (
    AlimTalkSendOptions,
    FriendTalkSendOptions,
    MessageButton,
    MessageStatus,
    MessageType,
    ProviderHealth,
    SendOptions,
    SendResult,
    SendWarning,
    SendWarningCode,
    SmsSendOptions,
)

logger = logging.getLogger("kmsg_webhook.messaging")

PROVIDER_ID = "aligo"
PROVIDER_NAME = "Aligo Smart SMS"
DEFAULT_SMS_BASE_URL = "https://apis.aligo.in"
DEFAULT_ALIMTALK_BASE_URL = "https://kakaoapi.aligo.in"
DEFAULT_FRIENDTALK_ENDPOINT = "/akv10/friendtalk/send/"
ALIMTALK_ENDPOINT = "/akv10/alimtalk/send/"
SMS_ENDPOINT = "/send/"

_SUPPORTED = frozenset(
    {
        MessageType.ALIMTALK,
        MessageType.FRIENDTALK,
        MessageType.SMS,
        MessageType.LMS,
        MessageType.MMS,
    }
)


@dataclass(frozen=True, slots=True)
class AligoConfig:
    """Aligo settings. ``test_mode`` defaults to on (nothing is delivered) as in the original."""

    api_key: str
    user_id: str
    sender_key: str | None = None
    sender: str | None = None
    test_mode: bool = True
    sms_base_url: str = DEFAULT_SMS_BASE_URL
    alimtalk_base_url: str = DEFAULT_ALIMTALK_BASE_URL
    friendtalk_endpoint: str = DEFAULT_FRIENDTALK_ENDPOINT
    timeout: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


def map_aligo_result_code(code: str) -> KMsgErrorCode:
    """Aligo ``result_code`` → KMsgErrorCode."""
    if code in ("-100", "-101"):
        return KMsgErrorCode.AUTHENTICATION_FAILED
    if code in ("-102", "-201"):
        return KMsgErrorCode.INSUFFICIENT_BALANCE
    if code in ("-103", "-105"):
        return KMsgErrorCode.INVALID_REQUEST
    if code == "-501":
        return KMsgErrorCode.TEMPLATE_NOT_FOUND
    return KMsgErrorCode.PROVIDER_ERROR


def _button_json(buttons: tuple[MessageButton, ...]) -> str:
    # Aligo's documented button shape: {"button": [{"name", "linkType", "linkMo", "linkPc"}]}.
    items = []
    for button in buttons:
        item = {"name": button.name, "linkType": button.type}
        if button.url_mobile:
            item["linkMo"] = button.url_mobile
        if button.url_pc:
            item["linkPc"] = button.url_pc
        items.append(item)
    return json.dumps({"button": items}, ensure_ascii=False)


class AligoProvider(HttpProviderBase):
    """Aligo SMS/LMS/MMS + Kakao AlimTalk/FriendTalk."""

    max_batch_size: int | None = None

    def __init__(
        self,
        config: AligoConfig,
        *,
        session: aiohttp.ClientSession | None = None,
        sleep: SleepFn = asyncio.sleep,
    ) -> None:
        missing = tuple(
            name
            for name, value in (("api_key", config.api_key), ("user_id", config.user_id))
            if not isinstance(value, str) or not value.strip()
        )
        if missing:
            raise ProviderConfigError(
                f"aligo: {' and '.join(missing)} required", provider_id=PROVIDER_ID, missing=missing
            )
        super().__init__(
            PROVIDER_ID, timeout=config.timeout, retry=config.retry, session=session, sleep=sleep
        )
        self._config = config
        self._sms_base_url = validate_base_url(config.sms_base_url, "sms_base_url", PROVIDER_ID)
        self._kakao_base_url = validate_base_url(
            config.alimtalk_base_url, "alimtalk_base_url", PROVIDER_ID
        )
        endpoint = config.friendtalk_endpoint.strip() or DEFAULT_FRIENDTALK_ENDPOINT
        self._friendtalk_endpoint = endpoint if endpoint.startswith("/") else "/" + endpoint
        if config.test_mode:
            logger.warning("Aligo provider in test mode: messages are accepted but not delivered")

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        sleep: SleepFn = asyncio.sleep,
    ) -> AligoProvider:
        """Build from ``ALIGO_API_KEY`` and ``ALIGO_USER_ID`` (required) and optional settings.

        Optional: ``ALIGO_SENDER``, ``ALIGO_SENDER_KEY``, ``ALIGO_FRIENDTALK_ENDPOINT``,
        ``ALIGO_SMS_BASE_URL``, ``ALIGO_ALIMTALK_BASE_URL``, ``ALIGO_TEST_MODE`` (``Y``/``N``;
        when unset, test mode is on unless ``NODE_ENV=production``, as in the original).
        """
        source = os.environ if env is None else env
        required = require_env(source, PROVIDER_ID, "ALIGO_API_KEY", "ALIGO_USER_ID")
        test_mode = parse_env_bool(env_value(source, "ALIGO_TEST_MODE"))
        if test_mode is None:
            test_mode = (env_value(source, "NODE_ENV") or "").lower() != "production"
        config = AligoConfig(
            api_key=required["ALIGO_API_KEY"],
            user_id=required["ALIGO_USER_ID"],
            sender_key=env_value(source, "ALIGO_SENDER_KEY"),
            sender=env_value(source, "ALIGO_SENDER"),
            test_mode=test_mode,
            sms_base_url=env_value(source, "ALIGO_SMS_BASE_URL") or DEFAULT_SMS_BASE_URL,
            alimtalk_base_url=env_value(source, "ALIGO_ALIMTALK_BASE_URL")
            or DEFAULT_ALIMTALK_BASE_URL,
            friendtalk_endpoint=env_value(source, "ALIGO_FRIENDTALK_ENDPOINT")
            or DEFAULT_FRIENDTALK_ENDPOINT,
        )
        return cls(config, session=session, sleep=sleep)

    @property
    def id(self) -> str:
        return PROVIDER_ID

    @property
    def name(self) -> str:
        return PROVIDER_NAME

    @property
    def supported_types(self) -> frozenset[MessageType]:
        return _SUPPORTED

    def get_onboarding_spec(self) -> ProviderOnboardingSpec:
        return get_provider_onboarding_spec(PROVIDER_ID)

    async def health_check(self) -> ProviderHealth:
        issues = []
        if not self._config.sender:
            issues.append("Missing sender (default from)")
        return ProviderHealth(
            healthy=not issues,
            issues=tuple(issues),
            data={"provider": PROVIDER_ID, "smsBaseUrl": self._sms_base_url},
        )

    # send ------------------------------------------------------------------------------

    async def send(self, options: SendOptions) -> Result[SendResult, KMsgError]:
        try:
            if isinstance(options, SmsSendOptions):
                return await self._send_sms(options)
            if isinstance(options, AlimTalkSendOptions):
                return await self._send_alimtalk(options)
            if isinstance(options, FriendTalkSendOptions):
                return await self._send_friendtalk(options)
            return fail_invalid_request(
                f"Aligo does not support type {options.type.value}", provider_id=PROVIDER_ID
            )
        except Exception as exc:
            return Fail(unexpected_error(PROVIDER_ID, exc))

    def _sender(self, options: SendOptions) -> str | None:
        sender = (options.from_ or self._config.sender or "").strip()
        return sender or None

    def _sender_key(self, options: AlimTalkSendOptions | FriendTalkSendOptions) -> str | None:
        profile = options.kakao.profile_id if options.kakao else None
        key = (profile or self._config.sender_key or "").strip()
        return key or None

    def _image_ref(
        self, options: SmsSendOptions | FriendTalkSendOptions
    ) -> Result[str | None, KMsgError]:
        if options.image_url and options.image_url.strip():
            return Ok(options.image_url.strip())
        image = options.media.image if options.media else None
        if image is None:
            return Ok(None)
        if image.ref:
            return Ok(image.ref)
        return fail_invalid_request(
            "Aligo MMS/FriendTalk image needs options.image_url or options.media.image.ref "
            "(a URL or path)",
            provider_id=PROVIDER_ID,
        )

    @staticmethod
    def _schedule(moment: datetime | None) -> tuple[str, str] | None:
        if moment is None:
            return None
        local = to_kst(moment)
        return local.strftime("%Y%m%d"), local.strftime("%H%M")

    async def _post(
        self,
        url: str,
        fields: Mapping[str, str],
        *,
        success_code: str,
        options: SendOptions,
        warnings: tuple[SendWarning, ...] = (),
    ) -> Result[SendResult, KMsgError]:
        def form() -> aiohttp.FormData:
            # Aligo expects multipart even without files.
            form = aiohttp.FormData(default_to_multipart=True)
            for key, value in fields.items():
                form.add_field(key, value)
            return form

        return await self._request(
            "POST",
            url,
            lambda response: self._result(response, success_code, options, warnings),
            form=form,
        )

    def _result(
        self,
        response: HttpResponse,
        success_code: str,
        options: SendOptions,
        warnings: tuple[SendWarning, ...],
    ) -> Result[SendResult, KMsgError]:
        if not response.ok:
            return Fail(
                KMsgError(
                    KMsgErrorCode.NETWORK_ERROR,
                    f"HTTP error! status: {response.status}",
                    provider_id=PROVIDER_ID,
                    http_status=response.status,
                    retry_after_ms=response.retry_after_ms(),
                )
            )
        parsed = parse_json(response.text)
        if isinstance(parsed, MalformedResponse) or not isinstance(parsed, dict):
            return Fail(malformed_response_error(PROVIDER_ID, response))
        raw_code = parsed.get("result_code", parsed.get("code"))
        code = str(raw_code).strip() if raw_code is not None else "UNKNOWN"
        if code == success_code:
            msg_id = parsed.get("msg_id")
            return Ok(
                SendResult(
                    message_id=options.message_id or "",
                    provider_id=PROVIDER_ID,
                    status=MessageStatus.PENDING,
                    type=options.type,
                    to=options.to,
                    provider_message_id=str(msg_id) if msg_id not in (None, "") else None,
                    warnings=warnings,
                    raw=parsed,
                )
            )
        text = str(parsed.get("message") or parsed.get("msg") or "Aligo request failed")
        return Fail(
            KMsgError(
                map_aligo_result_code(code),
                f"{text} (code: {code})",
                provider_id=PROVIDER_ID,
                provider_error_code=code,
                provider_error_text=text,
                http_status=response.status,
                details={"resultCode": code},
            )
        )

    async def _send_sms(self, options: SmsSendOptions) -> Result[SendResult, KMsgError]:
        sender = self._sender(options)
        if sender is None:
            return fail_invalid_request(
                "from is required for SMS/LMS/MMS (options.from or config.sender)",
                provider_id=PROVIDER_ID,
            )
        fields: dict[str, str] = {
            "key": self._config.api_key,
            "user_id": self._config.user_id,
            "sender": sender,
            "receiver": options.to,
            "msg": options.text,
            "msg_type": options.type.value,
            "testmode_yn": "Y" if self._config.test_mode else "N",
        }
        if options.subject:
            fields["title"] = options.subject
        schedule = self._schedule(options.scheduled_at)
        if schedule:
            fields["rdate"], fields["rtime"] = schedule
        if options.type is MessageType.MMS:
            image = self._image_ref(options)
            if isinstance(image, Fail):
                return image
            if image.value is None:
                return fail_invalid_request(
                    "image is required for MMS (options.image_url or options.media.image.ref)",
                    provider_id=PROVIDER_ID,
                )
            fields["image"] = image.value
        return await self._post(
            join_url(self._sms_base_url, SMS_ENDPOINT), fields, success_code="1", options=options
        )

    def render_alimtalk_text(self, options: AlimTalkSendOptions) -> Result[str, KMsgError]:
        """The final AlimTalk text Aligo expects in ``message_1``."""
        variables = options.variables
        full_text = variables.get("_full_text")
        if full_text is not None:
            return Ok(stringify_variable(full_text))
        template = options.provider_options.get("templateContent")
        if not isinstance(template, str):
            return Ok("\n".join(stringify_variable(value) for value in variables.values()))
        missing = missing_variables(template, variables)
        if missing:
            return fail_invalid_request(
                f"missing template variables: {', '.join(missing)}", provider_id=PROVIDER_ID
            )
        return Ok(interpolate(template, variables))

    def _kakao_base(
        self, options: AlimTalkSendOptions | FriendTalkSendOptions
    ) -> Result[dict[str, str], KMsgError]:
        sender_key = self._sender_key(options)
        if sender_key is None:
            return fail_invalid_request(
                "kakao profileId is required (options.kakao.profile_id or config.sender_key)",
                provider_id=PROVIDER_ID,
            )
        sender = self._sender(options)
        if sender is None:
            return fail_invalid_request(
                "from is required (options.from or config.sender)", provider_id=PROVIDER_ID
            )
        fields = {
            "apikey": self._config.api_key,
            "userid": self._config.user_id,
            "senderkey": sender_key,
            "sender": sender,
            "receiver_1": options.to,
            "testMode": "Y" if self._config.test_mode else "N",
        }
        schedule = self._schedule(options.scheduled_at)
        if schedule:
            fields["reserve"] = "Y"
            fields["reserve_date"], fields["reserve_time"] = schedule
        return Ok(fields)

    async def _send_alimtalk(self, options: AlimTalkSendOptions) -> Result[SendResult, KMsgError]:
        base = self._kakao_base(options)
        if isinstance(base, Fail):
            return base
        if not options.template_id.strip():
            return fail_invalid_request(
                "templateId is required for ALIMTALK", provider_id=PROVIDER_ID
            )
        text = self.render_alimtalk_text(options)
        if isinstance(text, Fail):
            return text
        fields = dict(base.value)
        fields["tpl_code"] = options.template_id.strip()
        fields["subject_1"] = "알림톡"
        fields["message_1"] = text.value

        extra = options.provider_options
        failover = options.failover
        flag = extra.get("failover")
        if isinstance(flag, str) and flag.strip().upper() in ("Y", "N"):
            fields["failover"] = flag.strip().upper()
        elif failover is not None and failover.enabled is not None:
            fields["failover"] = "Y" if failover.enabled else "N"
        subject = extra.get("fsubject_1") or (failover.fallback_title if failover else None)
        if subject:
            fields["fsubject_1"] = str(subject)
        content = extra.get("fmessage_1") or (failover.fallback_content if failover else None)
        if content:
            fields["fmessage_1"] = str(content)

        warnings: tuple[SendWarning, ...] = ()
        if failover is not None and failover.enabled is True:
            warnings = (
                SendWarning(
                    SendWarningCode.FAILOVER_PARTIAL_PROVIDER,
                    "Aligo maps failover only partly (no fallback channel choice); an API-level "
                    "fallback may follow for non-Kakao-user failures.",
                    provider_id=PROVIDER_ID,
                    mapped_fields=("failover", "fmessage_1", "fsubject_1"),
                    unsupported_fields=("fallbackChannel",),
                ),
            )
        return await self._post(
            join_url(self._kakao_base_url, ALIMTALK_ENDPOINT),
            fields,
            success_code="0",
            options=options,
            warnings=warnings,
        )

    async def _send_friendtalk(
        self, options: FriendTalkSendOptions
    ) -> Result[SendResult, KMsgError]:
        base = self._kakao_base(options)
        if isinstance(base, Fail):
            return base
        if not options.text.strip():
            return fail_invalid_request("text is required for FRIENDTALK", provider_id=PROVIDER_ID)
        fields = dict(base.value)
        fields["subject_1"] = "친구톡"
        fields["message_1"] = options.text
        image = self._image_ref(options)
        if isinstance(image, Fail):
            return image
        if image.value is not None:
            fields["image_1"] = image.value
        buttons = (options.kakao.buttons if options.kakao else ()) or options.buttons
        if buttons:
            fields["button_1"] = _button_json(buttons)
        return await self._post(
            join_url(self._kakao_base_url, self._friendtalk_endpoint),
            fields,
            success_code="0",
            options=options,
        )
