"""Field crypto: envelopes, keys, modes, and what sits in each backend's database.

The store conformance suite already runs every backend through the crypto wrappers
(``<backend>+crypto`` in support.stores.BACKENDS). Here: the envelope and its failure kinds, key and
config validation, and per backend (memory, SQLite, Postgres, D1), the rows as the database
holds them read with plain SQL, key rotation with ``rekey``, and listings that report bad rows.
"""

from __future__ import annotations

import base64
import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from kmsg_webhook import (
    ConfigError,
    DecryptionError,
    DecryptionFailure,
    DeliveryFilter,
    DeliveryStatus,
    PayloadRewrite,
    RetiredSecret,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    WebhookEventType,
    WebhookPersistence,
    create_in_memory_persistence,
)
from kmsg_webhook.crypto import (
    ENVELOPE_PREFIX,
    EnvKeyProvider,
    FailMode,
    FieldCrypto,
    FieldCryptoConfig,
    FieldMode,
    StaticKeyProvider,
    associated_data,
    generate_key,
    is_sealed,
    redaction,
    rekey,
    stored_view,
    with_field_crypto,
)
from kmsg_webhook.crypto.envelope import Envelope
from kmsg_webhook.stores.d1 import create_d1_persistence
from support.crypto_keys import HASH_KEY, KEY_A, KEY_B, config, keys
from support.d1 import fresh_tables, require_local_d1
from support.stores import server_dsn, temporary_postgres, temporary_sqlite

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SECRET = "whsec_c2VjcmV0LW9mLWVwLTE="
OLD_SECRET = "whsec_b2xkLXNlY3JldC1lcC0x"
TOKEN = "Bearer tok-0123456789"
TO, FROM = "010-1234-5678", "02-555-0199"
TEXT = "인증번호 482913"


def seal(crypto: FieldCrypto, value: str, record_id: str = "dlv_1", column: str = "payload") -> str:
    return crypto.seal(value, table="deliveries", column=column, record_id=record_id)


def unseal(
    crypto: FieldCrypto, value: str, record_id: str = "dlv_1", column: str = "payload"
) -> str:
    return crypto.open(value, table="deliveries", column=column, record_id=record_id)


def kind_of(crypto: FieldCrypto, value: str, record_id: str = "dlv_1") -> DecryptionFailure:
    with pytest.raises(DecryptionError) as caught:
        unseal(crypto, value, record_id)
    return caught.value.kind


def flip(text: str, index: int) -> str:
    """``text`` with the base64url character at ``index`` changed (still valid base64url)."""
    swapped = "A" if text[index] != "A" else "B"
    return text[:index] + swapped + text[index + 1 :]


# -- the envelope ------------------------------------------------------------------------------


def test_envelope_is_versioned_text_with_a_fresh_nonce() -> None:
    crypto = FieldCrypto(config("A"))
    sealed = seal(crypto, TEXT)
    parts = sealed.split(":")
    assert sealed.startswith(ENVELOPE_PREFIX) and is_sealed(sealed)
    assert parts[:5] == ["kmsg", "enc", "v1", "A256GCM", "kA"]
    check, nonce, tag, ciphertext = parts[5:]
    assert len(base64.urlsafe_b64decode(check + "==")) == 6
    assert len(base64.urlsafe_b64decode(nonce + "==")) == 12
    assert len(base64.urlsafe_b64decode(tag + "==")) == 16
    assert len(base64.urlsafe_b64decode(ciphertext + "==")) == len(TEXT.encode())
    assert Envelope.parse(sealed).to_text() == sealed
    assert seal(crypto, TEXT) != sealed  # random nonce
    assert unseal(crypto, sealed) == TEXT
    assert unseal(crypto, seal(crypto, "")) == ""
    assert not is_sealed(TEXT) and not is_sealed('{"kmsg:enc:":1}')


def test_associated_data_is_a_fixed_json_array() -> None:
    aad = associated_data(tenant=None, table="deliveries", column="payload", record_id="dlv_1")
    assert aad == b'["kmsg-webhook/field/v1","","deliveries","payload","dlv_1"]'
    with_tenant = associated_data(tenant="t1", table="endpoints", column="secret", record_id="ép")
    assert with_tenant == '["kmsg-webhook/field/v1","t1","endpoints","secret","ép"]'.encode()


def test_a_value_opens_only_in_its_own_row_column_and_tenant() -> None:
    crypto = FieldCrypto(config("A"))
    sealed = seal(crypto, TEXT, "dlv_1")
    assert kind_of(crypto, sealed, "dlv_2") is DecryptionFailure.WRONG_AAD
    with pytest.raises(DecryptionError) as column:
        unseal(crypto, sealed, "dlv_1", column="secret")
    assert column.value.kind is DecryptionFailure.WRONG_AAD
    tenant = FieldCrypto(config("A", tenant_id="other"))
    assert kind_of(tenant, sealed) is DecryptionFailure.WRONG_AAD


def test_tampering_is_detected_in_every_part() -> None:
    crypto = FieldCrypto(config("A"))
    sealed = seal(crypto, TEXT)
    head, check, nonce, tag, ciphertext = sealed.rsplit(":", 4)
    for i, part in ((2, nonce), (3, tag), (4, ciphertext)):
        fields = [head, check, nonce, tag, ciphertext]
        fields[i] = flip(part, 0)
        assert kind_of(crypto, ":".join(fields)) is DecryptionFailure.TAMPERED
    assert kind_of(crypto, ":".join([head, flip(check, 0), nonce, tag, ciphertext])) is (
        DecryptionFailure.WRONG_AAD
    )


@pytest.mark.parametrize(
    "bad",
    [
        "kmsg:enc:v1:A256GCM:kA:short",
        "kmsg:enc:v2:A256GCM:kA:AAAAAAAA:AAAAAAAAAAAAAAAA:AAAAAAAAAAAAAAAAAAAAAA:AA",
        "kmsg:enc:v1:A128CBC:kA:AAAAAAAA:AAAAAAAAAAAAAAAA:AAAAAAAAAAAAAAAAAAAAAA:AA",
        "kmsg:enc:v1:A256GCM:kA:AAAAAAAA:AAAAAAAAAAAAAAAA:AAAAAAAAAAAAAAAAAAAAAA:@@",
        "kmsg:enc:v1:A256GCM:kA:AAAA:AAAAAAAAAAAAAAAA:AAAAAAAAAAAAAAAAAAAAAA:AA",
        "kmsg:enc:v1:A256GCM:k A:AAAAAAAA:AAAAAAAAAAAAAAAA:AAAAAAAAAAAAAAAAAAAAAA:AA",
    ],
)
def test_malformed_envelopes_are_a_typed_error(bad: str) -> None:
    assert kind_of(FieldCrypto(config("A")), bad) is DecryptionFailure.MALFORMED


def test_unknown_kid_and_what_errors_say() -> None:
    sealed = seal(FieldCrypto(config("C")), TEXT)
    with pytest.raises(DecryptionError) as caught:
        unseal(FieldCrypto(config("A", "B")), sealed)
    error = caught.value
    assert (error.kind, error.kid, error.table, error.column, error.record_id) == (
        DecryptionFailure.UNKNOWN_KID,
        "kC",
        "deliveries",
        "payload",
        "dlv_1",
    )
    assert str(error) == "cannot decrypt deliveries.payload of dlv_1 (key id kC): unknown_kid"
    for secret in (TEXT, base64.b64encode(KEY_A).decode(), sealed.split(":")[-1]):
        assert secret not in str(error) and secret not in repr(error)


def test_legacy_plaintext_is_read_unless_refused() -> None:
    assert unseal(FieldCrypto(config("A")), TEXT) == TEXT
    strict = FieldCrypto(config("A", accept_plaintext=False))
    assert kind_of(strict, TEXT) is DecryptionFailure.PLAINTEXT
    # A field whose mode is plain holds plaintext by design: never refused.
    assert strict.open(TEXT, table="x", column="y", record_id="z", sealed_mode=False) == TEXT


# -- keys and configuration ---------------------------------------------------------------------


def test_static_key_provider_validates_and_hides_keys() -> None:
    provider = StaticKeyProvider(
        {"k1": KEY_A, "k2": base64.b64encode(KEY_B).decode()}, active_kid="k2", hash_key=HASH_KEY
    )
    assert (provider.active_kid, provider.key("k1"), provider.key("k2")) == ("k2", KEY_A, KEY_B)
    assert provider.key("k3") is None and provider.kids == ("k1", "k2")
    assert StaticKeyProvider({"only": KEY_A}).active_kid == "only"
    assert "k1" in repr(provider) and KEY_A.hex() not in repr(provider)
    assert base64.b64encode(KEY_A).decode() not in repr(provider)
    urlsafe = base64.urlsafe_b64encode(KEY_B).decode().rstrip("=")
    assert StaticKeyProvider({"k": urlsafe}).key("k") == KEY_B
    for bad, match in (
        (({},), "at least one key"),
        (({"k1": b"short"},), "32 bytes"),
        (({"k:1": KEY_A},), "invalid key id"),
        (({"k1": "not base64!"},), "not valid base64"),
        (({"k1": KEY_A, "k2": KEY_B},), "active_kid is required"),
    ):
        with pytest.raises(ConfigError, match=match):
            StaticKeyProvider(*bad)
    with pytest.raises(ConfigError, match="not among"):
        StaticKeyProvider({"k1": KEY_A}, active_kid="k9")
    with pytest.raises(ConfigError, match="at least 32"):
        StaticKeyProvider({"k1": KEY_A}, hash_key=b"x" * 16)
    with pytest.raises(ConfigError, match="differ"):
        StaticKeyProvider({"k1": KEY_A}, hash_key=KEY_A)


def test_env_key_provider() -> None:
    a, b = base64.b64encode(KEY_A).decode(), base64.b64encode(KEY_B).decode()
    env = {"KMSG_WEBHOOK_KEYS": f" kA:{a} , kB:{b}", "KMSG_WEBHOOK_HASH_KEY": generate_key()}
    provider = EnvKeyProvider(env)
    assert (provider.active_kid, provider.key("kB")) == ("kA", KEY_B)
    assert EnvKeyProvider({**env, "KMSG_WEBHOOK_ACTIVE_KID": "kB"}).active_kid == "kB"
    assert provider.hash_key is not None and len(provider.hash_key) == 32
    with pytest.raises(ConfigError, match="KMSG_WEBHOOK_KEYS is not set"):
        EnvKeyProvider({})
    with pytest.raises(ConfigError, match="kid:base64key") as caught:
        EnvKeyProvider({"KMSG_WEBHOOK_KEYS": a})
    assert a not in str(caught.value)
    with pytest.raises(ConfigError, match="twice"):
        EnvKeyProvider({"KMSG_WEBHOOK_KEYS": f"kA:{a},kA:{b}"})
    assert len(base64.b64decode(generate_key())) == 32


def test_config_defaults_are_secure_and_modes_are_checked() -> None:
    cfg = config("A")
    assert (cfg.secret, cfg.headers, cfg.payload, cfg.to, cfg.from_) == (
        FieldMode.ENCRYPT,
        FieldMode.ENCRYPT,
        FieldMode.ENCRYPT,
        FieldMode.ENCRYPT_HASH,
        FieldMode.ENCRYPT_HASH,
    )
    assert (cfg.fail_mode, cfg.accept_plaintext) == (FailMode.CLOSED, True)
    relaxed = config("A", payload="plain", to="mask", from_="plain", fail_mode="open")  # type: ignore[arg-type]
    assert (relaxed.payload, relaxed.to, relaxed.fail_mode) == (
        FieldMode.PLAIN,
        FieldMode.MASK,
        FailMode.OPEN,
    )
    no_hash = StaticKeyProvider({"k": KEY_A})
    for options, match in (
        ({"secret": "mask"}, "secret cannot be 'mask'"),
        ({"secret": "encrypt+hash"}, "secret cannot be"),
        ({"headers": "mask"}, "headers cannot be"),
        ({"payload": "encrypt+hash"}, "payload cannot be"),
        ({"payload": "plain"}, "to='encrypt\\+hash' needs payload='encrypt'"),
        ({"payload": "plain", "to": "plain", "from_": "encrypt"}, "from='encrypt' needs"),
        ({"to": "scramble"}, "unknown field mode"),
        ({"fail_mode": "sometimes"}, "fail_mode"),
    ):
        with pytest.raises(ConfigError, match=match):
            FieldCryptoConfig(keys=keys("A"), **options)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs a hash key"):
        FieldCryptoConfig(keys=no_hash)
    assert FieldCryptoConfig(keys=no_hash, to="encrypt", from_="mask").to is FieldMode.ENCRYPT  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="KeyProvider"):
        FieldCryptoConfig(keys={"k": KEY_A})  # type: ignore[arg-type]

    class Broken:  # a KeyProvider whose active key is missing
        active_kid = "k1"
        hash_key = HASH_KEY

        def key(self, kid: str) -> bytes | None:
            return None

    with pytest.raises(ConfigError, match="active key 'k1' must be 32 bytes"):
        FieldCryptoConfig(keys=Broken())


def test_config_from_env() -> None:
    a = base64.b64encode(KEY_A).decode()
    assert FieldCryptoConfig.from_env({}) is None
    cfg = FieldCryptoConfig.from_env(
        {
            "KMSG_WEBHOOK_KEYS": f"kA:{a}",
            "KMSG_WEBHOOK_FIELD_MODES": "to=mask, from=plain,headers=plain",
            "KMSG_WEBHOOK_FAIL_MODE": "open",
            "KMSG_WEBHOOK_TENANT_ID": "acme",
            "KMSG_WEBHOOK_ACCEPT_PLAINTEXT": "false",
        }
    )
    assert cfg is not None
    assert (cfg.to, cfg.from_, cfg.headers, cfg.payload) == (
        FieldMode.MASK,
        FieldMode.PLAIN,
        FieldMode.PLAIN,
        FieldMode.ENCRYPT,
    )
    assert (cfg.fail_mode, cfg.tenant_id, cfg.accept_plaintext) == (FailMode.OPEN, "acme", False)
    with pytest.raises(ConfigError, match="needs a hash key"):
        FieldCryptoConfig.from_env({"KMSG_WEBHOOK_KEYS": f"kA:{a}"})
    with pytest.raises(ConfigError, match="field=mode"):
        FieldCryptoConfig.from_env(
            {"KMSG_WEBHOOK_KEYS": f"kA:{a}", "KMSG_WEBHOOK_FIELD_MODES": "x"}
        )


def test_recipient_hash_normalises_and_is_keyed() -> None:
    crypto = FieldCrypto(config("A"))
    h = crypto.recipient_hash("010-1234-5678")
    assert h is not None and len(h) == 64
    assert crypto.recipient_hash(" 010 1234 5678 ") == crypto.recipient_hash("01012345678") == h
    assert crypto.recipient_hash("+821012345678") not in (None, h)
    assert crypto.recipient_hash("010-****-5678") is None
    assert crypto.recipient_hash("KMSG") is None
    other = FieldCrypto(
        FieldCryptoConfig(keys=StaticKeyProvider({"kA": KEY_A}, hash_key=b"o" * 32))
    )
    assert other.recipient_hash("01012345678") != h


def test_mask_mode_masks_event_numbers_once() -> None:
    crypto = FieldCrypto(config("A", to="mask", from_="mask", payload="plain"))  # type: ignore[arg-type]
    event = WebhookEvent(
        id="e1",
        type=WebhookEventType.MESSAGE_SENT,
        timestamp=T0,
        data={"to": "01012345678", "from": "010-****-0000", "n": 1},
    )
    prepared = crypto.prepare_event(event)
    assert dict(prepared.data) == {"to": "010-****-5678", "from": "010-****-0000", "n": 1}
    assert crypto.prepare_event(prepared) == prepared
    assert FieldCrypto(config("A")).prepare_event(event) is event


def test_double_wrapping_is_refused() -> None:
    wrapped = with_field_crypto(create_in_memory_persistence(), config("A"))
    with pytest.raises(ConfigError, match="already"):
        with_field_crypto(wrapped, config("A"))


# -- per backend: what the database holds ------------------------------------------------------


@dataclass
class Backend:
    """An empty store without crypto, and its rows as the database holds them."""

    name: str
    persistence: WebhookPersistence
    dump: Callable[[], Awaitable[str]]


@pytest.fixture(params=["memory", "sqlite", "postgres", "d1"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    name = request.param
    if name == "memory":
        memory = create_in_memory_persistence()

        async def dump_memory() -> str:
            rows = [*await memory.endpoint_store.list(), *await memory.delivery_store.scan()]
            return "\n".join(repr(dataclasses.asdict(r)) for r in rows)

        yield Backend(name, memory, dump_memory)
    elif name == "sqlite":
        async with temporary_sqlite() as lite:

            async def dump_sqlite() -> str:
                with sqlite3.connect(lite.path) as conn:
                    rows = [
                        *conn.execute("SELECT * FROM kmsg_webhook_endpoints"),
                        *conn.execute("SELECT * FROM kmsg_webhook_deliveries"),
                    ]
                return "\n".join(map(repr, rows))

            yield Backend(name, lite.persistence(), dump_sqlite)
    elif name == "postgres":
        dsn = await server_dsn()
        async with temporary_postgres() as pg:
            schema = pg.names.schema

            async def dump_postgres() -> str:
                conn = await asyncpg.connect(dsn)
                try:
                    rows = [
                        *await conn.fetch(f'SELECT * FROM "{schema}".kmsg_webhook_endpoints'),
                        *await conn.fetch(f'SELECT * FROM "{schema}".kmsg_webhook_deliveries'),
                    ]
                finally:
                    await conn.close()
                return "\n".join(repr(tuple(r.values())) for r in rows)

            yield Backend(name, pg.persistence(), dump_postgres)
    else:
        local = require_local_d1()
        endpoints, deliveries = fresh_tables()
        client = local.client()
        d1 = create_d1_persistence(
            client,
            endpoint_table_name=endpoints,
            delivery_table_name=deliveries,
            close_client=True,
        )

        async def dump_d1() -> str:
            out = []
            for table in (endpoints, deliveries):
                result = await client.query(f'SELECT * FROM "{table}"')
                out += [repr(row) for row in result.rows]
            return "\n".join(out)

        try:
            yield Backend(name, d1, dump_d1)
        finally:
            assert d1.close is not None
            await d1.close()


CLIENT_KEY = "-----BEGIN PRIVATE KEY-----\nMIGHclientkey\n-----END PRIVATE KEY-----\n"


def an_endpoint(n: int = 1, **changes: object) -> WebhookEndpoint:
    base = WebhookEndpoint(
        id=f"ep_{n}",
        url=f"https://hooks{n}.example.com/in",
        events=(WebhookEventType.MESSAGE_SENT,),
        created_at=T0,
        updated_at=T0 + timedelta(seconds=n),
        secret=SECRET,
        previous_secrets=(RetiredSecret(OLD_SECRET, T0 + timedelta(days=1)),),
        headers={"Authorization": TOKEN, "X-Tenant": "acme-tenant-7"},
        client_cert="-----BEGIN CERTIFICATE-----\nMIIBcert\n-----END CERTIFICATE-----\n",
        client_key=CLIENT_KEY,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def payload(n: int, to: str = TO) -> str:
    event = WebhookEvent(
        id=f"evt_{n}",
        type=WebhookEventType.MESSAGE_SENT,
        timestamp=T0,
        data={"to": to, "from": FROM, "text": TEXT, "n": n},
    )
    return event.to_json()


def a_delivery(n: int, *, to: str = TO) -> WebhookDelivery:
    return WebhookDelivery(
        id=f"dlv_{n:04d}",
        endpoint_id="ep_1",
        event_id=f"evt_{n}",
        event_type=WebhookEventType.MESSAGE_SENT,
        url="https://hooks1.example.com/in",
        payload=payload(n, to),
        status=DeliveryStatus.PENDING,
        created_at=T0 + timedelta(milliseconds=n),
        next_attempt_at=T0,
    )


async def opened(p: WebhookPersistence) -> list[WebhookDelivery]:
    return list((await p.delivery_store.list(DeliveryFilter())).items)


async def test_the_database_holds_no_plaintext_secret_payload_or_number(backend: Backend) -> None:
    crypto = FieldCrypto(config("A"))
    store = with_field_crypto(backend.persistence, crypto)
    if store.init is not None:
        await store.init()
    endpoint = an_endpoint()
    rows = [a_delivery(1), a_delivery(2, to="+82 10-9876-5432")]
    await store.endpoint_store.add(endpoint)
    await store.delivery_store.insert_many(rows)

    assert await store.endpoint_store.get("ep_1") == endpoint
    assert list(await store.endpoint_store.list()) == [endpoint]
    got = await store.delivery_store.get("dlv_0001")
    assert got is not None and got.payload == rows[0].payload
    assert got.to_hash == crypto.recipient_hash(TO) and got.from_hash == crypto.recipient_hash(FROM)
    assert [d.payload for d in await opened(store)] == [rows[1].payload, rows[0].payload]

    raw = await backend.dump()
    # payloads, both secrets, both headers, the client key
    assert raw.count(ENVELOPE_PREFIX) >= 2 + 2 + 2 + 1
    for plaintext in (
        "MIGHclientkey",
        SECRET,
        OLD_SECRET,
        TOKEN,
        "tok-0123456789",
        "acme-tenant-7",
        TEXT,
        "1234-5678",  # no form of either number is stored
        "12345678",
        "9876-5432",
        "98765432",
        "555-0199",
        "5550199",
        '"evt_1"',  # nothing of the payload at all
    ):
        assert plaintext not in raw, plaintext
    assert crypto.recipient_hash(TO) in raw  # the lookup hash is stored (keyed, not reversible)
    assert "Authorization" in raw  # header names stay readable


async def test_rotation_write_under_a_add_b_rekey_remove_a(backend: Backend) -> None:
    under_a = with_field_crypto(backend.persistence, config("A"))
    if under_a.init is not None:
        await under_a.init()
    await under_a.endpoint_store.add(an_endpoint(1))
    await under_a.delivery_store.insert_many([a_delivery(n) for n in (1, 2, 3)])

    # B becomes active while A still opens: both read, new writes go under B.
    both = with_field_crypto(backend.persistence, config("A", "B", active="B"))
    await both.endpoint_store.add(an_endpoint(2))
    await both.delivery_store.insert_many([a_delivery(4)])
    assert len(await opened(both)) == 4
    assert [e.secret for e in await both.endpoint_store.list()] == [SECRET, SECRET]
    raw = await backend.dump()
    assert ":kA:" in raw and ":kB:" in raw

    report = await rekey(both, batch_size=2)
    assert (report.endpoints_checked, report.endpoints_rewritten) == (2, 1)
    assert (report.deliveries_checked, report.deliveries_rewritten) == (4, 3)
    assert (report.failed, report.skipped, report.last_id) == (0, 0, "dlv_0004")
    assert ":kA:" not in await backend.dump()
    again = await rekey(both)
    assert (again.endpoints_rewritten, again.deliveries_rewritten) == (0, 0)

    only_b = with_field_crypto(backend.persistence, config("B"))
    assert [d.payload for d in await opened(only_b)] == [
        a_delivery(n).payload for n in (4, 3, 2, 1)
    ]
    assert [e.headers["Authorization"] for e in await only_b.endpoint_store.list()] == [TOKEN] * 2
    lookup = DeliveryFilter(to_hash=FieldCrypto(config("B")).recipient_hash("01012345678"))
    assert len((await only_b.delivery_store.list(lookup)).items) == 4


async def test_bad_rows_are_typed_errors_and_the_rest_still_lists(backend: Backend) -> None:
    crypto = FieldCrypto(config("A", "B"))
    store = with_field_crypto(backend.persistence, crypto)
    if store.init is not None:
        await store.init()
    await store.endpoint_store.add(an_endpoint(1))
    await store.endpoint_store.add(an_endpoint(2))
    await store.delivery_store.insert_many([a_delivery(n) for n in range(1, 6)])
    raw = stored_view(store)
    by_id = {d.id: d for d in await raw.delivery_store.scan()}
    unknown_key = FieldCrypto(config("C"))

    def rewrite(n: int, new: str) -> PayloadRewrite:
        old = by_id[f"dlv_{n:04d}"]
        return PayloadRewrite(old.id, old.payload, new, old.to_hash, old.from_hash)

    head, tail = by_id["dlv_0002"].payload.rsplit(":", 1)
    applied = await raw.delivery_store.rewrite_payloads(
        [
            rewrite(2, f"{head}:{flip(tail, 3)}"),  # tampered ciphertext
            rewrite(3, by_id["dlv_0004"].payload),  # a valid envelope of another row
            rewrite(
                5,
                unknown_key.seal("{}", table="deliveries", column="payload", record_id="dlv_0005"),
            ),
        ]
    )
    assert applied == 3

    page = await store.delivery_store.list(DeliveryFilter())
    assert [d.id for d in page.items] == ["dlv_0004", "dlv_0001"]
    assert {e.record_id: e.error.kind for e in page.errors} == {  # type: ignore[attr-defined]
        "dlv_0005": DecryptionFailure.UNKNOWN_KID,
        "dlv_0003": DecryptionFailure.WRONG_AAD,
        "dlv_0002": DecryptionFailure.TAMPERED,
    }
    with pytest.raises(DecryptionError) as caught:
        await store.delivery_store.get("dlv_0002")
    assert caught.value.kind is DecryptionFailure.TAMPERED and caught.value.record_id == "dlv_0002"

    (ep,) = [e for e in await raw.endpoint_store.list() if e.id == "ep_2"]
    assert await raw.endpoint_store.rewrite_sealed(
        "ep_2", expected=ep, replacement=dataclasses.replace(ep, secret=by_id["dlv_0001"].payload)
    )
    endpoints = await store.endpoint_store.list()
    assert [e.id for e in endpoints] == ["ep_1"]
    assert [(e.record_id, e.error.kind) for e in endpoints.errors] == [  # type: ignore[attr-defined]
        ("ep_2", DecryptionFailure.WRONG_AAD)
    ]

    # Open mode: every row, unreadable values replaced by a marker (never the stored text).
    lenient = with_field_crypto(backend.persistence, config("A", "B", fail_mode="open"))  # type: ignore[arg-type]
    page = await lenient.delivery_store.list(DeliveryFilter())
    assert len(page.items) == 5 and len(page.errors) == 3
    payloads = {d.id: d.payload for d in page.items}
    assert payloads["dlv_0002"] == redaction(DecryptionFailure.TAMPERED) == "[unreadable: tampered]"
    assert payloads["dlv_0001"] == a_delivery(1).payload
    bad = await lenient.endpoint_store.get("ep_2")
    assert bad is not None and bad.secret == "[unreadable: wrong_aad]"
    assert bad.headers["Authorization"] == TOKEN  # the readable values are still there

    # rekey leaves what it cannot open alone and says so.
    report = await rekey(store, config("A", "B", active="B"))
    assert report.failed == 4 and {f.record_id for f in report.failures} == {
        "ep_2",
        "dlv_0002",
        "dlv_0003",
        "dlv_0005",
    }
    assert report.deliveries_rewritten == 2 and report.endpoints_rewritten == 1
