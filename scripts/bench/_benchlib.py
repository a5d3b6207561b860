"""Shared pieces of the on-demand benchmarks in scripts/bench (not part of the test suite).

Everything runs on loopback in a temp folder that is removed at the end. Timed work always runs
as a subprocess so wall time and peak memory (ru_maxrss from wait4) are measured the same way for
amlpromote, the hand-written MLflow copy and `cp -r`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
MIB = 1024 * 1024

# Nothing phones home: telemetry is decided when mlflow is imported, so set it before that.
QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
os.environ.update(QUIET_ENV)


@dataclass
class Measured:
    """One timed subprocess: wall seconds, peak RSS in MiB, exit code, captured output."""

    seconds: float
    max_rss_mib: float
    returncode: int
    stdout: str
    stderr: str
    cpu_seconds: float = 0.0  # the child's own user + system time
    machine_busy: float = 0.0  # busy CPU seconds of the whole machine during the run
    # CPU seconds of what served the run (servers, emulators, the benchmark's own threads);
    # set by the caller that knows them
    serving_cpu: float = 0.0


GNU_TIME = "/usr/bin/time"


def run_measured(cmd: Sequence[str], env: dict[str, str] | None = None,
                 cwd: str | Path | None = None, timeout: float = 1800.0) -> Measured:
    """Run `cmd`, returning its wall time and its own peak RSS.

    Linux carries a process's peak RSS across exec from the image it replaced: a child forked
    (or vforked) from this process, which has mlflow imported, would report this process's
    few hundred MB as its own peak. So the command is started by GNU time, a tiny process whose
    child starts from a small image, and its %M (the child's ru_maxrss from wait4) is read.
    Without GNU time, the RSS falls back to this process's wait4 figure (an upper bound).
    """
    with tempfile.TemporaryDirectory(prefix="measure-") as scratch:
        rss_file = Path(scratch) / "rss"
        wrapped = list(cmd)
        if os.access(GNU_TIME, os.X_OK):
            wrapped = [GNU_TIME, "-f", "%M %U %S", "-o", str(rss_file), *wrapped]
        with open(Path(scratch) / "out", "w+b") as out, open(Path(scratch) / "err", "w+b") as err:
            busy_before = machine_busy_seconds()
            started = time.perf_counter()
            proc = subprocess.Popen(wrapped, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err)
            try:
                _, status, usage = _wait4_with_timeout(proc, timeout)
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(ChildProcessError):
                    os.wait4(proc.pid, 0)
                raise
            seconds = time.perf_counter() - started
            busy = machine_busy_seconds() - busy_before
            proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
            rss_kib = float(usage.ru_maxrss)
            cpu = usage.ru_utime + usage.ru_stime
            if rss_file.exists():
                lines = rss_file.read_text().splitlines()
                fields = lines[-1].split() if lines else []
                if len(fields) == 3 and fields[0].isdigit():
                    rss_kib, cpu = float(fields[0]), float(fields[1]) + float(fields[2])
            out.seek(0)
            err.seek(0)
            return Measured(seconds, rss_kib / 1024.0, proc.returncode,
                            out.read().decode(errors="replace"),
                            err.read().decode(errors="replace"), cpu, busy)


def _wait4_with_timeout(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, int, Any]:
    deadline = time.perf_counter() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            return pid, status, usage
        if time.perf_counter() > deadline:
            proc.kill()
            return os.wait4(proc.pid, 0)
        time.sleep(0.004)


def check(result: Measured, what: str) -> Measured:
    if result.returncode != 0:
        sys.stderr.write(f"\n{what} failed with exit code {result.returncode}\n"
                         f"--- stdout ---\n{result.stdout[-4000:]}\n"
                         f"--- stderr ---\n{result.stderr[-4000:]}\n")
        raise SystemExit(1)
    return result


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all CPUs; /proc/stat)."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(x) for x in handle.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    guest = sum(fields[8:10]) if len(fields) > 9 else 0  # already counted in user/nice
    return (sum(fields) - idle - guest) / _TICK


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of the live processes in a process group (e.g. a server)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid:  # pgrp
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def wait_for_quiet(limit: float = 0.25, window: float = 1.0, timeout: float = 60.0) -> float:
    """Wait until the machine's other load is below `limit` CPUs; returns the last reading.

    The benchmarks share their few CPUs with whatever else runs (test suites, servers); a run
    measured while another process burns a core says little about either tool.
    """
    deadline = time.monotonic() + timeout
    while True:
        before = machine_busy_seconds()
        time.sleep(window)
        load = (machine_busy_seconds() - before) / window
        if load <= limit or time.monotonic() > deadline:
            return load


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def temp_root(prefix: str) -> Iterator[Path]:
    """A scratch folder removed at the end, also on Ctrl-C and SIGTERM."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through every `finally`, servers included

    signal.signal(signal.SIGTERM, on_term)
    try:
        yield root
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(root, ignore_errors=True)


def child_env(root: Path, **extra: str) -> dict[str, str]:
    """Environment of a timed child: no MLflow/amlpromote settings leak in from the caller."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "AMLPROMOTE_"))}
    env.update(QUIET_ENV)
    env.update({
        # A user's profile file or default target must not change what is measured.
        "AMLPROMOTE_CONFIG": str(root / "no-config.toml"),
        "AMLPROMOTE_DATA_DIR": str(root / "amlpromote-data"),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    })
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------
# mlflow server, in its own process group


class Server:
    """`mlflow server` with sqlite and proxied artifacts on a loopback port.

    Started in its own session, so stop() reaches the launcher's uvicorn child and anything else
    it spawned (process-group kill).
    """

    def __init__(self, root: Path, name: str) -> None:
        self.root = root / name
        self.db = self.root / "mlflow.db"
        self.artifacts = self.root / "artifacts"
        self.log = self.root / "server.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pgid(self) -> int:
        assert self.proc is not None
        return self.proc.pid  # its own session: the launcher leads the group

    def start(self) -> Server:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        cmd = [PYTHON, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.db}",
               "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AMLPROMOTE_"))}
        env.update(QUIET_ENV)
        # Server-side jobs would spawn huey consumer processes that outlive the launcher; no
        # artifact or registry request uses them.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        env["HOME"] = str(self.root)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    def wait_healthy(self, timeout: float = 90.0) -> None:
        assert self.proc is not None
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited early; log:\n{self.tail()}")
            try:
                with opener.open(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"mlflow server not healthy after {timeout:.0f}s; log:\n{self.tail()}")

    def tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])
        except OSError:
            return "<no log>"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            if not _signal_group(proc.pid, sig):
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _signal_group(proc.pid, 0):
                proc.poll()  # reap the launcher so the group can empty
                time.sleep(0.1)
            if not _signal_group(proc.pid, 0):
                break
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False once nobody is left in it."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


@contextlib.contextmanager
def servers(root: Path, *names: str) -> Iterator[list[Server]]:
    started: list[Server] = []
    try:
        for name in names:
            started.append(Server(root, name).start())
        for server in started:  # they boot in parallel (~7 s each)
            server.wait_healthy()
        yield started
    finally:
        for server in started:
            server.stop()
