"""How many attempts each endpoint may have in flight, learned from how it answers.

An in-flight attempt is a coroutine waiting on a socket, so the global limit can be sized for
I/O; what must not happen is that slow endpoints take the slots healthy ones need. Each
endpoint's limit adapts like TCP's congestion window (AIMD):

- it starts at 1 and grows by one with every fast success (an answer within a quarter of
  ``timeout_ms``), up to ``max_concurrency_per_endpoint``;
- a ``429``/``503`` answer halves it (the receiver says it is overloaded);
- an attempt that gets no HTTP answer (a timeout or a network error) drops it to 1;
- after :data:`STALLS_BEFORE_REST` timeouts in a row (no answer within ``timeout_ms``; an
  answer of any kind ends the series) the endpoint *rests*: claims leave its rows in the store,
  untouched, for the length of the rest, and one attempt probes it when the rest ends (at
  limit 1). A fast network error (connection refused) holds no
  slot for long, so it does not make an endpoint rest. Rests start at
  ``max(timeout_ms, retry_delay_ms)`` and grow by ``backoff_multiplier`` up to
  ``max_delay_ms``; any success ends the series.

The state lives in each dispatcher (each worker process learns by itself) and starts fresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from .config import WebhookConfig
from .retry import backoff_ms

#: Timeouts in a row after which an endpoint rests.
STALLS_BEFORE_REST = 2
_OVERLOADED = frozenset({429, 503})


@dataclass(slots=True)
class _Lane:
    limit: int = 1
    stalls: int = 0  # timeouts in a row
    rests: int = 0  # rests in a row, for their growing length
    resting_until: datetime | None = None


class Pacing:
    """Per-endpoint concurrency limits and rests (see the module docstring)."""

    def __init__(self, config: WebhookConfig) -> None:
        self._max = config.max_concurrency_per_endpoint
        self._fast_ms = config.timeout_ms / 4
        self._config = config
        self._lanes: dict[str, _Lane] = {}
        # Resting endpoint → when its rest ends: a claim finds the resting endpoints without a
        # walk over every endpoint this process has sent to.
        self._resting: dict[str, datetime] = {}

    def limit(self, endpoint_id: str) -> int:
        """How many attempts to ``endpoint_id`` may be in flight now."""
        lane = self._lanes.get(endpoint_id)
        return 1 if lane is None else lane.limit

    def holding(self, endpoint_id: str) -> int:
        """How many rows a worker may hold for ``endpoint_id`` (queued plus in flight): two
        rounds of its limit, so its next round is at hand; only its limit while its last
        attempt got no answer, so no row waits behind a probe that may start a rest."""
        lane = self._lanes.get(endpoint_id)
        if lane is None:
            return 2
        return lane.limit if lane.stalls else 2 * lane.limit

    def resting_until(self, endpoint_id: str, now: datetime) -> datetime | None:
        """When the endpoint's rest ends, or ``None`` when it is not resting."""
        lane = self._lanes.get(endpoint_id)
        if lane is None or lane.resting_until is None:
            return None
        if lane.resting_until <= now:
            self._end_rest(endpoint_id, lane)
            return None
        return lane.resting_until

    def resting(self, now: datetime) -> set[str]:
        """The endpoints resting at ``now``: a claim leaves their rows alone."""
        for endpoint_id in [e for e, until in self._resting.items() if until <= now]:
            self._end_rest(endpoint_id, self._lanes[endpoint_id])
        return set(self._resting)

    def stalling(self, now: datetime) -> set[str]:
        """The endpoints resting at ``now`` and those whose last attempt got no answer within
        ``timeout_ms`` (an attempt to them in flight will likely take that long): a flush does
        not wait for what it finds held for them."""
        return self.resting(now) | {e for e, lane in self._lanes.items() if lane.stalls}

    def _end_rest(self, endpoint_id: str, lane: _Lane) -> None:
        lane.resting_until = None  # the rest is over: one probe (limit 1) goes out
        del self._resting[endpoint_id]

    def observe(
        self,
        endpoint_id: str,
        *,
        http_status: int | None,
        latency_ms: float,
        now: datetime,
        timed_out: bool = False,
    ) -> bool:
        """Learn from one attempt's result (``timed_out``: no answer within ``timeout_ms``);
        returns ``True`` when the endpoint starts a rest."""
        lane = self._lanes.get(endpoint_id)
        if lane is None:
            lane = self._lanes[endpoint_id] = _Lane()
        if http_status is None:
            lane.limit = 1
            if not timed_out:
                return False  # a network error: one slot, no rest
            lane.stalls += 1
            resting = lane.resting_until is not None and lane.resting_until > now
            if lane.stalls < STALLS_BEFORE_REST or resting:
                return False  # not yet, or an attempt sent before the rest began
            rest_ms = self._rest_ms(lane.rests + 1)
            if rest_ms <= 0:
                return False
            lane.rests += 1
            lane.resting_until = now + timedelta(milliseconds=rest_ms)
            self._resting[endpoint_id] = lane.resting_until
            return True
        lane.stalls = 0
        if http_status in _OVERLOADED:
            lane.limit = max(1, lane.limit // 2)
        elif 200 <= http_status < 300:
            lane.rests = 0
            if latency_ms <= self._fast_ms and lane.limit < self._max:
                lane.limit += 1
        return False

    def _rest_ms(self, n: int) -> float:
        config = self._config
        return backoff_ms(
            min(n, 32),  # the cap is reached long before; keeps the power finite
            base_ms=max(config.timeout_ms, config.retry_delay_ms),
            multiplier=config.backoff_multiplier,
            cap_ms=config.max_delay_ms,
            jitter=False,
        )
