"""``rekey``: bring every stored value to the current configuration and active key.

Endpoints first (all of them: there are few), then deliveries in id order, ``batch_size`` rows
per read and per write. A value is rewritten when it is plaintext (or sealed) against its
field's mode, or sealed under a key id that is not the active one; lookup hashes are
recomputed where a mode hashes. Writes are compare-and-set, so a row changed meanwhile is left
to its writer (counted as skipped; run again). Everything else is only read, so running it
again is cheap and changes nothing; ``after`` resumes a walk that was stopped (``last_id``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import ConfigError, DecryptionError
from ..models import PayloadRewrite, RecordError
from ..stores.protocol import WebhookPersistence
from ..stores.sealed import field_crypto_of, stored_view
from .config import FieldCryptoConfig
from .fields import FieldCrypto

DEFAULT_BATCH_SIZE = 500
#: Failures remembered by a report (all are counted).
MAX_REPORTED_FAILURES = 100


@dataclass(slots=True)
class RekeyReport:
    """What a rekey run saw and did. ``last_id`` is the delivery to resume after."""

    endpoints_checked: int = 0
    endpoints_rewritten: int = 0
    deliveries_checked: int = 0
    deliveries_rewritten: int = 0
    #: Rows changed or removed by someone else between the read and the write.
    skipped: int = 0
    #: Values that could not be opened (they stay as they are).
    failed: int = 0
    failures: list[RecordError] = field(default_factory=list)
    last_id: str | None = None

    def _fail(self, record_id: str, error: DecryptionError) -> None:
        self.failed += 1
        if len(self.failures) < MAX_REPORTED_FAILURES:
            self.failures.append(RecordError(record_id, error))


async def rekey(
    persistence: WebhookPersistence,
    crypto: FieldCrypto | FieldCryptoConfig | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    after: str | None = None,
    endpoints: bool = True,
    dry_run: bool = False,
    on_batch: Callable[[RekeyReport], None] | None = None,
) -> RekeyReport:
    """Re-seal what is stale; returns a :class:`RekeyReport`.

    ``persistence`` may carry field crypto (``with_field_crypto``), which is then used unless
    ``crypto`` is given. ``after`` skips deliveries up to that id (resume); ``endpoints=False``
    skips the endpoints; ``dry_run`` counts what would change without writing. ``on_batch`` is
    called after every delivery batch (progress, or a place to persist ``last_id``).
    """
    if batch_size < 1:
        raise ConfigError("batch_size must be at least 1")
    if isinstance(crypto, FieldCryptoConfig):
        crypto = FieldCrypto(crypto)
    crypto = crypto or field_crypto_of(persistence)
    if crypto is None:
        raise ConfigError("rekey needs a field-crypto configuration (keys and modes)")
    stored = stored_view(persistence)
    report = RekeyReport()
    if endpoints:
        for endpoint in await stored.endpoint_store.list():
            report.endpoints_checked += 1
            try:
                replacement = crypto.rekeyed_endpoint(endpoint)
            except DecryptionError as exc:
                report._fail(endpoint.id, exc)
                continue
            if replacement is None:
                continue
            if dry_run or await stored.endpoint_store.rewrite_sealed(
                endpoint.id, expected=endpoint, replacement=replacement
            ):
                report.endpoints_rewritten += 1
            else:
                report.skipped += 1
    cursor = after
    while True:
        rows = await stored.delivery_store.scan(after=cursor, limit=batch_size)
        if not rows:
            break
        rewrites: list[PayloadRewrite] = []
        for delivery in rows:
            try:
                rewrite = crypto.rekeyed_delivery(delivery)
            except DecryptionError as exc:
                report._fail(delivery.id, exc)
                continue
            if rewrite is not None:
                rewrites.append(rewrite)
        applied = (
            len(rewrites)
            if dry_run or not rewrites
            else await stored.delivery_store.rewrite_payloads(rewrites)
        )
        report.deliveries_checked += len(rows)
        report.deliveries_rewritten += applied
        report.skipped += len(rewrites) - applied
        cursor = report.last_id = rows[-1].id
        if on_batch is not None:
            on_batch(report)
        if len(rows) < batch_size:
            break
    return report
