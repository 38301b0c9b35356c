"""Which servers the sender trusts over https: the system's CAs, or the ones configured.

``WebhookConfig.ssl`` takes an :class:`ssl.SSLContext` (used as it is) or the path of a CA
bundle in PEM (trusted instead of the system's). The sender puts the result on every endpoint's
transport target, so it applies to the runtime's own transport and to a caller's session alike,
and the connect-time URL guard (the resolver) is untouched. Certificate verification cannot be
turned off: ``ssl=False`` or a context with ``CERT_NONE`` is a
:class:`~kmsg_webhook.errors.ConfigError`.

An endpoint may carry a client certificate and key (PEM) for receivers that require mutual
TLS: its requests then go with a context of its own that trusts the same CAs.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from typing import TypeAlias

from .errors import ConfigError, InvalidEndpointError

#: What ``WebhookConfig.ssl`` accepts.
TLSSetting: TypeAlias = "ssl.SSLContext | str | os.PathLike[str] | None"


def trust_context(setting: TLSSetting) -> ssl.SSLContext | None:
    """The context a setting stands for (``None``: the transport's default, the system's CAs);
    raises :class:`ConfigError` for anything that would not verify certificates."""
    if setting is None:
        return None
    if isinstance(setting, ssl.SSLContext):
        if setting.verify_mode == ssl.CERT_NONE:
            raise ConfigError(
                "ssl: this SSLContext does not verify certificates (verify_mode CERT_NONE); "
                "unverified TLS is not offered"
            )
        return setting
    if isinstance(setting, bool):
        raise ConfigError(
            "ssl must be an SSLContext or the path of a CA file in PEM; turning certificate "
            "verification off is not offered"
        )
    if not isinstance(setting, str | os.PathLike):
        raise ConfigError(f"ssl must be an SSLContext or a CA file path, got {setting!r}")
    path = os.fspath(setting)
    try:
        return ssl.create_default_context(cafile=path)
    except FileNotFoundError:
        raise ConfigError(f"ssl: CA file {path!r} does not exist") from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(f"ssl: cannot load CA file {path!r}: {exc}") from None


def client_context(setting: TLSSetting, cert_pem: str, key_pem: str) -> ssl.SSLContext:
    """A new context trusting what ``setting`` trusts and presenting this certificate; raises
    :class:`InvalidEndpointError` when the pair does not load (bad PEM, key not matching)."""
    context = _same_trust(trust_context(setting))
    # The ssl module loads a chain from files only; the key lives in the file for the call.
    with tempfile.TemporaryDirectory(prefix="kmsg-tls-") as folder:
        cert_file = os.path.join(folder, "cert.pem")
        key_file = os.path.join(folder, "key.pem")
        for path, text in ((cert_file, cert_pem), (key_file, key_pem)):
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
                out.write(text)
        try:
            context.load_cert_chain(cert_file, key_file)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise InvalidEndpointError(
                f"the client certificate and key do not load as a pair: {exc}"
            ) from None
    return context


def _same_trust(base: ssl.SSLContext | None) -> ssl.SSLContext:
    """A fresh context with ``base``'s CAs and checks (the system's CAs for ``None``); a
    given context is never changed, since others may share it."""
    if base is None:
        return ssl.create_default_context()
    cas = base.get_ca_certs(binary_form=True)
    if not cas:  # it trusts the system's CAs
        context = ssl.create_default_context()
    else:
        context = ssl.create_default_context(cadata=b"".join(cas))
    context.check_hostname = base.check_hostname
    context.verify_mode = base.verify_mode
    return context
