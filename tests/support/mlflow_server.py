"""A real `mlflow server` subprocess on a free loopback port, for tests.

Start-up facts that shaped this module (mlflow 3.15, measured on this machine):

- The server takes ~7 s to answer /health with a fresh sqlite db (schema migrations + imports).
- `mlflow server` is a launcher: it spawns `python -m uvicorn ...` as a child and, with a database
  backend, also a job runner that spawns ~7 `huey_consumer` processes. On SIGTERM the launcher
  forwards the signal to uvicorn but the huey consumers get orphaned. We disable job execution
  (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false) and start the launcher in its own session so the
  whole process group can be signalled.
- At start the launcher resolves `config.mlflow-telemetry.io` (telemetry config fetch) unless
  MLFLOW_DISABLE_TELEMETRY / DO_NOT_TRACK is set. No other outbound lookups were seen.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from . import NO_PHONE_HOME_ENV, free_port

_HOST = "127.0.0.1"
_LOG_TAIL_LINES = 200
_PORT_RETRIES = 3

# Variables from the test process that would change how the server behaves if inherited.
_STRIP_PREFIXES = ("MLFLOW_", "AMLPROMOTE_")


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to a process group; False once the group has no members left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        # A zombie-only group on some kernels; treat it as gone.
        return False
    return True


def _kill_group_now(pgid: int) -> None:
    # Used by the interpreter-exit safety net, where waiting politely is not an option.
    _signal_group(pgid, signal.SIGKILL)


class MlflowServerError(RuntimeError):
    """The server did not start or did not become healthy in time."""


class MlflowServer:
    """One `mlflow server` process with its own sqlite db, artifact folder, log and HOME.

    `serve_artifacts=True` (the default) proxies artifacts (`--artifacts-destination`), so clients
    see `mlflow-artifacts:/` URIs and never touch the folder. `serve_artifacts=False` starts with
    `--default-artifact-root file://...` and `--no-serve-artifacts`, so clients read and write the
    artifact folder directly.
    """

    def __init__(
        self,
        root: Path,
        *,
        serve_artifacts: bool = True,
        port: int | None = None,
        workers: int = 1,
        startup_timeout: float = 60.0,
        extra_args: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.serve_artifacts = serve_artifacts
        self.workers = workers
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self.extra_env = dict(extra_env or {})
        self._requested_port = port
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None

        self.db_path = self.root / "mlflow.db"
        self.artifacts_dir = self.root / "artifacts"
        self.log_path = self.root / "server.log"
        self.home_dir = self.root / "home"

    # -- properties -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return _HOST

    @property
    def port(self) -> int:
        if self._port is None:
            raise MlflowServerError("server not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{_HOST}:{self.port}"

    @property
    def tracking_uri(self) -> str:
        return self.url

    @property
    def backend_store_uri(self) -> str:
        return f"sqlite:///{self.db_path}"

    @property
    def default_artifact_root(self) -> str:
        """What new experiments get as artifact location on this server."""
        return "mlflow-artifacts:/" if self.serve_artifacts else self.artifacts_dir.as_uri()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self, tail_lines: int | None = _LOG_TAIL_LINES) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "<no server log>"
        if tail_lines is not None:
            lines = lines[-tail_lines:]
        return "\n".join(lines)

    # -- lifecycle --------------------------------------------------------------------------

    def command(self, port: int) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.backend_store_uri,
            "--host",
            _HOST,
            "--port",
            str(port),
            "--workers",
            str(self.workers),
        ]
        if self.serve_artifacts:
            cmd += ["--artifacts-destination", str(self.artifacts_dir)]
        else:
            cmd += ["--default-artifact-root", self.artifacts_dir.as_uri(), "--no-serve-artifacts"]
        cmd += list(self.extra_args)
        return cmd

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIP_PREFIXES)}
        env.update(NO_PHONE_HOME_ENV)
        env.update(
            {
                # Spawns ~7 huey consumers per server that outlive a SIGTERM to the launcher;
                # none of our tests need server-side jobs.
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                "PYTHONUNBUFFERED": "1",
                # The server must not read or write the developer's real home.
                "HOME": str(self.home_dir),
                "XDG_CONFIG_HOME": str(self.home_dir / ".config"),
                "XDG_DATA_HOME": str(self.home_dir / ".local" / "share"),
                "XDG_CACHE_HOME": str(self.home_dir / ".cache"),
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> MlflowServer:
        """Start the server and block until /health answers (or raise MlflowServerError)."""
        if self.is_running():
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        self.home_dir.mkdir(parents=True, exist_ok=True)

        attempts = 1 if self._requested_port is not None else _PORT_RETRIES
        for attempt in range(1, attempts + 1):
            port = self._requested_port or free_port()
            self._spawn(port)
            try:
                self._wait_until_healthy()
                return self
            except MlflowServerError:
                exited = not self.is_running()
                self.stop()
                # free_port() can race with another process grabbing the port; only that case
                # is worth another try.
                if attempt < attempts and exited and "address already in use" in self.log_text():
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self, port: int) -> None:
        self._port = port
        with self.log_path.open("ab") as log:
            log.write(f"\n=== starting: {' '.join(self.command(port))}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.command(port),
                cwd=self.root,  # a misconfigured server writes ./mlruns or ./mlartifacts here
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session = own process group, so stop() reaches uvicorn and any children.
                start_new_session=True,
            )
        self._finalizer = weakref.finalize(self, _kill_group_now, self._proc.pid)

    def _wait_until_healthy(self) -> None:
        assert self._proc is not None
        # No proxy handler: a developer's HTTP(S)_PROXY must not intercept loopback polling.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + self.startup_timeout
        last_error = "no attempt"
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise MlflowServerError(
                    f"mlflow server exited with code {code} before becoming healthy.\n"
                    f"log ({self.log_path}):\n{self.log_text()}"
                )
            try:
                with opener.open(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
                    last_error = f"HTTP {response.status}"
            except (urllib.error.URLError, OSError) as exc:
                last_error = repr(exc)
            time.sleep(0.1)
        raise MlflowServerError(
            f"mlflow server at {self.url} not healthy after {self.startup_timeout:.0f} s "
            f"(last error: {last_error}).\nlog ({self.log_path}):\n{self.log_text()}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the whole process group, then SIGKILL whatever is left after `timeout`."""
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid  # start_new_session=True makes the launcher its group leader
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        # The launcher can exit before its children do; wait for the group to drain.
        while time.monotonic() < deadline and _signal_group(pgid, 0):
            time.sleep(0.05)
        if _signal_group(pgid, signal.SIGKILL) or proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._proc = None

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid} port={self._port}" if self.is_running() else "stopped"
        return f"<MlflowServer {state} root={self.root}>"
