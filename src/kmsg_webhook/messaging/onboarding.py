"""Onboarding specs: what each built-in provider needs before it can send, and a registry.

The facade reads the ``plus_id`` policy at send time for ALIMTALK (see ``KMsg``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from .errors import KMsgError, KMsgErrorCode


class ChannelOnboarding(StrEnum):
    MANUAL = "manual"
    API = "api"
    NONE = "none"


class TemplateLifecycleApi(StrEnum):
    AVAILABLE = "available"
    UNAVAILABLE = "unavailable"


class PlusIdPolicy(StrEnum):
    OPTIONAL = "optional"
    REQUIRED = "required"
    REQUIRED_IF_NO_INFERENCE = "required_if_no_inference"


class PlusIdInference(StrEnum):
    SUPPORTED = "supported"
    UNSUPPORTED = "unsupported"


class LiveTestSupport(StrEnum):
    SUPPORTED = "supported"
    PARTIAL = "partial"
    NONE = "none"


class CheckKind(StrEnum):
    MANUAL = "manual"
    CONFIG = "config"
    CAPABILITY = "capability"
    API_PROBE = "api_probe"
    INFERENCE = "inference"


class CheckSeverity(StrEnum):
    BLOCKER = "blocker"
    WARNING = "warning"
    INFO = "info"


class CheckScope(StrEnum):
    DOCTOR = "doctor"
    PREFLIGHT = "preflight"
    SEND = "send"


class ProbeOperation(StrEnum):
    LIST_TEMPLATES = "list_templates"
    LIST_KAKAO_CHANNELS = "list_kakao_channels"


_DEFAULT_SCOPES = (CheckScope.DOCTOR, CheckScope.PREFLIGHT)


@dataclass(frozen=True, slots=True)
class OnboardingCheck:
    id: str
    title: str
    kind: CheckKind
    severity: CheckSeverity
    scopes: tuple[CheckScope, ...] = _DEFAULT_SCOPES
    description: str | None = None
    config_keys: tuple[str, ...] = ()
    capability_methods: tuple[str, ...] = ()
    probe_operation: ProbeOperation | None = None


@dataclass(frozen=True, slots=True)
class ProviderOnboardingSpec:
    provider_id: str
    provider_name: str
    channel_onboarding: ChannelOnboarding
    template_lifecycle_api: TemplateLifecycleApi
    plus_id_policy: PlusIdPolicy
    plus_id_inference: PlusIdInference
    live_test_support: LiveTestSupport
    checks: tuple[OnboardingCheck, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def requires_plus_id(self) -> bool:
        """Whether ALIMTALK sends must carry ``kakao.plus_id`` under this policy."""
        if self.plus_id_policy is PlusIdPolicy.REQUIRED:
            return True
        return (
            self.plus_id_policy is PlusIdPolicy.REQUIRED_IF_NO_INFERENCE
            and self.plus_id_inference is PlusIdInference.UNSUPPORTED
        )


_TEMPLATE_METHODS = ("list_templates", "get_template", "create_template")

# IWINV and Aligo run the very same probe; one object keeps their doctor output identical.
_TEMPLATE_LIST_PROBE = OnboardingCheck(
    "template_list_probe",
    "Template list can be read",
    CheckKind.API_PROBE,
    CheckSeverity.WARNING,
    probe_operation=ProbeOperation.LIST_TEMPLATES,
)

_SPECS: dict[str, ProviderOnboardingSpec] = {
    spec.provider_id: spec
    for spec in (
        ProviderOnboardingSpec(
            provider_id="iwinv",
            provider_name="IWINV Messaging Provider",
            channel_onboarding=ChannelOnboarding.MANUAL,
            template_lifecycle_api=TemplateLifecycleApi.AVAILABLE,
            plus_id_policy=PlusIdPolicy.OPTIONAL,
            plus_id_inference=PlusIdInference.UNSUPPORTED,
            live_test_support=LiveTestSupport.SUPPORTED,
            checks=(
                OnboardingCheck(
                    "channel_registered_in_console",
                    "Kakao channel registered in the IWINV console",
                    CheckKind.MANUAL,
                    CheckSeverity.BLOCKER,
                ),
                OnboardingCheck(
                    "iwinv_config_required",
                    "IWINV API key configured",
                    CheckKind.CONFIG,
                    CheckSeverity.BLOCKER,
                    config_keys=("apiKey",),
                ),
                OnboardingCheck(
                    "template_capability_available",
                    "Template API methods available",
                    CheckKind.CAPABILITY,
                    CheckSeverity.WARNING,
                    capability_methods=(*_TEMPLATE_METHODS, "update_template", "delete_template"),
                ),
                _TEMPLATE_LIST_PROBE,
            ),
            notes=(
                "Channels are added and authorised in the IWINV console only.",
                "Template APIs can be probed.",
            ),
        ),
        ProviderOnboardingSpec(
            provider_id="aligo",
            provider_name="Aligo Smart SMS",
            channel_onboarding=ChannelOnboarding.API,
            template_lifecycle_api=TemplateLifecycleApi.AVAILABLE,
            plus_id_policy=PlusIdPolicy.REQUIRED_IF_NO_INFERENCE,
            plus_id_inference=PlusIdInference.SUPPORTED,
            live_test_support=LiveTestSupport.SUPPORTED,
            checks=(
                OnboardingCheck(
                    "aligo_config_required",
                    "Aligo API key and user id configured",
                    CheckKind.CONFIG,
                    CheckSeverity.BLOCKER,
                    config_keys=("apiKey", "userId"),
                ),
                OnboardingCheck(
                    "channel_api_capability_available",
                    "Kakao channel API methods available",
                    CheckKind.CAPABILITY,
                    CheckSeverity.WARNING,
                    capability_methods=(
                        "list_kakao_channels",
                        "request_kakao_channel_auth",
                        "add_kakao_channel",
                    ),
                ),
                OnboardingCheck(
                    "channel_list_probe",
                    "Kakao channel list can be read",
                    CheckKind.API_PROBE,
                    CheckSeverity.WARNING,
                    probe_operation=ProbeOperation.LIST_KAKAO_CHANNELS,
                ),
                _TEMPLATE_LIST_PROBE,
            ),
        ),
        ProviderOnboardingSpec(
            provider_id="solapi",
            provider_name="SOLAPI Messaging Provider",
            channel_onboarding=ChannelOnboarding.NONE,
            template_lifecycle_api=TemplateLifecycleApi.UNAVAILABLE,
            plus_id_policy=PlusIdPolicy.REQUIRED_IF_NO_INFERENCE,
            plus_id_inference=PlusIdInference.UNSUPPORTED,
            live_test_support=LiveTestSupport.PARTIAL,
            checks=(
                OnboardingCheck(
                    "solapi_config_required",
                    "SOLAPI API key and secret configured",
                    CheckKind.CONFIG,
                    CheckSeverity.BLOCKER,
                    config_keys=("apiKey", "apiSecret"),
                ),
            ),
            notes=("ALIMTALK needs the pfId; the plusId cannot be inferred.",),
        ),
        ProviderOnboardingSpec(
            provider_id="mock",
            provider_name="Mock Provider",
            channel_onboarding=ChannelOnboarding.API,
            template_lifecycle_api=TemplateLifecycleApi.AVAILABLE,
            plus_id_policy=PlusIdPolicy.OPTIONAL,
            plus_id_inference=PlusIdInference.SUPPORTED,
            live_test_support=LiveTestSupport.NONE,
            checks=(
                OnboardingCheck(
                    "mock_template_capability_available",
                    "Mock template methods available",
                    CheckKind.CAPABILITY,
                    CheckSeverity.INFO,
                    capability_methods=_TEMPLATE_METHODS,
                ),
            ),
        ),
    )
}

#: Read-only registry keyed by provider id.
PROVIDER_ONBOARDING_SPECS: Mapping[str, ProviderOnboardingSpec] = MappingProxyType(_SPECS)


def get_provider_onboarding_spec(provider_id: str) -> ProviderOnboardingSpec:
    """The spec for ``provider_id``; raises ``KMsgError`` (INVALID_REQUEST) if there is none."""
    spec = _SPECS.get(provider_id)
    if spec is None:
        raise KMsgError(
            KMsgErrorCode.INVALID_REQUEST,
            f"No onboarding spec for provider {provider_id!r}",
            provider_id=provider_id,
        )
    return spec


def find_provider_onboarding_spec(provider_id: str) -> ProviderOnboardingSpec | None:
    """Like :func:`get_provider_onboarding_spec` but ``None`` when missing."""
    return _SPECS.get(provider_id)


def list_provider_onboarding_specs() -> tuple[ProviderOnboardingSpec, ...]:
    """All specs, in the seed table's order (iwinv, aligo, solapi, mock)."""
    return tuple(_SPECS.values())
