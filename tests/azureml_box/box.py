"""AzureMLBox: Azure ML on loopback, the class tests use.

Each service family is a layer of its own module, each layer a subclass of the one before, so
every layer may call what the layers under it offer (and mypy checks that it does):
core.BoxCore (shared state) -> token.TokenService -> blobs.BlobStorage ->
artifacts.ArtifactService -> registry.RegistryService -> arm.ArmService ->
mlflow_api.MlflowService -> endpoints.EndpointService -> frontdoor.ScoringFrontDoor -> AzureMLBox,
which adds the lifecycle (start/stop of the servers in
transport.py), the routing table and what an injected fault does to a request.
"""

from __future__ import annotations

import re
import ssl
import threading
import time
from collections.abc import Callable

from .azurite import DEFAULT_NODE_DIR, Azurite
from .ca import TestCA
from .frontdoor import ScoringFrontDoor
from .model import (
    _ARM_DATA_REFERENCE,
    _ARM_LIST,
    _ARM_MODEL_CONTAINERS,
    _ARM_MODEL_VERSION,
    _ARM_MODEL_VERSIONS,
    _ARM_ONLINE_DEPLOYMENT,
    _ARM_ONLINE_DEPLOYMENTS,
    _ARM_ONLINE_ENDPOINT,
    _ARM_ONLINE_ENDPOINTS,
    _ARM_OPERATION,
    _ARM_PENDING_UPLOAD,
    _ARM_RESOURCE,
    _ARTIFACT,
    _HISTORY,
    _MFE_PREFIX,
    _MLFLOW,
    _REGISTRY_DISCOVERY,
    AML_HOST_SUFFIX,
    AZURE_REGIONS,
    BLOB_HOST_SUFFIX,
    DISCOVERY_PATH,
    INFERENCE_HOST_SUFFIX,
    TOKEN_PATH,
    Fault,
    _Request,
    _Response,
)
from .transport import _Handler, _ProxyHandler, _ProxyServer, _TLSServer


class AzureMLBox(ScoringFrontDoor):
    """Azure ML on loopback: token endpoint, ARM workspace routes, MLflow REST API, artifact
    service, blob storage (Azurite), managed online endpoints with their scoring front door, and
    a proxy that keeps every other name off the network.

    Typical use (see tests/test_azureml_box.py)::

        box = AzureMLBox(tmp_dir).start()
        ws = box.workspace("sub-id", "rg", "ws")          # starts its `mlflow server`
        env = box.env()                                    # for a client process / monkeypatch
        ...
        box.stop()

    Online endpoints (endpoints.py, frontdoor.py; tests/test_azureml_box_endpoints.py) take
    the options `AzureMLBox(root, provisioning_seconds=0.3, serve_deployments=True,
    lro_retry_after=1, serving_timeout=180.0)`, also settable as attributes.
    """

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> AzureMLBox:
        if self._server is not None:
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        self.ca = TestCA(self.root / "ca")
        # Scoring URIs are `{endpoint}.{region}.inference.ml.azure.com`: a wildcard covers one
        # label, so the certificate names each region (frontdoor.py).
        regions = dict.fromkeys((self.location, *AZURE_REGIONS))
        server_cert = self.ca.issue_server_cert(
            "azureml-box",
            dns_names=("localhost", f"*{AML_HOST_SUFFIX}",
                       *(f"*.{region}{INFERENCE_HOST_SUFFIX}" for region in regions)),
            ip_addresses=("127.0.0.1",),
        )
        try:
            if self._want_azurite:
                blob_cert = self.ca.issue_server_cert(
                    "azurite",
                    dns_names=("localhost", f"*{BLOB_HOST_SUFFIX}"),
                    ip_addresses=("127.0.0.1",),
                )
                self._blob_cert = blob_cert
                self.azurite = Azurite(
                    self.root / "azurite",
                    blob_cert,
                    self.ca.bundle_path,
                    node_dir=self._azurite_node_dir or DEFAULT_NODE_DIR,
                ).start()
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(server_cert.chain_path, server_cert.key_path)
            self._server = _TLSServer(("127.0.0.1", 0), _Handler, self, context)
            self._proxy = _ProxyServer(("127.0.0.1", 0), _ProxyHandler, self)
            for name, srv in (("azureml-box", self._server), ("azureml-box-proxy", self._proxy)):
                thread = threading.Thread(
                    target=srv.serve_forever, kwargs={"poll_interval": 0.2}, name=name,
                    daemon=True,
                )
                thread.start()
                self._threads.append(thread)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self._stop_endpoints()
        for srv in (self._proxy, self._server):
            if srv is not None:
                srv.shutdown()
                srv.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        self._proxy = None
        self._server = None
        with self._resources_lock:
            resources = list(self._resources.values())
        for resource in resources:
            if resource.owns_backend and resource.backend is not None:
                resource.backend.stop()
        if self.azurite is not None:
            self.azurite.stop()
            self.azurite = None
        self._blob_service = None

    def __enter__(self) -> AzureMLBox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- proxy ----------------------------------------------------------------------------------

    def _tunnel_destination(self, host: str, port: int) -> tuple[str, int] | None:
        if port != 443:
            return None
        if host.endswith(BLOB_HOST_SUFFIX) and self.azurite is not None:
            return ("127.0.0.1", self.azurite.port)
        if host.endswith(AML_HOST_SUFFIX) or host.endswith(INFERENCE_HOST_SUFFIX):
            return ("127.0.0.1", self.port)
        return None

    # -- dispatch -------------------------------------------------------------------------------

    def _route(self, req: _Request) -> tuple[str, Callable[[_Request, re.Match[str] | None],
                                                       _Response], re.Match[str] | None]:
        path = req.path
        if req.host.endswith(INFERENCE_HOST_SUFFIX):
            # Scoring URIs share the box's TLS server; the Host tells them apart.
            return "scoring", self._handle_scoring, None
        if path.rstrip("/").lower() == TOKEN_PATH:
            return "token", self._handle_token, None
        if path.rstrip("/").lower() == DISCOVERY_PATH:
            return "discovery", self._handle_discovery, None
        if m := _MLFLOW.match(path):
            return "mlflow", self._handle_mlflow, m
        if m := _ARTIFACT.match(path):
            return "artifact", self._handle_artifact, m
        if m := _HISTORY.match(path):
            return "artifact", self._handle_run_artifact, m
        if path.lower().startswith(_MFE_PREFIX):
            path = path[len(_MFE_PREFIX):]
        if m := _ARM_PENDING_UPLOAD.match(path):
            return "arm", self._handle_registry_pending_upload, m
        if m := _ARM_DATA_REFERENCE.match(path):
            return "arm", self._handle_registry_data_reference, m
        if m := _ARM_ONLINE_DEPLOYMENT.match(path):
            return "endpoints", self._handle_online_deployment, m
        if m := _ARM_ONLINE_DEPLOYMENTS.match(path):
            return "endpoints", self._handle_online_deployments, m
        if m := _ARM_ONLINE_ENDPOINT.match(path):
            return "endpoints", self._handle_online_endpoint, m
        if m := _ARM_ONLINE_ENDPOINTS.match(path):
            return "endpoints", self._handle_online_endpoints, m
        if m := _ARM_OPERATION.match(path):
            return "arm", self._handle_arm_operation, m
        if m := _ARM_MODEL_VERSIONS.match(path):
            return "arm", self._handle_registry_model_versions, m
        if m := _ARM_MODEL_CONTAINERS.match(path):
            return "arm", self._handle_registry_model_containers, m
        if m := _ARM_MODEL_VERSION.match(path):
            return "arm", self._handle_arm_model_version, m
        if m := _ARM_RESOURCE.match(path):
            return "arm", self._handle_arm_resource, m
        if m := _ARM_LIST.match(path):
            return "arm", self._handle_arm_list, m
        if m := _REGISTRY_DISCOVERY.match(path):
            return "registry-discovery", self._handle_registry_discovery, m
        return "unknown", self._handle_unknown, None

    def _dispatch(self, req: _Request) -> tuple[_Response, str, str | None, str | None]:
        """-> (response, route, identity name, fault description)."""
        route, handler, match = self._route(req)
        held = self._wait_at_gates(route, req.method, req.path)
        fault = self._take_fault(route, req.method, req.path)
        fault_text = "held" if held else None
        if fault is not None:
            if fault.before is not None:
                fault.before()
            if fault.delay:
                time.sleep(fault.delay)
            if fault.drop:
                return _Response(0, drop=True), route, None, "drop"
            if fault.status is not None:
                fault_text = f"{fault.status}" + (
                    f" retry-after={fault.retry_after:g}" if fault.retry_after is not None else ""
                )
                return self._fault_response(route, fault), route, None, fault_text
            fault_text = f"delay={fault.delay:g}"
        self._current_identity.name = None
        response = handler(req, match)
        return response, route, self._current_identity.name, fault_text

    def _fault_response(self, route: str, fault: Fault) -> _Response:
        assert fault.status is not None
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = f"{fault.retry_after:g}"
        code = {429: "TooManyRequests", 503: "ServiceUnavailable"}.get(
            fault.status, "InjectedFault"
        )
        message = f"Injected fault: HTTP {fault.status}."
        if route == "token":
            # The App Service identity endpoint's own error shape.
            return _Response.json(fault.status, {"statusCode": fault.status, "message": message},
                                  headers)
        if route in ("arm", "endpoints"):
            return _Response.json(fault.status, {"error": {"code": code, "message": message}},
                                  headers)
        if route == "scoring":
            return _Response.json(fault.status, {"message": message}, headers)
        return self._aml_error(fault.status, code, message, headers=headers)

    def _handle_unknown(self, req: _Request, _: re.Match[str] | None) -> _Response:
        return self._aml_error(404, "NotFound", f"No route for {req.method} {req.path}.")
