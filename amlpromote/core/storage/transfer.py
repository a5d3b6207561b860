"""Streaming, parallel copies of a model's files with a content digest computed in the same pass.

The digest of a model is sha256 over its manifest: one line `<sha256 of file>  <relative path>`
per file, sorted by path (the `sha256sum` format), so it depends on the bytes and the layout and
on nothing else. Every byte is read once: hashed and written from the same buffer.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Protocol

from amlpromote.core.errors import Unreachable
from amlpromote.core.retry import RetryPolicy, TransientError, call_with_retry
from amlpromote.core.storage.artifacts import ArtifactFile, ArtifactSink, ArtifactSource


@dataclass(frozen=True)
class ManifestEntry:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ArtifactManifest:
    entries: tuple[ManifestEntry, ...]

    @classmethod
    def of(cls, entries: list[ManifestEntry]) -> ArtifactManifest:
        return cls(tuple(sorted(entries, key=lambda e: e.path)))

    @property
    def digest(self) -> str:
        hasher = hashlib.sha256()
        for entry in self.entries:
            hasher.update(f"{entry.sha256}  {entry.path}\n".encode())
        return "sha256:" + hasher.hexdigest()

    @property
    def files(self) -> int:
        return len(self.entries)

    @property
    def bytes(self) -> int:
        return sum(e.size for e in self.entries)

    def text(self) -> str:
        return "".join(f"{e.sha256}  {e.path}\n" for e in self.entries)


class TransferProgress(Protocol):
    """Callbacks a caller supplies to watch a transfer; called from worker threads."""

    def start(self, description: str, files: int, total_bytes: int | None) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def file_done(self, path: str) -> None: ...

    def finish(self) -> None: ...


class NoProgress:
    def start(self, description: str, files: int, total_bytes: int | None) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def file_done(self, path: str) -> None:
        pass

    def finish(self) -> None:
        pass


def default_workers() -> int:
    """AMLPROMOTE_PARALLEL, else 8. Its value was checked when the command started
    (core/settings.py); an empty one counts as unset, as for every AMLPROMOTE_* variable."""
    return max(1, int(os.environ.get("AMLPROMOTE_PARALLEL") or "8"))


def copy_files(source: ArtifactSource, sink: ArtifactSink, files: list[ArtifactFile],
               progress: TransferProgress | None = None, workers: int | None = None,
               on_retry: Callable[[str], None] | None = None) -> ArtifactManifest:
    """Copy every file from `source` to `sink`, hashing as the bytes pass; returns the manifest."""
    # A sink that prepares writes in bulk (Azure ML's artifact service) learns what is coming.
    expect: Callable[[list[str]], None] | None = getattr(sink, "expect", None)
    if expect is not None:
        expect([f.path for f in _start_order(files)])
    return _run(files, lambda f, p, stop: _copy_one(source, sink, f, p, stop), progress, workers,
                on_retry, "copying")


def hash_files(source: ArtifactSource, files: list[ArtifactFile],
               progress: TransferProgress | None = None, workers: int | None = None,
               on_retry: Callable[[str], None] | None = None) -> ArtifactManifest:
    """Read every file once and return the manifest (for idempotence checks and --verify)."""
    return _run(files, lambda f, p, stop: _copy_one(source, None, f, p, stop), progress,
                workers, on_retry, "reading")


class Cancelled(Exception):
    """A file's transfer stopped because the whole transfer is stopping (a failure elsewhere,
    or an interrupt); never retried, never the error that is reported."""


# How long an interrupted or failed transfer waits for its running files to notice the stop
# (each checks between chunks, every 256 KiB or 1 MiB) before it returns without them: a
# worker blocked in a slow read or a retry pause is left behind (cli/interrupts.py ends the
# process without waiting for it), so Ctrl-C answers within a second whatever the network does.
STOP_GRACE = 0.3


def _copy_one(source: ArtifactSource, sink: ArtifactSink | None, file: ArtifactFile,
              progress: TransferProgress, stop: threading.Event) -> ManifestEntry:
    hasher = hashlib.sha256()
    seen = 0

    def counted() -> object:
        nonlocal seen
        with source.open(file.path) as chunks:
            for chunk in chunks:
                if stop.is_set():
                    raise Cancelled(file.path)
                hasher.update(chunk)
                seen += len(chunk)
                progress.advance(len(chunk))
                yield chunk

    stream = counted()
    if sink is None:
        for _ in stream:  # type: ignore[attr-defined]
            pass
    else:
        sink.write(file.path, file.size, stream)  # type: ignore[arg-type]
    if stop.is_set():
        # The sink may have swallowed the stream's end (a request body whose reader stopped).
        raise Cancelled(file.path)
    if file.size is not None and seen != file.size:
        raise TransientError(f"{file.path}: read {seen} bytes, the listing said {file.size}")
    return ManifestEntry(file.path, seen, hasher.hexdigest())


def _run(files: list[ArtifactFile],
         one: Callable[[ArtifactFile, TransferProgress, threading.Event], ManifestEntry],
         progress: TransferProgress | None, workers: int | None,
         on_retry: Callable[[str], None] | None, verb: str) -> ArtifactManifest:
    progress = progress or NoProgress()
    policy = RetryPolicy.from_env()
    sizes = [f.size for f in files]
    total = None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)
    stop = threading.Event()

    def attempt(file: ArtifactFile) -> ManifestEntry:
        def run_once() -> ManifestEntry:
            # Checked before every attempt: a retry that wakes after the transfer stopped must
            # not start writing into a staging area that is being removed.
            if stop.is_set():
                raise Cancelled(file.path)
            counter = _CountingProgress(progress)
            try:
                return one(file, counter, stop)
            except TransientError:
                progress.advance(-counter.count)  # the retry starts the file again
                raise

        def note(attempt_no: int, exc: Exception, pause: float) -> None:
            if on_retry is not None:
                on_retry(f"{file.path}: {exc}; retry {attempt_no} in {pause:.1f}s")

        try:
            entry = call_with_retry(run_once, policy, note)
        except TransientError as exc:
            raise Unreachable(f"{verb} {file.path} failed after retries: {exc}",
                              hint="the registry or its storage keeps failing; run again "
                                   "later — nothing was registered") from exc
        progress.file_done(file.path)
        return entry

    ordered = _start_order(files)
    count = max(1, min(workers or default_workers(), len(files) or 1))
    # Not `with ThreadPoolExecutor(...)`: leaving that block waits for every running file,
    # which after Ctrl-C is the rest of the transfer.
    pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="amlpromote-io")
    futures: list[Future[ManifestEntry]] = []
    progress.start(verb, len(files), total)
    try:
        futures = [pool.submit(attempt, f) for f in ordered]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in done if f.exception() is not None), None)
        if failed is not None:
            # A file failed for good: the others stop at their next chunk, files not started
            # never start, and the staging area is quiet before the caller removes it.
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            wait(futures)
            exc = failed.exception()
            assert exc is not None
            raise exc
        entries = [f.result() for f in futures]
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM in the main thread: the same stop, but waiting only STOP_GRACE.
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        wait(futures, timeout=STOP_GRACE)
        raise
    finally:
        progress.finish()
    pool.shutdown(wait=True)
    return ArtifactManifest.of(entries)


def _start_order(files: list[ArtifactFile]) -> list[ArtifactFile]:
    # Largest first, so one big file does not start last and run alone.
    return sorted(files, key=lambda f: -(f.size or 0))


class _CountingProgress:
    """Passes progress through and remembers how much one attempt reported."""

    def __init__(self, inner: TransferProgress) -> None:
        self.inner = inner
        self.count = 0

    def start(self, description: str, files: int, total_bytes: int | None) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        self.count += nbytes
        self.inner.advance(nbytes)

    def file_done(self, path: str) -> None:
        pass

    def finish(self) -> None:
        pass
