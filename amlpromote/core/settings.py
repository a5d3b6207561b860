"""The registries a command works with: options > AMLPROMOTE_* environment > profile > default.

The target is one of three things: a registry URI (`--target`), an Azure ML workspace named by
its coordinates (`--workspace` with `--resource-group` and `--subscription`), or an Azure ML
registry (`--registry`). The coordinates are what a user knows; the workspace's MLflow tracking
URI is discovered through Azure Resource Manager when the command runs, never typed. When more
than one kind is set, the one from the strongest origin wins; two at the same level are an error.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace

from amlpromote.core import config as cfg
from amlpromote.core.errors import BadInput
from amlpromote.core.uris import RegistryUri, parse_registry_uri

_RANK = {"option": 3, "environment": 2, "profile": 1, "default": 0}
_FLAG = {"target": "--target", "workspace": "--workspace", "registry": "--registry"}


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
    from amlpromote.core import azure

    credential = azure.make_credential(choice.credential)
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
        flags = " and ".join(_FLAG[k] for k in winners)
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
