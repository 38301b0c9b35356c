"""Identifiers: time-ordered prefix plus 80 random bits from the OS CSPRNG."""

from __future__ import annotations

import os
import time

_BATCH = 256  # random parts per read from the OS: one getrandom call per 256 ids, not per id
_random_parts: list[str] = []


def new_id(prefix: str) -> str:
    """``<prefix>_<12 hex ms timestamp><20 hex random>``; sorts by creation time."""
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}{_random_part()}"


def _random_part() -> str:
    # list.pop is atomic, so threads never share a part; a thread that finds the list empty
    # refills it (two at once only read more than needed).
    try:
        return _random_parts.pop()
    except IndexError:
        raw = os.urandom(10 * _BATCH).hex()
        _random_parts.extend(raw[i : i + 20] for i in range(0, len(raw), 20))
        return _random_parts.pop()


# A forked child must not hand out the parent's unused parts again.
os.register_at_fork(after_in_child=_random_parts.clear)
