"""The Databricks workspace emulator: a loopback HTTPS server in front of a real `mlflow server`.

What mlflow 3.15 calls, and therefore what is emulated here (read from the installed source):

- Every REST call goes through `mlflow.utils.rest_utils.http_request`. With databricks-sdk
  installed (MLFLOW_ENABLE_DB_SDK defaults to true), host credentials are resolved per call by
  `get_databricks_host_creds`, which builds a `WorkspaceClient`; building one makes
  databricks-sdk GET `/.well-known/databricks-config` (unauthenticated, best effort: a failure
  is only a warning). The call itself then goes through the SDK's `api_client.do` with
  `Authorization: Bearer <token>` and `x-databricks-org-id: <workspace_id>` once the workspace
  id is known from that probe.
- The registry store for `databricks[://PROFILE]` is `DatabricksWorkspaceModelRegistryRestStore`:
  the plain MLflow REST API under `/api/2.0/mlflow/` (forwarded to the backing server). It
  refuses alias methods client-side (the workspace registry has no aliases), so by default the
  box also strips `aliases` from responses, as the real service has none to return.
- `get_model_version_download_uri` returns the server's `get-download-uri` answer verbatim; the
  real service answers `dbfs:/databricks/mlflow-registry/<32 hex>/models/<artifact_path>`.
  `get_artifact_repository` hands that to `DbfsRestArtifactRepository` (the FUSE shortcut is
  skipped for registry paths), which reads `/api/2.0/dbfs/get-status`, `/api/2.0/dbfs/list` and
  `GET /dbfs/<path>`; the box serves a read-only DBFS view of those registry paths only.
- `models:/NAME/VERSION` with a databricks registry URI goes to
  `DatabricksModelsArtifactRepository`: `GET /api/2.0/mlflow/model-versions/list-artifacts`
  (paged by `next_page_token`) and `GET /api/2.0/mlflow/model-versions/get-signed-download-uri`
  (`{"signed_uri", "headers": [{"name", "value"}]}`), then a plain unauthenticated GET of the
  signed URL (`Range` requests when the file exceeds MLFLOW_MULTIPART_DOWNLOAD_CHUNK_SIZE). The
  box's signed URLs look like Azure SAS URLs (`sv`, `se`, `sr`, `sp`, `sig`) and point back at
  the box, which checks signature and expiry and streams the bytes from the backing server's
  artifact store.

Not emulated:

- Unity Catalog (`databricks-uc://`): a different API with three-level names and aliases,
  `/api/2.0/mlflow/unity-catalog/{registered-models,model-versions}/...` (or the native
  `/api/2.1/unity-catalog/models/...` with MLFLOW_ENABLE_UC_NATIVE_MODEL_REGISTRY). Downloads ask
  `GET .../unity-catalog/registered-models:is-databricks-sdk-models-artifact-repository-enabled`,
  then read either through the Files API (`/api/2.0/fs/directories|files/Models/<name>/<v>/...`,
  loopback-friendly), presigned URLs for DEFAULT_STORAGE (`/api/2.0/fs/create-download-url`,
  loopback-friendly), or `model-versions/generate-temporary-credentials` (a SAS / STS / OAuth
  token for the cloud storage host in the version's `storage_location`: not loopback).
- Run artifacts (`dbfs:/databricks/mlflow-tracking/...` and its credentials-for-read/write API):
  runs keep the backing server's `mlflow-artifacts:/` URIs.
- Creating versions in the workspace registry from local files, OAuth / service principals.
"""

from __future__ import annotations

import base64
import configparser
import contextlib
import datetime as dt
import hashlib
import hmac
import http.client
import ipaddress
import json
import posixpath
import secrets
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit
from urllib.request import url2pathname

from azureml_box.ca import TestCA
from support.mlflow_server import MlflowServer

_LOOPBACK = "127.0.0.1"
_CHUNK = 256 * 1024
_MAX_RECORDS = 20_000
_API_PREFIX = "/api/2.0/mlflow/"
# The preview prefix is an alias the real service still answers; `mlflow server` does not.
_PREVIEW_PREFIX = "/api/2.0/preview/mlflow/"
_V3_PREFIX = "/api/3.0/mlflow/"
_REGISTRY_DBFS_ROOT = "/databricks/mlflow-registry"
_BLOB_PREFIX = "/blob/mlflow-registry/"
_WELL_KNOWN = "/.well-known/databricks-config"
# Azure Storage service version in SAS URLs; only its presence matters (it makes URLs look real).
_SAS_VERSION = "2023-11-03"
_SAS_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# Registry routes whose JSON may carry `aliases` (stripped unless expose_aliases=True).
_REGISTRY_ROUTES = ("registered-models/", "model-versions/")
# How a workspace refuses a personal access token it does not accept (wrong, expired or
# revoked): HTTP 403, not 401, with a *numeric* error_code and the reason repeated in a header,
# as captured from real workspaces in databricks/databricks-sdk-go#873 (and #917):
#   HTTP/2.0 403 Forbidden / X-Databricks-Reason-Phrase: Invalid access token.
#   {"error_code": 403, "message": "Invalid access token."}
# Older workspaces answer the same refusal with their Jetty server's HTML error page
# (DataThirstLtd/databricks.vsts.tools#26: "HTTP ERROR 403 / Problem accessing /api/2.0/dbfs/put.
# Reason: Invalid access token."). A request with no credential at all stays 401
# UNAUTHENTICATED: no public capture says otherwise.
INVALID_TOKEN_MESSAGE = "Invalid access token."
TOKEN_REFUSAL_FORMS = ("json", "html")
_JETTY_ERROR_PAGE = """<html>
<head>
<meta http-equiv="Content-Type" content="text/html;charset=utf-8"/>
<title>Error 403 {message}</title>
</head>
<body><h2>HTTP ERROR 403</h2>
<p>Problem accessing {path}. Reason:
<pre>    {message}</pre></p>
</body>
</html>
"""
_ERROR_FOR_STATUS = {
    400: "INVALID_PARAMETER_VALUE",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "RESOURCE_DOES_NOT_EXIST",
    429: "REQUEST_LIMIT_EXCEEDED",
    500: "INTERNAL_ERROR",
    501: "NOT_IMPLEMENTED",
    503: "TEMPORARILY_UNAVAILABLE",
}


@dataclass(frozen=True)
class RecordedRequest:
    """One request the box received, and what it answered."""

    method: str
    path: str  # as sent, without the query string
    query: Mapping[str, tuple[str, ...]]
    host: str  # the Host header: which host the client believed it was talking to
    client_ip: str
    status: int
    # "ok", "missing", "invalid", "revoked", or "not-required" (well-known probe, signed URLs)
    auth: str
    # A few request headers worth asserting on (user-agent, range, x-databricks-org-id).
    headers: Mapping[str, str]
    fault_injected: bool
    # DatabricksBox.fingerprint() of the bearer token sent, if any: which credential reached
    # this host, without keeping the secret itself in the log.
    bearer: str | None


@dataclass
class _Fault:
    status: int
    remaining: int
    retry_after: float | None
    path_contains: str | None


@dataclass(frozen=True)
class _Entry:
    rel: str  # relative to the version's artifact root; "" is the root
    is_dir: bool
    size: int | None


@dataclass(frozen=True)
class _VersionArtifacts:
    name: str
    version: str
    location: str  # where the backing server keeps the version's files (its download URI)
    registry_id: str
    artifact_path: str

    @property
    def dbfs_root(self) -> str:
        return f"{_REGISTRY_DBFS_ROOT}/{self.registry_id}/models/{self.artifact_path}"


class _ApiError(Exception):
    """Answered as Databricks' error JSON: {"error_code": ..., "message": ...}."""

    def __init__(
        self,
        status: int,
        message: str,
        error_code: str | int | None = None,
        headers: Mapping[str, str] | None = None,
        raw_body: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        # A string everywhere but in a refused token's 403 (see INVALID_TOKEN_MESSAGE).
        self.error_code: str | int = error_code or _ERROR_FOR_STATUS.get(status, "INTERNAL_ERROR")
        self.headers = dict(headers or {})
        self.raw_body = raw_body

    def body(self) -> bytes:
        if self.raw_body is not None:
            return self.raw_body
        return json.dumps({"error_code": self.error_code, "message": self.message}).encode()


def _token_refused(form: str, path: str) -> _ApiError:
    """The 403 a workspace answers for a wrong, expired or revoked token, in `form`."""
    if form == "html":
        page = _JETTY_ERROR_PAGE.format(message=INVALID_TOKEN_MESSAGE, path=path)
        return _ApiError(
            403,
            INVALID_TOKEN_MESSAGE,
            "FORBIDDEN",
            headers={"Content-Type": "text/html;charset=utf-8"},
            raw_body=page.encode(),
        )
    return _ApiError(
        403,
        INVALID_TOKEN_MESSAGE,
        403,
        headers={
            "Content-Type": "application/json; charset=utf-8",
            "X-Databricks-Reason-Phrase": INVALID_TOKEN_MESSAGE,
        },
    )


def is_loopback(host: str) -> bool:
    """True for "127.0.0.1", "localhost:443", "[::1]:8443", "::1" (Host headers, peer IPs)."""
    if host.startswith("["):
        hostname = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        hostname = host.split(":", 1)[0]
    else:
        hostname = host
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _safe_rel(path: str) -> str:
    """Normalise an artifact path from a request; refuse anything escaping the version root."""
    cleaned = path.strip("/")
    if not cleaned:
        return ""
    normalised = posixpath.normpath(cleaned)
    if normalised == ".." or normalised.startswith("../") or normalised.startswith("/"):
        raise _ApiError(400, f"Invalid path: {path}")
    return "" if normalised == "." else normalised


class DatabricksBox:
    """A Databricks workspace (model registry side) on `https://127.0.0.1:<port>`.

    `backend` is the real `mlflow server` holding the registry; without one the box starts (and
    later stops) its own under `root / "mlflow"`. `token` is the one valid personal access token
    (more with `add_token`); any other token, or a revoked one, gets the real service's 403
    "Invalid access token.", as JSON or, with `token_refusal="html"` (settable at any time), as
    an older workspace's HTML error page. Fault switches: `revoke_token`, `inject_fault` (e.g.
    429 with Retry-After, 503), `signed_url_ttl` (set it <= 0 to hand out already-expired URLs).
    """

    def __init__(
        self,
        root: Path,
        *,
        backend: MlflowServer | None = None,
        token: str | None = None,
        ca: TestCA | None = None,
        workspace_id: str = "1234567890123456",
        account_id: str = "00000000-0000-4000-8000-00000000d8c5",
        cloud: str = "azure",
        host_metadata: bool = True,
        expose_aliases: bool = False,
        token_refusal: str = "json",
        signed_url_ttl: float = 900.0,
        signed_url_headers: Mapping[str, str] | None = None,
        list_page_size: int = 1000,
    ) -> None:
        if token_refusal not in TOKEN_REFUSAL_FORMS:
            raise ValueError(f"token_refusal must be one of {TOKEN_REFUSAL_FORMS}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._owns_backend = backend is None
        self.backend = backend if backend is not None else MlflowServer(self.root / "mlflow")
        # "dapi" + 32 hex is what Databricks personal access tokens look like.
        self.token = token or f"dapi{secrets.token_hex(16)}"
        self.ca = ca or TestCA(self.root / "ca", name="databricks box test CA")
        self._cert = self.ca.issue_server_cert("databricks-box")
        self.workspace_id = workspace_id
        self.account_id = account_id
        self.cloud = cloud
        # False: /.well-known/databricks-config answers 404 (older workspaces; the SDK warns).
        self.host_metadata = host_metadata
        self.expose_aliases = expose_aliases
        # "json" (today's workspaces) or "html" (older ones): how a bad token is refused.
        self.token_refusal = token_refusal
        self.signed_url_ttl = signed_url_ttl
        # Headers a signed URL demands (returned in `headers` of get-signed-download-uri).
        self.signed_url_headers = dict(signed_url_headers or {})
        self.list_page_size = list_page_size

        self._signing_key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._tokens: set[str] = {self.token}
        self._revoked: set[str] = set()
        self._faults: list[_Fault] = []
        self._records: deque[RecordedRequest] = deque(maxlen=_MAX_RECORDS)
        self._registry_ids: dict[str, tuple[str, str]] = {}
        # What a signed URL was issued for. Cloud storage serves a signed URL without asking the
        # registry again; re-resolving the version (two calls to the backing mlflow server) per
        # download made the box, not the client, the bottleneck of every many-file copy.
        self._signed_versions: dict[str, _VersionArtifacts] = {}
        self._open_sockets: set[socket.socket] = set()
        self._server: _BoxServer | None = None
        self._thread: threading.Thread | None = None

    # -- what a client needs ------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("DatabricksBox not started")
        port: int = self._server.server_address[1]
        return port

    @property
    def host(self) -> str:
        """The workspace URL, as `host` in ~/.databrickscfg or DATABRICKS_HOST."""
        return f"https://{_LOOPBACK}:{self.port}"

    @property
    def ca_bundle(self) -> Path:
        """PEM of the box's CA: what REQUESTS_CA_BUNDLE / SSL_CERT_FILE must name."""
        return self.ca.bundle_path

    def tls_env(self) -> dict[str, str]:
        # requests (mlflow, databricks-sdk) reads REQUESTS_CA_BUNDLE; the stdlib ssl module and
        # aiohttp read SSL_CERT_FILE.
        return {"REQUESTS_CA_BUNDLE": str(self.ca_bundle), "SSL_CERT_FILE": str(self.ca_bundle)}

    def env(self, *, token: str | None = None) -> dict[str, str]:
        """DATABRICKS_HOST / DATABRICKS_TOKEN plus the CA variables (the `databricks` URI form)."""
        return {
            "DATABRICKS_HOST": self.host,
            "DATABRICKS_TOKEN": token or self.token,
            **self.tls_env(),
        }

    def write_databrickscfg(
        self, home: Path, profile: str = "DEFAULT", *, token: str | None = None
    ) -> Path:
        """Add (or replace) `[profile]` in `home/.databrickscfg`; other profiles are kept.

        Returns the file's path. In a process whose HOME changed after `import mlflow` (pytest
        with a per-test HOME), also point DATABRICKS_CONFIG_FILE at it: mlflow's legacy config
        reader expanded "~" at import time, databricks-sdk expands it per call.
        """
        path = Path(home) / ".databrickscfg"
        # A sentinel default section makes "DEFAULT" an ordinary section, as the Databricks CLI
        # and SDK treat it, instead of configparser's inherited-defaults section.
        parser = configparser.ConfigParser(default_section="\0none", interpolation=None)
        if path.exists():
            parser.read(path)
        parser[profile] = {"host": self.host, "token": token or self.token}
        with path.open("w") as handle:
            parser.write(handle)
        path.chmod(0o600)  # the CLI writes it 0600: it holds tokens
        return path

    @staticmethod
    def fingerprint(token: str) -> str:
        """A short, non-reversible name for a token, as RecordedRequest.bearer shows it."""
        return hashlib.sha256(token.encode()).hexdigest()[:12]

    # -- fault switches -----------------------------------------------------------------------

    def add_token(self, token: str | None = None) -> str:
        """Accept one more personal access token; returns it."""
        token = token or f"dapi{secrets.token_hex(16)}"
        with self._lock:
            self._tokens.add(token)
            self._revoked.discard(token)
        return token

    def revoke_token(self, token: str | None = None) -> None:
        """From now on `token` (default: the box's token) gets 403 "Invalid access token."."""
        with self._lock:
            self._revoked.add(token or self.token)

    def inject_fault(
        self,
        status: int,
        *,
        count: int = 1,
        retry_after: float | None = None,
        path_contains: str | None = None,
    ) -> None:
        """The next `count` matching requests get `status` (e.g. 429 with `retry_after`, 503).

        Faults hit authenticated API routes and signed URLs, never the well-known probe; a
        request with a bad token still gets its 403 first (as the real front door would).
        """
        if not 400 <= status <= 599:
            raise ValueError(f"fault status must be 4xx/5xx, got {status}")
        with self._lock:
            self._faults.append(_Fault(status, count, retry_after, path_contains))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    # -- what happened ------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._records)

    def clear_requests(self) -> None:
        with self._lock:
            self._records.clear()

    def requests_to(self, path_prefix: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.startswith(path_prefix)]

    def non_loopback_requests(self) -> list[RecordedRequest]:
        """Requests whose Host header or peer address was not loopback (should be none)."""
        return [r for r in self.requests if not (is_loopback(r.host) and is_loopback(r.client_ip))]

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> DatabricksBox:
        if self._server is not None:
            return self
        if self._owns_backend:
            self.backend.start()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._cert.chain_path, self._cert.key_path)
        server = _BoxServer((_LOOPBACK, 0), _BoxHandler)
        server.box = self
        server.ssl_context = context
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"DatabricksBox:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, cut open connections, and stop the backend if the box started it."""
        server = self._server
        if server is not None:
            server.shutdown()
            server.server_close()
            with self._lock:
                sockets = list(self._open_sockets)
            for sock in sockets:
                # Unblocks handler threads parked in recv() on idle keep-alive connections.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            if self._thread is not None:
                self._thread.join(timeout)
            self._server = None
            self._thread = None
        if self._owns_backend:
            self.backend.stop()

    def __enter__(self) -> DatabricksBox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"port={self.port}" if self._server is not None else "stopped"
        return f"<DatabricksBox {where} backend={self.backend.url if self.backend else None}>"

    # -- used by the handler ------------------------------------------------------------------

    def _check_token(self, authorization: str | None) -> str:
        if not authorization:
            return "missing"
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credential:
            return "missing"
        with self._lock:
            valid = any(hmac.compare_digest(credential, t) for t in self._tokens)
            revoked = credential in self._revoked
        if revoked:
            return "revoked"
        return "ok" if valid else "invalid"

    def _take_fault(self, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and (
                    fault.path_contains is None or fault.path_contains in path
                ):
                    fault.remaining -= 1
                    return fault
            self._faults = [f for f in self._faults if f.remaining > 0]
        return None

    def _record(self, record: RecordedRequest) -> None:
        with self._lock:
            self._records.append(record)

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._open_sockets.add(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._open_sockets.discard(sock)

    # backend access: plain http.client, so a developer's HTTP(S)_PROXY is never consulted

    def _backend_connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.backend.host, self.backend.port, timeout=120)

    def _backend_call(
        self,
        method: str,
        path_and_query: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, str, bytes]:
        conn = self._backend_connection()
        try:
            conn.request(method, path_and_query, body=body, headers=dict(headers or {}))
            response = conn.getresponse()
            return response.status, response.getheader("Content-Type", ""), response.read()
        except OSError as exc:
            raise _ApiError(503, f"The workspace backend is unavailable: {exc}") from exc
        finally:
            conn.close()

    def _backend_json(self, path: str, params: Mapping[str, str]) -> dict[str, Any]:
        status, _, body = self._backend_call("GET", f"{path}?{urlencode(params)}")
        if status != 200:
            raise _ApiError(status, body.decode(errors="replace"), raw_body=_as_error_json(body))
        parsed: dict[str, Any] = json.loads(body or b"{}")
        return parsed

    # registry artifacts

    def _resolve_version(self, name: str, version: str) -> _VersionArtifacts:
        if not name or not version:
            raise _ApiError(400, "Both name and version are required.")
        location = self._backend_json(
            "/api/2.0/mlflow/model-versions/get-download-uri", {"name": name, "version": version}
        ).get("artifact_uri", "")
        model_version = self._backend_json(
            "/api/2.0/mlflow/model-versions/get", {"name": name, "version": version}
        ).get("model_version", {})
        artifact_path = self._artifact_path_for(str(model_version.get("source", "")))
        # Stable per (name, version), 32 hex like the real ids; salted per box so two boxes
        # never hand out the same path for different versions.
        digest = hashlib.sha256(self._signing_key + f"{name}\0{version}".encode()).hexdigest()
        registry_id = digest[:32]
        with self._lock:
            self._registry_ids[registry_id] = (name, version)
        return _VersionArtifacts(name, version, location, registry_id, artifact_path)

    def _artifact_path_for(self, source: str) -> str:
        # Databricks names the last folder after the model's artifact path in its run ("model").
        parsed = urlsplit(source)
        if parsed.scheme == "models" and parsed.path.lstrip("/").startswith("m-"):
            model_id = parsed.path.lstrip("/").split("/")[0]
            with contextlib.suppress(_ApiError, ValueError):
                logged = self._backend_json(f"/api/2.0/mlflow/logged-models/{quote(model_id)}", {})
                name = str(logged.get("model", {}).get("info", {}).get("name", ""))
                if name and "/" not in name:
                    return name
            return "model"
        base = posixpath.basename(parsed.path.rstrip("/"))
        return base if base and base not in ("artifacts", ".", "..") else "model"

    def _version_for_registry_id(self, registry_id: str) -> _VersionArtifacts:
        with self._lock:
            known = self._registry_ids.get(registry_id)
        if known is None:
            raise _ApiError(404, f"No file or directory exists on path {registry_id}.")
        return self._resolve_version(*known)

    def _list_dir(self, va: _VersionArtifacts, rel: str) -> list[_Entry] | None:
        """Entries directly under `rel`; None when `rel` is not a directory."""
        scheme = urlsplit(va.location).scheme
        if scheme == "mlflow-artifacts":
            base = _mlflow_artifacts_path(va.location)
            if rel:
                entry = self._stat(va, rel)
                if entry is None or not entry.is_dir:
                    return None
            full = posixpath.join(base, rel) if rel else base
            listing = self._backend_json("/api/2.0/mlflow-artifacts/artifacts", {"path": full})
            return sorted(
                (
                    _Entry(
                        posixpath.join(rel, f["path"]) if rel else f["path"],
                        bool(f.get("is_dir", False)),
                        None if f.get("is_dir") else int(f.get("file_size", 0)),
                    )
                    for f in listing.get("files", [])
                ),
                key=lambda e: e.rel,
            )
        if scheme == "file":
            directory = _local_path(va.location, rel)
            if not directory.is_dir():
                return None
            entries = []
            for child in sorted(directory.iterdir()):
                child_rel = posixpath.join(rel, child.name) if rel else child.name
                is_dir = child.is_dir()
                entries.append(_Entry(child_rel, is_dir, None if is_dir else child.stat().st_size))
            return entries
        raise _ApiError(501, f"The box cannot read artifacts stored at {va.location!r}.")

    def _stat(self, va: _VersionArtifacts, rel: str) -> _Entry | None:
        if not rel:
            return _Entry("", True, None)
        parent = posixpath.dirname(rel)
        siblings = self._list_dir(va, parent)
        if siblings is None:
            return None
        return next((e for e in siblings if e.rel == rel), None)

    @contextlib.contextmanager
    def _open(
        self, va: _VersionArtifacts, rel: str, byte_range: str | None
    ) -> Iterator[tuple[int, dict[str, str], Iterator[bytes]]]:
        """(status, headers, chunks) of one file; honours a single `bytes=a-b` Range."""
        scheme = urlsplit(va.location).scheme
        if scheme == "mlflow-artifacts":
            full = posixpath.join(_mlflow_artifacts_path(va.location), rel)
            conn = self._backend_connection()
            try:
                headers = {"Range": byte_range} if byte_range else {}
                conn.request(
                    "GET", "/api/2.0/mlflow-artifacts/artifacts/" + quote(full), headers=headers
                )
                response = conn.getresponse()
                if response.status not in (200, 206):
                    raise _ApiError(
                        404 if response.status == 404 else 502,
                        f"No file or directory exists on path {rel}.",
                    )
                out = {"Content-Length": response.getheader("Content-Length", "")}
                if response.status == 206:
                    out["Content-Range"] = response.getheader("Content-Range", "")

                def chunks() -> Iterator[bytes]:
                    while block := response.read(_CHUNK):
                        yield block

                yield response.status, out, chunks()
            finally:
                conn.close()
            return
        if scheme == "file":
            path = _local_path(va.location, rel)
            if not path.is_file():
                raise _ApiError(404, f"No file or directory exists on path {rel}.")
            size = path.stat().st_size
            start, end = _parse_range(byte_range, size)
            status = 206 if byte_range else 200
            out = {"Content-Length": str(end - start)}
            if byte_range:
                out["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            with path.open("rb") as handle:
                handle.seek(start)

                def file_chunks() -> Iterator[bytes]:
                    left = end - start
                    while left > 0 and (block := handle.read(min(_CHUNK, left))):
                        left -= len(block)
                        yield block

                yield status, out, file_chunks()
            return
        raise _ApiError(501, f"The box cannot read artifacts stored at {va.location!r}.")

    # signed URLs

    def _sign(self, blob_path: str, expiry: str) -> str:
        message = f"r\n{expiry}\n{blob_path}".encode()
        return base64.b64encode(
            hmac.new(self._signing_key, message, hashlib.sha256).digest()
        ).decode()

    def _signed_url(self, va: _VersionArtifacts, rel: str) -> str:
        blob_path = f"{_BLOB_PREFIX}{va.registry_id}/{rel}"
        with self._lock:
            self._signed_versions[va.registry_id] = va
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.signed_url_ttl)
        expiry = expires.strftime(_SAS_TIME_FORMAT)
        query = urlencode(
            {
                "sv": _SAS_VERSION,
                "se": expiry,
                "sr": "b",
                "sp": "r",
                "sig": self._sign(blob_path, expiry),
            }
        )
        return f"{self.host}{quote(blob_path)}?{query}"

    def _verify_signature(self, blob_path: str, query: Mapping[str, list[str]]) -> None:
        expiry = (query.get("se") or [""])[0]
        signature = (query.get("sig") or [""])[0]
        if "r" not in (query.get("sp") or [""])[0] or not signature:
            raise _blob_error(403, "AuthenticationFailed", "Signature fields not well formed.")
        if not hmac.compare_digest(signature, self._sign(blob_path, expiry)):
            raise _blob_error(
                403,
                "AuthenticationFailed",
                "Signature did not match. String to sign used was r.",
            )
        try:
            expires = dt.datetime.strptime(expiry, _SAS_TIME_FORMAT).replace(tzinfo=dt.UTC)
        except ValueError:
            raise _blob_error(403, "AuthenticationFailed", "Signed expiry not valid.") from None
        if expires <= dt.datetime.now(dt.UTC):
            raise _blob_error(
                403, "AuthenticationFailed", "Signature not valid in the specified time frame."
            )


def _blob_error(status: int, code: str, message: str) -> _ApiError:
    # Azure Storage answers errors in XML, not Databricks JSON.
    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    ).encode()
    return _ApiError(
        status, message, code, headers={"Content-Type": "application/xml"}, raw_body=body
    )


def _as_error_json(body: bytes) -> bytes:
    # Keep the backend's Databricks-shaped error; replace anything else (HTML 404s).
    with contextlib.suppress(ValueError):
        parsed = json.loads(body)
        if isinstance(parsed, dict) and "error_code" in parsed:
            return json.dumps(
                {"error_code": parsed["error_code"], "message": parsed.get("message", "")}
            ).encode()
    return json.dumps({"error_code": "INTERNAL_ERROR", "message": "backend error"}).encode()


def _mlflow_artifacts_path(location: str) -> str:
    return urlsplit(location).path.lstrip("/")


def _local_path(location: str, rel: str) -> Path:
    base = Path(url2pathname(urlsplit(location).path))
    return base.joinpath(*rel.split("/")) if rel else base


def _parse_range(byte_range: str | None, size: int) -> tuple[int, int]:
    """[start, end) for a single `bytes=a-b` / `bytes=a-` range; the whole file without one."""
    if not byte_range:
        return 0, size
    spec = byte_range.strip().removeprefix("bytes=")
    first, _, last = spec.partition("-")
    try:
        start = int(first) if first else max(0, size - int(last))
        end = min(size, int(last) + 1) if first and last else size
    except ValueError:
        raise _ApiError(416, f"Invalid range {byte_range}", "InvalidRange") from None
    if start >= size or start >= end:
        raise _ApiError(416, f"Range not satisfiable: {byte_range}", "InvalidRange")
    return start, end


def _strip_aliases(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_aliases(v) for k, v in value.items() if k != "aliases"}
    if isinstance(value, list):
        return [_strip_aliases(v) for v in value]
    return value


class _BoxServer(ThreadingHTTPServer):
    daemon_threads = True
    box: DatabricksBox
    ssl_context: ssl.SSLContext

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, in the connection's own thread, so one slow or broken
        # client never stalls accept() for everyone else.
        raw: socket.socket = request
        raw.settimeout(60)
        try:
            tls = self.ssl_context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            return
        self.box._track(tls)
        handler_class: Any = self.RequestHandlerClass  # typeshed types its 3rd argument oddly
        try:
            handler_class(tls, client_address, self)
        except (OSError, ssl.SSLError):
            pass
        finally:
            self.box._untrack(tls)
            with contextlib.suppress(OSError):
                tls.close()


class _BoxHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's pooled sessions expect
    server: _BoxServer

    def log_message(self, format: str, *args: Any) -> None:
        # Requests are recorded in DatabricksBox.requests; stderr noise helps nobody.
        return

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    # -- dispatch -----------------------------------------------------------------------------

    def _handle(self) -> None:
        box = self.server.box
        split = urlsplit(self.path)
        self._path = split.path
        self._query = parse_qs(split.query, keep_blank_values=True)
        self._status = 500
        self._auth = "not-required"
        self._fault = False
        self._recorded = False
        try:
            body = self._read_body()
            self._route(box, self._path, self._query, body)
        except _ApiError as err:
            self._send(
                err.status,
                err.body(),
                err.headers.get("Content-Type", "application/json"),
                err.headers,
            )
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self._record_once()

    def _record_once(self) -> None:
        # Called just before the response headers go out: once a client has its answer, a test
        # reading box.requests must already see it (recording afterwards raced the client).
        if self._recorded:
            return
        self._recorded = True
        self.server.box._record(
            RecordedRequest(
                method=self.command,
                path=self._path,
                query={k: tuple(v) for k, v in self._query.items()},
                host=self.headers.get("Host", ""),
                client_ip=str(self.client_address[0]),
                status=self._status,
                auth=self._auth,
                headers={
                    k.lower(): v
                    for k, v in self.headers.items()
                    if k.lower() in ("user-agent", "range", "x-databricks-org-id", "content-type")
                },
                fault_injected=self._fault,
                bearer=_bearer_fingerprint(self.headers.get("Authorization")),
            )
        )

    def _route(
        self, box: DatabricksBox, path: str, query: dict[str, list[str]], body: bytes
    ) -> None:
        if path == _WELL_KNOWN:
            self._well_known(box)
            return
        if path.startswith(_BLOB_PREFIX):
            self._maybe_fault(box, path)
            self._signed_download(box, path, query)
            return

        self._auth = box._check_token(self.headers.get("Authorization"))
        if self._auth == "missing":
            raise _ApiError(
                401,
                "Credential was not sent or was of an unsupported type for this API.",
                "UNAUTHENTICATED",
            )
        if self._auth != "ok":
            raise _token_refused(box.token_refusal, path)
        self._maybe_fault(box, path)

        if path.startswith(_PREVIEW_PREFIX):
            path = _API_PREFIX + path[len(_PREVIEW_PREFIX) :]
        if path.startswith(_API_PREFIX):
            route = path[len(_API_PREFIX) :]
            handler = {
                "model-versions/get-download-uri": self._get_download_uri,
                "model-versions/list-artifacts": self._list_artifacts,
                "model-versions/get-signed-download-uri": self._get_signed_download_uri,
            }.get(route)
            if handler is not None:
                self._require_method("GET")
                handler(box, query)
                return
            if route.startswith("registered-models/alias") and not box.expose_aliases:
                raise self._not_found()
            self._forward(box, path, route, body)
            return
        if path.startswith(_V3_PREFIX):
            self._forward(box, path, path[len(_V3_PREFIX) :], body)
            return
        if path == "/api/2.0/dbfs/get-status":
            self._require_method("GET")
            self._dbfs_get_status(box, query)
            return
        if path == "/api/2.0/dbfs/list":
            self._require_method("GET")
            self._dbfs_list(box, query)
            return
        if path.startswith("/dbfs/"):
            self._require_method("GET")
            self._dbfs_read(box, path[len("/dbfs") :])
            return
        raise self._not_found()

    def _not_found(self) -> _ApiError:
        return _ApiError(
            404,
            f"No API found for '{self.command} {urlsplit(self.path).path}'",
            "ENDPOINT_NOT_FOUND",
        )

    def _require_method(self, method: str) -> None:
        if self.command != method:
            raise self._not_found()

    def _maybe_fault(self, box: DatabricksBox, path: str) -> None:
        fault = box._take_fault(path)
        if fault is None:
            return
        self._fault = True
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = f"{fault.retry_after:g}"
        message = {
            # A valid token without permission on the model: PERMISSION_DENIED (the code is what
            # clients read; this wording is the box's own, no public capture of it was found).
            403: "The user does not have permission to read this registered model.",
            429: "Too many requests. Please wait a moment and try again.",
            503: "The service is temporarily unavailable.",
        }.get(fault.status, "Injected fault.")
        raise _ApiError(fault.status, message, headers=headers)

    # -- routes -------------------------------------------------------------------------------

    def _well_known(self, box: DatabricksBox) -> None:
        if not box.host_metadata:
            raise self._not_found()
        # What a workspace answers: its OIDC root, ids and cloud. databricks-sdk (0.162 here)
        # fills workspace_id from it, which mlflow then sends as x-databricks-org-id.
        document = {
            "oidc_endpoint": f"{box.host}/oidc",
            "account_id": box.account_id,
            "workspace_id": box.workspace_id,
            "cloud": box.cloud,
            "host_type": "workspace",
        }
        self._send_json(200, document)

    def _forward(self, box: DatabricksBox, path: str, route: str, body: bytes) -> None:
        split = urlsplit(self.path)
        target = path + (f"?{split.query}" if split.query else "")
        headers = {}
        if content_type := self.headers.get("Content-Type"):
            headers["Content-Type"] = content_type
        status, content_type, payload = box._backend_call(
            self.command, target, body=body if body else None, headers=headers
        )
        if status == 404 and "json" not in content_type:
            # mlflow server's HTML 404: the real service answers unknown APIs in JSON.
            raise self._not_found()
        if status >= 400:
            raise _ApiError(status, "backend error", raw_body=_as_error_json(payload))
        if not box.expose_aliases and route.startswith(_REGISTRY_ROUTES) and payload:
            with contextlib.suppress(ValueError):
                payload = json.dumps(_strip_aliases(json.loads(payload))).encode()
        self._send(status, payload, content_type or "application/json")

    def _get_download_uri(self, box: DatabricksBox, query: dict[str, list[str]]) -> None:
        va = box._resolve_version(_param(query, "name"), _param(query, "version"))
        self._send_json(200, {"artifact_uri": f"dbfs:{va.dbfs_root}"})

    def _list_artifacts(self, box: DatabricksBox, query: dict[str, list[str]]) -> None:
        va = box._resolve_version(_param(query, "name"), _param(query, "version"))
        rel = _safe_rel(_param(query, "path"))
        entry = box._stat(va, rel)
        if entry is None:
            self._send_json(200, {})
            return
        if not entry.is_dir:
            # A file lists as itself; mlflow's client turns that into an empty listing.
            self._send_json(200, {"files": [_file_json(entry)]})
            return
        entries = box._list_dir(va, rel) or []
        offset = _decode_page_token(_param(query, "page_token"))
        page = entries[offset : offset + box.list_page_size]
        document: dict[str, Any] = {"files": [_file_json(e) for e in page]} if page else {}
        if offset + box.list_page_size < len(entries):
            document["next_page_token"] = _encode_page_token(offset + box.list_page_size)
        self._send_json(200, document)

    def _get_signed_download_uri(self, box: DatabricksBox, query: dict[str, list[str]]) -> None:
        va = box._resolve_version(_param(query, "name"), _param(query, "version"))
        rel = _safe_rel(_param(query, "path"))
        entry = box._stat(va, rel)
        if entry is None or entry.is_dir:
            raise _ApiError(
                404, f"No file exists at path '{rel}' of model {va.name} version {va.version}."
            )
        headers = [{"name": k, "value": v} for k, v in box.signed_url_headers.items()]
        self._send_json(200, {"signed_uri": box._signed_url(va, rel), "headers": headers})

    def _signed_download(self, box: DatabricksBox, path: str, query: dict[str, list[str]]) -> None:
        if self.command not in ("GET", "HEAD"):
            raise _blob_error(403, "AuthorizationPermissionMismatch", "Read-only signature.")
        blob_path = unquote(path)
        box._verify_signature(blob_path, query)
        for name, value in box.signed_url_headers.items():
            if self.headers.get(name) != value:
                raise _blob_error(400, "MissingRequiredHeader", f"Header {name} is required.")
        registry_id, _, rel = blob_path[len(_BLOB_PREFIX) :].partition("/")
        with box._lock:
            signed = box._signed_versions.get(registry_id)
        if signed is None:
            raise _blob_error(404, "BlobNotFound", "The specified blob does not exist.")
        try:
            self._stream_file(box, signed, _safe_rel(rel), content_type="application/octet-stream")
        except _ApiError as err:
            if err.status == 404:
                raise _blob_error(
                    404, "BlobNotFound", "The specified blob does not exist."
                ) from None
            raise

    def _dbfs_target(self, box: DatabricksBox, dbfs_path: str) -> tuple[_VersionArtifacts, str]:
        """Map a DBFS path under /databricks/mlflow-registry/<id>/models/<ap> to (version, rel)."""
        cleaned = "/" + dbfs_path.removeprefix("dbfs:").strip("/")
        parts = cleaned.split("/")
        missing = _ApiError(404, f"No file or directory exists on path {cleaned}.")
        # ["", "databricks", "mlflow-registry", id, "models", artifact_path, *rel]
        if (
            cleaned.startswith(_REGISTRY_DBFS_ROOT + "/")
            and len(parts) >= 6
            and parts[4] == "models"
        ):
            try:
                va = box._version_for_registry_id(parts[3])
            except _ApiError:
                raise missing from None
            if parts[5] == va.artifact_path:
                return va, _safe_rel("/".join(parts[6:]))
        raise missing

    def _dbfs_get_status(self, box: DatabricksBox, query: dict[str, list[str]]) -> None:
        requested = _param(query, "path")
        va, rel = self._dbfs_target(box, requested)
        entry = box._stat(va, rel)
        if entry is None:
            raise _ApiError(404, f"No file or directory exists on path {requested}.")
        self._send_json(200, _dbfs_json(va, entry))

    def _dbfs_list(self, box: DatabricksBox, query: dict[str, list[str]]) -> None:
        requested = _param(query, "path")
        va, rel = self._dbfs_target(box, requested)
        entry = box._stat(va, rel)
        if entry is None:
            raise _ApiError(404, f"No file or directory exists on path {requested}.")
        if not entry.is_dir:
            self._send_json(200, {"files": [_dbfs_json(va, entry)]})
            return
        entries = box._list_dir(va, rel) or []
        # DBFS omits `files` for an empty directory.
        self._send_json(200, {"files": [_dbfs_json(va, e) for e in entries]} if entries else {})

    def _dbfs_read(self, box: DatabricksBox, dbfs_path: str) -> None:
        va, rel = self._dbfs_target(box, unquote(dbfs_path))
        entry = box._stat(va, rel)
        if entry is None or entry.is_dir:
            raise _ApiError(404, f"No file exists on path {dbfs_path}.")
        self._stream_file(box, va, rel, content_type="application/octet-stream")

    # -- I/O helpers --------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise _ApiError(411, "Chunked request bodies are not supported by the box.")
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _stream_file(
        self, box: DatabricksBox, va: _VersionArtifacts, rel: str, *, content_type: str
    ) -> None:
        with box._open(va, rel, self.headers.get("Range")) as (status, headers, chunks):
            self.send_response(status)
            self._status = status
            self.send_header("Content-Type", content_type)
            self.send_header("Accept-Ranges", "bytes")
            for key, value in headers.items():
                if value:
                    self.send_header(key, value)
            if not headers.get("Content-Length"):
                self.close_connection = True  # length unknown: end of body is end of connection
            self._record_once()
            self.end_headers()
            if self.command == "HEAD":
                return
            for block in chunks:
                self.wfile.write(block)

    def _send_json(self, status: int, document: Mapping[str, Any]) -> None:
        self._send(status, json.dumps(document).encode(), "application/json")

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            if key.lower() != "content-type":
                self.send_header(key, value)
        self._record_once()
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _bearer_fingerprint(authorization: str | None) -> str | None:
    scheme, _, credential = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not credential:
        return None
    return DatabricksBox.fingerprint(credential)


def _param(query: Mapping[str, list[str]], name: str) -> str:
    values = query.get(name)
    return values[0] if values else ""


def _file_json(entry: _Entry) -> dict[str, Any]:
    document: dict[str, Any] = {"path": entry.rel, "is_dir": entry.is_dir}
    if not entry.is_dir:
        document["file_size"] = entry.size or 0
    return document


def _dbfs_json(va: _VersionArtifacts, entry: _Entry) -> dict[str, Any]:
    path = posixpath.join(va.dbfs_root, entry.rel) if entry.rel else va.dbfs_root
    return {
        "path": path,
        "is_dir": entry.is_dir,
        "file_size": 0 if entry.is_dir else (entry.size or 0),
        "modification_time": int(time.time() * 1000),
    }


def _encode_page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def _decode_page_token(token: str) -> int:
    if not token:
        return 0
    try:
        offset = int(json.loads(base64.urlsafe_b64decode(token.encode()))["offset"])
    except (ValueError, KeyError, TypeError):
        raise _ApiError(400, "Invalid page_token.") from None
    if offset < 0:
        raise _ApiError(400, "Invalid page_token.")
    return offset
