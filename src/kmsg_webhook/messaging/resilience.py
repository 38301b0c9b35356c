"""Per-provider rate limits and circuit breakers, so a failing vendor does not burn the queue.

``KMsg(..., resilience=Resilience(...))`` applies them to every send:

* **Rate limits**: a token bucket per provider, and optionally per provider and message type
  (``RateLimit(per_second, burst)``). A send waits for a token; nothing is dropped.
* **Circuit breakers**: one per provider. It opens after ``failures`` consecutive transport
  failures (the vendor unreachable: network error, timeout, 503-style unavailability), or when
  transport failures are at least ``error_rate`` of the last ``window``'s sends (with at least
  ``min_sends`` of them). While open, sends to that provider fail at once with
  ``NETWORK_SERVICE_UNAVAILABLE`` and routing moves to the next provider of a ``by_type`` list
  (``RoutingConfig.skip_open_circuits``). After ``open_for`` one probe send is let through
  (half-open): success closes the breaker, failure opens it again. Opening emits
  ``system.provider_error`` (id ``circuit:<provider>:<opened at>``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum

from ..errors import ConfigError
from .provider import SleepFn
from .types import MessageType


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``per_second`` sends on average, bursts of up to ``burst`` (default: one second's)."""

    per_second: float
    burst: int | None = None

    def __post_init__(self) -> None:
        # Written so NaN and infinity fail too: neither is a rate a bucket can refill at.
        if not 0 < self.per_second < math.inf or (self.burst is not None and self.burst < 1):
            raise ConfigError("a rate limit needs per_second > 0 and burst >= 1")


@dataclass(frozen=True, slots=True)
class ProviderLimits:
    """One provider's limits: ``default`` for every send, ``by_type`` for one channel on top."""

    default: RateLimit | None = None
    by_type: Mapping[MessageType, RateLimit] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CircuitBreakerConfig:
    failures: int = 5
    error_rate: float = 0.5
    window: timedelta = timedelta(seconds=60)
    min_sends: int = 20
    open_for: timedelta = timedelta(seconds=30)

    def __post_init__(self) -> None:
        if self.failures < 1 or self.min_sends < 1 or not 0 < self.error_rate <= 1:
            raise ConfigError("failures and min_sends must be >= 1, error_rate in (0, 1]")
        if self.window <= timedelta(0) or self.open_for <= timedelta(0):
            raise ConfigError("window and open_for must be positive")


@dataclass(frozen=True, slots=True)
class Resilience:
    """Rate limits by provider id, and the breaker settings (``None``: no breakers)."""

    limits: Mapping[str, ProviderLimits] = field(default_factory=dict)
    breaker: CircuitBreakerConfig | None = field(default_factory=CircuitBreakerConfig)


class TokenBucket:
    """A token bucket; :meth:`acquire` waits for a token (first come, first served)."""

    def __init__(
        self,
        limit: RateLimit,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: SleepFn = asyncio.sleep,
    ) -> None:
        self._rate = limit.per_second
        self._capacity = float(limit.burst or max(1, round(limit.per_second)))
        self._tokens = self._capacity
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()
        self._lock = asyncio.Lock()

    async def acquire(self) -> float:
        """Take a token; returns how long this call waited for it, in seconds."""
        started = self._clock()
        async with self._lock:  # waiters queue here, so tokens go out in arrival order
            while True:
                now = self._clock()
                self._tokens = min(
                    self._capacity, self._tokens + (now - self._updated) * self._rate
                )
                self._updated = now
                # Within rounding of a whole token counts as one: a wait shorter than the
                # clock's resolution would never move it.
                if self._tokens >= 1 - 1e-9:
                    self._tokens = max(0.0, self._tokens - 1)
                    return now - started
                await self._sleep((1 - self._tokens) / self._rate)


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """One provider's breaker (see the module docstring)."""

    def __init__(
        self, config: CircuitBreakerConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._config = config
        self._clock = clock
        self.state = CircuitState.CLOSED
        self._consecutive = 0
        self._recent: deque[tuple[float, bool]] = deque()  # (when, transport failure)
        self._opened_at = 0.0
        self._probing = False

    def resting(self) -> bool:
        """Open and not yet due a probe: routing passes this provider by."""
        return (
            self.state is CircuitState.OPEN
            and self._clock() - self._opened_at < self._config.open_for.total_seconds()
        )

    def allow(self) -> bool:
        """Whether a send may go to the provider now (half-open: one probe at a time)."""
        if self.state is CircuitState.OPEN:
            if self.resting():
                return False
            self.state = CircuitState.HALF_OPEN
        if self.state is CircuitState.HALF_OPEN:
            if self._probing:
                return False
            self._probing = True
        return True

    def record(self, *, transport_failure: bool) -> bool:
        """Count one send's outcome; returns True when this outcome opened the breaker."""
        now = self._clock()
        if self.state is CircuitState.HALF_OPEN:
            self._probing = False
            if transport_failure:
                return self._open(now)
            self._close()
            return False
        self._recent.append((now, transport_failure))
        horizon = now - self._config.window.total_seconds()
        while self._recent and self._recent[0][0] < horizon:
            self._recent.popleft()
        self._consecutive = self._consecutive + 1 if transport_failure else 0
        if self.state is CircuitState.OPEN:
            return False
        failed = sum(1 for _, bad in self._recent if bad)
        too_many = self._consecutive >= self._config.failures
        too_often = len(
            self._recent
        ) >= self._config.min_sends and failed >= self._config.error_rate * len(self._recent)
        return self._open(now) if too_many or too_often else False

    def _open(self, now: float) -> bool:
        self.state = CircuitState.OPEN
        self._opened_at = now
        return True

    def _close(self) -> None:
        self.state = CircuitState.CLOSED
        self._consecutive = 0
        self._recent.clear()


class ProviderGuards:
    """The limiters and breakers of one ``KMsg``, made on first use."""

    def __init__(
        self,
        config: Resilience,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: SleepFn = asyncio.sleep,
    ) -> None:
        self.config = config
        self._clock = clock
        self._sleep = sleep
        self._buckets: dict[tuple[str, MessageType | None], TokenBucket] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        #: Per provider: sends that had to wait for a token, and the seconds they waited.
        self.rate_waits: Counter[str] = Counter()
        self.rate_wait_seconds: dict[str, float] = {}

    def circuit_states(self) -> dict[str, CircuitState]:
        """The state of every breaker made so far, by provider id."""
        return {provider_id: b.state for provider_id, b in self._breakers.items()}

    def breaker(self, provider_id: str) -> CircuitBreaker | None:
        if self.config.breaker is None:
            return None
        found = self._breakers.get(provider_id)
        if found is None:
            found = self._breakers[provider_id] = CircuitBreaker(
                self.config.breaker, clock=self._clock
            )
        return found

    def resting(self, provider_id: str) -> bool:
        """Whether routing should pass this provider by (open and not yet due a probe)."""
        breaker = self.breaker(provider_id)
        return breaker is not None and breaker.resting()

    async def wait_for_tokens(self, provider_id: str, message_type: MessageType) -> None:
        limits = self.config.limits.get(provider_id)
        if limits is None:
            return
        for key, limit in (
            ((provider_id, None), limits.default),
            ((provider_id, message_type), limits.by_type.get(message_type)),
        ):
            if limit is None:
                continue
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(
                    limit, clock=self._clock, sleep=self._sleep
                )
            waited = await bucket.acquire()
            if waited > 0:
                self.rate_waits[provider_id] += 1
                self.rate_wait_seconds[provider_id] = (
                    self.rate_wait_seconds.get(provider_id, 0.0) + waited
                )
