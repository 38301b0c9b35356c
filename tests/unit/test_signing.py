"""Signing: secret forms, key generation, both header schemes, and interop with standardwebhooks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from kmsg_webhook import sign, verify
from kmsg_webhook.errors import InvalidSecretError, SigningError
from kmsg_webhook.events import WebhookEvent, WebhookEventType
from kmsg_webhook.signing import (
    RESERVED_HEADERS,
    SignatureScheme,
    SignedHeaders,
    Signer,
    decode_secret,
    generate_secret,
    generate_signing_keypair,
)

BODY = (
    WebhookEvent(
        id="evt_1",
        type=WebhookEventType.MESSAGE_SENT,
        timestamp=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        data={"to": "01012345678", "text": "안녕하세요"},
    )
    .to_json()
    .encode()
)
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the Standard Webhooks test-vector secret


def _standard(signer: Signer, msg_id: str = "msg_1", ts: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    return signer.headers(msg_id=msg_id, timestamp=ts, body=BODY, event_type="message.sent")


# --- secret forms ---------------------------------------------------------------------------


def test_scheme_values() -> None:
    assert SignatureScheme.STANDARD.value == "standard"
    assert SignatureScheme.KMSG.value == "kmsg"
    assert SignatureScheme("kmsg") is SignatureScheme.KMSG


def test_generate_secret_is_whsec_with_random_bytes() -> None:
    first, second = generate_secret(), generate_secret()
    assert first.startswith("whsec_") and first != second
    assert len(base64.b64decode(first[6:])) == 32
    assert len(base64.b64decode(generate_secret(24)[6:])) == 24
    with pytest.raises(ValueError):
        generate_secret(8)


def test_generate_signing_keypair_matches_svix_layout() -> None:
    private, public = generate_signing_keypair()
    assert private.startswith("whsk_") and public.startswith("whpk_")
    raw_private, raw_public = base64.b64decode(private[5:]), base64.b64decode(public[5:])
    assert len(raw_private) == 64 and len(raw_public) == 32
    assert raw_private[32:] == raw_public  # seed + public key
    key = decode_secret(private)
    assert isinstance(key, Ed25519PrivateKey)
    assert key.public_key().public_bytes_raw() == raw_public


def test_decode_whsec_raw_and_kmsg_forms() -> None:
    assert decode_secret(SECRET) == base64.b64decode(SECRET[6:])
    assert decode_secret(SECRET[:-2]) == base64.b64decode(SECRET[6:-2] + "==")  # unpadded ok
    assert decode_secret("my k-msg secret") == b"my k-msg secret"
    assert decode_secret("비밀") == "비밀".encode()
    # Under kmsg every secret is its UTF-8, exactly as configured (a k-msg receiver does that).
    assert decode_secret(SECRET, SignatureScheme.KMSG) == SECRET.encode()
    assert decode_secret("whsec_not base64!", SignatureScheme.KMSG) == b"whsec_not base64!"


def test_decode_ed25519_forms() -> None:
    private = Ed25519PrivateKey.generate()
    seed, public = private.private_bytes_raw(), private.public_key().public_bytes_raw()
    for raw in (seed, seed + public):
        key = decode_secret("whsk_" + base64.b64encode(raw).decode())
        assert isinstance(key, Ed25519PrivateKey)
        assert key.private_bytes_raw() == seed
    key = decode_secret("whpk_" + base64.b64encode(public).decode())
    assert isinstance(key, Ed25519PublicKey)
    assert key.public_bytes_raw() == public


@pytest.mark.parametrize(
    ("secret", "scheme", "message"),
    [
        ("", SignatureScheme.STANDARD, "non-empty"),
        ("whsec_!!!not-base64!!!", SignatureScheme.STANDARD, "not valid base64"),
        ("whsec_c2VjcmV0\n", SignatureScheme.STANDARD, "not valid base64"),
        ("whsec_비밀", SignatureScheme.STANDARD, "not valid base64"),
        ("whsec_", SignatureScheme.STANDARD, "no bytes"),
        ("whsk_" + base64.b64encode(b"s" * 31).decode(), SignatureScheme.STANDARD, "31"),
        ("whsk_" + base64.b64encode(b"s" * 64).decode(), SignatureScheme.STANDARD, "not match"),
        ("whpk_" + base64.b64encode(b"p" * 33).decode(), SignatureScheme.STANDARD, "33"),
        ("whsk_%%%%", SignatureScheme.STANDARD, "not valid base64"),
        (generate_signing_keypair()[0], SignatureScheme.KMSG, "HMAC only"),
        (generate_signing_keypair()[1], SignatureScheme.KMSG, "HMAC only"),
    ],
)
def test_bad_secrets_raise_without_quoting_the_secret(
    secret: str, scheme: SignatureScheme, message: str
) -> None:
    with pytest.raises(InvalidSecretError, match=message) as info:
        decode_secret(secret, scheme)
    body = secret.partition("_")[2].strip()
    assert not body or body not in str(info.value)


# --- Signer ---------------------------------------------------------------------------------


def test_signer_without_secret_refuses() -> None:
    with pytest.raises(SigningError, match="no secret"):
        Signer([])


def test_signer_refuses_a_public_key() -> None:
    with pytest.raises(InvalidSecretError, match="whpk_"):
        Signer([generate_signing_keypair()[1]])


def test_signer_accepts_a_single_string() -> None:
    assert _standard(Signer(SECRET)) == _standard(Signer([SECRET]))


def test_signer_repr_hides_keys() -> None:
    private, _ = generate_signing_keypair()
    text = repr(Signer([SECRET, private, "raw secret"]))
    assert text == "Signer(scheme='standard', hmac_keys=2, ed25519_keys=1)"
    assert "whsec" not in text and "raw" not in text


def test_standard_headers_are_exactly_the_three() -> None:
    headers = _standard(Signer([SECRET]), ts=1674087231)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == "1674087231"
    key = base64.b64decode(SECRET[6:])
    expected = hmac.new(key, b"msg_1.1674087231." + BODY, hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(expected).decode()


def test_standard_matches_the_official_sign() -> None:
    ts = 1674087231
    ours = _standard(Signer([SECRET]), msg_id="msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", ts=ts)
    theirs = Webhook(SECRET).sign(
        "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", datetime.fromtimestamp(ts, UTC), BODY.decode()
    )
    assert ours["webhook-signature"] == theirs


def test_official_verify_accepts_ours() -> None:
    headers = _standard(Signer([SECRET]))
    assert Webhook(SECRET).verify(BODY, headers)["id"] == "evt_1"
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(BODY, headers)


def test_rotation_signs_with_every_secret_and_either_verifies() -> None:
    old, new = generate_secret(), generate_secret()
    headers = _standard(Signer([new, old]))
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert Webhook(secret).verify(BODY, headers)["type"] == "message.sent"


def test_v1a_signature_verifies_with_the_public_key() -> None:
    private, public = generate_signing_keypair()
    headers = _standard(Signer([SECRET, private]), ts=1700000000)
    v1, v1a = headers["webhook-signature"].split(" ")
    assert v1.startswith("v1,") and v1a.startswith("v1a,")
    key = decode_secret(public)
    assert isinstance(key, Ed25519PublicKey)
    key.verify(base64.b64decode(v1a[4:]), b"msg_1.1700000000." + BODY)  # raises if wrong


# --- sign(): one message in one line ----------------------------------------------------------


def test_sign_gives_the_three_standard_headers_the_official_verifier_accepts() -> None:
    headers = sign(BODY, SECRET)
    assert isinstance(headers, SignedHeaders)
    assert dict(headers) == {
        "webhook-id": headers.webhook_id,
        "webhook-timestamp": headers.webhook_timestamp,
        "webhook-signature": headers.webhook_signature,
    }
    assert headers.webhook_id.startswith("msg_")
    assert Webhook(SECRET).verify(BODY, dict(headers))["id"] == "evt_1"
    assert Webhook(SECRET).verify(BODY, headers)["id"] == "evt_1"  # the mapping as it is
    assert verify(BODY, headers, SECRET).id == "evt_1"
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(BODY, dict(headers))


def test_sign_matches_the_official_sign_for_a_given_id_and_time() -> None:
    ts = 1674087231
    headers = sign(BODY.decode(), SECRET, msg_id="msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", timestamp=ts)
    assert headers["webhook-timestamp"] == str(ts)
    theirs = Webhook(SECRET).sign(
        "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", datetime.fromtimestamp(ts, UTC), BODY.decode()
    )
    assert headers["webhook-signature"] == theirs


def test_sign_with_several_secrets_verifies_with_each() -> None:
    old, new = generate_secret(), generate_secret()
    headers = sign(BODY, [new, old], msg_id="msg_rotating")
    assert headers.webhook_id == "msg_rotating"
    for secret in (old, new):
        Webhook(secret).verify(BODY, dict(headers))


def test_signed_headers_answer_only_the_standard_names() -> None:
    headers = sign(BODY, SECRET)
    assert len(headers) == 3 and "webhook-id" in headers
    with pytest.raises(KeyError):
        headers["X-Webhook-Signature"]


@pytest.mark.parametrize(
    ("secrets", "kwargs", "error"),
    [
        ([], {}, SigningError),
        (generate_signing_keypair()[1], {}, InvalidSecretError),  # a public key cannot sign
        (SECRET, {"msg_id": "msg 1"}, SigningError),
        (SECRET, {"timestamp": -1}, SigningError),
    ],
)
def test_sign_refuses_what_cannot_be_signed(
    secrets: str | list[str], kwargs: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        sign(BODY, secrets, **kwargs)


def test_retries_keep_the_id_and_change_the_timestamp() -> None:
    signer = Signer([SECRET])
    first, retry = _standard(signer, ts=1700000000), _standard(signer, ts=1700000060)
    assert first["webhook-id"] == retry["webhook-id"]
    assert first["webhook-signature"] != retry["webhook-signature"]


@pytest.mark.parametrize("msg_id", ["", "msg 1", "msg\r\nX-Evil: 1", "메시지"])
def test_unsafe_message_ids_are_refused(msg_id: str) -> None:
    with pytest.raises(SigningError):
        _standard(Signer([SECRET]), msg_id=msg_id)


def test_dotted_message_ids_sign_and_verify_with_the_official_library() -> None:
    # Receivers take webhook-id verbatim, so dots in ids (e.g. "msg_1:message.sent") are safe.
    body = b'{"ok":true}'
    ts = int(time.time())
    headers = Signer([SECRET]).headers(
        msg_id="msg_1:message.sent", timestamp=ts, body=body, event_type="message.sent"
    )
    Webhook(SECRET).verify(body, headers)


@pytest.mark.parametrize("ts", [-1, True, 1.5, "1700000000"])
def test_bad_timestamps_are_refused(ts: object) -> None:
    with pytest.raises(SigningError):
        Signer([SECRET]).headers(msg_id="m", timestamp=ts, body=b"{}", event_type="x")  # type: ignore[arg-type]


# --- KMSG -----------------------------------------------------------------------------------


def _kmsg_receiver_accepts(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver written against k-msg does: one sha256=<hex> over f"{ts}.{body}"."""
    ts = headers["X-Webhook-Timestamp"]
    digest = hmac.new(secret.encode(), f"{ts}.{body.decode()}".encode(), hashlib.sha256)
    return hmac.compare_digest(headers["X-Webhook-Signature"], "sha256=" + digest.hexdigest())


@pytest.mark.parametrize("secret", ["plain k-msg secret", SECRET, "비밀번호"])
def test_kmsg_headers_satisfy_a_hand_written_receiver(secret: str) -> None:
    signer = Signer([secret], SignatureScheme.KMSG)
    headers = signer.headers(
        msg_id="evt_1", timestamp=1700000000, body=BODY, event_type="message.sent"
    )
    assert headers == {
        "X-Webhook-ID": "evt_1",
        "X-Webhook-Event": "message.sent",
        "X-Webhook-Timestamp": "1700000000",
        "X-Webhook-Signature": headers["X-Webhook-Signature"],
    }
    assert _kmsg_receiver_accepts(secret, headers, BODY)
    assert not _kmsg_receiver_accepts(secret + "x", headers, BODY)
    assert headers["X-Webhook-Signature"] == headers["X-Webhook-Signature"].lower()


@pytest.mark.parametrize("length", [1, 63, 64, 65, 200])
def test_signatures_are_hmac_sha256_for_keys_shorter_and_longer_than_a_block(
    length: int,
) -> None:
    # The signer keys SHA-256 states itself (RFC 2104): a key longer than the 64-byte block
    # is hashed first, a shorter one padded.
    secret = "k" * (length - 1) + "!"
    signer = Signer([secret], SignatureScheme.KMSG)
    headers = signer.headers(
        msg_id="evt_1", timestamp=1700000000, body=BODY, event_type="message.sent"
    )
    assert _kmsg_receiver_accepts(secret, headers, BODY)


def test_kmsg_several_secrets_are_space_separated() -> None:
    signer = Signer(["one", "two"], SignatureScheme.KMSG)
    value = signer.headers(msg_id="e", timestamp=1, body=b"{}", event_type="message.sent")[
        "X-Webhook-Signature"
    ]
    first, second = value.split(" ")
    for secret, entry in (("one", first), ("two", second)):
        assert entry == "sha256=" + hmac.new(secret.encode(), b"1.{}", hashlib.sha256).hexdigest()


def test_kmsg_allows_dotted_ids_but_not_bad_event_types() -> None:
    signer = Signer(["s"], SignatureScheme.KMSG)
    assert signer.headers(msg_id="a.b", timestamp=1, body=b"", event_type="x")["X-Webhook-ID"]
    with pytest.raises(SigningError, match="event type"):
        signer.headers(msg_id="a", timestamp=1, body=b"", event_type="")


def test_reserved_headers_cover_everything_the_signer_sets() -> None:
    private, _ = generate_signing_keypair()
    for signer in (Signer([SECRET, private]), Signer(["s"], SignatureScheme.KMSG)):
        names = signer.headers(msg_id="m", timestamp=1, body=b"", event_type="x").keys()
        assert {name.lower() for name in names} <= RESERVED_HEADERS
    assert {"content-type", "content-length", "host", "transfer-encoding"} <= RESERVED_HEADERS
    assert all(name == name.lower() for name in RESERVED_HEADERS)
