"""A small ``Result`` type: :class:`Ok` or :class:`Fail`, for failures that are expected.

Narrow with ``isinstance(result, Ok)`` (mypy understands it) or read ``is_success``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, NoReturn, TypeAlias, TypeVar

T = TypeVar("T")
E = TypeVar("E")
U = TypeVar("U")
F = TypeVar("F")


class UnwrapError(Exception):
    """``unwrap`` was called on a :class:`Fail` whose error is not an exception."""

    def __init__(self, error: object, message: str = "Called unwrap on a failed result") -> None:
        super().__init__(message)
        self.error = error


@dataclass(frozen=True, slots=True)
class Ok(Generic[T]):
    """A success holding ``value``."""

    value: T

    @property
    def is_success(self) -> Literal[True]:
        return True

    @property
    def is_failure(self) -> Literal[False]:
        return False

    def map(self, fn: Callable[[T], U]) -> Ok[U]:
        return Ok(fn(self.value))

    def map_error(self, fn: Callable[[object], object]) -> Ok[T]:
        return self

    def unwrap(self) -> T:
        return self.value

    def unwrap_or(self, default: T) -> T:
        return self.value

    def expect(self, message: str) -> T:
        return self.value


@dataclass(frozen=True, slots=True)
class Fail(Generic[E]):
    """A failure holding ``error``."""

    error: E

    @property
    def is_success(self) -> Literal[False]:
        return False

    @property
    def is_failure(self) -> Literal[True]:
        return True

    def map(self, fn: Callable[[object], object]) -> Fail[E]:
        return self

    def map_error(self, fn: Callable[[E], F]) -> Fail[F]:
        return Fail(fn(self.error))

    def unwrap(self) -> NoReturn:
        """Raise the error (or :class:`UnwrapError` when it is not an exception)."""
        if isinstance(self.error, BaseException):
            raise self.error
        raise UnwrapError(self.error)

    def unwrap_or(self, default: U) -> U:
        return default

    def expect(self, message: str) -> NoReturn:
        """Raise :class:`UnwrapError` with ``message``, chained to the error when it is one."""
        cause = self.error if isinstance(self.error, BaseException) else None
        raise UnwrapError(self.error, message) from cause


Result: TypeAlias = Ok[T] | Fail[E]


def ok(value: T) -> Ok[T]:
    """Build a success."""
    return Ok(value)


def fail(error: E) -> Fail[E]:
    """Build a failure."""
    return Fail(error)
