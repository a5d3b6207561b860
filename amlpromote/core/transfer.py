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

from amlpromote.core.artifacts import ArtifactFile, ArtifactSink, ArtifactSource
from amlpromote.core.errors import OperationFailed, Unreachable
from amlpromote.core.retry import RetryPolicy, TransientError, call_with_retry


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
    return max(1, int(os.environ.get("AMLPROMOTE_PARALLEL", "8")))


def copy_files(source: ArtifactSource, sink: ArtifactSink, files: list[ArtifactFile],
               progress: TransferProgress | None = None, workers: int | None = None,
               on_retry: Callable[[str], None] | None = None) -> ArtifactManifest:
    """Copy every file from `source` to `sink`, hashing as the bytes pass; returns the manifest."""
    # A sink that prepares writes in bulk (Azure ML's artifact service) learns what is coming.
    expect: Callable[[list[str]], None] | None = getattr(sink, "expect", None)
    if expect is not None:
        expect([f.path for f in _start_order(files)])
    return _run(files, lambda f, p: _copy_one(source, sink, f, p), progress, workers, on_retry,
                "copying")


def hash_files(source: ArtifactSource, files: list[ArtifactFile],
               progress: TransferProgress | None = None, workers: int | None = None,
               on_retry: Callable[[str], None] | None = None) -> ArtifactManifest:
    """Read every file once and return the manifest (for idempotence checks and --verify)."""
    return _run(files, lambda f, p: _copy_one(source, None, f, p), progress, workers, on_retry,
                "reading")


def _copy_one(source: ArtifactSource, sink: ArtifactSink | None, file: ArtifactFile,
              progress: TransferProgress) -> ManifestEntry:
    hasher = hashlib.sha256()
    seen = 0

    def counted() -> object:
        nonlocal seen
        with source.open(file.path) as chunks:
            for chunk in chunks:
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
    if file.size is not None and seen != file.size:
        raise TransientError(f"{file.path}: read {seen} bytes, the listing said {file.size}")
    return ManifestEntry(file.path, seen, hasher.hexdigest())


def _run(files: list[ArtifactFile],
         one: Callable[[ArtifactFile, TransferProgress], ManifestEntry],
         progress: TransferProgress | None, workers: int | None,
         on_retry: Callable[[str], None] | None, verb: str) -> ArtifactManifest:
    progress = progress or NoProgress()
    policy = RetryPolicy.from_env()
    sizes = [f.size for f in files]
    total = None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)
    progress.start(verb, len(files), total)
    stop = threading.Event()

    def attempt(file: ArtifactFile) -> ManifestEntry:
        if stop.is_set():
            raise OperationFailed("cancelled")

        def run_once() -> ManifestEntry:
            counter = _CountingProgress(progress)
            try:
                return one(file, counter)
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
    entries: list[ManifestEntry] = []
    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="amlpromote-io") as pool:
        futures: list[Future[ManifestEntry]] = [pool.submit(attempt, f) for f in ordered]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in done if f.exception() is not None), None)
        if failed is not None:
            stop.set()
            for future in futures:
                future.cancel()
            wait(futures)
            exc = failed.exception()
            assert exc is not None
            raise exc
        entries = [f.result() for f in futures]
    progress.finish()
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
