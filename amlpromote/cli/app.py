"""The `amlpromote` Typer app: global options, command registration, and the one place where
errors become messages and exit codes."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence

import typer

from amlpromote import __version__
from amlpromote.cli.options import OutputMode, OutputOpt, QuietOpt, VerboseOpt
from amlpromote.cli.output import Output, install_redaction
from amlpromote.core.errors import (
    EXIT_USAGE,
    BadInput,
    Interrupted,
    OperationFailed,
)

# Help texts are shown by Click's plain formatter (rich_markup_mode=None), which rewraps every
# paragraph to the terminal's width; a paragraph that starts with a line holding only \b (Click's
# marker) keeps its lines as written: every synopsis and example block starts with one.
HELP = """Promote MLflow models between registries, verified and re-runnable.

Exit codes: 0 done (also "unchanged"), 1 failed, 2 bad usage or input, 3 not found,
4 authentication/authorization, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).

Examples:

\b
  amlpromote configure prod --source databricks://prod \\
      --target sqlite:///reg/mlflow.db
  amlpromote copy-model uci-heart-classifier@champion --profile prod
  amlpromote copy-model models:/uci-heart-classifier/3 \\
      --target http://mlflow:5000 -o json
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


def _register() -> None:
    from amlpromote.cli import configure, copy_model, deploy, endpoints, models, score

    configure.register(app)
    copy_model.register(app)
    models.register(app)
    deploy.register(app)
    endpoints.register(app)
    score.register(app)


_register()


class CommandLineError(BadInput):
    """The command line itself is wrong: an unknown command or option, a missing argument, a
    value Typer refused."""

    kind = "usage"


def run_command_line(args: Sequence[str] | None = None) -> int:
    """Run the app on `args` (default: `sys.argv[1:]`) as the console script does and return
    the exit code. Typer's standalone mode would print Click's usage text for a usage error;
    here it is one `error:` line and a `hint:` line, plus the failure document when JSON output
    was asked for, like every other failure. Tests in this process call this too."""
    argv = list(sys.argv[1:] if args is None else args)
    from amlpromote.cli import interrupts
    from amlpromote.core.deploy.azureml_online import keep_poller_dots_off_stdout

    interrupts.finished(None)

    keep_poller_dots_off_stdout()
    try:
        code = app(args=argv, prog_name="amlpromote", standalone_mode=False)
    except typer.Abort:
        signum = interrupts.received()
        if signum is not None:
            # A signal outside `run()` (Click turns KeyboardInterrupt into Abort; the Typer
            # in use turns it into Exit(130), handled below): while the options were read, or
            # while a finished command printed its result.
            return interrupted_outside_the_work(argv, signum)
        # Ctrl-C or Ctrl-D at a prompt (Click turns both into Abort); nothing was written yet.
        return Output(mode=_requested_mode(argv)).fail(OperationFailed(
            "aborted at the prompt; nothing was written",
            hint="run it again, or pass the values as options"))
    except KeyboardInterrupt as exc:
        # Outside Click's own handling too (as its main returns, after the command ended).
        from amlpromote.core.errors import interrupt_signal

        return interrupted_outside_the_work(argv, interrupt_signal(exc))
    except Exception as exc:
        # Click's exceptions are not part of Typer's public API: known by what they carry.
        if not (callable(getattr(exc, "format_message", None))
                and isinstance(getattr(exc, "exit_code", None), int)):
            raise
        return _command_line_failure(exc, argv)
    signum = interrupts.received()
    if code == 130 and signum is not None and interrupts.unsaid():
        # Typer turns a KeyboardInterrupt outside `run()` into a silent Exit(130), whichever
        # signal it was: said here, with the signal's own code.
        return interrupted_outside_the_work(argv, signum)
    return code if isinstance(code, int) else 0


def interrupted_outside_the_work(argv: Sequence[str], signum: int) -> int:
    """A signal that came before or after a command's work, not during it: what was printed
    is what happened, and what the work completed (Output.finish) is said."""
    from amlpromote.cli import interrupts

    error = interrupts.after_the_work(signum) or Interrupted(
        "it came outside the command's work: what was printed above happened, nothing else "
        "was started", hint="amlpromote models show NAME --from target shows what the target "
        "holds", signum=signum)
    return Output(mode=_requested_mode(list(argv))).fail(error)


def _command_line_failure(exc: Exception, argv: list[str]) -> int:
    out = Output(mode=_requested_mode(argv))
    message: str = getattr(exc, "format_message")()  # noqa: B009 -- duck-typed, see above
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", "amlpromote")
    if ctx is not None and message == ctx.get_help():
        # `no_args_is_help`: on a terminal the help is the answer (on stderr, as Click has it).
        if out.mode != OutputMode.json:
            print(message, file=sys.stderr)
        message = "no command given"
    message = message.replace("Value error, ", "").rstrip(".")
    # Typer checks min=/max= with pydantic, whose wording is about "Input", not the option.
    message = re.sub(r"Input should be greater than or equal to (\S+)", r"must be at least \1",
                     message)
    message = re.sub(r"Input should be less than or equal to (\S+)", r"must be at most \1",
                     message)
    message = message[:1].lower() + message[1:]
    hint = (f"{command} --help lists the commands" if "command" in message
            else f"{command} --help shows the options and examples")
    error = CommandLineError(message, hint=hint)
    error.exit_code = getattr(exc, "exit_code", EXIT_USAGE)
    return out.fail(error)


def _requested_mode(argv: list[str]) -> OutputMode:
    """The output the command line asked for, read from the words themselves: a usage error
    comes before Typer has parsed them. The last --output wins, else AMLPROMOTE_OUTPUT."""
    mode: str | None = None
    words = iter(argv)
    for word in words:
        if word == "--":
            break
        value: str | None = None
        if word in ("-o", "--output"):
            value = next(words, None)
        elif word.startswith("--output="):
            value = word.partition("=")[2]
        elif word.startswith("-o") and not word.startswith("--"):
            value = word[2:]
        # `score --output` also names the rows' destination: only a mode's name is a mode.
        if value is not None and value.strip().lower() in ("json", "human"):
            mode = value
    if mode is None:
        mode = os.environ.get("AMLPROMOTE_OUTPUT", "")
    return OutputMode.json if (mode or "").strip().lower() == "json" else OutputMode.human


def main() -> None:
    install_redaction()
    # MLflow starts a telemetry client at import; a CI tool talks to the registries only.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    from amlpromote.cli import interrupts

    interrupts.install()
    try:
        code = run_command_line()
        interrupts.ending()
    except KeyboardInterrupt as exc:  # between run_command_line's own handling and ending()
        interrupts.ending()  # (a second signal this soon is ignored by the handler)
        from amlpromote.core.errors import interrupt_signal

        code = interrupted_outside_the_work(sys.argv[1:], interrupt_signal(exc))
    if interrupts.received() is not None:
        interrupts.exit_now(code)  # without joining worker threads stuck in I/O
    sys.exit(code)
