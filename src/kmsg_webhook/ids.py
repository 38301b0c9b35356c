"""Identifiers: time-ordered prefix plus 80 random bits from the OS CSPRNG."""

from __future__ import annotations

import os
import time


def new_id(prefix: str) -> str:
    """``<prefix>_<12 hex ms timestamp><20 hex random>``; sorts by creation time."""
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"
