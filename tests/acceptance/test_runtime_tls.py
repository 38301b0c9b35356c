"""TLS settings: ``WebhookConfig.ssl`` trusts a private CA (a CA file or an ``SSLContext``) for
the runtime's own session and a caller's alike, keeps the connect-time URL guard, and never
turns verification off. The receiver is a local https server with a CA made in the test."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kmsg_webhook import (
    ConfigError,
    DeliveryFilter,
    DeliveryStatus,
    EndpointInput,
    InvalidEndpointError,
    SecurityOptions,
    StaticResolver,
    WebhookConfig,
    WebhookRuntimeService,
)
from kmsg_webhook.crypto import is_sealed, stored_view
from support.crypto_keys import config as crypto_config
from support.runtime import BOTH_TRANSPORTS
from support.servers import serve_app

pytestmark = BOTH_TRANSPORTS

LOOPBACK = SecurityOptions(allow_private_hosts=True)


@dataclass
class HttpsReceiver:
    port: int
    ca_file: Path
    hits: list[str]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}{path}"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _builder(subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> Any:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
    )


@dataclass
class LocalCA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    file: Path

    def issue(self, tmp: Path, name: str, *, server: bool) -> tuple[Path, Path]:
        """A certificate signed by this CA (for 127.0.0.1 and hooks.test when ``server``)."""
        key = ec.generate_private_key(ec.SECP256R1())
        builder = _builder(name, self.cert.subject, key)
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("hooks.test"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return _write_cert(cert, tmp / f"{name}.pem"), _write_key(key, tmp / f"{name}.key")


def _new_ca(tmp: Path) -> LocalCA:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder("kmsg test CA", _name("kmsg test CA"), key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return LocalCA(key, cert, _write_cert(cert, tmp / "ca.pem"))


@pytest.fixture
def local_ca(tmp_path: Path) -> LocalCA:
    return _new_ca(tmp_path)


@pytest.fixture(params=[False], ids=["server-auth"])
async def https_receiver(
    tmp_path: Path, local_ca: LocalCA, request: pytest.FixtureRequest
) -> AsyncIterator[HttpsReceiver]:
    """A local https receiver; parametrized with ``True`` it requires a client certificate
    signed by the same CA (mutual TLS)."""
    cert_file, key_file = local_ca.issue(tmp_path, "server", server=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_file, key_file)
    if request.param:
        server_ctx.verify_mode = ssl.CERT_REQUIRED
        server_ctx.load_verify_locations(local_ca.file)
    hits: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        hits.append(request.path)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{tail:.*}", hook)
    async with serve_app(app, ssl_context=server_ctx) as base:
        yield HttpsReceiver(int(base.rsplit(":", 1)[1]), local_ca.file, hits)


async def _deliver_one(runtime, make_event, url: str) -> list:  # type: ignore[no-untyped-def]
    await runtime.add_endpoint(EndpointInput(url=url, events=["message.sent"]))
    await runtime.emit(make_event())
    await runtime.flush()
    page = await runtime.list_deliveries(DeliveryFilter())
    return list(page.items)


async def test_the_default_verifies_and_refuses_an_unknown_ca(
    https_receiver, make_runtime, make_event
):
    runtime = await make_runtime(WebhookConfig(jitter=False, max_retries=0), security=LOOPBACK)
    [delivery] = await _deliver_one(runtime, make_event, https_receiver.url("/hook"))
    assert delivery.status is DeliveryStatus.EXHAUSTED
    assert "certificate" in (delivery.last_error or "").lower()
    assert https_receiver.hits == []


@pytest.mark.parametrize("setting", ["path", "str", "context"])
async def test_a_private_ca_is_trusted_when_configured(
    https_receiver, make_runtime, make_event, setting
):
    ca_file = https_receiver.ca_file
    trust = {
        "path": ca_file,
        "str": str(ca_file),
        "context": ssl.create_default_context(cafile=str(ca_file)),
    }[setting]
    runtime = await make_runtime(WebhookConfig(jitter=False, ssl=trust), security=LOOPBACK)
    [delivery] = await _deliver_one(runtime, make_event, https_receiver.url("/hook"))
    assert delivery.status is DeliveryStatus.SUCCESS
    assert https_receiver.hits == ["/hook"]


async def test_a_callers_session_trusts_the_same_ca(https_receiver, make_runtime, make_event):
    async with aiohttp.ClientSession() as session:
        runtime = await make_runtime(
            WebhookConfig(jitter=False, ssl=https_receiver.ca_file),
            security=LOOPBACK,
            session=session,
        )
        [delivery] = await _deliver_one(runtime, make_event, https_receiver.url("/hook"))
        assert delivery.status is DeliveryStatus.SUCCESS


async def test_the_connect_time_guard_still_refuses_a_private_address(
    https_receiver, make_runtime, make_event
):
    # A public-looking name that resolves to loopback: with the CA trusted, only the guard in
    # the session's resolver stands between the request and the private address.
    runtime = await make_runtime(
        WebhookConfig(jitter=False, ssl=https_receiver.ca_file),
        security=SecurityOptions(),
        resolver=StaticResolver({"hooks.test": ["127.0.0.1"]}),
    )
    [delivery] = await _deliver_one(runtime, make_event, https_receiver.url("/hook", "hooks.test"))
    assert delivery.status is DeliveryStatus.FAILED
    assert (delivery.last_error or "").startswith("refused")
    assert https_receiver.hits == []


def test_unverified_tls_is_not_offered(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not offered"):
        WebhookConfig(ssl=False)  # type: ignore[arg-type]
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    with pytest.raises(ConfigError, match="CERT_NONE"):
        WebhookConfig(ssl=unverified)


def test_a_bad_ca_file_fails_when_the_config_is_built(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        WebhookConfig(ssl=tmp_path / "missing.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot load"):
        WebhookConfig(ssl=junk)
    with pytest.raises(ConfigError, match="SSLContext"):
        WebhookConfig(ssl=42)  # type: ignore[arg-type]


@pytest.mark.parametrize("https_receiver", [True], ids=["mutual-tls"], indirect=True)
async def test_a_client_certificate_rides_on_the_configured_context(
    https_receiver, local_ca, tmp_path, make_runtime, make_event
):
    # A receiver that requires a client certificate: refused without one, accepted with the
    # context that carries it (one client identity for every endpoint of the runtime).
    plain = await make_runtime(
        WebhookConfig(jitter=False, max_retries=0, ssl=https_receiver.ca_file), security=LOOPBACK
    )
    [refused] = await _deliver_one(plain, make_event, https_receiver.url("/plain"))
    assert refused.status is DeliveryStatus.EXHAUSTED
    assert https_receiver.hits == []

    cert_file, key_file = local_ca.issue(tmp_path, "client", server=False)
    context = ssl.create_default_context(cafile=str(https_receiver.ca_file))
    context.load_cert_chain(cert_file, key_file)
    runtime = await make_runtime(WebhookConfig(jitter=False, ssl=context), security=LOOPBACK)
    [delivery] = await _deliver_one(runtime, make_event, https_receiver.url("/mtls"))
    assert delivery.status is DeliveryStatus.SUCCESS
    assert https_receiver.hits == ["/mtls"]


WORKER = [sys.executable, "-m", "kmsg_webhook.cli", "worker"]


def _start_worker(url: str, *options: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*WORKER, "--store", url, *options], stdout=subprocess.DEVNULL)


async def test_a_worker_process_trusts_the_ca_file_it_is_given(
    https_receiver, tmp_path, make_event
):
    url = f"sqlite:///{tmp_path / 'outbox.db'}"
    async with WebhookRuntimeService(persistence=url, security=LOOPBACK, dispatch=False) as intake:
        await intake.add_endpoint(
            EndpointInput(url=https_receiver.url("/worker"), events=["message.sent"])
        )
        await intake.emit(make_event())
    worker = _start_worker(url, "--allow-private-hosts", "--ca-file", str(https_receiver.ca_file))
    try:
        for _ in range(300):
            if https_receiver.hits:
                break
            await asyncio.sleep(0.05)
        assert https_receiver.hits == ["/worker"]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)


def test_a_worker_given_a_missing_ca_file_says_so(tmp_path: Path) -> None:
    worker = [*WORKER, "--store", "memory://", "--ca-file", str(tmp_path / "missing.pem")]
    done = subprocess.run(worker, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "does not exist" in done.stderr


@pytest.mark.parametrize("https_receiver", [True], ids=["mutual-tls"], indirect=True)
@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "field-crypto"])
async def test_an_endpoint_presents_its_own_client_certificate(
    https_receiver, local_ca, tmp_path, make_runtime, make_event, sealed
):
    cert_file, key_file = local_ca.issue(tmp_path, "client", server=False)
    cert_pem, key_pem = cert_file.read_text(), key_file.read_text()
    runtime = await make_runtime(
        WebhookConfig(jitter=False, max_retries=0, ssl=https_receiver.ca_file),
        security=LOOPBACK,
        field_crypto=crypto_config("A") if sealed else None,
    )
    with_cert = await runtime.add_endpoint(
        EndpointInput(
            url=https_receiver.url("/with"),
            events=["message.sent"],
            client_cert=cert_pem,
            client_key=key_pem,
        )
    )
    without = await runtime.add_endpoint(
        EndpointInput(url=https_receiver.url("/without"), events=["message.sent"])
    )
    await runtime.emit(make_event())
    await runtime.flush()

    statuses = {
        d.endpoint_id: d.status for d in (await runtime.list_deliveries(DeliveryFilter())).items
    }
    assert statuses == {with_cert.id: DeliveryStatus.SUCCESS, without.id: DeliveryStatus.EXHAUSTED}
    assert https_receiver.hits == ["/with"]
    assert repr(with_cert).count("PRIVATE KEY") == 0  # the key never shows in a repr
    stored = await stored_view(runtime.persistence).endpoint_store.get(with_cert.id)
    assert stored is not None and stored.client_cert == cert_pem
    assert is_sealed(stored.client_key or "") is sealed
    assert (await runtime.get_endpoint(with_cert.id)).client_key == key_pem  # type: ignore[union-attr]

    # Removing the certificate: the receiver refuses the next delivery.
    await runtime.update_endpoint(with_cert.id, client_cert=None, client_key=None)
    await runtime.emit(make_event())
    await runtime.flush()
    assert https_receiver.hits == ["/with"]


async def test_a_client_certificate_must_come_with_a_matching_key(local_ca, tmp_path, make_runtime):
    runtime = await make_runtime()
    cert_file, key_file = local_ca.issue(tmp_path, "one", server=False)
    _, other_key = local_ca.issue(tmp_path, "two", server=False)
    base = EndpointInput(url="https://hooks.example.com/in", events=["message.sent"])
    for cert, key, message in (
        (cert_file.read_text(), None, "go together"),
        (None, key_file.read_text(), "go together"),
        (cert_file.read_text(), other_key.read_text(), "do not load as a pair"),
        ("not a certificate", key_file.read_text(), "do not load as a pair"),
    ):
        with pytest.raises(InvalidEndpointError, match=message) as caught:
            await runtime.add_endpoint(dataclasses.replace(base, client_cert=cert, client_key=key))
        assert "PRIVATE KEY" not in str(caught.value)
    assert await runtime.list_endpoints() == []
    good = await runtime.add_endpoint(base)
    with pytest.raises(InvalidEndpointError, match="go together"):
        await runtime.update_endpoint(good.id, client_cert=cert_file.read_text())
