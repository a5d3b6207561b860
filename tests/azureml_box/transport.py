"""How clients reach the box: its TLS server and request handler, and its proxy.

Why a proxy: azureml-mlflow downloads a file only if its SAS URI matches
`https://*.blob.<cloud storage suffix>/...` (`core.windows.net` for AzureCloud) and silently
skips it otherwise, and registry discovery is hard-wired to `https://eastus.api.azureml.ms/`.
Such names cannot resolve to loopback without touching /etc/hosts, so clients get
HTTPS_PROXY/HTTP_PROXY pointing at this box (the way a user behind a corporate proxy works):
CONNECT to `*.blob.core.windows.net:443` is tunnelled to Azurite, `*.api.azureml.ms:443` to this
server, and everything else is refused with 403 and recorded in `blocked_egress`, so a library
that tries the internet fails fast and visibly instead of leaving the machine. While a "blob"
fault is registered (or `inspect_blobs` is set), the proxy terminates TLS for blob hosts itself
(blobs._BlobInspector), so blob requests can be recorded, throttled or cut off midway like the
box's own routes.
"""

from __future__ import annotations

import contextlib
import select
import socket
import socketserver
import ssl
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .blobs import _BlobInspector
from .model import _SECRET_QUERY_KEYS, BLOB_HOST_SUFFIX, RequestRecord, _read_chunked, _Request

if TYPE_CHECKING:
    from .box import AzureMLBox

class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        box: AzureMLBox,
        context: ssl.SSLContext,
    ) -> None:
        super().__init__(address, handler)
        self.box = box
        self.ssl_context = context

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, in the request's own thread, so a slow or broken client
        # cannot stall the accept loop.
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        self.RequestHandlerClass(tls, client_address, self)  # type: ignore[arg-type]

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-response (timeouts in fault tests) are expected; stay quiet.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the Azure SDK pipelines expect
    server: _TLSServer
    timeout = 120

    def log_message(self, format: str, *args: Any) -> None:
        pass  # every request lands in AzureMLBox.requests instead

    def _serve(self) -> None:
        started = time.time()
        split = urlsplit(self.path)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = _read_chunked(self.rfile)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        req = _Request(
            method=self.command,
            raw_path=split.path,
            path=unquote(split.path),
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            raw_query=split.query,
            headers=self.headers,
            body=body,
            host=(self.headers.get("Host") or "").split(":")[0].lower(),
        )
        box = self.server.box
        try:
            response, route, identity, fault = box._dispatch(req)
        except Exception as exc:  # the box must answer, not hang the client
            response = box._aml_error(500, "InternalServerError", f"azureml-box bug: {exc!r}")
            route, identity, fault = "error", None, None
        request_id = str(uuid.uuid4())
        headers = {
            "x-ms-request-id": request_id,
            "x-ms-correlation-request-id": request_id,
            **response.headers,
        }
        # Recorded before the response goes out: a client that gets its answer must find its
        # request in the log already (tests assert on the log right after the call returns).
        box._record(
            RequestRecord(
                method=req.method,
                path=req.path,
                query={
                    k: ("<redacted>" if k.lower() in _SECRET_QUERY_KEYS else v)
                    for k, v in req.query.items()
                },
                route=route,
                status=response.status,
                identity=identity,
                fault=fault,
                started=started,
                duration=time.time() - started,
                host=req.host,
            )
        )
        if response.drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(response.status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve


class _ProxyServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], handler: type[socketserver.BaseRequestHandler],
        box: AzureMLBox,
    ) -> None:
        super().__init__(address, handler)
        self.box = box

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class _ProxyHandler(socketserver.StreamRequestHandler):
    """Just enough of an HTTP proxy: CONNECT tunnels to the box's own services, 403 otherwise."""

    server: _ProxyServer
    rbufsize = 0  # unbuffered: no TLS bytes may be swallowed while reading the CONNECT header
    timeout = 120

    def handle(self) -> None:
        box = self.server.box
        started = time.time()
        request_line = self.rfile.readline(65537).decode("latin-1").strip()
        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
            pass
        parts = request_line.split()
        if len(parts) != 3:
            return
        method, target = parts[0].upper(), parts[1]
        if method == "CONNECT":
            host, _, port_text = target.rpartition(":")
            destination = box._tunnel_destination(host.lower(), int(port_text or 0))
        else:
            host, destination = urlsplit(target).hostname or target, None
        status = 200 if destination is not None else 403

        def record() -> None:
            box._record(RequestRecord(
                method=method, path=target, query={}, route="proxy", status=status,
                identity=None, fault=None, started=started, duration=time.time() - started,
                host=host,
            ))

        if destination is None:
            box.blocked_egress.append(target)
            record()
            message = f"azureml-box proxy: {target} is not part of the box; refused.\r\n"
            self.wfile.write(
                f"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                f"Content-Length: {len(message)}\r\n\r\n{message}".encode()
            )
            return
        record()
        if host.lower().endswith(BLOB_HOST_SUFFIX) and box._inspects_blobs():
            self.wfile.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            _BlobInspector(box, self.connection, destination).serve()
            return
        with contextlib.closing(socket.create_connection(destination, timeout=10)) as upstream:
            self.wfile.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            _pipe(self.connection, upstream)


def _pipe(a: socket.socket, b: socket.socket, idle_timeout: float = 120.0) -> None:
    sockets = [a, b]
    while True:
        readable, _, _ = select.select(sockets, [], [], idle_timeout)
        if not readable:
            return
        for sock in readable:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            other = b if sock is a else a
            try:
                other.sendall(data)
            except OSError:
                return
