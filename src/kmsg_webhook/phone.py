"""Phone numbers (validation, per-vendor normalisation, masking) and the SMS byte estimate.

Shared by the messaging module (``kmsg_webhook.messaging.phone`` re-exports it) and field
crypto (masking and the normalised form lookup hashes are computed from), without importing
the messaging package.

Masking format (used in webhook event data): separators are dropped, a leading ``+`` kept;
numbers of 9 or more digits show the first 3 and last 4 digits with the middle starred,
hyphen-separated: ``01012345678`` → ``010-****-5678``, ``0212345678`` → ``021-***-5678``,
``+821012345678`` → ``+821-*****-5678``. Shorter numbers keep only the last 2 digits
(``15881234`` → ``******34``); a non-numeric sender id keeps its first character
(``KMSG`` → ``K***``).
"""

from __future__ import annotations

import re

# Characters people put between digits; anything else makes a recipient invalid.
_SEPARATORS = re.compile(r"[\s\-.()]")
_NON_DIGITS = re.compile(r"\D")

MIN_PHONE_DIGITS = 8
MAX_PHONE_DIGITS = 15  # E.164 maximum


def digits_only(value: str) -> str:
    """Every non-digit removed (IWINV's rule)."""
    return _NON_DIGITS.sub("", value)


def normalize_keep_plus(value: str) -> str:
    """Trimmed, a leading ``+`` kept, every other non-digit removed (SOLAPI's intended rule)."""
    text = value.strip()
    plus = "+" if text.startswith("+") else ""
    return plus + digits_only(text)


def is_valid_phone(value: str) -> bool:
    """Whether ``value`` looks like a phone number a vendor could deliver to.

    Allowed: digits with spaces, hyphens, dots or parentheses between them and an optional
    leading ``+``; 8 to 15 digits (8 covers Korean representative numbers such as 1588-xxxx).
    """
    text = value.strip()
    if text.startswith("+"):
        text = text[1:]
    compact = _SEPARATORS.sub("", text)
    return compact.isdigit() and MIN_PHONE_DIGITS <= len(compact) <= MAX_PHONE_DIGITS


def mask_phone(value: str | None) -> str | None:
    """Mask a number for logs and event data (format in the module docstring)."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return text
    plus = "+" if text.startswith("+") else ""
    digits = digits_only(text)
    if not digits or _SEPARATORS.sub("", text.lstrip("+")) != digits:
        # A sender id such as "KMSG" rather than a number.
        return text[0] + "*" * (len(text) - 1)
    if len(digits) >= 9:
        middle = "*" * (len(digits) - 7)
        return f"{plus}{digits[:3]}-{middle}-{digits[-4:]}"
    return plus + "*" * (len(digits) - 2) + digits[-2:]


def estimate_sms_bytes(text: str) -> int:
    """The original's byte estimate: 1 per ASCII character, 2 otherwise, 4 outside the BMP.

    It mirrors counting UTF-16 code units at 2 bytes each for non-ASCII (Hangul counts 2,
    like EUC-KR); no real encoding is done.
    """
    total = 0
    for char in text:
        point = ord(char)
        if point <= 0x7F:
            total += 1
        elif point > 0xFFFF:
            total += 4
        else:
            total += 2
    return total
