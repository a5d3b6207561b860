"""The `amlpromote` Typer app: global options, command registration, and the one place where
errors become messages and exit codes."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from amlpromote import __version__
from amlpromote.cli.options import OutputOpt, QuietOpt, VerboseOpt
from amlpromote.cli.output import Output, configure_logging, install_redaction
from amlpromote.core.errors import AmlPromoteError

T = TypeVar("T")

HELP = """Promote MLflow models between registries, verified and re-runnable.

Exit codes: 0 done (also "unchanged"), 1 failed, 2 bad usage or input, 3 not found,
4 authentication/authorization.

Examples:

  amlpromote configure prod --source databricks://prod --target sqlite:///reg/mlflow.db

  amlpromote copy-model uci-heart-classifier@champion --profile prod

  amlpromote copy-model models:/uci-heart-classifier/3 --target http://mlflow:5000 -o json
"""

app = typer.Typer(
    name="amlpromote",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"amlpromote {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    output: OutputOpt = None,
    quiet: QuietOpt = None,
    verbose: VerboseOpt = None,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    ctx.obj = {"output": output, "quiet": quiet, "verbose": verbose}


def make_output(ctx: typer.Context, output: Any, quiet: bool | None,
                verbose: bool | None) -> Output:
    """Merge the global options with the command's own (the command's win)."""
    parent = ctx.obj or {}
    mode = output or parent.get("output")
    debug = os.environ.get("AMLPROMOTE_DEBUG", "") not in ("", "0", "false")
    out = Output()
    if mode is not None:
        out.mode = mode
    out.quiet = bool(quiet if quiet is not None else parent.get("quiet"))
    out.verbose = bool(verbose if verbose is not None else parent.get("verbose")) or debug
    configure_logging(out.verbose)
    return out


def run(out: Output, action: Callable[[], T]) -> T:
    """Call one core function; map expected failures to exit codes and bugs to a short line."""
    try:
        return action()
    except AmlPromoteError as exc:
        raise typer.Exit(out.fail(exc)) from None
    except KeyboardInterrupt:
        print("error: interrupted; nothing was registered by the interrupted step",
              file=sys.stderr)
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        raise typer.Exit(out.crash(exc)) from None


def _register() -> None:
    from amlpromote.cli import configure, copy_model

    configure.register(app)
    copy_model.register(app)


_register()


def main() -> None:
    install_redaction()
    # MLflow starts a telemetry client at import; a CI tool talks to the registries only.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    app()
