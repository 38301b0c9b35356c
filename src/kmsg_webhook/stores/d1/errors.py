"""Errors of the D1 backend, all :class:`~kmsg_webhook.errors.StoreError` subclasses.

None of them ever carries the API token: messages are built from the answer's error list, the
HTTP status and the exception type, never from request headers.
"""

from __future__ import annotations

from ...errors import StoreError, StoreUnavailableError


class D1Error(StoreError):
    """Something went wrong talking to D1.

    ``code`` is the first error code of the D1 answer (``None`` when there was no answer),
    ``status`` the HTTP status (``None`` likewise).
    """

    def __init__(self, message: str, *, code: int | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class D1QueryError(D1Error):
    """D1 refused a statement (a 4xx answer: syntax error, constraint, ``BEGIN``, ...).

    Not retried: sending the same statement again would fail the same way. A failed batch
    changed nothing (batches are atomic).
    """


class D1AuthError(D1Error):
    """The token was refused (401/403). Not retried."""


class D1LimitError(D1Error):
    """A statement breaks one of D1's limits; caught before sending (nothing was sent)."""


class D1UnavailableError(D1Error, StoreUnavailableError):
    """D1 could not be reached or kept failing (timeouts, 5xx, malformed answers) past the
    retry budget (the CLI exits 4, "store unavailable"). The last request may or may not have
    been applied."""


class D1RateLimitedError(D1UnavailableError):
    """D1 kept answering 429 past the retry budget. ``retry_after`` is the last hint (seconds)."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        status: int | None = 429,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status)
        self.retry_after = retry_after


class D1SchemaError(D1Error):
    """The tables are not in a shape this backend can use (and it will not guess)."""
