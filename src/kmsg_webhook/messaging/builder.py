"""``KMsg.builder()``: assemble a facade step by step, with a persistence strategy.

    builder = (
        KMsg.builder()
        .providers(solapi, iwinv)
        .routing(RoutingConfig(default_provider_id="solapi"))
        .webhooks(runtime)
        .persistence("full", url="sqlite:///app.db")
    )
    kmsg = builder.build()
    builder.tracking.start()   # "log"/"full": the reconciler of the tracked sends

The persistence strategies of the original, mapped onto the stores of the webhook store's URL:
``none`` keeps nothing; ``log`` records every accepted send in the tracking store (and tracks
its delivery status); ``queue`` sends scheduled and bulk messages through the durable job queue;
``full`` does both.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import TYPE_CHECKING

from ..crypto.config import FieldCryptoConfig
from ..crypto.fields import FieldCrypto
from ..errors import ConfigError
from .feed import WebhookFeed, WebhookSink
from .jobs import JobStore, job_store_from_url
from .provider import Provider
from .resilience import Resilience
from .send_queue import SendQueueOptions
from .tracking import ApiFailoverConfig, DeliveryTrackingService, PollingConfig
from .tracking_store import TrackingStore, tracking_store_from_url

if TYPE_CHECKING:
    from .kmsg import KMsg, KMsgDefaults, KMsgHooks, RoutingConfig


class PersistenceStrategy(StrEnum):
    NONE = "none"
    LOG = "log"
    QUEUE = "queue"
    FULL = "full"


class KMsgBuilder:
    """Collects a ``KMsg``'s settings; :meth:`build` makes it (and the stores it needs)."""

    def __init__(self) -> None:
        self._providers: list[Provider] = []
        self._routing: RoutingConfig | None = None
        self._defaults: KMsgDefaults | None = None
        self._hooks: list[KMsgHooks] = []
        self._webhooks: WebhookSink | WebhookFeed | None = None
        self._resilience: Resilience | None = None
        self._strategy = PersistenceStrategy.NONE
        self._url: str | None = None
        self._crypto: FieldCryptoConfig | FieldCrypto | None = None
        self._polling: PollingConfig | None = None
        self._failover: ApiFailoverConfig | None = None
        self._queue_options: SendQueueOptions | None = None
        self.tracking: DeliveryTrackingService | None = None
        self.jobs: JobStore | None = None

    def provider(self, provider: Provider) -> KMsgBuilder:
        self._providers.append(provider)
        return self

    def providers(self, *providers: Provider) -> KMsgBuilder:
        self._providers.extend(providers)
        return self

    def routing(self, routing: RoutingConfig) -> KMsgBuilder:
        self._routing = routing
        return self

    def defaults(self, defaults: KMsgDefaults) -> KMsgBuilder:
        self._defaults = defaults
        return self

    def hooks(self, hooks: KMsgHooks) -> KMsgBuilder:
        self._hooks.append(hooks)
        return self

    def webhooks(self, webhooks: WebhookSink | WebhookFeed) -> KMsgBuilder:
        self._webhooks = webhooks
        return self

    def resilience(self, resilience: Resilience) -> KMsgBuilder:
        self._resilience = resilience
        return self

    def persistence(
        self,
        strategy: PersistenceStrategy | str,
        *,
        url: str | None = None,
        crypto: FieldCryptoConfig | FieldCrypto | None = None,
        polling: PollingConfig | None = None,
        api_failover: ApiFailoverConfig | None = None,
        queue_options: SendQueueOptions | None = None,
    ) -> KMsgBuilder:
        """Where sends are kept (see the module docstring); ``url`` as for the webhook stores
        (default ``$KMSG_WEBHOOK_STORE_URL``, then ``memory://``)."""
        try:
            self._strategy = PersistenceStrategy(strategy)
        except ValueError:
            known = ", ".join(s.value for s in PersistenceStrategy)
            raise ConfigError(f"unknown persistence strategy {strategy!r}: use {known}") from None
        self._url = url
        self._crypto = crypto
        self._polling = polling
        self._failover = api_failover
        self._queue_options = queue_options
        return self

    def build(self) -> KMsg:
        from .kmsg import KMsg

        if not self._providers:
            raise ConfigError("KMsg.builder() needs at least one provider")
        hooks: Sequence[KMsgHooks] = list(self._hooks)
        if self._strategy in (PersistenceStrategy.LOG, PersistenceStrategy.FULL):
            store: TrackingStore = tracking_store_from_url(self._url, crypto=self._crypto)
            self.tracking = DeliveryTrackingService(
                self._providers,
                store=store,
                polling=self._polling,
                api_failover=self._failover,
                webhooks=self._webhooks,
            )
            hooks = [*hooks, self.tracking.hooks()]
        if self._strategy in (PersistenceStrategy.QUEUE, PersistenceStrategy.FULL):
            self.jobs = job_store_from_url(self._url, crypto=self._crypto)
        return KMsg(
            self._providers,
            routing=self._routing,
            defaults=self._defaults,
            hooks=hooks,
            webhooks=self._webhooks,
            jobs=self.jobs,
            queue_options=self._queue_options,
            resilience=self._resilience,
        )
