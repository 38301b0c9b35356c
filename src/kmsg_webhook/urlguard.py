"""Private-host URL guard (SSRF defence), applied to the URL text and again at connect time.

Two layers, both needed:

* :func:`validate_endpoint_url` checks the URL exactly as aiohttp will use it (``yarl.URL``'s
  IDNA-encoded ``raw_host``): scheme, userinfo, parser-confusion characters, IP literals in
  every spelling the resolver accepts, and local-only names. Call it before every request and
  send the :class:`yarl.URL` it returns.
* :class:`GuardedResolver` checks every address a DNS answer returns, so a public-looking name
  that resolves (or re-resolves: DNS rebinding) to a private address is refused at connect time.
  aiohttp never calls the resolver for IP-literal hosts, so it does not replace the first layer.

Policy decisions (documented here because callers and reviewers ask):

* Local-only names, refused unless ``allow_private_hosts``: single-label names (no dot; they
  resolve via search domains or ``/etc/hosts``), ``localhost`` and ``*.localhost``, and the
  suffixes in :data:`LOCAL_NAME_SUFFIXES` (``.local``, ``.localdomain``, ``.internal``, ``.lan``,
  ``.home``, ``.corp``, ``.intranet``, ``.private`` -- the RFC 6762 appendix G "private" TLDs --
  and all of ``.arpa``, which covers ``home.arpa`` and reverse-lookup names). ``.example`` and
  ``.test`` are *not* refused: they never resolve publicly, so the connect-time guard covers them.
* The allow-list (``allowed_networks``, ``allowed_hosts``; CLI ``--allow-network``,
  ``--allow-host``) admits named destinations without admitting every private address: an IP
  literal inside an allowed network, and a name on the host list (exact, or ``*.suffix`` for
  any name below it; a wildcard must keep at least two labels, so ``*.com`` is refused). A
  listed name only skips the local-name check: its DNS answers must still be public or fall
  inside an allowed network, so listing a name never opens the metadata service or the rest of
  a private network. Link-local addresses (169.254.0.0/16, fe80::/10, where cloud metadata
  lives) are admitted only by a network inside the link-local block, never by a wider one.
  IPv4-mapped networks (``::ffff:a.b.c.d/n``) are stored as their IPv4 form. Plain http is
  accepted, as for localhost (``allow_http_for_localhost``), for listed names and for listed
  networks' addresses that are not public.
* One trailing dot is accepted (``example.com.`` is the same host); an empty label is malformed.
* Any explicit port 1-65535 is allowed: receivers often listen on 8443 or similar, and the host,
  not the port, decides what the request can reach. Port 0 is malformed, and so is a port not
  written in ASCII digits (``:+443``, full-width digits): yarl reads those, other parsers don't.
* IP literals must be canonical: a legacy IPv4 spelling (``0x7f.1``, ``017700000001``, ``127.1``)
  is refused even for a public address -- as ``private_address`` when it hides one, otherwise as
  ``malformed``. IPv6 zone ids are always refused.
* Addresses embedding IPv4 (IPv4-mapped ``::ffff:0:0/96``, 6to4 ``2002::/16``, well-known NAT64
  ``64:ff9b::/96``) are judged by the embedded address, so DNS64 answers for public hosts work.
  IPv4-compatible ``::/96``, Teredo ``2001::/32`` and local-use NAT64 ``64:ff9b:1::/48`` are
  always refused; IPv6 must otherwise lie in global unicast ``2000::/3``.

Reason codes (``EndpointUrlError.reason``): ``too_long``, ``control_chars``, ``malformed``,
``scheme``, ``userinfo``, ``missing_host``, ``zone_id``, ``private_address``, ``local_name``,
``http_not_allowed``; from the resolver: ``private_address``, ``no_addresses``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from aiohttp import ClientConnectorError
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from .errors import EndpointUrlError

__all__ = [
    "LOCAL_NAME_SUFFIXES",
    "MAX_URL_LENGTH",
    "ForbiddenAddressError",
    "GuardedResolver",
    "StaticResolver",
    "address_refusal_reason",
    "find_forbidden_address_error",
    "is_address_allowed",
    "parse_allowed_host",
    "parse_allowed_network",
    "parse_legacy_ipv4",
    "validate_endpoint_url",
]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH = 2048
"""Longest endpoint URL accepted; longer ones are refused as ``too_long``."""

LOCAL_NAME_SUFFIXES: frozenset[str] = frozenset(
    {"local", "localdomain", "internal", "lan", "home", "corp", "intranet", "private", "arpa"}
)
"""Top-level labels that only ever name hosts on a local network (or DNS infrastructure)."""

_MAX_HOST_LENGTH = 253
_MAX_LABEL_LENGTH = 63
_SCHEMES = frozenset({"http", "https"})

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_HOST_CHARS_RE = re.compile(r"[a-z0-9._-]+")
_LABEL_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")
# A last label that is a number makes WHATWG parsers and inet_aton treat the host as IPv4.
_NUMERIC_LABEL_RE = re.compile(r"[0-9]+|0x[0-9a-f]*")
_HEX_PART_RE = re.compile(r"0[xX][0-9a-fA-F]+")
_OCT_PART_RE = re.compile(r"0[0-7]*")
_DEC_PART_RE = re.compile(r"[1-9][0-9]*")
_PERCENT_RE = re.compile(r"%([0-9A-Fa-f]{2})")

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

_IPV4_SPECIAL: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (_V4("0.0.0.0/32"), "the unspecified address"),
    (_V4("0.0.0.0/8"), "in the 'this network' block"),
    (_V4("10.0.0.0/8"), "a private (RFC 1918) address"),
    (_V4("100.64.0.0/10"), "a carrier-grade NAT shared address (RFC 6598)"),
    (_V4("127.0.0.0/8"), "a loopback address"),
    (_V4("169.254.0.0/16"), "a link-local address (cloud metadata lives here)"),
    (_V4("172.16.0.0/12"), "a private (RFC 1918) address"),
    (_V4("192.0.0.0/24"), "an IETF protocol-assignment address"),
    (_V4("192.0.2.0/24"), "a documentation address (TEST-NET-1)"),
    (_V4("192.88.99.0/24"), "a deprecated 6to4 relay anycast address"),
    (_V4("192.168.0.0/16"), "a private (RFC 1918) address"),
    (_V4("198.18.0.0/15"), "a benchmarking address"),
    (_V4("198.51.100.0/24"), "a documentation address (TEST-NET-2)"),
    (_V4("203.0.113.0/24"), "a documentation address (TEST-NET-3)"),
    (_V4("224.0.0.0/4"), "a multicast address"),
    (_V4("255.255.255.255/32"), "the broadcast address"),
    (_V4("240.0.0.0/4"), "a reserved address"),
)

_IPV6_SPECIAL: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_V6("64:ff9b:1::/48"), "a local-use NAT64 address"),
    (_V6("100::/64"), "a discard-only address"),
    (_V6("2001::/23"), "an IETF protocol-assignment address"),
    (_V6("2001:db8::/32"), "a documentation address"),
    (_V6("3fff::/20"), "a documentation address"),
    (_V6("fc00::/7"), "a unique-local (private) address"),
    (_V6("fe80::/10"), "a link-local address"),
    (_V6("fec0::/10"), "a deprecated site-local address"),
    (_V6("ff00::/8"), "a multicast address"),
)

_IPV6_GLOBAL_UNICAST = _V6("2000::/3")
_IPV4_MAPPED = _V6("::ffff:0:0/96")
_IPV4_COMPATIBLE = _V6("::/96")
_NAT64_WELL_KNOWN = _V6("64:ff9b::/96")
_TEREDO = _V6("2001::/32")
_LOOPBACK_V4 = _V4("127.0.0.0/8")
_LINK_LOCAL: tuple[IPNetwork, ...] = (_V4("169.254.0.0/16"), _V6("fe80::/10"))


# --------------------------------------------------------------------------- addresses


def _without_scope(address: IPAddress) -> IPAddress:
    """Drop an IPv6 zone id so network membership tests compare plain addresses."""
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        return ipaddress.IPv6Address(int(address))
    return address


def _ipv4_refusal(address: ipaddress.IPv4Address) -> str | None:
    """Say why an IPv4 address is not a public unicast destination, or None when it is."""
    for network, label in _IPV4_SPECIAL:
        if address in network:
            return f"{address} is {label} ({network})"
    # Backstop for ranges the stdlib learns about after this table was written.
    if not address.is_global or address.is_private or address.is_reserved:
        return f"{address} is not a globally reachable address"
    return None


def _ipv6_refusal(address: ipaddress.IPv6Address) -> str | None:
    """Say why an IPv6 address is not a public unicast destination, or None when it is."""
    if address.is_unspecified:
        return f"{address} is the unspecified address (::)"
    if address.is_loopback:
        return f"{address} is the loopback address (::1)"
    mapped = address.ipv4_mapped
    if mapped is not None:
        inner = _ipv4_refusal(mapped)
        return None if inner is None else f"{address} is IPv4-mapped and {inner}"
    if address in _IPV4_COMPATIBLE:
        embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        return f"{address} is a deprecated IPv4-compatible address (embeds {embedded})"
    if address in _NAT64_WELL_KNOWN:
        embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        inner = _ipv4_refusal(embedded)
        return None if inner is None else f"{address} is NAT64 and {inner}"
    sixtofour = address.sixtofour
    if sixtofour is not None:
        inner = _ipv4_refusal(sixtofour)
        return None if inner is None else f"{address} is 6to4 and {inner}"
    teredo = address.teredo
    if teredo is not None or address in _TEREDO:
        detail = f" (server {teredo[0]}, client {teredo[1]})" if teredo else ""
        return f"{address} is a Teredo tunnel address{detail}"
    for network, label in _IPV6_SPECIAL:
        if address in network:
            return f"{address} is {label} ({network})"
    if address not in _IPV6_GLOBAL_UNICAST:
        return f"{address} is outside global unicast space 2000::/3 (reserved)"
    if (
        not address.is_global
        or address.is_private
        or address.is_reserved
        or address.is_site_local
        or address.is_link_local
        or address.is_multicast
    ):
        return f"{address} is not a globally reachable address"
    return None


def address_refusal_reason(address: IPAddress) -> str | None:
    """Explain why ``address`` is private, reserved or special-use; None for a public address."""
    plain = _without_scope(address)
    if isinstance(plain, ipaddress.IPv4Address):
        return _ipv4_refusal(plain)
    return _ipv6_refusal(plain)


def is_address_allowed(address: IPAddress, *, allow_private_hosts: bool) -> bool:
    """Tell whether a request may connect to ``address`` under the given policy."""
    return allow_private_hosts or address_refusal_reason(address) is None


def _is_loopback(address: IPAddress) -> bool:
    """Tell whether ``address`` is 127.0.0.0/8 or ::1 (the hosts plain http may reach)."""
    plain = _without_scope(address)
    if isinstance(plain, ipaddress.IPv4Address):
        return plain in _LOOPBACK_V4
    return plain == ipaddress.IPv6Address("::1")


def parse_legacy_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """Parse ``text`` the way glibc ``inet_aton`` does; None if inet_aton would reject it.

    Accepts 1-4 dot-separated parts, each decimal, octal (leading ``0``) or hex (``0x``); the
    last part fills all remaining bytes, so ``127.1``, ``0x7f000001`` and ``017700000001`` all
    mean 127.0.0.1. Resolvers still accept these, hence a guard must understand them.
    """
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        if _HEX_PART_RE.fullmatch(part):
            values.append(int(part[2:], 16))
        elif _DEC_PART_RE.fullmatch(part):
            values.append(int(part, 10))
        elif _OCT_PART_RE.fullmatch(part):
            values.append(int(part, 8))
        else:
            return None
    *leading, last = values
    if any(value > 0xFF for value in leading):
        return None
    if last >= 1 << (8 * (5 - len(values))):
        return None
    number = last
    for index, value in enumerate(leading):
        number |= value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


# --------------------------------------------------------------------------- allow-list


def parse_allowed_network(value: str | IPNetwork) -> IPNetwork:
    """An allow-list network (``10.0.0.0/8``, ``127.0.0.1``, ``fd00::/8``); ValueError if bad."""
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        network: IPNetwork = value
    elif not isinstance(value, str):
        raise ValueError(f"an allowed network is a CIDR string, not {type(value).__name__}")
    else:
        try:
            network = ipaddress.ip_network(value.strip(), strict=True)
        except ValueError as exc:
            raise ValueError(f"not a network in CIDR form ({value!r}): {exc}") from None
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_IPV4_MAPPED):
        # Addresses are compared in their IPv4 form, so a mapped network must be one too.
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def parse_allowed_host(value: str) -> str:
    """An allow-list host name, normalised (lower case, no trailing dot); ``*.`` prefix allowed.

    ValueError for anything that is not a plain DNS name (IP literals go in the network list).
    """
    if not isinstance(value, str):
        raise ValueError(f"an allowed host is a name, not {type(value).__name__}")
    name = _normalise_name(value.strip())
    bare = name[2:] if name.startswith("*.") else name
    labels = bare.split(".")
    if not bare or not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise ValueError(f"not a host name: {value!r}")
    if _NUMERIC_LABEL_RE.fullmatch(labels[-1]):
        raise ValueError(f"{value!r} is an address: allow it as a network (--allow-network)")
    if name.startswith("*.") and len(labels) < 2:
        raise ValueError(f"{value!r} covers a whole top-level domain; name a deeper suffix")
    return name


def _host_listed(host: str, hosts: tuple[str, ...]) -> bool:
    """Whether a (normalised) host name is on the allow-list."""
    for allowed in hosts:
        if host == allowed or (allowed.startswith("*.") and host.endswith(allowed[1:])):
            return True
    return False


def _comparable(address: IPAddress) -> IPAddress:
    """The form allow-list networks are compared with: no zone id, IPv4-mapped as IPv4."""
    plain = _without_scope(address)
    if isinstance(plain, ipaddress.IPv6Address) and plain.ipv4_mapped is not None:
        return plain.ipv4_mapped
    return plain


def _network_admits(network: IPNetwork, address: IPAddress) -> bool:
    """Whether ``network`` admits ``address``; link-local only by a link-local network."""
    if address.version != network.version or address not in network:
        return False
    for block in _LINK_LOCAL:
        if address.version == block.version and address in block:
            return network.version == block.version and network.subnet_of(block)  # type: ignore[arg-type]
    return True


def _address_listed(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    """Whether an address lies in an allow-listed network (IPv4-mapped addresses included)."""
    plain = _comparable(address)
    return any(_network_admits(network, plain) for network in networks)


def _allow_address_hint(address: IPAddress) -> str:
    """How to allow one address: the CLI flag and the configuration option."""
    plain = _comparable(address)
    prefix = 32 if plain.version == 4 else 128
    return (
        f"allow it with --allow-network {plain}/{prefix} "
        f"(SecurityOptions(allowed_networks=[...])), or every private host with "
        f"--allow-private-hosts (allow_private_hosts=True)"
    )


def _allow_name_hint(host: str) -> str:
    """How to allow one host name: the CLI flag and the configuration option."""
    return (
        f"allow it with --allow-host {host} (SecurityOptions(allowed_hosts=[...])), or every "
        f"private host with --allow-private-hosts (allow_private_hosts=True)"
    )


# --------------------------------------------------------------------------- URLs


class _Refused(Exception):
    """Internal: carries a refusal out of the checking helpers."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _first_unprintable(text: str) -> int:
    """Index of the first control, whitespace or invisible character in ``text``."""
    return next(i for i, ch in enumerate(text) if ch == " " or not ch.isprintable())


def _check_text(url: str) -> None:
    """Refuse characters that URL parsers strip, split on or disagree about."""
    # str.isprintable() is False for C0/C1 controls, format chars (zero-width, bidi marks),
    # unicode separators and unassigned code points; ASCII space is the one separator it allows.
    if not url.isprintable() or " " in url:
        index = _first_unprintable(url)
        raise _Refused(
            "control_chars",
            f"Endpoint URL contains a control, whitespace or invisible character "
            f"(U+{ord(url[index]):04X} at position {index}); parsers silently strip or split "
            f"on these, so the host you see may not be the host that is contacted",
        )
    if "\\" in url:
        raise _Refused(
            "malformed",
            "Endpoint URL contains a backslash; some parsers treat it as '/', which moves "
            "the host boundary",
        )


def _raw_authority(url: str) -> str | None:
    """The authority exactly as written (between ``//`` and the first ``/``, ``?`` or ``#``)."""
    match = _SCHEME_RE.match(url)
    if match is None or not url.startswith("//", match.end()):
        return None
    rest = url[match.end() + 2 :]
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    return rest[:end]


def _raw_port(authority: str) -> str:
    """The port exactly as written in an authority without userinfo ('' when absent)."""
    host_end = authority.find("]") + 1 if authority.startswith("[") else 0
    _, colon, port = authority[host_end:].rpartition(":")
    return port if colon else ""


def _refuse_percent_host(raw_host: str) -> _Refused:
    """Build the refusal for a host that still contains percent-escapes after parsing."""
    for escape in _PERCENT_RE.findall(raw_host):
        char = chr(int(escape, 16))
        if char == " " or not char.isprintable():
            return _Refused(
                "control_chars",
                f"Endpoint URL host {raw_host!r} hides a percent-encoded control or "
                f"whitespace character (%{escape})",
            )
    return _Refused(
        "malformed",
        f"Endpoint URL host {raw_host!r} is percent-encoded; write the host name plainly",
    )


def _local_name_kind(host: str) -> str | None:
    """Say why a (dot-stripped, lower-case) DNS name is local-only, or None if it is not."""
    if host == "localhost" or host.endswith(".localhost"):
        return "is a localhost name"
    if "." not in host:
        return "is a single-label name (resolved via search domains or the hosts file)"
    suffix = host.rsplit(".", 1)[1]
    if suffix in LOCAL_NAME_SUFFIXES:
        return f"uses the local-only suffix '.{suffix}'"
    return None


@dataclass(frozen=True, slots=True)
class _Allow:
    """What the policy admits besides public hosts (hashable: part of the check's cache key)."""

    private: bool
    networks: tuple[IPNetwork, ...] = ()
    hosts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Host:
    """What the host check found: a localhost name/address, or a destination the list names."""

    localhost: bool
    listed: bool


def _classify_ipv6(raw_host: str, allow: _Allow) -> _Host:
    """Check an IPv6 literal host."""
    try:
        address = ipaddress.IPv6Address(raw_host)
    except ValueError:
        raise _Refused(
            "malformed", f"Endpoint URL host [{raw_host}] is not a valid IPv6 address"
        ) from None
    listed = _address_listed(address, allow.networks)
    why = address_refusal_reason(address)
    if why is not None and not (allow.private or listed):
        raise _Refused(
            "private_address",
            f"Endpoint URL host [{raw_host}] is not public: {why}. Private, reserved and "
            f"special-use addresses are refused; {_allow_address_hint(address)}",
        )
    return _Host(_is_loopback(address), listed and why is not None)


def _classify_numeric(host: str, allow: _Allow) -> _Host:
    """Check a host whose last label is a number."""
    address = parse_legacy_ipv4(host)
    if address is None:
        raise _Refused(
            "malformed",
            f"Endpoint URL host {host!r} looks numeric but is not a valid IPv4 address; "
            f"resolvers and URL parsers disagree about such hosts",
        )
    canonical = str(address) == host
    listed = _address_listed(address, allow.networks)
    why = address_refusal_reason(address)
    if why is not None and not (allow.private or listed):
        spelled = "" if canonical else f" (a legacy spelling of {address})"
        raise _Refused(
            "private_address",
            f"Endpoint URL host {host!r}{spelled} is not public: {why}. Private, reserved "
            f"and special-use addresses are refused; {_allow_address_hint(address)}",
        )
    if not canonical:
        raise _Refused(
            "malformed",
            f"Endpoint URL host {host!r} is a legacy IPv4 spelling of {address}; "
            f"write the address as four plain decimal octets",
        )
    return _Host(_is_loopback(address), listed and why is not None)


def _classify_name(host: str, allow: _Allow) -> _Host:
    """Check a DNS name host."""
    if len(host) > _MAX_HOST_LENGTH:
        raise _Refused("malformed", f"Endpoint URL host is longer than {_MAX_HOST_LENGTH} chars")
    for label in host.split("."):
        if len(label) > _MAX_LABEL_LENGTH or not _LABEL_RE.fullmatch(label):
            raise _Refused(
                "malformed", f"Endpoint URL host {host!r} has an invalid label {label!r}"
            )
    listed = _host_listed(host, allow.hosts)
    kind = _local_name_kind(host)
    if kind is not None and not (allow.private or listed):
        raise _Refused(
            "local_name",
            f"Endpoint URL host {host!r} {kind}, so it can only reach a private network; "
            f"such names are refused; {_allow_name_hint(host)}",
        )
    return _Host(host == "localhost" or host.endswith(".localhost"), listed)


def _check_host(raw_host: str, allow: _Allow) -> _Host:
    """Check the host aiohttp will resolve."""
    if "%" in raw_host:
        if ":" in raw_host:
            raise _Refused(
                "zone_id",
                f"Endpoint URL host [{raw_host}] carries an IPv6 zone id; zone ids select a "
                f"local interface and are never valid for a webhook endpoint",
            )
        raise _refuse_percent_host(raw_host)
    if ":" in raw_host:
        return _classify_ipv6(raw_host, allow)
    host = raw_host[:-1] if raw_host.endswith(".") else raw_host
    if not host or not _HOST_CHARS_RE.fullmatch(host):
        raise _Refused(
            "malformed", f"Endpoint URL host {raw_host!r} contains characters a host cannot"
        )
    if "" in host.split("."):
        raise _Refused("malformed", f"Endpoint URL host {raw_host!r} has an empty label")
    if _NUMERIC_LABEL_RE.fullmatch(host.rsplit(".", 1)[-1]):
        return _classify_numeric(host, allow)
    return _classify_name(host, allow)


def _parse(url: str) -> tuple[URL, str]:
    """Parse with yarl (as aiohttp does), refuse structural problems; return URL and raw host."""
    try:
        parsed = URL(url)
        # Decoding the host rejects invalid punycode ("xn--" labels) that yarl passes raw.
        _ = parsed.host
    except (ValueError, TypeError) as exc:  # UnicodeError (bad IDNA) is a ValueError
        raise _Refused("malformed", f"Endpoint URL cannot be parsed: {exc}") from None
    if parsed.scheme not in _SCHEMES:
        shown = parsed.scheme or "none"
        raise _Refused("scheme", f"Endpoint URL scheme must be https (got {shown!r})")
    authority = _raw_authority(url)
    raw_host = parsed.raw_host
    if authority is None or not raw_host:
        raise _Refused("missing_host", "Endpoint URL has no host (expected https://host/...)")
    if "@" in authority or parsed.raw_user is not None or parsed.raw_password is not None:
        raise _Refused(
            "userinfo",
            "Endpoint URL contains '@' userinfo (user:password@host); it is refused because "
            "it hides which host is contacted and leaks credentials",
        )
    if authority.startswith("[") and ":" not in raw_host:
        raise _Refused("malformed", "Endpoint URL has brackets around a non-IPv6 host")
    port = _raw_port(authority)
    if port and not (port.isascii() and port.isdigit()):
        # yarl reads "+443" and full-width digits as 443/8443; other parsers refuse them.
        raise _Refused(
            "malformed", f"Endpoint URL port {port!r} must be written in ASCII digits only"
        )
    if parsed.explicit_port == 0:
        raise _Refused("malformed", "Endpoint URL port 0 is not a valid destination port")
    return parsed, raw_host


@functools.lru_cache(maxsize=2048)
def _check(url: str, allow: _Allow, allow_http_localhost: bool) -> URL | tuple[str, str]:
    """Cached core of :func:`validate_endpoint_url`: the URL, or (reason, message) to raise."""
    try:
        _check_text(url)
        parsed, raw_host = _parse(url)
        host = _check_host(raw_host, allow)
        if parsed.scheme == "http" and not (
            allow_http_localhost and ((allow.private and host.localhost) or host.listed)
        ):
            raise _Refused(
                "http_not_allowed",
                "Endpoint URL must use https; plain http is only allowed for localhost "
                "(localhost, *.localhost, 127.0.0.0/8, ::1) when private hosts are allowed "
                "(--allow-private-hosts), and for host names (--allow-host) and private "
                "addresses (--allow-network) the allow-list names; a public address always "
                "needs https; allow_http_for_localhost=False refuses plain http everywhere",
            )
    except _Refused as refused:
        # Cache plain data, not the exception: it would pin its traceback's frames.
        return refused.reason, refused.message
    return parsed


def validate_endpoint_url(
    url: str,
    *,
    allow_private_hosts: bool = False,
    allow_http_for_localhost: bool = True,
    allowed_networks: Sequence[str | IPNetwork] = (),
    allowed_hosts: Sequence[str] = (),
) -> URL:
    """Return ``url`` parsed if it is a public https endpoint, else raise EndpointUrlError.

    ``allowed_networks``/``allowed_hosts`` admit those destinations even when private (see the
    module docstring); invalid entries are a ValueError.

    The check runs on the host exactly as aiohttp will connect to it, so send the returned
    :class:`yarl.URL` rather than the string. Results are cached, keeping it cheap per send.
    Redirects and proxies are outside its reach: send with ``allow_redirects=False`` and
    pair it with :class:`GuardedResolver` to catch names that resolve to private addresses.
    """
    if not isinstance(url, str):
        raise EndpointUrlError(
            f"Endpoint URL must be a string, not {type(url).__name__}", reason="malformed"
        )
    if len(url) > MAX_URL_LENGTH:
        raise EndpointUrlError(
            f"Endpoint URL is {len(url)} characters long; the limit is {MAX_URL_LENGTH}",
            reason="too_long",
            url=url[:100],
        )
    allow = _Allow(
        bool(allow_private_hosts),
        tuple(map(parse_allowed_network, allowed_networks)),
        tuple(map(parse_allowed_host, allowed_hosts)),
    )
    result = _check(url, allow, bool(allow_http_for_localhost))
    if isinstance(result, tuple):
        reason, message = result
        raise EndpointUrlError(message, reason=reason, url=url)
    return result


# --------------------------------------------------------------------------- resolvers


class ForbiddenAddressError(EndpointUrlError, OSError):
    """A DNS answer for an endpoint host is refused (private address, or empty).

    It is an ``OSError`` so aiohttp's connector wraps it in ``ClientConnectorDNSError``
    (reachable as ``exc.os_error`` and ``exc.__cause__``); see :func:`find_forbidden_address_error`.
    """

    def __init__(
        self, message: str, *, reason: str, host: str, addresses: Sequence[str] = ()
    ) -> None:
        super().__init__(message, reason=reason, url=None)
        self.host = host
        self.addresses = tuple(addresses)
        # aiohttp's ClientConnectorError shows strerror in its message.
        self.strerror = message


def find_forbidden_address_error(exc: BaseException) -> ForbiddenAddressError | None:
    """Find the guard's refusal inside an exception raised by ``session.request(...)``."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ForbiddenAddressError):
            return current
        if isinstance(current, ClientConnectorError):
            pending.append(current.os_error)
        pending.extend((current.__cause__, current.__context__))
    return None


class GuardedResolver(AbstractResolver):
    """Resolve through ``base`` and refuse any answer that contains a non-public address.

    One private address among public ones refuses the whole lookup (DNS rebinding and mixed
    answers), as does an empty answer. Refusals raise :class:`ForbiddenAddressError`, which
    aiohttp surfaces as ``aiohttp.ClientConnectorDNSError``. aiohttp does not consult the
    resolver for IP-literal hosts, so also call :func:`validate_endpoint_url` before each
    request; and disable redirects, whose targets are not re-validated.
    """

    def __init__(
        self,
        base: AbstractResolver | None = None,
        *,
        allow_private_hosts: bool = False,
        allowed_networks: Sequence[str | IPNetwork] = (),
    ) -> None:
        # No host list here: a listed name only skips the URL check's local-name test, so
        # its answers are judged like any other name's.
        self._base = base
        self._allow_private_hosts = allow_private_hosts
        self._networks = tuple(map(parse_allowed_network, allowed_networks))

    def _resolver(self) -> AbstractResolver:
        """The base resolver, created on first use (aiohttp's needs a running loop)."""
        if self._base is None:
            self._base = DefaultResolver()
        return self._base

    def _refusal(self, answer: str) -> str | None:
        """Say why one resolved address is refused, or None when it may be used."""
        try:
            address = ipaddress.ip_address(answer)
        except ValueError:
            return f"{answer!r} is not an IP address"
        if self._allow_private_hosts or _address_listed(address, self._networks):
            return None
        return address_refusal_reason(address)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve ``host`` and return the answers only if every address is allowed."""
        answers = await self._resolver().resolve(host, port, family)
        if not answers:
            raise ForbiddenAddressError(
                f"DNS lookup for {host!r} returned no addresses",
                reason="no_addresses",
                host=host,
            )
        addresses = [answer["host"] for answer in answers]
        refusals = [(a, why) for a in addresses if (why := self._refusal(a)) is not None]
        if refusals:
            refused, why = refusals[0]
            try:
                hint = _allow_address_hint(ipaddress.ip_address(refused))
            except ValueError:
                hint = "the answer is not an IP address"
            raise ForbiddenAddressError(
                f"Refusing to connect to {host!r}: {why} (answer: {', '.join(addresses)}); "
                f"endpoints must resolve only to public addresses or allowed networks (a name "
                f"on --allow-host is still checked); {hint}",
                reason="private_address",
                host=host,
                addresses=addresses,
            )
        return answers

    async def close(self) -> None:
        """Close the base resolver."""
        if self._base is not None:
            await self._base.close()


def _normalise_name(name: str) -> str:
    """Lower-case a host name and drop one trailing dot, as a lookup key."""
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


class StaticResolver(AbstractResolver):
    """Answer lookups from a fixed ``{name: [ip, ...]}`` table (tests, pinned DNS).

    Unknown names fail like a DNS miss (``socket.gaierror``); a name mapped to ``[]`` gives an
    empty answer. IP-literal hosts resolve to themselves, as ``getaddrinfo`` does.
    """

    def __init__(self, table: Mapping[str, Sequence[str]]) -> None:
        self._table: dict[str, tuple[IPAddress, ...]] = {}
        for name, addresses in table.items():
            if isinstance(addresses, str):
                raise TypeError(f"addresses for {name!r} must be a list of IP strings")
            self._table[_normalise_name(name)] = tuple(map(ipaddress.ip_address, addresses))

    def _lookup(self, host: str) -> tuple[IPAddress, ...]:
        """The table entry for ``host`` (or the literal itself); gaierror when unknown."""
        try:
            return (ipaddress.ip_address(host),)
        except ValueError:
            pass
        try:
            return self._table[_normalise_name(host)]
        except KeyError:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Return the table's addresses for ``host`` in aiohttp's ``ResolveResult`` form."""
        results: list[ResolveResult] = []
        for address in self._lookup(host):
            address_family = (
                socket.AF_INET if isinstance(address, ipaddress.IPv4Address) else socket.AF_INET6
            )
            if family not in (socket.AF_UNSPEC, address_family):
                continue
            results.append(
                ResolveResult(
                    hostname=host,
                    host=str(address),
                    port=port,
                    family=address_family,
                    proto=socket.IPPROTO_TCP,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            )
        return results

    async def close(self) -> None:
        """Nothing to release."""
