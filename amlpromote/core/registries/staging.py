"""Who owns a staging container, and when another run may remove it (README "Leftovers").

Every staging container (an MLflow LoggedModel, or a run where there are none) is tagged with
its owner — host, boot, pid and the process's start time — and a heartbeat the owner renews
while it runs. A later run of the same promotion removes a container only when its owner is
provably gone:

- same host and boot, and the pid is not running, or runs a different process (another start
  time: the pid was reused);
- same host, another boot (the machine restarted since);
- or, when that cannot be told (another host, or no start time to compare), the heartbeat is
  older than `STALE_AFTER`: the owner stopped renewing it.

A live owner on this host keeps its staging however old its heartbeat (it may be stuck, but it
is not gone).

A container without these tags (staged by an older amlpromote) is never removed. Nothing here
talks to a registry: core/registries/mlflow_target.py reads and writes the tags.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

OWNER = "amlpromote.staging.owner"
HEARTBEAT = "amlpromote.staging.heartbeat"
NAME = "amlpromote.staging.name"  # the target model the container was staged for

# The owner renews its heartbeat this often while it stages and registers...
HEARTBEAT_SECONDS = 60.0
# ... and a container whose heartbeat is older than this belongs to a run that stopped. Long
# enough that a registry answering slowly for a few minutes does not make a live run look dead.
STALE_AFTER = 15 * 60.0


@dataclass(frozen=True)
class Owner:
    host: str
    boot: str  # the kernel's boot id ("" where unknown)
    pid: int
    started: str  # the process's start time in clock ticks since boot ("" where unknown)

    def tag(self) -> str:
        return f"{self.host} {self.boot or '-'} {self.pid} {self.started or '-'}"

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        parts = text.split(" ")
        if len(parts) != 4 or not parts[2].isdigit():
            return None
        host, boot, pid, started = parts
        return cls(host, "" if boot == "-" else boot, int(pid),
                   "" if started == "-" else started)


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _boot_id() -> str:
    return _read("/proc/sys/kernel/random/boot_id")


def _start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat (after the parenthesised command, which may hold spaces)."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat or ")" not in stat:
        return ""
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 else ""


def this_process() -> Owner:
    pid = os.getpid()
    return Owner(socket.gethostname(), _boot_id(), pid, _start_time(pid))


def _running(pid: int) -> bool:
    if sys.platform == "win32":
        return True  # no cheap, safe probe: rely on the heartbeat
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def owner_tags(now: float | None = None) -> dict[str, str]:
    return {OWNER: this_process().tag(), HEARTBEAT: str(int(now or time.time()))}


def owner_gone(tags: dict[str, str], now: float | None = None) -> bool:
    """Whether the run that staged a container with these tags has provably stopped."""
    owner = Owner.parse(tags.get(OWNER, ""))
    if owner is None:
        return False
    me = this_process()
    if owner == me:
        return False
    if owner.host == me.host:
        if owner.boot and me.boot and owner.boot != me.boot:
            return True
        if not _running(owner.pid):
            return True
        if owner.started:
            # The pid runs the process that staged it, or another one that reused the pid.
            return owner.started != _start_time(owner.pid)
    try:
        beat = float(tags.get(HEARTBEAT, ""))
    except ValueError:
        return False
    return (now or time.time()) - beat > STALE_AFTER


class Heartbeat:
    """Renews a container's heartbeat tag from a daemon thread until stopped; a failed renewal
    is ignored (the next one may work, and a missed one only makes the container look older)."""

    def __init__(self, renew: Callable[[dict[str, str]], None],
                 every: float = HEARTBEAT_SECONDS) -> None:
        self._renew = renew
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="amlpromote-heartbeat",
                                        daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            with contextlib.suppress(Exception):
                self._renew({HEARTBEAT: str(int(time.time()))})
