"""A loopback reverse proxy that records what clients send: headers, and how many requests were
in flight at once. Optionally it terminates TLS (a front end with its own certificate, as
nginx or a load balancer does for an `mlflow server`), demands HTTP basic auth (as a gateway
or `mlflow server --app-name basic-auth` does), and holds matching requests for a moment so
that concurrent requests overlap visibly.

    with RecordingProxy(server.url, hold=("GET /api/2.0/mlflow-artifacts/", 0.3)) as proxy:
        ...                              # point the client at proxy.url
        assert proxy.peak_in_flight == 2

Bodies are buffered whole (test models are small); for large or faulty transfers use
`support.flaky_proxy.FlakyProxy`.
"""

from __future__ import annotations

import base64
import http.client
import re
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

# RFC 9110 7.6.1: connection-specific headers are never forwarded by a proxy.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                         "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"})
# What `mlflow server --app-name basic-auth` answers without valid credentials
# (mlflow/server/auth/__init__.py, `make_basic_auth_response`).
_UNAUTHENTICATED = (b"You are not authenticated. Please see "
                    b"https://www.mlflow.org/docs/latest/auth/index.html#authenticating-to-mlflow "
                    b"on how to authenticate.")


@dataclass(frozen=True)
class SeenRequest:
    """One request as the proxy received it."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    status: int


class RecordingProxy:
    """Threaded reverse proxy from `url` (loopback, free port) to the http `upstream`.

    - `tls`: (certificate chain PEM, key PEM) to serve https instead of http.
    - `basic_auth`: (user, password) every request must carry, else 401 like MLflow's auth app.
    - `hold`: (regex searched in "METHOD /path", seconds): matching requests wait that long
      before they are forwarded; `peak_in_flight` is the most matching requests held or
      forwarded at the same moment.
    """

    def __init__(self, upstream: str, *, tls: tuple[Path, Path] | None = None,
                 basic_auth: tuple[str, str] | None = None,
                 hold: tuple[str, float] | None = None) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http base URL, got {upstream!r}")
        self._upstream = (parts.hostname, parts.port or 80)
        self._upstream_netloc = parts.netloc
        self._tls = tls
        self._expected_auth = None if basic_auth is None else "Basic " + base64.b64encode(
            f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode()
        self._hold = None if hold is None else (re.compile(hold[0]), hold[1])
        self._lock = threading.Lock()
        self._seen: list[SeenRequest] = []
        self._in_flight = 0
        self.peak_in_flight = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        scheme = "https" if self._tls else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    @property
    def requests(self) -> list[SeenRequest]:
        with self._lock:
            return list(self._seen)

    def reset(self) -> None:
        with self._lock:
            self._seen.clear()
            self.peak_in_flight = 0

    def start(self) -> RecordingProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        server = _QuietServer(("127.0.0.1", 0), Handler)
        if self._tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(self._tls[0]), str(self._tls[1]))
            # The handshake happens in the handler's thread, not in the accepting one, so a
            # client that refuses the certificate does not hold up the others.
            server.socket = context.wrap_socket(server.socket, server_side=True,
                                                do_handshake_on_connect=False)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True,
                                        name="recording-proxy")
        self._thread.start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> RecordingProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- used by the handler --------------------------------------------------------------------

    def _held(self, method: str, path: str) -> float:
        if self._hold is None or not self._hold[0].search(f"{method} {path}"):
            return 0.0
        return self._hold[1]

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _record(self, seen: SeenRequest) -> None:
        with self._lock:
            self._seen.append(seen)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that refused the TLS certificate or hung up: what the test is about, not
        # a traceback for the log.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: RecordingProxy

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _handle(self) -> None:
        owner = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        if owner._expected_auth is not None and headers.get("authorization") != \
                owner._expected_auth:
            owner._record(SeenRequest(self.command, self.path, headers, 401))
            self._reply(401, {"WWW-Authenticate": 'Basic realm="mlflow"',
                              "Content-Type": "text/plain"}, _UNAUTHENTICATED)
            return
        pause = owner._held(self.command, self.path)
        if pause:
            owner._enter()
        try:
            time.sleep(pause)
            status, reply_headers, reply = self._forward(body)
        finally:
            if pause:
                owner._leave()
        owner._record(SeenRequest(self.command, self.path, headers, status))
        self._reply(status, reply_headers, reply)

    def _forward(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        host, port = self.owner._upstream
        connection = http.client.HTTPConnection(host, port, timeout=120)
        try:
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in _HOP_BY_HOP and k.lower() not in
                       ("host", "content-length")}
            # The upstream sees its own address (MLflow checks the Host header).
            headers["Host"] = self.owner._upstream_netloc
            headers["Content-Length"] = str(len(body))
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            reply_headers = {k: v for k, v in response.getheaders()
                             if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"}
            return response.status, reply_headers, data
        finally:
            connection.close()

    def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle
