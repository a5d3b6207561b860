"""The state every service of the box shares (BoxCore): configuration, the address the box
serves on, what a client process needs (`env`, `client_env`), the workspaces and registries,
injected faults and gates, the request log, the storage and MLflow backend clients, and the
error documents ARM and the Azure ML data planes answer with.

The services are layered on top of it (token.py, blobs.py, artifacts.py, registry.py, arm.py,
mlflow_api.py) and combined by box.AzureMLBox.
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlencode

from support.mlflow_server import MlflowServer

from .azurite import Azurite
from .ca import TestCA
from .model import (
    ARTIFACT_URI_FORMS,
    TOKEN_PATH,
    AzureMLResource,
    Fault,
    Gate,
    Identity,
    RequestRecord,
    _iso,
    _now,
    _Request,
    _Response,
)

if TYPE_CHECKING:
    from .box import AzureMLBox
    from .transport import _ProxyServer, _TLSServer

_LOG_LIMIT = 20_000


class BoxCore:
    """What the box's services share; see AzureMLBox for the whole box."""

    def __init__(
        self,
        root: Path,
        *,
        tenant_id: str | None = None,
        location: str = "eastus",
        azurite: bool = True,
        azurite_node_dir: Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.location = location
        self._want_azurite = azurite
        self._azurite_node_dir = azurite_node_dir
        self.ca: TestCA | None = None
        self.azurite: Azurite | None = None
        self.identity_header = secrets.token_urlsafe(24)
        self._signing_key = secrets.token_bytes(32)
        self.identity = Identity("amlpromote-test-mi", str(uuid.uuid4()), str(uuid.uuid4()))
        self.identities: dict[str, Identity] = {self.identity.client_id: self.identity}
        self._resources: dict[tuple[str, str, str, str], AzureMLResource] = {}
        self._resources_lock = threading.Lock()
        # (workspace ARM id, run id) -> (experiment id, experiment name), see _run_experiment.
        self._run_experiments: dict[tuple[str, str], tuple[str, str]] = {}
        self._faults: list[Fault] = []
        self._faults_lock = threading.Lock()
        self._gates: list[Gate] = []
        self._log: list[RequestRecord] = []
        self._log_lock = threading.Lock()
        self.blocked_egress: list[str] = []
        # Terminate TLS for blob hosts in the proxy and record each blob request (route "blob"),
        # even without a blob fault; off by default, since the raw tunnel is faster.
        self.inspect_blobs = False
        self._blob_cert: Any = None
        self._server: _TLSServer | None = None
        self._proxy: _ProxyServer | None = None
        self._threads: list[threading.Thread] = []
        self._blob_service: Any = None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("AzureMLBox not started")
        return int(self._server.server_address[1])

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.netloc}"

    @property
    def proxy_url(self) -> str:
        if self._proxy is None:
            raise RuntimeError("AzureMLBox not started")
        return f"http://127.0.0.1:{self._proxy.server_address[1]}"

    @property
    def ca_bundle(self) -> Path:
        if self.ca is None:
            raise RuntimeError("AzureMLBox not started")
        return self.ca.bundle_path

    @property
    def token_endpoint(self) -> str:
        return f"{self.url}{TOKEN_PATH}"

    # -- what a client process needs ------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """Environment variables a client needs, all documented by the libraries that read them.

        AZUREML_DEV_URL_MFE: azure-ai-ml's ARM base URL override.
        AZUREML_CURRENT_CLOUD: the cloud azure-ai-ml and azureml-mlflow take endpoints, scopes
            and the storage suffix from (AzureCloud: management.azure.com, core.windows.net).
        REQUESTS_CA_BUNDLE / SSL_CERT_FILE / CURL_CA_BUNDLE: trust the test CA (requests,
            urllib/ssl, curl-based tools).
        IDENTITY_ENDPOINT / IDENTITY_HEADER: the managed identity (App Service) flow of
            azure-identity / MSAL.
        HTTPS_PROXY / HTTP_PROXY / NO_PROXY (both cases): blob storage and hard-wired Azure ML
            host names reach the box through its proxy; loopback goes direct.
        """
        proxy = self.proxy_url
        no_proxy = "127.0.0.1,localhost"
        return {
            "AZUREML_DEV_URL_MFE": self.url,
            "AZUREML_CURRENT_CLOUD": "AzureCloud",
            "REQUESTS_CA_BUNDLE": str(self.ca_bundle),
            "SSL_CERT_FILE": str(self.ca_bundle),
            "CURL_CA_BUNDLE": str(self.ca_bundle),
            "IDENTITY_ENDPOINT": self.token_endpoint,
            "IDENTITY_HEADER": self.identity_header,
            "HTTPS_PROXY": proxy,
            "HTTP_PROXY": proxy,
            "https_proxy": proxy,
            "http_proxy": proxy,
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
        }

    # Variables that would make a client authenticate or connect somewhere else than the box:
    # other credential sources in DefaultAzureCredential's chain, other managed identity
    # flavours (which MSAL/azure-identity check before or instead of IDENTITY_ENDPOINT), and
    # cloud/endpoint overrides.
    ENV_TO_REMOVE: tuple[str, ...] = (
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_CLIENT_CERTIFICATE_PATH",
        "AZURE_CLIENT_CERTIFICATE_PASSWORD",
        "AZURE_TENANT_ID",
        "AZURE_USERNAME",
        "AZURE_PASSWORD",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_AUTHORITY_HOST",
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        "AZURE_TOKEN_CREDENTIALS",
        "AZURE_REGIONAL_AUTHORITY_NAME",
        "IDENTITY_SERVER_THUMBPRINT",
        "IMDS_ENDPOINT",
        "MSI_ENDPOINT",
        "MSI_SECRET",
        "ARM_CLOUD_METADATA_URL",
        "AZUREML_DEV_URL_MLFLOW",
        "REGISTRY_DISCOVERY_ENDPOINT_URL",
        "REGISTRY_DISCOVERY_ENDPOINT_REGION",
        "MLFLOW_TRACKING_TOKEN",
        "MLFLOW_TRACKING_INSECURE_TLS",
        "MLFLOW_TRACKING_SERVER_CERT_PATH",
    )

    def client_env(self, base: dict[str, str]) -> dict[str, str]:
        """`base` (e.g. os.environ) without ENV_TO_REMOVE and with `env()` applied."""
        env = {k: v for k, v in base.items() if k not in self.ENV_TO_REMOVE}
        env.update(self.env())
        return env

    # -- resources ------------------------------------------------------------------------------

    def workspace(
        self,
        subscription_id: str,
        resource_group: str,
        name: str,
        *,
        location: str | None = None,
        allowed: bool | Iterable[str] = True,
        backend: MlflowServer | None = None,
        start_backend: bool = True,
        artifact_uri_form: str = "long",
    ) -> AzureMLResource:
        """Register a workspace; unless `backend` is given, start its own `mlflow server`.

        `allowed`: True (any identity), False (403 for everyone), or object ids / names.
        `start_backend=False` for a workspace that only needs ARM answers (no MLflow calls).
        The returned resource's `logged_models` (default False: 404 like Azure ML) can be
        switched on to forward MLflow 3 LoggedModel calls to the backend.
        `artifact_uri_form` (also settable on the resource): how its runs and model versions
        name their files, see ARTIFACT_URI_FORMS.
        """
        if artifact_uri_form not in ARTIFACT_URI_FORMS:
            raise ValueError(f"artifact_uri_form must be one of {ARTIFACT_URI_FORMS}")
        resource = self._register(
            "workspaces", subscription_id, resource_group, name, location, allowed, backend,
            start_backend,
        )
        resource.artifact_uri_form = artifact_uri_form
        return resource

    def registry(
        self,
        subscription_id: str,
        resource_group: str,
        name: str,
        *,
        location: str | None = None,
        allowed: bool | Iterable[str] = True,
        backend: MlflowServer | None = None,
        start_backend: bool = True,
    ) -> AzureMLResource:
        """Register an Azure ML registry (MLflow REST API + ARM GET + registry discovery)."""
        return self._register(
            "registries", subscription_id, resource_group, name, location, allowed, backend,
            start_backend,
        )

    def _register(
        self,
        kind: str,
        subscription_id: str,
        resource_group: str,
        name: str,
        location: str | None,
        allowed: bool | Iterable[str],
        backend: MlflowServer | None,
        start_backend: bool,
    ) -> AzureMLResource:
        key = (kind, subscription_id.lower(), resource_group.lower(), name.lower())
        with self._resources_lock:
            if key in self._resources:
                raise ValueError(f"{kind} {name!r} already registered in {resource_group!r}")
        owns = False
        if backend is None and start_backend:
            backend = MlflowServer(self.root / "mlflow" / f"{kind}-{subscription_id}-"
                                   f"{resource_group}-{name}")
            backend.start()
            owns = True
        resource = AzureMLResource(
            box=cast("AzureMLBox", self),
            kind=kind,
            subscription_id=subscription_id,
            resource_group=resource_group,
            name=name,
            location=location or self.location,
            allowed=allowed if isinstance(allowed, bool) else frozenset(allowed),
            backend=backend,
            owns_backend=owns,
        )
        if self.azurite is not None:
            self._blob_service_client().create_container(resource.blob_container)
        with self._resources_lock:
            self._resources[key] = resource
        return resource

    def resources(self) -> list[AzureMLResource]:
        with self._resources_lock:
            return list(self._resources.values())

    def _find(self, kind: str, sub: str, rg: str, name: str) -> AzureMLResource | None:
        with self._resources_lock:
            return self._resources.get((kind.lower(), sub.lower(), rg.lower(), name.lower()))

    def _find_registry_by_name(self, name: str) -> AzureMLResource | None:
        with self._resources_lock:
            for (kind, _, _, rname), res in self._resources.items():
                if kind == "registries" and rname == name.lower():
                    return res
        return None

    def _known_scope(self, sub: str, rg: str | None) -> tuple[bool, bool]:
        with self._resources_lock:
            keys = list(self._resources)
        sub_known = any(k[1] == sub.lower() for k in keys)
        rg_known = rg is not None and any(
            k[1] == sub.lower() and k[2] == rg.lower() for k in keys
        )
        return sub_known, rg_known

    # -- faults ---------------------------------------------------------------------------------

    def inject_fault(
        self,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        delay: float = 0.0,
        route: str | None = None,
        method: str | None = None,
        path: str | None = None,
        times: int | None = 1,
        after: int = 0,
        drop: bool = False,
        corrupt: int | None = None,
        before: Callable[[], None] | None = None,
    ) -> Fault:
        """Answer matching requests with `status` (after `delay` seconds), or just slow them
        down (`status=None`), for the next `times` matches (None: until cleared).

        route: "token", "arm", "discovery", "mlflow", "artifact", "registry-discovery",
            "endpoints" (ARM online endpoint and deployment routes, ARM's error shape),
            "scoring" (the scoring URIs, behind the front door), "blob"
            (blob storage requests: while a "blob" fault is registered, the proxy terminates
            TLS for blob hosts and forwards each request to Azurite itself, recording it);
        path: a regular expression searched in the request path (for blobs, the blob path);
        after: let the first `after` matching requests through before the fault applies;
        drop: hang up without an answer (for blobs, midway through the request body).
        before: call this when a matching request has arrived and before it is served (not for
            "blob"): what another client does while the request is on its way, with no timing
            to guess. An exception in it is a box bug (500).
        429/503 get a `Retry-After` header when `retry_after` is given.
        corrupt (route "blob"): let a request that commits a blob's content (Put Blob, Put Block
            List) through; once Azurite has answered it with success, and before that answer
            reaches the client, rewrite the stored blob in Azurite with the byte at this offset
            (negative: from the end) inverted. Only commits count towards `times`/`after`.
            Azure Storage never does this on its own: it is strongly consistent, and a read
            after a successful write returns what was written ("Manage concurrency in Blob
            Storage", learn.microsoft.com/azure/storage/blobs/concurrency-manage). It models
            what that page allows for: another writer with access to the blob (last writer
            wins by default), or storage-side damage, between the upload and the read-back.
            Opt-in: only a test that injects it sees altered blobs.
        """
        if corrupt is not None and route != "blob":
            raise ValueError("corrupt applies to blob storage (route='blob') only")
        if before is not None and route == "blob":
            raise ValueError("before applies to the box's own services, not blob storage")
        fault = Fault(
            status=status,
            retry_after=retry_after,
            delay=delay,
            route=route,
            method=method,
            path=re.compile(path) if path is not None else None,
            times=times,
            after=after,
            drop=drop,
            corrupt=corrupt,
            before=before,
        )
        with self._faults_lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._faults_lock:
            self._faults.clear()
            gates, self._gates = self._gates, []
        for gate in gates:  # nothing stays held for a test that is over
            with gate.condition:
                gate.released = True
                gate.condition.notify_all()

    def _take_fault(self, route: str, method: str, path: str,
                    commit: bool = False) -> Fault | None:
        with self._faults_lock:
            for fault in self._faults:
                if fault.matches(route, method, path, commit):
                    if fault.passed < fault.after:
                        fault.passed += 1
                        continue
                    fault.hits += 1
                    return fault
        return None

    def hold(self, *, route: str | None = None, method: str | None = None,
             path: str | None = None, count: int = 2, timeout: float = 60.0) -> Gate:
        """Hold matching requests (of the box's own routes, not blobs) until `count` of them
        arrived, then let them all go at once; later matches pass untouched. A test forces a
        race with it: two clients that each checked "is it there yet?" and both go on to write.
        After `timeout` seconds the held requests are let go anyway and `timed_out` is set, so
        a client that never came fails the test instead of hanging it. Cleared with the faults.
        """
        gate = Gate(route=route, method=method,
                    path=re.compile(path) if path is not None else None, count=count,
                    timeout=timeout)
        with self._faults_lock:
            self._gates.append(gate)
        return gate

    def _wait_at_gates(self, route: str, method: str, path: str) -> bool:
        """Block while a gate holds this request; whether one did."""
        with self._faults_lock:
            gates = [g for g in self._gates if not g.released and g.matches(route, method, path)]
        held = False
        for gate in gates:
            with gate.condition:
                if gate.released:
                    continue
                held = True
                gate.arrived += 1
                if gate.arrived >= gate.count:
                    gate.released = True
                    gate.condition.notify_all()
                    continue
                if not gate.condition.wait_for(gate.is_released, timeout=gate.timeout):
                    gate.timed_out = gate.released = True
                    gate.condition.notify_all()
        return held

    def _inspects_blobs(self) -> bool:
        with self._faults_lock:
            return self.inspect_blobs or any(f.route == "blob" for f in self._faults)

    # -- request log ----------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        with self._log_lock:
            return list(self._log)

    def clear_requests(self) -> None:
        with self._log_lock:
            self._log.clear()

    def requests_for(self, route: str) -> list[RequestRecord]:
        return [r for r in self.requests if r.route == route]

    def _record(self, record: RequestRecord) -> None:
        with self._log_lock:
            self._log.append(record)
            if len(self._log) > _LOG_LIMIT:
                del self._log[: len(self._log) - _LOG_LIMIT]

    # -- blob storage ---------------------------------------------------------------------------

    def _blob_service_client(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        if self.azurite is None:
            raise RuntimeError("this box was started without Azurite")
        if self._blob_service is None:
            # Direct to Azurite's loopback port with the CA pinned, so neither the test
            # process's proxy variables nor its CA variables matter here.
            self._blob_service = BlobServiceClient.from_connection_string(
                self.azurite.connection_string, connection_verify=str(self.ca_bundle)
            )
        return self._blob_service

    # -- MLflow backends ------------------------------------------------------------------------

    @staticmethod
    def _backend_get(backend: MlflowServer, path: str, query: dict[str, str]) \
            -> dict[str, Any] | None:
        conn = http.client.HTTPConnection(backend.host, backend.port, timeout=30)
        try:
            conn.request("GET", f"{path}?{urlencode(query)}")
            response = conn.getresponse()
            body = response.read()
            return json.loads(body) if response.status == 200 else None
        finally:
            conn.close()

    # The identity the request being served in this thread authenticated as (for the log).
    _current_identity = threading.local()

    # -- error shapes ---------------------------------------------------------------------------

    @staticmethod
    def _arm_error(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> _Response:
        return _Response.json(status, {"error": {"code": code, "message": message}}, headers)

    def _aml_error(
        self,
        status: int,
        code: str,
        message: str,
        inner: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> _Response:
        # Azure ML data-plane services answer with ErrorResponse (RootError + correlation).
        request_id = str(uuid.uuid4())
        payload = {
            "error": {
                "code": "UserError" if status < 500 else "ServiceError",
                "severity": None,
                "message": message,
                "messageFormat": None,
                "messageParameters": {},
                "referenceCode": None,
                "detailsUri": None,
                "target": None,
                "details": [],
                "innerError": {"code": code, "innerError": {"code": inner} if inner else None},
                "additionalInfo": None,
            },
            "correlation": {"operation": request_id, "request": request_id[:16]},
            "environment": self.location,
            "location": self.location,
            "time": _iso(_now()),
            "componentName": "azureml-box",
        }
        return _Response.json(status, payload, headers)

    # -- common checks: ARM ---------------------------------------------------------------------

    def _require_api_version(self, req: _Request) -> _Response | None:
        if "api-version" not in req.query:
            return self._arm_error(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        return None
