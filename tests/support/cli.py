"""Running the CLI from tests: in this process (Typer's CliRunner, fast) or in a fresh
interpreter that also reports which heavy libraries the run imported (the REST routes promise
that a promotion never pays for them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# mlflow (~2 s, ~200 MB), databricks-sdk (~1.5 s), azureml-mlflow (imports mlflow's helpers).
WATCHED = ("mlflow", "databricks.sdk", "azureml.mlflow")
_MARK = "AMLPROMOTE_TEST_IMPORTED="
_SCRIPT = f"""
import json, sys
from amlpromote.cli.app import main
sys.argv = ["amlpromote", *sys.argv[1:]]
try:
    main()
finally:
    loaded = {{name: name in sys.modules for name in {WATCHED!r}}}
    sys.__stderr__.write({_MARK!r} + json.dumps(loaded) + "\\n")
"""


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def both(self) -> str:
        return self.stdout + self.stderr

    @property
    def document(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.stdout)
        return document


def cli(*args: str, env: Mapping[str, str] | None = None) -> Run:
    """`amlpromote ARGS` in this process, with `env` set for the run, through the console
    script's own entry (`run_command_line`: usage errors rendered like every other failure)."""
    from typer.testing import CliRunner

    from amlpromote.cli.app import run_command_line

    started = time.monotonic()
    # CliRunner's isolation swaps the standard streams and the environment for the run.
    with CliRunner().isolation(env=dict(env or {})) as (stdout, stderr, _):
        try:
            code = run_command_line(list(args))
        except SystemExit as exc:  # a sys.exit() below the CLI's own handling
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except Exception as exc:
            raise AssertionError(f"the CLI raised {exc!r}") from exc
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        out, err = stdout.getvalue().decode(), stderr.getvalue().decode()
    return Run(code, out, err, time.monotonic() - started)


@dataclass(frozen=True)
class ImportsRun(Run):
    """A run in a fresh interpreter; its stderr is without the import report."""

    imported: Mapping[str, bool]  # WATCHED module -> imported by the end of the run


def run_cli_reporting_imports(*args: str, env: dict[str, str] | None = None,
                              inherit: bool = True, cwd: Path | None = None,
                              timeout: float = 300) -> ImportsRun:
    """`amlpromote ARGS...` in a fresh interpreter, with `env` added to this process's
    environment (or, with `inherit=False`, as the whole environment)."""
    environment = {**os.environ, **(env or {})} if inherit else dict(env or {})
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, *args],
                          env=environment, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False)
    lines = proc.stderr.splitlines(keepends=True)
    reports = [line for line in lines if line.startswith(_MARK)]
    assert len(reports) == 1, f"the run did not report its imports: {proc.stderr[-2000:]}"
    imported = json.loads(reports[0].removeprefix(_MARK))
    stderr = "".join(line for line in lines if not line.startswith(_MARK))
    return ImportsRun(proc.returncode, proc.stdout, stderr, time.monotonic() - started,
                      imported)
