"""What the interrupt and leftover tests share: a model big enough to be midway through, a CLI
process to signal or kill while a transfer is provably in progress, and the bytes a target
keeps on disk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from support.flaky_proxy import FlakyProxy
from support.models import register_raw_model

PARTS = 4
PART_SIZE = 8 * 1024 * 1024
MLMODEL = b"artifact_path: model\nflavors: {}\n"
# The part whose download (or upload) the proxy refuses with a long Retry-After: the run then
# sits midway, the other parts written, for as long as the test needs.
STALLED = f"part-{PARTS - 1}.bin"
STALL_RETRY_AFTER = 10
ARTIFACT_GET = r"^GET /api/2\.0/mlflow-artifacts/artifacts/.*/"
ARTIFACT_PUT = r"^PUT /api/2\.0/mlflow-artifacts/artifacts/.*/"


@dataclass(frozen=True)
class BigModel:
    name: str
    version: str
    bytes: int  # what one copy of the version's files takes


def register_big_model(registry_uri: str, name: str, scratch: Path) -> BigModel:
    scratch.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes | os.PathLike[str]] = {"MLmodel": MLMODEL}
    for index in range(PARTS):
        path = scratch / f"part-{index}.bin"
        with path.open("wb") as handle:
            handle.write(os.urandom(PART_SIZE))
        files[f"weights/part-{index}.bin"] = path
    version = register_raw_model(registry_uri, name, files)
    for index in range(PARTS):
        (scratch / f"part-{index}.bin").unlink()
    return BigModel(name, version, len(MLMODEL) + PARTS * PART_SIZE)


def stall(proxy: FlakyProxy, route: str = ARTIFACT_GET) -> None:
    """Refuse every transfer of the STALLED part, asking for a retry in 10 s."""
    proxy.configure(always_fail=True, retry_after=STALL_RETRY_AFTER,
                    match=route + STALLED.replace(".", r"\.") + "$")


def process_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMLPROMOTE_", "MLFLOW_"))}
    env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"})
    env.update(extra or {})
    return env


def start_cli(*args: str, cwd: Path, env: Mapping[str, str] | None = None) \
        -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "amlpromote", *args], cwd=cwd,
                            env=process_env(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_until(proc: subprocess.Popen[str], ready: Callable[[], bool],
               timeout: float = 120) -> None:
    """Poll `ready` until it holds; fail if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stdout, stderr = proc.communicate()
            raise AssertionError(f"the run ended early ({proc.returncode}):\n{stdout}{stderr}")
        if ready():
            return
        time.sleep(0.05)
    proc.kill()
    proc.communicate()
    raise AssertionError("the run never got midway")


@dataclass(frozen=True)
class Ended:
    code: int
    stdout: str
    stderr: str
    seconds: float  # from the signal to the process's end


def signal_and_wait(proc: subprocess.Popen[str], signum: int, timeout: float = 60) -> Ended:
    sent = time.monotonic()
    proc.send_signal(signum)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    seconds = time.monotonic() - sent
    return Ended(proc.returncode, stdout, stderr, seconds)


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def bytes_under(folder: Path) -> int:
    """Bytes of every file under `folder` (0 when it does not exist)."""
    if not folder.exists():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def parts_under(folder: Path) -> set[str]:
    return {p.name for p in folder.rglob("part-*.bin")} if folder.exists() else set()
