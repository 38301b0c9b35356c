"""Receiver verification: both schemes, interop, tolerance, replay, and malformed input."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
from collections import Counter
from datetime import UTC, datetime

import pytest
from multidict import CIMultiDict
from standardwebhooks.webhooks import Webhook
from starlette.datastructures import Headers

from kmsg_webhook.errors import (
    InvalidPayloadError,
    InvalidSecretError,
    InvalidSignatureError,
    InvalidTimestampError,
    MissingHeaderError,
    ReplayedMessageError,
    VerificationError,
)
from kmsg_webhook.events import WebhookEvent, WebhookEventType
from kmsg_webhook.signing import (
    SignatureScheme,
    Signer,
    generate_secret,
    generate_signing_keypair,
)
from kmsg_webhook.verify import ReplayGuard, Verifier, verify

NOW = 1_700_000_000
SECRET = generate_secret()
BODY = (
    WebhookEvent(
        id="evt_42",
        type=WebhookEventType.MESSAGE_DELIVERED,
        timestamp=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        data={"messageId": "m1"},
    )
    .to_json()
    .encode()
)


def sign(
    secrets: str | list[str] = SECRET,
    *,
    body: bytes = BODY,
    ts: int = NOW,
    msg_id: str = "msg_1",
    scheme: SignatureScheme = SignatureScheme.STANDARD,
) -> dict[str, str]:
    signer = Signer(secrets, scheme)
    return signer.headers(msg_id=msg_id, timestamp=ts, body=body, event_type="message.delivered")


# --- round trips and interop ----------------------------------------------------------------


def test_standard_round_trip() -> None:
    event = verify(BODY, sign(), SECRET, now=NOW)
    assert event.id == "evt_42" and event.type is WebhookEventType.MESSAGE_DELIVERED


def test_kmsg_round_trip_and_detection() -> None:
    headers = sign("k-msg secret", scheme=SignatureScheme.KMSG)
    assert verify(BODY, headers, "k-msg secret", now=NOW).id == "evt_42"
    assert verify(BODY, headers, "k-msg secret", now=NOW, scheme=SignatureScheme.KMSG).id


def test_kmsg_with_a_whsec_secret_uses_the_string_as_configured() -> None:
    headers = sign(SECRET, scheme=SignatureScheme.KMSG)
    ts = headers["X-Webhook-Timestamp"]
    expected = hmac.new(SECRET.encode(), f"{ts}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert headers["X-Webhook-Signature"] == f"sha256={expected}"
    assert verify(BODY, headers, SECRET, now=NOW).id == "evt_42"


def test_hand_written_kmsg_sender_is_accepted() -> None:
    digest = hmac.new(b"s3cret", f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    headers = {"x-webhook-timestamp": str(NOW), "x-webhook-signature": f"sha256={digest.upper()}"}
    assert verify(BODY, headers, "s3cret", now=NOW).id == "evt_42"


def test_official_sign_is_accepted() -> None:
    when = datetime.fromtimestamp(NOW, UTC)
    signature = Webhook(SECRET).sign("msg_abc", when, BODY.decode())
    headers = {
        "webhook-id": "msg_abc",
        "webhook-timestamp": str(NOW),
        "webhook-signature": signature,
    }
    assert verify(BODY, headers, SECRET, now=NOW).id == "evt_42"


def test_rotation_either_secret_verifies() -> None:
    old, new = generate_secret(), generate_secret()
    headers = sign([new, old])
    for secrets in (old, new, [generate_secret(), old]):
        assert verify(BODY, headers, secrets, now=NOW).id == "evt_42"
    when = datetime.fromtimestamp(NOW, UTC)
    official = " ".join(Webhook(s).sign("msg_1", when, BODY.decode()) for s in (new, old))
    official_headers = {**headers, "webhook-signature": official}
    for secret in (old, new):
        assert verify(BODY, official_headers, secret, now=NOW).id == "evt_42"
    with pytest.raises(InvalidSignatureError):
        verify(BODY, headers, generate_secret(), now=NOW)


def test_v1a_with_public_key_private_key_or_seed() -> None:
    private, public = generate_signing_keypair()
    headers = sign(private)
    assert headers["webhook-signature"].startswith("v1a,")
    assert verify(BODY, headers, public, now=NOW).id == "evt_42"
    assert verify(BODY, headers, private, now=NOW).id == "evt_42"
    seed_only = "whsk_" + base64.b64encode(base64.b64decode(private[5:])[:32]).decode()
    assert verify(BODY, sign(seed_only), public, now=NOW).id == "evt_42"
    with pytest.raises(InvalidSignatureError):
        verify(BODY, headers, generate_signing_keypair()[1], now=NOW)
    with pytest.raises(InvalidSignatureError):
        verify(BODY + b" ", headers, public, now=NOW)


def test_unknown_versions_are_ignored() -> None:
    good = sign()["webhook-signature"]
    headers = {**sign(), "webhook-signature": f"v2,abc v1a,{'A' * 88} {good} v9,zzz"}
    assert verify(BODY, headers, SECRET, now=NOW).id == "evt_42"
    with pytest.raises(InvalidSignatureError):
        verify(BODY, {**headers, "webhook-signature": "v2," + good[3:]}, SECRET, now=NOW)


@pytest.mark.parametrize(
    "make",
    [
        dict,
        lambda h: {k.title(): v for k, v in h.items()},
        lambda h: {k.upper(): v for k, v in h.items()},
        CIMultiDict,
        lambda h: Headers(headers={k.title(): v for k, v in h.items()}),
    ],
)
def test_header_lookup_is_case_insensitive(make: object) -> None:
    for scheme in SignatureScheme:
        headers = make(sign("s", scheme=scheme))  # type: ignore[operator]
        assert verify(BODY, headers, "s", now=NOW).id == "evt_42"


def test_verify_with_id_returns_the_signed_id() -> None:
    verifier = Verifier(SECRET)
    assert verifier.verify_with_id(BODY, sign(msg_id="msg_9"), now=NOW)[1] == "msg_9"
    kmsg = Verifier("s")
    headers = sign("s", msg_id="delivery_7", scheme=SignatureScheme.KMSG)
    assert kmsg.verify_with_id(BODY, headers, now=NOW)[1] == "evt_42"  # the header id is unsigned


# --- rejections -----------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [301, -301, 10_000, -10_000])
def test_timestamps_outside_tolerance_both_directions(offset: int) -> None:
    with pytest.raises(InvalidTimestampError, match="too"):
        verify(BODY, sign(ts=NOW + offset), SECRET, now=NOW)


def test_tolerance_edges_and_option() -> None:
    assert verify(BODY, sign(ts=NOW - 300), SECRET, now=NOW)
    assert verify(BODY, sign(ts=NOW + 300), SECRET, now=NOW)
    with pytest.raises(InvalidTimestampError):
        verify(BODY, sign(ts=NOW - 31), SECRET, now=NOW, tolerance_s=30)


@pytest.mark.parametrize(
    "value", ["abc", "1.5", "-5", " 1700000000", "1700000000 ", "１７００", "9" * 50, "0x10", "1e9"]
)
def test_non_integer_timestamps(value: str) -> None:
    headers = {**sign(), "webhook-timestamp": value}
    with pytest.raises(InvalidTimestampError):
        verify(BODY, headers, SECRET, now=NOW)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_standard_headers(missing: str) -> None:
    headers = sign()
    del headers[missing]
    with pytest.raises(MissingHeaderError):
        verify(BODY, headers, SECRET, now=NOW, scheme=SignatureScheme.STANDARD)
    if missing != "webhook-signature":
        with pytest.raises(MissingHeaderError, match=missing):
            verify(BODY, headers, SECRET, now=NOW)
    with pytest.raises(MissingHeaderError):
        verify(BODY, {**headers, missing: ""}, SECRET, now=NOW)


def test_missing_kmsg_headers_and_no_headers() -> None:
    headers = sign("s", scheme=SignatureScheme.KMSG)
    del headers["X-Webhook-Timestamp"]
    with pytest.raises(MissingHeaderError, match="X-Webhook-Timestamp"):
        verify(BODY, headers, "s", now=NOW)
    with pytest.raises(MissingHeaderError, match="webhook-signature"):
        verify(BODY, {}, "s", now=NOW)
    with pytest.raises(MissingHeaderError):  # a kmsg request where standard is required
        verify(BODY, sign("s", scheme=SignatureScheme.KMSG), "s", scheme=SignatureScheme.STANDARD)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h: {**h, "webhook-id": "msg_2"},
        lambda h: {**h, "webhook-timestamp": str(NOW + 1)},
        lambda h: {**h, "webhook-signature": h["webhook-signature"][:-6] + "AAAAA="},
    ],
)
def test_tampered_headers(tamper: object) -> None:
    with pytest.raises(InvalidSignatureError):
        verify(BODY, tamper(sign()), SECRET, now=NOW)  # type: ignore[operator]


def test_tampered_body_and_wrong_secret() -> None:
    with pytest.raises(InvalidSignatureError):
        verify(BODY.replace(b"m1", b"m2"), sign(), SECRET, now=NOW)
    with pytest.raises(InvalidSignatureError):
        verify(BODY, sign(), generate_secret(), now=NOW)
    kmsg = sign("right", scheme=SignatureScheme.KMSG)
    with pytest.raises(InvalidSignatureError):
        verify(BODY, kmsg, "wrong", now=NOW)
    with pytest.raises(InvalidSignatureError):
        verify(BODY + b"\n", kmsg, "right", now=NOW)


def test_kmsg_receiver_with_only_ed25519_keys_rejects_kmsg_requests() -> None:
    _, public = generate_signing_keypair()
    with pytest.raises(InvalidSignatureError):
        verify(BODY, sign("s", scheme=SignatureScheme.KMSG), public, now=NOW)


def test_signed_but_invalid_payloads() -> None:
    bodies = [
        b"\xff\xfe\x00garbage",
        b"not json",
        b"[]",
        b'{"id": "e", "type": "no.such", "timestamp": 1}',
        json.dumps({"id": "e", "type": "message.sent", "timestamp": "x" * 5000}).encode(),
        b"[" * 100_000 + b"]" * 100_000,
        b"",
    ]
    for body in bodies:
        with pytest.raises(InvalidPayloadError) as info:
            verify(body, sign(body=body), SECRET, now=NOW)
        assert info.value.reason == "invalid_payload"
        assert len(str(info.value)) < 300


def test_unsigned_non_utf8_body_is_a_bad_signature() -> None:
    with pytest.raises(InvalidSignatureError):
        verify(b"\xff\xfe", sign(), SECRET, now=NOW)


def test_huge_and_garbage_header_values() -> None:
    good = sign()
    huge = "v1," + "A" * 1_000_000
    cases = [
        {**good, "webhook-signature": huge},
        {**good, "webhook-signature": " ".join(["v1,AAAA"] * 10_000)},
        {**good, "webhook-signature": "v1," + "é" * 44},
        {**good, "webhook-signature": "\udcff\udcfe,\x00"},
        {**good, "webhook-signature": ",,,, v1 v1, ,v1a v1a,!!"},
        {**good, "webhook-id": "\ud800"},  # cannot be encoded at all
        {**good, "webhook-id": "x" * 1_000_000},
        {**good, "webhook-timestamp": "1" * 1_000_000},
    ]
    for headers in cases:
        with pytest.raises(VerificationError):
            verify(BODY, headers, SECRET, now=NOW)
    kmsg = sign("s", scheme=SignatureScheme.KMSG)
    for value in ("sha256=" + "zz" * 32, "sha256=" + "a" * 1_000_000, "sha256", "=", "sha256=é"):
        with pytest.raises(InvalidSignatureError):
            verify(BODY, {**kmsg, "X-Webhook-Signature": value}, "s", now=NOW)


def test_fuzzed_requests_only_raise_verification_errors() -> None:
    rng = random.Random(1234)
    good = {**sign(), **sign("raw", scheme=SignatureScheme.KMSG)}
    alphabet = "v1a,=. sha256+/0123456789abcdefABCDEF\x00\t\r\n\udcff\ud800é한"
    verifier = Verifier([SECRET, "raw", generate_signing_keypair()[1]])
    reasons: Counter[str] = Counter()

    def mutate(value: str) -> str:
        chars = list(value)
        for _ in range(rng.randint(1, 3)):
            index = rng.randrange(len(chars) + 1)
            action = rng.random()
            if action < 0.4 and chars:
                chars[min(index, len(chars) - 1)] = rng.choice(alphabet)
            elif action < 0.7:
                chars.insert(index, rng.choice(alphabet))
            elif chars:
                del chars[min(index, len(chars) - 1)]
        return "".join(chars)

    for _ in range(5000):
        headers = {
            name: mutate(value) if rng.random() < 0.3 else value
            for name, value in good.items()
            if rng.random() < 0.9
        }
        body = rng.choice([BODY, BODY[:-1], rng.randbytes(rng.randint(0, 64)), b""])
        try:
            verifier.verify(body, headers, now=NOW)
            reasons["ok"] += 1
        except VerificationError as exc:
            reasons[exc.reason] += 1
    assert {"ok", "missing_header", "invalid_timestamp", "invalid_signature"} <= set(reasons)


# --- replay guard ---------------------------------------------------------------------------


def test_duplicate_id_is_a_replay() -> None:
    guard = ReplayGuard()
    assert verify(BODY, sign(), SECRET, now=NOW, replay_guard=guard)
    with pytest.raises(ReplayedMessageError) as info:
        verify(BODY, sign(ts=NOW + 5), SECRET, now=NOW + 5, replay_guard=guard)
    assert info.value.reason == "replayed"
    assert verify(BODY, sign(msg_id="msg_2"), SECRET, now=NOW, replay_guard=guard)


def test_only_verified_messages_are_remembered() -> None:
    guard = ReplayGuard()
    with pytest.raises(InvalidSignatureError):
        verify(BODY, sign(generate_secret()), SECRET, now=NOW, replay_guard=guard)
    with pytest.raises(InvalidPayloadError):
        verify(b"{}", sign(body=b"{}"), SECRET, now=NOW, replay_guard=guard)
    assert len(guard) == 0
    assert verify(BODY, sign(), SECRET, now=NOW, replay_guard=guard)


def test_kmsg_replay_uses_the_signed_event_id() -> None:
    guard = ReplayGuard()
    verifier = Verifier("s", replay_guard=guard)
    verifier.verify(BODY, sign("s", msg_id="a", scheme=SignatureScheme.KMSG), now=NOW)
    with pytest.raises(ReplayedMessageError):  # a fresh unsigned id does not get it through
        verifier.verify(BODY, sign("s", msg_id="b", scheme=SignatureScheme.KMSG), now=NOW)


def test_guard_ttl_forget_and_bound() -> None:
    guard = ReplayGuard(ttl_s=10, max_entries=3)
    guard.check_and_remember("a", now=0)
    with pytest.raises(ReplayedMessageError):
        guard.check_and_remember("a", now=9)
    guard.check_and_remember("a", now=10.5)  # expired: accepted again
    guard.forget("a")
    guard.check_and_remember("a", now=11)
    for index in range(10):
        guard.check_and_remember(f"id{index}", now=12)
    assert len(guard) == 3
    guard.check_and_remember("late", now=100)
    assert len(guard) == 1  # everything expired was evicted
    with pytest.raises(ValueError):
        ReplayGuard(ttl_s=0)


# --- configuration --------------------------------------------------------------------------


def test_configuration_errors() -> None:
    with pytest.raises(InvalidSecretError):
        Verifier([])
    with pytest.raises(InvalidSecretError):
        Verifier(["ok", ""])
    with pytest.raises(InvalidSecretError, match="base64") as info:
        Verifier("whsec_!!secret-material!!")
    assert "secret-material" not in str(info.value)
    Verifier("whsec_!!secret-material!!", scheme=SignatureScheme.KMSG)  # raw under kmsg
    with pytest.raises(InvalidSecretError, match="kmsg"):
        Verifier(generate_signing_keypair()[1], scheme=SignatureScheme.KMSG)
    with pytest.raises(ValueError):
        Verifier(SECRET, tolerance_s=-1)


def test_explicit_kmsg_scheme_ignores_standard_headers() -> None:
    headers = {**sign("s", scheme=SignatureScheme.KMSG), **sign("other")}
    assert verify(BODY, headers, "s", now=NOW, scheme=SignatureScheme.KMSG).id == "evt_42"
    with pytest.raises(InvalidSignatureError):  # auto-detection prefers the standard headers
        verify(BODY, headers, "s", now=NOW)
