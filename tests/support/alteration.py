"""Target storage that changes a byte of a file after it was uploaded, for the --verify tests.

Three ways, one per kind of target storage, each deterministic (no sleeps, no races): the
alteration is made at a point the product has provably reached, and before it can go further.

- An MLflow server: `ServerArtifactAlteration` is a FlakyProxy `on_response` hook. When the
  real server has stored an artifact PUT and answered it, the hook flips a byte of the file in
  the server's artifact root before the answer is relayed, so everything the client does next
  (listing, read-back, registering) sees the altered file.
- A local store (sqlite or file store): there is no intermediary between the CLI and the disk.
  `run_cli_altering_local_file` runs the CLI in a child interpreter with a Python audit hook
  (PEP 578, `sys.addaudithook`) that watches `os.scandir`: when a folder under the target's
  artifact root that holds the watched file at its full size is listed, the hook flips one of
  its bytes before the listing proceeds. The product lists its staged folder only after every
  file was written and closed (`_check_staged`), and reads the files back only after that
  listing, so the byte changes between the write and the read-back, whatever the timing. No
  code of ours or of MLflow is replaced: the hook only observes the runtime's audit events.
- Azure blob storage: the box's "corrupt" blob fault (tests/azureml_box/blobs.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote

from support.cli import Run


def flip_byte(path: Path, offset: int = -1) -> None:
    """Invert the byte at `offset` (negative: from the end) of a file, in place: same inode,
    same size, other content."""
    with open(path, "r+b") as handle:
        handle.seek(offset, os.SEEK_END if offset < 0 else os.SEEK_SET)
        where = handle.tell()
        byte = handle.read(1)
        if len(byte) != 1:
            raise ValueError(f"{path} has no byte {offset}")
        handle.seek(where)
        handle.write(bytes([byte[0] ^ 0xFF]))


_ARTIFACT_PUT = re.compile(r"^/api/2\.0/mlflow-artifacts/artifacts/(?P<rel>[^?]+)")


class ServerArtifactAlteration:
    """`FlakyProxy(server.url, on_response=ServerArtifactAlteration(server.artifacts_dir,
    "data/weights.bin"))`: after the first successful artifact PUT of a file whose path ends
    with `file` (and only once per `arm()`), flip a byte of what the server stored."""

    def __init__(self, artifacts_dir: Path, file: str, offset: int = -1) -> None:
        self.artifacts_dir = artifacts_dir
        self.file = file
        self.offset = offset
        self.altered: list[Path] = []  # the stored files that were changed, in order
        self._armed = False
        self._lock = threading.Lock()

    def arm(self) -> None:
        with self._lock:
            self._armed = True

    def disarm(self) -> None:
        with self._lock:
            self._armed = False

    def __call__(self, method: str, path: str, status: int) -> None:
        found = _ARTIFACT_PUT.match(path)
        if method != "PUT" or found is None or not 200 <= status < 300:
            return
        rel = unquote(found["rel"])
        if not rel.endswith("/" + self.file):
            return
        with self._lock:
            if not self._armed:
                return
            self._armed = False
            # `mlflow server --artifacts-destination D` stores mlflow-artifacts:/X at D/X.
            stored = self.artifacts_dir / rel
            flip_byte(stored, self.offset)
            self.altered.append(stored)


# In the child: an audit hook that flips the watched file's byte once (installed first), ...
_ALTER_HOOK = """
import os, sys
root, rel, size, offset, marker = os.environ.pop("AMLPROMOTE_TEST_ALTER").split("\\n")
size, offset, state = int(size), int(offset), {"done": False}

def alter(event, args):
    if event != "os.scandir" or state["done"] or not args or args[0] is None:
        return
    folder = os.path.realpath(os.fsdecode(args[0])) if not isinstance(args[0], int) else ""
    if not folder.startswith(root):
        return
    candidate = os.path.join(folder, rel)
    try:
        if os.stat(candidate).st_size != size:
            return  # not there yet, or not yet at its full size
    except OSError:
        return
    state["done"] = True
    with open(candidate, "r+b") as handle:
        handle.seek(offset, os.SEEK_END if offset < 0 else os.SEEK_SET)
        where = handle.tell()
        byte = handle.read(1)
        handle.seek(where)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with open(marker, "w") as note:
        note.write(candidate)

sys.addaudithook(alter)
"""
# ... then the CLI's own entry point, as the console script runs it.
_CLI_MAIN = """
import sys
from amlpromote.cli.app import main
sys.argv = ["amlpromote", *sys.argv[1:]]
main()
"""


def run_cli_altering_local_file(
    *args: str,
    root: Path,
    file: str,
    size: int,
    marker: Path,
    offset: int = -1,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 180,
) -> Run:
    """`amlpromote ARGS` in a child interpreter, where the first listing of a folder under
    `root` that holds `file` (relative to it) at `size` bytes finds one byte of it inverted
    (`offset`, negative: from the end). `marker` is written with the altered file's path once
    that happened."""
    environment = {**os.environ, **(env or {})}
    environment["AMLPROMOTE_TEST_ALTER"] = "\n".join(
        (os.path.realpath(root), file, str(size), str(offset), str(marker)))
    script = _ALTER_HOOK + _CLI_MAIN
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script, *args],
                          env=environment, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False)
    return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)
