"""AlimTalk templates without a vendor: ``#{name}`` placeholders, the typed ``Template``, checks
before a template is submitted, and rendering (the same code ``send`` uses)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from .errors import KMsgError, KMsgErrorCode, invalid_request
from .result import Fail, Ok, Result
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


def render(text: str, variables: Variables | None) -> Result[str, KMsgError]:
    """``text`` with every ``#{name}`` filled in, or INVALID_REQUEST naming the missing ones.

    This is what ``KMsg.send`` does to SMS/FriendTalk text and what Aligo does to an AlimTalk
    template before sending; use it to preview a message without a vendor.
    """
    missing = missing_variables(text, variables)
    if missing:
        return Fail(invalid_request(f"missing template variables: {', '.join(missing)}"))
    return Ok(interpolate(text, variables))


# --------------------------------------------------------------------------- AlimTalk templates


class TemplateStatus(StrEnum):
    """Where a template stands in Kakao's review."""

    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    PENDING = "PENDING"
    INSPECTION = "INSPECTION"

    @property
    def is_under_review(self) -> bool:
        """Whether a later look may find it approved or rejected."""
        return self in (TemplateStatus.PENDING, TemplateStatus.INSPECTION)


#: AlimTalk button types: web link, app link, delivery tracking (``DS``; IWINV documents
#: ``DB``), bot keyword, message delivery, and Kakao's consult, bot and add-channel buttons.
BUTTON_TYPES: frozenset[str] = frozenset({"WL", "AL", "DS", "DB", "BK", "MD", "BC", "BT", "AC"})


@dataclass(frozen=True, slots=True)
class TemplateButton:
    """An AlimTalk template button. ``WL`` needs ``url_mobile``; ``AL`` needs an app scheme."""

    name: str
    type: str = "WL"
    url_mobile: str | None = None
    url_pc: str | None = None
    scheme_ios: str | None = None
    scheme_android: str | None = None


# Kakao's link field names, which IWINV and Aligo both use on the wire.
_LINK_FIELDS = (
    ("linkMo", "url_mobile"),
    ("linkPc", "url_pc"),
    ("linkIos", "scheme_ios"),
    ("linkAnd", "scheme_android"),
)


def button_links(button: TemplateButton) -> dict[str, str]:
    """The button's links under Kakao's wire names (``linkMo``, ``linkPc``, ...), set ones only."""
    links = {wire: getattr(button, attr) for wire, attr in _LINK_FIELDS}
    return {wire: value for wire, value in links.items() if value}


def buttons_from_wire(items: Any, type_key: str) -> tuple[TemplateButton, ...]:
    """Buttons from a vendor's list of ``{name, <type_key>, linkMo, ...}`` objects."""
    return tuple(
        TemplateButton(
            name=str(item.get("name") or ""),
            type=str(item.get(type_key) or "WL"),
            **{attr: item.get(wire) or None for wire, attr in _LINK_FIELDS},
        )
        for item in items or []
        if isinstance(item, dict)
    )


@dataclass(frozen=True, slots=True)
class Template:
    """An AlimTalk template as a vendor reports it (``code`` is what sends name)."""

    id: str
    code: str
    name: str
    content: str
    status: TemplateStatus
    provider_id: str
    category: str | None = None
    buttons: tuple[TemplateButton, ...] = ()
    variables: tuple[str, ...] = ()
    created_at: datetime | None = None
    updated_at: datetime | None = None
    #: The Kakao channel the template belongs to, for vendors that keep templates per channel.
    sender_key: str | None = None
    raw: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class TemplateInput:
    """A template to submit.

    ``category`` is the Kakao category code. Neither IWINV's nor Aligo's template API takes one:
    it is not sent to them, only kept on the ``Template`` they return (the mock stores it).
    """

    name: str
    content: str
    category: str | None = None
    buttons: tuple[TemplateButton, ...] = ()


@dataclass(frozen=True, slots=True)
class TemplateUpdate:
    """A change to a template; fields left ``None`` keep their current value."""

    name: str | None = None
    content: str | None = None
    category: str | None = None
    buttons: tuple[TemplateButton, ...] | None = None

    def apply(self, current: Template) -> TemplateInput:
        """The full template after this change (vendors replace, they do not patch)."""
        return TemplateInput(
            name=current.name if self.name is None else self.name,
            content=current.content if self.content is None else self.content,
            category=current.category if self.category is None else self.category,
            buttons=current.buttons if self.buttons is None else self.buttons,
        )


@dataclass(frozen=True, slots=True)
class TemplateLimits:
    """Vendor limits checked before a template is submitted (IWINV's are the defaults)."""

    max_name: int = 15
    max_content: int = 1000
    max_buttons: int = 5
    max_button_name: int = 14


_VARIABLE_NAME = re.compile(r"[^\s#{}]{1,30}")


def template_problems(template: TemplateInput, limits: TemplateLimits | None = None) -> list[str]:
    """Everything wrong with ``template`` (empty when it may be submitted)."""
    limits = limits or TemplateLimits()
    problems: list[str] = []
    if not template.name.strip():
        problems.append("name is required")
    elif len(template.name) > limits.max_name:
        problems.append(f"name is longer than {limits.max_name} characters")
    if not template.content.strip():
        problems.append("content is required")
    elif len(template.content) > limits.max_content:
        problems.append(f"content is longer than {limits.max_content} characters")
    if template.content.count("#{") != len(_PLACEHOLDER.findall(template.content)):
        problems.append("content has an unclosed or nested #{...} placeholder")
    for name in placeholders(template.content):
        if not _VARIABLE_NAME.fullmatch(name):
            problems.append(f"variable #{{{name}}} must be 1-30 characters without spaces")
    if len(template.buttons) > limits.max_buttons:
        problems.append(f"at most {limits.max_buttons} buttons")
    for index, button in enumerate(template.buttons, 1):
        label = f"button {index}"
        if not button.name.strip():
            problems.append(f"{label}: name is required")
        elif len(button.name) > limits.max_button_name:
            problems.append(f"{label}: name is longer than {limits.max_button_name} characters")
        if button.type not in BUTTON_TYPES:
            problems.append(f"{label}: unknown type {button.type!r}")
        elif button.type == "WL" and not button.url_mobile:
            problems.append(f"{label}: a web link (WL) needs url_mobile")
        elif button.type == "AL" and not (button.scheme_ios or button.scheme_android):
            problems.append(f"{label}: an app link (AL) needs scheme_ios or scheme_android")
        for url in (button.url_mobile, button.url_pc):
            if url and not url.startswith(("http://", "https://")):
                problems.append(f"{label}: {url!r} is not an http(s) URL")
    return problems


def validate_template(
    template: TemplateInput, limits: TemplateLimits | None = None, *, provider_id: str | None = None
) -> Result[TemplateInput, KMsgError]:
    """``template`` itself, or INVALID_REQUEST listing every problem (``details["problems"]``)."""
    problems = template_problems(template, limits)
    if not problems:
        return Ok(template)
    return Fail(
        KMsgError(
            KMsgErrorCode.INVALID_REQUEST,
            "invalid template: " + "; ".join(problems),
            provider_id=provider_id,
            details={"problems": problems},
        )
    )


def revised_template(current: Template, merged: TemplateInput, status: TemplateStatus) -> Template:
    """``current`` after a vendor took ``merged`` in its place, in review again as ``status``."""
    return replace(
        current,
        name=merged.name,
        content=merged.content,
        category=merged.category,
        buttons=merged.buttons,
        variables=placeholders(merged.content),
        status=status,
        updated_at=datetime.now(UTC),
    )


def find_template(
    templates: Iterable[Template], code: str, provider_id: str
) -> Result[Template, KMsgError]:
    """The template with ``code``, or TEMPLATE_NOT_FOUND."""
    match = next((t for t in templates if t.code == code), None)
    if match is not None:
        return Ok(match)
    return Fail(
        KMsgError(
            KMsgErrorCode.TEMPLATE_NOT_FOUND,
            f"{provider_id} has no template {code!r}",
            provider_id=provider_id,
        )
    )


def template_page(
    templates: Iterable[Template],
    *,
    status: TemplateStatus | None,
    page: int,
    limit: int,
    provider_id: str,
) -> Result[tuple[Template, ...], KMsgError]:
    """One page of ``templates`` in ``status``, for vendors that return the whole list."""
    if page < 1 or limit < 1:
        return Fail(invalid_request("page and limit must be >= 1", provider_id=provider_id))
    chosen = [t for t in templates if status is None or t.status is status]
    return Ok(tuple(chosen[(page - 1) * limit : page * limit]))
