"""The MLflow REST API of Azure ML workspaces and registries in the box.

- azureml-mlflow: the MLflow REST API under
  `/mlflow/v2.0/subscriptions/S/resourceGroups/R/providers/Microsoft.MachineLearningServices/
  workspaces/W/api/2.0/mlflow/...` (or `.../registries/NAME/...`), forwarded here to a real
  `mlflow server` per workspace.
- Run artifacts: the box reports the backend's `mlflow-artifacts:/E/R/artifacts` locations as
  the workspace form
  `azureml://HOST/mlflow/v2.0/.../workspaces/W/experiments/E/runs/R/artifacts` (or another of
  ARTIFACT_URI_FORMS), which azureml-mlflow serves through the run history service
  (artifacts.py).
- MLflow 3 LoggedModel endpoints (`/api/2.0/mlflow/logged-models...`) answer 404 with an empty
  body, as Azure ML does today (set `resource.logged_models = True` to forward them instead);
  the backend's own artifact proxy (`/api/2.0/mlflow-artifacts/...`) is not reachable.
- Tags over Azure ML's published limits (limits.py) are refused with Azure ML's 400
  ValidationError document before the backend sees them.
"""

from __future__ import annotations

import http.client
import json
import re
import uuid
from typing import Any

from support.mlflow_server import MlflowServer

from .arm import ArmService
from .limits import _MLFLOW_TAG_OWNERS, _MLFLOW_TAG_WRITES, tag_limit_problem
from .model import (
    _BACKEND_EXPERIMENT,
    _BACKEND_RUN_ARTIFACTS,
    _SOURCE_RUN_ARTIFACTS,
    ARTIFACT_DATASTORE,
    AzureMLResource,
    _iso,
    _now,
    _Request,
    _Response,
)

# MLflow API answers that carry model versions (whose sources the datastore forms rename).
_VERSION_APIS = re.compile(r"^/api/[23]\.0/mlflow/(model-versions|registered-models)/")
# MLflow 3 LoggedModel endpoints: Azure ML answers 404 with an empty body (measured by users
# with azureml-mlflow 1.60/1.61 and mlflow 3.5-3.8, Azure/azure-sdk-for-python#44896).
_LOGGED_MODELS = re.compile(r"^/api/[23]\.0/mlflow/logged-models(/|$)")
_MLFLOW_ARTIFACTS_API = re.compile(r"^/api/[23]\.0/mlflow-artifacts(/|$)")
_MLFLOW_API_PREFIX = re.compile(r"^/api/[23]\.0/mlflow/")


class MlflowService(ArmService):
    """The MLflow REST facade: checks, forwarding to the backend, artifact URIs published."""

    # -- handlers: MLflow -----------------------------------------------------------------------

    def _handle_mlflow(self, req: _Request, m: re.Match[str] | None) -> _Response:
        assert m is not None
        kind = m["kind"].lower()
        action = "models/write" if req.method != "GET" else "models/read"
        found = self._authorize(req, "mlflow", kind, m["sub"], m["rg"], m["name"], action)
        if isinstance(found, _Response):
            return found
        if found.backend is None:
            return self._aml_error(
                503, "ServiceUnavailable", f"{found.name} has no MLflow backend in this box."
            )
        # The raw (still percent-encoded) suffix keeps the request byte-identical.
        suffix = req.raw_path[m.start("rest"):]
        api_path = m["rest"]
        if _LOGGED_MODELS.match(api_path) and not found.logged_models:
            return _Response(404)  # what Azure ML answers today: 404, empty body
        if _MLFLOW_ARTIFACTS_API.match(api_path):
            # Azure ML does not proxy artifacts through its MLflow API; the backend's
            # `--serve-artifacts` endpoints must stay unreachable through the box.
            return _Response(404)
        if (refused := self._refuse_over_tag_limits(found.backend, req, api_path)) is not None:
            return refused
        response = self._forward(found.backend, req, suffix)
        if kind == "workspaces":
            response = self._publish_artifact_uris(found, response, api_path)
        return response

    def _refuse_over_tag_limits(self, backend: MlflowServer, req: _Request, api_path: str) \
            -> _Response | None:
        """Azure ML's answer to an MLflow write whose tags break its limits (RUN_TAG_LIMITS and
        the rest, above), before the backend sees it; None when the write may go on. The limits
        count the tags the entity already has: one more on a run that holds 50 is refused."""
        endpoint = _MLFLOW_API_PREFIX.sub("", api_path)
        limits = _MLFLOW_TAG_WRITES.get(endpoint)
        if req.method != "POST" or limits is None:
            return None
        try:
            body = json.loads(req.body or b"{}")
        except ValueError:
            return None  # malformed: the backend answers it as MLflow does
        if not isinstance(body, dict):
            return None
        if isinstance(body.get("tags"), list):
            pairs = [(t.get("key"), t.get("value")) for t in body["tags"] if isinstance(t, dict)]
        elif "key" in body:
            pairs = [(body.get("key"), body.get("value"))]
        else:
            return None
        existing: list[str] = []
        if reader := _MLFLOW_TAG_OWNERS.get(endpoint):
            path, params, entity = reader
            query = {k: str(body[k]) for k in params if body.get(k) is not None}
            found = self._backend_get(backend, f"/api/2.0/mlflow/{path}", query)
            node = (found or {}).get(entity) or {}
            tags = (node.get("data") or {}).get("tags") if entity == "run" else node.get("tags")
            existing = [str(t.get("key")) for t in tags or [] if isinstance(t, dict)]
        problem = tag_limit_problem(pairs, limits, existing)
        return None if problem is None else self._mlflow_validation_error(problem)

    def _mlflow_validation_error(self, message: str) -> _Response:
        """Azure ML's MLflow API refusing a request it validated: 400 with the service's error
        document (PascalCase) and MLflow's `error_code`, as users quote it (mlflow/mlflow#11462,
        Azure/azure-sdk-for-python#35685). It has no `message` key, so MLflow's RestException
        shows it as "INVALID_PARAMETER_VALUE: Response: {...}"."""
        request_id = uuid.uuid4().hex
        payload = {
            "Error": {"Code": "ValidationError", "Severity": None, "Message": message,
                      "MessageFormat": None, "MessageParameters": None, "ReferenceCode": None,
                      "DetailsUri": None, "Target": None, "Details": [], "InnerError": None,
                      "DebugInfo": None, "AdditionalInfo": None},
            "Correlation": {"operation": request_id, "request": request_id[:16]},
            "Environment": self.location,
            "Location": self.location,
            "Time": _iso(_now()),
            "ComponentName": "mlflow",
            "statusCode": 400,
            "error_code": "INVALID_PARAMETER_VALUE",
        }
        return _Response.json(400, payload)

    @staticmethod
    def _forward(backend: MlflowServer, req: _Request, suffix: str) -> _Response:
        target = suffix + (f"?{req.raw_query}" if req.raw_query else "")
        headers = {
            name: req.headers[name]
            for name in ("Content-Type", "Accept", "User-Agent")
            if req.headers.get(name)
        }
        conn = http.client.HTTPConnection(backend.host, backend.port, timeout=120)
        try:
            conn.request(req.method, target, body=req.body or None, headers=headers)
            upstream = conn.getresponse()
            body = upstream.read()
            keep = ("Content-Type", "Content-Disposition")
            out = {k: v for k in keep if (v := upstream.getheader(k))}
            return _Response(upstream.status, body, out)
        finally:
            conn.close()

    def _public_artifact_uri(self, ws: AzureMLResource, value: str,
                             names: dict[str, str] | None = None) -> str:
        """`mlflow-artifacts:/E/R/artifacts/p` (backend) -> the workspace's run artifact URI.

        Real workspaces report `azureml://<region>.api.azureml.ms/mlflow/v2.0/subscriptions/
        .../workspaces/W/experiments/E/runs/R/artifacts`; azureml-mlflow maps that form to the
        run artifact ("history") service, which this box serves from Azurite. Inside a job
        they report the short form instead (see ARTIFACT_URI_FORMS), with the experiment's name.
        """
        base = f"azureml://{self.netloc}/mlflow/v2.0{ws.arm_id}/experiments"
        if m := _BACKEND_RUN_ARTIFACTS.match(value):
            if ws.artifact_uri_form != "long":
                name = self._experiment_name(ws, m["exp"], names if names is not None else {})
                return f"azureml://experiments/{name}/runs/{m['run']}/artifacts{m['rest'] or ''}"
            return f"{base}/{m['exp']}/runs/{m['run']}/artifacts{m['rest'] or ''}"
        if m := _BACKEND_EXPERIMENT.match(value):
            return f"{base}/{m['exp']}"
        return value

    def _experiment_name(self, ws: AzureMLResource, experiment_id: str,
                         names: dict[str, str]) -> str:
        if experiment_id not in names:
            assert ws.backend is not None
            found = self._backend_get(ws.backend, "/api/2.0/mlflow/experiments/get",
                                      {"experiment_id": experiment_id})
            names[experiment_id] = found["experiment"]["name"] if found else experiment_id
        return names[experiment_id]

    def _version_artifact_uri(self, ws: AzureMLResource, value: str) -> str:
        """A model version's run-artifact location in the workspace's datastore form (when its
        `artifact_uri_form` is one): only this workspace's own runs are renamed."""
        if ws.artifact_uri_form not in ("datastore", "datastore-short"):
            return value
        own = (f"azureml://{self.netloc}/mlflow/v2.0{ws.arm_id}/experiments/".lower(),
               "azureml://experiments/", "mlflow-artifacts:/")
        m = _SOURCE_RUN_ARTIFACTS.search(value) or _BACKEND_RUN_ARTIFACTS.match(value)
        if m is None or not value.lower().startswith(own):
            return value
        path = f"ExperimentRun/dcid.{m['run']}{m['rest'] or ''}"
        if ws.artifact_uri_form == "datastore-short":
            return f"azureml://datastores/{ARTIFACT_DATASTORE}/paths/{path}"
        return (f"azureml://subscriptions/{ws.subscription_id}/resourcegroups/"
                f"{ws.resource_group}/workspaces/{ws.name}/datastores/{ARTIFACT_DATASTORE}"
                f"/paths/{path}")

    def _publish_artifact_uris(self, ws: AzureMLResource, response: _Response,
                               api_path: str = "") -> _Response:
        versions = bool(_VERSION_APIS.match(api_path)) \
            and ws.artifact_uri_form in ("datastore", "datastore-short")
        if "json" not in response.headers.get("Content-Type", "") or not (
                versions or b"mlflow-artifacts:/" in response.body):
            return response
        names: dict[str, str] = {}

        def walk(node: Any, key: str = "") -> Any:
            if isinstance(node, dict):
                return {k: walk(v, k) for k, v in node.items()}
            if isinstance(node, list):
                return [walk(v) for v in node]
            if versions and isinstance(node, str) and key in (
                    "source", "storage_location", "artifact_uri") and (
                    renamed := self._version_artifact_uri(ws, node)) != node:
                return renamed
            if isinstance(node, str) and node.startswith("mlflow-artifacts:/"):
                return self._public_artifact_uri(ws, node, names)
            return node

        body = json.dumps(walk(json.loads(response.body))).encode()
        return _Response(response.status, body, dict(response.headers))
