"""Argument types and the confirmation prompt both commands (``kmsg-webhook``, ``kmsg``) use."""

from __future__ import annotations

import argparse
import math
import re
import sys
from datetime import UTC, datetime, timedelta

from .config import SecurityOptions
from .errors import UnsafeOperationError

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A number of seconds that may be 0, never negative or infinite."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def tcp_port(text: str) -> int:
    """A port to listen on: 0 (any free one) to 65535; a larger number is refused, not wrapped
    onto another port."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port (0 to 65535): {value}")
    return value


def age(text: str) -> timedelta:
    """An age: ``90s``, ``15m``, ``2h``, ``7d``."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not an age like 90s, 15m, 2h or 7d: {text!r}")
    amount, unit = match.groups()
    return timedelta(**{_UNITS[unit]: int(amount)})


def moment(text: str) -> datetime:
    """An ISO-8601 time, or an age (``90s``, ``15m``, ``2h``, ``7d``) counted back from now."""
    if _DURATION.match(text.strip()):
        return datetime.now(UTC) - age(text)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time or an age: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def confirm(question: str) -> None:
    """Ask on a terminal; refuse (:class:`UnsafeOperationError`) without one or without a yes."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UnsafeOperationError(
            f"not a terminal, so not asking: {question} Pass --yes to go ahead"
        )
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise UnsafeOperationError("not confirmed; nothing was changed")


def policy_args(parser: argparse.ArgumentParser) -> None:
    """The URL policy options of commands that register or send (SecurityOptions)."""
    parser.add_argument(
        "--allow-private-hosts",
        action="store_true",
        help="allow every private address and local name (allow_private_hosts=True)",
    )
    parser.add_argument(
        "--allow-network",
        action="append",
        default=[],
        metavar="CIDR",
        help="allow this network, e.g. 127.0.0.0/8 or 10.42.0.0/16 (repeatable; "
        "allowed_networks=[...])",
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="allow this host name, or *.suffix for any name below it (repeatable; "
        "allowed_hosts=[...])",
    )


def security_options(args: argparse.Namespace) -> SecurityOptions:
    return SecurityOptions(
        allow_private_hosts=args.allow_private_hosts,
        allowed_networks=tuple(args.allow_network),
        allowed_hosts=tuple(args.allow_host),
    )
