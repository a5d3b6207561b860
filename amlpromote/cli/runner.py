"""The first and the last step of every command: `make_output` (the output object, after every
`AMLPROMOTE_*` variable was checked) and `run` (one core call, its expected failures mapped to
messages and exit codes).

Command modules import this, never `cli/app.py`: app.py imports them to register them, so a
command module that imported app.py back would make a cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import typer

from amlpromote.cli.options import OutputMode
from amlpromote.cli.output import Output, configure_logging
from amlpromote.core.errors import AmlPromoteError

T = TypeVar("T")


def make_output(ctx: typer.Context, output: Any, quiet: bool | None,
                verbose: bool | None) -> Output:
    """The first call of every command: the output object, after every `AMLPROMOTE_*` variable
    was checked (`settings.check_environment`), so bad input fails before anything is read.

    Precedence: the command's option > the same option before the command name > its
    `AMLPROMOTE_*` variable > default."""
    from amlpromote.core import settings

    parent = ctx.obj or {}
    typed = {"AMLPROMOTE_OUTPUT": output if output is not None else parent.get("output"),
             "AMLPROMOTE_QUIET": quiet if quiet is not None else parent.get("quiet"),
             "AMLPROMOTE_VERBOSE": verbose if verbose is not None else parent.get("verbose")}
    out = Output()
    # A bad variable counts as unset here; check_environment below reports it, rendered the
    # way the other settings ask for.
    mode = typed["AMLPROMOTE_OUTPUT"] or _lenient(settings.env_output_mode)
    if mode is not None:
        out.mode = OutputMode(mode)
    out.quiet = bool(_first(typed["AMLPROMOTE_QUIET"],
                            lambda: settings.env_flag("AMLPROMOTE_QUIET")))
    out.verbose = bool(_first(typed["AMLPROMOTE_VERBOSE"],
                              lambda: settings.env_flag("AMLPROMOTE_VERBOSE"))) \
        or bool(_lenient(lambda: settings.env_flag("AMLPROMOTE_DEBUG")))
    configure_logging(out.verbose)
    given = {name for name, value in typed.items() if value is not None}
    run(out, lambda: settings.check_environment(given | _typed_variables(ctx)))
    return out


def _lenient(read: Callable[[], T]) -> T | None:
    try:
        return read()
    except AmlPromoteError:
        return None


def _first(value: bool | None, read: Callable[[], bool | None]) -> bool | None:
    return value if value is not None else _lenient(read)


def _typed_variables(ctx: typer.Context) -> set[str]:
    """The variables of this command's options that were typed on the command line (the option
    wins, so the variable is neither used nor checked)."""
    typed = set()
    for param in getattr(ctx.command, "params", []):
        envvar = getattr(param, "envvar", None)
        # Compared by name: Typer's public API does not export Click's ParameterSource enum.
        source = ctx.get_parameter_source(param.name) if param.name else None
        if isinstance(envvar, str) and getattr(source, "name", "") == "COMMANDLINE":
            typed.add(envvar)
    return typed


def run(out: Output, action: Callable[[], T]) -> T:
    """Call one core function; map expected failures to exit codes and bugs to a short line."""
    try:
        return action()
    except AmlPromoteError as exc:
        raise typer.Exit(out.fail(exc)) from None
    except KeyboardInterrupt as exc:
        # Ctrl-C or SIGTERM (cli/interrupts.py) that core did not report as `Interrupted`
        # (which says what was registered): it landed before anything was staged.
        from amlpromote.cli.interrupts import as_error

        raise typer.Exit(out.fail(as_error(exc))) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        raise typer.Exit(out.crash(exc)) from None
