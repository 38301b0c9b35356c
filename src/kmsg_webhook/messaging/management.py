"""``ProviderManager``: template, Kakao channel and sender-number operations on one provider that
publish ``template.*``, ``channel.*`` and ``sender_number.*`` webhook events.

Events go through the same :class:`~kmsg_webhook.messaging.feed.WebhookFeed` as ``message.*``
(pass ``kmsg.feed`` to share its buffer and retries), only after the vendor accepted the
operation; a failed operation returns its ``Fail`` and emits nothing. Templates that enter
review are followed by a :class:`TemplateStatusWatcher` that emits ``template.approved`` or
``template.rejected`` when Kakao decides.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from ..events import WebhookEvent, WebhookEventType
from .channels import ChannelBindings, KakaoChannel, KakaoChannelCategories
from .errors import KMsgError, UnsupportedOperationError, invalid_request
from .feed import (
    WebhookFeed,
    WebhookSink,
    as_feed,
    channel_event,
    sender_number_event,
    template_event,
)
from .provider import (
    KakaoChannelProvider,
    Provider,
    SleepFn,
    TemplateInspectionProvider,
    TemplateProvider,
    now_utc,
)
from .result import Fail, Ok, Result
from .template_watch import TemplateStatusWatcher
from .templates import Template, TemplateInput, TemplateStatus, TemplateUpdate

_REVIEW_EVENTS = {
    TemplateStatus.APPROVED: WebhookEventType.TEMPLATE_APPROVED,
    TemplateStatus.REJECTED: WebhookEventType.TEMPLATE_REJECTED,
}


class ProviderManager:
    """The management half of one provider.

    A method the provider has no API for returns ``Fail(UnsupportedOperationError)``.
    ``channels`` lets ``sender_key=`` name a channel by alias or plusId. ``watch_interval``
    (seconds, ``None`` to turn it off) paces the review watcher.
    """

    def __init__(
        self,
        provider: Provider,
        *,
        webhooks: WebhookSink | WebhookFeed | None = None,
        channels: ChannelBindings | None = None,
        watch_interval: float | None = 60.0,
        clock: Callable[[], datetime] = now_utc,
        sleep: SleepFn = asyncio.sleep,
    ) -> None:
        self.provider = provider
        self._owns_feed = webhooks is not None and not isinstance(webhooks, WebhookFeed)
        self._feed = as_feed(webhooks)
        self._channels = channels or ChannelBindings()
        self._clock = clock
        self.watcher: TemplateStatusWatcher | None = None
        if watch_interval is not None and isinstance(provider, TemplateProvider):
            self.watcher = TemplateStatusWatcher(
                provider, self._review_finished, interval=watch_interval, sleep=sleep
            )

    @property
    def provider_id(self) -> str:
        return self.provider.id

    # capability lookup -----------------------------------------------------------------

    def _refuse(self, operation: str) -> Fail[KMsgError]:
        return Fail(UnsupportedOperationError(self.provider_id, operation))

    def _templates(self, operation: str) -> Result[TemplateProvider, KMsgError]:
        p = self.provider
        return Ok(p) if isinstance(p, TemplateProvider) else self._refuse(operation)

    def _inspection(self, operation: str) -> Result[TemplateInspectionProvider, KMsgError]:
        p = self.provider
        return Ok(p) if isinstance(p, TemplateInspectionProvider) else self._refuse(operation)

    def _kakao(self, operation: str) -> Result[KakaoChannelProvider, KMsgError]:
        p = self.provider
        return Ok(p) if isinstance(p, KakaoChannelProvider) else self._refuse(operation)

    def _sender_key(self, name: str | None) -> str | None:
        if name is None:
            return None
        binding = self._channels.resolve(name)
        return binding.sender_key if binding is not None else name

    async def _publish(self, event: WebhookEvent) -> None:
        if self._feed is not None:
            await self._feed.publish(event)

    async def _template_changed(
        self,
        event_type: WebhookEventType,
        template: Template,
        sender_key: str | None,
        previous: TemplateStatus | None = None,
    ) -> None:
        await self._publish(
            template_event(
                event_type,
                template,
                timestamp=self._clock(),
                sender_key=sender_key,
                previous_status=previous,
            )
        )

    async def _review_finished(
        self, template: Template, previous: TemplateStatus, sender_key: str | None
    ) -> None:
        await self._template_changed(
            _REVIEW_EVENTS[template.status], template, sender_key, previous
        )

    def _follow(self, template: Template, sender_key: str | None) -> None:
        if self.watcher is not None:
            # The channel the vendor reports wins, so one template is never watched twice.
            self.watcher.watch(template, sender_key=template.sender_key or sender_key)

    async def watch_pending(
        self, *, sender_keys: Iterable[str | None] = (None,), page_size: int = 100
    ) -> Result[tuple[Template, ...], KMsgError]:
        """Follow every template the vendor reports under review (``INSPECTION``), e.g. after a
        restart: the watcher keeps no durable state. Returns the templates now watched.

        Vendors that keep templates per channel (Aligo) list one channel at a time: pass each
        channel's sender key (or alias / plusId); ``None`` is the provider's configured channel.
        """
        api = self._templates("list_templates")
        if isinstance(api, Fail):
            return api
        if self.watcher is None:
            return Fail(invalid_request("the review watcher is off (watch_interval=None)"))
        found: list[Template] = []
        for name in sender_keys:
            key = self._sender_key(name)
            page = 1
            while True:
                listed = await api.value.list_templates(
                    status=TemplateStatus.INSPECTION, page=page, limit=page_size, sender_key=key
                )
                if isinstance(listed, Fail):
                    return listed
                for template in listed.value:
                    self._follow(template, key)
                found.extend(listed.value)
                if len(listed.value) < page_size:
                    break
                page += 1
        return Ok(tuple(found))

    # templates -------------------------------------------------------------------------

    async def create_template(
        self, template: TemplateInput, *, sender_key: str | None = None
    ) -> Result[Template, KMsgError]:
        """Submit a template; emits ``template.created``."""
        api = self._templates("create_template")
        if isinstance(api, Fail):
            return api
        key = self._sender_key(sender_key)
        created = await api.value.create_template(template, sender_key=key)
        if isinstance(created, Ok):
            await self._template_changed(WebhookEventType.TEMPLATE_CREATED, created.value, key)
            self._follow(created.value, key)
        return created

    async def update_template(
        self, code: str, update: TemplateUpdate, *, sender_key: str | None = None
    ) -> Result[Template, KMsgError]:
        """Change a template; emits ``template.updated`` (it goes back to review)."""
        api = self._templates("update_template")
        if isinstance(api, Fail):
            return api
        key = self._sender_key(sender_key)
        updated = await api.value.update_template(code, update, sender_key=key)
        if isinstance(updated, Ok):
            await self._template_changed(WebhookEventType.TEMPLATE_UPDATED, updated.value, key)
            self._follow(updated.value, key)
        return updated

    async def delete_template(
        self, code: str, *, sender_key: str | None = None
    ) -> Result[None, KMsgError]:
        """Delete a template; emits ``template.deleted``."""
        api = self._templates("delete_template")
        if isinstance(api, Fail):
            return api
        key = self._sender_key(sender_key)
        current = await api.value.get_template(code, sender_key=key)
        deleted = await api.value.delete_template(code, sender_key=key)
        if isinstance(deleted, Ok):
            gone = (
                current.value
                if isinstance(current, Ok)
                else Template(code, code, "", "", TemplateStatus.PENDING, self.provider_id)
            )
            if self.watcher is not None:
                self.watcher.forget(code, sender_key=gone.sender_key or key)
            await self._template_changed(WebhookEventType.TEMPLATE_DELETED, gone, key)
        return deleted

    async def get_template(
        self, code: str, *, sender_key: str | None = None
    ) -> Result[Template, KMsgError]:
        api = self._templates("get_template")
        if isinstance(api, Fail):
            return api
        return await api.value.get_template(code, sender_key=self._sender_key(sender_key))

    async def list_templates(
        self,
        *,
        status: TemplateStatus | None = None,
        page: int = 1,
        limit: int = 15,
        sender_key: str | None = None,
    ) -> Result[tuple[Template, ...], KMsgError]:
        api = self._templates("list_templates")
        if isinstance(api, Fail):
            return api
        return await api.value.list_templates(
            status=status, page=page, limit=limit, sender_key=self._sender_key(sender_key)
        )

    async def request_template_inspection(
        self, code: str, *, sender_key: str | None = None
    ) -> Result[None, KMsgError]:
        """Ask Kakao to review ``code``; the watcher then follows it to approval or rejection."""
        api = self._inspection("request_template_inspection")
        if isinstance(api, Fail):
            return api
        key = self._sender_key(sender_key)
        requested = await api.value.request_template_inspection(code, sender_key=key)
        if isinstance(requested, Ok) and self.watcher is not None:
            reader = self._templates("get_template")
            if isinstance(reader, Ok):
                current = await reader.value.get_template(code, sender_key=key)
                if isinstance(current, Ok):
                    self._follow(current.value, key)
        return requested

    # Kakao channels --------------------------------------------------------------------

    async def list_kakao_channels(
        self, *, plus_id: str | None = None, sender_key: str | None = None
    ) -> Result[tuple[KakaoChannel, ...], KMsgError]:
        api = self._kakao("list_kakao_channels")
        if isinstance(api, Fail):
            return api
        return await api.value.list_kakao_channels(
            plus_id=plus_id, sender_key=self._sender_key(sender_key)
        )

    async def list_kakao_channel_categories(self) -> Result[KakaoChannelCategories, KMsgError]:
        api = self._kakao("list_kakao_channel_categories")
        if isinstance(api, Fail):
            return api
        return await api.value.list_kakao_channel_categories()

    async def request_kakao_channel_auth(
        self, plus_id: str, phone_number: str
    ) -> Result[None, KMsgError]:
        """Have Kakao send an auth number to the channel admin's phone."""
        api = self._kakao("request_kakao_channel_auth")
        if isinstance(api, Fail):
            return api
        return await api.value.request_kakao_channel_auth(plus_id, phone_number)

    async def add_kakao_channel(
        self, plus_id: str, auth_num: str, phone_number: str, category_code: str
    ) -> Result[KakaoChannel, KMsgError]:
        """Register a channel with its auth number; emits ``channel.created`` and, since the
        auth number proves the admin phone, ``channel.verified``."""
        api = self._kakao("add_kakao_channel")
        if isinstance(api, Fail):
            return api
        added = await api.value.add_kakao_channel(plus_id, auth_num, phone_number, category_code)
        if isinstance(added, Ok):
            now = self._clock()
            for event_type in (WebhookEventType.CHANNEL_CREATED, WebhookEventType.CHANNEL_VERIFIED):
                await self._publish(channel_event(event_type, added.value, timestamp=now))
        return added

    # sender numbers --------------------------------------------------------------------

    async def sender_number_added(self, number: str) -> None:
        """Report a sender number registered with the vendor (``sender_number.added``).

        None of the vendors has a sender-number API: numbers are registered in their consoles,
        so the application reports the step it took.
        """
        await self._publish_number(WebhookEventType.SENDER_NUMBER_ADDED, number)

    async def sender_number_verified(self, number: str) -> None:
        """Report a sender number the vendor verified (``sender_number.verified``)."""
        await self._publish_number(WebhookEventType.SENDER_NUMBER_VERIFIED, number)

    async def _publish_number(self, event_type: WebhookEventType, number: str) -> None:
        mask = self._feed.config.mask_recipients if self._feed is not None else True
        await self._publish(
            sender_number_event(
                event_type, self.provider_id, number, timestamp=self._clock(), mask=mask
            )
        )

    async def aclose(self) -> None:
        """Stop the watcher and, when this manager wrapped a bare sink, its feed."""
        if self.watcher is not None:
            await self.watcher.aclose()
        if self._feed is not None and self._owns_feed:
            await self._feed.aclose()

    async def __aenter__(self) -> ProviderManager:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
