"""Where a deploy goes: the registry that holds the version and the endpoint platform.

The platform follows the target: an Azure ML workspace -> its managed online endpoints; an
Azure ML registry -> the endpoints of the workspace named by --workspace/--resource-group/
--subscription (the model is referenced as azureml://registries/R/models/N/versions/V); any
MLflow registry -> local endpoints. `--local` forces local endpoints for any target.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

from amlpromote.core import config as cfg
from amlpromote.core.azure.connection import PROVIDER, AzureMlScope
from amlpromote.core.deploy.platform import EndpointInfo, EndpointPlatform, endpoints_command
from amlpromote.core.errors import BadInput, NotFound
from amlpromote.core.settings import ENDPOINT_NAME, TargetChoice, resolve_target
from amlpromote.core.uris import RegistryUri


def check_name(kind: str, value: str) -> str:
    """Azure ML's rule for endpoint and deployment names (3-32 characters, a letter first,
    letters, digits and '-', no '-' at the end), checked for local endpoints too so that a
    name tried locally also works in Azure."""
    if not ENDPOINT_NAME.match(value or ""):
        raise BadInput(f"{kind} name {value!r} is not valid: 3-32 letters, digits or '-', "
                       "starting with a letter and not ending with '-'",
                       hint=f"e.g. --{kind} heart-prod" if kind == "endpoint"
                       else "e.g. --deployment blue")
    return value


@dataclass
class DeployTarget:
    choice: TargetChoice  # where the model versions are registered
    local: bool
    subscription: str | None = None
    resource_group: str | None = None
    workspace: str | None = None
    place: str = ""  # EndpointPlatform.place

    @property
    def platform_kind(self) -> str:
        return "local" if self.local else "azureml"

    @property
    def display(self) -> str:
        if self.local:
            return "local endpoints"
        return (f"Azure ML workspace {self.workspace} (resource group {self.resource_group}, "
                f"subscription {self.subscription})")


# The options that choose an Azure ML workspace's endpoints, as a hint repeats them.
_PLACE_KEYS = ("target", "registry", "workspace", "resource_group", "subscription", "credential")


def resolve_deploy_target(options: dict[str, str | None], profile: dict[str, str],
                          local: bool, profile_name: str | None = None) -> DeployTarget:
    """Apply the precedence rule. An Azure ML registry target may come with a workspace (the
    one whose endpoints serve it), which copy-model would refuse as a second target.
    `profile_name`: the --profile given, if one was (for DeployTarget.place)."""
    target = _resolve(options, profile, local)
    if not target.local:
        words = ["--profile", profile_name] if profile_name else []
        for key in _PLACE_KEYS:
            value = options.get(key)
            if value:
                words += [cfg.option_flag(key), value]
        target.place = shlex.join(words)
    return target


def _resolve(options: dict[str, str | None], profile: dict[str, str],
             local: bool) -> DeployTarget:
    registry = cfg.resolve("registry", options.get("registry"), profile)
    workspace = cfg.resolve("workspace", options.get("workspace"), profile)
    target = cfg.resolve("target", options.get("target"), profile)
    workspace_for_endpoints: str | None = None
    if registry.value and workspace.value and not target.value:
        for value in (registry.value, workspace.value):
            cfg.validate_profile_value("registry" if value == registry.value else "workspace",
                                       value)
        credential = cfg.resolve("credential", options.get("credential"), profile, "default")
        # The registry is found by its name alone (registry discovery): the subscription and
        # resource group given here are the workspace's, not necessarily the registry's.
        choice = TargetChoice("registry", registry.origin, registry=registry.value,
                              credential=credential.value or "default")
        workspace_for_endpoints = workspace.value
    else:
        choice = resolve_target(options, profile)
    if local:
        return DeployTarget(choice, local=True)
    if choice.kind == "workspace":
        return DeployTarget(choice, False, choice.subscription, choice.resource_group,
                            choice.workspace)
    if choice.kind == "registry":
        if not workspace_for_endpoints:
            raise BadInput(f"the {choice.display} holds models, not endpoints",
                           hint="name the workspace that serves them with --workspace, "
                                "--resource-group and --subscription, or pass --local")
        subscription = cfg.resolve("subscription", options.get("subscription"), profile,
                                   os.environ.get("AZURE_SUBSCRIPTION_ID") or None).value
        resource_group = cfg.resolve("resource_group", options.get("resource_group"),
                                     profile).value
        missing = [flag for flag, value in (("--resource-group", resource_group),
                                            ("--subscription", subscription)) if not value]
        if missing:
            raise BadInput(f"the Azure ML workspace {workspace_for_endpoints} needs "
                           f"{' and '.join(missing)}",
                           hint="pass them, or store them in the profile with amlpromote "
                                "configure")
        return DeployTarget(choice, False, subscription, resource_group,
                            workspace_for_endpoints)
    uri = choice.uri or ""
    if uri.startswith("azureml://"):
        scope = AzureMlScope.parse(uri)
        if not scope.is_registry:
            return DeployTarget(choice, False, scope.subscription, scope.resource_group,
                                scope.name)
        raise BadInput(f"the Azure ML registry {scope.name} holds models, not endpoints",
                       hint="name the workspace that serves them with --workspace, "
                            "--resource-group and --subscription, or pass --local")
    return DeployTarget(choice, local=True)


def open_platform(target: DeployTarget) -> EndpointPlatform:
    if target.local:
        from amlpromote.core.deploy.local.platform import LocalPlatform

        return LocalPlatform()
    from amlpromote.core.azure.credentials import make_credential
    from amlpromote.core.deploy.azureml_online import AzureMlOnline

    assert target.subscription and target.resource_group and target.workspace
    return AzureMlOnline(target.subscription, target.resource_group, target.workspace,
                         make_credential(target.choice.credential), place=target.place)


def require_endpoint(platform: EndpointPlatform, name: str) -> EndpointInfo:
    """The named endpoint; NotFound (exit 3) when the platform has none of that name."""
    found = platform.get_endpoint(name)
    if found is None:
        where = "on this machine" if platform.kind == "local" else "in the workspace"
        raise NotFound(f"no endpoint '{name}' {where}",
                       hint=f"{endpoints_command(platform, 'list')} shows the endpoints")
    return found


def asset_id(target: DeployTarget, registry: RegistryUri, name: str, version: str) -> str:
    """How the platform names the version: an ARM id in a workspace, an azureml:// registry
    asset id, or (local) the registry and version."""
    if registry.scheme == "azureml":
        scope = AzureMlScope.parse(registry.uri)
        if scope.is_registry:
            return f"azureml://registries/{scope.name}/models/{name}/versions/{version}"
        return (f"/subscriptions/{scope.subscription}/resourceGroups/{scope.resource_group}"
                f"/providers/{PROVIDER}/workspaces/{scope.name}/models/{name}"
                f"/versions/{version}")
    return f"{registry.display}#models:/{name}/{version}"


def default_profile(profile: str | None) -> tuple[str, dict[str, str]]:
    name = profile or cfg.DEFAULT_PROFILE
    return name, cfg.load_config().profile(name, required=profile is not None)
