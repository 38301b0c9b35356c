"""Phone numbers for the messaging module: see :mod:`kmsg_webhook.phone` (they live there so
field crypto can use them without importing the messaging package)."""

from __future__ import annotations

from ..phone import (
    MAX_PHONE_DIGITS,
    MIN_PHONE_DIGITS,
    digits_only,
    estimate_sms_bytes,
    is_valid_phone,
    mask_phone,
    normalize_keep_plus,
)

__all__ = [
    "MAX_PHONE_DIGITS",
    "MIN_PHONE_DIGITS",
    "digits_only",
    "estimate_sms_bytes",
    "is_valid_phone",
    "mask_phone",
    "normalize_keep_plus",
]
