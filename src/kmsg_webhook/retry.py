"""Retry policy: which attempt results are retried, and how long to wait before the next one."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

RETRYABLE_STATUSES = frozenset({408, 429})


@dataclass(frozen=True, slots=True)
class Verdict:
    """What an attempt result means for the delivery."""

    success: bool
    retryable: bool
    #: 410 Gone: the receiver asked never to be called again.
    disable_endpoint: bool = False


_SUCCESS = Verdict(success=True, retryable=False)
_RETRY = Verdict(success=False, retryable=True)
_FAIL = Verdict(success=False, retryable=False)
_GONE = Verdict(success=False, retryable=False, disable_endpoint=True)


def judge(http_status: int | None) -> Verdict:
    """Classify an attempt by its HTTP status (``None`` = network error or timeout: retried).

    2xx succeeds; 408, 429 and 5xx are retried; 410 fails and disables the endpoint; every other
    status fails at once, including 3xx because redirects are never followed.
    """
    if http_status is None:
        return _RETRY
    if 200 <= http_status < 300:
        return _SUCCESS
    if http_status == 410:
        return _GONE
    if http_status in RETRYABLE_STATUSES or http_status >= 500:
        return _RETRY
    return _FAIL


def backoff_ms(
    retry_number: int,
    *,
    base_ms: float,
    multiplier: float,
    cap_ms: float,
    jitter: bool,
    rng: random.Random | None = None,
) -> float:
    """Wait before retry ``retry_number`` (1-based): ``base × multiplier^(n-1)``, capped.

    Jitter scales the wait by a factor in [0.5, 1] so synchronized failures spread out
    without ever exceeding the cap.
    """
    delay = min(base_ms * multiplier ** (retry_number - 1), cap_ms)
    if jitter:
        delay *= 0.5 + 0.5 * (rng or random).random()
    return delay


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` (delta seconds or an HTTP date) as milliseconds from ``now``."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text) * 1000
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, (moment - now).total_seconds() * 1000)
