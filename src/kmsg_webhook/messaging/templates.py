"""``#{name}`` placeholders: finding them, filling them, and stringifying variable values."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from .types import Variables, VariableValue

_PLACEHOLDER = re.compile(r"#\{([^{}]+)\}")


def stringify_variable(value: VariableValue) -> str:
    """A variable as vendors receive it (the JavaScript ``String()`` forms the original sent).

    ``None`` → ``""``, booleans → ``true``/``false``, whole floats without ``.0``,
    datetimes → ISO-8601 UTC with milliseconds and ``Z`` (naive means UTC).
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        moment = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def placeholders(text: str) -> tuple[str, ...]:
    """Placeholder names in ``text``, in order of first appearance, without duplicates."""
    seen: dict[str, None] = {}
    for match in _PLACEHOLDER.finditer(text):
        seen.setdefault(match.group(1), None)
    return tuple(seen)


def missing_variables(text: str, variables: Variables | None) -> tuple[str, ...]:
    """Placeholders in ``text`` that ``variables`` does not define."""
    known = variables or {}
    return tuple(name for name in placeholders(text) if name not in known)


def interpolate(text: str, variables: Variables | None) -> str:
    """Replace each ``#{name}`` with its variable; unknown names are left as they are."""
    if not variables or not text.strip():
        return text

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            return match.group(0)
        return stringify_variable(variables[name])

    return _PLACEHOLDER.sub(replace, text)
