"""Typed send options to JSON text and back, for messages the job queue stores.

The text names the options class and holds its fields by name; nested options, enums, tuples
and mappings are rebuilt from the dataclasses' type hints. Datetimes and bytes, which JSON
lacks, travel tagged (``{"$datetime": iso}``, ``{"$bytes": base64}``), so a template variable
that is a datetime comes back a datetime.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import types
from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from functools import cache
from typing import Any, Union, get_args, get_origin, get_type_hints

from ..errors import StoreError
from ..events import parse_timestamp
from .types import (
    AlimTalkSendOptions,
    FaxSendOptions,
    FriendTalkSendOptions,
    NsaSendOptions,
    RcsTemplateSendOptions,
    RcsTextSendOptions,
    SendOptions,
    SmsSendOptions,
    VoiceSendOptions,
)

_KINDS: dict[str, type[SendOptions]] = {
    cls.__name__: cls
    for cls in (
        SmsSendOptions,
        AlimTalkSendOptions,
        FriendTalkSendOptions,
        NsaSendOptions,
        VoiceSendOptions,
        FaxSendOptions,
        RcsTextSendOptions,
        RcsTemplateSendOptions,
    )
}


def encode_options(options: SendOptions) -> str:
    """``options`` as compact JSON text."""
    kind = type(options).__name__
    if kind not in _KINDS:
        raise TypeError(f"not a send options object: {kind}")
    document = {"kind": kind, "options": _encode(options)}
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def decode_options(text: str) -> SendOptions:
    """The options :func:`encode_options` wrote; anything else is a :class:`StoreError`."""
    try:
        document = json.loads(text)
        cls = _KINDS[document["kind"]]
        decoded = _decode(cls, document["options"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"a stored message cannot be read back: {exc!r}") from exc
    assert isinstance(decoded, cls)
    return decoded


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _decode(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, dict) and len(value) == 1:
        if "$datetime" in value:
            return parse_timestamp(value["$datetime"])
        if "$bytes" in value:
            return base64.b64decode(value["$bytes"])
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in get_args(hint):
            if dataclasses.is_dataclass(option) or (
                isinstance(option, type) and issubclass(option, Enum)
            ):
                return _decode(option, value)
        return value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hints = _hints(hint)
        return hint(
            **{
                f.name: _decode(hints[f.name], value[f.name])
                for f in dataclasses.fields(hint)
                if f.init and f.name in value
            }
        )
    if isinstance(hint, type) and issubclass(hint, Enum):
        return hint(value)
    if origin is tuple:
        return tuple(_decode(get_args(hint)[0], v) for v in value)
    if origin in (Mapping, dict):
        return {k: _decode(get_args(hint)[1], v) for k, v in value.items()}
    return value
