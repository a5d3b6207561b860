"""The registries a command works with: options > AMLPROMOTE_* environment > profile > default.

The target is one of three things: a registry URI (`--target`), an Azure ML workspace named by
its coordinates (`--workspace` with `--resource-group` and `--subscription`), or an Azure ML
registry (`--registry`). The coordinates are what a user knows; the workspace's MLflow tracking
URI is discovered through Azure Resource Manager when the command runs, never typed. When more
than one kind is set, the one from the strongest origin wins; two at the same level are an error.

Every `AMLPROMOTE_*` variable is checked when a command starts (`check_environment`), so a typo
in a CI job's environment fails before anything is read or written, naming the variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace

from amlpromote.core import config as cfg
from amlpromote.core.errors import BadInput
from amlpromote.core.uris import RegistryUri, parse_registry_uri, redact_uri

_RANK = {"option": 3, "environment": 2, "profile": 1, "default": 0}
def _rank(setting: cfg.Setting) -> int:
    return _RANK[setting.origin.split(" ", 1)[0]]


@dataclass
class TargetChoice:
    """Where promoted versions go, before any network call."""

    kind: str  # "uri" | "workspace" | "registry"
    origin: str
    uri: str | None = None
    subscription: str | None = None
    resource_group: str | None = None
    workspace: str | None = None
    registry: str | None = None
    credential: str = "default"

    @property
    def display(self) -> str:
        if self.kind == "workspace":
            return (f"Azure ML workspace {self.workspace} (resource group {self.resource_group}, "
                    f"subscription {self.subscription})")
        if self.kind == "registry":
            return f"Azure ML registry {self.registry}"
        return parse_registry_uri(self.uri or "", "target").display

    def registry_uri(self, discover: Callable[[TargetChoice], str] | None = None) -> RegistryUri:
        """The target's registry URI; Azure ML coordinates are resolved through `discover`
        (default: Azure Resource Manager with the chosen credential)."""
        if self.kind == "uri":
            uri = parse_registry_uri(self.uri or "", "target")
        else:
            if discover is None:
                discover = discover_tracking_uri
            uri = parse_registry_uri(discover(self), "target")
        # The credential travels with the URI: azureml:// registries sign in with it.
        return replace(uri, credential=self.credential)


def discover_tracking_uri(choice: TargetChoice) -> str:
    from amlpromote.core.azure import discovery as azure
    from amlpromote.core.azure.credentials import make_credential

    credential = make_credential(choice.credential)
    if choice.kind == "workspace":
        assert choice.subscription and choice.resource_group and choice.workspace
        return azure.workspace_tracking_uri(choice.subscription, choice.resource_group,
                                            choice.workspace, credential)
    assert choice.registry
    return azure.registry_tracking_uri(choice.registry, credential,
                                       subscription=choice.subscription,
                                       resource_group=choice.resource_group)


def _resolved(key: str, options: dict[str, str | None], profile: dict[str, str],
              default: str | None = None) -> cfg.Setting:
    value = options.get(key)
    if value is not None and value != "":
        cfg.validate_profile_value(key, value)
    setting = cfg.resolve(key, value, profile, default)
    if setting.value and setting.origin != "default":
        # Environment and profile values are checked as strictly as options.
        cfg.validate_profile_value(key, setting.value)
    return setting


def resolve_target(options: dict[str, str | None], profile: dict[str, str]) -> TargetChoice:
    """Apply the precedence rule to the target and its Azure ML coordinates."""
    credential = _resolved("credential", options, profile, "default")
    candidates = {key: _resolved(key, options, profile) for key in ("target", "workspace",
                                                                   "registry")}
    present = {k: s for k, s in candidates.items() if s.value}
    if not present:
        return TargetChoice("uri", "default", uri=cfg.default_target_uri(),
                            credential=credential.value or "default")
    best = max(_rank(s) for s in present.values())
    winners = [k for k, s in present.items() if _rank(s) == best]
    if len(winners) > 1:
        flags = " and ".join(cfg.option_flag(k) for k in winners)
        origin = present[winners[0]].origin.split(" ", 1)[0]
        raise BadInput(f"both {flags} are set (from the {origin}); a target is one of them",
                       hint="give only one: a registry URI, an Azure ML workspace, or an "
                            "Azure ML registry")
    kind = winners[0]
    chosen = present[kind]
    cred = credential.value or "default"
    if kind == "target":
        return TargetChoice("uri", chosen.origin, uri=chosen.value, credential=cred)
    subscription = _resolved("subscription", options, profile,
                             os.environ.get("AZURE_SUBSCRIPTION_ID") or None).value
    resource_group = _resolved("resource_group", options, profile).value
    if kind == "workspace":
        missing = [flag for flag, value in (("--resource-group", resource_group),
                                            ("--subscription", subscription)) if not value]
        if missing:
            raise BadInput(f"the Azure ML workspace {chosen.value} needs "
                           f"{' and '.join(missing)}",
                           hint="pass them, set AMLPROMOTE_RESOURCE_GROUP/"
                                "AMLPROMOTE_SUBSCRIPTION, or store them in the profile with "
                                "amlpromote configure")
        return TargetChoice("workspace", chosen.origin, subscription=subscription,
                            resource_group=resource_group, workspace=chosen.value,
                            credential=cred)
    return TargetChoice("registry", chosen.origin, subscription=subscription,
                        resource_group=resource_group, registry=chosen.value, credential=cred)


def target_options(target: str | None, workspace: str | None, resource_group: str | None,
                   subscription: str | None, registry: str | None,
                   credential: str | None) -> dict[str, str | None]:
    """The command-line values of the target settings, keyed like the profile."""
    return {"target": target, "workspace": workspace, "resource_group": resource_group,
            "subscription": subscription, "registry": registry, "credential": credential}


# -- the AMLPROMOTE_* environment -------------------------------------------------------------

# The boolean spellings Typer accepts for a flag's environment variable (pydantic's set), so a
# value means the same whether Typer or this module reads it.
_TRUE = ("1", "true", "t", "yes", "y", "on")
_FALSE = ("0", "false", "f", "no", "n", "off")
OUTPUT_MODES = ("human", "json")
# As the bounds of copy-model's --parallel.
PARALLEL_RANGE = (1, 64)


def env_flag(name: str) -> bool | None:
    """A boolean `AMLPROMOTE_*` variable: None when unset or empty."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise BadInput(f"{name}={raw!r} is not true or false",
                   hint=f"set {name} to 1/true/yes or 0/false/no, or unset it")


def env_output_mode() -> str | None:
    """`AMLPROMOTE_OUTPUT`, lower-cased: None when unset or empty."""
    raw = os.environ.get("AMLPROMOTE_OUTPUT", "").strip()
    if not raw:
        return None
    if raw.lower() not in OUTPUT_MODES:
        raise BadInput(f"AMLPROMOTE_OUTPUT={raw!r} is not an output format",
                       hint="set AMLPROMOTE_OUTPUT to human or json, unset it, or pass "
                            "--output")
    return raw.lower()


def _check_parallel(name: str, raw: str) -> None:
    low, high = PARALLEL_RANGE
    if not raw.strip().isdigit() or not low <= int(raw) <= high:
        raise BadInput(f"{name}={raw!r} is not a whole number from {low} to {high}",
                       hint=f"set {name} to the number of files transferred at once "
                            "(default 8), or unset it")


def _check_retries(name: str, raw: str) -> None:
    from amlpromote.core.retry import RetryPolicy

    RetryPolicy.from_env()


def _check_profile_name(name: str, raw: str) -> None:
    cfg.check_profile_name(raw, origin=name)


def _check_setting(key: str) -> Callable[[str, str], None]:
    def check(name: str, raw: str) -> None:
        try:
            if key == "source":
                # Sources may carry credentials in the URI (they are never stored or shown).
                parse_registry_uri(raw, "source")
            else:
                cfg.validate_profile_value(key, raw)
        except BadInput as exc:
            raise BadInput(f"{name}={redact_uri(raw)!r}: {exc.message}",
                           hint=f"{exc.hint}; or unset {name}" if exc.hint else
                           f"fix or unset {name}") from None
    return check


def _check_flag(name: str, raw: str) -> None:
    env_flag(name)


def _check_output(name: str, raw: str) -> None:
    env_output_mode()


# Azure ML's rule for online endpoint names (azure-ai-ml validates it before any request).
ENDPOINT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]$")


def _check_endpoint(name: str, raw: str) -> None:
    if not ENDPOINT_NAME.match(raw.strip()):
        raise BadInput(f"{name}={raw!r} is not an endpoint name: 3-32 letters, digits or '-', "
                       "starting with a letter and not ending with '-'",
                       hint=f"fix or unset {name}")


# Each variable amlpromote reads, with its check (a free-form value has none). A new variable
# belongs here too, so that it is checked with the others when a command starts.
ENVIRONMENT: dict[str, Callable[[str, str], None] | None] = {
    "AMLPROMOTE_CONFIG": None,
    "AMLPROMOTE_DATA_DIR": None,
    "AMLPROMOTE_PROFILE": _check_profile_name,
    "AMLPROMOTE_SOURCE": _check_setting("source"),
    **{env: _check_setting(key) for key, env in cfg.PROFILE_KEYS.items() if key != "source"},
    "AMLPROMOTE_TARGET_NAME": None,
    "AMLPROMOTE_OUTPUT": _check_output,
    "AMLPROMOTE_QUIET": _check_flag,
    "AMLPROMOTE_VERBOSE": _check_flag,
    "AMLPROMOTE_DEBUG": _check_flag,
    "AMLPROMOTE_COPY_ALIASES": _check_flag,
    "AMLPROMOTE_VERIFY": _check_flag,
    "AMLPROMOTE_PARALLEL": _check_parallel,
    "AMLPROMOTE_RETRIES": _check_retries,
    "AMLPROMOTE_ENDPOINT": _check_endpoint,
}


def check_environment(given: Collection[str] = ()) -> None:
    """Check every `AMLPROMOTE_*` variable that is set, before a command reads or writes anything.

    `given` names the variables whose option was typed on the command line: the option wins, so
    the variable is not used and not checked. An empty value counts as unset, as for Typer.
    Raises BadInput naming the first bad variable.
    """
    for name, check in ENVIRONMENT.items():
        raw = os.environ.get(name, "")
        if check is None or name in given or not raw.strip():
            continue
        check(name, raw)
