"""The call shapes of the runtime fixtures in ``tests/conftest.py``, for annotations."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from kmsg_webhook import WebhookEvent, WebhookRuntimeService

#: ``make_runtime(config=None, *, security=None, **kwargs)``
RuntimeFactory = Callable[..., Awaitable[WebhookRuntimeService]]
#: ``make_event(event_id=None, type="message.sent", **fields)``
EventFactory = Callable[..., WebhookEvent]
#: ``wait_until(predicate, within=10.0, what="")``
WaitUntil = Callable[..., Awaitable[None]]
