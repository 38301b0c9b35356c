"""Sealing and opening the protected fields of endpoints and deliveries.

:class:`FieldCrypto` applies a :class:`FieldCryptoConfig` to records: ``seal_*`` before a
record is stored, ``open_*`` after it is read. Where a value lives is bound into its associated
data (tenant, logical table, column, record id), so a ciphertext copied to another row, column
or tenant does not open. Text that is not an envelope is legacy plaintext: read as it is while
``accept_plaintext`` holds (the store was written before crypto was on), an error otherwise.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import ConfigError, DecryptionError, DecryptionFailure
from ..events import WebhookEvent
from ..models import PayloadRewrite, RetiredSecret, WebhookDelivery, WebhookEndpoint
from ..phone import mask_phone, normalize_keep_plus
from .config import FailMode, FieldCryptoConfig, FieldMode
from .envelope import (
    Envelope,
    EnvelopeFormatError,
    aad_check,
    aad_prefix,
    aad_tail,
    b64,
    is_sealed,
    seal,
    split_sealed,
    unseal,
)

Numbers = tuple[str | None, str | None]

#: Logical table names bound into the associated data.
ENDPOINTS = "endpoints"
DELIVERIES = "deliveries"
_HASH_DOMAIN = b"kmsg-webhook/phone/v1\x00"


class _Failed(Exception):
    def __init__(self, kind: DecryptionFailure) -> None:
        self.kind = kind


def redaction(kind: DecryptionFailure) -> str:
    """What ``fail_mode="open"`` reads return in place of a value that cannot be opened."""
    return f"[unreadable: {kind.value}]"


class FieldCrypto:
    """A :class:`FieldCryptoConfig` at work. Cheap to share; keeps one AES context per key."""

    def __init__(self, config: FieldCryptoConfig) -> None:
        if not isinstance(config, FieldCryptoConfig):
            raise TypeError("FieldCrypto takes a FieldCryptoConfig")
        self.config = config
        self._keys = config.keys
        self._ciphers: dict[str, AESGCM] = {}
        self._hashing = FieldMode.ENCRYPT_HASH in (config.to, config.from_)
        self._masked_keys = tuple(
            key
            for key, mode in (("to", config.to), ("from", config.from_))
            if mode is FieldMode.MASK
        )
        # The last number hashed per field: the rows of one event (one per endpoint) share
        # their numbers, and the sender number rarely changes.
        self._last_hashed: list[tuple[str | None, str | None]] = [(None, None), (None, None)]
        # The numbers of the last payload sealed: the rows of one event share the payload
        # object, so its JSON is parsed once per event, not once per endpoint.
        self._last_numbers: tuple[str | None, Numbers] = (None, (None, None))

    def __repr__(self) -> str:
        return f"FieldCrypto(active_kid={self.active_kid!r})"

    @property
    def active_kid(self) -> str:
        return self._keys.active_kid

    # -- single values ---------------------------------------------------------------------

    def seal(self, plaintext: str, *, table: str, column: str, record_id: str) -> str:
        """``plaintext`` sealed under the active key for this table, column and record."""
        kid = self._keys.active_kid
        return seal(self._cipher(kid), kid, plaintext, self._aad(table, column, record_id))

    def open(
        self, stored: str, *, table: str, column: str, record_id: str, sealed_mode: bool = True
    ) -> str:
        """The plaintext of a stored value; raises :class:`DecryptionError`.

        A value that is not an envelope is returned as it is, unless the field's mode seals
        (``sealed_mode``) and ``accept_plaintext`` is off.
        """
        if not is_sealed(stored):
            if sealed_mode and not self.config.accept_plaintext:
                raise DecryptionError(
                    DecryptionFailure.PLAINTEXT, table=table, column=column, record_id=record_id
                )
            return stored
        aad = self._aad(table, column, record_id)
        quick = split_sealed(stored)
        if quick is not None and quick[0] in self._ciphers and self._keys.key(quick[0]):
            # The common case, without validating the text first: a value that does not
            # decrypt (or whose check differs) is examined below, to say why.
            kid, check, nonce, tag, ciphertext = quick
            if check == b64(aad_check(aad)):
                try:
                    return self._ciphers[kid].decrypt(nonce, ciphertext + tag, aad).decode()
                except (InvalidTag, UnicodeDecodeError):
                    pass
        return self._open_slowly(stored, aad, table=table, column=column, record_id=record_id)

    def _open_slowly(
        self, stored: str, aad: bytes, *, table: str, column: str, record_id: str
    ) -> str:
        """Open a value step by step, so a failure says exactly what is wrong."""
        kid: str | None = None
        try:
            envelope = Envelope.parse(stored)
            kid = envelope.kid
            if self._keys.key(kid) is None:
                raise _Failed(DecryptionFailure.UNKNOWN_KID)
            if not hmac.compare_digest(envelope.aad_check, aad_check(aad)):
                raise _Failed(DecryptionFailure.WRONG_AAD)
            return unseal(self._cipher(kid), envelope, aad)
        except EnvelopeFormatError as exc:
            failure, detail = DecryptionFailure.MALFORMED, str(exc)
        except _Failed as exc:
            failure, detail = exc.kind, None
        except (InvalidTag, UnicodeDecodeError):
            failure, detail = DecryptionFailure.TAMPERED, None
        raise DecryptionError(
            failure, table=table, column=column, record_id=record_id, kid=kid, detail=detail
        )

    def kid_of(self, stored: str) -> str | None:
        """The key id a value is sealed under (``None`` for plaintext); no decryption."""
        if not is_sealed(stored):
            return None
        try:
            return Envelope.parse(stored).kid
        except EnvelopeFormatError:
            return None

    def recipient_hash(self, number: str) -> str | None:
        """The lookup hash of a phone number: HMAC-SHA256 (hash key) of its normalised form.

        Normalised: trimmed, a leading ``+`` kept, every other non-digit dropped, so
        ``010-1234-5678`` and ``01012345678`` hash alike (``+821012345678`` does not). A masked
        number (``*``) or one without digits has no hash (``None``).
        """
        key = self._keys.hash_key
        if key is None:
            raise ConfigError("field crypto has no hash key (StaticKeyProvider(hash_key=...))")
        if not isinstance(number, str) or "*" in number:
            return None
        normal = normalize_keep_plus(number)
        if not normal.lstrip("+"):
            return None
        return hmac.digest(key, _HASH_DOMAIN + normal.encode(), "sha256").hex()

    # -- endpoints ---------------------------------------------------------------------------

    def seal_endpoint(self, endpoint: WebhookEndpoint) -> WebhookEndpoint:
        """The endpoint as stored: secrets (and a client key) and header values sealed as
        configured."""
        changes: dict[str, object] = {}
        if self.config.secret is FieldMode.ENCRYPT:
            if endpoint.secret is not None:
                changes["secret"] = self._seal_endpoint_value(endpoint, "secret", endpoint.secret)
            if endpoint.client_key is not None:
                changes["client_key"] = self._seal_endpoint_value(
                    endpoint, "client_key", endpoint.client_key
                )
            if endpoint.previous_secrets:
                changes["previous_secrets"] = tuple(
                    RetiredSecret(
                        self._seal_endpoint_value(endpoint, "previous_secrets", s.secret),
                        s.expires_at,
                    )
                    for s in endpoint.previous_secrets
                )
        if self.config.headers is FieldMode.ENCRYPT and endpoint.headers:
            changes["headers"] = {
                name: self._seal_endpoint_value(endpoint, f"headers.{name}", value)
                for name, value in endpoint.headers.items()
            }
        return dataclasses.replace(endpoint, **changes) if changes else endpoint  # type: ignore[arg-type]

    def open_endpoint(self, endpoint: WebhookEndpoint, *, strict: bool = False) -> WebhookEndpoint:
        """The endpoint with its sealed fields opened; raises :class:`DecryptionError`.

        With ``fail_mode="open"`` (and not ``strict``) unreadable values become redaction
        markers instead. The dispatcher opens strictly: it never signs with a marker.
        """
        opened, error = self.try_open_endpoint(endpoint, lenient=not strict)
        if error is not None and (strict or self.config.fail_mode is FailMode.CLOSED):
            raise error
        return opened

    def try_open_endpoint(
        self, endpoint: WebhookEndpoint, *, lenient: bool = True
    ) -> tuple[WebhookEndpoint, DecryptionError | None]:
        """``(endpoint opened, None)``, or ``(endpoint with markers, first error)``."""
        errors: list[DecryptionError] = []
        secret_sealed = self.config.secret is FieldMode.ENCRYPT
        headers_sealed = self.config.headers is FieldMode.ENCRYPT

        def one(column: str, value: str, sealed_mode: bool) -> str:
            try:
                return self.open(
                    value,
                    table=ENDPOINTS,
                    column=column,
                    record_id=endpoint.id,
                    sealed_mode=sealed_mode,
                )
            except DecryptionError as exc:
                if not lenient:
                    raise
                errors.append(exc)
                return redaction(exc.kind)

        try:
            secret = (
                None if endpoint.secret is None else one("secret", endpoint.secret, secret_sealed)
            )
            previous = tuple(
                RetiredSecret(one("previous_secrets", s.secret, secret_sealed), s.expires_at)
                for s in endpoint.previous_secrets
            )
            client_key = (
                None
                if endpoint.client_key is None
                else one("client_key", endpoint.client_key, secret_sealed)
            )
            headers = {
                name: one(f"headers.{name}", value, headers_sealed)
                for name, value in endpoint.headers.items()
            }
        except DecryptionError as exc:
            return endpoint, exc
        if (
            secret == endpoint.secret
            and previous == endpoint.previous_secrets
            and headers == dict(endpoint.headers)
            and client_key == endpoint.client_key
        ):
            opened = endpoint  # nothing was sealed
        else:
            opened = dataclasses.replace(
                endpoint,
                secret=secret,
                previous_secrets=previous,
                headers=headers,
                client_key=client_key,
            )
        return opened, errors[0] if errors else None

    def rekeyed_endpoint(self, stored: WebhookEndpoint) -> WebhookEndpoint | None:
        """The endpoint as it should be stored now, or ``None`` when it already is.

        Values that should be sealed and are plaintext or under another key are sealed under
        the active key; values of ``plain`` fields that are sealed are opened. Raises
        :class:`DecryptionError` when a value cannot be opened.
        """
        opened = self.open_endpoint(stored, strict=True)
        target = self.seal_endpoint(opened)
        changed = False
        secret = stored.secret
        if stored.secret is not None and self._stale(stored.secret, self.config.secret):
            secret, changed = target.secret, True
        previous = list(stored.previous_secrets)
        for i, retired in enumerate(stored.previous_secrets):
            if self._stale(retired.secret, self.config.secret):
                previous[i], changed = target.previous_secrets[i], True
        headers = dict(stored.headers)
        for name, value in stored.headers.items():
            if self._stale(value, self.config.headers):
                headers[name], changed = target.headers[name], True
        client_key = stored.client_key
        if client_key is not None and self._stale(client_key, self.config.secret):
            client_key, changed = target.client_key, True
        if not changed:
            return None
        return dataclasses.replace(
            stored,
            secret=secret,
            previous_secrets=tuple(previous),
            headers=headers,
            client_key=client_key,
        )

    # -- deliveries -------------------------------------------------------------------------

    def prepare_event(self, event: WebhookEvent) -> WebhookEvent:
        """The event as the runtime serialises it: ``to``/``from`` masked when their mode is
        ``mask`` (already masked values are kept)."""
        masked = self._masked_keys
        if not masked:
            return event
        data = event.data
        changes = {
            key: mask_phone(value) or value
            for key in masked
            if isinstance(value := data.get(key), str) and "*" not in value
        }
        if not changes:
            return event
        return dataclasses.replace(event, data={**data, **changes})

    def seal_delivery(self, delivery: WebhookDelivery) -> WebhookDelivery:
        """The delivery as stored: payload sealed and lookup hashes set, as configured."""
        numbers: Numbers = (None, None)
        if self._hashing:
            last, numbers = self._last_numbers
            if delivery.payload is not last:
                numbers = _numbers(delivery.payload)
                self._last_numbers = (delivery.payload, numbers)
        payload, to_hash, from_hash = self.seal_payload(
            delivery.id,
            delivery.payload,
            numbers,
            to_hash=delivery.to_hash,
            from_hash=delivery.from_hash,
        )
        if (payload, to_hash, from_hash) == (
            delivery.payload,
            delivery.to_hash,
            delivery.from_hash,
        ):
            return delivery
        return dataclasses.replace(delivery, payload=payload, to_hash=to_hash, from_hash=from_hash)

    def seal_payload(
        self,
        delivery_id: str,
        payload: str,
        numbers: Numbers,
        *,
        to_hash: str | None = None,
        from_hash: str | None = None,
    ) -> tuple[str, str | None, str | None]:
        """``(payload, to_hash, from_hash)`` as a delivery with this id stores them.

        ``numbers`` are the payload's ``to`` and ``from``; a hash is set where the mode hashes
        and there is a number, otherwise ``to_hash``/``from_hash`` are kept.
        """
        if self._hashing:
            to_hash, from_hash = self._hashes(numbers, to_hash, from_hash)
        if self.config.payload is FieldMode.ENCRYPT:
            payload = self.seal(payload, table=DELIVERIES, column="payload", record_id=delivery_id)
        return payload, to_hash, from_hash

    def open_delivery(self, delivery: WebhookDelivery, *, strict: bool = False) -> WebhookDelivery:
        """The delivery with its payload opened (see :meth:`open_endpoint` for the modes)."""
        opened, error = self.try_open_delivery(delivery)
        if error is not None and (strict or self.config.fail_mode is FailMode.CLOSED):
            raise error
        return opened

    def open_payload(self, delivery: WebhookDelivery) -> str:
        """The delivery's payload decrypted, strictly (raises :class:`DecryptionError`)."""
        return self.open(
            delivery.payload,
            table=DELIVERIES,
            column="payload",
            record_id=delivery.id,
            sealed_mode=self.config.payload is FieldMode.ENCRYPT,
        )

    def try_open_delivery(
        self, delivery: WebhookDelivery
    ) -> tuple[WebhookDelivery, DecryptionError | None]:
        """``(delivery opened, None)``, or ``(delivery with a marker payload, the error)``."""
        try:
            payload = self.open_payload(delivery)
        except DecryptionError as exc:
            return dataclasses.replace(delivery, payload=redaction(exc.kind)), exc
        if payload is delivery.payload:
            return delivery, None
        return dataclasses.replace(delivery, payload=payload), None

    def rekeyed_delivery(self, stored: WebhookDelivery) -> PayloadRewrite | None:
        """The rewrite that brings a stored delivery up to date, or ``None`` (see
        :meth:`rekeyed_endpoint`); lookup hashes are recomputed when a mode hashes."""
        payload = stored.payload
        plaintext: str | None = None
        if self._stale(payload, self.config.payload) or self._hashing:
            plaintext = self.open_payload(stored)
        if self._stale(payload, self.config.payload):
            assert plaintext is not None
            payload = (
                self.seal(plaintext, table=DELIVERIES, column="payload", record_id=stored.id)
                if self.config.payload is FieldMode.ENCRYPT
                else plaintext
            )
        to_hash, from_hash = stored.to_hash, stored.from_hash
        if plaintext is not None and self._hashing:
            to_hash, from_hash = self._hashes(_numbers(plaintext), to_hash, from_hash)
        if (payload, to_hash, from_hash) == (stored.payload, stored.to_hash, stored.from_hash):
            return None
        return PayloadRewrite(stored.id, stored.payload, payload, to_hash, from_hash)

    # -- internals ----------------------------------------------------------------------------

    def _stale(self, stored: str, mode: FieldMode) -> bool:
        """Whether a stored value is not in the form its mode asks for (now)."""
        if mode is FieldMode.ENCRYPT:
            return not is_sealed(stored) or self.kid_of(stored) != self._keys.active_kid
        return is_sealed(stored)

    def _seal_endpoint_value(self, endpoint: WebhookEndpoint, column: str, value: str) -> str:
        return self.seal(value, table=ENDPOINTS, column=column, record_id=endpoint.id)

    def _hashes(self, numbers: Numbers, to_hash: str | None, from_hash: str | None) -> Numbers:
        # A number in the payload decides; without one, a hash the caller set is kept.
        if self.config.to is FieldMode.ENCRYPT_HASH:
            to_hash = self._hash_of(0, numbers[0]) or to_hash
        if self.config.from_ is FieldMode.ENCRYPT_HASH:
            from_hash = self._hash_of(1, numbers[1]) or from_hash
        return to_hash, from_hash

    def _hash_of(self, field: int, number: str | None) -> str | None:
        if number is None:
            return None
        last, digest = self._last_hashed[field]
        if number != last:
            digest = self.recipient_hash(number)
            self._last_hashed[field] = (number, digest)
        return digest

    def _cipher(self, kid: str) -> AESGCM:
        cipher = self._ciphers.get(kid)
        if cipher is None:
            key = self._keys.key(kid)
            if key is None:  # only the active key gets here: opening checks the kid first
                raise ConfigError(f"the key provider has no key for its active kid {kid!r}")
            cipher = self._ciphers[kid] = AESGCM(key)
        return cipher

    def _aad(self, table: str, column: str, record_id: str) -> bytes:
        """:func:`~kmsg_webhook.crypto.envelope.associated_data`, its prefix cached."""
        return aad_prefix(self.config.tenant_id, table, column) + aad_tail(record_id)


def _numbers(payload: str) -> Numbers:
    """``data.to`` and ``data.from`` of a JSON event body (``None`` where absent)."""
    if '"to"' not in payload and '"from"' not in payload:
        return None, None
    try:
        body = json.loads(payload)
    except ValueError:
        return None, None
    data = body.get("data") if isinstance(body, Mapping) else None
    if not isinstance(data, Mapping):
        return None, None
    to, sender = data.get("to"), data.get("from")
    return (
        to if isinstance(to, str) else None,
        sender if isinstance(sender, str) else None,
    )
