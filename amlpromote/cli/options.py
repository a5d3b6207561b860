"""Options shared by several commands, declared once, each with its AMLPROMOTE_* variable."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer


class OutputMode(str, Enum):  # noqa: UP042 -- Typer renders these choices; kept as they were
    human = "human"
    json = "json"


# The global options are taken before or after the command name, so each is declared twice (on
# the app and on the command). Their variables are read by `app.make_output`, not by Typer: Typer
# would read them for the copy that was not typed, and a bad AMLPROMOTE_OUTPUT would then fail a
# command that says `-o json`.
OutputOpt = Annotated[
    OutputMode | None,
    typer.Option("--output", "-o", case_sensitive=False,
                 help="Result format: human (tables) or json (one document on stdout, also on "
                      "failure).  [env var: AMLPROMOTE_OUTPUT]"),
]
QuietOpt = Annotated[
    bool | None,
    typer.Option("--quiet", "-q",
                 help="Print only the essential result; no progress, no notes.  "
                      "[env var: AMLPROMOTE_QUIET]"),
]
VerboseOpt = Annotated[
    bool | None,
    typer.Option("--verbose", "-v",
                 help="Say which setting won and why; show tracebacks of failures.  "
                      "[env var: AMLPROMOTE_VERBOSE]"),
]
ProfileOpt = Annotated[
    str | None,
    typer.Option("--profile", "-p", envvar="AMLPROMOTE_PROFILE",
                 help="Profile of the config file to use [default: default]."),
]
SourceOpt = Annotated[
    str | None,
    typer.Option("--source", "-s", envvar="AMLPROMOTE_SOURCE",
                 help="Source registry URI: file:///path/mlruns, sqlite:///path/mlflow.db, "
                      "http(s)://host, databricks://PROFILE, databricks-uc://PROFILE, or an "
                      "Azure ML workspace's azureml://... MLflow tracking URI."),
]
TargetOpt = Annotated[
    str | None,
    typer.Option("--target", "-t", envvar="AMLPROMOTE_TARGET",
                 help="Target registry URI (any MLflow registry URI) "
                      "[default: the embedded local sqlite registry]."),
]
WorkspaceOpt = Annotated[
    str | None,
    typer.Option("--workspace", "-w", envvar="AMLPROMOTE_WORKSPACE",
                 help="Target an Azure ML workspace by name (with --resource-group and "
                      "--subscription); its MLflow URI is discovered."),
]
ResourceGroupOpt = Annotated[
    str | None,
    typer.Option("--resource-group", "-g", envvar="AMLPROMOTE_RESOURCE_GROUP",
                 help="Resource group of the Azure ML workspace."),
]
SubscriptionOpt = Annotated[
    str | None,
    typer.Option("--subscription", envvar="AMLPROMOTE_SUBSCRIPTION",
                 help="Subscription id of the Azure ML workspace "
                      "[default: $AZURE_SUBSCRIPTION_ID]."),
]
RegistryOpt = Annotated[
    str | None,
    typer.Option("--registry", envvar="AMLPROMOTE_REGISTRY",
                 help="Target an Azure ML registry by name (shared across workspaces)."),
]
CredentialOpt = Annotated[
    str | None,
    typer.Option("--credential", envvar="AMLPROMOTE_CREDENTIAL",
                 help="How to sign in to Azure: default, cli, managed-identity, environment or "
                      "device-code [default: default, which never opens a browser]."),
]
