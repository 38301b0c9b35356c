"""Runs a provider's onboarding checks (``onboarding.py``) and says what to do about each.

Every check ends as ``pass``, ``warn`` or ``blocker``: config checks pass when the provider
could be built from its settings; capability checks look for the declared methods; API probes
call the vendor (``list_templates`` / ``list_kakao_channels``) and fail with the vendor's error;
manual checks cannot be verified from here and are always reported as a ``warn`` to confirm by
hand. A failed check is a ``blocker`` only when its severity is ``blocker``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from .errors import KMsgError, KMsgErrorCode, SenderKeyRequiredError, UnsupportedOperationError
from .onboarding import (
    CheckKind,
    CheckScope,
    CheckSeverity,
    OnboardingCheck,
    ProbeOperation,
    ProviderOnboardingSpec,
)
from .provider import KakaoChannelProvider, Provider, TemplateProvider
from .result import Fail

#: The environment variable behind each onboarding ``config_keys`` entry (seed 002).
CONFIG_ENV: Mapping[tuple[str, str], str] = {
    ("iwinv", "apiKey"): "IWINV_API_KEY",
    ("aligo", "apiKey"): "ALIGO_API_KEY",
    ("aligo", "userId"): "ALIGO_USER_ID",
    ("solapi", "apiKey"): "SOLAPI_API_KEY",
    ("solapi", "apiSecret"): "SOLAPI_API_SECRET",
}

_ACTIONS: Mapping[KMsgErrorCode, str] = {
    KMsgErrorCode.AUTHENTICATION_FAILED: (
        "check the API key; IWINV and Aligo also refuse calls from an IP not whitelisted "
        "in their console"
    ),
    KMsgErrorCode.NETWORK_ERROR: "check the network and the provider's base URL",
    KMsgErrorCode.NETWORK_TIMEOUT: "check the network and the provider's base URL",
    KMsgErrorCode.NETWORK_SERVICE_UNAVAILABLE: "the vendor is down: try again later",
    KMsgErrorCode.RATE_LIMIT_EXCEEDED: "wait and run the doctor again",
}


class CheckStatus(StrEnum):
    PASS = "pass"
    WARN = "warn"
    BLOCKER = "blocker"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's outcome; ``action`` says what to do when it did not pass."""

    check: OnboardingCheck
    status: CheckStatus
    detail: str
    action: str | None = None


@dataclass(frozen=True, slots=True)
class DoctorReport:
    provider_id: str
    results: tuple[CheckResult, ...]

    @property
    def blocked(self) -> bool:
        """Whether a blocker stands between this provider and sending."""
        return any(r.status is CheckStatus.BLOCKER for r in self.results)


def _failed(check: OnboardingCheck) -> CheckStatus:
    return CheckStatus.BLOCKER if check.severity is CheckSeverity.BLOCKER else CheckStatus.WARN


def _action_for(error: KMsgError) -> str:
    if isinstance(error, UnsupportedOperationError):
        return "this provider has no such API"
    if isinstance(error, SenderKeyRequiredError):
        return f"set {error.setting} (the Kakao channel's sender key)"
    return _ACTIONS.get(error.code, "see the vendor's message above")


async def _probe(check: OnboardingCheck, provider: Provider) -> KMsgError | bool:
    """The probe's error, ``True`` when it answered, ``False`` when there is nothing to call."""
    if check.probe_operation is ProbeOperation.LIST_TEMPLATES and isinstance(
        provider, TemplateProvider
    ):
        templates = await provider.list_templates(limit=1)
        return templates.error if isinstance(templates, Fail) else True
    if check.probe_operation is ProbeOperation.LIST_KAKAO_CHANNELS and isinstance(
        provider, KakaoChannelProvider
    ):
        channels = await provider.list_kakao_channels()
        return channels.error if isinstance(channels, Fail) else True
    return False


async def run_check(
    spec: ProviderOnboardingSpec,
    check: OnboardingCheck,
    provider: Provider | None,
    *,
    missing: tuple[str, ...] = (),
) -> CheckResult:
    """Run one check. ``provider`` is ``None`` when it could not be built; ``missing`` then
    names the absent settings (environment variable names)."""
    if check.kind is CheckKind.CONFIG:
        if provider is not None:
            return CheckResult(check, CheckStatus.PASS, "configured")
        names = [CONFIG_ENV.get((spec.provider_id, key), key) for key in check.config_keys]
        absent = [name for name in names if not missing or name in missing] or names
        return CheckResult(
            check, _failed(check), "missing: " + ", ".join(absent), "set " + ", ".join(absent)
        )
    if check.kind is CheckKind.MANUAL:
        return CheckResult(
            check,
            CheckStatus.WARN,
            "cannot be checked automatically",
            "confirm by hand: " + (check.description or check.title),
        )
    if provider is None:
        return CheckResult(
            check, _failed(check), "provider not configured", "fix the config checks first"
        )
    if check.kind is CheckKind.CAPABILITY:
        absent_methods = [
            m for m in check.capability_methods if not callable(getattr(provider, m, None))
        ]
        if not absent_methods:
            return CheckResult(check, CheckStatus.PASS, ", ".join(check.capability_methods))
        return CheckResult(
            check,
            _failed(check),
            "missing: " + ", ".join(absent_methods),
            "use a provider version that implements them",
        )
    if check.kind is CheckKind.API_PROBE:
        outcome = await _probe(check, provider)
        if outcome is False:
            return CheckResult(
                check, _failed(check), "no method to probe with", "this provider has no such API"
            )
        if isinstance(outcome, KMsgError):
            return CheckResult(
                check,
                _failed(check),
                f"{outcome.code.value}: {outcome.message}",
                _action_for(outcome),
            )
        probe = check.probe_operation.value if check.probe_operation else "probe"
        return CheckResult(check, CheckStatus.PASS, f"{probe} answered")
    return CheckResult(check, CheckStatus.PASS, "nothing to check here")


async def run_doctor(
    spec: ProviderOnboardingSpec,
    provider: Provider | None,
    *,
    missing: tuple[str, ...] = (),
    scope: CheckScope = CheckScope.DOCTOR,
) -> DoctorReport:
    """Run every check of ``spec`` in ``scope``, in the spec's order."""
    results = [
        await run_check(spec, check, provider, missing=missing)
        for check in spec.checks
        if scope in check.scopes
    ]
    return DoctorReport(spec.provider_id, tuple(results))
