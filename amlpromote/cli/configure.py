"""`amlpromote configure`: write, show, list and delete profiles."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from amlpromote.cli.options import (
    CredentialOpt,
    OutputOpt,
    QuietOpt,
    RegistryOpt,
    ResourceGroupOpt,
    SourceOpt,
    SubscriptionOpt,
    TargetOpt,
    VerboseOpt,
    WorkspaceOpt,
)
from amlpromote.core import config as cfg
from amlpromote.core.errors import BadInput
from amlpromote.core.uris import redact_uri

HELP = """Write, show, list and delete profiles (where models come from and go to).

\b
  amlpromote configure [PROFILE] --source URI --target URI
      write a profile
  amlpromote configure [PROFILE] --source URI --workspace WS \\
      --resource-group RG --subscription SUB [--credential KIND]
      target an Azure ML workspace
  amlpromote configure [PROFILE] --registry NAME
      target an Azure ML registry
  amlpromote configure [PROFILE]          prompt for it (on a terminal)
  amlpromote configure [PROFILE] --check  connect to both sides, list models
  amlpromote configure show [PROFILE]     effective settings and origins
  amlpromote configure list               all profiles
  amlpromote configure delete PROFILE     remove a profile

PROFILE defaults to "default"; show, list and delete are not profile names. Profiles live in
$AMLPROMOTE_CONFIG, else config.toml in the user config folder; the file is written atomically,
mode 0600, and never holds a secret. A target is a registry URI, an Azure ML workspace (its
MLflow URI is discovered when a command runs) or an Azure ML registry; writing one replaces the
other. Pass an empty value (--target "") to remove a setting. --check exits with the code of
the first side that failed (1 unreachable, 2 bad input, 3 not found, 4 credentials refused).

Examples:

\b
  amlpromote configure prod --source databricks://prod --workspace ml-prod \\
      --resource-group rg-ml \\
      --subscription 00000000-0000-0000-0000-000000000000 --check
  amlpromote configure ci --source databricks://prod \\
      --registry shared-models --credential environment
  amlpromote configure local --source file:///data/mlruns \\
      --target sqlite:///srv/reg/mlflow.db
  amlpromote configure delete old-staging
"""

# The settings a profile holds, as options of `configure` (show, list and delete take none).
_SETTING_FLAGS = {key: cfg.option_flag(key) for key in cfg.PROFILE_KEYS}
_USAGE = "amlpromote configure [PROFILE] | show [PROFILE] | list | delete PROFILE"


def register(app: typer.Typer) -> None:
    app.command("configure", help=HELP, no_args_is_help=False)(configure)


def configure(
    ctx: typer.Context,
    words: Annotated[list[str] | None, typer.Argument(
        metavar="[show|list|delete] [PROFILE]",
        help="A profile name to write, or 'show [PROFILE]', 'list' or 'delete PROFILE'.",
        show_default=False)]
        = None,
    source: SourceOpt = None,
    target: TargetOpt = None,
    workspace: WorkspaceOpt = None,
    resource_group: ResourceGroupOpt = None,
    subscription: SubscriptionOpt = None,
    registry: RegistryOpt = None,
    credential: CredentialOpt = None,
    check: Annotated[bool, typer.Option(
        "--check", help="Connect to the source and the target, list one page of models on "
                        "each, and report each side's status.")] = False,
    output: OutputOpt = None,
    quiet: QuietOpt = None,
    verbose: VerboseOpt = None,
) -> None:
    from amlpromote.cli.runner import make_output, run

    out = make_output(ctx, output, quiet, verbose)
    words = list(words or [])
    action = words[0] if words and words[0] in cfg.RESERVED_PROFILE_NAMES else "set"
    args = words[1:] if action != "set" else words
    if len(args) > (0 if action == "list" else 1):
        run(out, lambda: _refuse(f"too many arguments: {' '.join(words)}", hint=_USAGE))
    if action == "delete" and not args:
        run(out, lambda: _refuse("configure delete needs the PROFILE to delete",
                                 hint="amlpromote configure delete PROFILE "
                                      "(amlpromote configure list shows the profiles)"))
    profile_name = args[0] if args else None
    # Typer fills options from the environment too; only values typed on this command line
    # are written into a profile (an AMLPROMOTE_* variable of the CI job must not be stored).
    updates = {key: value for key, value in {
        "source": source, "target": target, "workspace": workspace,
        "resource_group": resource_group, "subscription": subscription, "registry": registry,
        "credential": credential}.items()
        if value is not None and _typed(ctx, key)}
    if action != "set" and (updates or check):
        # An option show/list/delete would ignore is a mistake to report, not to ignore.
        flags = [_SETTING_FLAGS[key] for key in updates] + (["--check"] if check else [])
        run(out, lambda: _refuse(
            f"configure {action} takes no settings: {', '.join(flags)}",
            hint=f"settings and --check go to amlpromote configure {profile_name or 'PROFILE'}"
                 f" {flags[0]} ...; {action} takes "
                 f"{'nothing else' if action == 'list' else 'only a profile name'}"))

    if action == "list":
        run(out, lambda: _list(out))
    elif action == "show":
        run(out, lambda: _show(out, profile_name))
    elif action == "delete":
        assert profile_name is not None
        run(out, lambda: _delete(out, profile_name))
    else:
        name = profile_name or cfg.DEFAULT_PROFILE
        if updates or not check:
            run(out, lambda: _set(out, name, updates, quiet_result=check))
        if check:
            code = run(out, lambda: _check(out, name, profile_name is not None, updates))
            if code:
                raise typer.Exit(code)


def _refuse(message: str, hint: str) -> None:
    raise BadInput(message, hint=hint)


def _typed(ctx: typer.Context, name: str) -> bool:
    # Compared by name: Typer's public API does not export Click's ParameterSource enum.
    source = ctx.get_parameter_source(name)
    return getattr(source, "name", "") == "COMMANDLINE"


def _set(out: Any, name: str, updates: dict[str, str], quiet_result: bool) -> None:
    if updates.get("workspace") and updates.get("registry"):
        raise BadInput("both --workspace and --registry given; a target is one of them",
                       hint="give --workspace (with --resource-group and --subscription) for a "
                            "workspace, or --registry for an Azure ML registry")
    if updates.get("target") and (updates.get("workspace") or updates.get("registry")):
        raise BadInput("both --target and an Azure ML target given; a target is one of them",
                       hint="give --target URI, or --workspace/--registry")
    if not updates:
        if not sys.stdin.isatty() or out.json:
            raise BadInput("nothing to configure: no --source or --target given",
                           hint=f"amlpromote configure {name} --source URI --target URI "
                                "(or run it on a terminal to be prompted)")
        current = cfg.load_config().profiles.get(name, {})
        updates["source"] = typer.prompt("Source registry URI",
                                         default=current.get("source", ""),
                                         show_default=bool(current.get("source")))
        updates["target"] = typer.prompt("Target registry URI (empty: the local default)",
                                         default=current.get("target", ""),
                                         show_default=bool(current.get("target")))
    config, profile = cfg.save_profile(name, dict(updates))
    if quiet_result:
        # `configure --check` prints one document: the check's.
        out.note(f"saved profile '{name}' in {config.path}")
        return
    document = {"status": "saved", "profile": name, "path": str(config.path),
                "settings": profile}

    def human() -> None:
        print(f"saved profile '{name}' in {config.path}")
        for key, value in sorted(profile.items()):
            print(f"  {key} = {redact_uri(value)}")

    out.result(document, human, quiet_line=str(config.path))


def _check(out: Any, name: str, explicit: bool, options: dict[str, str]) -> int:
    import os

    from amlpromote.core.promote.check import check_source, check_target
    from amlpromote.core.settings import resolve_target

    if not explicit and os.environ.get("AMLPROMOTE_PROFILE"):
        name, explicit = os.environ["AMLPROMOTE_PROFILE"], True
    profile = cfg.load_config().profile(name, required=explicit)
    source = cfg.resolve("source", options.get("source"), profile)
    out.note("checking the source ...")
    results = [check_source(source.value)]
    out.note("checking the target ...")
    results.append(check_target(resolve_target(dict(options), profile)))
    failed = [r for r in results if r.status == "failed"]
    document: dict[str, Any] = {"profile": name, "status": "failed" if failed else "ok",
                                "checks": [r.as_dict() for r in results]}
    if failed:
        # As every failure in JSON mode: the first failed side's error, hint and exit code.
        document.update(error=f"{failed[0].side}: {failed[0].error}", hint=failed[0].hint or "",
                        exit_code=failed[0].exit_code)

    def human() -> None:
        for r in results:
            mark = {"ok": "ok", "missing": "missing", "failed": "FAILED"}[r.status]
            print(f"{r.side:<7} {mark:<7} {r.registry}")
            if r.status == "failed":
                print(f"        error: {r.error}")
                if r.hint:
                    print(f"        hint:  {r.hint}")
                continue
            if r.note:
                print(f"        {r.note}")
            if r.status == "ok":
                shown = ", ".join(r.models) if r.models else "(no models yet)"
                print(f"        models: {shown}")

    out.result(document, human, quiet_line=document["status"])
    return failed[0].exit_code if failed else 0


def _show(out: Any, name: str | None) -> None:
    import os

    from amlpromote.core.settings import resolve_target

    explicit = name is not None
    profile_name = name or os.environ.get("AMLPROMOTE_PROFILE") or cfg.DEFAULT_PROFILE
    explicit = explicit or "AMLPROMOTE_PROFILE" in os.environ
    settings = cfg.effective_settings(profile_name, explicit)
    choice = resolve_target({}, cfg.load_config().profile(profile_name, required=explicit))
    if choice.kind != "uri":
        # The default sqlite target does not apply when Azure ML coordinates are set.
        settings["target"] = cfg.Setting(None, "not used")
    document = {
        "profile": profile_name,
        "path": str(cfg.config_path()),
        "settings": {k: {"value": redact_uri(s.value) if s.value else None, "origin": s.origin}
                     for k, s in settings.items()},
        "target": {"kind": choice.kind, "registry": choice.display, "origin": choice.origin},
    }

    def human() -> None:
        print(f"profile '{profile_name}' ({cfg.config_path()})")
        for key, setting in settings.items():
            value = redact_uri(setting.value) if setting.value else "(not set)"
            print(f"  {key:<14} {value}  [{setting.origin}]")
        print(f"  -> target: {choice.display}")

    out.result(document, human)


def _delete(out: Any, name: str) -> None:
    config = cfg.delete_profile(name)
    document = {"status": "deleted", "profile": name, "path": str(config.path)}
    out.result(document, lambda: print(f"deleted profile '{name}' from {config.path}"),
               quiet_line=name)


def _target_cell(row: dict[str, str]) -> str:
    if row.get("workspace"):
        return f"azureml workspace {row.get('resource_group', '?')}/{row['workspace']}"
    if row.get("registry"):
        return f"azureml registry {row['registry']}"
    return row.get("target", "")


def _list(out: Any) -> None:
    config = cfg.load_config()
    rows = [{"name": n, **{k: redact_uri(v) for k, v in p.items()}}
            for n, p in sorted(config.profiles.items())]
    document = {"path": str(config.path), "profiles": rows}

    def human() -> None:
        if not rows:
            print(f"no profiles in {config.path}; create one with "
                  "amlpromote configure NAME --source URI --target URI")
            return
        from rich.table import Table

        table = Table("profile", "source", "target", box=None, pad_edge=False)
        for row in rows:
            table.add_row(row["name"], row.get("source", ""), _target_cell(row))
        out.console().print(table)

    out.result(document, human, quiet_line="\n".join(r["name"] for r in rows))
