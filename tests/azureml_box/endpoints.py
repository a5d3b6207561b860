"""Azure ML managed online endpoints and deployments in the box, through ARM.

Routes (azure-rest-api-specs machinelearningservices, stable/2024-04-01 mfe.json: OnlineEndpoints_*
and OnlineDeployments_*), as azure-ai-ml 1.35 calls them (operations/_online_endpoint_operations.py
with api-version 2022-02-01-preview, operations/_online_deployment_operations.py with
2023-04-01-preview; both first GET the workspace for its `location`):

- `.../workspaces/W/onlineEndpoints[/E]`: list, GET, PUT (201 + `Azure-AsyncOperation` when it
  creates, 200 + `Azure-AsyncOperation` when it updates), PATCH (202 + `Location`), DELETE (202 +
  `Location`, 204 when there is nothing to delete); `POST .../E/listKeys`, `.../E/regenerateKeys`
  (202 + `Location`), `.../E/token` (AMLToken endpoints);
- `.../onlineEndpoints/E/deployments[/D]`: the same verbs; `POST .../D/getLogs`.

Every write is a long-running operation that takes `provisioning_seconds` (in a thread of its own)
and ends Succeeded or Failed; meanwhile the resource's `provisioningState` is Creating / Updating /
Deleting and any other write on the endpoint or its deployments answers 409. A deployment's
operation materialises its model version's files from the box's own storage (the workspace's
MLflow registry and artifact store, or a registry's blob container) and starts the model server
(serving.py, Microsoft's azureml-inference-server-http) on them; an unknown model version or a
server that does not come up fails the deployment, as in Azure.

Box options (constructor keywords, also attributes): `provisioning_seconds`, `serve_deployments`
(False: deployments succeed without a model server; scoring them answers 424),
`lro_retry_after` (the `Retry-After` the box puts on operations; None: none, clients poll at their
own pace, 5 s for azure-ai-ml), `serving_timeout` (seconds the model server may take to start).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .mlflow_api import MlflowService
from .model import (
    _SOURCE_LOCAL_UPLOAD,
    _SOURCE_RUN_ARTIFACTS,
    ARTIFACT_DATASTORE,
    INFERENCE_HOST_SUFFIX,
    PROVIDER,
    AzureMLResource,
    _iso,
    _now,
    _Request,
    _Response,
)
from .token import _Unauthenticated

# How long an endpoint or deployment operation runs before it ends (box default: short, tests).
PROVISIONING_SECONDS = 0.3
# properties.authMode values (spec: EndpointAuthMode).
AUTH_MODES = ("Key", "AMLToken", "AADToken")
# getLogs containerType values (spec: ContainerType).
CONTAINER_TYPES = ("InferenceServer", "StorageInitializer")
# The Retry-After the spec declares for these operations is 10..600 s; the box answers 1 s by
# default so tests do not wait, which azure-core honours over its own polling interval.
LRO_RETRY_AFTER = 1
_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
# Model asset ids a deployment names (azure-ai-ml resolves `azureml:name:version` to the first).
_WORKSPACE_MODEL_ID = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
    r"Microsoft\.MachineLearningServices/workspaces/(?P<ws>[^/]+)/models/(?P<name>[^/]+)"
    r"/versions/(?P<version>[^/]+)$",
    re.IGNORECASE,
)
_REGISTRY_MODEL_ID = re.compile(
    r"^azureml://registries/(?P<reg>[^/]+)/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$",
    re.IGNORECASE,
)
# A version source in the datastore forms (see ARTIFACT_URI_FORMS in model.py).
_SOURCE_DATASTORE = re.compile(
    rf"/datastores/{ARTIFACT_DATASTORE}/paths/(?P<origin>[^/]+)/(?P<container>[^/]+)"
    r"(?P<rest>/.*)?$"
)


# What the service fills in for a managed deployment that leaves them out: the defaults of the
# managed online deployment YAML reference (request_timeout_ms 5000, max_concurrent_requests_
# per_instance 1, max_queue_wait_ms 500; probes: initial_delay 10, period 10, timeout 2,
# success_threshold 1, failure_threshold 30) in the spec's shapes (ISO 8601 durations;
# scaleSettings as in the 2024-04-01 example ManagedOnlineDeployment/createOrUpdate.json).
_PROBE_DEFAULTS = {"initialDelay": "PT10S", "period": "PT10S", "timeout": "PT2S",
                   "successThreshold": 1, "failureThreshold": 30}
_DEPLOYMENT_DEFAULTS: dict[str, Any] = {
    "endpointComputeType": "Managed",
    "scaleSettings": {"scaleType": "Default"},
    "requestSettings": {"requestTimeout": "PT5S", "maxConcurrentRequestsPerInstance": 1,
                        "maxQueueWait": "PT0.5S"},
    "livenessProbe": _PROBE_DEFAULTS,
    "readinessProbe": _PROBE_DEFAULTS,
    "appInsightsEnabled": False,
    "egressPublicNetworkAccess": "Enabled",
}


class _OperationFailed(Exception):
    def __init__(self, code: str, message: str, logs: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.logs = logs


@dataclass
class EndpointOperation:
    """One long-running operation on an endpoint or one of its deployments."""

    id: str
    workspace: AzureMLResource
    endpoint: str
    deployment: str | None
    action: str  # "create" | "update" | "delete" | "regenerateKeys"
    started: datetime = field(default_factory=_now)
    status: str = "InProgress"  # -> "Succeeded" | "Failed"
    error: dict[str, str] | None = None
    ended: datetime | None = None
    done: threading.Event = field(default_factory=threading.Event, repr=False)


@dataclass
class OnlineDeployment:
    """A managed online deployment as the box keeps it (a test may read it)."""

    name: str
    properties: dict[str, Any]
    sku: dict[str, Any] | None
    tags: dict[str, str]
    created: datetime
    provisioning_state: str = "Creating"
    container: Any = None  # serving.Container while the model server runs
    storage_log: list[str] = field(default_factory=list)
    server_log: str = ""  # the model server's log when it failed or was stopped
    scored: int = 0  # requests the front door sent it (live traffic or by header)
    mirrored: int = 0  # mirrored copies it received

    @property
    def model(self) -> str:
        return str(self.properties.get("model") or "")


@dataclass
class OnlineEndpoint:
    """A managed online endpoint as the box keeps it (a test may read it)."""

    workspace: AzureMLResource
    name: str
    location: str
    auth_mode: str
    traffic: dict[str, int]
    mirror_traffic: dict[str, int]
    description: str | None
    tags: dict[str, str]
    properties: dict[str, str]
    identity: dict[str, Any] | None
    created: datetime
    primary_key: str = field(default_factory=lambda: secrets.token_hex(16))
    secondary_key: str = field(default_factory=lambda: secrets.token_hex(16))
    provisioning_state: str = "Creating"
    deployments: dict[str, OnlineDeployment] = field(default_factory=dict)
    # The operation running on the endpoint or one of its deployments (ARM allows one).
    operation: EndpointOperation | None = None
    # AMLToken tokens handed out by `token`, with their expiry (epoch seconds).
    tokens: dict[str, float] = field(default_factory=dict)
    # Smooth weighted round robin state of the front door (live and mirror traffic).
    route_credit: dict[str, float] = field(default_factory=dict)
    mirror_credit: dict[str, float] = field(default_factory=dict)

    @property
    def scoring_uri(self) -> str:
        return f"https://{self.name.lower()}.{self.location}{INFERENCE_HOST_SUFFIX}/score"

    @property
    def arm_id(self) -> str:
        return f"{self.workspace.arm_id}/onlineEndpoints/{self.name}"

    def busy(self) -> bool:
        return self.operation is not None and not self.operation.done.is_set()


class EndpointService(MlflowService):
    """Managed online endpoints and deployments: ARM resources, their operations, their model
    servers."""

    def __init__(
        self,
        root: Path,
        *,
        provisioning_seconds: float = PROVISIONING_SECONDS,
        serve_deployments: bool = True,
        lro_retry_after: int | None = LRO_RETRY_AFTER,
        serving_timeout: float = 180.0,
        **options: Any,
    ) -> None:
        super().__init__(root, **options)
        self.provisioning_seconds = provisioning_seconds
        self.serve_deployments = serve_deployments
        self.lro_retry_after = lro_retry_after
        self.serving_timeout = serving_timeout
        # (operation id as in the spec, e.g. "OnlineEndpoints_Get") -> api-versions clients used.
        self.endpoint_api_versions: dict[str, set[str]] = {}
        self._endpoints: dict[tuple[str, str], OnlineEndpoint] = {}
        self._endpoint_operations: dict[str, EndpointOperation] = {}
        self._endpoints_lock = threading.RLock()
        self._endpoints_stopping = False

    # -- what tests read ------------------------------------------------------------------------

    def online_endpoint(self, workspace: AzureMLResource, name: str) -> OnlineEndpoint | None:
        with self._endpoints_lock:
            return self._endpoints.get((workspace.arm_id.lower(), name.lower()))

    def online_endpoints(self) -> list[OnlineEndpoint]:
        with self._endpoints_lock:
            return list(self._endpoints.values())

    def wait_for_endpoint_operations(self, timeout: float = 60.0) -> bool:
        """Wait until no operation runs; whether that happened within `timeout`."""
        deadline = time.monotonic() + timeout
        with self._endpoints_lock:
            operations = list(self._endpoint_operations.values())
        return all(op.done.wait(max(0.0, deadline - time.monotonic())) for op in operations)

    def _stop_endpoints(self) -> None:
        """Stop every model server (the box is stopping); running operations start none."""
        self._endpoints_stopping = True
        with self._endpoints_lock:
            deployments = [d for e in self._endpoints.values() for d in e.deployments.values()]
        for deployment in deployments:
            self._stop_container(deployment)

    # -- common checks --------------------------------------------------------------------------

    def _endpoint_scope(self, req: _Request, m: re.Match[str], operation: str,
                        action: str) -> AzureMLResource | _Response:
        if (bad := self._require_api_version(req)) is not None:
            return bad
        api_version = req.query["api-version"]
        if not _API_VERSION.match(api_version):
            # ARM's answer for an api-version the resource provider does not know.
            return self._arm_error(
                400, "InvalidApiVersionParameter",
                f"The api-version '{api_version}' is invalid.")
        with self._endpoints_lock:
            self.endpoint_api_versions.setdefault(operation, set()).add(api_version)
        if m["kind"].lower() != "workspaces":
            return self._arm_error(404, "ResourceNotFound",
                                   "Online endpoints exist in workspaces only.")
        return self._authorize(req, "arm", "workspaces", m["sub"], m["rg"], m["name"],
                               f"onlineEndpoints/{action}")

    @staticmethod
    def _json_body(req: _Request) -> dict[str, Any] | None:
        try:
            body = json.loads(req.body or b"{}")
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    @staticmethod
    def _endpoint_not_found(ws: AzureMLResource, name: str) -> _Response:
        # The shape of Azure ML's own 404 for a deployment, "Deployment D not found in endpoint
        # E, workspace W" (quoted in Azure-Samples/contoso-chat#139), applied to endpoints too.
        return EndpointService._arm_error(
            404, "UserError", f"Endpoint {name} not found in workspace {ws.name}.")

    @staticmethod
    def _conflict(message: str) -> _Response:
        return EndpointService._arm_error(409, "Conflict", message)

    def _busy_answer(self, endpoint: OnlineEndpoint, what: str) -> _Response | None:
        """409 while an operation runs on the endpoint or one of its deployments."""
        if not endpoint.busy():
            return None
        assert endpoint.operation is not None
        if endpoint.operation.deployment is None and what == "deployment":
            # Azure's words (Azure/azure-sdk-for-net#36961) for a deployment written while its
            # endpoint is being created or updated.
            return self._conflict(
                f"Cannot create a deployment in endpoint {endpoint.name} because it is in "
                f"{endpoint.provisioning_state} provisioning state.")
        # Azure ML's conflict for a second operation on the same entity (Azure/azure-cli#17075).
        return self._conflict(
            "Conflict of operation, another operation on same entity is already running in "
            f"workspace {endpoint.workspace.name}.")

    # -- operations -----------------------------------------------------------------------------

    def _lro_headers(self) -> dict[str, str]:
        headers = {"x-ms-async-operation-timeout": "PT1H"}
        if self.lro_retry_after is not None:
            headers["Retry-After"] = str(self.lro_retry_after)
        return headers

    def _begin(self, req: _Request, endpoint: OnlineEndpoint, deployment: str | None,
               action: str, work: Callable[[EndpointOperation], None],
               finish: Callable[[EndpointOperation], None]) -> EndpointOperation:
        """Start an operation: `work` runs after `provisioning_seconds` in a thread of its own
        (an _OperationFailed fails it), then `finish` records the outcome, under the lock."""
        # Operation ids like Azure ML's (`oe:` endpoint, `od:` deployment operations).
        prefix = "od" if deployment is not None else "oe"
        op = EndpointOperation(f"{prefix}:{uuid.uuid4()}:{uuid.uuid4().hex[:8]}",
                               endpoint.workspace, endpoint.name.lower(), deployment, action)
        endpoint.operation = op
        self._endpoint_operations[op.id] = op

        def run() -> None:
            try:
                time.sleep(self.provisioning_seconds)
                work(op)
                status, error = "Succeeded", None
            except _OperationFailed as exc:
                status, error = "Failed", {"code": exc.code, "message": exc.message}
            except Exception as exc:  # a box bug must end the operation, not hang clients
                status = "Failed"
                error = {"code": "InternalServerError", "message": f"azureml-box bug: {exc!r}"}
            with self._endpoints_lock:
                op.status, op.error, op.ended = status, error, _now()
                finish(op)
            op.done.set()

        threading.Thread(target=run, name=f"azureml-box-{op.id}", daemon=True).start()
        return op

    def _async_operation_url(self, req: _Request, ws: AzureMLResource, op: EndpointOperation,
                             monitor: str) -> str:
        return self._operation_url(req, ws, op.id, monitor)

    def _handle_arm_operation(self, req: _Request, m: re.Match[str] | None) -> _Response:
        """Operation status (`mfeOperationsStatus`, Azure-AsyncOperation: 200 with `status` and,
        when Failed, `error {code, message}`) and result (`mfeOperationResults`, Location: 202
        while it runs, then 200, or the error document when it failed), per ARM's async
        operation contract; other operations are the registry's."""
        assert m is not None
        with self._endpoints_lock:
            op = self._endpoint_operations.get(unquote(m["op"]))
        if op is None or op.workspace.subscription_id.lower() != m["sub"].lower():
            return super()._handle_arm_operation(req, m)
        try:
            identity = self._verify_token(req.headers.get("Authorization"))
        except _Unauthenticated as exc:
            return self._unauthenticated("arm", exc)
        self._current_identity.name = identity.name
        running = not op.done.is_set()
        retry = {"Retry-After": str(self.lro_retry_after)} \
            if running and self.lro_retry_after is not None else {}
        if m["monitor"].lower() == "mfeoperationsstatus":
            body: dict[str, Any] = {"id": req.path, "name": op.id,
                                    "status": "InProgress" if running else op.status,
                                    "startTime": _iso(op.started)}
            if op.ended is not None and not running:
                body["endTime"] = _iso(op.ended)
            if op.error is not None and not running:
                body["error"] = op.error
            return _Response.json(200, body, retry)
        if running:
            return _Response(202, headers={
                "Location": self._async_operation_url(req, op.workspace, op,
                                                      "mfeOperationResults"), **retry})
        if op.error is not None:
            return self._arm_error(400, op.error["code"], op.error["message"])
        if op.action == "update":
            # A PATCH's final answer is the resource (azure-core LocationPolling reads it).
            with self._endpoints_lock:
                endpoint = self._endpoints.get((op.workspace.arm_id.lower(), op.endpoint))
                if endpoint is not None and op.deployment is None:
                    return _Response.json(200, self._endpoint_json(endpoint))
                if endpoint is not None and op.deployment in endpoint.deployments:
                    return _Response.json(200, self._deployment_json(
                        endpoint, endpoint.deployments[op.deployment]))
        return _Response(200)

    # -- handlers: endpoints --------------------------------------------------------------------

    def _handle_online_endpoints(self, req: _Request, m: re.Match[str] | None) -> _Response:
        assert m is not None
        if req.method != "GET":
            return self._arm_error(405, "MethodNotAllowed", f"{req.method} is not allowed.")
        ws = self._endpoint_scope(req, m, "OnlineEndpoints_List", "read")
        if isinstance(ws, _Response):
            return ws
        with self._endpoints_lock:
            items = [self._endpoint_json(e) for (wid, _), e in sorted(self._endpoints.items())
                     if wid == ws.arm_id.lower()]
        return _Response.json(200, {"value": items, "nextLink": None})

    def _handle_online_endpoint(self, req: _Request, m: re.Match[str] | None) -> _Response:
        assert m is not None
        name = unquote(m["endpoint"])
        action = (m["action"] or "").lower()
        if action:
            if req.method != "POST":
                return self._arm_error(405, "MethodNotAllowed", f"{req.method} is not allowed.")
            operation = {"listkeys": "OnlineEndpoints_ListKeys",
                         "regeneratekeys": "OnlineEndpoints_RegenerateKeys",
                         "token": "OnlineEndpoints_GetToken"}[action]
            ws = self._endpoint_scope(req, m, operation, "write" if action == "regeneratekeys"
                                      else "read")
            if isinstance(ws, _Response):
                return ws
            with self._endpoints_lock:
                endpoint = self._endpoints.get((ws.arm_id.lower(), name.lower()))
                if endpoint is None or endpoint.provisioning_state == "Deleting":
                    return self._endpoint_not_found(ws, name)
                if action == "listkeys":
                    return _Response.json(200, {"primaryKey": endpoint.primary_key,
                                                "secondaryKey": endpoint.secondary_key})
                if action == "token":
                    return self._endpoint_token(endpoint)
                return self._regenerate_keys(req, ws, endpoint)
        operation = {"GET": "OnlineEndpoints_Get", "PUT": "OnlineEndpoints_CreateOrUpdate",
                     "PATCH": "OnlineEndpoints_Update",
                     "DELETE": "OnlineEndpoints_Delete"}.get(req.method, "")
        if not operation:
            return self._arm_error(405, "MethodNotAllowed", f"{req.method} is not allowed.")
        ws = self._endpoint_scope(req, m, operation, {"GET": "read", "DELETE": "delete"}.get(
            req.method, "write"))
        if isinstance(ws, _Response):
            return ws
        with self._endpoints_lock:
            endpoint = self._endpoints.get((ws.arm_id.lower(), name.lower()))
            if req.method == "GET":
                if endpoint is None:
                    return self._endpoint_not_found(ws, name)
                return _Response.json(200, self._endpoint_json(endpoint))
            if req.method == "DELETE":
                return self._delete_endpoint(req, ws, endpoint)
            body = self._json_body(req)
            if body is None:
                return self._arm_error(400, "UserError", "The request body must be a JSON object.")
            if req.method == "PUT":
                return self._put_endpoint(req, ws, name, endpoint, body)
            if endpoint is None:
                return self._endpoint_not_found(ws, name)
            return self._patch_endpoint(req, ws, endpoint, body)

    def _traffic_problem(self, endpoint_deployments: dict[str, OnlineDeployment],
                         traffic: Any, mirror: Any) -> str | None:
        """What is wrong with a traffic / mirrorTraffic pair (spec: `traffic` "Percentage of
        traffic from endpoint to divert to each deployment. Traffic values need to sum to 100",
        `mirrorTraffic` "Percentage of traffic to be mirrored to each deployment without using
        returned scoring. Traffic values need to sum to utmost 50"), or None."""
        for label, values in (("traffic", traffic), ("mirrorTraffic", mirror)):
            if not isinstance(values, dict):
                return f"{label} must be an object of deployment names to percentages."
            for deployment, value in values.items():
                if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 100:
                    return f"{label} of deployment {deployment} must be an integer from 0 to 100."
                if str(deployment).lower() not in endpoint_deployments:
                    return (f"{label} names deployment {deployment}, which does not exist in "
                            "this endpoint.")
        total = sum(traffic.values())
        if total not in (0, 100):
            return f"Traffic values must sum to 0 or 100, not {total}."
        if sum(mirror.values()) > 50:
            return "mirrorTraffic values must sum to at most 50."
        return None

    def _put_endpoint(self, req: _Request, ws: AzureMLResource, name: str,
                      endpoint: OnlineEndpoint | None, body: dict[str, Any]) -> _Response:
        props = body.get("properties")
        if not isinstance(props, dict):
            return self._arm_error(400, "UserError", "properties is required.")
        auth = str(props.get("authMode") or "")
        mode = next((a for a in AUTH_MODES if a.lower() == auth.lower()), None)
        if mode is None:
            return self._arm_error(400, "UserError",
                                   f"authMode must be one of {', '.join(AUTH_MODES)}.")
        traffic = props.get("traffic") or {}
        mirror = props.get("mirrorTraffic") or {}
        if endpoint is not None:
            if (busy := self._busy_answer(endpoint, "endpoint")) is not None:
                return busy
            live = {k: v for k, v in endpoint.deployments.items()
                    if v.provisioning_state != "Deleting"}
            if (problem := self._traffic_problem(live, traffic, mirror)) is not None:
                return self._arm_error(400, "UserError", problem)
            endpoint.auth_mode = mode
            endpoint.traffic = {k.lower(): v for k, v in traffic.items()}
            endpoint.mirror_traffic = {k.lower(): v for k, v in mirror.items()}
            endpoint.description = props.get("description", endpoint.description)
            endpoint.tags = dict(body.get("tags") or {})
            endpoint.properties = dict(props.get("properties") or {})
            endpoint.provisioning_state = "Updating"
            op = self._begin(req, endpoint, None, "update", lambda _: None,
                             self._finish_endpoint_write)
            headers = {"Azure-AsyncOperation": self._async_operation_url(
                req, ws, op, "mfeOperationsStatus"), **self._lro_headers()}
            return _Response.json(200, self._endpoint_json(endpoint), headers)
        if (problem := self._traffic_problem({}, traffic, mirror)) is not None:
            return self._arm_error(400, "UserError", problem)
        location = str(body.get("location") or ws.location).replace(" ", "").lower()
        # Scoring URIs are `{name}.{region}...`, so a name is unique per region ("Endpoint name
        # needs to be unique within a region", Azure/mlops-project-template#29).
        for other in self._endpoints.values():
            if other.name.lower() == name.lower() and other.location == location:
                return self._conflict(
                    f"There is already an endpoint with this name, {name}. Endpoint name needs "
                    "to be unique within a region.")
        identity = body.get("identity") or {"type": "SystemAssigned"}
        if isinstance(identity, dict) and str(identity.get("type", "")).lower() \
                == "systemassigned":
            identity = {**identity, "principalId": str(uuid.uuid4()), "tenantId": self.tenant_id}
        endpoint = OnlineEndpoint(
            workspace=ws, name=name, location=location, auth_mode=mode, traffic={},
            mirror_traffic={}, description=props.get("description"),
            tags=dict(body.get("tags") or {}), properties=dict(props.get("properties") or {}),
            identity=identity if isinstance(identity, dict) else None, created=_now())
        self._endpoints[(ws.arm_id.lower(), name.lower())] = endpoint
        op = self._begin(req, endpoint, None, "create", lambda _: None,
                         self._finish_endpoint_write)
        headers = {"Azure-AsyncOperation": self._async_operation_url(
            req, ws, op, "mfeOperationsStatus"), **self._lro_headers()}
        return _Response.json(201, self._endpoint_json(endpoint), headers)

    def _patch_endpoint(self, req: _Request, ws: AzureMLResource, endpoint: OnlineEndpoint,
                        body: dict[str, Any]) -> _Response:
        """PATCH (spec: PartialMinimalTrackedResourceWithIdentity: `tags`, `identity`)."""
        if (busy := self._busy_answer(endpoint, "endpoint")) is not None:
            return busy
        if isinstance(body.get("tags"), dict):
            endpoint.tags = dict(body["tags"])
        if isinstance(body.get("identity"), dict):
            endpoint.identity = dict(body["identity"])
        endpoint.provisioning_state = "Updating"
        op = self._begin(req, endpoint, None, "update", lambda _: None,
                         self._finish_endpoint_write)
        return _Response(202, headers={"Location": self._async_operation_url(
            req, ws, op, "mfeOperationResults"), **self._lro_headers()})

    def _finish_endpoint_write(self, op: EndpointOperation) -> None:
        endpoint = self._endpoints.get((op.workspace.arm_id.lower(), op.endpoint))
        if endpoint is not None:
            endpoint.provisioning_state = op.status

    def _delete_endpoint(self, req: _Request, ws: AzureMLResource,
                         endpoint: OnlineEndpoint | None) -> _Response:
        """DELETE: 202 + Location, the endpoint and its deployments show Deleting, then they
        are gone (their model servers stopped); 204 for an endpoint that does not exist (ARM's
        DELETE contract)."""
        if endpoint is None:
            return _Response(204)
        if (busy := self._busy_answer(endpoint, "endpoint")) is not None:
            return busy
        endpoint.provisioning_state = "Deleting"
        for deployment in endpoint.deployments.values():
            deployment.provisioning_state = "Deleting"

        def work(_: EndpointOperation) -> None:
            for deployment in list(endpoint.deployments.values()):
                self._stop_container(deployment)

        def finish(op: EndpointOperation) -> None:
            if op.status == "Succeeded":
                self._endpoints.pop((ws.arm_id.lower(), endpoint.name.lower()), None)
            else:
                endpoint.provisioning_state = "Failed"

        op = self._begin(req, endpoint, None, "delete", work, finish)
        return _Response(202, headers={"Location": self._async_operation_url(
            req, ws, op, "mfeOperationResults"), **self._lro_headers()})

    def _endpoint_token(self, endpoint: OnlineEndpoint) -> _Response:
        """`token` (spec: EndpointAuthToken): an AMLToken endpoint's scoring token, valid for an
        hour; a Key or AADToken endpoint has none."""
        if endpoint.auth_mode != "AMLToken":
            return self._arm_error(
                400, "UserError",
                f"Endpoint {endpoint.name} uses {endpoint.auth_mode} authentication; tokens are "
                "for AMLToken endpoints.")
        token = secrets.token_urlsafe(32)
        now = time.time()
        endpoint.tokens = {t: exp for t, exp in endpoint.tokens.items() if exp > now}
        endpoint.tokens[token] = now + 3600
        return _Response.json(200, {"accessToken": token, "tokenType": "Bearer",
                                    "expiryTimeUtc": int(now + 3600),
                                    "refreshAfterTimeUtc": int(now + 1800)})

    def _regenerate_keys(self, req: _Request, ws: AzureMLResource,
                         endpoint: OnlineEndpoint) -> _Response:
        """regenerateKeys (spec: RegenerateEndpointKeysRequest {keyType, keyValue}), 202 +
        Location. azure-ai-ml sends the current key as `keyValue`; a new one is made unless
        another value is given."""
        body = self._json_body(req) or {}
        key_type = str(body.get("keyType") or "")
        if key_type.lower() not in ("primary", "secondary"):
            return self._arm_error(400, "UserError", "keyType must be Primary or Secondary.")
        if (busy := self._busy_answer(endpoint, "endpoint")) is not None:
            return busy
        attribute = f"{key_type.lower()}_key"
        current = getattr(endpoint, attribute)
        value = body.get("keyValue")
        new = value if isinstance(value, str) and value and value != current \
            else secrets.token_hex(16)

        def work(_: EndpointOperation) -> None:
            with self._endpoints_lock:
                setattr(endpoint, attribute, new)

        op = self._begin(req, endpoint, None, "regenerateKeys", work, lambda _: None)
        return _Response(202, headers={"Location": self._async_operation_url(
            req, ws, op, "mfeOperationResults"), **self._lro_headers()})

    def _endpoint_json(self, endpoint: OnlineEndpoint) -> dict[str, Any]:
        # Shape: spec OnlineEndpoint (TrackedResource + OnlineEndpointProperties).
        created = _iso(endpoint.created)
        live = {d.name.lower(): d.name for d in endpoint.deployments.values()}
        return {
            "id": endpoint.arm_id,
            "name": endpoint.name,
            "type": f"{PROVIDER}/workspaces/onlineEndpoints",
            "location": endpoint.location,
            "kind": "Managed",
            "tags": endpoint.tags,
            "identity": endpoint.identity,
            "systemData": {"createdAt": created, "createdBy": "amlpromote-tests",
                           "createdByType": "Application", "lastModifiedAt": created},
            "properties": {
                "description": endpoint.description,
                "properties": {**endpoint.properties,
                               "azureml.onlineendpointid": endpoint.arm_id.lower()},
                "authMode": endpoint.auth_mode,
                "scoringUri": endpoint.scoring_uri,
                "swaggerUri": endpoint.scoring_uri.removesuffix("/score") + "/swagger.json",
                "provisioningState": endpoint.provisioning_state,
                "traffic": {live.get(k, k): v for k, v in endpoint.traffic.items()},
                "mirrorTraffic": {live.get(k, k): v for k, v in endpoint.mirror_traffic.items()},
                "publicNetworkAccess": "Enabled",
                "compute": None,
            },
        }

    # -- handlers: deployments ------------------------------------------------------------------

    def _handle_online_deployments(self, req: _Request, m: re.Match[str] | None) -> _Response:
        assert m is not None
        if req.method != "GET":
            return self._arm_error(405, "MethodNotAllowed", f"{req.method} is not allowed.")
        ws = self._endpoint_scope(req, m, "OnlineDeployments_List", "deployments/read")
        if isinstance(ws, _Response):
            return ws
        name = unquote(m["endpoint"])
        with self._endpoints_lock:
            endpoint = self._endpoints.get((ws.arm_id.lower(), name.lower()))
            if endpoint is None:
                return self._endpoint_not_found(ws, name)
            items = [self._deployment_json(endpoint, d)
                     for _, d in sorted(endpoint.deployments.items())]
        return _Response.json(200, {"value": items, "nextLink": None})

    def _handle_online_deployment(self, req: _Request, m: re.Match[str] | None) -> _Response:
        assert m is not None
        name, deployment_name = unquote(m["endpoint"]), unquote(m["deployment"])
        key = deployment_name.lower()
        if m["action"]:
            if req.method != "POST":
                return self._arm_error(405, "MethodNotAllowed", f"{req.method} is not allowed.")
            operation = "OnlineDeployments_GetLogs"
        else:
            operation = {"GET": "OnlineDeployments_Get",
                         "PUT": "OnlineDeployments_CreateOrUpdate",
                         "PATCH": "OnlineDeployments_Update",
                         "DELETE": "OnlineDeployments_Delete"}.get(req.method, "")
            if not operation:
                return self._arm_error(405, "MethodNotAllowed", f"{req.method} is not allowed.")
        ws = self._endpoint_scope(req, m, operation, {"GET": "deployments/read",
                                                      "DELETE": "deployments/delete"}.get(
            req.method, "deployments/write"))
        if isinstance(ws, _Response):
            return ws
        with self._endpoints_lock:
            endpoint = self._endpoints.get((ws.arm_id.lower(), name.lower()))
            if endpoint is None or (endpoint.provisioning_state == "Deleting"
                                    and req.method != "GET"):
                return self._endpoint_not_found(ws, name)
            deployment = endpoint.deployments.get(key)
            missing = self._arm_error(
                404, "UserError",
                # Azure ML's words (Azure-Samples/contoso-chat#139).
                f"Deployment {deployment_name} not found in endpoint {endpoint.name}, workspace "
                f"{ws.name}")
            if m["action"]:
                if deployment is None:
                    return missing
                return self._deployment_logs(req, deployment)
            if req.method == "GET":
                if deployment is None:
                    return missing
                return _Response.json(200, self._deployment_json(endpoint, deployment))
            if req.method == "DELETE":
                if deployment is None:
                    return _Response(204)
                return self._delete_deployment(req, ws, endpoint, deployment)
            body = self._json_body(req)
            if body is None:
                return self._arm_error(400, "UserError", "The request body must be a JSON object.")
            if (busy := self._busy_answer(endpoint, "deployment")) is not None:
                return busy
            if req.method == "PATCH":
                if deployment is None:
                    return missing
                return self._patch_deployment(req, ws, endpoint, deployment, body)
            return self._put_deployment(req, ws, endpoint, deployment_name, deployment, body)

    def _put_deployment(self, req: _Request, ws: AzureMLResource, endpoint: OnlineEndpoint,
                        name: str, existing: OnlineDeployment | None,
                        body: dict[str, Any]) -> _Response:
        props = body.get("properties")
        if not isinstance(props, dict):
            return self._arm_error(400, "UserError", "properties is required.")
        compute = str(props.get("endpointComputeType") or "")
        if compute.lower() != "managed":
            return self._arm_error(
                400, "UserError",
                f"endpointComputeType {compute or None!r} is not emulated: the box has managed "
                "online deployments only.")
        if not props.get("model"):
            return self._arm_error(400, "UserError", "properties.model is required.")
        sku = body.get("sku") if isinstance(body.get("sku"), dict) else None
        created = existing is None
        deployment = OnlineDeployment(
            name=existing.name if existing else name, properties=dict(props), sku=sku,
            tags=dict(body.get("tags") or {}), created=existing.created if existing else _now(),
            provisioning_state="Creating" if created else "Updating")
        if existing is not None:
            # The running model server keeps answering until the new one replaces it.
            deployment.container = existing.container
            deployment.scored, deployment.mirrored = existing.scored, existing.mirrored
        endpoint.deployments[name.lower()] = deployment
        op = self._begin(req, endpoint, name.lower(), "create" if created else "update",
                         lambda op: self._provision(endpoint, deployment, op),
                         lambda op: self._finish_deployment_write(endpoint, deployment, op))
        headers = {"Azure-AsyncOperation": self._async_operation_url(
            req, ws, op, "mfeOperationsStatus"), **self._lro_headers()}
        return _Response.json(201 if created else 200,
                              self._deployment_json(endpoint, deployment), headers)

    def _patch_deployment(self, req: _Request, ws: AzureMLResource, endpoint: OnlineEndpoint,
                          deployment: OnlineDeployment, body: dict[str, Any]) -> _Response:
        """PATCH (spec: PartialMinimalTrackedResourceWithSku: `tags`, `sku`, e.g. a new
        instance count); the model server stays as it is."""
        if isinstance(body.get("tags"), dict):
            deployment.tags = dict(body["tags"])
        if isinstance(body.get("sku"), dict):
            deployment.sku = {**(deployment.sku or {}), **body["sku"]}
        deployment.provisioning_state = "Updating"
        op = self._begin(req, endpoint, deployment.name.lower(), "update", lambda _: None,
                         lambda op: self._finish_deployment_write(endpoint, deployment, op))
        return _Response(202, headers={"Location": self._async_operation_url(
            req, ws, op, "mfeOperationResults"), **self._lro_headers()})

    def _finish_deployment_write(self, endpoint: OnlineEndpoint, deployment: OnlineDeployment,
                                 op: EndpointOperation) -> None:
        deployment.provisioning_state = op.status

    def _delete_deployment(self, req: _Request, ws: AzureMLResource, endpoint: OnlineEndpoint,
                           deployment: OnlineDeployment) -> _Response:
        if (busy := self._busy_answer(endpoint, "deployment")) is not None:
            return busy
        key = deployment.name.lower()
        # The REST spec is silent on deleting a deployment that still takes (or mirrors)
        # traffic; the box takes the strictest plausible answer and refuses it, as the
        # safe-rollout guide (azure-ai-docs, how-to-safely-rollout-online-endpoints.md) always
        # moves the traffic off before `az ml online-deployment delete`.
        share = endpoint.traffic.get(key, 0) or endpoint.mirror_traffic.get(key, 0)
        if share:
            return self._arm_error(
                400, "BadArgument", f"Deployment {deployment.name} in endpoint "
                f"{endpoint.name} takes {share}% of its traffic; set it to 0 before deleting.")
        deployment.provisioning_state = "Deleting"

        def finish(op: EndpointOperation) -> None:
            if op.status != "Succeeded":
                deployment.provisioning_state = "Failed"
                return
            if endpoint.deployments.get(key) is deployment:
                del endpoint.deployments[key]
            # A deleted deployment takes no traffic any more.
            endpoint.traffic.pop(key, None)
            endpoint.mirror_traffic.pop(key, None)

        op = self._begin(req, endpoint, key, "delete",
                         lambda _: self._stop_container(deployment), finish)
        return _Response(202, headers={"Location": self._async_operation_url(
            req, ws, op, "mfeOperationResults"), **self._lro_headers()})

    def _deployment_logs(self, req: _Request, deployment: OnlineDeployment) -> _Response:
        """getLogs (spec: DeploymentLogsRequest {containerType, tail} -> DeploymentLogs
        {content}): the model server's log (InferenceServer, the default) or the box's record of
        fetching the model (StorageInitializer), last `tail` lines."""
        body = self._json_body(req) or {}
        kind = str(body.get("containerType") or "InferenceServer")
        container_type = next((c for c in CONTAINER_TYPES if c.lower() == kind.lower()), None)
        if container_type is None:
            return self._arm_error(400, "UserError",
                                   f"containerType must be one of {', '.join(CONTAINER_TYPES)}.")
        tail = body.get("tail")
        lines = int(tail) if isinstance(tail, int) and tail > 0 else 5000
        container = deployment.container
        if container_type == "StorageInitializer":
            # The box fetching the files from its storage, then the server's own copy of them.
            text = "\n".join(deployment.storage_log)
            if container is not None:
                text += "\n" + container.logs(tail=lines, container_type=container_type)
        elif container is not None:
            text = container.logs(tail=lines, container_type=container_type)
        else:
            text = deployment.server_log
        return _Response.json(200, {"content": "\n".join(text.splitlines()[-lines:])})

    def _deployment_json(self, endpoint: OnlineEndpoint,
                         deployment: OnlineDeployment) -> dict[str, Any]:
        # Shape: spec OnlineDeployment (TrackedResource + ManagedOnlineDeployment), as the
        # 2024-04-01 example ManagedOnlineDeployment/createOrUpdate.json answers it.
        created = _iso(deployment.created)
        return {
            "id": f"{endpoint.arm_id}/deployments/{deployment.name}",
            "name": deployment.name,
            "type": f"{PROVIDER}/workspaces/onlineEndpoints/deployments",
            "location": endpoint.location,
            "kind": "Managed",
            "tags": deployment.tags,
            "sku": deployment.sku,
            "systemData": {"createdAt": created, "createdBy": "amlpromote-tests",
                           "createdByType": "Application", "lastModifiedAt": created},
            "properties": {**_DEPLOYMENT_DEFAULTS, **deployment.properties,
                           "provisioningState": deployment.provisioning_state},
        }

    # -- provisioning: the model's files and its server -----------------------------------------

    def _provision(self, endpoint: OnlineEndpoint, deployment: OnlineDeployment,
                   op: EndpointOperation) -> None:
        """Fetch the model's files (the StorageInitializer's job in Azure) and start its model
        server; the old server of an updated deployment stops once the new one is up."""
        model_id = deployment.model
        deployment.storage_log.append(f"{_iso(_now())} Downloading model {model_id}")
        files = self._model_files(endpoint.workspace, model_id)
        folder = (self.root / "online-deployments" / endpoint.workspace.name / endpoint.name
                  / deployment.name / op.id.replace(":", "-"))
        model_dir = folder / "model"
        for rel, data in files.items():
            target = model_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        deployment.storage_log.append(
            f"{_iso(_now())} Model {model_id}: {len(files)} files, "
            f"{sum(len(d) for d in files.values())} bytes, ready.")
        old = deployment.container
        if not self.serve_deployments:
            deployment.container = None
        else:
            deployment.container = self._start_model_server(deployment, model_dir,
                                                            folder / "work")
        if old is not None and old is not deployment.container:
            old.stop()

    def _start_model_server(self, deployment: OnlineDeployment, model_dir: Path,
                            work_dir: Path) -> Any:
        try:
            from .serving import ServingFailed, start_container
        except ImportError as exc:
            raise _OperationFailed("InternalServerError",
                                   f"azureml-box: no model server available ({exc}).") from exc
        work_dir.mkdir(parents=True, exist_ok=True)
        env = {str(k): str(v) for k, v in
               (deployment.properties.get("environmentVariables") or {}).items()}
        # The asset's name and version shape AZUREML_MODEL_DIR, as in Azure ML.
        m = _WORKSPACE_MODEL_ID.match(deployment.model) or _REGISTRY_MODEL_ID.match(
            deployment.model)
        naming = {"model_name": unquote(m["name"]), "model_version": unquote(m["version"])} \
            if m else {}
        try:
            container = start_container(model_dir, work_dir, env=env,
                                        timeout=self.serving_timeout, **naming)
        except ServingFailed as exc:
            deployment.server_log = exc.logs
            # Azure's error for a model server that exits or never gets ready (troubleshooting
            # guide, https://aka.ms/oe-tsg#error-resourcenotready).
            raise _OperationFailed(
                "ResourceNotReady",
                "User container has crashed or terminated. Please see troubleshooting guide, "
                "available here: https://aka.ms/oe-tsg#error-resourcenotready") from exc
        if self._endpoints_stopping:
            container.stop()
        return container

    def _stop_container(self, deployment: OnlineDeployment) -> None:
        container, deployment.container = deployment.container, None
        if container is not None:
            try:
                deployment.server_log = container.logs(tail=5000)
            except Exception:  # a log that cannot be read is no reason to keep it running
                deployment.server_log = ""
            container.stop()

    def _model_files(self, ws: AzureMLResource, model_id: str) -> dict[str, bytes]:
        """The files of the model version a deployment names, from the box's storage; an
        unknown version fails the deployment, as in Azure."""
        if m := _WORKSPACE_MODEL_ID.match(model_id):
            if m["ws"].lower() != ws.name.lower() or m["sub"].lower() != \
                    ws.subscription_id.lower() or m["rg"].lower() != ws.resource_group.lower():
                raise _OperationFailed(
                    "BadArgument",
                    f"Model {model_id} is not in workspace {ws.name}; deploy a workspace's own "
                    "models or a registry's.")
            return self._workspace_model_files(ws, unquote(m["name"]), unquote(m["version"]),
                                               model_id)
        if m := _REGISTRY_MODEL_ID.match(model_id):
            reg = self._find_registry_by_name(m["reg"])
            record = None
            if reg is not None:
                with reg.lock:
                    record = reg.model_versions.get((unquote(m["name"]), unquote(m["version"])))
            if reg is None or record is None or record.state != "Succeeded":
                raise self._model_not_found(model_id)
            return self.model_uri_files(str(record.properties.get("modelUri") or ""))
        raise _OperationFailed("BadArgument", f"Model {model_id!r} is not a model asset id.")

    @staticmethod
    def _model_not_found(model_id: str) -> _OperationFailed:
        return _OperationFailed("ResourceNotFound", f"Model {model_id} was not found.")

    def _workspace_model_files(self, ws: AzureMLResource, name: str, version: str,
                               model_id: str) -> dict[str, bytes]:
        mv = None
        if ws.backend is not None:
            mv = self._backend_get(ws.backend, "/api/2.0/mlflow/model-versions/get",
                                   {"name": name, "version": version})
        if mv is None:
            raise self._model_not_found(model_id)
        source = str(mv["model_version"].get("source") or "")
        # Where the box keeps a version's files: as arm.py's model asset reads them.
        if rm := _SOURCE_RUN_ARTIFACTS.search(source):
            origin, container, rest = "ExperimentRun", f"dcid.{rm['run']}", rm["rest"]
        elif lm := _SOURCE_LOCAL_UPLOAD.match(source):
            origin, container, rest = "LocalUpload", lm["container"], lm["rest"]
        elif dm := _SOURCE_DATASTORE.search(source):
            origin, container, rest = dm["origin"], dm["container"], dm["rest"]
        else:
            raise _OperationFailed("BadArgument",
                                   f"Model {model_id}: its files ({source}) are not in the "
                                   "workspace's storage.")
        prefix = unquote(rest or "").strip("/")
        with ws.lock:
            store = dict(ws.artifacts.get((origin, container), {}))
        files = {}
        for path, art in store.items():
            if not prefix or path.startswith(prefix + "/"):
                files[path[len(prefix) + 1:] if prefix else path] = self.read_blob(
                    ws, art.blob_name)
        if not files:
            raise _OperationFailed("BadArgument", f"Model {model_id} has no files.")
        return files
