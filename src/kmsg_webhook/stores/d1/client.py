"""An HTTP client for the Cloudflare D1 REST API (``/query`` and ``/raw``).

The same client talks to Cloudflare (``https://api.cloudflare.com/client/v4``) or to our own
Worker (``adapters/d1-worker``), which serves the same paths and shapes::

    POST {base_url}/accounts/{account_id}/d1/database/{database_id}/query   rows as objects
    POST {base_url}/accounts/{account_id}/d1/database/{database_id}/raw     columns + rows
    Authorization: Bearer <token>
    {"sql": ..., "params": [...]}   or   {"batch": [{"sql": ..., "params": [...]}, ...]}

A batch runs atomically (all statements or none) in one round trip. D1's limits are checked
before anything is sent; 429 answers are retried after ``Retry-After``, timeouts, connection
failures, 5xx and malformed answers with jittered exponential backoff; a refused statement is a
:class:`~kmsg_webhook.stores.d1.errors.D1QueryError` at once. The token never appears in a log line,
a repr or an exception message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import aiohttp
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
)
from tenacity.stop import stop_base

from ...errors import ConfigError
from .errors import (
    D1AuthError,
    D1Error,
    D1LimitError,
    D1QueryError,
    D1RateLimitedError,
    D1UnavailableError,
)

__all__ = [
    "CLOUDFLARE_API_BASE_URL",
    "D1Client",
    "D1Limits",
    "D1RawResult",
    "D1Response",
    "D1Result",
    "D1Statement",
    "D1Value",
]

log = logging.getLogger("kmsg_webhook.d1")

CLOUDFLARE_API_BASE_URL = "https://api.cloudflare.com/client/v4"

#: What a statement may bind: JSON scalars (``bool`` is sent as 0/1).
D1Value = str | int | float | bool | None

# Integers beyond this lose precision in D1's JavaScript number handling.
_MAX_SAFE_INTEGER = 2**53 - 1


@dataclass(frozen=True, slots=True)
class D1Statement:
    """One SQL statement and its positional parameters (``?`` or ``?NNN``)."""

    sql: str
    params: tuple[D1Value, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.params, tuple):
            object.__setattr__(self, "params", tuple(self.params))


@dataclass(frozen=True, slots=True)
class D1Limits:
    """D1's per-statement limits, checked before a request is sent."""

    max_params: int = 100
    max_statement_bytes: int = 100_000
    max_value_bytes: int = 2_000_000


@dataclass(frozen=True, slots=True)
class D1Result:
    """One statement's answer from ``/query``: rows as dicts plus D1's ``meta``."""

    rows: list[dict[str, Any]]
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def changes(self) -> int:
        """Rows the statement changed, as D1 reports it."""
        value = self.meta.get("changes", 0)
        return int(value) if isinstance(value, int | float) else 0


@dataclass(frozen=True, slots=True)
class D1RawResult:
    """One statement's answer from ``/raw``: column names and rows as lists."""

    columns: list[str]
    rows: list[list[Any]]
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class D1Response:
    """The answers to one request, with what the retries saw on the way.

    ``maybe_applied_earlier`` is true when an earlier attempt of this same request failed in a
    way that leaves open whether D1 applied it (timeout, 5xx, malformed answer, connection lost
    mid-request); callers that need exact results then reconcile against the database.
    """

    results: list[D1Result]
    attempts: int
    maybe_applied_earlier: bool


@dataclass(slots=True)
class _CallState:
    attempts: int = 0
    ambiguous: bool = False


class D1Client:
    """Talks to one D1 database over the REST API contract.

    ``round_trips`` counts every HTTP request sent (retries included); benchmarks divide it by
    deliveries. ``session`` is a seam: pass an aiohttp session to share its connection pool (it
    is then not closed by :meth:`close`). ``sleep`` is what the retry loop waits with.
    ``retry_timeout`` (seconds, optional) also bounds one call's retrying by time, as the SQL
    stores' ``retry_timeout`` does (``--store-timeout`` on the CLI).
    """

    def __init__(
        self,
        account_id: str,
        database_id: str,
        *,
        token: str,
        base_url: str = CLOUDFLARE_API_BASE_URL,
        timeout: float = 30.0,
        max_attempts: int = 5,
        backoff_initial: float = 0.25,
        backoff_max: float = 8.0,
        max_retry_after: float = 60.0,
        limits: D1Limits | None = None,
        session: aiohttp.ClientSession | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        retry_timeout: float | None = None,
    ) -> None:
        if not account_id or not database_id:
            raise ConfigError("D1 needs an account id and a database id")
        if not isinstance(token, str) or not token.strip():
            raise ConfigError("D1 needs an API token (CLOUDFLARE_API_TOKEN or token=...)")
        if any(c in token for c in "\r\n"):
            raise ConfigError("the D1 API token must be a single line")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"D1 base_url must be an http(s) URL, got {base_url!r}")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ConfigError("D1 base_url must not carry a query, fragment or credentials")
        if timeout <= 0 or max_attempts < 1:
            raise ConfigError("D1 timeout must be > 0 and max_attempts >= 1")
        if retry_timeout is not None and retry_timeout <= 0:
            raise ConfigError("D1 retry_timeout must be > 0")
        self.account_id = account_id
        self.database_id = database_id
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.limits = limits or D1Limits()
        #: HTTP requests sent so far, retries included.
        self.round_trips = 0
        #: Of those, how many were retries.
        self.retries = 0
        self._token = token.strip()
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._max_retry_after = max_retry_after
        self._given_session = session
        self._session: aiohttp.ClientSession | None = None
        self._sleep = sleep
        self._stop: stop_base = stop_after_attempt(max_attempts)
        if retry_timeout is not None:
            self._stop = self._stop | stop_after_delay(retry_timeout)
        prefix = f"{self.base_url}/accounts/{quote(account_id, safe='')}/d1/database/"
        self._url = prefix + quote(database_id, safe="")

    def __repr__(self) -> str:
        return (
            f"D1Client(base_url={self.base_url!r}, account_id={self.account_id!r}, "
            f"database_id={self.database_id!r}, token='***')"
        )

    # -- public API -------------------------------------------------------------------------

    async def query(self, sql: str, params: Sequence[D1Value] = ()) -> D1Result:
        """Run one statement; rows come back as dicts."""
        response = await self.execute([D1Statement(sql, tuple(params))], batch=False)
        return response.results[0]

    async def batch(self, statements: Sequence[D1Statement]) -> list[D1Result]:
        """Run statements atomically in one round trip; one result per statement."""
        return (await self.execute(statements)).results

    async def execute(self, statements: Sequence[D1Statement], *, batch: bool = True) -> D1Response:
        """Like :meth:`batch`, also telling whether a retried attempt may have applied earlier."""
        body = self._body(statements, batch=batch)
        state = _CallState()
        payload = await self._send("query", body, state)
        results = [
            D1Result(rows=_rows_of(item), meta=_meta_of(item))
            for item in _result_items(payload, len(statements))
        ]
        return D1Response(results, state.attempts, state.ambiguous)

    async def raw(self, sql: str, params: Sequence[D1Value] = ()) -> D1RawResult:
        """Run one statement through ``/raw``: column names and rows as lists."""
        return (await self.raw_batch([D1Statement(sql, tuple(params))], batch=False))[0]

    async def raw_batch(
        self, statements: Sequence[D1Statement], *, batch: bool = True
    ) -> list[D1RawResult]:
        """Run statements atomically through ``/raw``."""
        body = self._body(statements, batch=batch)
        payload = await self._send("raw", body, _CallState())
        out: list[D1RawResult] = []
        for item in _result_items(payload, len(statements)):
            results = item.get("results") or {}
            if not isinstance(results, Mapping):
                raise D1UnavailableError("D1 /raw answered results that are not {columns, rows}")
            columns = results.get("columns") or []
            rows = results.get("rows") or []
            if not isinstance(columns, list) or not isinstance(rows, list):
                raise D1UnavailableError("D1 /raw answered malformed columns or rows")
            out.append(
                D1RawResult([str(c) for c in columns], [list(r) for r in rows], _meta_of(item))
            )
        return out

    async def close(self) -> None:
        """Close the HTTP session this client opened (a given session is left open)."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> D1Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def check(self, statement: D1Statement) -> None:
        """Raise :class:`D1LimitError` when ``statement`` breaks one of D1's limits."""
        limits = self.limits
        if len(statement.params) > limits.max_params:
            raise D1LimitError(
                f"a statement binds {len(statement.params)} parameters; "
                f"D1 allows at most {limits.max_params}"
            )
        size = len(statement.sql.encode())
        if size > limits.max_statement_bytes:
            raise D1LimitError(
                f"a statement is {size} bytes long; D1 allows at most {limits.max_statement_bytes}"
            )
        for index, value in enumerate(statement.params, start=1):
            if value is None or isinstance(value, bool):
                continue
            if isinstance(value, str):
                length = len(value.encode())
                if length > limits.max_value_bytes:
                    raise D1LimitError(
                        f"parameter {index} is {length} bytes; "
                        f"D1 allows at most {limits.max_value_bytes} per value"
                    )
            elif isinstance(value, int):
                if abs(value) > _MAX_SAFE_INTEGER:
                    raise D1LimitError(f"parameter {index} is an integer beyond ±2**53-1")
            elif isinstance(value, float):
                if not math.isfinite(value):
                    raise D1LimitError(f"parameter {index} is not a finite number")
            else:
                raise TypeError(
                    f"parameter {index} has type {type(value).__name__}; "
                    "D1 binds str, int, float, bool and None"
                )

    # -- internals --------------------------------------------------------------------------

    def _body(self, statements: Sequence[D1Statement], *, batch: bool) -> bytes:
        if not statements:
            raise ValueError("no statements to run")
        if not batch and len(statements) != 1:
            raise ValueError("a non-batch request carries exactly one statement")
        for statement in statements:
            self.check(statement)
        items = [{"sql": s.sql, "params": [_param(v) for v in s.params]} for s in statements]
        body: object = {"batch": items} if batch else items[0]
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()

    def _session_for_request(self) -> aiohttp.ClientSession:
        if self._given_session is not None:
            return self._given_session
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _send(self, mode: Literal["query", "raw"], body: bytes, state: _CallState) -> Any:
        url = f"{self._url}/{mode}"
        retrying = AsyncRetrying(
            stop=self._stop,
            wait=self._wait,
            retry=retry_if_exception_type(D1UnavailableError),
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._post(url, body, state)
        except D1UnavailableError as exc:
            raise _exhausted(exc, state.attempts) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _post(self, url: str, body: bytes, state: _CallState) -> Any:
        state.attempts += 1
        self.round_trips += 1
        if state.attempts > 1:
            self.retries += 1
        headers = {
            "Authorization": f"Bearer {self._token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        session = self._session_for_request()
        try:
            async with session.post(
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                raw = await response.read()
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except aiohttp.ClientConnectorError as exc:
            # Never connected: the request cannot have been applied.
            raise D1UnavailableError(f"cannot connect to D1: {self._clean(str(exc))}") from None
        except TimeoutError:
            state.ambiguous = True
            raise D1UnavailableError(f"D1 did not answer within {self.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            state.ambiguous = True
            raise D1UnavailableError(
                f"D1 request failed: {type(exc).__name__}: {self._clean(str(exc))}"
            ) from None
        return self._interpret(status, raw, retry_after, state)

    def _interpret(
        self, status: int, raw: bytes, retry_after: str | None, state: _CallState
    ) -> Any:
        try:
            payload = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            payload = None
        code, message = self._first_error(payload)
        if status == 429:
            hint = _parse_retry_after(retry_after)
            raise D1RateLimitedError(
                _describe("D1 rate limit reached (429)", code, message),
                code=code,
                retry_after=hint,
            )
        if status >= 500:
            state.ambiguous = True
            raise D1UnavailableError(
                _describe(f"D1 answered HTTP {status}", code, message), code=code, status=status
            )
        if status in (401, 403):
            raise D1AuthError(
                _describe(f"D1 refused the API token (HTTP {status})", code, message),
                code=code,
                status=status,
            )
        if status >= 400:
            raise D1QueryError(
                _describe(f"D1 refused the request (HTTP {status})", code, message),
                code=code,
                status=status,
            )
        if not isinstance(payload, dict):
            state.ambiguous = True
            raise D1UnavailableError(
                f"D1 answered HTTP {status} with a body that is not a JSON object", status=status
            )
        if payload.get("success") is False:
            raise D1QueryError(
                _describe("D1 reported failure", code, message), code=code, status=status
            )
        return payload

    def _first_error(self, payload: object) -> tuple[int | None, str | None]:
        if not isinstance(payload, dict):
            return None, None
        errors = payload.get("errors")
        if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
            return None, None
        raw_code = errors[0].get("code")
        code = raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else None
        message = errors[0].get("message")
        return code, self._clean(str(message)) if message is not None else None

    def _clean(self, text: str) -> str:
        """Belt and braces: a message echoing the token never leaves with it."""
        return text.replace(self._token, "***") if self._token in text else text

    def _wait(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, D1RateLimitedError) and exc.retry_after is not None:
            return min(exc.retry_after, self._max_retry_after)
        # Exponential backoff plus jitter of up to one initial step (spreads retrying workers).
        step: float = self._backoff_initial * 2.0 ** (retry_state.attempt_number - 1)
        return min(self._backoff_max, step) + random.uniform(0.0, self._backoff_initial)

    def _log_retry(self, retry_state: RetryCallState) -> None:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        log.warning(
            "D1 request failed (attempt %d of %d), retrying in %.2fs: %s",
            retry_state.attempt_number,
            self.max_attempts,
            wait,
            exc,
        )


def _param(value: D1Value) -> str | int | float | None:
    if isinstance(value, bool):
        return int(value)
    return value


def _describe(prefix: str, code: int | None, message: str | None) -> str:
    if message is None:
        return prefix
    return f"{prefix}: [{code}] {message}" if code is not None else f"{prefix}: {message}"


def _exhausted(exc: D1UnavailableError, attempts: int) -> D1UnavailableError:
    text = f"{exc.message} (gave up after {attempts} attempt{'s' if attempts != 1 else ''})"
    if isinstance(exc, D1RateLimitedError):
        return D1RateLimitedError(
            text, code=exc.code, status=exc.status, retry_after=exc.retry_after
        )
    return D1UnavailableError(text, code=exc.code, status=exc.status)


def _parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number of seconds or an HTTP date."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _result_items(payload: Any, expected: int) -> list[Mapping[str, Any]]:
    items = payload.get("result") if isinstance(payload, dict) else None
    if not isinstance(items, list) or len(items) != expected:
        got = len(items) if isinstance(items, list) else "no"
        raise D1Error(f"D1 answered {got} results for {expected} statements")
    for item in items:
        if not isinstance(item, Mapping):
            raise D1Error("D1 answered a result that is not an object")
        if item.get("success") is False:
            raise D1QueryError("D1 reported a failed statement in a successful answer")
    return items


def _rows_of(item: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = item.get("results")
    if rows is None:
        return []
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise D1Error("D1 /query answered rows that are not objects")
    return rows


def _meta_of(item: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = item.get("meta")
    return meta if isinstance(meta, Mapping) else {}
