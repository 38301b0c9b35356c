"""Store URLs for D1.

``d1://<account_id>/<database_id>``
    Cloudflare's REST API (``https://api.cloudflare.com/client/v4``).
``d1+https://<host>[:port][/<prefix>]/<account_id>/<database_id>``
``d1+http://<host>[:port][/<prefix>]/<account_id>/<database_id>``
    Anything else speaking the same contract, such as ``adapters/d1-worker``: requests go to
    ``<scheme>://<host>[:port][/<prefix>]/client/v4/accounts/<account>/d1/database/<db>/…``.

The token is, in order: the ``token=`` argument, a ``token`` query parameter, the
``CLOUDFLARE_API_TOKEN`` environment variable. Other query parameters: ``endpoint_table``,
``delivery_table``, ``tracking_table`` and ``jobs_table`` (the messaging module's tables),
``auto_init`` (true/false), ``upgrade_original`` (true/false), ``max_stored_attempts``,
``timeout`` (seconds), ``max_attempts``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import aiohttp

from ...errors import ConfigError
from ...redact import redact_url
from ..protocol import WebhookPersistence
from .client import CLOUDFLARE_API_BASE_URL, D1Client
from .schema import DEFAULT_DELIVERY_TABLE, DEFAULT_ENDPOINT_TABLE
from .store import DEFAULT_MAX_STORED_ATTEMPTS, create_d1_persistence

__all__ = [
    "TOKEN_ENV_VAR",
    "D1Location",
    "d1_client_from_url",
    "d1_persistence_from_url",
    "parse_d1_url",
    "redact_url",
    "url_flag",
]

TOKEN_ENV_VAR = "CLOUDFLARE_API_TOKEN"
SCHEMES = ("d1", "d1+http", "d1+https")
_OPTIONS = {
    "token",
    "endpoint_table",
    "delivery_table",
    "tracking_table",
    "jobs_table",
    "auto_init",
    "upgrade_original",
    "max_stored_attempts",
    "timeout",
    "max_attempts",
}


@dataclass(frozen=True, slots=True)
class D1Location:
    """A parsed D1 store URL. ``token`` is hidden from the repr."""

    account_id: str
    database_id: str
    base_url: str
    token: str | None = field(default=None, repr=False)
    options: Mapping[str, str] = field(default_factory=dict)


def parse_d1_url(url: str) -> D1Location:
    """Split a ``d1://`` / ``d1+http(s)://`` URL into where to send requests and options."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"malformed D1 URL {shown}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigError(f"not a D1 URL (use d1://, d1+http:// or d1+https://): {shown}")
    if parts.username or parts.password or parts.fragment:
        raise ConfigError(f"a D1 URL carries no credentials or fragment (use ?token=): {shown}")
    options: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in _OPTIONS:
            raise ConfigError(f"unknown D1 URL parameter {key!r} in {shown}")
        options[key] = value
    token = options.pop("token", None)
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if scheme == "d1":
        if not parts.hostname or len(segments) != 1:
            raise ConfigError(f"expected d1://<account_id>/<database_id>, got {shown}")
        account, database = unquote(parts.netloc), segments[0]
        base_url = CLOUDFLARE_API_BASE_URL
    else:
        if not parts.hostname or len(segments) < 2:
            raise ConfigError(
                f"expected {scheme}://<host>[:port][/prefix]/<account_id>/<database_id>, "
                f"got {shown}"
            )
        *prefix, account, database = segments
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        netloc = host if port is None else f"{host}:{port}"
        path = "".join(f"/{p}" for p in prefix) + "/client/v4"
        base_url = urlunsplit((scheme.removeprefix("d1+"), netloc, path, "", ""))
    if not account or not database:
        raise ConfigError(f"a D1 URL needs an account id and a database id: {shown}")
    return D1Location(account, database, base_url, token, options)


def url_flag(options: Mapping[str, str], name: str, default: bool) -> bool:
    """A true/false URL parameter."""
    value = options.get(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"D1 URL parameter {name} must be true or false, got {value!r}")


def _number(options: Mapping[str, str], name: str, default: float) -> float:
    value = options.get(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"D1 URL parameter {name} must be a number, got {value!r}") from None


def d1_client_from_url(
    url: str,
    *,
    token: str | None = None,
    session: aiohttp.ClientSession | None = None,
    environ: Mapping[str, str] | None = None,
    retry_timeout: float | None = None,
) -> tuple[D1Client, D1Location]:
    """The client a ``d1://`` or ``d1+http(s)://`` URL names, and the parsed URL (its options).

    ``retry_timeout`` bounds one call's retrying by time.
    """
    location = parse_d1_url(url)
    env = os.environ if environ is None else environ
    api_token = token or location.token or env.get(TOKEN_ENV_VAR)
    if not api_token:
        raise ConfigError(
            f"no API token for {redact_url(url)}: set {TOKEN_ENV_VAR}, "
            "pass token=..., or add ?token=... to the URL"
        )
    opts = location.options
    client = D1Client(
        location.account_id,
        location.database_id,
        token=api_token,
        base_url=location.base_url,
        timeout=_number(opts, "timeout", 30.0),
        max_attempts=int(_number(opts, "max_attempts", 5)),
        session=session,
        retry_timeout=retry_timeout,
    )
    return client, location


def d1_persistence_from_url(
    url: str,
    *,
    token: str | None = None,
    session: aiohttp.ClientSession | None = None,
    max_stored_attempts: int | None = None,
    environ: Mapping[str, str] | None = None,
    retry_timeout: float | None = None,
) -> WebhookPersistence:
    """A D1-backed persistence for a ``d1://`` or ``d1+http(s)://`` URL.

    The returned persistence owns its client: its ``close`` closes the HTTP session (a given
    ``session`` is left open). ``retry_timeout`` bounds one call's retrying by time.
    """
    client, location = d1_client_from_url(
        url, token=token, session=session, environ=environ, retry_timeout=retry_timeout
    )
    opts = location.options
    stored = max_stored_attempts or int(
        _number(opts, "max_stored_attempts", DEFAULT_MAX_STORED_ATTEMPTS)
    )
    return create_d1_persistence(
        client,
        endpoint_table_name=opts.get("endpoint_table", DEFAULT_ENDPOINT_TABLE),
        delivery_table_name=opts.get("delivery_table", DEFAULT_DELIVERY_TABLE),
        initialize_schema=url_flag(opts, "auto_init", True),
        upgrade_original=url_flag(opts, "upgrade_original", False),
        max_stored_attempts=stored,
        close_client=True,
    )
