"""Azurite (Microsoft's Azure Storage emulator, from the npm registry): blob service on loopback.

Installed once per checkout with `npm install azurite@3` into `.work/node/` (git-ignored), then
started per test session: blob service only, in memory, HTTPS with a certificate from the
session's test CA, API-version check skipped (azure-storage-blob is usually newer than the
emulator), telemetry off, listening on 127.0.0.1 only.

Measured on this machine (Azurite 3.35, Node 20): install ~20 s the first time (186 MB of
node_modules), start ~1 s.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import weakref
from pathlib import Path

from support import REPO_ROOT, free_port

from .ca import ServerCert

AZURITE_SPEC = "azurite@3"
DEFAULT_NODE_DIR = REPO_ROOT / ".work" / "node"
# The emulator's single built-in account; its key is public (documented by Microsoft).
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
_INSTALL_TIMEOUT = 300.0
_START_TIMEOUT = 30.0
_PORT_RETRIES = 3


class AzuriteError(RuntimeError):
    """Azurite could not be installed or did not start."""


def azurite_bin(node_dir: Path = DEFAULT_NODE_DIR) -> Path:
    return node_dir / "node_modules" / ".bin" / "azurite-blob"


def ensure_azurite(node_dir: Path = DEFAULT_NODE_DIR) -> Path:
    """Install Azurite into `node_dir` unless it is there; return the `azurite-blob` launcher.

    A file lock serialises concurrent test sessions (pytest-xdist workers, two terminals) so
    they do not run `npm install` into the same folder at once.
    """
    node_dir.mkdir(parents=True, exist_ok=True)
    launcher = azurite_bin(node_dir)
    with (node_dir / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if launcher.exists():
            return launcher
        npm = shutil.which("npm")
        if npm is None:
            raise AzuriteError("npm is not installed; Azurite comes from the npm registry")
        env = dict(os.environ)
        env.update(
            {
                # No update check, no audit/funding requests: only the package download.
                "npm_config_update_notifier": "false",
                "npm_config_audit": "false",
                "npm_config_fund": "false",
            }
        )
        # --ignore-scripts: Azurite needs no install scripts, and none of its ~370 dependencies
        # should run code on this machine just because a test wanted a blob store.
        cmd = [npm, "install", "--prefix", str(node_dir), "--ignore-scripts", AZURITE_SPEC]
        proc = subprocess.run(
            cmd,
            cwd=node_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_INSTALL_TIMEOUT,
            check=False,
        )
        if proc.returncode != 0 or not launcher.exists():
            raise AzuriteError(
                f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                f"{proc.stderr[-4000:]}"
            )
        return launcher


def installed_version(node_dir: Path = DEFAULT_NODE_DIR) -> str | None:
    manifest = node_dir / "node_modules" / "azurite" / "package.json"
    try:
        version: str = json.loads(manifest.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    return version


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class Azurite:
    """One Azurite blob service process (HTTPS, in-memory) on a free loopback port."""

    def __init__(
        self,
        root: Path,
        cert: ServerCert,
        ca_bundle: Path,
        *,
        node_dir: Path = DEFAULT_NODE_DIR,
        debug: bool = False,
    ) -> None:
        self.root = Path(root)
        self.debug = debug
        self.cert = cert
        self.ca_bundle = ca_bundle
        self.node_dir = node_dir
        self.log_path = self.root / "azurite.log"
        self.debug_log_path = self.root / "azurite-debug.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise AzuriteError("Azurite not started")
        return self._port

    @property
    def blob_endpoint(self) -> str:
        """Path-style endpoint (account in the path), as Azurite documents for IP hosts."""
        return f"https://127.0.0.1:{self.port}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        return (
            "DefaultEndpointsProtocol=https;"
            f"AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self, tail: int = 100) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "<no azurite log>"
        return "\n".join(lines[-tail:])

    def command(self, launcher: Path, port: int) -> list[str]:
        cmd = [
            str(launcher),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            # In memory: nothing to clean up, and data dies with the process. (Azurite refuses
            # --location together with it; cwd is the box's folder anyway.)
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--loose",
            "--cert",
            str(self.cert.chain_path),
            "--key",
            str(self.cert.key_path),
        ]
        if self.debug:
            # Very verbose (every SAS check): only for diagnosing signature/permission errors.
            cmd += ["--debug", str(self.debug_log_path)]
        return cmd

    def start(self) -> Azurite:
        if self.is_running():
            return self
        launcher = ensure_azurite(self.node_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        home = self.root / "home"
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURITE_", "NODE_"))}
        env["HOME"] = str(home)  # Azurite must not touch the developer's home
        for attempt in range(1, _PORT_RETRIES + 1):
            port = free_port()
            self._port = port
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    self.command(launcher, port),
                    cwd=self.root,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # stop() signals the whole group by its id
                )
            self._finalizer = weakref.finalize(self, _kill_group, self._proc.pid)
            try:
                self._wait_until_ready()
                return self
            except AzuriteError:
                exited = not self.is_running()
                self.stop()
                if attempt < _PORT_RETRIES and exited and "EADDRINUSE" in self.log_text():
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait_until_ready(self) -> None:
        assert self._proc is not None
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        deadline = time.monotonic() + _START_TIMEOUT
        last = "no attempt"
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise AzuriteError(f"Azurite exited with code {code}:\n{self.log_text()}")
            try:
                with (
                    socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw,
                    context.wrap_socket(raw, server_hostname="127.0.0.1"),
                ):
                    # A completed TLS handshake with our CA: the service is up.
                    return
            except OSError as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise AzuriteError(f"Azurite not ready after {_START_TIMEOUT:.0f} s ({last}):\n"
                           f"{self.log_text()}")

    def stop(self, timeout: float = 10.0) -> None:
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait(timeout=5)
        # Node may leave no children, but a group kill is cheap insurance.
        _kill_group(proc.pid)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._proc = None
