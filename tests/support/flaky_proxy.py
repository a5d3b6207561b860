"""A loopback HTTP reverse proxy that injects faults on demand, for resilience tests.

Put it between a client and a real server (usually an `MlflowServer`) and turn faults on and off
while the test runs:

    with FlakyProxy(server.url) as proxy:
        proxy.configure(fail_every_n=3, retry_after=0)   # every 3rd request -> 503
        ...                                              # point the client at proxy.url
        assert proxy.counters.failed >= 1

Faults count only requests that match `match` (a regex searched in "METHOD /path?query"), so a
test can break artifact uploads while registry calls pass. Bodies stream in both directions in
fixed-size chunks, so multi-hundred-MB artifacts never sit in memory.
"""

from __future__ import annotations

import contextlib
import enum
import http.client
import re
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Literal
from urllib.parse import urlsplit

_CHUNK = 1024 * 1024
_MAX_RECORDS = 10_000
# RFC 9110 7.6.1: connection-specific headers are never forwarded by a proxy.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

DropMode = Literal["before_response", "mid_body"]
Outcome = Literal["forwarded", "failed", "dropped", "truncated", "upstream_error", "client_gone"]


@dataclass(frozen=True)
class ProxyRecord:
    """One request the proxy saw and what it did with it."""

    method: str
    path: str
    outcome: Outcome
    status: int | None


@dataclass(frozen=True)
class ProxyCounters:
    """A snapshot of the proxy's counters (take a new one with `FlakyProxy.counters`)."""

    requests_seen: int = 0
    requests_matched: int = 0
    forwarded: int = 0
    failed: int = 0
    dropped: int = 0
    truncated: int = 0
    upstream_errors: int = 0

    @property
    def faults_injected(self) -> int:
        return self.failed + self.dropped + self.truncated


@dataclass
class _FaultConfig:
    fail_every_n: int | None = None
    drop_every_n: int | None = None
    drop_mode: DropMode = "before_response"
    truncate_at: int | None = None
    always_fail: bool = False
    fail_status: int = 503
    retry_after: int | float | str | None = None
    match: re.Pattern[str] | None = None
    max_faults: int | None = None


_Decision = Literal["forward", "fail", "drop", "truncate"]


class _Unset(enum.Enum):
    # A sentinel type, so configure() can tell "not given" from "set to None".
    TOKEN = 0


_UNSET = _Unset.TOKEN


class FlakyProxy:
    """Threaded reverse proxy from `url` (loopback, free port) to `upstream`.

    Fault options (all changeable at runtime through `configure`):

    - `fail_every_n`: every n-th matching request gets `fail_status` (503) and, if `retry_after`
      is set, a `Retry-After` header. The request body is read first, so the client sees a clean
      response rather than a reset.
    - `drop_every_n`: every n-th matching request loses its connection. `drop_mode` says when:
      "before_response" (body read, then the socket closes with no status line) or "mid_body"
      (status and headers are forwarded with the true length, then the connection closes after
      `truncate_at` body bytes, default half the body).
    - `always_fail`: every matching request fails (bounded-retry tests).
    - `max_faults`: stop injecting after this many faults (e.g. "fail twice, then recover").
    - `match`: regex searched in "METHOD /path?query"; non-matching requests pass untouched and
      do not advance the every-n counters.

    "Every n-th" and `max_faults` count from the latest `configure()` call.

    `on_response(method, path, status)`, if given, is called for every forwarded request once
    the upstream has answered and before the answer is relayed: what it does to the upstream's
    state (e.g. alter a file the server just stored) happens before the client learns of the
    answer, so the client's next request sees it. If it raises, the client gets a 502.

    When n-th counters coincide, drop wins over fail.
    """

    def __init__(
        self,
        upstream: str,
        *,
        fail_every_n: int | None = None,
        drop_every_n: int | None = None,
        drop_mode: DropMode = "before_response",
        truncate_at: int | None = None,
        always_fail: bool = False,
        fail_status: int = 503,
        retry_after: int | float | str | None = None,
        match: str | None = None,
        max_faults: int | None = None,
        upstream_timeout: float = 120.0,
        client_timeout: float = 120.0,
        upstream_ssl_context: ssl.SSLContext | None = None,
        rewrite_host: bool = True,
        on_response: Callable[[str, str, int], None] | None = None,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream must be an http(s) base URL, got {upstream!r}")
        self.upstream = upstream.rstrip("/")
        self._upstream_scheme = parts.scheme
        self._upstream_host = parts.hostname
        self._upstream_port = parts.port or (443 if parts.scheme == "https" else 80)
        self._upstream_netloc = parts.netloc
        self._upstream_base_path = parts.path.rstrip("/")
        self.upstream_timeout = upstream_timeout
        self.client_timeout = client_timeout
        self.upstream_ssl_context = upstream_ssl_context
        self.rewrite_host = rewrite_host
        self.on_response = on_response

        self._lock = threading.Lock()
        self._config = _FaultConfig()
        self._counters = ProxyCounters()
        self._matched_since_configure = 0
        self._faults_since_configure = 0
        self._records: deque[ProxyRecord] = deque(maxlen=_MAX_RECORDS)
        self._open_sockets: set[socket.socket] = set()
        self._server: _ProxyServer | None = None
        self._thread: threading.Thread | None = None
        self.configure(
            fail_every_n=fail_every_n,
            drop_every_n=drop_every_n,
            drop_mode=drop_mode,
            truncate_at=truncate_at,
            always_fail=always_fail,
            fail_status=fail_status,
            retry_after=retry_after,
            match=match,
            max_faults=max_faults,
        )

    # -- configuration ----------------------------------------------------------------------

    def configure(
        self,
        *,
        fail_every_n: int | _Unset | None = _UNSET,
        drop_every_n: int | _Unset | None = _UNSET,
        drop_mode: DropMode | _Unset = _UNSET,
        truncate_at: int | _Unset | None = _UNSET,
        always_fail: bool | _Unset = _UNSET,
        fail_status: int | _Unset = _UNSET,
        retry_after: int | float | str | _Unset | None = _UNSET,
        match: str | _Unset | None = _UNSET,
        max_faults: int | _Unset | None = _UNSET,
    ) -> None:
        """Change fault settings; only the arguments given change. Thread-safe."""
        with self._lock:
            cfg = self._config
        for key, count in (
            ("fail_every_n", fail_every_n),
            ("drop_every_n", drop_every_n),
            ("truncate_at", truncate_at),
            ("max_faults", max_faults),
        ):
            if isinstance(count, _Unset):
                continue
            if count is not None and (not isinstance(count, int) or count < 0):
                raise ValueError(f"{key} must be a non-negative int or None, got {count!r}")
            if key.endswith("every_n") and count == 0:
                raise ValueError(f"{key} must be >= 1 (use None to turn it off)")
        if not isinstance(fail_every_n, _Unset):
            cfg = replace(cfg, fail_every_n=fail_every_n)
        if not isinstance(drop_every_n, _Unset):
            cfg = replace(cfg, drop_every_n=drop_every_n)
        if not isinstance(truncate_at, _Unset):
            cfg = replace(cfg, truncate_at=truncate_at)
        if not isinstance(max_faults, _Unset):
            cfg = replace(cfg, max_faults=max_faults)
        if not isinstance(drop_mode, _Unset):
            if drop_mode not in ("before_response", "mid_body"):
                raise ValueError(f"drop_mode must be before_response or mid_body: {drop_mode!r}")
            cfg = replace(cfg, drop_mode=drop_mode)
        if not isinstance(always_fail, _Unset):
            cfg = replace(cfg, always_fail=bool(always_fail))
        if not isinstance(fail_status, _Unset):
            if not 100 <= fail_status <= 599:
                raise ValueError(f"fail_status must be an HTTP status code, got {fail_status!r}")
            cfg = replace(cfg, fail_status=fail_status)
        if not isinstance(retry_after, _Unset):
            cfg = replace(cfg, retry_after=retry_after)
        if not isinstance(match, _Unset):
            cfg = replace(cfg, match=re.compile(match) if match is not None else None)
        with self._lock:
            # Last writer wins; tests configure from one thread, so merging is not needed.
            self._config = cfg
            # "every n-th" counts from the latest configure(): a test reasons about the requests
            # it makes after turning a fault on, not about earlier traffic.
            self._matched_since_configure = 0
            self._faults_since_configure = 0

    def heal(self) -> None:
        """Turn every fault off; counters are kept."""
        self.configure(
            fail_every_n=None, drop_every_n=None, always_fail=False, max_faults=None, match=None
        )

    def reset_counters(self) -> None:
        with self._lock:
            self._counters = ProxyCounters()
            self._records.clear()

    @property
    def counters(self) -> ProxyCounters:
        with self._lock:
            return self._counters

    @property
    def requests_seen(self) -> int:
        return self.counters.requests_seen

    @property
    def faults_injected(self) -> int:
        return self.counters.faults_injected

    @property
    def records(self) -> list[ProxyRecord]:
        with self._lock:
            return list(self._records)

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("proxy not started")
        port: int = self._server.server_address[1]
        return port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FlakyProxy:
        if self._server is not None:
            return self
        server = _ProxyServer(("127.0.0.1", 0), _ProxyHandler)
        server.proxy = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"FlakyProxy:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, cut every open connection, and wait (bounded) for handlers to end."""
        server = self._server
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            sockets = list(self._open_sockets)
        for sock in sockets:
            # Unblocks handler threads stuck in recv() on a keep-alive client or a slow upstream.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._open_sockets:
                    break
            time.sleep(0.05)
        self._server = None
        self._thread = None

    def __enter__(self) -> FlakyProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f"port={self._server.server_address[1]}" if self._server else "stopped"
        return f"<FlakyProxy {where} -> {self.upstream} {self.counters}>"

    # -- used by the handler ----------------------------------------------------------------

    def _decide(self, method: str, path: str) -> tuple[_Decision, _FaultConfig]:
        with self._lock:
            cfg = self._config
            c = self._counters
            c = replace(c, requests_seen=c.requests_seen + 1)
            decision: _Decision = "forward"
            if cfg.match is None or cfg.match.search(f"{method} {path}"):
                c = replace(c, requests_matched=c.requests_matched + 1)
                self._matched_since_configure += 1
                k = self._matched_since_configure
                budget_left = (
                    cfg.max_faults is None or self._faults_since_configure < cfg.max_faults
                )
                if budget_left and cfg.always_fail:
                    decision = "fail"
                elif budget_left and cfg.drop_every_n and k % cfg.drop_every_n == 0:
                    decision = "truncate" if cfg.drop_mode == "mid_body" else "drop"
                elif budget_left and cfg.fail_every_n and k % cfg.fail_every_n == 0:
                    decision = "fail"
                # Reserve the fault now so concurrent requests respect max_faults.
                if decision != "forward":
                    self._faults_since_configure += 1
                if decision == "fail":
                    c = replace(c, failed=c.failed + 1)
                elif decision == "drop":
                    c = replace(c, dropped=c.dropped + 1)
                elif decision == "truncate":
                    c = replace(c, truncated=c.truncated + 1)
            self._counters = c
            return decision, cfg

    def _record(self, method: str, path: str, outcome: Outcome, status: int | None) -> None:
        with self._lock:
            self._records.append(ProxyRecord(method, path, outcome, status))
            c = self._counters
            if outcome == "forwarded":
                self._counters = replace(c, forwarded=c.forwarded + 1)
            elif outcome == "upstream_error":
                self._counters = replace(c, upstream_errors=c.upstream_errors + 1)

    def _reclassify_truncation_as_drop(self) -> None:
        with self._lock:
            c = self._counters
            self._counters = replace(c, truncated=c.truncated - 1, dropped=c.dropped + 1)

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._open_sockets.add(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._open_sockets.discard(sock)

    def _upstream_connection(self) -> http.client.HTTPConnection:
        if self._upstream_scheme == "https":
            return http.client.HTTPSConnection(
                self._upstream_host,
                self._upstream_port,
                timeout=self.upstream_timeout,
                context=self.upstream_ssl_context,
            )
        return http.client.HTTPConnection(
            self._upstream_host, self._upstream_port, timeout=self.upstream_timeout
        )


class _ProxyServer(ThreadingHTTPServer):
    # Handler threads must never keep the test process alive.
    daemon_threads = True
    allow_reuse_address = True
    proxy: FlakyProxy

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that was killed or hung up resets its connections: that is the tests'
        # business, not a proxy fault. socketserver would print a traceback to whatever
        # sys.stderr is then, which may be a CLI run's captured stream in this process.
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class _ClientGone(Exception):
    """The downstream client closed its connection; nothing more can be sent."""


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer
    _noted = False

    def setup(self) -> None:
        super().setup()
        # Bounds idle keep-alive connections and stalled clients, so handler threads end.
        self.connection.settimeout(self.server.proxy.client_timeout)
        self.server.proxy._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.proxy._untrack(self.connection)

    def log_message(self, format: str, *args: object) -> None:
        # Requests are recorded in FlakyProxy.records; stderr noise would bury test output.
        pass

    # -- request body -----------------------------------------------------------------------

    def _request_body_framing(self) -> tuple[int | None, bool]:
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        if chunked:
            return None, True
        length = self.headers.get("Content-Length")
        return (int(length) if length is not None else 0), False

    def _iter_request_body(self) -> Iterator[bytes]:
        length, chunked = self._request_body_framing()
        if chunked:
            while True:
                size_line = self.rfile.readline(65537)
                if not size_line:
                    raise _ClientGone("EOF in chunked request body")
                size = int(size_line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    # Trailers (ignored) end with an empty line.
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return
                remaining = size
                while remaining:
                    data = self.rfile.read(min(remaining, _CHUNK))
                    if not data:
                        raise _ClientGone("EOF in chunked request body")
                    remaining -= len(data)
                    yield data
                self.rfile.readline(3)  # CRLF after the chunk data
        else:
            remaining = length or 0
            while remaining:
                data = self.rfile.read(min(remaining, _CHUNK))
                if not data:
                    raise _ClientGone("EOF in request body")
                remaining -= len(data)
                yield data

    def _drain_request_body(self) -> None:
        for _ in self._iter_request_body():
            pass

    # -- faults -----------------------------------------------------------------------------

    def _send_injected_failure(self, cfg: _FaultConfig) -> None:
        body = (
            b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "fault injected by FlakyProxy"}'
        )
        self.send_response_only(cfg.fail_status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if cfg.retry_after is not None:
            value = cfg.retry_after
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            self.send_header("Retry-After", str(value))
        self.end_headers()
        self.wfile.write(body)

    def _abort_connection(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    # -- the proxy --------------------------------------------------------------------------

    def _target_path(self) -> str:
        path = self.path
        if "://" in path.split("?", 1)[0]:
            # Absolute-form request target (a client that thinks we are a forward proxy).
            parts = urlsplit(path)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
        return self.server.proxy._upstream_base_path + path

    def _note(self, outcome: Outcome, status: int | None) -> None:
        # Called just BEFORE the last byte goes out, so a client that has its full answer always
        # sees up-to-date counters; once per request.
        if not self._noted:
            self._noted = True
            self.server.proxy._record(self.command, self.path, outcome, status)

    def _handle(self) -> None:
        self._noted = False
        decision, cfg = self.server.proxy._decide(self.command, self.path)
        try:
            if decision == "fail":
                self._drain_request_body()
                self._note("failed", cfg.fail_status)
                self._send_injected_failure(cfg)
                return
            if decision == "drop":
                self._drain_request_body()
                self._note("dropped", None)
                self._abort_connection()
                return
            self._forward(decision == "truncate", cfg)
        except (_ClientGone, BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True
            self._note("client_gone", None)

    def _forward(self, truncate: bool, cfg: _FaultConfig) -> None:
        proxy = self.server.proxy
        method = self.command
        length, chunked = self._request_body_framing()
        upstream = proxy._upstream_connection()
        response: http.client.HTTPResponse | None = None
        try:
            try:
                upstream.putrequest(
                    method, self._target_path(), skip_host=True, skip_accept_encoding=True
                )
                self._send_request_headers(upstream, length, chunked)
                if upstream.sock is not None:
                    proxy._track(upstream.sock)
                for data in self._iter_request_body():
                    if chunked:
                        upstream.send(b"%x\r\n%b\r\n" % (len(data), data))
                    else:
                        upstream.send(data)
                if chunked:
                    upstream.send(b"0\r\n\r\n")
                response = upstream.getresponse()
            except _ClientGone:
                raise
            except (OSError, http.client.HTTPException) as exc:
                self._note("upstream_error", 502)
                self._send_bad_gateway(exc)
                return
            if proxy.on_response is not None:
                try:
                    proxy.on_response(method, self.path, response.status)
                except Exception as exc:
                    self._note("upstream_error", 502)
                    self._send_bad_gateway(exc)
                    return
            self._relay_response(response, truncate, cfg)
        finally:
            if upstream.sock is not None:
                proxy._untrack(upstream.sock)
            if response is not None:
                response.close()
            upstream.close()

    def _send_request_headers(
        self, upstream: http.client.HTTPConnection, length: int | None, chunked: bool
    ) -> None:
        proxy = self.server.proxy
        connection_tokens = {
            t.strip().lower() for t in self.headers.get("Connection", "").split(",") if t.strip()
        }
        original_host = self.headers.get("Host")
        for name, value in self.headers.items():
            lower = name.lower()
            if lower in _HOP_BY_HOP or lower in connection_tokens:
                continue
            # Expect: 100-continue was already answered by BaseHTTPRequestHandler.
            if lower in ("host", "content-length", "expect"):
                continue
            upstream.putheader(name, value)
        upstream.putheader(
            "Host", proxy._upstream_netloc if proxy.rewrite_host else (original_host or "")
        )
        if original_host:
            upstream.putheader("X-Forwarded-Host", original_host)
        if chunked:
            upstream.putheader("Transfer-Encoding", "chunked")
        elif length or self.command in ("POST", "PUT", "PATCH"):
            upstream.putheader("Content-Length", str(length or 0))
        upstream.endheaders()

    def _send_bad_gateway(self, exc: BaseException) -> None:
        body = f"FlakyProxy: upstream error: {exc!r}".encode()
        self.send_response_only(502)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _relay_response(
        self, response: http.client.HTTPResponse, truncate: bool, cfg: _FaultConfig
    ) -> None:
        proxy = self.server.proxy
        method = self.command
        status = response.status
        has_body = method != "HEAD" and status not in (204, 304) and status >= 200
        upstream_length_header = response.getheader("Content-Length")
        body_length = (
            int(upstream_length_header)
            if upstream_length_header is not None and not response.chunked
            else None
        )

        if truncate and (not has_body or body_length == 0):
            # Nothing to cut in the middle of; losing the whole response is the closest fault.
            proxy._reclassify_truncation_as_drop()
            self._note("dropped", None)
            self._abort_connection()
            return

        connection_tokens = {
            t.strip().lower()
            for t in (response.getheader("Connection") or "").split(",")
            if t.strip()
        }
        client_is_http10 = self.request_version == "HTTP/1.0"
        self.send_response_only(status, response.reason)
        for name, value in response.getheaders():
            lower = name.lower()
            if lower in _HOP_BY_HOP or lower in connection_tokens or lower == "content-length":
                continue
            self.send_header(name, value)
        use_chunked = False
        if not has_body:
            if upstream_length_header is not None:
                self.send_header("Content-Length", upstream_length_header)
        elif body_length is not None:
            self.send_header("Content-Length", str(body_length))
        elif client_is_http10:
            # HTTP/1.0 cannot chunk; the end of the body is the end of the connection.
            self.send_header("Connection", "close")
        else:
            use_chunked = True
            self.send_header("Transfer-Encoding", "chunked")
        if self.close_connection and not client_is_http10:
            self.send_header("Connection", "close")
        if not has_body:
            self._note("forwarded", status)
        self.end_headers()
        if not has_body:
            return

        limit: int | None = None
        if truncate:
            if cfg.truncate_at is not None:
                limit = cfg.truncate_at
            elif body_length is not None:
                limit = body_length // 2
            else:
                limit = 1  # unknown length: cut right after the first byte
            if body_length is not None:
                limit = min(limit, body_length - 1)

        sent = 0
        while limit is None or sent < limit:
            want = _CHUNK if limit is None else min(_CHUNK, limit - sent)
            try:
                data = response.read1(want)
            except (OSError, http.client.HTTPException):
                data = None
            if data is None or (not data and body_length is not None and sent < body_length):
                # Upstream broke mid-body; the client must see a broken response, not a short
                # one that looks complete.
                self._note("upstream_error", status)
                self._abort_connection()
                return
            if not data:
                break
            if limit is None and body_length is not None and sent + len(data) == body_length:
                self._note("forwarded", status)
            # Write errors here are the client's; _handle records them as client_gone.
            if use_chunked:
                self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data))
            else:
                self.wfile.write(data)
            sent += len(data)

        if limit is not None:
            self._note("truncated", status)
            self._abort_connection()
            return
        self._note("forwarded", status)
        if use_chunked:
            self.wfile.write(b"0\r\n\r\n")
        if client_is_http10 and body_length is None:
            self.close_connection = True

    do_GET = _handle
    do_HEAD = _handle
    do_POST = _handle
    do_PUT = _handle
    do_PATCH = _handle
    do_DELETE = _handle
    do_OPTIONS = _handle
