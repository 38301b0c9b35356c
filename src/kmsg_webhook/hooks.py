"""Delivery hooks: what the dispatcher did, as typed events, for logs, metrics and services.

Pass ``hooks=DeliveryHooks(on_attempt=..., on_settled=..., on_endpoint_status=...)`` (or a
sequence of them) to :class:`~kmsg_webhook.WebhookRuntimeService` to feed OpenTelemetry or any
monitoring system. Hooks are plain (synchronous) callables run on the event loop right after the
outcome is recorded in the store; they should return quickly. An ``async def`` hook is refused
with :class:`~kmsg_webhook.errors.ConfigError` (nothing would await it): a hook that needs I/O
hands the event to a queue or task of its own. An exception in a hook is logged and never reaches
delivery.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TypeVar

from .errors import ConfigError
from .models import DeliveryStatus, EndpointStatus

logger = logging.getLogger("kmsg_webhook.hooks")


@dataclass(frozen=True, slots=True)
class AttemptEvent:
    """One HTTP attempt, as recorded. ``status`` is the delivery's status after it:
    ``success``, ``pending`` (a retry is scheduled at ``next_attempt_at``), ``failed`` (not
    retryable, or refused) or ``exhausted`` (retries used up)."""

    delivery_id: str
    endpoint_id: str
    event_type: str
    attempt_number: int
    status: DeliveryStatus
    http_status: int | None
    latency_ms: float
    error: str | None
    next_attempt_at: datetime | None
    at: datetime


@dataclass(frozen=True, slots=True)
class SettledEvent:
    """A delivery reached a final status (``success``, ``failed`` or ``exhausted``).

    ``attempts`` counts the HTTP attempts made. ``sent`` is false when the delivery was
    settled without a request (its endpoint was removed or disabled, or its values did not
    open). ``created_at`` is when the event was emitted, so ``completed_at - created_at`` is
    the emit-to-settled lag."""

    delivery_id: str
    endpoint_id: str
    event_type: str
    status: DeliveryStatus
    attempts: int
    sent: bool
    created_at: datetime
    completed_at: datetime
    error: str | None


class EndpointChange(StrEnum):
    """What happened to an endpoint."""

    #: Disabled automatically (health policy or ``410 Gone``): status ``error``.
    DISABLED = "disabled"
    #: Set back to ``active`` through the runtime (an operator re-enabled it).
    ENABLED = "enabled"
    #: A delivery succeeded after deliveries that ended failed or exhausted.
    RECOVERED = "recovered"


@dataclass(frozen=True, slots=True)
class EndpointStatusEvent:
    """An endpoint changed health or status."""

    endpoint_id: str
    url: str
    change: EndpointChange
    status: EndpointStatus
    reason: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class DeliveryHooks:
    """Callables the runtime calls after it records what happened; each is optional."""

    on_attempt: Callable[[AttemptEvent], None] | None = None
    on_settled: Callable[[SettledEvent], None] | None = None
    on_endpoint_status: Callable[[EndpointStatusEvent], None] | None = None

    def __post_init__(self) -> None:
        for name in ("on_attempt", "on_settled", "on_endpoint_status"):
            hook = getattr(self, name)
            if hook is None:
                continue
            if not callable(hook):
                raise ConfigError(f"DeliveryHooks.{name} must be callable, got {hook!r}")
            if inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(
                getattr(hook, "__call__", None)  # noqa: B004 - an object with async __call__
            ):
                raise ConfigError(
                    f"DeliveryHooks.{name} is a coroutine function, which nothing would "
                    "await: pass a plain function (hand the event to a task or queue of your "
                    "own for I/O)"
                )


_E = TypeVar("_E")


class HookSet:
    """The runtime's log hooks, then the given :class:`DeliveryHooks`, called in order; a failing
    hook is logged and skipped.

    ``log_successes`` says whether the log hooks want successful attempts now (the logger's
    level): when neither they nor any given hook does, the dispatcher builds no events for
    successes, the hot path.
    """

    __slots__ = ("_attempt", "_endpoint", "_log_successes", "_settled", "_watchers")

    def __init__(
        self,
        hooks: Sequence[DeliveryHooks] = (),
        *,
        log: DeliveryHooks | None = None,
        log_successes: Callable[[], bool] = lambda: False,
    ) -> None:
        self._attempt: list[Callable[[AttemptEvent], None]] = []
        self._settled: list[Callable[[SettledEvent], None]] = []
        self._endpoint: list[Callable[[EndpointStatusEvent], None]] = []
        self._watchers = 0  # given hooks that watch attempts or settlements
        self._log_successes = log_successes if log is not None else lambda: False
        if log is not None:
            self._add(log)
        for hooks_ in hooks:
            self.add(hooks_)

    def add(self, hooks: DeliveryHooks) -> None:
        self._add(hooks)
        if hooks.on_attempt is not None or hooks.on_settled is not None:
            self._watchers += 1

    def _add(self, hooks: DeliveryHooks) -> None:
        if hooks.on_attempt is not None:
            self._attempt.append(hooks.on_attempt)
        if hooks.on_settled is not None:
            self._settled.append(hooks.on_settled)
        if hooks.on_endpoint_status is not None:
            self._endpoint.append(hooks.on_endpoint_status)

    def wants_successes(self) -> bool:
        """Whether anyone listens for successful attempts (failures are always reported)."""
        return bool(self._watchers) or self._log_successes()

    def attempt(self, event: AttemptEvent) -> None:
        _call_each(self._attempt, event)

    def settled(self, event: SettledEvent) -> None:
        _call_each(self._settled, event)

    def endpoint_status(self, event: EndpointStatusEvent) -> None:
        _call_each(self._endpoint, event)


def _call_each(callables: list[Callable[[_E], None]], event: _E) -> None:
    for call in callables:
        try:
            call(event)
        except Exception:
            logger.exception("a delivery hook (%r) raised; delivery goes on", call)
