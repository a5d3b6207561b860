"""Azure Resource Manager in the box: workspaces and registries, their lists, discovery, and
workspace model assets.

- azure-ai-ml `MLClient(...).workspaces.get(ws)` (ARM base from AZUREML_DEV_URL_MFE):
  `GET /subscriptions/S/resourceGroups/R/providers/Microsoft.MachineLearningServices/workspaces/W
  ?api-version=2024-10-01-preview`. `.mlflow_tracking_uri` is `properties.mlFlowTrackingUri`
  with `/mlflow/v1.0` rewritten to `/mlflow/v2.0` by azureml-mlflow.
- azure-ai-ml `MLClient(...).models.get(name, version)`: `GET <workspace>/models/N/versions/V`,
  answered from the backend's model version: `modelType` is `mlflow_model` (with the flavors of
  its MLmodel) when the version's files hold an MLmodel at their root, as Azure ML records a
  version registered through MLflow, `custom_model` otherwise. Registry versions are
  registry.py's.
- Registry discovery is hard-wired in azure-ai-ml to `https://eastus.api.azureml.ms/`, which
  the proxy (transport.py) tunnels here.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from .model import (
    _SOURCE_LOCAL_UPLOAD,
    _SOURCE_RUN_ARTIFACTS,
    AML_HOST_SUFFIX,
    ARTIFACT_DATASTORE,
    DISCOVERY_PATH,
    PROVIDER,
    AzureMLResource,
    _iso,
    _Request,
    _Response,
)
from .registry import RegistryService
from .token import _Unauthenticated


class ArmService(RegistryService):
    """ARM resources and lists, (registry) discovery and workspace model assets."""

    def _handle_arm_resource(self, req: _Request, m: re.Match[str] | None) -> _Response:
        assert m is not None
        if (bad := self._require_api_version(req)) is not None:
            return bad
        kind = m["kind"].lower()
        if req.method != "GET":
            # Creating/updating workspaces is not emulated: tests register them directly.
            return self._arm_error(
                405, "MethodNotAllowed", f"{req.method} on {kind} is not emulated by the box."
            )
        found = self._authorize(req, "arm", kind, m["sub"], m["rg"], m["name"], "read")
        if isinstance(found, _Response):
            return found
        body = self._workspace_json(found) if kind == "workspaces" else self._registry_json(found)
        return _Response.json(200, body)

    def _handle_arm_list(self, req: _Request, m: re.Match[str] | None) -> _Response:
        assert m is not None
        if (bad := self._require_api_version(req)) is not None:
            return bad
        try:
            identity = self._verify_token(req.headers.get("Authorization"))
        except _Unauthenticated as exc:
            return self._unauthenticated("arm", exc)
        self._current_identity.name = identity.name
        kind = m["kind"].lower()
        sub_known, rg_known = self._known_scope(m["sub"], m["rg"])
        if not sub_known:
            return self._arm_error(404, "SubscriptionNotFound",
                                   f"The subscription '{m['sub']}' could not be found.")
        if not rg_known:
            return self._arm_error(404, "ResourceGroupNotFound",
                                   f"Resource group '{m['rg']}' could not be found.")
        items = [
            r for r in self.resources()
            if r.kind == kind
            and r.subscription_id.lower() == m["sub"].lower()
            and r.resource_group.lower() == m["rg"].lower()
            and r.may_use(identity)
        ]
        render = self._workspace_json if kind == "workspaces" else self._registry_json
        return _Response.json(200, {"value": [render(r) for r in items]})

    def _system_data(self, resource: AzureMLResource) -> dict[str, Any]:
        created = _iso(resource.created)
        return {
            "createdAt": created,
            "createdBy": "amlpromote-tests",
            "createdByType": "Application",
            "lastModifiedAt": created,
            "lastModifiedBy": "amlpromote-tests",
            "lastModifiedByType": "Application",
        }

    def _workspace_json(self, ws: AzureMLResource) -> dict[str, Any]:
        # Shape: azure-rest-api-specs machinelearningservices 2024-10-01-preview
        # examples/Workspace/get.json, trimmed to what a plain (kind=Default) workspace returns.
        rg_scope = f"/subscriptions/{ws.subscription_id}/resourceGroups/{ws.resource_group}"
        short = ws.resource_id.replace("-", "")[:12]
        return {
            "id": ws.arm_id,
            "name": ws.name,
            "type": f"{PROVIDER}/workspaces",
            "location": ws.location,
            "kind": "Default",
            "tags": {},
            "etag": None,
            "identity": {
                "type": "SystemAssigned",
                "principalId": str(uuid.uuid5(uuid.NAMESPACE_URL, ws.arm_id)),
                "tenantId": self.tenant_id,
            },
            "sku": {"name": "Basic", "tier": "Basic"},
            "systemData": self._system_data(ws),
            "properties": {
                "workspaceId": ws.resource_id,
                "friendlyName": ws.name,
                "description": "",
                "storageAccount": (
                    f"{rg_scope}/providers/Microsoft.Storage/storageAccounts/st{short}"
                ),
                "keyVault": f"{rg_scope}/providers/Microsoft.KeyVault/vaults/kv{short}",
                "applicationInsights": (
                    f"{rg_scope}/providers/Microsoft.Insights/components/ai{short}"
                ),
                "containerRegistry": None,
                "discoveryUrl": f"{self.url}{DISCOVERY_PATH}",
                "mlFlowTrackingUri": ws.mlflow_uri_v1,
                "provisioningState": "Succeeded",
                "creationTime": _iso(ws.created),
                "hbiWorkspace": False,
                "storageHbiWorkspace": False,
                "allowPublicAccessWhenBehindVnet": False,
                "publicNetworkAccess": "Enabled",
                "privateLinkCount": 0,
                "privateEndpointConnections": [],
                "sharedPrivateLinkResources": [],
                "v1LegacyMode": False,
                "enableDataIsolation": False,
                "tenantId": self.tenant_id,
                "systemDatastoresAuthMode": "AccessKey",
            },
        }

    def _registry_json(self, reg: AzureMLResource) -> dict[str, Any]:
        return {
            "id": reg.arm_id,
            "name": reg.name,
            "type": f"{PROVIDER}/registries",
            "location": reg.location,
            "kind": None,
            "tags": {},
            "identity": {"type": "SystemAssigned", "principalId": str(uuid.uuid5(
                uuid.NAMESPACE_URL, reg.arm_id)), "tenantId": self.tenant_id},
            "sku": {"name": "P3", "tier": "Standard"},
            "systemData": self._system_data(reg),
            "properties": {
                "discoveryUrl": f"{self.url}{DISCOVERY_PATH}",
                "intellectualPropertyPublisher": None,
                "managedResourceGroup": {
                    "resourceId": f"/subscriptions/{reg.subscription_id}/resourceGroups/"
                    f"azureml-rg-{reg.name}_{reg.resource_id}"
                },
                "mlFlowRegistryUri": reg.mlflow_uri_v1,
                "publicNetworkAccess": "Enabled",
                "regionDetails": [
                    {"location": reg.location, "storageAccountDetails": [], "acrDetails": []}
                ],
                "registryPrivateEndpointConnections": [],
            },
        }

    def _handle_discovery(self, req: _Request, _: re.Match[str] | None) -> _Response:
        # Anonymous in the real service too: it only tells clients which hosts to call.
        base = f"https://{req.host}" if req.host.endswith(AML_HOST_SUFFIX) else self.url
        services = (
            "api", "catalog", "experimentation", "gallery", "history", "hyperdrive",
            "labeling", "modelmanagement", "pipelines", "studio",
        )
        return _Response.json(200, {name: base for name in services})

    def _handle_registry_discovery(self, req: _Request, m: re.Match[str] | None) -> _Response:
        assert m is not None
        try:
            identity = self._verify_token(req.headers.get("Authorization"))
        except _Unauthenticated as exc:
            return self._unauthenticated("registry-discovery", exc)
        self._current_identity.name = identity.name
        reg = self._find_registry_by_name(m["name"])
        if reg is None:
            return self._aml_error(404, "NotFound", f"Registry {m['name']} not found.",
                                   inner="RegistryNotFound")
        if not reg.may_use(identity):
            return self._aml_error(403, "AuthorizationFailed",
                                   f"No access to registry {reg.name}.", inner="Forbidden")
        return _Response.json(
            200,
            {
                "registryName": reg.name,
                "tenantId": self.tenant_id,
                "primaryRegion": reg.location,
                "regions": [reg.location],
                "subscriptionId": reg.subscription_id,
                "resourceGroup": reg.resource_group,
                "workspaceName": None,
                "primaryRegionResourceProviderUri": f"{self.url}/",
            },
        )

    # -- handlers: model assets ------------------------------------------------------------------

    def _handle_arm_model_version(self, req: _Request, m: re.Match[str] | None) -> _Response:
        """A registered version as an Azure ML model asset. Like Azure ML, a version whose files
        hold an MLmodel at their root is an MLflow model (`mlflow_model`, with the flavors from
        MLmodel, deployable without code); any other is a `custom_model`."""
        assert m is not None
        if (bad := self._require_api_version(req)) is not None:
            return bad
        kind = m["kind"].lower()
        if kind == "registries":
            return self._registry_model_version(req, m)
        if req.method != "GET":
            return self._arm_error(405, "MethodNotAllowed",
                                   f"{req.method} on {kind} models is not emulated by the box.")
        found = self._authorize(req, "arm", kind, m["sub"], m["rg"], m["name"], "models/read")
        if isinstance(found, _Response):
            return found
        name, version = unquote(m["model"]), unquote(m["version"])
        mv = None
        if found.backend is not None:
            mv = self._backend_get(found.backend, "/api/2.0/mlflow/model-versions/get",
                                   {"name": name, "version": version})
        if mv is None:
            return self._arm_error(404, "ResourceNotFound",
                                   f"Model container {name} version {version} not found.")
        return _Response.json(200, self._model_version_json(found, mv["model_version"]))

    def _model_version_json(self, ws: AzureMLResource, mv: dict[str, Any]) -> dict[str, Any]:
        source = str(mv.get("source") or "")
        origin = container = prefix = None
        job = None
        if rm := _SOURCE_RUN_ARTIFACTS.search(source):
            origin, container, job = "ExperimentRun", f"dcid.{rm['run']}", rm["run"]
            prefix = (rm["rest"] or "").strip("/")
        elif lm := _SOURCE_LOCAL_UPLOAD.match(source):
            origin, container = "LocalUpload", lm["container"]
            prefix = (lm["rest"] or "").strip("/")
        mlmodel = None
        if origin is not None and container is not None:
            with ws.lock:
                store = ws.artifacts.get((origin, container), {})
                mlmodel = store.get(f"{prefix}/MLmodel" if prefix else "MLmodel")
        flavors: dict[str, Any] = {}
        if mlmodel is not None:
            import yaml

            document = yaml.safe_load(self.read_blob(ws, mlmodel.blob_name)) or {}
            for flavor, data in (document.get("flavors") or {}).items():
                flavors[flavor] = {"data": {
                    k: v if isinstance(v, str) else json.dumps(v)
                    for k, v in (data or {}).items()}}
        model_uri = (
            f"azureml://subscriptions/{ws.subscription_id}/resourcegroups/{ws.resource_group}"
            f"/workspaces/{ws.name}/datastores/{ARTIFACT_DATASTORE}/paths/"
            f"{origin}/{container}/{prefix}" if origin else source
        )
        created = datetime.fromtimestamp(int(mv.get("creation_timestamp") or 0) / 1000,
                                         tz=UTC)
        return {
            "id": f"{ws.arm_id}/models/{mv['name']}/versions/{mv['version']}",
            "name": str(mv["version"]),
            "type": f"{PROVIDER}/workspaces/models/versions",
            "systemData": {"createdAt": _iso(created), "createdBy": "amlpromote-tests",
                           "createdByType": "Application", "lastModifiedAt": _iso(created)},
            "properties": {
                "description": mv.get("description") or None,
                "tags": {t["key"]: t.get("value", "") for t in mv.get("tags") or []},
                "properties": {},
                "isArchived": False,
                "isAnonymous": False,
                "flavors": flavors,
                "modelType": "mlflow_model" if mlmodel is not None else "custom_model",
                "modelUri": model_uri,
                "jobName": job,
                "stage": "Development",
            },
        }
