"""Run the CLI in a fresh interpreter, as its console script does, and report which heavy
libraries the run imported: the REST routes promise that a promotion never pays for them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

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
class CliRun:
    returncode: int
    stdout: str
    stderr: str  # without the report line
    imported: dict[str, bool]  # WATCHED module -> imported at the end of the run


def run_cli_reporting_imports(*args: str, env: dict[str, str] | None = None,
                              inherit: bool = True, cwd: Path | None = None,
                              timeout: float = 300) -> CliRun:
    """`amlpromote ARGS...` with `env` added to this process's environment (or, with
    `inherit=False`, as the whole environment)."""
    environment = {**os.environ, **(env or {})} if inherit else dict(env or {})
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, *args],
                          env=environment, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False)
    lines = proc.stderr.splitlines(keepends=True)
    reports = [line for line in lines if line.startswith(_MARK)]
    assert len(reports) == 1, f"the run did not report its imports: {proc.stderr[-2000:]}"
    imported = json.loads(reports[0].removeprefix(_MARK))
    stderr = "".join(line for line in lines if not line.startswith(_MARK))
    return CliRun(proc.returncode, proc.stdout, stderr, imported)
