"""The ``kmsg`` command line: send messages, manage AlimTalk templates and Kakao channels, and
check providers.

Providers are configured from their environment variables (``IWINV_API_KEY``,
``ALIGO_API_KEY`` + ``ALIGO_USER_ID``, ``SOLAPI_API_KEY`` + ``SOLAPI_API_SECRET``, ...) or from
``--config kmsg.toml``; ``KMSG_PROVIDERS`` (comma-separated ids) narrows the set, and the mock
provider is enabled only when named there or in the file. Secret values are never printed.
Every command takes ``--json``. ``queue``, ``tracking`` and ``worker`` work on a store
(``--store URL`` or ``$KMSG_WEBHOOK_STORE_URL``; see ``docs/messaging.md``).

Exit status: 0 success, 1 the operation or a doctor check failed, 2 bad usage or
configuration, 3 not found, 4 store unavailable, 5 refused as unsafe (sealed values without
keys, a retry that would send twice, not confirmed), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import tomllib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

from .. import eventloop
from ..display import print_table
from ..errors import ConfigError, WebhookError
from ..exitcodes import ExitCode, exit_code_for
from ..logs import configure_logging
from . import store_commands, worker
from .aligo import AligoProvider
from .channels import ChannelBindings
from .doctor import CheckStatus, run_doctor
from .errors import KMsgError, ProviderConfigError
from .iwinv import IWINVProvider
from .kmsg import KMsg, RoutingConfig
from .management import ProviderManager
from .mock import MockProvider
from .onboarding import get_provider_onboarding_spec
from .provider import (
    BalanceProvider,
    DeliveryStatusProvider,
    KakaoChannelProvider,
    Provider,
    TemplateInspectionProvider,
    TemplateProvider,
)
from .result import Fail, Ok, Result
from .solapi import SolapiProvider
from .templates import TemplateButton, TemplateInput, TemplateStatus, TemplateUpdate

#: Every provider the command line knows, in the seed's order, with its ``from_env``.
FACTORIES: Mapping[str, Callable[[Mapping[str, str]], Provider]] = {
    "iwinv": lambda env: IWINVProvider.from_env(env),
    "aligo": lambda env: AligoProvider.from_env(env),
    "solapi": lambda env: SolapiProvider.from_env(env),
    "mock": lambda env: MockProvider(),
}
_SECRET_MARKERS = ("KEY", "SECRET", "AUTH", "PASSWORD", "TOKEN")


class UsageError(ConfigError):
    """The command line was given something it cannot use."""


# --------------------------------------------------------------------------- configuration


@dataclasses.dataclass(slots=True)
class Setup:
    """What the configuration yields: built providers, the ones that failed and why."""

    env: dict[str, str]
    providers: dict[str, Provider]
    broken: dict[str, ProviderConfigError]
    channels: ChannelBindings
    default_provider: str | None

    async def aclose(self) -> None:
        for provider in self.providers.values():
            closer = getattr(provider, "aclose", None)
            if closer is not None:
                await closer()


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "Y" if value else "N"
    return str(value)


def load_setup(config: str | None, environ: Mapping[str, str]) -> Setup:
    """Providers from ``environ`` and, when given, the TOML file (its values win).

    File shape: ``[providers.<id>]`` tables whose keys are the provider's environment variables
    without the ``<ID>_`` prefix (``api_key``, ``base_url``, ...), ``[channels.<alias>]``
    tables (``plus_id``, ``sender_key``, optional ``provider``) and ``[routing] default``.
    """
    env = dict(environ)
    wanted = [p.strip() for p in env.get("KMSG_PROVIDERS", "").split(",") if p.strip()]
    channels: Mapping[str, Any] = {}
    default = None
    if config is not None:
        try:
            data = tomllib.loads(Path(config).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"cannot read config {config}: {exc}") from exc
        tables = data.get("providers", {})
        if not isinstance(tables, dict):
            raise UsageError("[providers] must be a table of provider tables")
        for provider_id, table in tables.items():
            if provider_id not in FACTORIES or not isinstance(table, dict):
                raise UsageError(f"unknown provider table [providers.{provider_id}]")
            for key, value in table.items():
                env[f"{provider_id.upper()}_{key.upper()}"] = _env_value(value)
            wanted.append(provider_id)
        channels = data.get("channels", {})
        routing = data.get("routing", {})
        default = routing.get("default") if isinstance(routing, dict) else None
    for provider_id in wanted:
        if provider_id not in FACTORIES:
            raise UsageError(f"unknown provider {provider_id!r} (known: {', '.join(FACTORIES)})")
    candidates = wanted or [p for p in FACTORIES if p != "mock"]
    providers: dict[str, Provider] = {}
    broken: dict[str, ProviderConfigError] = {}
    for provider_id in dict.fromkeys(candidates):
        try:
            providers[provider_id] = FACTORIES[provider_id](env)
        except ProviderConfigError as exc:
            broken[provider_id] = exc
    return Setup(env, providers, broken, ChannelBindings.from_mapping(channels), default)


def _is_secret(name: str) -> bool:
    return any(marker in name for marker in _SECRET_MARKERS)


def _settings(env: Mapping[str, str], provider_id: str) -> dict[str, str]:
    prefix = provider_id.upper() + "_"
    return {
        name: "****" if _is_secret(name) else value
        for name, value in sorted(env.items())
        if name.startswith(prefix) and value.strip()
    }


# --------------------------------------------------------------------------- output


def plain(value: Any) -> Any:
    """JSON-ready form of our dataclasses (``raw`` vendor payloads left out)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name.rstrip("_"): plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.name != "raw"
        }
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


class Output:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def json(self, value: Any) -> None:
        print(json.dumps(plain(value), ensure_ascii=False, indent=2))

    def failure(self, error: KMsgError) -> int:
        if self.as_json:
            self.json({"ok": False, "error": error.to_dict()})
        else:
            print(f"error: {error.code.value}: {error.message}", file=sys.stderr)
        return 1

    def result(
        self, result: Result[Any, KMsgError], show: Callable[[Any], None] | None = None
    ) -> int:
        if isinstance(result, Fail):
            return self.failure(result.error)
        if self.as_json:
            self.json({"ok": True, "result": result.value})
        elif show is not None:
            show(result.value)
        else:
            print("ok")
        return 0


@contextlib.asynccontextmanager
async def progress(label: str, *, quiet: bool) -> AsyncIterator[None]:
    """A spinner on stderr while the network is waited on (only on a terminal)."""
    if quiet or not sys.stderr.isatty():
        yield
        return

    async def spin() -> None:
        frames = "|/-\\"
        n = 0
        while True:
            sys.stderr.write(f"\r{frames[n % 4]} {label}...")
            sys.stderr.flush()
            n += 1
            await asyncio.sleep(0.1)

    task = asyncio.create_task(spin())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sys.stderr.write("\r" + " " * (len(label) + 6) + "\r")
        sys.stderr.flush()


def _date(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


def _show_templates(templates: Sequence[Any]) -> None:
    print_table(
        ["CODE", "NAME", "STATUS", "VARIABLES", "UPDATED"],
        [
            [t.code, t.name, t.status.value, ", ".join(t.variables) or "-", _date(t.updated_at)]
            for t in templates
        ],
    )


def _show_template(template: Any) -> None:
    _show_templates([template])
    print()
    print(template.content)
    for button in template.buttons:
        print(f"[{button.type}] {button.name} {button.url_mobile or ''}".rstrip())


def _show_channels(channels: Sequence[Any]) -> None:
    print_table(
        ["PLUS ID", "SENDER KEY", "NAME", "STATUS", "CREATED"],
        [
            [c.plus_id or "-", c.sender_key, c.name or "-", c.status or "-", _date(c.created_at)]
            for c in channels
        ],
    )


# --------------------------------------------------------------------------- commands


def _pick(setup: Setup, requested: str | None, wants: type, what: str) -> Provider:
    if requested is not None:
        if requested in setup.broken:
            raise UsageError(str(setup.broken[requested]))
        provider = setup.providers.get(requested)
        if provider is None:
            raise UsageError(f"provider {requested!r} is not configured")
        return provider
    able = [p for p in setup.providers.values() if wants is not None and isinstance(p, wants)]
    if setup.default_provider in {p.id for p in able}:
        return setup.providers[setup.default_provider or ""]
    if len(able) == 1:
        return able[0]
    if not able:
        raise UsageError(f"no configured provider can {what}")
    names = ", ".join(p.id for p in able)
    raise UsageError(f"several providers can {what} ({names}): choose one with --provider")


def _variables(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--var takes name=value, got {pair!r}")
        out[name] = value
    return out


def _buttons(specs: Sequence[str]) -> tuple[TemplateButton, ...]:
    buttons = []
    for spec in specs:
        parts = spec.split(",")
        if len(parts) < 2:
            raise UsageError(f"--button takes name,type[,mobile url[,pc url]], got {spec!r}")
        name, kind, *urls = parts
        buttons.append(
            TemplateButton(
                name,
                kind.strip().upper(),
                url_mobile=urls[0] if urls else None,
                url_pc=urls[1] if len(urls) > 1 else None,
            )
        )
    return tuple(buttons)


async def cmd_send(args: argparse.Namespace, setup: Setup, out: Output) -> int:
    if not setup.providers:
        raise UsageError("no provider is configured (see kmsg providers list)")
    message: dict[str, Any] = {"to": args.to}
    kind = {"sms": None, "alimtalk": "ALIMTALK"}.get(args.command, args.type)
    if kind:
        message["type"] = kind
    if args.text is not None:
        message["text"] = args.text
    if getattr(args, "template", None):
        message["templateId"] = args.template
    variables = _variables(args.var or [])
    if variables or kind == "ALIMTALK":
        message["variables"] = variables
    for key, value in (("from", args.sender), ("providerId", args.provider)):
        if value:
            message[key] = value
    if getattr(args, "channel", None):
        message["kakao"] = {"plusId": args.channel}
    if getattr(args, "subject", None):
        message["subject"] = args.subject
    routing = RoutingConfig(default_provider_id=setup.default_provider)
    kmsg = KMsg(list(setup.providers.values()), routing=routing, channels=setup.channels)
    async with progress("sending", quiet=out.as_json):
        outcome = await kmsg.send(message)

    def show(result: Any) -> None:
        print_table(
            ["MESSAGE ID", "PROVIDER", "TYPE", "STATUS", "PROVIDER MESSAGE ID"],
            [
                [
                    result.message_id,
                    result.provider_id,
                    result.type.value,
                    result.status.value,
                    result.provider_message_id or "-",
                ]
            ],
        )
        for warning in result.warnings:
            print(f"warning: {warning.code}: {warning.message}")

    return out.result(outcome, show)


Shown = tuple[Result[Any, KMsgError], Callable[[Any], None] | None]


async def cmd_templates(args: argparse.Namespace, setup: Setup, out: Output) -> int:
    wants = TemplateInspectionProvider if args.action == "inspect" else TemplateProvider
    provider = _pick(setup, args.provider, wants, "manage templates")
    manager = ProviderManager(provider, channels=setup.channels, watch_interval=None)
    async with progress(f"{args.action} on {provider.id}", quiet=out.as_json):
        result, show = await _template_action(args, manager)
    return out.result(result, show)  # printed after the spinner is gone


async def _template_action(args: argparse.Namespace, manager: ProviderManager) -> Shown:
    key = args.channel
    if args.action == "list":
        status = TemplateStatus(args.status.upper()) if args.status else None
        listed = await manager.list_templates(
            status=status, page=args.page, limit=args.limit, sender_key=key
        )
        return listed, _show_templates
    if args.action == "get":
        return await manager.get_template(args.code, sender_key=key), _show_template
    if args.action == "create":
        template = TemplateInput(args.name, args.content, args.category, _buttons(args.button))
        return await manager.create_template(template, sender_key=key), _show_template
    if args.action == "update":
        update = TemplateUpdate(
            name=args.name,
            content=args.content,
            category=args.category,
            buttons=_buttons(args.button) if args.button else None,
        )
        return await manager.update_template(args.code, update, sender_key=key), _show_template
    if args.action == "delete":
        return await manager.delete_template(args.code, sender_key=key), None
    return await manager.request_template_inspection(args.code, sender_key=key), None


def _show_categories(tree: Any) -> None:
    rows = [[c.code, c.name, "-"] for c in tree.first]
    rows += [[c.code, "  " + c.name, c.parent_code or "-"] for c in tree.second]
    rows += [[c.code, "    " + c.name, c.parent_code or "-"] for c in tree.third]
    print_table(["CODE", "NAME", "PARENT"], rows)


async def cmd_channels(args: argparse.Namespace, setup: Setup, out: Output) -> int:
    provider = _pick(setup, args.provider, KakaoChannelProvider, "manage Kakao channels")
    manager = ProviderManager(provider, channels=setup.channels, watch_interval=None)
    async with progress(f"{args.action} on {provider.id}", quiet=out.as_json):
        result, show = await _channel_action(args, manager)
    return out.result(result, show)


async def _channel_action(args: argparse.Namespace, manager: ProviderManager) -> Shown:
    if args.action == "list":
        return await manager.list_kakao_channels(plus_id=args.plus_id), _show_channels
    if args.action == "categories":
        return await manager.list_kakao_channel_categories(), _show_categories
    if args.action == "auth":
        requested = await manager.request_kakao_channel_auth(args.plus_id, args.phone)
        return requested, lambda _: print("auth number sent to " + args.phone)
    added = await manager.add_kakao_channel(args.plus_id, args.auth_num, args.phone, args.category)
    return added, lambda channel: _show_channels([channel])


def _capabilities(provider: Provider) -> list[str]:
    checks = (
        ("templates", TemplateProvider),
        ("inspection", TemplateInspectionProvider),
        ("channels", KakaoChannelProvider),
        ("balance", BalanceProvider),
        ("delivery", DeliveryStatusProvider),
    )
    return [name for name, kind in checks if isinstance(provider, kind)]


async def cmd_providers(args: argparse.Namespace, setup: Setup, out: Output) -> int:
    known = [p for p in FACTORIES if p in setup.providers or p in setup.broken]
    if args.action == "list":
        rows: list[dict[str, Any]] = []
        for provider_id in known:
            provider = setup.providers.get(provider_id)
            broken = setup.broken.get(provider_id)
            rows.append(
                {
                    "id": provider_id,
                    "configured": provider is not None,
                    "missing": list(broken.missing) if broken else [],
                    "types": sorted(t.value for t in provider.supported_types) if provider else [],
                    "capabilities": _capabilities(provider) if provider else [],
                    "settings": _settings(setup.env, provider_id),
                }
            )
        if out.as_json:
            out.json(rows)
            return 0
        print_table(
            ["PROVIDER", "CONFIGURED", "CAPABILITIES", "TYPES"],
            [
                [
                    r["id"],
                    "yes" if r["configured"] else "missing " + ", ".join(r["missing"]),
                    ", ".join(r["capabilities"]) or "-",
                    ", ".join(r["types"]) or "-",
                ]
                for r in rows
            ],
        )
        return 0
    chosen = [setup.providers[args.provider]] if args.provider in setup.providers else None
    if args.provider and chosen is None and args.action != "doctor":
        raise UsageError(f"provider {args.provider!r} is not configured")
    providers = chosen or list(setup.providers.values())
    if args.action == "health":
        kmsg = KMsg(providers) if providers else None
        if kmsg is None:
            raise UsageError("no provider is configured")
        health = await kmsg.health_check()
        if out.as_json:
            out.json(health)
        else:
            print_table(
                ["PROVIDER", "HEALTHY", "ISSUES"],
                [
                    [pid, "yes" if h.healthy else "no", "; ".join(h.issues) or "-"]
                    for pid, h in health.providers.items()
                ],
            )
        return 0 if health.healthy else 1
    if args.action == "balance":
        rows_out: list[dict[str, Any]] = []
        failed = False
        for provider in providers:
            if not isinstance(provider, BalanceProvider):
                rows_out.append({"provider": provider.id, "error": "no balance API"})
                continue
            async with progress(f"balance of {provider.id}", quiet=out.as_json):
                balance = await provider.get_balance()
            if isinstance(balance, Ok):
                rows_out.append(
                    {
                        "provider": provider.id,
                        "amount": balance.value.amount,
                        "currency": balance.value.currency,
                    }
                )
            else:
                failed = True
                rows_out.append({"provider": provider.id, "error": balance.error.message})
        if out.as_json:
            out.json(rows_out)
        else:
            print_table(
                ["PROVIDER", "BALANCE"],
                [
                    [
                        r["provider"],
                        f"{r['amount']:,.0f} {r['currency']}" if "amount" in r else r["error"],
                    ]
                    for r in rows_out
                ],
            )
        return 1 if failed else 0
    return await _doctor(args, setup, out, known)


async def _doctor(args: argparse.Namespace, setup: Setup, out: Output, known: list[str]) -> int:
    ids = [args.provider] if args.provider else known
    reports = []
    for provider_id in ids:
        if provider_id not in FACTORIES:
            raise UsageError(f"unknown provider {provider_id!r}")
        broken = setup.broken.get(provider_id)
        async with progress(f"checking {provider_id}", quiet=out.as_json):
            reports.append(
                await run_doctor(
                    get_provider_onboarding_spec(provider_id),
                    setup.providers.get(provider_id),
                    missing=broken.missing if broken else (),
                )
            )
    if out.as_json:
        out.json(reports)
    else:
        rows = [
            [r.provider_id, res.status.value.upper(), res.check.title, res.detail, res.action or ""]
            for r in reports
            for res in r.results
        ]
        print_table(["PROVIDER", "STATUS", "CHECK", "RESULT", "WHAT TO DO"], rows)
        blockers = sum(res.status is CheckStatus.BLOCKER for r in reports for res in r.results)
        print(f"\n{blockers} blocker(s)" if blockers else "\nno blockers")
    return 1 if any(r.blocked for r in reports) else 0


# --------------------------------------------------------------------------- parser


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="kmsg.toml (default: environment variables only)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("--provider", help="provider id (iwinv, aligo, solapi, mock)")

    parser = argparse.ArgumentParser(prog="kmsg", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    for name, summary in (
        ("send", "send any message type"),
        ("sms", "send an SMS (LMS when long)"),
        ("alimtalk", "send a Kakao AlimTalk"),
    ):
        sub = commands.add_parser(name, parents=[common], help=summary)
        sub.add_argument("--to", required=True)
        sub.add_argument("--from", dest="sender")
        if name == "send":
            sub.add_argument("--type", help="SMS, LMS, MMS, ALIMTALK, FRIENDTALK, ...")
        else:
            sub.set_defaults(type=None)
        if name != "alimtalk":
            sub.add_argument("--text", required=name == "sms")
            sub.add_argument("--subject")
        else:
            sub.set_defaults(text=None)
        if name != "sms":
            sub.add_argument("--template", required=name == "alimtalk", help="template code")
            sub.add_argument("--channel", help="Kakao channel: alias, @plusId or sender key")
        sub.add_argument("--var", action="append", help="template variable name=value")
        sub.set_defaults(run=cmd_send)

    templates = commands.add_parser("templates", help="AlimTalk templates")
    t_actions = templates.add_subparsers(dest="action", required=True)
    for action in ("list", "get", "create", "update", "delete", "inspect"):
        sub = t_actions.add_parser(action, parents=[common])
        sub.add_argument("--channel", help="Kakao channel (alias, @plusId or sender key)")
        if action in ("get", "update", "delete", "inspect"):
            sub.add_argument("code")
        if action == "list":
            sub.add_argument("--status", choices=[s.value.lower() for s in TemplateStatus])
            sub.add_argument("--page", type=int, default=1)
            sub.add_argument("--limit", type=int, default=15)
        if action in ("create", "update"):
            sub.add_argument("--name", required=action == "create")
            sub.add_argument("--content", required=action == "create")
            sub.add_argument("--category")
            sub.add_argument(
                "--button", action="append", default=[], help="name,type[,mobile url[,pc url]]"
            )
        sub.set_defaults(run=cmd_templates)

    channels = commands.add_parser("channels", help="Kakao channels")
    c_actions = channels.add_subparsers(dest="action", required=True)
    for action in ("list", "categories", "auth", "add"):
        sub = c_actions.add_parser(action, parents=[common])
        if action == "list":
            sub.add_argument("--plus-id")
        if action in ("auth", "add"):
            sub.add_argument("--plus-id", required=True)
            sub.add_argument("--phone", required=True, help="the channel admin's phone")
        if action == "add":
            sub.add_argument("--auth-num", required=True)
            sub.add_argument("--category", required=True, help="third-level category code")
        sub.set_defaults(run=cmd_channels)

    json_only = argparse.ArgumentParser(add_help=False)
    json_only.add_argument("--json", action="store_true", help="machine-readable output")
    store_commands.add_parsers(commands, json_only)
    worker.add_parser(commands)

    providers = commands.add_parser("providers", help="configured providers")
    p_actions = providers.add_subparsers(dest="action", required=True)
    for action, summary in (
        ("list", "configured providers, capabilities and settings (secrets hidden)"),
        ("health", "each provider's self-check"),
        ("balance", "account balances"),
        ("doctor", "onboarding checks: pass / warn / blocker and what to do"),
    ):
        sub = p_actions.add_parser(action, parents=[common], help=summary)
        sub.set_defaults(run=cmd_providers)
    return parser


async def _run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    setup = load_setup(getattr(args, "config", None), environ)
    try:
        result: int = await args.run(args, setup, Output(args.json))
        return result
    finally:
        await setup.aclose()


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one command; ``environ`` replaces ``os.environ`` as the configuration source."""
    args = _parser().parse_args(argv)
    env = os.environ if environ is None else environ
    try:
        if args.command == "worker":
            configure_logging(args.log_level, args.log_format)
            return eventloop.run(_run(args, env), loop=args.loop)
        return asyncio.run(_run(args, env))
    except WebhookError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": {"message": str(exc)}}, ensure_ascii=False))
        else:
            print(f"error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
