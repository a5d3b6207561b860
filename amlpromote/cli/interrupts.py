"""Ctrl-C and SIGTERM: stop within 2 seconds and say truthfully what was done.

SIGINT raises KeyboardInterrupt in the main thread, as Python does; SIGTERM (what CI runners,
`timeout` and supervisors send) raises `Terminated`, a KeyboardInterrupt, so the same cleanup
runs for both (core/promote/promote.py removes the staging and tells what was registered; core/
transfer.py stops its workers). The CLI reports the `Interrupted` error through its one error
path and ends the process with `exit_now`, without waiting for worker threads stuck in I/O.

Installed only by `main()`: a program that imports amlpromote keeps its own signal handling.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import NoReturn

from amlpromote.core.errors import Interrupted, Terminated, interrupt_signal

# A second signal this soon after the first is ignored: the first one's exit is on its way,
# bounded by core's cleanup budget. Later than this, the cleanup is taken to hang and the
# process ends at once.
_PATIENCE = 3.0

_first: tuple[int, float] | None = None
_said = False  # an `Interrupted` error line was printed for it
# What the running command's work completed (Output.finish): a signal after it, even one that
# lands outside `run()` as the result is printed, says so rather than "nothing".
_finished: str | None = None


def install() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, _handle)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _handle)


def ending() -> None:
    """The command has ended and said so: SIGINT and SIGTERM are ignored for the rest of the
    interpreter's exit (atexit callbacks, thread joins, module teardown), where a handler
    raising would print a traceback nothing catches, and the default action Python restores
    late in its exit would end the process with no word. The exit takes milliseconds; a
    supervisor's SIGKILL still ends it."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def said() -> None:
    """An `Interrupted` failure was reported (Output.fail)."""
    global _said
    _said = True


def finished(what: str | None) -> None:
    """The command's work completed `what` (None: a new command line starts)."""
    global _finished
    _finished = what


def unsaid() -> bool:
    """A signal was received and no error line has said so yet."""
    return _first is not None and not _said


def received() -> int | None:
    """The first signal received, if any."""
    return _first[0] if _first else None


def _handle(signum: int, frame: FrameType | None) -> None:
    global _first
    if _first is not None:
        if time.monotonic() - _first[1] < _PATIENCE:
            return
        print("error: interrupted again; exiting without cleanup", file=sys.stderr)
        exit_now(128 + signum)
    _first = (signum, time.monotonic())
    if signum == getattr(signal, "SIGTERM", None):
        raise Terminated()
    raise KeyboardInterrupt()


def as_error(exc: KeyboardInterrupt) -> Interrupted:
    """An interrupt that core did not report itself: it landed before anything was staged,
    or after the work was done (what it did: Output.finish)."""
    return after_the_work(interrupt_signal(exc)) or Interrupted(
        "stopped before anything was changed", hint="run the same command again",
        signum=interrupt_signal(exc))


def after_the_work(signum: int) -> Interrupted | None:
    """The interrupt's error when the command's work was complete (Output.finish), else None."""
    if _finished is None:
        return None
    return Interrupted(f"it came after the work was done: {_finished}",
                       hint="nothing needs to run again", signum=signum)


def exit_now(code: int) -> NoReturn:
    """Flush what was printed and end the process now.

    Not `sys.exit`: the interpreter's exit joins every worker thread of a ThreadPoolExecutor
    (and non-daemon threads), and after an interrupt some are blocked in a socket read or a
    retry pause for up to minutes. Everything they were doing is abandoned on purpose: the
    staging was removed (or left for the next run, README "Leftovers") before this is called.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
