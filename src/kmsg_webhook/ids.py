"""Identifiers: time-ordered prefix plus 80 random bits from the OS CSPRNG."""

from __future__ import annotations

import secrets
import time


def new_id(prefix: str) -> str:
    """``<prefix>_<12 hex ms timestamp><20 hex random>``; sorts by creation time."""
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(10)}"
