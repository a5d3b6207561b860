"""A loopback port that drops every request with a reset, and counts the connections.

A closed port refuses connections before anyone can count them; tests that bound how often a
client retries an unreachable host listen here instead, so the bound is on attempts (what the
retry policy decides) rather than on wall time (what a loaded machine decides).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from types import TracebackType


class ResettingPort:
    """Accepts connections on 127.0.0.1 and resets each (SO_LINGER 0) once the client sent
    something or hung up: a bare TCP probe sees a host that is there, a request (a TLS hello,
    an HTTP line) sees the connection reset, as from a dying load balancer or proxy."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(64)
        self.port: int = self._socket.getsockname()[1]
        self._count = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def connections(self) -> int:
        with self._lock:
            return self._count

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._socket.accept()
            except OSError:
                return  # closed
            with self._lock:
                self._count += 1
            conn.settimeout(10)
            with contextlib.suppress(OSError):  # a reset or a timeout: drop it all the same
                conn.recv(1)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    def close(self) -> None:
        self._socket.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ResettingPort:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
