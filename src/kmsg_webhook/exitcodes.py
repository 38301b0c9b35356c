"""The ``kmsg-webhook`` command's exit codes: one per kind of failure a script may act on."""

from __future__ import annotations

from enum import IntEnum

from .errors import (
    ConfigError,
    DuplicateEndpointError,
    EndpointUrlError,
    InvalidEndpointError,
    InvalidEventError,
    InvalidSecretError,
    StoreUnavailableError,
    UnsafeOperationError,
    WebhookError,
)

#: ``EndpointUrlError`` reasons that the URL policy (not the spelling) decides.
_POLICY_REASONS = frozenset({"private_address", "local_name", "http_not_allowed"})


class ExitCode(IntEnum):
    """What a ``kmsg-webhook`` or ``kmsg`` exit status means (``docs/cli.md``, "Exit statuses")."""

    OK = 0
    #: Anything else went wrong (a store error, a failed demo, unreadable rows in ``rekey``).
    FAILURE = 1
    #: The command line or a value in it is invalid (argparse's own code for usage errors).
    USAGE = 2
    #: An id given (endpoint, delivery, send job, tracked message) does not exist.
    NOT_FOUND = 3
    #: The store cannot be reached or does not exist.
    STORE_UNAVAILABLE = 4
    #: Refused as unsafe: by the URL policy (a private address, a local name, plain http),
    #: sealed values without keys, not confirmed. A malformed URL is a usage error.
    REFUSED = 5
    #: Stopped by Ctrl-C.
    INTERRUPTED = 130


def exit_code_for(error: WebhookError) -> ExitCode:
    """The exit status for a command that failed with ``error``."""
    if isinstance(error, LookupError):  # every not-found error (endpoint, delivery, job, ...)
        return ExitCode.NOT_FOUND
    if isinstance(error, StoreUnavailableError):
        return ExitCode.STORE_UNAVAILABLE
    if isinstance(error, UnsafeOperationError):
        return ExitCode.REFUSED
    if isinstance(error, EndpointUrlError):
        # Refused only when a policy change would admit the URL; a malformed one is usage.
        return ExitCode.REFUSED if error.reason in _POLICY_REASONS else ExitCode.USAGE
    usage = (
        ConfigError,
        InvalidEndpointError,
        InvalidEventError,
        InvalidSecretError,
        DuplicateEndpointError,
    )
    if isinstance(error, usage):
        return ExitCode.USAGE
    return ExitCode.FAILURE
