"""`LocalPlatform`: the EndpointPlatform of local online endpoints.

Each endpoint is a server process (server.py) started detached in its own session, so it
outlives the command that created it; this module starts it, drives its admin API, scores
through it with the endpoint key, and stops it by its pid. The state it reads is state.py's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from amlpromote.core.deploy import scoring
from amlpromote.core.deploy.local import state as st
from amlpromote.core.deploy.platform import (
    DeploymentFailed,
    DeploymentInfo,
    DeploymentSpec,
    DeploymentTimeout,
    EndpointBusy,
    EndpointInfo,
    Invocation,
    Progress,
    endpoints_command,
)
from amlpromote.core.errors import BadInput, NotFound, OperationFailed, Unreachable

SERVER_MODULE = "amlpromote.core.deploy.local.server"
STOP_GRACE_SECONDS = 5.0
# Worker processes per endpoint, each with every model loaded: Python serves one request at a
# time per process (the GIL), so concurrent clients need processes; two measured twice the
# requests/s of one on a 2-CPU machine (scripts/bench/serve.py). Like Azure ML's WORKER_COUNT.
WORKERS = max(1, min(2, os.cpu_count() or 1))
# Servers this process started, so it can reap them (a dead child it never waited for stays a
# zombie, and would hold its pid until this process exits).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _remaining(deadline: float) -> float:
    return deadline - time.monotonic()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class LocalPlatform:
    """Local online endpoints: loopback servers with Azure ML's scoring contract."""

    kind = "local"
    place = "--local"  # local endpoints are this machine's, whatever the target

    # -- reading -------------------------------------------------------------------------------

    def _folder(self, name: str) -> Path:
        return st.endpoint_dir(name)

    def _live_state(self, name: str) -> st.EndpointState:
        folder = self._folder(name)
        if not folder.is_dir():
            raise NotFound(f"no local endpoint {name!r}",
                           hint="create it with a deploy to the local platform")
        state = st.read_state(folder)
        if state is None or not st.probe(state):
            raise OperationFailed(f"local endpoint {name!r} is stale: its server is not running",
                                  hint="deploy to it again to replace it, or delete it")
        return state

    def _info(self, name: str, folder: Path) -> EndpointInfo:
        state = st.read_state(folder)
        live = state is not None and st.probe(state)
        if state is None:
            return EndpointInfo(name=name, platform=self.kind, scoring_uri="", auth_mode="key",
                                state="Stale")
        deployments = [
            DeploymentInfo(name=d, model_asset_id=record.model.get("asset_id", ""),
                           state=record.state if live else "Stale")
            for d, record in state.deployments.items()
        ]
        # A stale endpoint routes nothing: no traffic is reported, so a rollout plans against
        # it as against a new endpoint (create_deployment then replaces the server).
        return EndpointInfo(name=name, platform=self.kind, scoring_uri=state.scoring_uri,
                            auth_mode="key", state="Running" if live else "Stale",
                            traffic=dict(state.traffic) if live else {},
                            mirror=dict(state.mirror) if live else {},
                            deployments=deployments)

    def get_endpoint(self, name: str) -> EndpointInfo | None:
        folder = self._folder(name)
        if not folder.is_dir():
            return None
        return self._info(name, folder)

    @contextlib.contextmanager
    def reserve(self, endpoint: str) -> Iterator[None]:
        """One rollout at a time per local endpoint, across processes: an flock on a file
        beside the endpoints' folders (a file, so listings skip it), released by the kernel
        even when the holder is killed. A second deploy fails at once, before it reads or
        changes anything."""
        import fcntl

        root = st.endpoints_root()
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f".{endpoint}.deploy-lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip()
                raise EndpointBusy(
                    f"another deploy to local endpoint {endpoint!r} is running"
                    + (f" (pid {holder})" if holder.isdigit() else ""),
                    hint="wait for it to finish and run again") from None
            handle.truncate(0)
            handle.write(str(os.getpid()))
            handle.flush()
            try:
                yield
            finally:
                handle.truncate(0)
                handle.flush()

    def list_endpoints(self) -> list[EndpointInfo]:
        root = st.endpoints_root()
        if not root.is_dir():
            return []
        return [self._info(folder.name, folder) for folder in sorted(root.iterdir())
                if folder.is_dir()]

    def get_key(self, endpoint: str) -> str:
        folder = self._folder(endpoint)
        try:
            return st.read_secret(folder, st.KEY_FILE)
        except OSError:
            raise NotFound(f"no key for local endpoint {endpoint!r}") from None

    # -- the admin API -------------------------------------------------------------------------

    def _admin(self, state: st.EndpointState, method: str, path: str,
               doc: dict[str, Any] | None = None, timeout: float = 30.0) -> tuple[int, Any]:
        import requests

        token = st.read_secret(self._folder(state.name), st.ADMIN_TOKEN_FILE)
        try:
            response = requests.request(
                method, f"{state.admin_url}{st.ADMIN_PREFIX}/{path}", json=doc,
                headers={"Authorization": f"Bearer {token}"}, timeout=max(timeout, 0.5),
                proxies={"http": "", "https": ""})
        except requests.Timeout:
            raise DeploymentTimeout(f"local endpoint {state.name!r} did not answer "
                                    f"{method} {path} in time") from None
        except requests.RequestException as exc:
            raise Unreachable(f"local endpoint {state.name!r} cannot be reached: "
                              f"{type(exc).__name__}") from None
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, {"message": response.text[:300]}

    # -- endpoint lifecycle --------------------------------------------------------------------

    def create_endpoint(self, name: str, auth_mode: str, progress: Progress,
                        deadline: float) -> EndpointInfo:
        """Start the endpoint's server (a live one is kept; a stale one is replaced)."""
        if auth_mode.lower() != "key":
            raise BadInput(f"local endpoints use key auth, not {auth_mode!r}")
        folder = self._folder(name)
        state = st.read_state(folder) if folder.is_dir() else None
        if state is not None and st.probe(state):
            return self._info(name, folder)
        if folder.exists():
            progress(f"endpoint {name}", "Replacing stale", 0.0)
            self._stop(folder, state)
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        st.new_secret(folder, st.KEY_FILE)
        st.new_secret(folder, st.ADMIN_TOKEN_FILE)
        started = time.monotonic()
        env = dict(os.environ)
        env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        env.setdefault("DO_NOT_TRACK", "true")
        with (folder / st.LOG_FILE).open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", SERVER_MODULE, "--state-dir", str(folder),
                 "--workers", str(WORKERS)],
                cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        _CHILDREN[proc.pid] = proc
        while True:
            elapsed = time.monotonic() - started
            progress(f"endpoint {name}", "Creating", elapsed)
            if proc.poll() is not None:
                raise DeploymentFailed(f"the server of local endpoint {name!r} exited at start "
                                       f"(exit code {proc.returncode})",
                                       logs=_tail(folder / st.LOG_FILE))
            state = st.read_state(folder)
            if state is not None and state.pid == proc.pid and st.probe(state, timeout=0.5):
                return self._info(name, folder)
            if _remaining(deadline) <= 0:
                self._stop(folder, state)
                raise DeploymentTimeout(f"the server of local endpoint {name!r} did not answer "
                                        f"in {elapsed:.0f}s")
            time.sleep(0.05)

    def delete_endpoint(self, endpoint: str, progress: Progress, deadline: float) -> None:
        folder = self._folder(endpoint)
        if not folder.is_dir():
            raise NotFound(f"no local endpoint {endpoint!r}")
        progress(f"endpoint {endpoint}", "Deleting", 0.0)
        self._stop(folder, st.read_state(folder))
        shutil.rmtree(folder, ignore_errors=True)

    def _stop(self, folder: Path, state: st.EndpointState | None) -> None:
        """SIGTERM the server's process group, then SIGKILL; only if the pid is our server."""
        if state is None or not st.pid_alive(state.pid) or not st.is_our_server(state.pid, folder):
            self._reap(state.pid if state else 0)
            return
        for sig, grace in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                # Its own session: the server leads its group, which also holds anything it ran.
                os.killpg(state.pid, sig)
            until = time.monotonic() + grace
            while time.monotonic() < until:
                self._reap(state.pid)
                if not st.pid_alive(state.pid):
                    self._reap(state.pid, wait=1.0)  # it may have died after the first look
                    return
                time.sleep(0.05)

    @staticmethod
    def _reap(pid: int, wait: float = 0.0) -> None:
        """Collect the exit of a server this process started (no-op for any other pid)."""
        proc = _CHILDREN.get(pid)
        if proc is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait) if wait else proc.poll()
        if proc.returncode is not None:
            _CHILDREN.pop(pid, None)

    # -- deployments ---------------------------------------------------------------------------

    def create_deployment(self, spec: DeploymentSpec, progress: Progress,
                          deadline: float) -> DeploymentInfo:
        """Load the model in the endpoint's server (a stale endpoint's server is replaced
        first); DeploymentFailed (with its log) if it cannot load. The deployment takes no
        traffic until set_traffic."""
        if not spec.model.path:
            raise BadInput(f"deployment {spec.name!r}: the model version has no local files "
                           "to serve")
        folder = self._folder(spec.endpoint)
        recorded = st.read_state(folder) if folder.is_dir() else None
        if folder.is_dir() and (recorded is None or not st.probe(recorded)):
            # A deploy to a stale endpoint replaces it: a new server, no old deployments.
            self.create_endpoint(spec.endpoint, "key", progress, deadline)
        state = self._live_state(spec.endpoint)
        progress(f"deployment {spec.name}", "Creating", 0.0)
        started = time.monotonic()
        status, doc = self._admin(state, "PUT", f"deployments/{spec.name}", {
            "path": str(Path(spec.model.path).resolve()),
            "model": spec.model.as_dict(),
            "digest": spec.model.digest,
        }, timeout=_remaining(deadline))
        if status == 409:
            # Another operation holds the deployment, or it takes traffic: nothing changed.
            raise EndpointBusy(str(doc.get("message") or "another operation is running"),
                               hint="wait for the other deploy to finish and run again")
        progress(f"deployment {spec.name}", "Succeeded" if status == 200 else "Failed",
                 time.monotonic() - started)
        if status != 200:
            message = str(doc.get("message") or f"load failed with HTTP {status}")
            # The rollout names the deployment ("deployment green failed: ...").
            raise DeploymentFailed(message,
                                   hint="install what the model needs in this environment, "
                                        "or serve it on Azure ML",
                                   logs=str(doc.get("logs") or ""))
        return DeploymentInfo(name=spec.name, model_asset_id=spec.model.asset_id,
                              state="Succeeded", warnings=list(doc.get("warnings") or []))

    def delete_deployment(self, endpoint: str, deployment: str, progress: Progress,
                          deadline: float) -> None:
        state = self._live_state(endpoint)
        progress(f"deployment {deployment}", "Deleting", 0.0)
        status, doc = self._admin(state, "DELETE", f"deployments/{deployment}",
                                  timeout=_remaining(deadline))
        if status == 409:
            raise BadInput(str(doc.get("message")))
        if status != 200:
            raise OperationFailed(f"deleting deployment {deployment!r} failed: "
                                  f"{doc.get('message')}")

    def set_traffic(self, endpoint: str, traffic: dict[str, int], mirror: dict[str, int],
                    progress: Progress, deadline: float) -> None:
        """Validated as Azure ML validates it: live traffic sums to 100 (or is all 0), mirror
        traffic is at most 50, every name is a deployment of the endpoint, and a deployment
        takes live or mirror traffic, not both."""
        state = self._live_state(endpoint)
        validate_traffic(endpoint, traffic, mirror, set(state.deployments))
        progress(f"endpoint {endpoint}", "Updating traffic", 0.0)
        status, doc = self._admin(state, "PUT", "traffic", {"traffic": traffic, "mirror": mirror},
                                  timeout=_remaining(deadline))
        if status == 400:
            raise BadInput(str(doc.get("message")))
        if status == 409:
            raise EndpointBusy(str(doc.get("message")),
                               hint=f"wait until {endpoints_command(self, 'show ' + endpoint)}"
                                    " shows it Succeeded, and set the traffic again")
        if status != 200:
            raise OperationFailed(f"setting traffic failed: {doc.get('message')}")

    def get_logs(self, endpoint: str, deployment: str, tail: int = 50) -> str:
        folder = self._folder(endpoint)
        state = st.read_state(folder) if folder.is_dir() else None
        if state is None:
            raise NotFound(f"no local endpoint {endpoint!r}")
        if st.probe(state):
            status, doc = self._admin(state, "GET", f"deployments/{deployment}/logs?tail={tail}")
            if status == 404:
                raise NotFound(str(doc.get("message")))
            return str(doc.get("logs") or "")
        # A stale server cannot answer: its log file still has every line it wrote.
        tag = f" [{deployment}] "
        lines = [line for line in _tail(folder / st.LOG_FILE, 100_000).splitlines()
                 if tag in line]
        return "\n".join(lines[-tail:]) if tail > 0 else ""

    # -- scoring -------------------------------------------------------------------------------

    def invoke(self, endpoint: str, body: bytes, deployment: str | None = None,
               content_type: str = "application/json", timeout: float = 90.0) -> Invocation:
        import requests

        state = self._live_state(endpoint)
        if deployment is not None:
            # Named by the user: an unknown one is "not found", as on Azure ML, not a 404 later.
            self._info(endpoint, self._folder(endpoint)).require_deployment(deployment)
        headers = {"Authorization": f"Bearer {self.get_key(endpoint)}",
                   "Content-Type": content_type}
        if deployment:
            headers[scoring.DEPLOYMENT_HEADER] = deployment
        started = time.perf_counter()
        try:
            response = requests.post(state.scoring_uri, data=body, headers=headers,
                                     timeout=timeout, proxies={"http": "", "https": ""})
        except requests.RequestException as exc:
            raise Unreachable(f"local endpoint {endpoint!r} cannot be reached: "
                              f"{type(exc).__name__}") from None
        return Invocation(status=response.status_code, body=response.content,
                          headers=dict(response.headers),
                          seconds=time.perf_counter() - started)


def validate_traffic(endpoint: str, traffic: dict[str, int], mirror: dict[str, int],
                     deployments: set[str]) -> None:
    """BadInput for a traffic/mirror setting Azure ML would refuse."""
    for kind, split in (("traffic", traffic), ("mirror traffic", mirror)):
        for name, percent in split.items():
            if name not in deployments:
                raise BadInput(f"{kind} names {name!r}, which is not a deployment of endpoint "
                               f"{endpoint!r}", hint="deployments: " + (", ".join(
                                   sorted(deployments)) or "none"))
            if not isinstance(percent, int) or not 0 <= percent <= 100:
                raise BadInput(f"{kind} for {name!r} must be a whole percent 0-100, "
                               f"not {percent!r}")
    total = sum(traffic.values())
    if total not in (0, 100):
        raise BadInput(f"traffic of endpoint {endpoint!r} must sum to 100 (or 0), not {total}: "
                       + json.dumps(traffic))
    if sum(mirror.values()) > 50:
        raise BadInput(f"mirror traffic of endpoint {endpoint!r} is at most 50 percent, not "
                       f"{sum(mirror.values())}")
    both = [n for n, p in mirror.items() if p > 0 and traffic.get(n, 0) > 0]
    if both:
        raise BadInput(f"deployment {both[0]!r} cannot take live and mirror traffic at once")
