"""Polls templates under Kakao review and reports when each is approved or rejected."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from .errors import KMsgErrorCode
from .provider import SleepFn, TemplateProvider
from .result import Fail
from .templates import Template, TemplateStatus

logger = logging.getLogger("kmsg_webhook.messaging.template_watch")

#: Called with the template as now reported, the status it had before and its channel's key.
StatusChange = Callable[[Template, TemplateStatus, str | None], Awaitable[None]]

#: A watched template: its channel's sender key (``None``: the provider's default) and its code.
#: Codes are unique only per channel at vendors that keep templates per channel (Aligo).
WatchKey = tuple[str | None, str]


class TemplateStatusWatcher:
    """Every ``interval`` seconds, reads each watched template and reports a final review
    result (APPROVED or REJECTED) through ``on_change``, then forgets the template.

    The background task starts with the first :meth:`watch` and ends by itself when nothing is
    pending. A template that disappears (TEMPLATE_NOT_FOUND) is forgotten; any other read
    failure is logged and retried on the next round.
    """

    def __init__(
        self,
        provider: TemplateProvider,
        on_change: StatusChange,
        *,
        interval: float = 60.0,
        sleep: SleepFn = asyncio.sleep,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._provider = provider
        self._on_change = on_change
        self._interval = interval
        self._sleep = sleep
        self._pending: dict[WatchKey, TemplateStatus] = {}
        self._task: asyncio.Task[None] | None = None
        self.failed_reads = 0

    @property
    def pending(self) -> tuple[WatchKey, ...]:
        """``(sender_key, code)`` of each template still under review."""
        return tuple(self._pending)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def watch(self, template: Template, *, sender_key: str | None = None) -> None:
        """Follow ``template`` of channel ``sender_key`` until its review ends (ignored unless
        it is under review)."""
        key = (sender_key, template.code)
        if not template.status.is_under_review:
            self._pending.pop(key, None)
            return
        self._pending[key] = template.status
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def forget(self, code: str, *, sender_key: str | None = None) -> None:
        self._pending.pop((sender_key, code), None)

    async def poll_once(self) -> None:
        """Read every pending template once and report the finished reviews."""
        for key, before in list(self._pending.items()):
            sender_key, code = key
            read = await self._provider.get_template(code, sender_key=sender_key)
            if isinstance(read, Fail):
                if read.error.code is KMsgErrorCode.TEMPLATE_NOT_FOUND:
                    self._pending.pop(key, None)
                else:
                    self.failed_reads += 1
                    logger.warning("Reading template %s failed: %s", code, read.error)
                continue
            template = read.value
            if template.status.is_under_review:
                if key in self._pending:
                    self._pending[key] = template.status
                continue
            if self._pending.pop(key, None) is None:
                continue  # forgotten while we read it
            try:
                await self._on_change(template, before, sender_key)
            except Exception:
                logger.exception("Template status callback failed for %s", code)

    async def wait(self) -> None:
        """Wait until nothing is pending (the background task has ended)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def aclose(self) -> None:
        """Stop polling (pending templates are kept; a later :meth:`watch` resumes)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def _run(self) -> None:
        while self._pending:
            await self._sleep(self._interval)
            await self.poll_once()
