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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import aiohttp

from .channels import (
    KakaoChannel,
    KakaoChannelCategories,
    KakaoChannelCategory,
    normalize_plus_id,
)
from .errors import (
    KMsgError,
    KMsgErrorCode,
    ProviderConfigError,
    SenderKeyRequiredError,
    fail_invalid_request,
)
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
    parse_kst,
    require_env,
    to_kst,
    unexpected_error,
    validate_base_url,
)
from .result import Fail, Ok, Result
from .templates import (
    Template,
    TemplateButton,
    TemplateInput,
    TemplateLimits,
    TemplateStatus,
    TemplateUpdate,
    button_links,
    buttons_from_wire,
    find_template,
    placeholders,
    render,
    revised_template,
    stringify_variable,
    template_page,
    validate_template,
)
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

T = TypeVar("T")

PROVIDER_ID = "aligo"
SENDER_KEY_ENV = "ALIGO_SENDER_KEY"
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


def _reply(
    response: HttpResponse, code_key: str, fallback_key: str
) -> Result[tuple[dict[str, Any], str], KMsgError]:
    """An Aligo JSON reply and its result code (the send and template APIs name it differently)."""
    if not response.ok:
        return Fail(_http_error(response))
    parsed = parse_json(response.text)
    if isinstance(parsed, MalformedResponse) or not isinstance(parsed, dict):
        return Fail(malformed_response_error(PROVIDER_ID, response))
    raw_code = parsed.get(code_key, parsed.get(fallback_key))
    return Ok((parsed, str(raw_code).strip() if raw_code is not None else "UNKNOWN"))


def _http_error(response: HttpResponse) -> KMsgError:
    """A non-2xx answer: Aligo's API answers 200 for its own errors, so this is transport."""
    return KMsgError(
        KMsgErrorCode.NETWORK_ERROR,
        f"HTTP error! status: {response.status}",
        provider_id=PROVIDER_ID,
        http_status=response.status,
        retry_after_ms=response.retry_after_ms(),
    )


def _refusal(
    kind: KMsgErrorCode, code: str, text: str, response: HttpResponse, details: dict[str, Any]
) -> KMsgError:
    """Aligo refused the request with its own ``code`` and ``text`` (``kind`` is ours)."""
    return KMsgError(
        kind,
        f"{text} (code: {code})",
        provider_id=PROVIDER_ID,
        provider_error_code=code,
        provider_error_text=text,
        http_status=response.status,
        details=details,
    )


def _incomplete(message: str) -> KMsgError:
    """Aligo said yes but its answer lacks what the call returns; not retried, it was done."""
    return KMsgError(
        KMsgErrorCode.PROVIDER_ERROR, message, provider_id=PROVIDER_ID, retryable=False
    )


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
            sender_key=env_value(source, SENDER_KEY_ENV),
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
        reply = _reply(response, "result_code", "code")
        if isinstance(reply, Fail):
            return reply
        parsed, code = reply.value
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
            _refusal(map_aligo_result_code(code), code, text, response, {"resultCode": code})
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
        rendered = render(template, variables)
        if isinstance(rendered, Fail):
            return Fail(rendered.error.with_provider(PROVIDER_ID))
        return rendered

    def _kakao_base(
        self, options: AlimTalkSendOptions | FriendTalkSendOptions
    ) -> Result[dict[str, str], KMsgError]:
        sender_key = self._sender_key(options)
        if sender_key is None:
            return Fail(
                SenderKeyRequiredError(
                    PROVIDER_ID,
                    "kakao profileId is required (options.kakao.profile_id or config.sender_key)",
                    setting=SENDER_KEY_ENV,
                )
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

    # Kakao management (templates and channels) -------------------------------------------
    # Every call: multipart POST to kakaoapi.aligo.in with apikey/userid, success is code 0.

    async def _manage(
        self,
        path: str,
        fields: Mapping[str, str],
        read: Callable[[dict[str, Any]], Result[T, KMsgError]],
        *,
        read_only: bool = False,
    ) -> Result[T, KMsgError]:
        """One management call; only ``read_only`` ones are retried (see ``_request``)."""

        def form() -> aiohttp.FormData:
            data = aiohttp.FormData(default_to_multipart=True)
            data.add_field("apikey", self._config.api_key)
            data.add_field("userid", self._config.user_id)
            for key, value in fields.items():
                data.add_field(key, value)
            return data

        def parse(response: HttpResponse) -> Result[T, KMsgError]:
            reply = _reply(response, "code", "result_code")
            if isinstance(reply, Fail):
                return reply
            parsed, code = reply.value
            if code == "0":
                return read(parsed)
            text = str(parsed.get("message") or "Aligo request failed")
            details = {"originalCode": code, "response": parsed}
            return Fail(_refusal(map_aligo_management_code(code), code, text, response, details))

        try:
            return await self._request(
                "POST",
                join_url(self._kakao_base_url, path),
                parse,
                form=form,
                retry=read_only,
            )
        except Exception as exc:
            return Fail(unexpected_error(PROVIDER_ID, exc))

    def _template_sender_key(self, sender_key: str | None) -> Result[str, KMsgError]:
        key = (sender_key or self._config.sender_key or "").strip()
        if not key:
            return Fail(
                SenderKeyRequiredError(
                    PROVIDER_ID,
                    "a Kakao channel sender key is required (sender_key= or config.sender_key)",
                    setting=SENDER_KEY_ENV,
                )
            )
        return Ok(key)

    async def create_template(
        self, template: TemplateInput, *, sender_key: str | None = None
    ) -> Result[Template, KMsgError]:
        key = self._template_sender_key(sender_key)
        if isinstance(key, Fail):
            return key
        checked = validate_template(template, ALIGO_TEMPLATE_LIMITS, provider_id=PROVIDER_ID)
        if isinstance(checked, Fail):
            return checked
        fields = {
            "senderkey": key.value,
            "tpl_name": template.name,
            "tpl_content": template.content,
        }
        if template.buttons:
            fields["tpl_button"] = _template_button_json(template.buttons)

        def read(data: dict[str, Any]) -> Result[Template, KMsgError]:
            item = data.get("data")
            if not isinstance(item, dict) or not item.get("templtCode"):
                return Fail(_incomplete("Aligo accepted the template but returned no templtCode"))
            merged = {
                "templtName": template.name,
                "templtContent": template.content,
                "buttons": json.loads(fields.get("tpl_button", '{"button": []}'))["button"],
                **item,
            }
            return Ok(_aligo_template(merged, key.value, category=template.category))

        return await self._manage("/akv10/template/add/", fields, read)

    async def update_template(
        self, code: str, update: TemplateUpdate, *, sender_key: str | None = None
    ) -> Result[Template, KMsgError]:
        current = await self.get_template(code, sender_key=sender_key)
        if isinstance(current, Fail):
            return current
        merged = update.apply(current.value)
        checked = validate_template(merged, ALIGO_TEMPLATE_LIMITS, provider_id=PROVIDER_ID)
        if isinstance(checked, Fail):
            return checked
        key = self._template_sender_key(sender_key)
        if isinstance(key, Fail):
            return key
        fields = {
            "senderkey": key.value,
            "tpl_code": code,
            "tpl_name": merged.name,
            "tpl_content": merged.content,
            "tpl_button": _template_button_json(merged.buttons),
        }

        def read(data: dict[str, Any]) -> Result[Template, KMsgError]:
            return Ok(revised_template(current.value, merged, TemplateStatus.PENDING))

        return await self._manage("/akv10/template/modify/", fields, read)

    async def delete_template(
        self, code: str, *, sender_key: str | None = None
    ) -> Result[None, KMsgError]:
        return await self._template_command("/akv10/template/del/", code, sender_key)

    async def request_template_inspection(
        self, code: str, *, sender_key: str | None = None
    ) -> Result[None, KMsgError]:
        return await self._template_command("/akv10/template/request/", code, sender_key)

    async def _template_command(
        self, path: str, code: str, sender_key: str | None
    ) -> Result[None, KMsgError]:
        if not code.strip():
            return fail_invalid_request("template code is required", provider_id=PROVIDER_ID)
        key = self._template_sender_key(sender_key)
        if isinstance(key, Fail):
            return key
        return await self._manage(
            path, {"senderkey": key.value, "tpl_code": code}, lambda data: Ok(None)
        )

    async def get_template(
        self, code: str, *, sender_key: str | None = None
    ) -> Result[Template, KMsgError]:
        if not code.strip():
            return fail_invalid_request("template code is required", provider_id=PROVIDER_ID)
        listed = await self._templates(code, sender_key)
        if isinstance(listed, Fail):
            return listed
        return find_template(listed.value, code, PROVIDER_ID)

    async def list_templates(
        self,
        *,
        status: TemplateStatus | None = None,
        page: int = 1,
        limit: int = 15,
        sender_key: str | None = None,
    ) -> Result[tuple[Template, ...], KMsgError]:
        """Aligo returns the channel's whole list: status and paging are applied here."""
        listed = await self._templates(None, sender_key)
        if isinstance(listed, Fail):
            return listed
        return template_page(
            listed.value, status=status, page=page, limit=limit, provider_id=PROVIDER_ID
        )

    async def _templates(
        self, code: str | None, sender_key: str | None
    ) -> Result[tuple[Template, ...], KMsgError]:
        key = self._template_sender_key(sender_key)
        if isinstance(key, Fail):
            return key
        fields = {"senderkey": key.value}
        if code:
            fields["tpl_code"] = code

        def read(data: dict[str, Any]) -> Result[tuple[Template, ...], KMsgError]:
            items = data.get("list") or []
            return Ok(tuple(_aligo_template(i, key.value) for i in items if isinstance(i, dict)))

        return await self._manage("/akv10/template/list/", fields, read, read_only=True)

    async def list_kakao_channels(
        self, *, plus_id: str | None = None, sender_key: str | None = None
    ) -> Result[tuple[KakaoChannel, ...], KMsgError]:
        fields = {}
        if plus_id:
            fields["plusid"] = normalize_plus_id(plus_id)
        if sender_key:
            fields["senderkey"] = sender_key

        def read(data: dict[str, Any]) -> Result[tuple[KakaoChannel, ...], KMsgError]:
            items = data.get("list") or []
            return Ok(tuple(_aligo_channel(i) for i in items if isinstance(i, dict)))

        return await self._manage("/akv10/profile/list/", fields, read, read_only=True)

    async def list_kakao_channel_categories(self) -> Result[KakaoChannelCategories, KMsgError]:
        def level(items: Any) -> tuple[KakaoChannelCategory, ...]:
            return tuple(
                KakaoChannelCategory(
                    code=str(item.get("code") or ""),
                    name=str(item.get("name") or ""),
                    parent_code=str(item["parentCode"]) if item.get("parentCode") else None,
                )
                for item in items or []
                if isinstance(item, dict)
            )

        def read(data: dict[str, Any]) -> Result[KakaoChannelCategories, KMsgError]:
            body = data.get("data")
            if not isinstance(body, dict):
                return Fail(_incomplete("Aligo category answer has no data object"))
            return Ok(
                KakaoChannelCategories(
                    first=level(body.get("firstBusinessType")),
                    second=level(body.get("secondBusinessType")),
                    third=level(body.get("thirdBusinessType")),
                )
            )

        return await self._manage("/akv10/category/", {}, read, read_only=True)

    async def request_kakao_channel_auth(
        self, plus_id: str, phone_number: str
    ) -> Result[None, KMsgError]:
        if not plus_id.strip() or not phone_number.strip():
            return fail_invalid_request(
                "plus_id and phone_number are required", provider_id=PROVIDER_ID
            )
        fields = {"plusid": normalize_plus_id(plus_id), "phonenumber": phone_number.strip()}
        return await self._manage("/akv10/profile/auth/", fields, lambda data: Ok(None))

    async def add_kakao_channel(
        self, plus_id: str, auth_num: str, phone_number: str, category_code: str
    ) -> Result[KakaoChannel, KMsgError]:
        values = (plus_id, auth_num, phone_number, category_code)
        if not all(value.strip() for value in values):
            return fail_invalid_request(
                "plus_id, auth_num, phone_number and category_code are required",
                provider_id=PROVIDER_ID,
            )
        fields = {
            "plusid": normalize_plus_id(plus_id),
            "authnum": auth_num.strip(),
            "phonenumber": phone_number.strip(),
            "categorycode": category_code.strip(),
        }

        def read(data: dict[str, Any]) -> Result[KakaoChannel, KMsgError]:
            item = data.get("data")
            if isinstance(item, list):
                item = item[0] if item else None
            if not isinstance(item, dict) or not item.get("senderKey"):
                return Fail(_incomplete("Aligo added the channel but returned no senderKey"))
            return Ok(_aligo_channel({"uuid": fields["plusid"], **item}))

        return await self._manage("/akv10/profile/add/", fields, read)


#: Aligo's template limits; the reference gives none, so names may be longer than IWINV's 15.
ALIGO_TEMPLATE_LIMITS = TemplateLimits(max_name=50)

_ALIGO_STATUS = {
    "APR": TemplateStatus.APPROVED,
    "REJ": TemplateStatus.REJECTED,
    "REQ": TemplateStatus.INSPECTION,
    "REG": TemplateStatus.INSPECTION,
}


def map_aligo_management_code(code: str) -> KMsgErrorCode:
    """A Kakao management ``code`` → KMsgErrorCode (509 and -99 are input errors)."""
    if code in ("509", "-99"):
        return KMsgErrorCode.INVALID_REQUEST
    return map_aligo_result_code(code)


def _template_button_json(buttons: tuple[TemplateButton, ...]) -> str:
    items = [
        {"ordering": str(order), "name": b.name, "linkType": b.type, **button_links(b)}
        for order, b in enumerate(buttons, 1)
    ]
    return json.dumps({"button": items}, ensure_ascii=False)


def _aligo_template(
    item: Mapping[str, Any], sender_key: str, *, category: str | None = None
) -> Template:
    code = str(item.get("templtCode") or "")
    content = str(item.get("templtContent") or "")
    buttons = buttons_from_wire(item.get("buttons"), "linkType")
    status = str(item.get("inspStatus") or "").strip().upper()
    return Template(
        id=code,
        code=code,
        name=str(item.get("templtName") or ""),
        content=content,
        status=_ALIGO_STATUS.get(status, TemplateStatus.PENDING),
        provider_id=PROVIDER_ID,
        category=category,
        buttons=buttons,
        variables=placeholders(content),
        created_at=parse_kst(item.get("cdate")),
        updated_at=parse_kst(item.get("udate")),
        sender_key=sender_key,
        raw=dict(item),
    )


def _aligo_channel(item: Mapping[str, Any]) -> KakaoChannel:
    return KakaoChannel(
        provider_id=PROVIDER_ID,
        sender_key=str(item.get("senderKey") or ""),
        plus_id=str(item["uuid"]) if item.get("uuid") else None,
        name=str(item["name"]) if item.get("name") else None,
        status=str(item["status"]) if item.get("status") else None,
        created_at=parse_kst(item.get("cdate")),
        updated_at=parse_kst(item.get("udate")),
        raw=dict(item),
    )
