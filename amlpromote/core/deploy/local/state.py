"""On-disk state of local online endpoints: one folder per endpoint under
`data_dir()/endpoints/NAME`.

    state.json   port, admin port, pid, instance id, created, deployments, traffic, mirror,
                 workers (atomic writes; never a secret)
    key          the endpoint's primary scoring key (0600)
    admin-token  the token of the server's admin API (0600)
    server.log   the server's stdout/stderr

The server (server.py) writes state.json; the platform (platform.py) creates the folder and the
secrets and reads the state. A state is trusted only when its pid is alive and its port answers
liveness with the same instance id (`probe`), otherwise it is reported as stale.
Stdlib only: the server imports this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
KEY_FILE = "key"
ADMIN_TOKEN_FILE = "admin-token"
LOG_FILE = "server.log"
# Answered by the liveness routes, so a client can tell our server from whatever else took the
# port after ours died.
SERVER_NAME = "amlpromote-local-endpoint"
ADMIN_PREFIX = "/.amlpromote"


def endpoints_root() -> Path:
    """`data_dir()/endpoints` (config is imported here only: the server gets its folder)."""
    from amlpromote.core.config import data_dir

    return data_dir() / "endpoints"


def endpoint_dir(name: str) -> Path:
    return endpoints_root() / name


@dataclass
class DeploymentRecord:
    model: dict[str, str]  # {name, version, asset_id}
    path: str
    digest: str | None = None
    state: str = "Succeeded"  # Succeeded | Failed
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class EndpointState:
    name: str
    port: int
    pid: int
    instance_id: str
    created: str
    deployments: dict[str, DeploymentRecord] = field(default_factory=dict)
    traffic: dict[str, int] = field(default_factory=dict)
    mirror: dict[str, int] = field(default_factory=dict)
    # The admin API's own port, on the first worker only (the scoring port is shared by every
    # worker process, so an admin request there could reach any of them).
    admin_port: int = 0
    workers: int = 1

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> EndpointState:
        records = doc.get("deployments") or {}
        deployments = {name: DeploymentRecord(**record) for name, record in records.items()}
        return cls(name=str(doc["name"]), port=int(doc["port"]), pid=int(doc["pid"]),
                   instance_id=str(doc["instance_id"]), created=str(doc["created"]),
                   deployments=deployments, traffic=dict(doc.get("traffic") or {}),
                   mirror=dict(doc.get("mirror") or {}),
                   admin_port=int(doc.get("admin_port") or doc["port"]),
                   workers=int(doc.get("workers") or 1))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def scoring_uri(self) -> str:
        return f"{self.base_url}/score"


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def write_state(folder: Path, state: EndpointState) -> None:
    write_atomic(folder / STATE_FILE, json.dumps(state.as_json(), indent=2).encode())


def read_state(folder: Path) -> EndpointState | None:
    """The recorded state, or None when there is none or it cannot be read (a torn folder)."""
    try:
        return EndpointState.from_json(json.loads((folder / STATE_FILE).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def new_secret(folder: Path, file_name: str) -> str:
    """Generate a secret into a 0600 file (created with that mode: never readable by others)."""
    secret = secrets.token_urlsafe(32)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(secret)
    return secret


def read_secret(folder: Path, file_name: str) -> str:
    return (folder / file_name).read_text().strip()


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): kill(0) is all we know
    return stat[stat.rindex(")") + 2:].split(" ", 1)[0] != "Z"


def is_our_server(pid: int, folder: Path) -> bool:
    """Whether `pid` is the server of `folder` (a recycled pid must never be signalled)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return pid_alive(pid)
    return b"amlpromote.core.deploy.local.server" in argv and str(folder).encode() in argv


def liveness(port: int, timeout: float = 1.0) -> dict[str, Any] | None:
    """The liveness document on `port`, or None when nothing (or not our server) answers."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/health", timeout=timeout) as response:
            doc = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("server") != SERVER_NAME:
        return None
    return doc


def probe(state: EndpointState, timeout: float = 1.0) -> bool:
    """True when the recorded server really is up: its pid lives and its port answers with the
    recorded instance id. Anything else is stale and must not be trusted."""
    if not pid_alive(state.pid):
        return False
    doc = liveness(state.port, timeout)
    return doc is not None and doc.get("instance") == state.instance_id
