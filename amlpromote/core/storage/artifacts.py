"""Where model files are read from and written to.

An `ArtifactSource` lists a model version's stored files and streams each one in chunks; an
`ArtifactSink` writes a stream to a path. Three kinds cover every MLflow store:

- local folders (`file://` and plain paths): read and written directly;
- MLflow's proxied artifact service (`mlflow-artifacts:` URIs of an `mlflow server`): streamed
  over HTTP, so a copy between two servers never touches the local disk;
- anything else (s3, gs, wasbs, dbfs, Databricks model URIs ...): through MLflow's own artifact
  repository for that URI, one file at a time via a temporary file.

Every relative path that comes from a listing is checked: a path that would escape its root
(`..`, absolute, drive letters) is refused, whatever the source claims.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit

from amlpromote.core.errors import AuthFailed, BadInput, NotFound, OperationFailed
from amlpromote.core.retry import RETRYABLE_STATUS, TransientError, parse_retry_after
from amlpromote.core.uris import redact_text

# 256 KiB: large enough that per-chunk Python overhead is noise (4096 chunks per GiB), small
# enough that the chunk is still in the CPU cache when it is hashed and then written. Measured on
# a local 1 GiB copy with 8 workers: 0.54 s at 256 KiB against 1.26 s at 4 MiB.
LOCAL_CHUNK = 256 * 1024
HTTP_CHUNK = 1024 * 1024

# A chunk stream: yields views of a buffer that is reused, so each chunk must be consumed
# (hashed, written) before the next one is asked for.
Chunks = Iterator[memoryview | bytes]


@dataclass(frozen=True)
class ArtifactFile:
    path: str  # relative, POSIX separators, checked by `safe_relative_path`
    size: int | None
    # What the store tells of the file's content without a read (a local file's modification
    # time, a blob's Content-MD5), if anything: part of the listing a re-run compares.
    fingerprint: str | None = None


class ArtifactSource(Protocol):
    description: str

    def list_files(self) -> list[ArtifactFile]: ...

    def open(self, path: str) -> AbstractContextManager[Chunks]: ...


class ArtifactSink(Protocol):
    description: str

    def write(self, path: str, size: int | None, chunks: Chunks) -> None: ...


def safe_relative_path(path: str) -> str:
    """Normalise a listed artifact path; refuse anything that could escape its root."""
    if not path or "\x00" in path:
        raise BadInput(f"refusing artifact path {path!r}: empty or contains NUL",
                       hint="the source registry's listing is corrupt or hostile")
    candidate = path.replace("\\", "/")
    pure = PurePosixPath(candidate)
    if (pure.is_absolute() or candidate.startswith("/") or ".." in pure.parts
            or (len(candidate) > 1 and candidate[1] == ":")):
        raise BadInput(f"refusing artifact path {path!r}: it escapes the model folder",
                       hint="the source registry's listing is corrupt or hostile; nothing was "
                            "written outside the target")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if not parts:
        raise BadInput(f"refusing artifact path {path!r}", hint="the listing is corrupt")
    return "/".join(parts)


def _contained(root: Path, rel: str) -> Path:
    target = (root / safe_relative_path(rel)).resolve()
    if target != root.resolve() and root.resolve() not in target.parents:
        raise BadInput(f"refusing artifact path {rel!r}: it escapes {root}",
                       hint="a symbolic link in the target folder points outside it")
    return target


# ---------------------------------------------------------------------------------------------
# Local folders


def local_path_of(uri: str) -> Path | None:
    """The local folder a `file:` URI or plain path names; None for any other scheme."""
    parts = urlsplit(uri)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme == "" or (len(parts.scheme) == 1 and os.name == "nt"):
        return Path(uri)
    return None


class LocalSource:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = str(root)

    def list_files(self) -> list[ArtifactFile]:
        if not self.root.is_dir():
            raise NotFound(f"the model's artifact folder {self.root} does not exist",
                           hint="the source registry points at files that were deleted or moved")
        files = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for name in sorted(filenames):
                full = Path(dirpath) / name
                rel = full.relative_to(self.root).as_posix()
                stat = full.stat()
                files.append(ArtifactFile(safe_relative_path(rel), stat.st_size,
                                          f"mtime:{stat.st_mtime_ns}"))
        return files

    @contextmanager
    def open(self, path: str) -> Iterator[Chunks]:
        full = _contained(self.root, path)
        with open(full, "rb", buffering=0) as handle:
            yield _read_chunks(handle, LOCAL_CHUNK)


class _Buffers(threading.local):
    """One spare read buffer per thread, reused from file to file.

    A fresh buffer per file costs a zeroing pass (bytearray) and, for sizes glibc serves with
    mmap, page faults on first touch and a munmap at the end: per file, per worker. On VMs that
    hand freed memory back to the host (virtio-balloon free page reporting) those faults are
    expensive and made a 1 GiB copy's time swing by 2x; the per-thread heaps they left behind
    also added ~50 MB to the peak RSS with 8 workers.
    """

    spare: bytearray | None = None


_buffers = _Buffers()


def _read_chunks(handle: Any, size: int) -> Chunks:
    # Take the thread's spare buffer while reading; a second stream opened by the same thread
    # before this one ends (nothing does that today) gets its own, so chunks never alias.
    buffer = _buffers.spare if _buffers.spare is not None and len(_buffers.spare) == size \
        else bytearray(size)
    _buffers.spare = None
    try:
        view = memoryview(buffer)
        while True:
            count = handle.readinto(buffer)
            if not count:
                return
            yield view[:count]
    finally:
        # The consumer has finished with the last chunk once the generator ends or is closed.
        _buffers.spare = buffer


class LocalSink:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = str(root)
        self._made: set[Path] = set()
        self._lock = threading.Lock()

    def write(self, path: str, size: int | None, chunks: Chunks) -> None:
        target = _contained(self.root, path)
        parent = target.parent
        with self._lock:
            if parent not in self._made:
                try:
                    parent.mkdir(parents=True, exist_ok=True)
                except PermissionError as exc:
                    raise OperationFailed(
                        f"no permission to write the target folder {parent}",
                        hint="fix the folder's permissions or choose another target") from exc
                self._made.add(parent)
        try:
            with open(target, "wb", buffering=0) as handle:
                for chunk in chunks:
                    handle.write(chunk)
        except PermissionError as exc:
            raise OperationFailed(f"no permission to write {target}",
                                  hint="fix the folder's permissions or choose another target") \
                from exc

    def remove(self) -> None:
        """Delete everything written under the root (an aborted or superseded staging)."""
        shutil.rmtree(self.root, ignore_errors=True)
        if self.root.exists():
            raise OperationFailed(f"could not remove {self.root}",
                                  hint="check the folder's permissions")


# ---------------------------------------------------------------------------------------------
# MLflow's proxied artifact service (`mlflow server --serve-artifacts`)


@dataclass(frozen=True)
class HttpEndpoint:
    """How to reach an MLflow server: base URL without credentials, and the auth to send."""

    base_url: str
    auth: tuple[str, str] | None
    headers: dict[str, str]
    verify: bool | str
    cert: str | None

    @classmethod
    def for_tracking_uri(cls, tracking_uri: str) -> HttpEndpoint:
        """Mirror MLflow's own rules: user info in the URI, then MLFLOW_TRACKING_* variables."""
        parts = urlsplit(tracking_uri)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port:
            netloc += f":{parts.port}"
        base = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"
        auth: tuple[str, str] | None = None
        headers: dict[str, str] = {}
        if parts.username:
            auth = (unquote(parts.username), unquote(parts.password or ""))
        elif os.environ.get("MLFLOW_TRACKING_USERNAME"):
            auth = (os.environ["MLFLOW_TRACKING_USERNAME"],
                    os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
        elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
            headers["Authorization"] = "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"]
        verify: bool | str = True
        if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
            verify = False
        elif os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
            verify = os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]
        return cls(base, auth, headers, verify, os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH"))


class HttpSession:
    """A requests session shared by a transfer's threads, with one place that maps HTTP errors."""

    def __init__(self, endpoint: HttpEndpoint, pool_size: int = 16) -> None:
        import requests
        from requests.adapters import HTTPAdapter

        self.endpoint = endpoint
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers.update(endpoint.headers)
        if endpoint.auth:
            self._session.auth = endpoint.auth
        self._session.verify = endpoint.verify
        if endpoint.cert:
            self._session.cert = endpoint.cert
        # Proxies from the environment must not see loopback traffic.
        self._session.trust_env = True

    def raw(self, method: str, url: str, **kwargs: Any) -> Any:
        """One request on the session, its answer as it came (no status mapping)."""
        if self.endpoint.verify is not True:
            # Per request, as MLflow passes it: a session's `verify` loses to REQUESTS_CA_BUNDLE
            # (requests' trust_env), so MLFLOW_TRACKING_SERVER_CERT_PATH would be ignored.
            kwargs.setdefault("verify", self.endpoint.verify)
        return self._session.request(method, url, **kwargs)

    def request(self, method: str, url: str, what: str, **kwargs: Any) -> Any:
        import requests

        kwargs.setdefault("timeout", (10, 300))
        try:
            response = self.raw(method, url, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise OperationFailed(f"TLS failure talking to {self.endpoint.base_url}: "
                                  f"{redact_text(str(exc.__class__.__name__))}",
                                  hint="set MLFLOW_TRACKING_SERVER_CERT_PATH (or "
                                       "REQUESTS_CA_BUNDLE) to the server's CA bundle") from exc
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                requests.exceptions.ChunkedEncodingError) as exc:
            raise TransientError(f"{what}: connection to {self.endpoint.base_url} failed "
                                 f"({exc.__class__.__name__})") from exc
        check_response(response, what)
        return response


def response_detail(response: Any) -> str:
    """The start of an error answer's body, secrets redacted, on one line ("" if unreadable)."""
    try:
        return redact_text(response.text[:300]).strip().replace("\n", " ")
    except Exception:
        return ""


def check_response(response: Any, what: str) -> None:
    """Raise the matching error for a failed HTTP response; transient ones can be retried."""
    status = response.status_code
    if status < 400:
        return
    detail = response_detail(response)
    response.close()
    if status in RETRYABLE_STATUS:
        raise TransientError(f"{what}: HTTP {status}",
                             retry_after=parse_retry_after(response.headers.get("Retry-After")))
    if status in (401, 403):
        raise AuthFailed(f"{what}: HTTP {status} (not authorized)",
                         hint="check the credentials (MLFLOW_TRACKING_TOKEN or "
                              "MLFLOW_TRACKING_USERNAME/PASSWORD) for this registry")
    if status == 404:
        raise NotFound(f"{what}: HTTP 404", hint="the registry does not have this artifact")
    raise OperationFailed(f"{what}: HTTP {status} {detail}".strip(),
                          hint="see the registry server's log")


def proxied_root(uri: str, tracking_uri: str) -> tuple[str, str] | None:
    """For an `mlflow-artifacts:` (or direct artifact-service) URI: (server base, root path)."""
    parts = urlsplit(uri)
    if parts.scheme == "mlflow-artifacts":
        path = unquote(parts.path).lstrip("/")
        if parts.netloc:
            scheme = urlsplit(tracking_uri).scheme if tracking_uri.startswith("http") else "http"
            return f"{scheme}://{parts.netloc}", path
        return tracking_uri, path
    marker = "/api/2.0/mlflow-artifacts/artifacts"
    if parts.scheme in ("http", "https") and marker in parts.path:
        prefix, _, rest = parts.path.partition(marker)
        return f"{parts.scheme}://{parts.netloc}{prefix}", unquote(rest).lstrip("/")
    return None


class ProxiedSource:
    def __init__(self, session: HttpSession, root: str) -> None:
        self.session = session
        self.root = root.strip("/")
        self.description = f"{session.endpoint.base_url} (artifacts {self.root})"
        self._api = session.endpoint.base_url + "/api/2.0/mlflow-artifacts/artifacts"

    def _url(self, rel: str) -> str:
        full = posixpath.join(self.root, safe_relative_path(rel))
        return f"{self._api}/{quote(full)}"

    def list_files(self) -> list[ArtifactFile]:
        from amlpromote.core.retry import RetryPolicy, call_with_retry

        files: list[ArtifactFile] = []
        pending = [""]
        while pending:
            rel_dir = pending.pop()
            listed = posixpath.join(self.root, rel_dir) if rel_dir else self.root

            def fetch(listed: str = listed) -> Any:
                return self.session.request("GET", self._api, f"listing {listed}",
                                            params={"path": listed}).json()

            payload = call_with_retry(fetch, RetryPolicy.from_env())
            for entry in payload.get("files", []):
                rel = posixpath.join(rel_dir, entry["path"]) if rel_dir else entry["path"]
                rel = safe_relative_path(rel)
                if entry.get("is_dir"):
                    pending.append(rel)
                else:
                    size = entry.get("file_size")
                    files.append(ArtifactFile(rel, int(size) if size is not None else None))
        return sorted(files, key=lambda f: f.path)

    @contextmanager
    def open(self, path: str) -> Iterator[Chunks]:
        response = self.session.request("GET", self._url(path), f"downloading {path}",
                                        stream=True)
        try:
            yield response_chunks(response, path)
        finally:
            response.close()


def response_chunks(response: Any, path: str) -> Chunks:
    """The body of a streamed download; a connection dropped midway is worth another try."""
    import requests

    try:
        yield from response.iter_content(chunk_size=HTTP_CHUNK)
    except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError):
        # Not chained: the library's error names the URL, which for signed URLs (Azure SAS,
        # Databricks) carries the signature.
        raise TransientError(f"downloading {path}: connection dropped midway") from None


class StreamingBody:
    """A file-like request body of known length that pulls chunks on demand.

    requests sends a body with `len` as a Content-Length upload rather than chunked encoding,
    which every server accepts, and reads it in blocks so memory stays at one chunk.

    `read` hands out the chunk itself, without a `bytes()` copy: urllib3 passes each block
    straight to `socket.sendall` and asks for the next one only after it is sent, so a view of a
    reused buffer is safe, and a copy would cost a full extra pass over every byte uploaded.
    """

    def __init__(self, chunks: Chunks, length: int) -> None:
        self._chunks = chunks
        self.len = length

    def read(self, size: int = -1) -> memoryview | bytes:
        for chunk in self._chunks:
            if len(chunk):
                return chunk
        return b""


class ProxiedSink:
    def __init__(self, session: HttpSession, root: str) -> None:
        self.session = session
        self.root = root.strip("/")
        self.description = f"{session.endpoint.base_url} (artifacts {self.root})"
        self._api = session.endpoint.base_url + "/api/2.0/mlflow-artifacts/artifacts"

    def write(self, path: str, size: int | None, chunks: Chunks) -> None:
        full = posixpath.join(self.root, safe_relative_path(path))
        url = f"{self._api}/{quote(full)}"
        if size is None:
            # Unknown length: spool to disk so the server gets a Content-Length upload.
            with tempfile.TemporaryFile() as spool:
                for chunk in chunks:
                    spool.write(chunk)
                length = spool.tell()
                spool.seek(0)
                response = self.session.request("PUT", url, f"uploading {path}", data=spool,
                                                headers={"Content-Length": str(length)})
        else:
            response = self.session.request("PUT", url, f"uploading {path}",
                                            data=StreamingBody(chunks, size))
        response.close()

    def remove(self) -> None:
        """Delete the root folder through the artifact proxy (`DELETE .../artifacts/<path>`,
        which `mlflow server` maps to its artifact repository's delete_artifacts)."""
        response = self.session.request("DELETE", f"{self._api}/{quote(self.root)}",
                                        f"removing the staged files {self.root}")
        response.close()


# ---------------------------------------------------------------------------------------------
# Any other artifact store: MLflow's artifact repository for the URI


class RepositorySource:
    """Reads through MLflow's artifact repository; each file lands in a temp folder first.

    `calling(what)` wraps each repository call (a registry's error translation and global
    state containment); by default calls run as they are.
    """

    def __init__(self, uri: str, repo_factory: Callable[[str], Any],
                 calling: Callable[[str], AbstractContextManager[Any]] | None = None) -> None:
        self.uri = uri
        self.description = redact_text(uri)
        self._calling = calling or (lambda what: nullcontext())
        self._repo = repo_factory(uri)

    def list_files(self) -> list[ArtifactFile]:
        files: list[ArtifactFile] = []
        pending: list[str | None] = [None]
        while pending:
            folder = pending.pop()
            with self._calling(f"listing {folder or 'the files'} of the version"):
                infos = self._repo.list_artifacts(folder)
            for info in infos:
                rel = safe_relative_path(info.path)
                if info.is_dir:
                    pending.append(rel)
                else:
                    files.append(ArtifactFile(rel, info.file_size))
        return sorted(files, key=lambda f: f.path)

    @contextmanager
    def open(self, path: str) -> Iterator[Chunks]:
        rel = safe_relative_path(path)
        scratch = tempfile.mkdtemp(prefix="amlpromote-")
        try:
            with self._calling(f"downloading {rel}"):
                local = self._repo.download_artifacts(rel, dst_path=scratch)
            with open(local, "rb", buffering=0) as handle:
                yield _read_chunks(handle, LOCAL_CHUNK)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


class RepositorySink:
    def __init__(self, uri: str, repo_factory: Callable[[str], Any]) -> None:
        self.uri = uri
        self.description = redact_text(uri)
        self._repo = repo_factory(uri)

    def write(self, path: str, size: int | None, chunks: Chunks) -> None:
        rel = safe_relative_path(path)
        scratch = tempfile.mkdtemp(prefix="amlpromote-")
        try:
            # log_artifact names the remote file after the local one, so keep the basename.
            local = Path(scratch) / posixpath.basename(rel)
            with open(local, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
            folder = posixpath.dirname(rel) or None
            self._repo.log_artifact(str(local), folder)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def remove(self) -> None:
        self._repo.delete_artifacts()
