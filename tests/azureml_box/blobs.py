"""Blob storage in the box: Azurite, reached under production host names.

azureml-mlflow downloads a file only if its SAS URI matches `https://*.blob.<cloud storage
suffix>/...` (`core.windows.net` for AzureCloud), so the SAS URIs the box mints name
`{account}.blob.core.windows.net`, which the proxy (transport.py) tunnels to Azurite. While a
"blob" fault is registered (or `inspect_blobs` is set), the proxy terminates TLS for blob hosts
itself (the test CA signs `*.blob.core.windows.net`) and hands the connection to _BlobInspector,
so blob requests can be recorded, throttled or cut off midway like the box's own routes, and a
committed blob can be corrupted (`AzureMLBox.inject_fault(route="blob", corrupt=...)`).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from .azurite import ACCOUNT_KEY, ACCOUNT_NAME
from .model import (
    _SECRET_QUERY_KEYS,
    BLOB_HOST_SUFFIX,
    AzureMLResource,
    RequestRecord,
    _now,
    _read_chunked,
)
from .token import TokenService

if TYPE_CHECKING:
    from .box import AzureMLBox


class BlobStorage(TokenService):
    """Reading, corrupting and signing blobs in the box's Azurite."""

    def blob_names(self, resource: AzureMLResource, prefix: str | None = None) -> list[str]:
        """Blobs stored for a workspace (as Azurite has them), for assertions."""
        container = self._blob_service_client().get_container_client(resource.blob_container)
        return [b.name for b in container.list_blobs(name_starts_with=prefix)]

    def read_blob(self, resource: AzureMLResource, name: str) -> bytes:
        container = self._blob_service_client().get_container_client(resource.blob_container)
        data: bytes = container.download_blob(name).readall()
        return data

    def _corrupt_blob(self, container: str, name: str, offset: int) -> None:
        """Rewrite a stored blob with one byte inverted (the "corrupt" blob fault): same size,
        same content headers and metadata, other bytes. The stored MD5 is left for Azurite to
        compute again, as Put Blob does for content it is not given a hash of."""
        blob = self._blob_service_client().get_blob_client(container, name)
        data = bytearray(blob.download_blob().readall())
        if not -len(data) <= offset < len(data):
            raise ValueError(f"blob {container}/{name} has {len(data)} bytes; no byte {offset}")
        data[offset] ^= 0xFF
        properties = blob.get_blob_properties()
        settings = properties.content_settings
        settings.content_md5 = None
        blob.upload_blob(bytes(data), overwrite=True, content_settings=settings,
                         metadata=properties.metadata)

    def _sas_url(self, container: str, blob_name: str, *, write: bool) -> str:
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        now = _now()
        permission = (
            BlobSasPermissions(read=True, create=True, write=True)
            if write
            else BlobSasPermissions(read=True)
        )
        sas = generate_blob_sas(
            account_name=ACCOUNT_NAME,
            container_name=container,
            blob_name=blob_name,
            account_key=ACCOUNT_KEY,
            permission=permission,
            start=now - timedelta(minutes=5),
            expiry=now + timedelta(hours=1),
            protocol="https",
        )
        # Production-style host: azureml-mlflow only downloads from `https://*.blob.<suffix>/`.
        return (
            f"https://{ACCOUNT_NAME}{BLOB_HOST_SUFFIX}/{container}/{quote(blob_name)}?{sas}"
        )

    def _container_sas(self, container: str, write: bool) -> str:
        """A container SAS: to write a pending upload, or to read a version's files.

        What a pending upload's SAS allows is not documented (PendingUploadResponseDto says
        only "SAS"); azure-ai-ml uploads with it and reads blob properties and sets metadata
        (`_check_and_upload_path` -> `upload_artifact`, BlobStorageClient), never lists.
        Strict: read, create, write and add, no list and no delete (Azurite enforces a SAS's
        permissions). A data reference is for consumption, and azure-ai-ml lists with it
        (`download_artifact_from_storage_url`): read and list."""
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        now = _now()
        permission = ContainerSasPermissions(read=True, list=not write, write=write,
                                             create=write, add=write)
        return str(generate_container_sas(
            account_name=ACCOUNT_NAME, container_name=container, account_key=ACCOUNT_KEY,
            permission=permission, start=now - timedelta(minutes=5),
            expiry=now + timedelta(hours=1), protocol="https"))

    def container_blob_names(self, container: str, prefix: str | None = None) -> list[str]:
        client = self._blob_service_client().get_container_client(container)
        try:
            return [b.name for b in client.list_blobs(name_starts_with=prefix)]
        except Exception:  # a container that does not exist holds nothing
            return []

    def model_uri_files(self, model_uri: str) -> dict[str, bytes]:
        """Every file under a registry version's `modelUri` (relative path -> bytes)."""
        segments = [unquote(p) for p in urlsplit(model_uri).path.split("/") if p]
        container, folder = segments[0], "/".join(segments[1:])
        prefix = f"{folder}/" if folder else ""
        client = self._blob_service_client().get_container_client(container)
        return {name[len(prefix):]: client.download_blob(name).readall()
                for name in self.container_blob_names(container, prefix or None)}


_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                         "te", "trailer", "upgrade", "expect", "content-length"})


class _BlobInspector:
    """Blob storage seen through the proxy: TLS is terminated here (the test CA's certificate for
    `*.blob.core.windows.net`), each request is checked against the "blob" faults, recorded
    (without its SAS signature) and forwarded to Azurite, one at a time per connection."""

    def __init__(self, box: AzureMLBox, client: socket.socket,
                 destination: tuple[str, int]) -> None:
        self.box = box
        self.client = client
        self.destination = destination

    def serve(self) -> None:
        box = self.box
        assert box._blob_cert is not None and box.ca is not None
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_context.load_cert_chain(box._blob_cert.chain_path, box._blob_cert.key_path)
        upstream_context = ssl.create_default_context(cafile=str(box.ca.bundle_path))
        try:
            tls = server_context.wrap_socket(self.client, server_side=True)
        except (ssl.SSLError, OSError):
            return
        upstream = http.client.HTTPSConnection(*self.destination, context=upstream_context,
                                               timeout=120)
        reader = tls.makefile("rb")
        try:
            while self._one(tls, reader, upstream):
                pass
        except (OSError, ssl.SSLError, http.client.HTTPException, ValueError):
            pass
        finally:
            upstream.close()
            with contextlib.suppress(OSError):
                reader.close()
                tls.close()

    def _one(self, tls: ssl.SSLSocket, reader: Any, upstream: http.client.HTTPSConnection) \
            -> bool:
        box = self.box
        request_line = reader.readline(65537).decode("latin-1").strip()
        if not request_line:
            return False
        method, target, _ = request_line.split(" ", 2)
        headers: list[tuple[str, str]] = []
        while (line := reader.readline(65537)) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip(), value.strip()))
        lowered = {k.lower(): v for k, v in headers}
        started = time.time()
        split = urlsplit(target)
        path = unquote(split.path)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        # Put Blob (no comp, no restype) and Put Block List (comp=blocklist) set a blob's content.
        commit = method == "PUT" and "restype" not in query \
            and query.get("comp", "blocklist") == "blocklist"
        fault = box._take_fault("blob", method, path, commit)
        if lowered.get("expect", "").lower() == "100-continue" and not (fault and fault.drop):
            tls.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        length = int(lowered.get("content-length") or 0)
        if fault is not None and fault.drop:
            # A connection lost midway through the upload: half the body, then nothing.
            reader.read(length // 2)
            self._record(method, split, 0, started, "drop", lowered.get("host", ""))
            with contextlib.suppress(OSError):
                tls.shutdown(socket.SHUT_RDWR)
            return False
        if lowered.get("transfer-encoding", "").lower() == "chunked":
            body = _read_chunked(reader)
        else:
            body = reader.read(length) if length else b""
        fault_text = None
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            fault_text = f"delay={fault.delay:g}"
            if fault.status is not None:
                fault_text = f"{fault.status}" + (
                    f" retry-after={fault.retry_after:g}" if fault.retry_after is not None else ""
                )
                code = {429: "ServerBusy", 503: "ServerBusy", 500: "InternalError"}.get(
                    fault.status, "InjectedFault")
                payload = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
                           f"<Message>Injected fault: HTTP {fault.status}.</Message></Error>")
                extra = {"x-ms-error-code": code, "Content-Type": "application/xml"}
                if fault.retry_after is not None:
                    extra["Retry-After"] = f"{fault.retry_after:g}"
                self._send(tls, fault.status, list(extra.items()), payload.encode(), method)
                self._record(method, split, fault.status, started, fault_text,
                             lowered.get("host", ""))
                return True
        forwarded = {k: v for k, v in headers if k.lower() not in _HOP_BY_HOP}
        upstream.request(method, target, body=body, headers=forwarded)
        response = upstream.getresponse()
        data = response.read()
        if fault is not None and fault.corrupt is not None and 200 <= response.status < 300:
            # The stored blob changes before the client hears that its write succeeded, so
            # whatever the client does next sees the altered bytes (no race with the test).
            container, _, blob_name = path.lstrip("/").partition("/")
            box._corrupt_blob(container, blob_name, fault.corrupt)
            fault_text = f"corrupt={fault.corrupt}"
        out = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
        self._send(tls, response.status, out, data, method,
                   length=response.getheader("Content-Length"))
        self._record(method, split, response.status, started, fault_text,
                     lowered.get("host", ""))
        return True

    @staticmethod
    def _send(tls: ssl.SSLSocket, status: int, headers: list[tuple[str, str]], body: bytes,
              method: str, length: str | None = None) -> None:
        reason = http.client.responses.get(status, "Status")
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines += [f"{k}: {v}" for k, v in headers]
        # A HEAD answer announces the blob's length without a body.
        size = length if method == "HEAD" and length is not None else str(len(body))
        lines.append(f"Content-Length: {size}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        tls.sendall(head + (b"" if method == "HEAD" else body))

    def _record(self, method: str, split: Any, status: int, started: float,
                fault: str | None, host: str) -> None:
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        self.box._record(RequestRecord(
            method=method, path=unquote(split.path),
            query={k: ("<redacted>" if k.lower() in _SECRET_QUERY_KEYS else v)
                   for k, v in query.items()},
            route="blob", status=status, identity=None, fault=fault, started=started,
            duration=time.time() - started, host=host.split(":")[0].lower(),
        ))
