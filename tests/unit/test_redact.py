"""What URLs look like when printed: store URLs without credentials, endpoint URLs as origins."""

from __future__ import annotations

from kmsg_webhook.redact import redact_url, url_origin


def test_redact_url_hides_passwords() -> None:
    assert redact_url("postgresql://app:s3cret@db:5432/x?schema=a") == (
        "postgresql://app:***@db:5432/x?schema=a"
    )
    assert redact_url("postgresql://db/x?user=a&password=s3cret") == (
        "postgresql://db/x?user=a&password=***"
    )
    assert redact_url("sqlite:///a.db") == "sqlite:///a.db"
    assert redact_url("postgresql://db/x?sslpassword=k&sslmode=require") == (
        "postgresql://db/x?sslpassword=***&sslmode=require"
    )
    assert redact_url("d1+http://h:1/a/b?token=sekrit&x=1") == "d1+http://h:1/a/b?token=***&x=1"


def test_url_origin_keeps_scheme_host_and_port_only() -> None:
    assert url_origin("https://hooks.example.com/services/T0/B0/XXXX") == (
        "https://hooks.example.com/…"
    )
    assert url_origin("http://u:p@127.0.0.1:8080/in?token=t") == "http://127.0.0.1:8080/…"
    assert url_origin("https://[::1]:9/") == "https://[::1]:9"
    assert url_origin("http://[bad") == "<unparsable URL>"
