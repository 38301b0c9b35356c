"""The runtime with field crypto: what is sent, what is stored, and what happens when a value
does not decrypt (the dispatcher fails that delivery with a reason and sends the rest).

Also: turning crypto on over an existing store, a worker without keys, recipient lookups,
``mask`` mode, the feed's full numbers, and the ``rekey``/``keygen`` commands.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import dataclasses
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import kmsg_webhook
from kmsg_webhook import (
    ConfigError,
    DecryptionError,
    DecryptionFailure,
    DeliveryFilter,
    DeliveryHooks,
    DeliveryStatus,
    EndpointInput,
    MissingKeysError,
    PayloadRewrite,
    SecurityOptions,
    SettledEvent,
    WebhookConfig,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEventType,
    WebhookPersistence,
    WebhookRuntimeService,
    create_in_memory_persistence,
    verify,
)
from kmsg_webhook.cli import main
from kmsg_webhook.crypto import FieldCrypto, is_sealed, rekey, stored_view, with_field_crypto
from kmsg_webhook.messaging import MessageContext, MessageStatus, MessageType, SendResult
from kmsg_webhook.messaging.feed import WebhookFeed, WebhookFeedConfig, sent_event
from support.crypto_keys import HASH_KEY, KEY_A, KEY_B, config

HANG_GUARD = 15
TO, FROM = "010-1234-5678", "02-555-0199"
SECRET = "whsec_c2VjcmV0LWZvci1jcnlwdG8tdGVzdHM="
NOW = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)


async def settle(runtime: Any) -> None:
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)


async def stored_deliveries(p: WebhookPersistence) -> list[WebhookDelivery]:
    return await stored_view(p).delivery_store.scan()


def numbers(**extra: Any) -> dict[str, Any]:
    return {"to": TO, "from": FROM, "text": "인증번호 482913", **extra}


async def test_sent_body_is_exact_and_signed_while_the_store_holds_envelopes(
    receiver, make_runtime, make_event
):
    runtime = await make_runtime(field_crypto=config("A"))
    endpoint = await runtime.add_endpoint(
        EndpointInput(
            url=receiver.url("/in"),
            events=["message.sent"],
            secret=SECRET,
            headers={"Authorization": "Bearer crm-token"},
        )
    )
    event = make_event(data=numbers())
    await runtime.emit(event)
    await settle(runtime)

    (got,) = receiver.at("/in")
    assert got.body == event.to_json().encode()
    assert verify(got.body, got.headers, secrets=[SECRET]).id == event.id
    assert got.headers["Authorization"] == "Bearer crm-token"
    (row,) = await stored_deliveries(runtime.persistence)
    assert row.status is DeliveryStatus.SUCCESS and is_sealed(row.payload)
    assert row.to_hash == runtime.field_crypto.recipient_hash(TO)
    (stored_endpoint,) = await stored_view(runtime.persistence).endpoint_store.list()
    assert is_sealed(stored_endpoint.secret or "")
    assert is_sealed(stored_endpoint.headers["Authorization"])
    assert (await runtime.get_endpoint(endpoint.id)) == endpoint
    (listed,) = (await runtime.list_deliveries()).items
    assert listed.payload == event.to_json()


async def test_rotated_secrets_stay_sealed_and_both_sign(receiver, make_runtime, make_event):
    runtime = await make_runtime(field_crypto=config("A"))
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/in"), events=["message.sent"], secret=SECRET)
    )
    rotated = await runtime.rotate_secret(endpoint.id)
    (stored,) = await stored_view(runtime.persistence).endpoint_store.list()
    assert all(is_sealed(s.secret) for s in stored.previous_secrets)
    await runtime.emit(make_event())
    await settle(runtime)
    (got,) = receiver.at("/in")
    for secret in (SECRET, rotated.secret):
        assert verify(got.body, got.headers, secrets=[secret])


async def test_an_unreadable_payload_fails_that_delivery_only_and_logs_no_plaintext(
    receiver, make_runtime, make_event, caplog
):
    persistence = create_in_memory_persistence()
    intake = await make_runtime(persistence=persistence, field_crypto=config("A"), dispatch=False)
    await intake.add_endpoint(
        EndpointInput(url=receiver.url("/in"), events=["message.sent"], secret=SECRET)
    )
    events = [make_event(data=numbers(n=n)) for n in range(3)]
    for event in events:
        await intake.emit(event)
    await intake.flush()
    rows = {r.event_id: r for r in await stored_deliveries(persistence)}
    victim = rows[events[1].id]
    head, tail = victim.payload.rsplit(":", 1)
    tampered = f"{head}:{'A' if tail[0] != 'A' else 'B'}{tail[1:]}"
    await persistence.delivery_store.rewrite_payloads(
        [PayloadRewrite(victim.id, victim.payload, tampered, victim.to_hash, victim.from_hash)]
    )

    caplog.set_level(logging.DEBUG, logger="kmsg_webhook")
    worker = await make_runtime(persistence=persistence, field_crypto=config("A"))
    await settle(worker)

    assert sorted(r.body for r in receiver.at("/in")) == sorted(
        e.to_json().encode() for e in (events[0], events[2])
    )
    failed = await worker.persistence.delivery_store.stats(DeliveryFilter())
    assert (failed.success, failed.failed) == (2, 1)
    (row,) = [r for r in await stored_deliveries(persistence) if r.id == victim.id]
    assert row.status is DeliveryStatus.FAILED and row.attempt_count == 0
    assert row.last_error == (
        f"refused: cannot decrypt deliveries.payload of {victim.id} (key id kA): tampered"
    )
    page = await worker.list_deliveries()
    assert [e.record_id for e in page.errors] == [victim.id] and len(page.items) == 2
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert victim.id in logged
    for plaintext in (TO, "482913", SECRET):
        assert plaintext not in logged


async def test_an_unreadable_endpoint_secret_fails_its_deliveries_with_a_reason(
    receiver, make_runtime, make_event
):
    persistence = create_in_memory_persistence()
    runtime = await make_runtime(persistence=persistence, field_crypto=config("A"), dispatch=False)
    good = await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/good"), events=["message.sent"])
    )
    bad = await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/bad"), events=["message.sent"])
    )
    stored = await persistence.endpoint_store.get(bad.id)
    other = await persistence.endpoint_store.get(good.id)
    assert stored is not None and other is not None
    # The good endpoint's (valid) secret envelope, moved to the bad endpoint's row.
    assert await persistence.endpoint_store.rewrite_sealed(
        bad.id, expected=stored, replacement=dataclasses.replace(stored, secret=other.secret)
    )
    await runtime.emit(make_event())
    await runtime.flush()
    worker = await make_runtime(persistence=persistence, field_crypto=config("A"))
    await settle(worker)
    assert len(receiver.at("/good")) == 1 and receiver.at("/bad") == []
    (failed,) = (await worker.list_deliveries(DeliveryFilter(endpoint_id=bad.id))).items
    assert failed.status is DeliveryStatus.FAILED
    assert failed.last_error == (
        f"refused: cannot decrypt endpoints.secret of {bad.id} (key id kA): wrong_aad"
    )
    endpoints = await worker.list_endpoints()
    assert [e.id for e in endpoints] == [good.id]
    assert [(e.record_id, e.error.kind) for e in endpoints.errors] == [  # type: ignore[attr-defined]
        (bad.id, DecryptionFailure.WRONG_AAD)
    ]
    with pytest.raises(DecryptionError):
        await worker.get_endpoint(bad.id)
    with pytest.raises(DecryptionError):  # never rewritten with a marker
        await worker.update_endpoint(bad.id, name="renamed")


async def test_open_fail_mode_reads_markers_but_never_sends_them(
    receiver, make_runtime, make_event
):
    persistence = create_in_memory_persistence()
    # Started on an empty store: with the rows already there it would refuse to start (its
    # keys open none of them), which is tested below.
    lenient = await make_runtime(
        persistence=persistence,
        field_crypto=config("B", fail_mode="open"),  # type: ignore[arg-type]
    )
    runtime = await make_runtime(persistence=persistence, field_crypto=config("A"), dispatch=False)
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/in"), events=["message.sent"])
    )
    await runtime.emit(make_event())
    await runtime.flush()
    await settle(lenient)
    assert receiver.at("/in") == []
    seen = await lenient.get_endpoint(endpoint.id)
    assert seen is not None and seen.secret == "[unreadable: unknown_kid]"
    (delivery,) = (await lenient.list_deliveries()).items
    assert delivery.payload == "[unreadable: unknown_kid]"
    assert delivery.status is DeliveryStatus.FAILED
    assert "unknown_kid" in (delivery.last_error or "")


async def test_turning_crypto_on_over_an_existing_store(
    receiver, make_runtime, make_event, tmp_path: Path
):
    url = f"sqlite:///{tmp_path / 'hooks.db'}"
    before = await make_runtime(persistence=url, dispatch=False)
    endpoint = await before.add_endpoint(
        EndpointInput(url=receiver.url("/in"), events=["message.sent"], secret=SECRET)
    )
    old = [make_event(data=numbers(n=n)) for n in range(2)]
    for event in old:
        await before.emit(event)
    await before.shutdown()

    on = await make_runtime(persistence=url, field_crypto=config("A"))
    legacy = await on.get_endpoint(endpoint.id)  # plaintext from before: read as it is
    assert legacy is not None and legacy.secret == SECRET
    new = make_event(data=numbers(n=9))
    await on.emit(new)
    await settle(on)
    bodies = sorted(r.body for r in receiver.at("/in"))
    assert bodies == sorted(e.to_json().encode() for e in (*old, new))
    for got in receiver.at("/in"):
        verify(got.body, got.headers, secrets=[SECRET])
    sealed = [is_sealed(r.payload) for r in await stored_deliveries(on.persistence)]
    assert sorted(sealed) == [False, False, True]

    done = await rekey(on.persistence)
    assert (done.endpoints_rewritten, done.deliveries_rewritten) == (1, 2)
    assert all(is_sealed(r.payload) for r in await stored_deliveries(on.persistence))
    await on.shutdown()

    strict = await make_runtime(persistence=url, field_crypto=config("A", accept_plaintext=False))
    assert len((await strict.list_deliveries()).items) == 3
    converted = await strict.get_endpoint(endpoint.id)
    assert converted is not None and converted.secret == SECRET
    lookup = await strict.list_deliveries_for_recipient("01012345678")
    assert len(lookup.items) == 3  # rekey computed the hashes of the legacy rows too


async def test_a_dispatching_runtime_without_keys_refuses_to_start_on_sealed_values(
    receiver, make_runtime, make_event
):
    persistence = create_in_memory_persistence()
    sealed = await make_runtime(persistence=persistence, field_crypto=config("A"), dispatch=False)
    await sealed.add_endpoint(EndpointInput(url=receiver.url("/in"), events=["message.sent"]))
    await sealed.emit(make_event())
    await sealed.flush()
    with pytest.raises(MissingKeysError, match="KMSG_WEBHOOK_KEYS") as info:
        await make_runtime(persistence=persistence)
    assert "1 endpoint(s) with sealed secrets" in str(info.value)
    assert "1 pending delivery payload(s)" in str(info.value)
    # An intake-only runtime sends nothing, so it may start; nothing was claimed or failed.
    await make_runtime(persistence=persistence, dispatch=False)
    assert receiver.at("/in") == []
    (row,) = await stored_deliveries(persistence)
    assert (row.status, row.attempt_count) == (DeliveryStatus.PENDING, 0)


async def test_a_sealed_client_key_alone_is_enough_to_refuse_a_keyless_start(
    receiver, make_runtime
):
    # No secret, headers or pending payloads: the client key is the only sealed value.
    persistence = create_in_memory_persistence()
    endpoint = WebhookEndpoint(
        id="ep_mtls",
        url=receiver.url("/in"),
        events=(WebhookEventType.MESSAGE_SENT,),
        created_at=datetime(2026, 3, 1, tzinfo=UTC),
        updated_at=datetime(2026, 3, 1, tzinfo=UTC),
        client_cert="-----BEGIN CERTIFICATE-----\nMIIBcert\n-----END CERTIFICATE-----\n",
        client_key="-----BEGIN PRIVATE KEY-----\nMIIBkey\n-----END PRIVATE KEY-----\n",
    )
    stored = FieldCrypto(config("A")).seal_endpoint(endpoint)
    assert stored.client_key is not None and is_sealed(stored.client_key)
    await persistence.endpoint_store.add(stored)
    with pytest.raises(MissingKeysError, match="1 endpoint\\(s\\) with sealed secrets"):
        await make_runtime(persistence=persistence)


async def test_a_dispatching_runtime_refuses_keys_that_open_none_of_the_sealed_values(
    receiver, make_runtime, make_event, caplog
):
    persistence = create_in_memory_persistence()
    under_b = await make_runtime(persistence=persistence, field_crypto=config("B"), dispatch=False)
    await under_b.add_endpoint(EndpointInput(url=receiver.url("/b"), events=["message.sent"]))
    await under_b.emit(make_event("evt_b"))
    await under_b.flush()
    with pytest.raises(MissingKeysError, match="use key id\\(s\\) kB, which the configured keys"):
        await make_runtime(persistence=persistence, field_crypto=config("A"))
    # Some values open: the runtime starts, warns, and those it cannot open fail closed alone.
    under_a = await make_runtime(persistence=persistence, field_crypto=config("A"), dispatch=False)
    await under_a.add_endpoint(EndpointInput(url=receiver.url("/a"), events=["message.sent"]))
    caplog.set_level(logging.WARNING, logger="kmsg_webhook.runtime")
    runtime = await make_runtime(persistence=persistence, field_crypto=config("A"))
    assert any("use key id(s) kB" in r.getMessage() for r in caplog.records)
    await runtime.emit(make_event("evt_a"))
    await settle(runtime)
    assert [r.path for r in receiver.at("/a")] == ["/a"]
    assert receiver.at("/b") == []


async def test_sealed_rows_written_after_a_keyless_start_fail_closed(
    receiver, make_runtime, make_event
):
    persistence = create_in_memory_persistence()
    keyless = await make_runtime(persistence=persistence)
    sealed = await make_runtime(persistence=persistence, field_crypto=config("A"), dispatch=False)
    await sealed.add_endpoint(EndpointInput(url=receiver.url("/in"), events=["message.sent"]))
    await sealed.emit(make_event())
    await sealed.flush()
    await settle(keyless)
    assert receiver.at("/in") == []
    (row,) = await stored_deliveries(persistence)
    assert row.status is DeliveryStatus.FAILED
    assert "no field crypto configured" in (row.last_error or "")


async def test_hooks_hear_of_a_delivery_refused_because_it_does_not_open(
    receiver, make_runtime, make_event
):
    persistence = create_in_memory_persistence()
    settled: list[SettledEvent] = []
    keyless = await make_runtime(
        persistence=persistence, hooks=DeliveryHooks(on_settled=settled.append)
    )
    sealed = await make_runtime(persistence=persistence, field_crypto=config("A"), dispatch=False)
    await sealed.add_endpoint(EndpointInput(url=receiver.url("/in"), events=["message.sent"]))
    await sealed.emit(make_event())
    await sealed.flush()
    await settle(keyless)
    (event,) = settled
    assert (event.status, event.sent, event.attempts) == (DeliveryStatus.FAILED, False, 0)
    assert "no field crypto configured" in (event.error or "")
    assert receiver.at("/in") == []


def test_the_runtime_and_the_dispatcher_meet_field_crypto_only_through_the_store_seam() -> None:
    package = Path(kmsg_webhook.__file__).parent
    for module in ("runtime.py", "dispatcher.py"):
        imported: set[str] = set()
        for node in ast.walk(ast.parse((package / module).read_text())):
            if isinstance(node, ast.ImportFrom):
                imported.add(node.module or "")
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        assert not [name for name in imported if "crypto" in name.split(".")], module


async def test_emit_sync_sends_in_memory_rows_under_strict_plaintext_rules(
    receiver, make_runtime, make_event
):
    runtime = await make_runtime(field_crypto=config("A", accept_plaintext=False))
    await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/in"), events=["message.sent"], secret=SECRET)
    )
    event = make_event(data=numbers())
    (sent,) = await runtime.emit_sync(event)
    assert sent.status is DeliveryStatus.SUCCESS
    (got,) = receiver.at("/in")
    assert got.body == event.to_json().encode()
    (row,) = await stored_deliveries(runtime.persistence)
    assert is_sealed(row.payload)


async def test_lookup_by_recipient_decrypts_nothing(receiver, make_runtime, make_event):
    runtime = await make_runtime(field_crypto=config("A"), dispatch=False)
    await runtime.add_endpoint(EndpointInput(url=receiver.url("/in"), events=["message.sent"]))
    for n, to in enumerate((TO, "010-9999-0000", "01012345678", "+821012345678")):
        await runtime.emit(make_event(f"evt_{n}", data={"to": to, "n": n}))
    await runtime.flush()
    page = await runtime.list_deliveries_for_recipient("010 1234 5678")
    assert sorted(d.event_id for d in page.items) == ["evt_0", "evt_2"]
    narrowed = await runtime.list_deliveries_for_recipient(
        TO, DeliveryFilter(event_id="evt_2"), limit=5
    )
    assert [d.event_id for d in narrowed.items] == ["evt_2"]
    with pytest.raises(ConfigError):
        await runtime.list_deliveries_for_recipient("010-****-5678")
    plain = await make_runtime()
    with pytest.raises(ConfigError, match="encrypt\\+hash"):
        await plain.list_deliveries_for_recipient(TO)


async def test_mask_mode_sends_and_stores_masked_numbers(receiver, make_runtime, make_event):
    masked = config("A", to="mask", from_="mask", payload="plain")  # type: ignore[arg-type]
    runtime = await make_runtime(field_crypto=masked)
    await runtime.add_endpoint(EndpointInput(url=receiver.url("/in"), events=["message.sent"]))
    await runtime.emit(make_event(data=numbers()))
    await settle(runtime)
    (got,) = receiver.at("/in")
    assert b'"to":"010-****-5678"' in got.body and b'"from":"025-**-0199"' in got.body
    (row,) = await stored_deliveries(runtime.persistence)
    assert row.payload.encode() == got.body and row.to_hash is None


async def test_the_feed_can_hand_full_numbers_to_an_encrypting_runtime(receiver, make_runtime):
    runtime = await make_runtime(field_crypto=config("A"), dispatch=False)
    await runtime.add_endpoint(EndpointInput(url=receiver.url("/in"), events=["message.sent"]))
    feed = WebhookFeed(runtime, config=WebhookFeedConfig(mask_recipients=False))
    ctx = MessageContext(message_id="m1", type=MessageType.SMS, to=TO, from_=FROM)
    result = SendResult(
        message_id="m1", provider_id="mock", status=MessageStatus.SENT, type=MessageType.SMS, to=TO
    )
    event = sent_event(ctx, result, timestamp=NOW, mask_recipients=feed.config.mask_recipients)
    assert (event.data["to"], event.data["from"]) == (TO, FROM)
    assert sent_event(ctx, result, timestamp=NOW).data["to"] == "010-****-5678"
    assert await feed.publish(event)
    await runtime.flush()
    (found,) = (await runtime.list_deliveries_for_recipient(TO)).items
    assert found.event_id == event.id
    (row,) = await stored_deliveries(runtime.persistence)
    assert is_sealed(row.payload) and "1234-5678" not in row.payload


async def test_runtime_construction_with_crypto() -> None:
    wrapped = with_field_crypto(create_in_memory_persistence(), config("A"))
    runtime = WebhookRuntimeService(persistence=wrapped)
    assert isinstance(runtime.field_crypto, FieldCrypto)
    with pytest.raises(ConfigError, match="already has field crypto"):
        WebhookRuntimeService(persistence=wrapped, field_crypto=config("A"))
    assert WebhookRuntimeService().field_crypto is None


# -- the commands ------------------------------------------------------------------------------


def _env(monkeypatch: pytest.MonkeyPatch, *kids: str, active: str | None = None) -> None:
    known = {"kA": KEY_A, "kB": KEY_B}
    monkeypatch.setenv(
        "KMSG_WEBHOOK_KEYS", ",".join(f"{k}:{base64.b64encode(known[k]).decode()}" for k in kids)
    )
    monkeypatch.setenv("KMSG_WEBHOOK_ACTIVE_KID", active or kids[0])
    monkeypatch.setenv("KMSG_WEBHOOK_HASH_KEY", base64.b64encode(HASH_KEY).decode())


async def _write(url: str, count: int, receiver: Any, make_event: Any) -> None:
    async with WebhookRuntimeService(
        WebhookConfig(jitter=False),
        persistence=url,
        field_crypto=config("A"),
        dispatch=False,
        security=SecurityOptions(allow_private_hosts=True),
    ) as runtime:
        await runtime.add_endpoint(
            EndpointInput(url=receiver.url("/in"), events=[WebhookEventType.MESSAGE_SENT])
        )
        for n in range(count):
            await runtime.emit(make_event(f"evt_{n:02d}", data=numbers(n=n)))


def test_rekey_command_is_batched_resumable_and_idempotent(
    tmp_path: Path, receiver, make_event, monkeypatch: pytest.MonkeyPatch, capsys
):
    url = f"sqlite:///{tmp_path / 'hooks.db'}"
    asyncio.run(_write(url, 7, receiver, make_event))
    _env(monkeypatch, "kA", "kB", active="kB")

    assert main(["rekey", "--store", url, "--batch-size", "3", "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert "would rewrite 7" in dry and "endpoints would rewrite 1/1" in dry
    assert main(["rekey", "--store", url, "--batch-size", "3", "--skip-endpoints"]) == 0
    out = capsys.readouterr().out.splitlines()
    progress = [line for line in out if line.startswith("deliveries:")]
    assert len(progress) == 3 and "checked 3, rewrote 3" in progress[0]
    third = progress[1].rsplit(" ", 1)[-1]
    assert out[-1].startswith("done: endpoints rewrote 0/0, deliveries rewrote 7/7, skipped 0")

    # Resuming after a given id only walks the rest; nothing is left to rewrite.
    assert main(["rekey", "--store", url, "--after", third]) == 0
    resumed = capsys.readouterr().out
    assert "deliveries rewrote 0/1" in resumed and "endpoints rewrote 1/1" in resumed

    _env(monkeypatch, "kB")  # key A removed: everything still opens
    assert main(["deliveries", "list", "--store", url]) == 0
    listed = capsys.readouterr().out
    assert listed.count("message.sent") == 7 and "unreadable" not in listed
    assert main(["endpoints", "list", "--store", url]) == 0
    assert "unreadable" not in capsys.readouterr().out


def test_rekey_command_needs_keys_and_reports_unreadable_rows(
    tmp_path: Path, receiver, make_event, monkeypatch: pytest.MonkeyPatch, capsys
):
    url = f"sqlite:///{tmp_path / 'hooks.db'}"
    asyncio.run(_write(url, 2, receiver, make_event))
    monkeypatch.delenv("KMSG_WEBHOOK_KEYS", raising=False)
    assert main(["rekey", "--store", url]) == 2
    assert "KMSG_WEBHOOK_KEYS" in capsys.readouterr().err
    _env(monkeypatch, "kB")  # A is missing: nothing opens, nothing is touched
    assert main(["rekey", "--store", url]) == 1
    out = capsys.readouterr().out
    assert "unreadable 3" in out and out.count("unknown_kid") == 3
    assert main(["deliveries", "list", "--store", url]) == 0
    assert capsys.readouterr().out.count("unreadable: cannot decrypt") == 2


def test_keygen_prints_a_fresh_key(capsys) -> None:
    assert main(["keygen"]) == 0
    first = capsys.readouterr().out.strip()
    assert main(["keygen"]) == 0
    assert len(base64.b64decode(first)) == 32 and capsys.readouterr().out.strip() != first
