"""Tests for the SSRF guard: static URL checks, address policy and connect-time resolution."""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from kmsg_webhook import SecurityOptions
from kmsg_webhook.errors import ConfigError, EndpointUrlError
from kmsg_webhook.urlguard import (
    MAX_URL_LENGTH,
    ForbiddenAddressError,
    GuardedResolver,
    StaticResolver,
    address_refusal_reason,
    find_forbidden_address_error,
    is_address_allowed,
    parse_legacy_ipv4,
    validate_endpoint_url,
)
from support.servers import serve_app

PUBLIC_V4 = "93.184.216.34"

# --------------------------------------------------------------------------- hostile URLs

SCHEME = [
    "ftp://example.com/",
    "sftp://example.com/",
    "file:///etc/passwd",
    "file://localhost/etc/passwd",
    "gopher://example.com:70/_GET",
    "dict://example.com:11211/stat",
    "ldap://example.com/",
    "ws://example.com/",
    "wss://example.com/",
    "javascript:alert(1)",
    "data:text/plain,hi",
    "jar:https://example.com/x.jar!/",
    "//example.com/",
    "example.com/hook",
]

MISSING_HOST = [
    "https://",
    "https:///path",
    "https:example.com",
    "https:/example.com",
    "https://?x=1",
    "https://#frag",
]

USERINFO = [
    "https://user:pw@example.com/",
    "https://user@example.com/",
    "https://good.com@evil.com/",
    "https://:@example.com/",
    "https://@example.com/",
    "https://example.com%2f@evil.com/",
    "https://127.0.0.1:80@example.com/",
    "https://example.com:443@127.0.0.1/",
    "https://a%40b@example.com/",
]

CONTROL_CHARS = [
    "https://exa\tmple.com/",
    "https://exa\nmple.com/",
    "https://example.com\r/",
    "https://exa\x00mple.com/",
    "https://exa mple.com/",
    " https://example.com/",
    "https://example.com/\n",
    "https://example.com: 443/",
    "https://exa\x7fmple.com/",
    "https://exa\x85mple.com/",
    "https://exa\u00a0mple.com/",
    "https://exa\u2028mple.com/",
    "https://exa\u200bmple.com/",
    "https://exa\ufeffmple.com/",
    "https://a\u202eb.com/",
    "https://exa\u00admple.com/",
    "https://exa%00mple.com/",
    "https://exa%0ample.com/",
    "https://exa%20mple.com/",
    "https://127.0.0.1%09.example.com/",
]

MALFORMED = [
    "https://evil.com\\@good.com/",
    "https://evil.com\\good.com/",
    "https:\\\\example.com/",
    "https://:443/",
    "https://example.com../",
    "https://a..b.com/",
    "https://.example.com/",
    "https://example.com:0/",
    "https://example.com:65536/",
    "https://example.com:-1/",
    "https://example.com:80a/",
    "https://[::1/",
    "https://[1.2.3.4]/",
    "https://[v1.x]/",
    "https://ex%41mple.com/",
    "https://127%2e0%2e0%2e1/",
    "https://good.com%40evil.com/",
    "https://xn--zz.com/",
    "https://-bad.example.com/",
    "https://bad-.example.com/",
    "https://exa$mple.com/",
    "https://exa!mple.com/",
    "https://exa'mple.com/",
    "https://evil.com＠good.com/",
    "https://example.com／@evil.com/",
    "https://" + "a" * 64 + ".example.com/",
    "https://" + ".".join(["a" * 60] * 5) + ".com/",
    # numeric-looking hosts that are not valid IPv4
    "https://1.2.3.4.5/",
    "https://256.0.0.1/",
    "https://1.2.3.256/",
    "https://1.2.65536/",
    "https://08.0.0.1/",
    "https://0x/",
    "https://a.0x/",
    "https://example.123/",
    "https://4294967296/",
    "https://0x100000000/",
    "https://127.0.0.1.5/",
    # legacy spellings of *public* addresses: refused, aiohttp rejects them too
    "https://0x5db8d822/",
    "https://1572395042/",
    "https://010.0.0.1/",
    "https://1.1/",
    "https://93.184.55330/",
]

ZONE_ID = [
    "https://[fe80::1%25eth0]/",
    "https://[fe80::1%eth0]/",
    "https://[::1%251]/",
    "https://[::ffff:127.0.0.1%25lo]/",
]

PRIVATE_V4 = [
    "https://127.0.0.1/",
    "https://127.255.255.254/",
    "https://127.0.0.1:8443/hook",
    "https://127.1/",
    "https://127.0.1/",
    "https://2130706433/",
    "https://0x7f000001/",
    "https://0X7F000001/",
    "https://0x7f.1/",
    "https://0x7f.0.0.1/",
    "https://0x7f.0x0.0x0.0x1/",
    "https://0177.0.0.1/",
    "https://0177.1/",
    "https://017700000001/",
    "https://127.000.000.001/",
    "https://0x7f.0.1/",
    "https://127.0.0.1./",
    "https://0.0.0.0/",
    "https://0/",
    "https://0.1.2.3/",
    "https://10.0.0.1/",
    "https://10.255.255.255/",
    "https://012.1/",
    "https://172.16.0.1/",
    "https://172.31.255.255/",
    "https://192.168.0.1/",
    "https://192.168.255.255/",
    "https://3232235521/",
    "https://169.254.169.254/latest/meta-data/",
    "https://169.254.0.1/",
    "https://0xa9fea9fe/",
    "https://2852039166/",
    "https://0251.0376.0251.0376/",
    "https://0xa9.0xfe.0xa9.0xfe/",
    "https://169.254.43518/",
    "https://100.64.0.1/",
    "https://100.127.255.255/",
    "https://192.0.0.1/",
    "https://192.0.0.170/",
    "https://192.0.2.1/",
    "https://192.88.99.1/",
    "https://198.18.0.1/",
    "https://198.19.255.255/",
    "https://198.51.100.1/",
    "https://203.0.113.1/",
    "https://224.0.0.1/",
    "https://239.255.255.250/",
    "https://240.0.0.1/",
    "https://255.255.255.255/",
    "https://4294967295/",
    # unicode digits and dots that IDNA folds into 127.0.0.1 / 169.254.169.254
    "https://１２７.０.０.１/",
    "https://127。0。0。1/",
    "https://１２７．０．０．１/",
    "https://127｡0｡0｡1/",
    "https://①②⑦.0.0.1/",
    "https://⑯⑨.②⑤④.⑯⑨.②⑤④/",
    "https://127.0.0.1\u3002/",
]

PRIVATE_V6 = [
    "https://[::]/",
    "https://[::1]/",
    "https://[::1]:8443/",
    "https://[0:0:0:0:0:0:0:1]/",
    "https://[0000::1]/",
    "https://[::ffff:127.0.0.1]/",
    "https://[::ffff:7f00:1]/",
    "https://[::FFFF:7F00:0001]/",
    "https://[0:0:0:0:0:ffff:127.0.0.1]/",
    "https://[::ffff:169.254.169.254]/",
    "https://[::ffff:a9fe:a9fe]/",
    "https://[::ffff:10.0.0.1]/",
    "https://[::ffff:0.0.0.0]/",
    "https://[::127.0.0.1]/",
    "https://[::7f00:1]/",
    "https://[::a9fe:a9fe]/",
    "https://[::8.8.8.8]/",
    "https://[::2]/",
    "https://[::ffff:0:127.0.0.1]/",
    "https://[fc00::1]/",
    "https://[fd12:3456:789a::1]/",
    "https://[fe80::1]/",
    "https://[febf::1]/",
    "https://[fec0::1]/",
    "https://[ff02::1]/",
    "https://[ff05::1:3]/",
    "https://[2001:db8::1]/",
    "https://[3fff::1]/",
    "https://[100::1]/",
    "https://[64:ff9b::7f00:1]/",
    "https://[64:ff9b::10.0.0.1]/",
    "https://[64:ff9b::a9fe:a9fe]/",
    "https://[64:ff9b:1::5db8:d822]/",
    "https://[2002:7f00:1::1]/",
    "https://[2002:a9fe:a9fe::]/",
    "https://[2002:c0a8:101::1]/",
    "https://[2001::1]/",
    "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
    "https://[2001:2::1]/",
    "https://[2001:10::1]/",
    "https://[5f00::1]/",
    "https://[4000::1]/",
    "https://[e000::1]/",
]

LOCAL_NAMES = [
    "https://localhost/",
    "https://LOCALHOST/",
    "https://localhost./",
    "https://localhost:8443/hook",
    "https://localhost#@example.com/",
    "https://localhost?@example.com/",
    "https://foo.localhost/",
    "https://a.b.localhost./",
    "https://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ/",
    "https://ｌｏｃａｌｈｏｓｔ/",
    "https://localhost。/",
    "https://printer/",
    "https://metadata/",
    "https://ip6-localhost/",
    "https://nas.local/",
    "https://printer.lan/",
    "https://metadata.google.internal/",
    "https://foo.internal./",
    "https://host.localdomain/",
    "https://localhost.localdomain/",
    "https://router.home.arpa/",
    "https://1.0.0.127.in-addr.arpa/",
    "https://nas.home/",
    "https://db.corp/",
    "https://wiki.intranet/",
    "https://vault.private/",
]

HTTP = [
    "http://example.com/",
    "HTTP://EXAMPLE.COM/",
    "http://93.184.216.34/",
    "http://[2606:4700::1111]/",
    "http://hooks.example.com:8080/webhook",
]

HOSTILE: list[tuple[str, str]] = [
    *((url, "scheme") for url in SCHEME),
    *((url, "missing_host") for url in MISSING_HOST),
    *((url, "userinfo") for url in USERINFO),
    *((url, "control_chars") for url in CONTROL_CHARS),
    *((url, "malformed") for url in MALFORMED),
    *((url, "zone_id") for url in ZONE_ID),
    *((url, "private_address") for url in PRIVATE_V4 + PRIVATE_V6),
    *((url, "local_name") for url in LOCAL_NAMES),
    *((url, "http_not_allowed") for url in HTTP),
    ("https://example.com/" + "a" * MAX_URL_LENGTH, "too_long"),
]


def test_hostile_table_is_long_and_distinct() -> None:
    urls = [url for url, _ in HOSTILE]
    assert len(urls) >= 120
    assert len(set(urls)) == len(urls)


@pytest.mark.parametrize(("url", "reason"), HOSTILE)
def test_hostile_url_is_refused(url: str, reason: str) -> None:
    with pytest.raises(EndpointUrlError) as info:
        validate_endpoint_url(url)
    assert info.value.reason == reason, str(info.value)
    assert str(info.value)


@pytest.mark.parametrize(("url", "reason"), HOSTILE)
def test_hostile_url_stays_refused_with_localhost_http(url: str, reason: str) -> None:
    # allow_http_for_localhost alone (the default) must never open anything up.
    with pytest.raises(EndpointUrlError):
        validate_endpoint_url(url, allow_private_hosts=False, allow_http_for_localhost=True)


# --------------------------------------------------------------------------- allowed URLs

ALLOWED = [
    "https://example.com/",
    "https://hooks.example.com/webhook",
    "https://example.com./",
    "https://EXAMPLE.com/Path",
    "https://example.com:8443/x?y=1#frag",
    "https://example.com:443/",
    "https://example.com:1/",
    "https://example.com:65535/",
    "https://93.184.216.34/",
    "https://1.1.1.1/",
    "https://8.8.8.8:8443/hook",
    "https://[2606:4700::1111]/",
    "https://[2001:4860:4860::8888]:8443/hooks",
    "https://bücher.example/",
    "https://xn--bcher-kva.example/",
    "https://例え.jp/",
    "https://hooks.example.com/über?q=ü",
    "https://sub_domain.example.com/",
    "https://a.b.c.example.org/deep/path",
    "https://add.cafe/",
    "https://0x7f.example.com/",
    "https://127.0.0.1.nip.io/",
    "https://example.com/?next=http://127.0.0.1/",
    "https://example.com/#@127.0.0.1",
    "https://example.com/a@b",
    "https://[::ffff:93.184.216.34]/",
    "https://[64:ff9b::5db8:d822]/",
    "https://[2002:5db8:d822::1]/",
    "https://100.63.255.255/",
    "https://100.128.0.0/",
    "https://172.15.255.255/",
    "https://172.32.0.0/",
    "https://192.167.255.255/",
    "https://192.169.0.0/",
    "https://169.253.255.255/",
    "https://11.0.0.1/",
    "https://223.255.255.255/",
]


@pytest.mark.parametrize("url", ALLOWED)
def test_public_https_url_passes(url: str) -> None:
    parsed = validate_endpoint_url(url)
    assert isinstance(parsed, URL)
    assert parsed.scheme == "https"
    assert parsed == URL(url)


def test_idn_host_is_checked_in_its_ascii_form() -> None:
    parsed = validate_endpoint_url("https://bücher.example/")
    assert parsed.raw_host == "xn--bcher-kva.example"


def test_result_is_cached() -> None:
    url = "https://cache-check.example.com/hook"
    assert validate_endpoint_url(url) is validate_endpoint_url(url)


def test_refusal_is_raised_fresh_each_time() -> None:
    errors = []
    for _ in range(2):
        with pytest.raises(EndpointUrlError) as info:
            validate_endpoint_url("https://10.0.0.1/")
        errors.append(info.value)
    assert errors[0] is not errors[1]
    assert errors[0].url == "https://10.0.0.1/"


def test_non_string_is_refused() -> None:
    with pytest.raises(EndpointUrlError) as info:
        validate_endpoint_url(URL("https://example.com/"))  # type: ignore[arg-type]
    assert info.value.reason == "malformed"


# --------------------------------------------------------------------------- option combinations


def test_pinned_loopback_http_refused_by_default() -> None:
    with pytest.raises(EndpointUrlError) as info:
        validate_endpoint_url("http://127.0.0.1:8787/webhook")
    assert info.value.reason == "private_address"
    assert "private" in str(info.value).lower()


def test_pinned_loopback_http_allowed_when_opted_in() -> None:
    parsed = validate_endpoint_url(
        "http://127.0.0.1:8787/webhook", allow_private_hosts=True, allow_http_for_localhost=True
    )
    assert parsed.port == 8787


def test_pinned_private_https_allowed_without_http() -> None:
    parsed = validate_endpoint_url(
        "https://192.168.0.10/hooks", allow_private_hosts=True, allow_http_for_localhost=False
    )
    assert parsed.host == "192.168.0.10"


def test_pinned_private_http_refused_as_http() -> None:
    with pytest.raises(EndpointUrlError) as info:
        validate_endpoint_url("http://192.168.0.10/", allow_private_hosts=True)
    assert info.value.reason == "http_not_allowed"


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8080/hook",
        "http://LOCALHOST./",
        "http://receiver.localhost/",
        "http://127.0.0.1/",
        "http://127.9.9.9:1234/",
        "http://[::1]:8080/",
    ],
)
def test_http_localhost_allowed_with_both_flags(url: str) -> None:
    validate_endpoint_url(url, allow_private_hosts=True, allow_http_for_localhost=True)


@pytest.mark.parametrize(
    "url",
    [
        "http://192.168.0.10/",
        "http://10.0.0.1/",
        "http://[fd00::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
        "http://nas.local/",
        "http://printer/",
        "http://example.com/",
    ],
)
def test_http_refused_for_non_localhost_even_with_private_allowed(url: str) -> None:
    with pytest.raises(EndpointUrlError) as info:
        validate_endpoint_url(url, allow_private_hosts=True, allow_http_for_localhost=True)
    assert info.value.reason == "http_not_allowed"


def test_http_localhost_refused_when_http_flag_off() -> None:
    with pytest.raises(EndpointUrlError) as info:
        validate_endpoint_url(
            "http://localhost/", allow_private_hosts=True, allow_http_for_localhost=False
        )
    assert info.value.reason == "http_not_allowed"


def test_http_localhost_refused_as_local_when_private_off() -> None:
    with pytest.raises(EndpointUrlError) as info:
        validate_endpoint_url("http://localhost/", allow_http_for_localhost=True)
    assert info.value.reason == "local_name"


@pytest.mark.parametrize(
    "url",
    [
        "https://localhost/",
        "https://nas.local/",
        "https://printer/",
        "https://metadata.google.internal/",
        "https://169.254.169.254/",
        "https://10.0.0.1:8443/",
        "https://[fd00::1]/",
        "https://[::1]/",
        "https://[::ffff:127.0.0.1]/",
        "https://0.0.0.0/",
    ],
)
def test_private_hosts_allowed_over_https_when_opted_in(url: str) -> None:
    validate_endpoint_url(url, allow_private_hosts=True, allow_http_for_localhost=False)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://127.1/", "malformed"),
        ("https://0x7f000001/", "malformed"),
        ("https://[fe80::1%25eth0]/", "zone_id"),
        ("https://user:pw@localhost/", "userinfo"),
        ("https://exa\tmple.local/", "control_chars"),
        ("ftp://localhost/", "scheme"),
        ("https://localhost:0/", "malformed"),
    ],
)
def test_structural_refusals_ignore_private_opt_in(url: str, reason: str) -> None:
    with pytest.raises(EndpointUrlError) as info:
        validate_endpoint_url(url, allow_private_hosts=True, allow_http_for_localhost=True)
    assert info.value.reason == reason


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1",
        "10.1.2.3",
        "169.254.169.254",
        "100.64.1.1",
        "192.0.0.9",
        "224.0.0.251",
        "255.255.255.255",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "2002:a00:1::",
        "64:ff9b::a00:1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "fe80::1%eth0",
        "fd00::1",
    ],
)
def test_private_address_refused_with_reason(text: str) -> None:
    address = ipaddress.ip_address(text)
    why = address_refusal_reason(address)
    assert why is not None and why
    assert not is_address_allowed(address, allow_private_hosts=False)
    assert is_address_allowed(address, allow_private_hosts=True)


@pytest.mark.parametrize(
    "text",
    [PUBLIC_V4, "1.1.1.1", "2606:4700::1111", "::ffff:93.184.216.34", "2002:5db8:d822::"],
)
def test_public_address_allowed(text: str) -> None:
    address = ipaddress.ip_address(text)
    assert address_refusal_reason(address) is None
    assert is_address_allowed(address, allow_private_hosts=False)


def test_mapped_loopback_is_refused_whatever_the_stdlib_says() -> None:
    # Python < 3.13 reports ::ffff:127.0.0.1 as not loopback; the guard must not care.
    why = address_refusal_reason(ipaddress.IPv6Address("::ffff:127.0.0.1"))
    assert why is not None and "loopback" in why


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0x7f.0.0.0x1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("4294967295", "255.255.255.255"),
        ("169.254.43518", "169.254.169.254"),
        ("1.2.3.4", "1.2.3.4"),
        ("1.2.3.4.5", None),
        ("256.1.1.1", None),
        ("1.2.3.256", None),
        ("08", None),
        ("0x", None),
        ("0x1g", None),
        ("1..2", None),
        ("1.2.3.", None),
        (".1.2.3", None),
        ("", None),
        ("4294967296", None),
        ("1.16777216", None),
        ("+1", None),
        ("1_000", None),
        ("١٢٧.0.0.1", None),
    ],
)
def test_parse_legacy_ipv4(text: str, expected: str | None) -> None:
    result = parse_legacy_ipv4(text)
    assert (None if result is None else str(result)) == expected


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="compares with glibc inet_aton")
@pytest.mark.parametrize(
    "text",
    [
        "127.1",
        "0x7f.1",
        "0177.0.1",
        "017700000001",
        "0x7fffffff",
        "0xffffffff",
        "0x100000000",
        "4294967296",
        "1.2.3.4.5",
        "08.1",
        "0x",
        "00",
        "0x0.0x0",
        "255.255.65535",
        "255.255.65536",
        "1.2.3.4.",
        "1.2..3",
        "0xG",
        "00000000000000000000177.1",
        "0x00000000000000007f.1",
    ],
)
def test_parse_legacy_ipv4_matches_glibc(text: str) -> None:
    try:
        expected: str | None = socket.inet_ntoa(socket.inet_aton(text))
    except OSError:
        expected = None
    result = parse_legacy_ipv4(text)
    assert (None if result is None else str(result)) == expected


# --------------------------------------------------------------------------- resolvers (unit)


async def test_static_resolver_returns_aiohttp_results() -> None:
    resolver = StaticResolver({"Hooks.Example.com.": [PUBLIC_V4, "2606:4700::1111"]})
    results = await resolver.resolve("hooks.example.com", 443, socket.AF_UNSPEC)
    assert results == [
        {
            "hostname": "hooks.example.com",
            "host": PUBLIC_V4,
            "port": 443,
            "family": socket.AF_INET,
            "proto": socket.IPPROTO_TCP,
            "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
        },
        {
            "hostname": "hooks.example.com",
            "host": "2606:4700::1111",
            "port": 443,
            "family": socket.AF_INET6,
            "proto": socket.IPPROTO_TCP,
            "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
        },
    ]
    v4 = await resolver.resolve("HOOKS.example.com.", 80, socket.AF_INET)
    assert [r["host"] for r in v4] == [PUBLIC_V4]
    v6 = await resolver.resolve("hooks.example.com", 80, socket.AF_INET6)
    assert [r["host"] for r in v6] == ["2606:4700::1111"]
    await resolver.close()


async def test_static_resolver_unknown_name_is_dns_failure() -> None:
    with pytest.raises(socket.gaierror):
        await StaticResolver({}).resolve("nowhere.example.com", 443)


async def test_static_resolver_literal_resolves_to_itself() -> None:
    results = await StaticResolver({}).resolve("127.0.0.1", 80, socket.AF_UNSPEC)
    assert [r["host"] for r in results] == ["127.0.0.1"]


def test_static_resolver_rejects_bad_table() -> None:
    with pytest.raises(TypeError):
        StaticResolver({"a.example.com": "1.2.3.4"})
    with pytest.raises(ValueError):
        StaticResolver({"a.example.com": ["not-an-ip"]})


async def test_guarded_resolver_passes_public_answers() -> None:
    guard = GuardedResolver(StaticResolver({"hooks.example.com": [PUBLIC_V4, "2606:4700::1111"]}))
    results = await guard.resolve("hooks.example.com", 443, socket.AF_UNSPEC)
    assert [r["host"] for r in results] == [PUBLIC_V4, "2606:4700::1111"]


@pytest.mark.parametrize(
    "answer",
    [
        ["127.0.0.1"],
        ["10.0.0.5"],
        ["169.254.169.254"],
        ["::1"],
        ["::ffff:127.0.0.1"],
        ["fd00::1"],
        [PUBLIC_V4, "127.0.0.1"],
        ["127.0.0.1", PUBLIC_V4],
        ["2606:4700::1111", "fe80::1"],
    ],
)
async def test_guarded_resolver_refuses_any_private_answer(answer: list[str]) -> None:
    guard = GuardedResolver(StaticResolver({"rebind.example.com": answer}))
    with pytest.raises(ForbiddenAddressError) as info:
        await guard.resolve("rebind.example.com", 443, socket.AF_UNSPEC)
    error = info.value
    assert isinstance(error, OSError)
    assert isinstance(error, EndpointUrlError)
    assert error.reason == "private_address"
    assert error.host == "rebind.example.com"
    assert error.addresses == tuple(str(ipaddress.ip_address(a)) for a in answer)


async def test_guarded_resolver_refuses_empty_answer() -> None:
    guard = GuardedResolver(StaticResolver({"empty.example.com": []}))
    with pytest.raises(ForbiddenAddressError) as info:
        await guard.resolve("empty.example.com", 443)
    assert info.value.reason == "no_addresses"


async def test_guarded_resolver_allows_private_when_opted_in() -> None:
    guard = GuardedResolver(
        StaticResolver({"nas.example.com": ["192.168.1.2"]}), allow_private_hosts=True
    )
    results = await guard.resolve("nas.example.com", 443)
    assert [r["host"] for r in results] == ["192.168.1.2"]


@dataclass
class _SequenceResolver(AbstractResolver):
    """Returns a different answer on each call, like a rebinding DNS server."""

    answers: list[list[str]]
    closed: bool = False
    calls: int = field(default=0)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return await StaticResolver({host: answer}).resolve(host, port, family)

    async def close(self) -> None:
        self.closed = True


async def test_guarded_resolver_catches_rebinding_on_second_lookup() -> None:
    base = _SequenceResolver([[PUBLIC_V4], ["127.0.0.1"]])
    guard = GuardedResolver(base)
    assert (await guard.resolve("rebind.example.com", 443))[0]["host"] == PUBLIC_V4
    with pytest.raises(ForbiddenAddressError):
        await guard.resolve("rebind.example.com", 443)


async def test_guarded_resolver_closes_base() -> None:
    base = _SequenceResolver([[PUBLIC_V4]])
    await GuardedResolver(base).close()
    assert base.closed


async def test_guarded_resolver_default_base_is_lazy() -> None:
    guard = GuardedResolver()
    await guard.close()  # nothing created yet, nothing to close


async def test_guarded_threaded_resolver_refuses_hex_ipv4_name() -> None:
    # aiohttp hands "0x7f000001" to the resolver (it does not look like an IP to it), and
    # getaddrinfo parses it locally as 127.0.0.1 -- no DNS query is made.
    guard = GuardedResolver(ThreadedResolver())
    try:
        with pytest.raises(ForbiddenAddressError):
            await guard.resolve("0x7f000001", 80, socket.AF_INET)
    except socket.gaierror:
        pytest.skip("this libc/sandbox does not resolve numeric hosts")
    finally:
        await guard.close()


# --------------------------------------------------------------------------- connect time


@dataclass
class Receiver:
    """A real aiohttp server on 127.0.0.1 that counts the requests it receives."""

    port: int
    hits: list[str]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hits: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        hits.append(request.host)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", handle)
    async with serve_app(app) as base:
        yield Receiver(port=int(base.rsplit(":", 1)[1]), hits=hits)


def _session(table: dict[str, list[str]], *, allow_private_hosts: bool) -> aiohttp.ClientSession:
    resolver = GuardedResolver(StaticResolver(table), allow_private_hosts=allow_private_hosts)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=resolver))


async def test_name_resolving_to_loopback_never_reaches_server(receiver: Receiver) -> None:
    async with _session({"hooks.example.com": ["127.0.0.1"]}, allow_private_hosts=False) as s:
        with pytest.raises(aiohttp.ClientConnectorDNSError) as info:
            await s.post(f"http://hooks.example.com:{receiver.port}/hook", json={"a": 1})
    assert receiver.hits == []
    exc = info.value
    # What the caller of session.post sees: aiohttp's DNS error (a ClientError and OSError)...
    assert type(exc) is aiohttp.ClientConnectorDNSError
    assert isinstance(exc, aiohttp.ClientError) and isinstance(exc, OSError)
    # ...with the guard's refusal as os_error and __cause__.
    refusal = exc.os_error
    assert isinstance(refusal, ForbiddenAddressError)
    assert exc.__cause__ is refusal
    assert find_forbidden_address_error(exc) is refusal
    assert refusal.reason == "private_address"
    assert refusal.host == "hooks.example.com"
    assert refusal.addresses == ("127.0.0.1",)
    assert "loopback" in str(exc)


async def test_mixed_public_and_private_answer_is_refused(receiver: Receiver) -> None:
    table = {"mixed.example.com": [PUBLIC_V4, "127.0.0.1"]}
    async with _session(table, allow_private_hosts=False) as s:
        with pytest.raises(aiohttp.ClientConnectorDNSError) as info:
            await s.post(f"http://mixed.example.com:{receiver.port}/hook")
    assert receiver.hits == []
    refusal = find_forbidden_address_error(info.value)
    assert refusal is not None
    assert refusal.addresses == (PUBLIC_V4, "127.0.0.1")


async def test_private_answer_reaches_server_when_opted_in(receiver: Receiver) -> None:
    url = f"http://hooks.example.com:{receiver.port}/hook"
    session = _session({"hooks.example.com": ["127.0.0.1"]}, allow_private_hosts=True)
    async with session as s, s.post(url) as response:
        assert response.status == 200
        assert await response.text() == "ok"
    assert receiver.hits == [f"hooks.example.com:{receiver.port}"]


async def test_unknown_name_is_plain_dns_error(receiver: Receiver) -> None:
    async with _session({}, allow_private_hosts=False) as s:
        with pytest.raises(aiohttp.ClientConnectorDNSError) as info:
            await s.post(f"http://nowhere.example.com:{receiver.port}/hook")
    assert isinstance(info.value.os_error, socket.gaierror)
    assert find_forbidden_address_error(info.value) is None
    assert receiver.hits == []


async def test_both_layers_stop_a_wildcard_dns_name(receiver: Receiver) -> None:
    # The name passes the static check (it is a public-looking name)...
    url = validate_endpoint_url(f"https://127.0.0.1.nip.io:{receiver.port}/hook")
    # ...and the connect-time guard refuses it before any TLS or TCP work.
    async with _session({"127.0.0.1.nip.io": ["127.0.0.1"]}, allow_private_hosts=False) as s:
        with pytest.raises(aiohttp.ClientConnectorDNSError) as info:
            await s.post(url)
    assert find_forbidden_address_error(info.value) is not None
    assert receiver.hits == []


async def test_ip_literal_skips_resolver_so_static_check_is_needed(receiver: Receiver) -> None:
    url = f"http://127.0.0.1:{receiver.port}/hook"
    async with _session({}, allow_private_hosts=False) as s, s.post(url) as response:
        assert response.status == 200
    assert len(receiver.hits) == 1  # the resolver guard alone did not stop it
    with pytest.raises(EndpointUrlError) as info:
        validate_endpoint_url(url)
    assert info.value.reason == "private_address"


def test_find_forbidden_address_error_walks_causes() -> None:
    refusal = ForbiddenAddressError("no", reason="private_address", host="h", addresses=["::1"])
    try:
        try:
            raise refusal
        except ForbiddenAddressError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert find_forbidden_address_error(outer) is refusal
    assert find_forbidden_address_error(ValueError("x")) is None
    assert refusal.strerror == "no"
    assert refusal.url is None


# --------------------------------------------------------------------------- the allow-list


@pytest.mark.parametrize(
    ("url", "networks", "hosts"),
    [
        ("http://127.0.0.1:8080/in", ["127.0.0.0/8"], []),
        ("https://10.42.0.7/in", ["10.42.0.0/16"], []),
        ("http://10.42.0.7/in", ["10.42.0.0/16"], []),  # a listed destination may use http
        ("https://[fd00::5]/in", ["fd00::/8"], []),
        ("https://[::ffff:10.42.0.7]/in", ["10.42.0.0/16"], []),
        ("http://receiver/in", [], ["receiver"]),
        ("https://hooks.billing.svc.cluster.local./in", [], ["*.svc.cluster.local"]),
        ("https://Hooks.Internal/in", [], ["hooks.internal"]),
    ],
)
def test_the_allow_list_admits_what_it_names(
    url: str, networks: list[str], hosts: list[str]
) -> None:
    with pytest.raises(EndpointUrlError):
        validate_endpoint_url(url)
    validate_endpoint_url(url, allowed_networks=networks, allowed_hosts=hosts)


@pytest.mark.parametrize(
    ("url", "reason", "hint"),
    [
        ("https://10.43.0.7/in", "private_address", "--allow-network 10.43.0.7/32"),
        ("https://169.254.169.254/in", "private_address", "--allow-network 169.254.169.254/32"),
        ("https://[fd01::1]/in", "private_address", "--allow-network fd01::1/128"),
        ("https://other.internal/in", "local_name", "--allow-host other.internal"),
        ("https://svc.cluster.local/in", "local_name", "--allow-host svc.cluster.local"),
        ("http://localhost:8080/in", "local_name", "--allow-host localhost"),
        ("http://93.184.216.34/in", "http_not_allowed", "--allow-network"),
    ],
)
def test_the_allow_list_admits_nothing_else_and_says_how(url: str, reason: str, hint: str) -> None:
    with pytest.raises(EndpointUrlError) as info:
        validate_endpoint_url(
            url,
            allowed_networks=["10.42.0.0/16", "fd00::/16"],
            allowed_hosts=["hooks.internal", "*.svc.cluster.local"],
        )
    assert info.value.reason == reason
    assert hint in str(info.value)


@pytest.mark.parametrize(
    ("networks", "hosts"),
    [(["10.0.0.1/8"], []), (["not-a-net"], []), ([], ["127.0.0.1"]), ([], ["bad host"])],
)
def test_security_options_refuse_a_malformed_allow_list(
    networks: list[str], hosts: list[str]
) -> None:
    with pytest.raises(ConfigError):
        SecurityOptions(allowed_networks=networks, allowed_hosts=hosts)


def test_security_options_normalise_the_allow_list() -> None:
    options = SecurityOptions(allowed_networks=["10.0.0.0/8"], allowed_hosts=["Hooks.Internal."])
    assert options.allowed_networks == (ipaddress.ip_network("10.0.0.0/8"),)
    assert options.allowed_hosts == ("hooks.internal",)
    assert options.describe() == "public hosts and 10.0.0.0/8, hooks.internal"


def _listed_session(
    table: dict[str, list[str]], *, networks: tuple[str, ...] = ()
) -> aiohttp.ClientSession:
    resolver = GuardedResolver(StaticResolver(table), allowed_networks=networks)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=resolver))


async def test_a_name_resolving_into_an_allowed_network_connects(receiver: Receiver) -> None:
    url = f"http://hooks.example.com:{receiver.port}/hook"
    table = {"hooks.example.com": ["127.0.0.1"]}
    async with _listed_session(table, networks=("127.0.0.0/8",)) as s, s.post(url) as response:
        assert response.status == 200
    async with _listed_session(table, networks=("10.0.0.0/8",)) as s:
        with pytest.raises(aiohttp.ClientConnectorDNSError) as info:
            await s.post(url)
    assert "--allow-network 127.0.0.1/32" in str(find_forbidden_address_error(info.value))
    assert len(receiver.hits) == 1


async def test_an_allowed_name_is_still_checked_for_what_it_resolves_to(
    receiver: Receiver,
) -> None:
    url = f"http://receiver.ns.svc.cluster.local:{receiver.port}/hook"
    metadata = f"http://metadata.ns.svc.cluster.local:{receiver.port}/hook"
    table = {
        "receiver.ns.svc.cluster.local": ["127.0.0.1"],
        "metadata.ns.svc.cluster.local": ["169.254.169.254"],
    }
    # The name passes the URL check, but its answer is private and no network allows it.
    SecurityOptions(allowed_hosts=["*.svc.cluster.local"]).check(url)
    async with _listed_session(table) as s:
        with pytest.raises(aiohttp.ClientConnectorDNSError) as info:
            await s.post(url)
    refusal = find_forbidden_address_error(info.value)
    assert refusal is not None and refusal.reason == "private_address"
    assert "--allow-network 127.0.0.1/32" in str(refusal)
    # Listing the cluster network as well admits it; the metadata address stays refused even
    # under a network wide enough to cover it.
    wide = ("0.0.0.0/0",)
    async with _listed_session(table, networks=wide) as s:
        async with s.post(url) as response:
            assert response.status == 200
        with pytest.raises(aiohttp.ClientConnectorDNSError) as info:
            await s.post(metadata)
    assert "169.254.169.254 is a link-local address" in str(
        find_forbidden_address_error(info.value)
    )
    assert len(receiver.hits) == 1


async def test_only_a_link_local_network_admits_link_local_answers(receiver: Receiver) -> None:
    table = {"meta.example.com": ["169.254.169.254"]}
    for networks in (("169.254.0.0/15",), ("169.0.0.0/8",)):
        guard = GuardedResolver(StaticResolver(table), allowed_networks=networks)
        with pytest.raises(ForbiddenAddressError):
            await guard.resolve("meta.example.com")
    guard = GuardedResolver(StaticResolver(table), allowed_networks=("169.254.169.254/32",))
    assert [a["host"] for a in await guard.resolve("meta.example.com")] == ["169.254.169.254"]
    with pytest.raises(EndpointUrlError):
        validate_endpoint_url("https://169.254.169.254/", allowed_networks=["0.0.0.0/0"])
    validate_endpoint_url("https://169.254.169.254/", allowed_networks=["169.254.169.254/32"])


@pytest.mark.parametrize("wildcard", ["*.com", "*.local", "*.svc"])
def test_a_wildcard_covering_a_top_level_domain_is_refused(wildcard: str) -> None:
    with pytest.raises(ConfigError, match="top-level domain"):
        SecurityOptions(allowed_hosts=[wildcard])
    SecurityOptions(allowed_hosts=[f"*.hooks{wildcard[1:]}"])


def test_an_ipv4_mapped_literal_is_allowed_by_the_network_its_hint_names() -> None:
    url = "http://[::ffff:7f00:2]:8080/in"
    with pytest.raises(EndpointUrlError) as info:
        validate_endpoint_url(url)
    assert "--allow-network 127.0.0.2/32" in str(info.value)
    validate_endpoint_url(url, allowed_networks=["127.0.0.2/32"])
    # A network written in the mapped form means the same IPv4 network.
    validate_endpoint_url(url, allowed_networks=["::ffff:7f00:2/128"])
    assert SecurityOptions(allowed_networks=["::ffff:7f00:0/120"]).allowed_networks == (
        ipaddress.ip_network("127.0.0.0/24"),
    )


def test_plain_http_to_a_listed_public_address_is_refused() -> None:
    with pytest.raises(EndpointUrlError) as info:
        validate_endpoint_url("http://8.8.8.8/in", allowed_networks=["8.8.8.0/24"])
    assert info.value.reason == "http_not_allowed"
    assert "a public address always needs https" in str(info.value)
    validate_endpoint_url("https://8.8.8.8/in", allowed_networks=["8.8.8.0/24"])
    validate_endpoint_url("http://10.42.0.7/in", allowed_networks=["10.42.0.0/16"])
