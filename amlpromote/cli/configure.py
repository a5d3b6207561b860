"""`amlpromote configure`: write, show and list profiles."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from amlpromote.cli.options import OutputOpt, QuietOpt, SourceOpt, TargetOpt, VerboseOpt
from amlpromote.core import config as cfg
from amlpromote.core.errors import BadInput
from amlpromote.core.uris import redact_uri

HELP = """Write, show and list profiles (where models come from and go to).

  amlpromote configure [PROFILE] --source URI --target URI   write a profile
  amlpromote configure [PROFILE]                             prompt for it (on a terminal)
  amlpromote configure show [PROFILE]                        effective settings and origins
  amlpromote configure list                                  all profiles

PROFILE defaults to "default". Profiles live in $AMLPROMOTE_CONFIG, else config.toml in the
user config folder; the file is written atomically, mode 0600, and never holds a secret.
Pass an empty value (--target "") to remove a setting.

Example:

  amlpromote configure prod --source databricks://prod --target sqlite:///srv/reg/mlflow.db
"""


def register(app: typer.Typer) -> None:
    app.command("configure", help=HELP, no_args_is_help=False)(configure)


def configure(
    ctx: typer.Context,
    words: Annotated[list[str] | None, typer.Argument(
        metavar="[PROFILE | show [PROFILE] | list]",
        help="A profile name to write, or 'show [PROFILE]' or 'list'.", show_default=False)]
        = None,
    source: SourceOpt = None,
    target: TargetOpt = None,
    output: OutputOpt = None,
    quiet: QuietOpt = None,
    verbose: VerboseOpt = None,
) -> None:
    from amlpromote.cli.app import make_output, run

    out = make_output(ctx, output, quiet, verbose)
    words = list(words or [])
    action = words[0] if words and words[0] in ("show", "list") else "set"
    args = words[1:] if action != "set" else words
    if len(args) > (0 if action == "list" else 1):
        out.fail(BadInput(f"too many arguments: {' '.join(words)}",
                          hint="amlpromote configure [PROFILE] | show [PROFILE] | list"))
        raise typer.Exit(2)
    profile_name = args[0] if args else None

    if action == "list":
        run(out, lambda: _list(out))
    elif action == "show":
        run(out, lambda: _show(out, profile_name))
    else:
        run(out, lambda: _set(out, profile_name or cfg.DEFAULT_PROFILE, source, target))


def _set(out: Any, name: str, source: str | None, target: str | None) -> None:
    if source is None and target is None:
        if not sys.stdin.isatty() or out.json:
            raise BadInput("nothing to configure: no --source or --target given",
                           hint=f"amlpromote configure {name} --source URI --target URI "
                                "(or run it on a terminal to be prompted)")
        current = cfg.load_config().profiles.get(name, {})
        source = typer.prompt("Source registry URI", default=current.get("source", ""),
                              show_default=bool(current.get("source")))
        target = typer.prompt("Target registry URI (empty: the local default)",
                              default=current.get("target", ""),
                              show_default=bool(current.get("target")))
    config, profile = cfg.save_profile(name, {"source": source, "target": target})
    document = {"status": "saved", "profile": name, "path": str(config.path),
                "settings": profile}

    def human() -> None:
        print(f"saved profile '{name}' in {config.path}")
        for key, value in sorted(profile.items()):
            print(f"  {key} = {redact_uri(value)}")

    out.result(document, human, quiet_line=str(config.path))


def _show(out: Any, name: str | None) -> None:
    explicit = name is not None
    import os

    profile_name = name or os.environ.get("AMLPROMOTE_PROFILE") or cfg.DEFAULT_PROFILE
    settings = cfg.effective_settings(profile_name, explicit or "AMLPROMOTE_PROFILE" in os.environ)
    document = {
        "profile": profile_name,
        "path": str(cfg.config_path()),
        "settings": {k: {"value": redact_uri(s.value) if s.value else None, "origin": s.origin}
                     for k, s in settings.items()},
    }

    def human() -> None:
        print(f"profile '{profile_name}' ({cfg.config_path()})")
        for key, setting in settings.items():
            value = redact_uri(setting.value) if setting.value else "(not set)"
            print(f"  {key:<8} {value}  [{setting.origin}]")

    out.result(document, human)


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
            table.add_row(row["name"], row.get("source", ""), row.get("target", ""))
        out.console().print(table)

    out.result(document, human, quiet_line="\n".join(r["name"] for r in rows))
