"""A virtual environment of its own for Microsoft's `azureml-inference-server-http`.

Why not the project venv: azureml-inference-server-http 1.5.1 pins opentelemetry-api/-sdk
==1.33.0 and pydantic~=2.12.0 (its METADATA Requires-Dist), below what .venv has (opentelemetry
1.44, pydantic 2.14 with mlflow 3.15), so installing it there
would downgrade the project's packages. Azure ML itself runs the server in the deployment's own
image, separate from the client that deployed it; a separate venv is the same split.

The model's runtime libraries are installed at the SAME versions as the calling process has
(read with importlib.metadata), so a model saved by the tests loads in the server exactly as it
would in the project venv, as Azure ML's MLflow images install the model's requirements.

Created once per checkout under .work/inference-venv (git-ignored), idempotently: a stamp file
holds the wanted spec and pip runs only when it changed (as scripts/setup does for .venv); an
fcntl lock serialises pytest-xdist workers and concurrent sessions.

Measured on this machine (2 cores, PyPI through the machine's mirror, empty pip cache): first
creation 72 s, 672 MB (azureml-inference-server-http 1.5.1 with gunicorn, Flask, opentelemetry
1.33, pydantic 2.12; mlflow-skinny, scikit-learn, scipy, pandas, numpy, pyarrow, skops at the
project's versions); an up-to-date venv is a stamp comparison (milliseconds).

Pre-build from a script (from the repo root), printing the venv's python:
`.venv/bin/python tests/azureml_box/inference_env.py`, or
`PYTHONPATH=tests .venv/bin/python -m azureml_box.inference_env`. (`-m tests.azureml_box...`
does not work: the package's __init__ imports `support`, which is only importable with tests/ on
sys.path, as pytest puts it.)
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = REPO_ROOT / ".work" / "inference-venv"
INFERENCE_SERVER_SPEC = "azureml-inference-server-http==1.5.1"
# Runtime libraries an MLflow sklearn model needs, pinned to the caller's versions. The first
# name found wins (mlflow-skinny is enough to load a pyfunc model; the full mlflow adds a
# tracking server the scoring container never runs).
_MIRRORED = (
    ("mlflow-skinny", "mlflow"),
    ("scikit-learn",),
    ("scipy",),
    ("pandas",),
    ("numpy",),
    ("cloudpickle",),
    # mlflow >= 3.x saves sklearn models as model.skops by default (skops.io), so loading needs it.
    ("skops",),
    ("pyarrow",),
)
_STAMP = ".amlpromote-inference-installed"
_INSTALL_TIMEOUT = 900.0


class InferenceEnvError(RuntimeError):
    """The inference venv could not be created."""


def wanted_requirements() -> list[str]:
    """The pip requirements the venv must hold, pinned to this process's library versions."""
    reqs = [INFERENCE_SERVER_SPEC]
    for names in _MIRRORED:
        for name in names:
            try:
                version = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                continue
            # mlflow (full) is pinned as mlflow-skinny at the same version: same code, fewer
            # dependencies (no server, no sqlalchemy).
            reqs.append(f"{names[0]}=={version}")
            break
    return reqs


def venv_python(root: Path = DEFAULT_ROOT) -> Path:
    return root / "bin" / "python"


def ensure_inference_env(root: Path = DEFAULT_ROOT) -> Path:
    """Create or refresh the inference venv at `root`; return its python.

    Idempotent and safe to call from several processes at once (the second waits for the
    first's install, then finds the stamp). The first creation takes about a minute.
    """
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    reqs = wanted_requirements()
    want = f"python {sys.version_info[0]}.{sys.version_info[1]}\n" + "\n".join(reqs) + "\n"
    python = venv_python(root)
    stamp = root / _STAMP
    # The lock lives beside the venv, so removing the venv to rebuild it keeps the lock valid.
    with (root.parent / f".{root.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if python.exists() and stamp.exists() and stamp.read_text() == want:
                return python
        except OSError:
            pass
        env = dict(os.environ)
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        env.pop("PYTHONPATH", None)
        if not python.exists():
            _run([sys.executable, "-m", "venv", str(root)], env)
        # Drop the stamp first: an interrupted install must not look complete next time.
        stamp.unlink(missing_ok=True)
        _run([str(python), "-m", "pip", "install", "--quiet", *reqs], env)
        stamp.write_text(want)
        return python


def _run(cmd: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(
        cmd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=_INSTALL_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        raise InferenceEnvError(
            f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
            f"{proc.stderr[-4000:]}"
        )


def main() -> int:
    started = time.monotonic()
    python = ensure_inference_env()
    print(python)
    print(f"inference venv ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
