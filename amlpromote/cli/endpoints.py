"""`amlpromote endpoints`: list, show, delete, logs, traffic, invoke and keys of online
endpoints, Azure ML managed or local."""

from __future__ import annotations

import sys
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
    SubscriptionOpt,
    TargetOpt,
    VerboseOpt,
    WorkspaceOpt,
)

if TYPE_CHECKING:
    from amlpromote.core.deploy.platform import EndpointPlatform

HELP = """Online endpoints: list, show, delete, logs, traffic, invoke, keys.

The platform follows the target as for deploy: an Azure ML workspace (--workspace,
--resource-group, --subscription, or a profile) or, with --local or an MLflow registry
target, the local endpoints of this machine.

Examples:

\b
  amlpromote endpoints list --local
  amlpromote endpoints show heart --local -o json
  amlpromote endpoints invoke heart --request-file request.json --local
  amlpromote endpoints traffic heart-prod blue=100 green=0 --profile prod
  amlpromote endpoints logs heart-prod --deployment green --tail 100 --profile prod
  amlpromote endpoints delete heart --local
"""

LocalOpt = Annotated[bool, typer.Option(
    "--local", help="The local endpoints of this machine, whatever the target.")]
NameArg = Annotated[str, typer.Argument(metavar="NAME", help="The endpoint.",
                                        show_default=False)]
DeploymentOpt = Annotated[str | None, typer.Option(
    "--deployment", "-d", help="One deployment of the endpoint.")]


def register(app: typer.Typer) -> None:
    endpoints_app = typer.Typer(name="endpoints", help=HELP, no_args_is_help=True,
                                rich_markup_mode=None,
                                context_settings={"help_option_names": ["-h", "--help"]})
    endpoints_app.command("list", help="List the online endpoints.\n\nExample:\n\n\b\n"
                                       "  amlpromote endpoints list --local")(list_endpoints)
    endpoints_app.command("show", help="An endpoint: scoring URI, traffic, deployments.\n\n"
                                       "Example:\n\n\b\n  amlpromote endpoints show heart "
                                       "--local")(show)
    endpoints_app.command("delete", help="Delete an endpoint (a local one's server stops), "
                                         "or one deployment with --deployment.\n\nExample:"
                                         "\n\n\b\n  amlpromote endpoints delete heart "
                                         "--local")(delete)
    endpoints_app.command("logs", help="The last log lines of a deployment (default: the "
                                       "one with the most traffic).\n\nExample:\n\n\b\n"
                                       "  amlpromote endpoints logs heart --tail 50 "
                                       "--local")(logs)
    endpoints_app.command("traffic", help="Set the traffic split by hand (a manual shift "
                                          "or rollback): DEPLOYMENT=PERCENT ..., adding up "
                                          "to 100 (or all 0 for no traffic).\n\nExample:"
                                          "\n\n\b\n  amlpromote endpoints traffic heart "
                                          "blue=90 green=10 --local")(traffic)
    endpoints_app.command("invoke", help="Send a request file to the endpoint (or one "
                                         "deployment) and print the answer.\n\nExample:\n\n"
                                         "\b\n  amlpromote endpoints invoke heart "
                                         "--request-file request.json --local")(invoke)
    endpoints_app.command("keys", help="Print the endpoint's primary key (or token), for "
                                       "scripts. The one command that prints a secret.\n\n"
                                       "Example:\n\n\b\n  KEY=$(amlpromote endpoints keys "
                                       "heart --local)")(keys)
    app.add_typer(endpoints_app, name="endpoints")


def _platform(local: bool, target: str | None, profile: str | None, workspace: str | None,
              resource_group: str | None, subscription: str | None, registry: str | None,
              credential: str | None) -> EndpointPlatform:
    from amlpromote.core.deploy.where import default_profile, open_platform, resolve_deploy_target
    from amlpromote.core.settings import target_options

    _, values = default_profile(profile)
    where = resolve_deploy_target(target_options(target, workspace, resource_group,
                                                 subscription, registry, credential),
                                  values, local, profile)
    return open_platform(where)


def _endpoint(platform: EndpointPlatform, name: str) -> Any:
    from amlpromote.core.deploy.where import require_endpoint

    return require_endpoint(platform, name)


def list_endpoints(
    ctx: typer.Context, local: LocalOpt = False, target: TargetOpt = None,
    profile: ProfileOpt = None, workspace: WorkspaceOpt = None,
    resource_group: ResourceGroupOpt = None, subscription: SubscriptionOpt = None,
    registry: RegistryOpt = None, credential: CredentialOpt = None,
    output: OutputOpt = None, quiet: QuietOpt = None, verbose: VerboseOpt = None,
) -> None:
    from amlpromote.cli.runner import make_output, run

    out = make_output(ctx, output, quiet, verbose)
    platform = run(out, lambda: _platform(local, target, profile, workspace, resource_group,
                                          subscription, registry, credential))
    found = run(out, platform.list_endpoints)

    def human() -> None:
        if not found:
            print("no endpoints")
            return
        from amlpromote.core.deploy.rollout import describe_traffic

        width = max(len(e.name) for e in found)
        for e in found:
            print(f"{e.name:<{width}}  {e.state:<10}  {describe_traffic(e.traffic):<24}  "
                  f"{e.scoring_uri}")

    out.result({"platform": platform.kind, "endpoints": [e.as_dict() for e in found]}, human,
               "\n".join(e.name for e in found) or None)


def show(
    ctx: typer.Context, name: NameArg, local: LocalOpt = False, target: TargetOpt = None,
    profile: ProfileOpt = None, workspace: WorkspaceOpt = None,
    resource_group: ResourceGroupOpt = None, subscription: SubscriptionOpt = None,
    registry: RegistryOpt = None, credential: CredentialOpt = None,
    output: OutputOpt = None, quiet: QuietOpt = None, verbose: VerboseOpt = None,
) -> None:
    from amlpromote.cli.runner import make_output, run

    out = make_output(ctx, output, quiet, verbose)
    platform = run(out, lambda: _platform(local, target, profile, workspace, resource_group,
                                          subscription, registry, credential))
    found = run(out, lambda: _endpoint(platform, name))

    def human() -> None:
        from amlpromote.core.deploy.rollout import describe_traffic

        print(f"endpoint {found.name} ({found.platform}, {found.state})")
        print(f"  scoring  {found.scoring_uri}")
        print(f"  auth     {found.auth_mode}")
        print(f"  traffic  {describe_traffic(found.traffic)}")
        if found.mirror:
            print(f"  mirror   {describe_traffic(found.mirror)}")
        for d in found.deployments:
            print(f"  deployment {d.name}: {d.state}, {d.model_asset_id}")

    out.result(found.as_dict(), human, found.scoring_uri)


def delete(
    ctx: typer.Context, name: NameArg, deployment: DeploymentOpt = None,
    local: LocalOpt = False, target: TargetOpt = None,
    profile: ProfileOpt = None, workspace: WorkspaceOpt = None,
    resource_group: ResourceGroupOpt = None, subscription: SubscriptionOpt = None,
    registry: RegistryOpt = None, credential: CredentialOpt = None,
    output: OutputOpt = None, quiet: QuietOpt = None, verbose: VerboseOpt = None,
) -> None:
    from amlpromote.cli.runner import make_output, run

    out = make_output(ctx, output, quiet, verbose)
    platform = run(out, lambda: _platform(local, target, profile, workspace, resource_group,
                                          subscription, registry, credential))

    def action() -> dict[str, Any]:
        import time

        from amlpromote.core.errors import BadInput

        found = _endpoint(platform, name)
        deadline = time.monotonic() + 1800
        if deployment is not None:
            found.require_deployment(deployment)
            if found.traffic.get(deployment, 0):
                raise BadInput(f"deployment '{deployment}' takes {found.traffic[deployment]}% "
                               f"of the traffic of endpoint '{name}'",
                               hint=f"move its traffic first: amlpromote endpoints traffic "
                                    f"{name} OTHER=100")
            platform.delete_deployment(name, deployment, out.states(), deadline)
            return {"status": "deleted", "endpoint": name, "deployment": deployment}
        platform.delete_endpoint(name, out.states(), deadline)
        return {"status": "deleted", "endpoint": name, "deployment": None}

    document = run(out, action)
    what = (f"deployment {deployment} of endpoint {name}" if deployment
            else f"endpoint {name}")
    out.result(document, lambda: print(f"deleted {what}"), name)


def logs(
    ctx: typer.Context, name: NameArg, deployment: DeploymentOpt = None,
    tail: Annotated[int, typer.Option("--tail", min=1, max=10000,
                                      help="Lines to show.")] = 50,
    local: LocalOpt = False, target: TargetOpt = None,
    profile: ProfileOpt = None, workspace: WorkspaceOpt = None,
    resource_group: ResourceGroupOpt = None, subscription: SubscriptionOpt = None,
    registry: RegistryOpt = None, credential: CredentialOpt = None,
    output: OutputOpt = None, quiet: QuietOpt = None, verbose: VerboseOpt = None,
) -> None:
    from amlpromote.cli.runner import make_output, run

    out = make_output(ctx, output, quiet, verbose)
    platform = run(out, lambda: _platform(local, target, profile, workspace, resource_group,
                                          subscription, registry, credential))

    def action() -> tuple[str, str]:
        from amlpromote.core.errors import NotFound

        found = _endpoint(platform, name)
        chosen = deployment
        if chosen is None:
            if not found.deployments:
                raise NotFound(f"endpoint '{name}' has no deployments",
                               hint=f"amlpromote deploy MODEL --endpoint {name}")
            chosen = max(found.deployments, key=lambda d: found.traffic.get(d.name, 0)).name
        else:
            found.require_deployment(chosen)
        return chosen, platform.get_logs(name, chosen, tail)

    chosen, text = run(out, action)
    out.result({"endpoint": name, "deployment": chosen, "logs": text.splitlines()},
               lambda: print(text.rstrip("\n")), text.rstrip("\n") or None)


def traffic(
    ctx: typer.Context, name: NameArg,
    shares: Annotated[list[str], typer.Argument(metavar="DEPLOYMENT=PERCENT...",
                                                help="The new split.", show_default=False)],
    mirror: Annotated[list[str] | None, typer.Option(
        "--mirror", help="Mirror DEPLOYMENT=PERCENT of the traffic (repeatable; 0 stops "
                         "mirroring).")] = None,
    local: LocalOpt = False, target: TargetOpt = None,
    profile: ProfileOpt = None, workspace: WorkspaceOpt = None,
    resource_group: ResourceGroupOpt = None, subscription: SubscriptionOpt = None,
    registry: RegistryOpt = None, credential: CredentialOpt = None,
    output: OutputOpt = None, quiet: QuietOpt = None, verbose: VerboseOpt = None,
) -> None:
    from amlpromote.cli.runner import make_output, run

    out = make_output(ctx, output, quiet, verbose)
    split = run(out, lambda: _shares(shares, "traffic"))
    mirrored = run(out, lambda: _shares(mirror, "--mirror")) if mirror else None
    platform = run(out, lambda: _platform(local, target, profile, workspace, resource_group,
                                          subscription, registry, credential))

    def action() -> dict[str, Any]:
        from amlpromote.core.deploy.rollout import set_traffic

        before, after = set_traffic(platform, name, split, mirrored, out.states(), 1800)
        return {"status": "unchanged" if after is before else "updated", "endpoint": name,
                "traffic": {"before": before.traffic, "after": after.traffic},
                "mirror": {"before": before.mirror, "after": after.mirror}}

    document = run(out, action)

    def human() -> None:
        from amlpromote.core.deploy.rollout import describe_traffic

        if document["status"] == "unchanged":
            print(f"traffic of endpoint {name} unchanged: "
                  f"{describe_traffic(document['traffic']['after'])}")
            return
        print(f"traffic of endpoint {name}: {describe_traffic(document['traffic']['before'])}"
              f" -> {describe_traffic(document['traffic']['after'])}")

    out.result(document, human, name)


def _shares(words: list[str] | None, what: str) -> dict[str, int]:
    from amlpromote.core.errors import BadInput

    found: dict[str, int] = {}
    for word in words or []:
        deployment, sep, pct = word.partition("=")
        if not sep or not deployment or not pct.strip().isdigit():
            raise BadInput(f"{what} {word!r} is not DEPLOYMENT=PERCENT",
                           hint="e.g. blue=90 green=10")
        if deployment in found:
            raise BadInput(f"{what} names deployment {deployment!r} twice",
                           hint="give each deployment one share, e.g. blue=90 green=10")
        found[deployment] = int(pct)
    return found


def invoke(
    ctx: typer.Context, name: NameArg,
    request_file: Annotated[Path, typer.Option(
        "--request-file", "-f", help="The JSON request body (the endpoint's format).",
        show_default=False)],
    deployment: DeploymentOpt = None,
    local: LocalOpt = False, target: TargetOpt = None,
    profile: ProfileOpt = None, workspace: WorkspaceOpt = None,
    resource_group: ResourceGroupOpt = None, subscription: SubscriptionOpt = None,
    registry: RegistryOpt = None, credential: CredentialOpt = None,
    output: OutputOpt = None, quiet: QuietOpt = None, verbose: VerboseOpt = None,
) -> None:
    from amlpromote.cli.runner import make_output, run

    out = make_output(ctx, output, quiet, verbose)

    def read() -> bytes:
        import json

        from amlpromote.core.errors import BadInput, NotFound

        example = "a JSON file such as {\"input_data\": {\"columns\": [...], \"data\": [[...]]}}"
        if request_file.suffix.lower() in (".csv", ".parquet", ".pq", ".jsonl", ".ndjson"):
            # Rows, not a request: score turns them into requests (batched, with progress).
            example = (f"rows go through amlpromote score --endpoint {name} --input "
                       f"{request_file} --output -{' --local' if local else ''}; "
                       f"--request-file takes {example}")
        try:
            data = request_file.read_bytes()
        except FileNotFoundError:  # exit 3, as a missing --input of score (README "Exit codes")
            raise NotFound(f"--request-file {request_file}: no such file",
                           hint=example) from None
        except OSError as exc:
            raise BadInput(f"--request-file {request_file}: {exc.strerror or exc}",
                           hint=example) from None
        try:
            # Checked here, so a typo is one line naming its place, not an HTTP 400 from the
            # endpoint (and no request is sent).
            json.loads(data)
        except UnicodeDecodeError:
            raise BadInput(f"--request-file {request_file}: not UTF-8 text",
                           hint=example) from None
        except json.JSONDecodeError as exc:
            raise BadInput(f"--request-file {request_file} line {exc.lineno} column "
                           f"{exc.colno}: not JSON ({exc.msg})", hint=example) from None
        return data

    body = run(out, read)
    platform = run(out, lambda: _platform(local, target, profile, workspace, resource_group,
                                          subscription, registry, credential))

    def action() -> Any:
        from amlpromote.core.deploy.platform import endpoints_command
        from amlpromote.core.errors import OperationFailed

        # An unknown --deployment is NotFound from the platform's invoke (both check it).
        answer = platform.invoke(name, body, deployment=deployment)
        if answer.status != 200:
            detail = answer.body[:300].decode("utf-8", "replace").strip()
            reason = answer.headers.get("ms-azureml-model-error-statuscode")
            inner = f" (the model answered {reason})" if reason else ""
            raise OperationFailed(f"endpoint '{name}' answered HTTP {answer.status}{inner}: "
                                  f"{detail}",
                                  hint=endpoints_command(platform, f"logs {name}", deployment)
                                  + " shows the server's log")
        return answer

    answer = run(out, action)
    text = answer.body.decode("utf-8", "replace")

    def as_json() -> Any:
        import json

        try:
            return json.loads(text)
        except ValueError:
            return text

    document = {"endpoint": name,
                "deployment": answer.headers.get("azureml-model-deployment", deployment),
                "status_code": answer.status, "seconds": round(answer.seconds, 3),
                "answer": as_json()}
    out.result(document, lambda: print(text.rstrip("\n")), text.rstrip("\n"))


def keys(
    ctx: typer.Context, name: NameArg,
    local: LocalOpt = False, target: TargetOpt = None,
    profile: ProfileOpt = None, workspace: WorkspaceOpt = None,
    resource_group: ResourceGroupOpt = None, subscription: SubscriptionOpt = None,
    registry: RegistryOpt = None, credential: CredentialOpt = None,
    output: OutputOpt = None, quiet: QuietOpt = None, verbose: VerboseOpt = None,
) -> None:
    from amlpromote.cli.runner import make_output, run

    out = make_output(ctx, output, quiet, verbose)
    platform = run(out, lambda: _platform(local, target, profile, workspace, resource_group,
                                          subscription, registry, credential))

    def action() -> str:
        _endpoint(platform, name)
        return platform.get_key(name)

    key = run(out, action)
    # Asked for by name: the one output that carries a secret. It goes to stdout only, past
    # the redacting wrapper (cli/output.py) that would hide a token-shaped key.
    stream: Any = sys.stdout
    while hasattr(stream, "_inner"):  # the redacting wrapper and the poller-dot filter
        stream = stream._inner
    if out.json:
        import json

        stream.write(json.dumps({"endpoint": name, "primary_key": key}) + "\n")
    else:
        stream.write(key + "\n")
    stream.flush()

