"""Store and endpoint URLs made safe to print: one place decides what a secret looks like."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

#: Query parameters whose values are credentials (compared case-insensitively).
SECRET_PARAMETERS = frozenset(
    {"password", "passwd", "pwd", "sslpassword", "token", "access_token", "api_key", "secret"}
)


def redact_url(url: str) -> str:
    """``url`` with the userinfo password and every credential query value (``password``,
    ``sslpassword``, ``token``, …) replaced by ``***``; the rest is kept as written."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    redacted = url  # edited in place: re-assembling would normalise what the user wrote
    if password is not None:
        userinfo, _, hostinfo = parts.netloc.rpartition("@")
        redacted = redacted.replace(parts.netloc, f"{userinfo.split(':', 1)[0]}:***@{hostinfo}", 1)
    if parts.query:
        query = "&".join(
            f"{key}=***" if unquote(key).lower() in SECRET_PARAMETERS else item
            for item in parts.query.split("&")
            for key in [item.split("=", 1)[0]]
        )
        redacted = redacted.replace(f"?{parts.query}", f"?{query}", 1)
    return redacted


def url_origin(url: str) -> str:
    """An endpoint URL as log lines show it: scheme, host and port, with ``/…`` standing for
    any path or query (receivers often carry a token there, as in ``/services/T0/B0/XXXX``)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "<unparsable URL>"
    if not host:
        return "<unparsable URL>"
    shown = f"[{host}]" if ":" in host else host
    origin = f"{parts.scheme}://{shown}" + (f":{port}" if port is not None else "")
    return origin + ("/…" if parts.path.strip("/") or parts.query else "")
