"""Per-endpoint limits that adapt to how an endpoint answers (``kmsg_webhook.pacing``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kmsg_webhook import WebhookConfig
from kmsg_webhook.pacing import STALLS_BEFORE_REST, Pacing

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
CONFIG = WebhookConfig(
    timeout_ms=2_000, retry_delay_ms=500, backoff_multiplier=2, max_delay_ms=10_000
)


def test_a_new_endpoint_starts_at_one_and_grows_with_fast_answers_up_to_the_cap() -> None:
    pacing = Pacing(CONFIG)
    assert pacing.limit("ep") == 1
    for n in range(2, 11):
        pacing.observe("ep", http_status=204, latency_ms=20, now=T0)
        assert pacing.limit("ep") == n
    pacing.observe("ep", http_status=204, latency_ms=20, now=T0)
    assert pacing.limit("ep") == CONFIG.max_concurrency_per_endpoint


def test_slow_successes_do_not_grow_and_overload_answers_halve() -> None:
    pacing = Pacing(CONFIG)
    pacing.observe("ep", http_status=200, latency_ms=1_500, now=T0)  # past timeout / 4
    assert pacing.limit("ep") == 1
    for _ in range(7):
        pacing.observe("ep", http_status=200, latency_ms=10, now=T0)
    assert pacing.limit("ep") == 8
    pacing.observe("ep", http_status=503, latency_ms=10, now=T0)
    assert pacing.limit("ep") == 4
    pacing.observe("ep", http_status=429, latency_ms=10, now=T0)
    assert pacing.limit("ep") == 2
    pacing.observe("ep", http_status=500, latency_ms=10, now=T0)  # an answer, not overload
    assert pacing.limit("ep") == 2


def test_timeouts_drop_to_one_then_rest_for_growing_spells_until_a_success() -> None:
    pacing = Pacing(CONFIG)
    for _ in range(5):
        pacing.observe("ep", http_status=204, latency_ms=10, now=T0)
    assert pacing.observe("ep", http_status=None, latency_ms=2_000, timed_out=True, now=T0) is False
    assert pacing.limit("ep") == 1
    assert pacing.resting_until("ep", T0) is None
    assert STALLS_BEFORE_REST == 2
    assert pacing.observe("ep", http_status=None, latency_ms=2_000, timed_out=True, now=T0) is True
    # The first rest lasts max(timeout_ms, retry_delay_ms).
    assert pacing.resting_until("ep", T0) == T0 + timedelta(seconds=2)
    assert pacing.resting_until("other", T0) is None

    # When it ends, one probe goes out; another stall starts a rest twice as long.
    later = T0 + timedelta(seconds=2)
    assert pacing.resting_until("ep", later) is None
    assert pacing.limit("ep") == 1
    assert (
        pacing.observe("ep", http_status=None, latency_ms=2_000, timed_out=True, now=later) is True
    )
    assert pacing.resting_until("ep", later) == later + timedelta(seconds=4)

    # A success ends the series: the next rest is short again.
    after = later + timedelta(seconds=4)
    assert pacing.resting_until("ep", after) is None
    pacing.observe("ep", http_status=204, latency_ms=10, now=after)
    pacing.observe("ep", http_status=None, latency_ms=2_000, timed_out=True, now=after)
    assert (
        pacing.observe("ep", http_status=None, latency_ms=2_000, timed_out=True, now=after) is True
    )
    assert pacing.resting_until("ep", after) == after + timedelta(seconds=2)


def test_rests_are_capped_by_max_delay() -> None:
    pacing = Pacing(CONFIG)
    now = T0
    rests = []
    pacing.observe(
        "ep", http_status=None, latency_ms=2_000, timed_out=True, now=now
    )  # the first stall
    for _ in range(40):  # far past the cap, and past where the power would overflow a float
        pacing.observe("ep", http_status=None, latency_ms=2_000, timed_out=True, now=now)
        until = pacing.resting_until("ep", now)
        assert until is not None
        rests.append((until - now).total_seconds())
        now = until
    assert rests[:4] == [2, 4, 8, 10]
    assert set(rests[4:]) == {10}


def test_an_attempt_sent_before_a_rest_began_does_not_restart_it() -> None:
    pacing = Pacing(CONFIG)
    pacing.observe("ep", http_status=None, latency_ms=2_000, timed_out=True, now=T0)
    assert pacing.observe("ep", http_status=None, latency_ms=2_000, timed_out=True, now=T0) is True
    in_flight_meanwhile = T0 + timedelta(seconds=1)
    assert (
        pacing.observe(
            "ep", http_status=None, latency_ms=2_000, timed_out=True, now=in_flight_meanwhile
        )
        is False
    )
    assert pacing.resting_until("ep", in_flight_meanwhile) == T0 + timedelta(seconds=2)


def test_a_fast_network_error_drops_the_limit_but_starts_no_rest() -> None:
    pacing = Pacing(CONFIG)
    for _ in range(4):
        pacing.observe("ep", http_status=204, latency_ms=10, now=T0)
    for _ in range(5):  # connection refused, at once
        assert pacing.observe("ep", http_status=None, latency_ms=1, now=T0) is False
    assert pacing.limit("ep") == 1
    assert pacing.resting_until("ep", T0) is None


def test_a_worker_holds_two_rounds_of_a_limit_but_nothing_behind_a_probe() -> None:
    pacing = Pacing(CONFIG)
    assert pacing.holding("new") == 2
    for _ in range(3):
        pacing.observe("ep", http_status=204, latency_ms=10, now=T0)
    assert pacing.holding("ep") == 2 * pacing.limit("ep") == 8
    # No answer: the next attempt is a probe; no row waits behind it.
    pacing.observe("ep", http_status=None, latency_ms=2_000, timed_out=True, now=T0)
    assert pacing.holding("ep") == 1
    pacing.observe("ep", http_status=204, latency_ms=10, now=T0)  # answered again
    assert pacing.holding("ep") == 4
