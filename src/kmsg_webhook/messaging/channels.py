"""Kakao channels: the typed channel a vendor reports, its business categories, and the
binding table that lets a send name a channel by alias or plusId instead of its sender key."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..errors import ConfigError


@dataclass(frozen=True, slots=True)
class KakaoChannel:
    """A Kakao channel (sender profile). ``sender_key`` is what sends use (Aligo senderKey,
    SOLAPI pfId); ``plus_id`` is the public ``@name``."""

    provider_id: str
    sender_key: str
    plus_id: str | None = None
    name: str | None = None
    status: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    raw: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class KakaoChannelCategory:
    """One business category; ``parent_code`` links a level to the one above it."""

    code: str
    name: str
    parent_code: str | None = None


@dataclass(frozen=True, slots=True)
class KakaoChannelCategories:
    """Kakao's three category levels; a channel is registered with a ``third`` code."""

    first: tuple[KakaoChannelCategory, ...] = ()
    second: tuple[KakaoChannelCategory, ...] = ()
    third: tuple[KakaoChannelCategory, ...] = ()

    def children(self, code: str) -> tuple[KakaoChannelCategory, ...]:
        """The categories one level below ``code``."""
        return tuple(c for c in (*self.second, *self.third) if c.parent_code == code)


@dataclass(frozen=True, slots=True)
class ChannelBinding:
    """One configured channel: an alias of ours, its ``@plusId`` and its sender key.

    ``provider_id`` (optional) is the provider the sender key belongs to; when set, the send is
    routed there unless it names a provider itself.
    """

    alias: str
    plus_id: str
    sender_key: str
    provider_id: str | None = None


def normalize_plus_id(value: str) -> str:
    """``@name`` whatever the caller typed (``name`` or ``@name``)."""
    text = value.strip()
    return text if text.startswith("@") else "@" + text


class ChannelBindings:
    """Resolves an alias, a plusId (with or without ``@``) or a sender key to its binding.

    Raises :class:`~kmsg_webhook.errors.ConfigError` at construction when two bindings share an
    alias, a plusId or a sender key, so a name can never mean two channels.
    """

    def __init__(self, bindings: Iterable[ChannelBinding] = ()) -> None:
        self._bindings: tuple[ChannelBinding, ...] = tuple(bindings)
        self._index: dict[str, ChannelBinding] = {}
        for binding in self._bindings:
            if not (binding.alias.strip() and binding.plus_id.strip() and binding.sender_key):
                raise ConfigError(f"channel binding {binding!r} needs alias, plus_id, sender_key")
            keys = {
                "alias:" + binding.alias.strip(),
                "plus:" + normalize_plus_id(binding.plus_id),
                "key:" + binding.sender_key,
            }
            for key in keys:
                if key in self._index:
                    raise ConfigError(f"channel binding {key.split(':', 1)[1]!r} is defined twice")
                self._index[key] = binding

    @classmethod
    def from_mapping(cls, table: Mapping[str, Mapping[str, Any]]) -> ChannelBindings:
        """Build from ``{alias: {"plus_id": ..., "sender_key": ..., "provider": ...}}`` (the
        ``[channels.<alias>]`` tables of ``kmsg.toml``)."""
        bindings = []
        for alias, entry in table.items():
            plus_id, sender_key = entry.get("plus_id"), entry.get("sender_key")
            provider = entry.get("provider")
            if not isinstance(plus_id, str) or not isinstance(sender_key, str):
                raise ConfigError(f"channel {alias!r} needs string plus_id and sender_key")
            if provider is not None and not isinstance(provider, str):
                raise ConfigError(f"channel {alias!r}: provider must be a string")
            bindings.append(ChannelBinding(alias, plus_id, sender_key, provider))
        return cls(bindings)

    def __iter__(self) -> Iterator[ChannelBinding]:
        return iter(self._bindings)

    def __len__(self) -> int:
        return len(self._bindings)

    def resolve(self, name: str) -> ChannelBinding | None:
        """The binding ``name`` refers to (alias first, then plusId, then sender key)."""
        text = name.strip()
        if not text:
            return None
        return (
            self._index.get("alias:" + text)
            or self._index.get("plus:" + normalize_plus_id(text))
            or self._index.get("key:" + text)
        )
