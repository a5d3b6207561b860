"""One output object: human / json / quiet, results on stdout, everything else on stderr.

Both standard streams are wrapped so that whatever is written to them — our own text, a library's
warning, a traceback in --verbose mode — passes through `redact_text` first: secrets never reach
a terminal or a CI log, whoever prints them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, TextIO

from amlpromote.cli.options import OutputMode
from amlpromote.core.errors import EXIT_FAILED, AmlPromoteError
from amlpromote.core.uris import redact_text


class RedactingStream:
    """A text stream wrapper that removes credentials from everything written through it."""

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self._inner.write(redact_text(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def install_redaction() -> None:
    if not isinstance(sys.stdout, RedactingStream):
        sys.stdout = RedactingStream(sys.stdout)
    if not isinstance(sys.stderr, RedactingStream):
        sys.stderr = RedactingStream(sys.stderr)


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact_text(record.getMessage())
        record.args = None
        return True


def configure_logging(verbose: bool) -> None:
    """Libraries log to stderr; below WARNING only in --verbose mode, always redacted."""
    import warnings

    level = logging.DEBUG if verbose else logging.WARNING
    root = logging.getLogger()
    if not any(isinstance(f, _RedactingFilter) for f in root.filters):
        root.addFilter(_RedactingFilter())
    for name in ("mlflow", "alembic", "azure", "urllib3", "py.warnings", "amlpromote"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO if verbose else logging.WARNING)
        if not any(isinstance(f, _RedactingFilter) for f in logger.filters):
            logger.addFilter(_RedactingFilter())
    root.setLevel(level)
    # azure-identity logs every credential of a failed chain as a multi-line WARNING; the
    # AuthFailed error already says it in one line (core/azure/connection.py).
    logging.getLogger("azure.identity").setLevel(logging.INFO if verbose else logging.ERROR)
    # MLflow's sqlalchemy stores log each database error at ERROR, with its traceback, before
    # raising it; the one `error:` line says it (core/registries/mlflow_env.py
    # translate_mlflow_error).
    logging.getLogger("mlflow.store.db").setLevel(logging.INFO if verbose else logging.CRITICAL)
    if not verbose:
        warnings.filterwarnings("ignore")
        # MLflow configures its own handler on import; keep it quiet unless asked.
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


@dataclass
class Output:
    mode: OutputMode = OutputMode.human
    quiet: bool = False
    verbose: bool = False
    notes: list[str] = field(default_factory=list)
    def finish(self, what: str) -> None:
        """The command's work is complete: `what` it left (one clause, for an error line, e.g.
        "all 300 rows are in out.csv"). An interrupt that lands after it, before the result is
        printed, says that, not "nothing" (kept by cli/interrupts.py for the process: a signal
        outside `run()` is reported where no Output is at hand)."""
        from amlpromote.cli import interrupts

        interrupts.finished(what)

    @property
    def json(self) -> bool:
        return self.mode == OutputMode.json

    def _err(self) -> IO[str]:
        return sys.stderr

    def note(self, message: str) -> None:
        """A progress note for the CI log (stderr); silent in quiet and json modes."""
        if self.quiet or self.json:
            return
        print(message, file=self._err(), flush=True)

    def debug(self, message: str) -> None:
        if self.verbose:
            print(f"debug: {message}", file=self._err(), flush=True)

    def warn(self, message: str) -> None:
        if not self.quiet:
            print(f"warning: {message}", file=self._err(), flush=True)

    def result(self, document: dict[str, Any], human: Callable[[], None],
               quiet_line: str | None = None) -> None:
        """Print the command's result: a JSON document, a one-liner, or the human rendering."""
        if self.json:
            print(json.dumps(document, indent=2, sort_keys=False), flush=True)
        elif self.quiet:
            if quiet_line:
                print(quiet_line, flush=True)
        else:
            human()

    def states(self) -> Callable[[str, str, float], None]:
        """Progress of a long operation, (what, state, seconds): a live line on a terminal, a
        line per state change in a CI log, nothing in quiet or JSON mode."""
        if self.quiet or self.json:
            return lambda what, state, elapsed: None
        last: dict[str, str] = {}
        interactive = sys.stderr.isatty()

        def report(what: str, state: str, elapsed: float) -> None:
            if interactive:
                end = "\n" if state.lower() in ("succeeded", "failed", "canceled",
                                                 "deleted") else ""
                print(f"\r\x1b[2K{what}: {state} ({elapsed:.0f}s)", end=end,
                      file=self._err(), flush=True)
            elif last.get(what) != state:
                print(f"{what}: {state} ({elapsed:.0f}s)", file=self._err(), flush=True)
            last[what] = state

        return report

    def console(self) -> Any:
        from rich.console import Console

        return Console(file=sys.stdout, highlight=False, soft_wrap=True)

    def fail(self, error: AmlPromoteError) -> int:
        """Report an expected failure; returns the exit code."""
        if error.kind == "interrupted":
            from amlpromote.cli import interrupts

            interrupts.said()
        if self.verbose:
            traceback.print_exception(error, file=self._err())
        print(f"error: {error.message}", file=self._err(), flush=True)
        for line in getattr(error, "detail_lines", []):
            print(f"  {redact_text(line)}", file=self._err(), flush=True)
        if error.hint and not self.quiet:
            print(f"hint: {error.hint}", file=self._err(), flush=True)
        if self.json:
            self._failure_document(error.message, error.hint or "", error.exit_code, error.kind,
                                   getattr(error, "document", {}))
        return error.exit_code

    def crash(self, exc: BaseException) -> int:
        """An unexpected exception is a bug: short line, traceback only with --verbose."""
        if self.verbose:
            traceback.print_exception(exc, file=self._err())
        message = f"internal error ({exc.__class__.__name__}: {redact_text(str(exc))[:300]})"
        hint = "run again with --verbose (or AMLPROMOTE_DEBUG=1) for the traceback, and report it"
        print(f"error: {message}", file=self._err(), flush=True)
        if not self.verbose:
            print(f"hint: {hint}", file=self._err(), flush=True)
        if self.json:
            self._failure_document(message, hint, EXIT_FAILED, "internal")
        return EXIT_FAILED

    def _failure_document(self, message: str, hint: str, exit_code: int, kind: str,
                          extra: dict[str, Any] | None = None) -> None:
        # The one shape of every failure in JSON mode (README "JSON output"); the same message
        # and hint go to stderr for a human reading the CI log. A failure with more to say (a
        # rolled-back deploy) adds its own keys.
        document: dict[str, Any] = {"status": "failed", "error": redact_text(message),
                                    "hint": redact_text(hint), "exit_code": exit_code,
                                    "kind": kind}
        document.update(extra or {})
        print(redact_text(json.dumps(document, indent=2)), flush=True)

    def progress(self) -> Any:
        """A transfer progress bar on an interactive stderr, otherwise None."""
        if self.quiet or self.json or not sys.stderr.isatty():
            return None
        return RichTransferProgress()


class RichTransferProgress:
    """A rich bar of bytes and files; its callbacks arrive from worker threads."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TextColumn("{task.fields[files]}"), TimeRemainingColumn(),
            console=Console(file=sys.stderr), transient=True)
        self._task: Any = None
        self._files = 0
        self._done = 0
        self._lock = threading.Lock()

    def start(self, description: str, files: int, total_bytes: int | None) -> None:
        self._files, self._done = files, 0
        if self._task is None:
            self._progress.start()
        else:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(description, total=total_bytes,
                                             files=f"0/{files} files")

    def advance(self, nbytes: int) -> None:
        self._progress.advance(self._task, nbytes)

    def file_done(self, path: str) -> None:
        with self._lock:
            self._done += 1
            done = self._done
        self._progress.update(self._task, files=f"{done}/{self._files} files")

    def finish(self) -> None:
        """Erase the bar; core calls it when a transfer ends in any way (an interrupt too), so
        the error line is not drawn over. Safe to call again."""
        if self._task is None:
            return
        self._task = None
        self._progress.stop()


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"
