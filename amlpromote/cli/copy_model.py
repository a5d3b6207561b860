"""`amlpromote copy-model`: one model version from a source registry to a target registry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from amlpromote.cli.options import (
    CredentialOpt,
    OutputOpt,
    ProfileOpt,
    QuietOpt,
    RegistryOpt,
    ResourceGroupOpt,
    SourceOpt,
    SubscriptionOpt,
    TargetOpt,
    VerboseOpt,
    WorkspaceOpt,
)
from amlpromote.cli.output import Output, human_bytes

if TYPE_CHECKING:
    from amlpromote.core.promote.promote import PromoteResult

HELP = """Copy one model version to the target registry, byte for byte, verified and re-runnable.

REF is NAME (latest version), NAME/3, NAME@ALIAS, NAME/latest, NAME/Production (legacy stage)
or a models:/ URI of those forms. A re-run that finds the same source version with the same
digest in the target does nothing (status "unchanged", exit 0).

Examples:

\b
  amlpromote copy-model uci-heart-classifier@champion --profile prod
  amlpromote copy-model uci-heart-classifier/3 --source file:///data/mlruns \\
      --target sqlite:///srv/registry/mlflow.db --alias staging --verify
  amlpromote copy-model models:/fraud@champion --dry-run --output json
  amlpromote copy-model fraud/7 --source databricks://prod --workspace ml-prod \\
      --resource-group rg-ml \\
      --subscription 00000000-0000-0000-0000-000000000000

The target is --target URI, or an Azure ML workspace (--workspace, --resource-group,
--subscription; its MLflow URI is discovered), or an Azure ML registry (--registry).
"""


def register(app: typer.Typer) -> None:
    app.command("copy-model", help=HELP)(copy_model)


def copy_model(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(metavar="REF", help="The source model version.",
                                       show_default=False)],
    source: SourceOpt = None,
    target: TargetOpt = None,
    profile: ProfileOpt = None,
    workspace: WorkspaceOpt = None,
    resource_group: ResourceGroupOpt = None,
    subscription: SubscriptionOpt = None,
    registry: RegistryOpt = None,
    credential: CredentialOpt = None,
    target_name: Annotated[str | None, typer.Option(
        "--target-name", envvar="AMLPROMOTE_TARGET_NAME",
        help="Register under this name in the target [default: the source name].")] = None,
    alias: Annotated[list[str] | None, typer.Option(
        "--alias", "-a", help="Set this alias on the target version (repeatable).")] = None,
    copy_aliases: Annotated[bool, typer.Option(
        "--copy-aliases", envvar="AMLPROMOTE_COPY_ALIASES",
        help="Also carry the source version's aliases.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the plan; change nothing.")] = False,
    verify: Annotated[bool, typer.Option(
        "--verify", envvar="AMLPROMOTE_VERIFY",
        help="Read the target's files back and compare digests before registering.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Register a new version even if an identical one exists.")] = False,
    upgrade_target_schema: Annotated[bool, typer.Option(
        "--upgrade-target-schema",
        help="Let MLflow upgrade a target registry written by an older MLflow (older MLflow "
             "versions can no longer open it afterwards).")] = False,
    parallel: Annotated[int | None, typer.Option(
        "--parallel", envvar="AMLPROMOTE_PARALLEL", min=1, max=64,
        help="Files transferred at once [default: 8].")] = None,
    output: OutputOpt = None,
    quiet: QuietOpt = None,
    verbose: VerboseOpt = None,
) -> None:
    from amlpromote.cli.runner import make_output, run

    out = make_output(ctx, output, quiet, verbose)
    from amlpromote.core.settings import target_options

    targets = target_options(target, workspace, resource_group, subscription, registry,
                             credential)
    result = run(out, lambda: _promote(out, ref, source, targets, profile, target_name,
                                       alias or [], copy_aliases, dry_run, verify, force,
                                       parallel, upgrade_target_schema))
    document = result.as_dict()

    def human() -> None:
        src, tgt = result.source, result.target
        size = f"{result.files} files, {human_bytes(result.bytes)}"
        if result.status == "planned":
            plan = result.plan or {}
            if plan.get("copy", True):
                print(f"plan: copy {src['name']}/{src['version']} ({size}) from {src['uri']} "
                      f"to {tgt['name']} in {tgt['uri']}")
            else:
                print(f"plan: nothing to copy: {tgt['name']}/{plan['existing_version']} in "
                      f"{tgt['uri']} already holds {src['name']}/{src['version']}")
            if tgt["aliases"]:
                print(f"      set aliases: {', '.join(tgt['aliases'])}")
            print("dry run: nothing was changed")
            return
        verb = "copied" if result.status == "copied" else "unchanged:"
        print(f"{verb} {src['name']}/{src['version']} -> {tgt['name']}/{tgt['version']} "
              f"in {tgt['uri']} ({size}, {result.seconds:.1f}s)")
        print(f"  digest  {src['digest']}")
        if tgt["aliases"]:
            print(f"  aliases {', '.join(tgt['aliases'])}")
        if result.verified:
            print("  verified: target files match the source digest")

    quiet_line = (f"{result.target['name']}/{result.target['version']}"
                  if result.target.get("version") else None)
    out.result(document, human, quiet_line)


def _promote(out: Output, ref: str, source: str | None, targets: dict[str, str | None],
             profile: str | None, target_name: str | None, aliases: list[str],
             copy_aliases: bool, dry_run: bool, verify: bool, force: bool,
             parallel: int | None, upgrade_target_schema: bool = False) -> PromoteResult:
    from amlpromote.core import config as cfg
    from amlpromote.core.errors import BadInput
    from amlpromote.core.promote.promote import (
        PromoteRequest,
        check_promotion_inputs,
        promote_version,
    )
    from amlpromote.core.refs import parse_model_ref
    from amlpromote.core.settings import resolve_target
    from amlpromote.core.uris import parse_registry_uri

    model_ref = parse_model_ref(ref)
    profile_name = profile or cfg.DEFAULT_PROFILE
    profile_values = cfg.load_config().profile(profile_name, required=profile is not None)
    src = cfg.resolve("source", source, profile_values)
    choice = resolve_target(targets, profile_values)
    out.debug(f"profile '{profile_name}'; source from {src.origin}, target from {choice.origin}")
    if not src.value:
        raise BadInput("no source registry given",
                       hint="pass --source URI, set AMLPROMOTE_SOURCE, or configure a profile: "
                            "amlpromote configure --source URI")
    source_uri = parse_registry_uri(src.value, "source")
    check_promotion_inputs(
        aliases, target_name,
        "azureml" if choice.kind != "uri" else parse_registry_uri(choice.uri or "").scheme,
        target_is_azure_registry=choice.kind == "registry", copy_aliases=copy_aliases)
    if choice.kind != "uri":
        out.note(f"finding the MLflow URI of the {choice.display}")
    request = PromoteRequest(
        ref=model_ref,
        source=source_uri,
        target=choice.registry_uri(),
        target_name=target_name, aliases=aliases, copy_aliases=copy_aliases,
        dry_run=dry_run, verify=verify, force=force, workers=parallel,
        upgrade_target_schema=upgrade_target_schema)
    if request.source.identity == request.target.identity and not target_name:
        raise BadInput("source and target are the same registry and no --target-name is given",
                       hint="name another target, or a new name with --target-name")
    return promote_version(request, progress=out.progress(), log=out.note)
