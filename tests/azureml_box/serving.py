"""Deployments that really serve: Microsoft's `azureml-inference-server-http` (the `azmlinfsrv`
server that Azure ML's MLflow images run) in a child process, with mlflow_score.py as its entry
script, on a free loopback port.

What a "container" is here, and where each piece comes from:

- The server runs from its own venv (inference_env.py: it pins opentelemetry and pydantic below
  the project's), like the deployment image Azure ML builds apart from the client's machine.
- The model is "downloaded" first, as Azure ML's storage initializer does: the MLflow folder is
  copied to `<work_dir>/azureml-models/<model name>/<version>/<folder name>`, the layout the
  server expects (appinsights_client.py `_get_model_ids`: AZUREML_MODEL_DIR is
  /var/azureml-app/azureml-models/$MODEL_NAME/$VERSION), and `getLogs` for the
  StorageInitializer container answers a short synthetic log of that copy (a line per file).
- Environment, as Azure ML sets it for MLflow no-code deployments: AZUREML_MODEL_DIR (that
  version folder) and MLFLOW_MODEL_FOLDER (the MLflow folder's name inside it), read by Microsoft's
  mlflow_score_script.py (Azure/azureml-assets) and named in microsoft/azureml-inference-server
  issue #112; AML_APP_ROOT / AZUREML_ENTRY_SCRIPT point at the entry script as the curated
  image's Dockerfile does (ENV AML_APP_ROOT=/var/mlflow_resources, AZUREML_ENTRY_SCRIPT=
  mlflow_score_script.py). The deployment's environmentVariables override them last.
- Loopback only: azmlinfsrv 1.5.1 hard-codes gunicorn's bind to 0.0.0.0
  (azureml_inference_server_http/constants.py DEFAULT_HOST, amlserver_linux.py), so a gunicorn
  config file in the server's working directory (gunicorn reads ./gunicorn.conf.py by default)
  rebinds to 127.0.0.1 in its on_starting hook, which runs before the arbiter creates its
  sockets. The same file turns off gunicorn's control socket (a unix socket under $HOME).
- No telemetry: App Insights stays off (AML_APP_INSIGHTS_ENABLED=false and no key, whatever the
  deployment's variables say: a key would send logs to Azure), OpenTelemetry's SDK disabled,
  MLflow's telemetry off, no proxy variables inherited.
- Readiness: the liveness route `GET /` answers "Healthy" (server/routes.py) only once a worker
  has imported the entry script and run init(), because gunicorn workers load the app before
  they accept; an init() that raises makes the worker exit with 3 and gunicorn's arbiter halt
  ("Worker failed to boot"), which start_container reports as ServingFailed with the log tail.
- The process runs in its own session (process group); stop() signals the group, an atexit
  hook kills any group still alive when the test process exits, and a watchdog thread in the
  gunicorn master stops it if the test process dies without running atexit (gunicorn's
  workers already exit when their master goes: "Parent changed, shutting down").

Measured on this machine (2 cores): start to ready ~4-6 s for the sklearn heart model.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .inference_env import ensure_inference_env

_HOST = "127.0.0.1"
_ENTRY_SCRIPT = Path(__file__).with_name("mlflow_score.py")
_PORT_RETRIES = 3
_STOP_GRACE_SECONDS = 5.0
# Process environment a server may inherit; everything else (MLFLOW_*, AZURE_*, proxies,
# credentials) stays out, as it would in a container.
_INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
_QUIET_ENV = {
    "AML_APP_INSIGHTS_ENABLED": "false",
    "OTEL_SDK_DISABLED": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
}
_GUNICORN_CONF = """\
# Written by tests/azureml_box/serving.py: keep azmlinfsrv on loopback (it binds 0.0.0.0), and
# stop it if the test process that started it dies without cleaning up (SIGKILL, OOM).
import os
import signal
import threading
import time

control_socket_disable = True


def on_starting(server):
    server.cfg.set("bind", [{bind!r}])


def _watch_parent(server):
    while os.getppid() == {parent_pid}:
        time.sleep(1.0)
    server.log.info("test process {parent_pid} is gone; stopping")
    os.kill(os.getpid(), signal.SIGTERM)


def when_ready(server):
    threading.Thread(target=_watch_parent, args=(server,), daemon=True).start()
"""

_live_groups: set[int] = set()
_live_lock = threading.Lock()


class ServingFailed(Exception):
    """The model could not load, or the server never got ready before the timeout."""

    def __init__(self, message: str, logs: str = "") -> None:
        super().__init__(f"{message}\n--- inference server log (tail) ---\n{logs}")
        self.logs = logs


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@atexit.register
def _kill_live_groups() -> None:
    # Safety net: a server must not outlive the test session, even if a test forgot stop().
    with _live_lock:
        groups = list(_live_groups)
        _live_groups.clear()
    for pgid in groups:
        _signal_group(pgid, signal.SIGKILL)


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""


@dataclass
class Container:
    """One running inference server (what a deployment instance's container is in Azure ML)."""

    port: int
    pid: int
    log_path: Path = field(repr=False)
    storage_log: str = field(repr=False, default="")
    _proc: subprocess.Popen[bytes] | None = field(repr=False, default=None, compare=False)

    @property
    def url(self) -> str:
        return f"http://{_HOST}:{self.port}"

    @property
    def scoring_url(self) -> str:
        return f"{self.url}/score"

    def logs(self, tail: int = 100, container_type: str = "InferenceServer") -> str:
        """The last `tail` lines of the server's output, or of the storage initializer's log."""
        if container_type.lower() == "storageinitializer":
            lines = self.storage_log.splitlines()
            return "\n".join(lines[-tail:]) if tail > 0 else ""
        return _tail(self.log_path, tail)

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Terminate the server's process group; safe to call more than once."""
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        pgid = self.pid  # start_new_session: the leader's pid is the group id
        # SIGTERM is gunicorn's graceful stop; SIGKILL for whatever is left after the grace.
        _signal_group(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=_STOP_GRACE_SECONDS)
        # Workers left behind by a master that died first are still in the group.
        _signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=_STOP_GRACE_SECONDS)
        with _live_lock:
            _live_groups.discard(pgid)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _download_model(model_dir: Path, models_root: Path) -> tuple[Path, str]:
    """Copy the MLflow folder under models_root, as the storage initializer downloads it."""
    target = models_root / model_dir.name
    if target.exists():
        shutil.rmtree(target)
    models_root.mkdir(parents=True, exist_ok=True)
    lines = [f"Downloading model files to {target}"]
    files = 0
    for source in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        relative = source.relative_to(model_dir)
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
        files += 1
        lines.append(f"Downloaded {relative.as_posix()} ({source.stat().st_size} bytes)")
    lines.append(f"Model download complete: {files} files")
    return target, "\n".join(lines) + "\n"


def _server_env(
    work_dir: Path, models_root: Path, model_folder: str, app_root: Path, overrides: dict[str, str]
) -> dict[str, str]:
    env = {key: os.environ[key] for key in _INHERITED_ENV if key in os.environ}
    home = work_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    env.update(_QUIET_ENV)
    env.update(
        {
            "HOME": str(home),
            "AZUREML_MODEL_DIR": str(models_root),
            "MLFLOW_MODEL_FOLDER": model_folder,
            "AML_APP_ROOT": str(app_root),
            "AZUREML_ENTRY_SCRIPT": _ENTRY_SCRIPT.name,
        }
    )
    env.update(overrides)
    # Whatever the deployment asked for, nothing may leave loopback.
    env["AML_APP_INSIGHTS_ENABLED"] = "false"
    env.pop("AML_APP_INSIGHTS_KEY", None)
    return env


def _probe(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{_HOST}:{port}/", timeout=2.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_container(
    model_dir: Path,
    work_dir: Path,
    env: dict[str, str] | None = None,
    timeout: float = 180.0,
    *,
    model_name: str = "model",
    model_version: str = "1",
) -> Container:
    """Start azmlinfsrv serving the MLflow model at `model_dir`; return once it is ready.

    `model_name` / `model_version` only shape the model folder's path (AZUREML_MODEL_DIR), as
    the registered asset's name and version do in Azure ML.

    Raises ServingFailed (with the server's log tail) if the process exits, init() raises (the
    model cannot load), or the liveness route does not answer within `timeout` seconds.
    """
    model_dir = Path(model_dir).resolve()
    work_dir = Path(work_dir).resolve()
    if not (model_dir / "MLmodel").is_file():
        raise ServingFailed(f"{model_dir} is not an MLflow model folder (no MLmodel)", "")
    python = ensure_inference_env()
    work_dir.mkdir(parents=True, exist_ok=True)
    models_root = work_dir / "azureml-models" / model_name / model_version
    _, storage_log = _download_model(model_dir, models_root)
    app_root = work_dir / "app"
    app_root.mkdir(exist_ok=True)
    shutil.copy2(_ENTRY_SCRIPT, app_root / _ENTRY_SCRIPT.name)
    server_env = _server_env(work_dir, models_root, model_dir.name, app_root, dict(env or {}))

    deadline = time.monotonic() + timeout
    for attempt in range(_PORT_RETRIES):
        port = _free_port()
        (app_root / "gunicorn.conf.py").write_text(
            _GUNICORN_CONF.format(bind=f"{_HOST}:{port}", parent_pid=os.getpid())
        )
        log_path = work_dir / "inference-server.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    str(python.parent / "azmlinfsrv"),
                    "--entry_script",
                    str(app_root / _ENTRY_SCRIPT.name),
                    "--model_dir",
                    str(models_root),
                    "--port",
                    str(port),
                ],
                cwd=app_root,
                env=server_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        with _live_lock:
            _live_groups.add(proc.pid)
        container = Container(
            port=port, pid=proc.pid, log_path=log_path, storage_log=storage_log, _proc=proc
        )
        while True:
            code = proc.poll()
            if code is not None:
                logs = container.logs(200)
                container.stop()
                # Lost the race for the port between picking it and gunicorn binding it.
                if "Address already in use" in logs and attempt + 1 < _PORT_RETRIES:
                    break
                raise ServingFailed(f"inference server exited with code {code}", logs)
            if _probe(port):
                return container
            if time.monotonic() > deadline:
                logs = container.logs(200)
                container.stop()
                raise ServingFailed(f"inference server not ready after {timeout:.0f} s", logs)
            time.sleep(0.25)
    raise AssertionError("unreachable: every port attempt either returns or raises")
