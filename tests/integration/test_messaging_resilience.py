"""Per-provider token buckets and circuit breakers, alone and inside KMsg (clock and sleep
injected: nothing here waits)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from kmsg_webhook.errors import ConfigError
from kmsg_webhook.messaging import (
    Fail,
    KMsg,
    KMsgErrorCode,
    MessageType,
    MockProvider,
    Ok,
    RoutingConfig,
)
from kmsg_webhook.messaging.resilience import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
    ProviderGuards,
    ProviderLimits,
    RateLimit,
    Resilience,
    TokenBucket,
)
from support.fakes.util import FlakySink


class FakeTime:
    """A monotonic clock and a sleep that advances it instead of waiting."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


async def test_token_bucket_allows_a_burst_then_paces() -> None:
    time = FakeTime()
    bucket = TokenBucket(RateLimit(per_second=10, burst=2), clock=time, sleep=time.sleep)
    for _ in range(4):
        await bucket.acquire()
    assert time.slept == [0.1, 0.1]
    time.now += 5  # idle: the bucket refills to its burst, no more
    for _ in range(3):
        await bucket.acquire()
    assert time.slept == [0.1, 0.1, 0.1]
    with pytest.raises(ConfigError):
        RateLimit(per_second=0)


def test_breaker_opens_after_consecutive_transport_failures_then_probes() -> None:
    time = FakeTime()
    config = CircuitBreakerConfig(failures=3, open_for=timedelta(seconds=10))
    breaker = CircuitBreaker(config, clock=time)
    assert not breaker.record(transport_failure=True)
    assert not breaker.record(transport_failure=False)  # a success resets the streak
    assert not breaker.record(transport_failure=True)
    assert not breaker.record(transport_failure=True)
    assert breaker.record(transport_failure=True)  # the third in a row opens it
    assert breaker.state is CircuitState.OPEN and breaker.resting()
    assert not breaker.allow()
    time.now += 10
    assert breaker.allow()  # the probe
    assert breaker.state is CircuitState.HALF_OPEN
    assert not breaker.allow()  # one probe at a time
    assert breaker.record(transport_failure=True)  # the probe failed: open again
    assert not breaker.allow()
    time.now += 10
    assert breaker.allow()
    assert not breaker.record(transport_failure=False)
    assert breaker.state is CircuitState.CLOSED and breaker.allow()


def test_breaker_opens_on_the_error_rate_over_its_window() -> None:
    time = FakeTime()
    config = CircuitBreakerConfig(failures=100, error_rate=0.5, min_sends=10)
    breaker = CircuitBreaker(config, clock=time)
    opened = [breaker.record(transport_failure=n % 2 == 0) for n in range(9)]
    assert not any(opened)  # fewer than min_sends
    assert breaker.record(transport_failure=False) is True  # 5 of 10 failed
    fresh = CircuitBreaker(config, clock=time)
    for n in range(10):
        fresh.record(transport_failure=n == 0)
        time.now += 10  # the old failures leave the 60 s window
    assert fresh.state is CircuitState.CLOSED


def guarded(time: FakeTime, **config: object) -> ProviderGuards:
    breaker = CircuitBreakerConfig(failures=2, open_for=timedelta(seconds=30))
    return ProviderGuards(
        Resilience(breaker=breaker, **config),  # type: ignore[arg-type]
        clock=time,
        sleep=time.sleep,
    )


async def test_an_open_circuit_moves_traffic_and_emits_one_provider_error() -> None:
    time, sink = FakeTime(), FlakySink()
    first, second = MockProvider(id="first"), MockProvider(id="second")
    routing = RoutingConfig(by_type={MessageType.SMS: ["first", "second"]})
    kmsg = KMsg([first, second], routing=routing, resilience=guarded(time), webhooks=sink)
    first.fail_next(2, KMsgErrorCode.NETWORK_ERROR)
    for n in range(2):
        outcome = await kmsg.send({"to": "01012345678", "text": f"a{n}"})
        assert isinstance(outcome, Fail)
    opened = [e for e in sink.events if e.id.startswith("circuit:first:")]
    assert len(opened) == 1 and opened[0].type == "system.provider_error"
    moved = await kmsg.send({"to": "01012345678", "text": "b"})
    assert isinstance(moved, Ok) and moved.value.provider_id == "second"
    time.now += 30  # due a probe: routing tries the first provider again
    probe = await kmsg.send({"to": "01012345678", "text": "c"})
    assert isinstance(probe, Ok) and probe.value.provider_id == "first"
    assert len(first.calls) == 3 and len(second.calls) == 1


async def test_without_another_provider_an_open_circuit_fails_fast() -> None:
    time, sink = FakeTime(), FlakySink()
    only = MockProvider(id="only")
    kmsg = KMsg([only], resilience=guarded(time), webhooks=sink)
    only.fail_next(2, KMsgErrorCode.NETWORK_TIMEOUT)
    for _ in range(2):
        await kmsg.send({"to": "01012345678", "text": "x"})
    refused = await kmsg.send({"to": "01012345678", "text": "y", "messageId": "refused"})
    assert isinstance(refused, Fail)
    assert refused.error.code is KMsgErrorCode.NETWORK_SERVICE_UNAVAILABLE
    assert "circuit breaker" in refused.error.message
    assert len(only.calls) == 2  # the refused message never reached the vendor
    assert "refused:message.failed" in sink.stored
    assert "refused:system.provider_error" not in sink.stored
    # A vendor that answers (even with a refusal) is not a transport failure.
    time.now += 30
    only.fail_next(1, KMsgErrorCode.INSUFFICIENT_BALANCE)
    await kmsg.send({"to": "01012345678", "text": "z"})
    assert isinstance(await kmsg.send({"to": "01012345678", "text": "w"}), Ok)


async def test_rate_limits_per_provider_and_per_type() -> None:
    time = FakeTime()
    limits = {
        "mock": ProviderLimits(
            default=RateLimit(per_second=100, burst=100),
            by_type={MessageType.LMS: RateLimit(per_second=2, burst=1)},
        )
    }
    kmsg = KMsg([MockProvider()], resilience=guarded(time, limits=limits))
    for n in range(3):
        await kmsg.send({"to": "01012345678", "text": f"short {n}"})
    assert time.slept == []  # SMS: within the provider's limit
    for n in range(3):
        await kmsg.send({"to": "01012345678", "text": "긴 문자 " * 20 + str(n)})  # LMS
    assert time.slept == [0.5, 0.5]
