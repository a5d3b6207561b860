"""`amlpromote deploy`: put a registered version into service behind an online endpoint."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
from amlpromote.cli.output import Output

if TYPE_CHECKING:
    from amlpromote.core.deploy.rollout import DeployResult

HELP = """Deploy a registered model version to an online endpoint, safely: preflight, smoke
test, traffic, and automatic rollback.

REF names a version in the target registry, in the same forms as copy-model (NAME,
NAME/3, NAME@ALIAS, models:/NAME/3). The platform follows the target: an Azure ML workspace
deploys to its managed online endpoints; an Azure ML registry to the endpoints of the workspace
named by --workspace/--resource-group/--subscription; any other MLflow registry to a local
endpoint on this machine (a server on loopback with Azure ML's scoring contract). --local
forces a local endpoint.

The new deployment (blue or green, whichever takes no traffic) is smoke tested alone with the
model's input example (or --smoke-input) before any traffic reaches it. When provisioning or
the smoke test fails, or --timeout passes, traffic stays exactly as it was, the new deployment
is deleted and the error shows its last log lines (exit 1). Deploying the version that is
already live with the asked traffic does nothing (status "unchanged").

Examples:

\b
  amlpromote deploy uci-heart-classifier/1 --endpoint heart --local
  amlpromote deploy uci-heart-classifier@champion --endpoint heart-prod \\
      --workspace ml-prod --resource-group rg-ml --subscription SUB-ID
  amlpromote deploy uci-heart-classifier/4 --endpoint heart-prod --profile prod \\
      --traffic 10 --smoke-input rows.csv
  amlpromote deploy uci-heart-classifier@champion --endpoint heart --profile prod \\
      --promote --retire-old -o json
  amlpromote deploy uci-heart-classifier/4 --endpoint heart-prod --profile prod --dry-run
"""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?\s*$", re.IGNORECASE)


def register(app: typer.Typer) -> None:
    app.command("deploy", help=HELP)(deploy)


def parse_duration(value: str) -> float:
    """'30m', '90s', '1h' or plain seconds."""
    from amlpromote.core.errors import BadInput

    match = _DURATION.match(value or "")
    if not match:
        raise BadInput(f"--timeout {value!r} is not a duration",
                       hint="e.g. --timeout 30m, --timeout 90s or --timeout 1h")
    if float(match[1]) <= 0:
        raise BadInput(f"--timeout {value!r}: the rollout needs some time",
                       hint="e.g. --timeout 30m (the default), or --timeout 90s")
    unit = (match[2] or "s").lower()[0]
    return float(match[1]) * {"s": 1, "m": 60, "h": 3600}[unit]


def parse_env(pairs: list[str]) -> dict[str, str]:
    from amlpromote.core.errors import BadInput

    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise BadInput(f"--env {pair!r} is not KEY=VALUE",
                           hint="e.g. --env LOG_LEVEL=debug (repeatable)")
        env[key] = value
    return env


def deploy(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(metavar="REF", help="The version to deploy.",
                                       show_default=False)],
    endpoint: Annotated[str, typer.Option(
        "--endpoint", "-e", envvar="AMLPROMOTE_ENDPOINT",
        help="Online endpoint name (created when missing).", show_default=False)],
    deployment: Annotated[str | None, typer.Option(
        "--deployment", "-d",
        help="Deployment name [default: blue or green, whichever takes no traffic].")] = None,
    local: Annotated[bool, typer.Option(
        "--local", help="Deploy to a local endpoint on this machine, whatever the target.")]
        = False,
    promote: Annotated[bool, typer.Option(
        "--promote", help="First copy REF from the source registry into the target (as "
                          "copy-model does; a re-run copies nothing).")] = False,
    upgrade_target_schema: Annotated[bool, typer.Option(
        "--upgrade-target-schema",
        help="With --promote: let MLflow upgrade a target registry written by an older MLflow "
             "(as copy-model's option; without --promote the target is only read, whatever "
             "its MLflow version).")] = False,
    source: SourceOpt = None,
    target: TargetOpt = None,
    profile: ProfileOpt = None,
    workspace: WorkspaceOpt = None,
    resource_group: ResourceGroupOpt = None,
    subscription: SubscriptionOpt = None,
    registry: RegistryOpt = None,
    credential: CredentialOpt = None,
    auth_mode: Annotated[str, typer.Option(
        "--auth-mode", help="How clients authenticate to a new endpoint: key, aml_token or "
                            "aad_token.")] = "key",
    instance_type: Annotated[str, typer.Option(
        "--instance-type", help="Azure ML VM size of the deployment.")] = "Standard_DS3_v2",
    instance_count: Annotated[int, typer.Option(
        "--instance-count", min=1, max=100, help="Instances of the deployment.")] = 1,
    traffic: Annotated[int, typer.Option(
        "--traffic", min=0, max=100,
        help="Percent of the endpoint's traffic for the new deployment after its smoke test; "
             "the rest stays on what was live.")] = 100,
    mirror: Annotated[int | None, typer.Option(
        "--mirror", min=1, max=50,
        help="Mirror this percent of live traffic to the new deployment instead (answers "
             "discarded).")] = None,
    retire_old: Annotated[bool, typer.Option(
        "--retire-old", help="Delete deployments left with no traffic.")] = False,
    keep_failed: Annotated[bool, typer.Option(
        "--keep-failed", help="Keep a failed deployment (with no traffic) to debug it.")]
        = False,
    timeout: Annotated[str, typer.Option(
        "--timeout", help="Give up (and roll back) after this long: 30m, 90s, 1h.")] = "30m",
    smoke_input: Annotated[Path | None, typer.Option(
        "--smoke-input", help="Smoke-test request: a JSON request file in the endpoint's "
                              "format, or a CSV/parquet file of rows [default: the model's "
                              "input example].")] = None,
    skip_preflight: Annotated[bool, typer.Option(
        "--skip-preflight", help="Skip the checks of the model's files.")] = False,
    env: Annotated[list[str] | None, typer.Option(
        "--env", help="Environment variable of the deployment, KEY=VALUE (repeatable).")]
        = None,
    liveness_delay: Annotated[int, typer.Option(
        "--liveness-delay", min=0, help="Seconds before the first liveness probe (MLflow "
                                        "images install the model's environment first).")]
        = 600,
    readiness_delay: Annotated[int, typer.Option(
        "--readiness-delay", min=0, help="Seconds before the first readiness probe.")] = 600,
    request_timeout_ms: Annotated[int, typer.Option(
        "--request-timeout-ms", min=1, max=180000,
        help="Scoring request timeout of the deployment.")] = 5000,
    max_concurrent_requests: Annotated[int, typer.Option(
        "--max-concurrent-requests", min=1, max=1000,
        help="Concurrent requests per instance.")] = 1,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the plan; change nothing.")] = False,
    output: OutputOpt = None,
    quiet: QuietOpt = None,
    verbose: VerboseOpt = None,
) -> None:
    from amlpromote.cli.runner import make_output, run

    out = make_output(ctx, output, quiet, verbose)
    from amlpromote.core.settings import target_options

    targets = target_options(target, workspace, resource_group, subscription, registry,
                             credential)
    options: dict[str, Any] = dict(ref=ref, endpoint=endpoint, deployment=deployment, local=local,
                   promote=promote, upgrade_target_schema=upgrade_target_schema,
                   source=source, profile=profile, auth_mode=auth_mode,
                   instance_type=instance_type, instance_count=instance_count,
                   traffic=traffic, mirror=mirror, retire_old=retire_old,
                   keep_failed=keep_failed, timeout=timeout, smoke_input=smoke_input,
                   skip_preflight=skip_preflight, env=env or [],
                   liveness_delay=liveness_delay, readiness_delay=readiness_delay,
                   request_timeout_ms=request_timeout_ms,
                   max_concurrent_requests=max_concurrent_requests, dry_run=dry_run)
    result = run(out, lambda: _deploy(out, targets, **options))
    render(out, result)


def render(out: Output, result: DeployResult) -> None:
    from amlpromote.core.deploy.rollout import describe_traffic

    document = result.as_dict()

    def human() -> None:
        model = f"{result.model.name}/{result.model.version}"
        where = f"endpoint {result.endpoint} ({result.platform})"
        if result.status == "planned":
            action = "create" if result.created_endpoint else "reuse"
            print(f"plan: deploy {model} to {where}")
            print(f"      {action} endpoint {result.endpoint}; "
                  f"{'replace' if result.replaced_deployment else 'create'} deployment "
                  f"{result.deployment}")
            print(f"      traffic {describe_traffic(result.traffic_before)} -> "
                  f"{describe_traffic(result.traffic_after)}")
            if result.mirror_after:
                print(f"      mirror {describe_traffic(result.mirror_after)}")
            print("dry run: nothing was changed")
            return
        if result.status == "unchanged":
            print(f"unchanged: {model} already serves {where} as deployment "
                  f"{result.deployment} ({describe_traffic(result.traffic_after)})")
        else:
            print(f"deployed {model} to {where} as deployment {result.deployment} "
                  f"({result.seconds:.1f}s)")
            print(f"  traffic  {describe_traffic(result.traffic_before)} -> "
                  f"{describe_traffic(result.traffic_after)}")
            if result.mirror_after:
                print(f"  mirror   {describe_traffic(result.mirror_after)}")
            if result.smoke_rows is not None:
                print(f"  smoke    {result.smoke_rows} rows answered in "
                      f"{result.smoke_seconds or 0:.2f}s")
            if result.retired:
                print(f"  retired  {', '.join(result.retired)}")
        if result.scoring_uri:
            print(f"  scoring  {result.scoring_uri}")
        for warning in result.warnings:
            out.warn(warning)

    out.result(document, human, f"{result.endpoint}/{result.deployment}")


def _deploy(out: Output, targets: dict[str, str | None], *, ref: str, endpoint: str,
            deployment: str | None, local: bool, promote: bool,
            upgrade_target_schema: bool, source: str | None,
            profile: str | None, auth_mode: str, instance_type: str, instance_count: int,
            traffic: int, mirror: int | None, retire_old: bool, keep_failed: bool,
            timeout: str, smoke_input: Path | None, skip_preflight: bool, env: list[str],
            liveness_delay: int, readiness_delay: int, request_timeout_ms: int,
            max_concurrent_requests: int, dry_run: bool) -> DeployResult:
    from amlpromote.core.deploy import fetch as fetching
    from amlpromote.core.deploy.platform import DeploymentSettings, ModelVersion
    from amlpromote.core.deploy.rollout import DeployRequest, SmokeTest, check_request
    from amlpromote.core.deploy.rollout import deploy as roll_out
    from amlpromote.core.deploy.where import (
        asset_id,
        check_name,
        default_profile,
        open_platform,
        resolve_deploy_target,
    )
    from amlpromote.core.errors import BadInput
    from amlpromote.core.refs import parse_model_ref

    # Every input is checked before anything is read.
    model_ref = parse_model_ref(ref)
    check_name("endpoint", endpoint)
    if deployment is not None:
        check_name("deployment", deployment)
    if auth_mode not in ("key", "aml_token", "aad_token"):
        raise BadInput(f"--auth-mode {auth_mode!r} is not one of key, aml_token, aad_token",
                       hint="key (the default) suits scripts; aml_token/aad_token sign in")
    if upgrade_target_schema and not promote:
        raise BadInput("--upgrade-target-schema goes with --promote (only a promotion writes "
                       "into the target)",
                       hint="add --promote, or drop --upgrade-target-schema: deploy reads a "
                            "target of any MLflow version as it is")
    seconds = parse_duration(timeout)
    variables = parse_env(env)
    if smoke_input is not None:
        from amlpromote.core.deploy.smoke import check_user_file

        check_user_file(smoke_input)
    profile_name, profile_values = default_profile(profile)
    where = resolve_deploy_target(targets, profile_values, local, profile)
    if where.local and auth_mode != "key":
        raise BadInput(f"local endpoints use key auth, not --auth-mode {auth_mode}",
                       hint="drop --auth-mode (key is the default), or deploy to Azure ML")
    request = DeployRequest(
        endpoint=endpoint, deployment=deployment, model=ModelVersion("", "", ""), smoke=None,
        auth_mode=auth_mode, traffic=traffic, mirror=mirror, retire_old=retire_old,
        keep_failed=keep_failed, timeout=seconds, dry_run=dry_run,
        settings=DeploymentSettings(
            instance_type=instance_type, instance_count=instance_count,
            liveness_initial_delay=liveness_delay, readiness_initial_delay=readiness_delay,
            request_timeout_ms=request_timeout_ms,
            max_concurrent_requests=max_concurrent_requests, env=variables))
    check_request(request)
    out.debug(f"profile '{profile_name}'; model registry {where.choice.display}; endpoints: "
              f"{where.display}")

    if promote:
        from amlpromote.cli.copy_model import _promote

        promote_targets = dict(targets)
        if where.choice.kind == "registry":
            promote_targets["workspace"] = None  # the endpoints' workspace, not a target
        promoted = _promote(out, ref, source, promote_targets, profile, None, [], False,
                            dry_run, False, False, None, upgrade_target_schema)
        version = promoted.target.get("version") or (promoted.plan or {}).get(
            "existing_version")
        if version is None:
            out.note(f"dry run: the promotion would register a new version of "
                     f"{promoted.target['name']}; the deploy plan needs it registered")
            raise BadInput("--promote --dry-run: the version to deploy is not registered yet",
                           hint="run copy-model first, or drop --dry-run")
        out.note(f"promotion: {promoted.status} -> {promoted.target['name']}/{version}")
        model_ref = parse_model_ref(f"{promoted.target['name']}/{version}")

    if where.choice.kind != "uri":
        out.note(f"finding the MLflow URI of the {where.choice.display}")
    registry_uri = where.choice.registry_uri()
    located = fetching.locate(registry_uri, "target", model_ref)
    files = fetching.RegistryModelFiles(located)
    warnings: list[str] = []
    if where.local and variables:
        # A local endpoint's deployments are models loaded in one server process, started
        # with deploy's own environment: there is no per-deployment environment to set.
        warnings.append("--env is not applied on a local endpoint (its deployments share one "
                        "server process); export the variables before the first deploy")
    from amlpromote.core.deploy import preflight, smoke

    if not skip_preflight:
        report = preflight.preflight(files, platform=where.platform_kind,
                                     instance_type=None if where.local else instance_type,
                                     smoke_input_given=smoke_input is not None)
        report.raise_for_problems()
        warnings.extend(getattr(report, "warnings", []) or [])
    smoke_request = smoke.smoke_request(files, smoke_input)
    request.smoke = SmokeTest(smoke_request.body, smoke_request.rows, smoke.check_smoke_answer)
    model = ModelVersion(located.name, located.number,
                         asset_id(where, registry_uri, located.name, located.number),
                         digest=located.digest)
    request.model = model
    platform = open_platform(where)
    if where.local and not dry_run:
        fetched = fetching.fetch(located, files, out.progress())
        model.path = str(fetched.path)
        model.digest = fetched.digest
        if fetched.downloaded:
            out.note(f"fetched {located.name}/{located.number} into the model cache")
    return roll_out(platform, request, progress=out.states(), log=out.note,
                    preflight_warnings=warnings)

