"""Azure ML registry model versions in the box, through ARM.

Routes: azure-rest-api-specs machinelearningservices RegistryModelVersions /
RegistryDataReferences; also under azure-ai-ml's registry "management front end" prefix
`/mferp/managementfrontend`, which `MLClient(registry_name=...).models.get` calls.

- `POST .../registries/R/models/N/versions/V/startPendingUpload` hands out a SAS of a fresh
  temporary container in Azurite, for version V only (its SAS writes and reads blobs, cannot
  list or delete);
- `PUT .../versions/V` creates the version as a long-running operation (201 +
  `Azure-AsyncOperation`, InProgress for REGISTRY_LRO_SECONDS), 400 when `modelUri` holds no
  files (or an `mlflow_model` no MLmodel) or is another version's pending upload, 409 when an
  existing version's asset path would change; `DELETE` is a long-running operation too (202 +
  `Location`);
- `GET .../versions` lists active versions, or per `listViewType` archived ones / all (404 for
  a model without versions), `GET .../registries/R/models` lists the models that have a version
  (RegistryModelContainers);
- `POST .../registries/R/datareferences/N/versions/V` gives a read SAS of a version's files.

A registry's versions live in the box, not in its MLflow backend. A registry can be made less
convenient per test: `copy_on_register` (the registration moves the files and rewrites
`modelUri`), `data_reference_credential = "NoCredentials"`, `delete_outcome = "Failed"`.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

from .artifacts import ArtifactService
from .azurite import ACCOUNT_NAME
from .limits import registry_tag_problem
from .model import (
    _LIST_PAGE_SIZE,
    AML_HOST_SUFFIX,
    BLOB_HOST_SUFFIX,
    PROVIDER,
    AzureMLResource,
    _iso,
    _now,
    _PendingUpload,
    _RegistryDeletion,
    _RegistryVersion,
    _Request,
    _Response,
)
from .token import _Unauthenticated

# How long creating a registry model version stays "InProgress" (a long-running operation).
REGISTRY_LRO_SECONDS = 0.3


class RegistryService(ArtifactService):
    """Registry model versions, their pending uploads, data references and operations."""

    def _registry_scope(self, req: _Request, m: re.Match[str], action: str) \
            -> AzureMLResource | _Response:
        if (bad := self._require_api_version(req)) is not None:
            return bad
        if m["kind"].lower() != "registries":
            return self._arm_error(405, "MethodNotAllowed",
                                   f"{req.method} {req.path} is emulated for registries only.")
        return self._authorize(req, "arm", "registries", m["sub"], m["rg"], m["name"], action)

    def _registry_model_version(self, req: _Request, m: re.Match[str]) -> _Response:
        """GET, PUT (a long-running create: 201 + Azure-AsyncOperation) and DELETE (a
        long-running delete: 202 + Location) of one registry model version. Like Azure ML: a
        version's files must be in place when it is created (an `mlflow_model` needs MLmodel at
        the root of `modelUri`), in the pending upload handed out for that very version, and an
        existing version's asset path cannot change (409)."""
        action = {"GET": "read", "PUT": "write", "DELETE": "delete"}.get(req.method)
        if action is None:
            return self._arm_error(405, "MethodNotAllowed", f"{req.method} is not allowed.")
        found = self._registry_scope(req, m, f"models/versions/{action}")
        if isinstance(found, _Response):
            return found
        key = (unquote(m["model"]), unquote(m["version"]))
        if req.method == "GET":
            with found.lock:
                record = found.model_versions.get(key)
            if record is None:
                return self._arm_error(404, "ResourceNotFound",
                                       f"Model {key[0]} version {key[1]} not found in registry "
                                       f"{found.name}.")
            return _Response.json(200, self._registry_version_json(found, record))
        if req.method == "DELETE":
            return self._registry_delete(req, found, key)
        try:
            body = json.loads(req.body or b"{}")
            properties = dict(body["properties"])
        except (ValueError, TypeError, KeyError):
            return self._arm_error(400, "UserError", "Body must be {\"properties\": {...}}.")
        problem = registry_tag_problem(properties) or self._check_model_uri(found, key, properties)
        if problem is not None:
            return self._arm_error(400, "UserError", problem)
        with found.lock:
            existing = found.model_versions.get(key)
            if existing is not None:
                # The asset path is where the registry keeps the files, or what the creating
                # PUT named (a client repeating its PUT names its pending upload again).
                if properties.get("modelUri") not in (existing.properties.get("modelUri"),
                                                      existing.submitted_uri):
                    return self._arm_error(409, "UserError", "Asset paths cannot be updated.")
                for field_name in ("description", "tags", "properties", "stage", "isArchived"):
                    if field_name in properties:
                        existing.properties[field_name] = properties[field_name]
                return _Response.json(200, self._registry_version_json(found, existing))
            submitted = str(properties.get("modelUri") or "")
            record = _RegistryVersion(key[0], key[1], properties, _now(),
                                      time.monotonic() + REGISTRY_LRO_SECONDS, uuid.uuid4().hex,
                                      submitted_uri=submitted)
            found.model_versions[key] = record
        if found.copy_on_register:
            # Azure ML does not promise that a registered version keeps its files where the
            # client staged them: azure-ai-ml reads a registry version's files from its
            # `path` as GET answers it (ModelOperations.download, get_storage_details_for_
            # registry_assets), never from the pending upload. Strict: the registry copies them
            # into its own storage and `modelUri` names the copy.
            record.properties["modelUri"] = self._copy_into_registry(found, key, submitted)
        base = f"https://{req.host}" if req.host.endswith(AML_HOST_SUFFIX) else self.url
        status_url = base + (
            f"/subscriptions/{found.subscription_id}/providers/{PROVIDER}/locations/"
            f"{found.location}/mfeOperationsStatus/{record.operation}?api-version="
            f"{req.query['api-version']}")
        return _Response.json(201, self._registry_version_json(found, record),
                              {"Azure-AsyncOperation": status_url,
                               "x-ms-async-operation-timeout": "PT1H"})

    def _check_model_uri(self, reg: AzureMLResource, key: tuple[str, str],
                         properties: dict[str, Any]) -> str | None:
        """Why a new version's `modelUri` is not acceptable, if it is not (an existing
        version's PUT is judged against its asset path instead).

        A pending upload is per version: the route is `.../models/{name}/versions/{version}/
        startPendingUpload` (azure-rest-api-specs, RegistryModelVersions_
        CreateOrGetStartPendingUpload), and azure-ai-ml asks one for the version it then creates
        (`_check_and_upload_path` -> `get_sas_uri_for_registry_asset` with that name and
        version). Whether the service accepts another version's container is not documented;
        strict: it does not (400, not a conflict)."""
        with reg.lock:
            if key in reg.model_versions:
                return None
            handed_out = {u.container: u for u in reg.pending_uploads.values()}
        uri = str(properties.get("modelUri") or "")
        parts = urlsplit(uri)
        segments = [unquote(p) for p in parts.path.split("/") if p]
        if not parts.netloc.endswith(BLOB_HOST_SUFFIX) or not segments \
                or segments[0] not in handed_out:
            return (f"modelUri {uri!r} is not a location this registry handed out "
                    "(startPendingUpload).")
        upload = handed_out[segments[0]]
        if (upload.name, upload.version) != key:
            return (f"modelUri {uri!r} is the pending upload of model {upload.name} version "
                    f"{upload.version}; model {key[0]} version {key[1]} must be uploaded to "
                    "its own (startPendingUpload of that version).")
        folder = "/".join(segments[1:])
        names = self.container_blob_names(segments[0], f"{folder}/" if folder else None)
        if not names:
            return f"No files found at modelUri {uri!r}."
        model_type = properties.get("modelType") or "custom_model"
        if model_type == "mlflow_model" and f"{folder}/MLmodel".lstrip("/") not in names:
            return "An mlflow_model needs an MLmodel file at the root of its modelUri."
        return None

    def _registry_version_json(self, reg: AzureMLResource, record: _RegistryVersion) \
            -> dict[str, Any]:
        created = _iso(record.created)
        properties = {
            "description": None, "tags": {}, "properties": {}, "isArchived": False,
            "isAnonymous": False, "flavors": None, "modelType": "custom_model",
            "modelUri": None, "jobName": None, "stage": None,
            **record.properties,
            "provisioningState": record.state,
        }
        return {
            # Registry assets are identified by their asset id, not an ARM path (azure-ai-ml's
            # AMLVersionedArmId accepts nothing else for a registry version).
            "id": f"azureml://registries/{reg.name}/models/{record.name}/versions/"
                  f"{record.version}",
            "name": record.version,
            "type": f"{PROVIDER}/registries/models/versions",
            "systemData": {"createdAt": created, "createdBy": "amlpromote-tests",
                           "createdByType": "Application", "lastModifiedAt": created},
            "properties": properties,
        }

    def _handle_registry_model_versions(self, req: _Request, m: re.Match[str] | None) \
            -> _Response:
        """List one model's versions, paged (`$skip` in `nextLink`); 404 for a model that has
        no version. `listViewType` (RegistryModelVersions_List; ListViewType: ActiveOnly,
        ArchivedOnly, All) picks archived or active versions; without it only active ones are
        listed, as for every Azure ML asset list (azure-ai-ml's `models.list` sends ActiveOnly
        unless asked for archived ones)."""
        assert m is not None
        if req.method != "GET":
            return self._arm_error(405, "MethodNotAllowed", f"{req.method} is not allowed.")
        found = self._registry_scope(req, m, "models/versions/read")
        if isinstance(found, _Response):
            return found
        name = unquote(m["model"])
        views = {"activeonly": (False,), "archivedonly": (True,), "all": (False, True)}
        view = views.get(str(req.query.get("listViewType") or "ActiveOnly").lower())
        if view is None:
            return self._arm_error(400, "UserError",
                                   f"listViewType {req.query['listViewType']!r} is not one of "
                                   "ActiveOnly, ArchivedOnly, All.")
        with found.lock:
            every = [r for (n, _), r in found.model_versions.items() if n == name]
        if not every:
            return self._arm_error(404, "ResourceNotFound",
                                   f"Model container {name} not found in registry {found.name}.")
        records = [r for r in every if bool(r.properties.get("isArchived")) in view]
        records.sort(key=lambda r: (0, int(r.version)) if r.version.isdigit() else (1, 0))
        start = int(req.query.get("$skip") or 0)
        size = int(req.query.get("$top") or _LIST_PAGE_SIZE)
        page = records[start:start + size]
        next_link = None
        if start + size < len(records):
            query = {k: v for k, v in req.query.items() if k != "$skip"}
            query["$skip"] = str(start + size)
            next_link = f"{self.url}{req.raw_path}?{urlencode(query)}"
        return _Response.json(200, {"value": [self._registry_version_json(found, r)
                                              for r in page], "nextLink": next_link})

    def _handle_registry_model_containers(self, req: _Request, m: re.Match[str] | None) \
            -> _Response:
        """List a registry's models (one container per model with a version), paged by
        `$skip` in `nextLink` like the versions list; `$top` sets the page size."""
        assert m is not None
        if req.method != "GET":
            return self._arm_error(405, "MethodNotAllowed", f"{req.method} is not allowed.")
        found = self._registry_scope(req, m, "models/read")
        if isinstance(found, _Response):
            return found
        with found.lock:
            by_name: dict[str, list[_RegistryVersion]] = {}
            for (name, _), record in found.model_versions.items():
                by_name.setdefault(name, []).append(record)
        names = sorted(by_name)
        start = int(req.query.get("$skip") or 0)
        size = int(req.query.get("$top") or _LIST_PAGE_SIZE)
        next_link = None
        if start + size < len(names):
            query = {k: v for k, v in req.query.items() if k != "$skip"}
            query["$skip"] = str(start + size)
            next_link = f"{self.url}{req.raw_path}?{urlencode(query)}"
        value = []
        for name in names[start:start + size]:
            numbers = [int(r.version) for r in by_name[name] if r.version.isdigit()]
            created = _iso(min(r.created for r in by_name[name]))
            value.append({
                "id": f"{found.arm_id}/models/{name}",
                "name": name,
                "type": f"{PROVIDER}/registries/models",
                "systemData": {"createdAt": created, "createdBy": "amlpromote-tests",
                               "createdByType": "Application", "lastModifiedAt": created},
                "properties": {"description": None, "tags": {}, "properties": {},
                               "isArchived": False,
                               "latestVersion": str(max(numbers)) if numbers else None,
                               "nextVersion": str(max(numbers, default=0) + 1),
                               "provisioningState": "Succeeded"},
            })
        return _Response.json(200, {"value": value, "nextLink": next_link})

    def _handle_arm_operation(self, req: _Request, m: re.Match[str] | None) -> _Response:
        assert m is not None
        try:
            identity = self._verify_token(req.headers.get("Authorization"))
        except _Unauthenticated as exc:
            return self._unauthenticated("arm", exc)
        self._current_identity.name = identity.name
        if m["monitor"].lower() == "mfeoperationresults":
            return self._registry_deletion_result(req, m)
        for reg in self.resources():
            with reg.lock:
                record = next((r for r in reg.model_versions.values()
                               if r.operation == m["op"]), None)
            if record is not None and reg.subscription_id.lower() == m["sub"].lower():
                done = record.state == "Succeeded"
                return _Response.json(200, {
                    "id": req.path, "name": m["op"],
                    "status": "Succeeded" if done else "InProgress",
                    "startTime": _iso(record.created),
                    **({"endTime": _iso(_now())} if done else {}),
                })
        return self._arm_error(404, "ResourceNotFound", f"Operation {m['op']} not found.")

    def _handle_registry_pending_upload(self, req: _Request, m: re.Match[str] | None) \
            -> _Response:
        """A temporary blob container and a SAS to write it (createOrGet: the same
        `pendingUploadId` gets the same container again)."""
        assert m is not None
        if req.method != "POST":
            return self._arm_error(405, "MethodNotAllowed", f"{req.method} is not allowed.")
        found = self._registry_scope(req, m, "models/versions/write")
        if isinstance(found, _Response):
            return found
        if self.azurite is None:
            return self._arm_error(503, "ServiceUnavailable", "No blob storage in this box.")
        try:
            body = json.loads(req.body or b"{}")
        except ValueError:
            return self._arm_error(400, "UserError", "Body must be JSON.")
        kind = body.get("pendingUploadType") or "TemporaryBlobReference"
        if kind != "TemporaryBlobReference":
            return self._arm_error(400, "UserError", f"pendingUploadType {kind!r} is not "
                                                     "supported.")
        upload_id = str(body.get("pendingUploadId") or uuid.uuid4())
        key = (unquote(m["model"]), unquote(m["version"]))
        with found.lock:
            upload = found.pending_uploads.get(upload_id)
            if upload is not None and (upload.name, upload.version) != key:
                return self._arm_error(400, "UserError",
                                       f"Pending upload {upload_id} belongs to model "
                                       f"{upload.name} version {upload.version}.")
            if upload is None:
                upload = _PendingUpload(f"pending-{uuid.uuid4().hex}", *key)
                found.pending_uploads[upload_id] = upload
                self._blob_service_client().create_container(upload.container)
            container = upload.container
        blob_uri = f"https://{ACCOUNT_NAME}{BLOB_HOST_SUFFIX}/{container}"
        return _Response.json(200, {
            "blobReferenceForConsumption": {
                "blobUri": blob_uri,
                "storageAccountArmId": self._storage_arm_id(found),
                "credential": {"credentialType": "SAS",
                               "sasUri": f"{blob_uri}?{self._container_sas(container, True)}"},
            },
            "pendingUploadId": upload_id,
            "pendingUploadType": "TemporaryBlobReference",
        })

    def _handle_registry_data_reference(self, req: _Request, m: re.Match[str] | None) \
            -> _Response:
        """A read SAS for the files of a registered version (`blobUri` = its modelUri), or,
        with `data_reference_credential = "NoCredentials"`, no credential at all.

        NoCredentials is the spec's own example answer of RegistryDataReferences_
        GetBlobReferenceSAS; its credential type is `AnonymousAccessCredential` ("Access
        credential with no credentials", azure-ai-ml's generated arm_ml_service models), and
        azure-ai-ml then reads `blobUri`'s container with no credential at all
        (ModelOperations.download: `get_storage_client(credential=None, ...)`, which lists and
        downloads). So the container allows anonymous read and list; nothing else does, and
        the answer carries no `sasUri`."""
        assert m is not None
        if req.method != "POST":
            return self._arm_error(405, "MethodNotAllowed", f"{req.method} is not allowed.")
        found = self._registry_scope(req, m, "models/versions/read")
        if isinstance(found, _Response):
            return found
        try:
            blob_uri = str(json.loads(req.body or b"{}").get("blobUri") or "")
        except (ValueError, AttributeError):
            return self._arm_error(400, "UserError", "Body must be JSON.")
        key = (unquote(m["model"]), unquote(m["version"]))
        with found.lock:
            record = found.model_versions.get(key)
        if record is None:
            return self._arm_error(404, "ResourceNotFound",
                                   f"Model {key[0]} version {key[1]} not found.")
        model_uri = str(record.properties.get("modelUri") or "")
        if blob_uri.rstrip("/") != model_uri.rstrip("/"):
            return self._arm_error(400, "UserError", "blobUri is not the asset's location.")
        container = unquote(urlsplit(model_uri).path.split("/")[1])
        if found.data_reference_credential == "NoCredentials":
            self._blob_service_client().get_container_client(container) \
                .set_container_access_policy(signed_identifiers={}, public_access="container")
            credential: dict[str, str] = {"credentialType": "NoCredentials"}
        else:
            credential = {"credentialType": "SAS",
                          "sasUri": f"{model_uri}?{self._container_sas(container, False)}"}
        return _Response.json(200, {
            "blobReferenceForConsumption": {
                "blobUri": model_uri,
                "storageAccountArmId": self._storage_arm_id(found),
                "credential": credential,
            },
        })

    @staticmethod
    def _storage_arm_id(reg: AzureMLResource) -> str:
        return (f"/subscriptions/{reg.subscription_id}/resourceGroups/azureml-rg-{reg.name}"
                f"/providers/Microsoft.Storage/storageAccounts/{ACCOUNT_NAME}")

    def _registry_delete(self, req: _Request, reg: AzureMLResource,
                         key: tuple[str, str]) -> _Response:
        """DELETE of a registry model version: 202 + Location (+ x-ms-async-operation-timeout),
        as the spec's RegistryModelVersions_Delete example answers (200 and 204 are allowed
        too; the strictest is the long-running one). The Location URL answers 202 while the
        deletion runs, then 204 (ARM's async-operations contract for DELETE). With
        `delete_outcome = "Failed"` the operation fails: the version stays and the Location URL
        answers the error document with a 4xx status, as ARM does for a failed operation
        (azure-core's LocationPolling treats any status but 200/201/202/204 as a failure)."""
        with reg.lock:
            if key not in reg.model_versions:
                return _Response(204)
            operation = uuid.uuid4().hex
            reg.deletions[operation] = _RegistryDeletion(
                key[0], key[1], time.monotonic() + REGISTRY_LRO_SECONDS, reg.delete_outcome)
            if reg.delete_outcome != "Failed":
                del reg.model_versions[key]
        return _Response(202, headers={"Location": self._operation_url(req, reg, operation,
                                                                       "mfeOperationResults"),
                                       "x-ms-async-operation-timeout": "PT1H"})

    def _operation_url(self, req: _Request, reg: AzureMLResource, operation: str,
                       monitor: str) -> str:
        base = f"https://{req.host}" if req.host.endswith(AML_HOST_SUFFIX) else self.url
        return base + (f"/subscriptions/{reg.subscription_id}/providers/{PROVIDER}/locations/"
                       f"{reg.location}/{monitor}/{operation}?api-version="
                       f"{req.query['api-version']}")

    def _registry_deletion_result(self, req: _Request, m: re.Match[str]) -> _Response:
        for reg in self.resources():
            with reg.lock:
                deletion = reg.deletions.get(m["op"])
            if deletion is None or reg.subscription_id.lower() != m["sub"].lower():
                continue
            if time.monotonic() < deletion.ready_at:
                return _Response(202, headers={"Location": self._operation_url(
                    req, reg, m["op"], "mfeOperationResults")})
            if deletion.outcome == "Failed":
                return self._arm_error(
                    400, "UserError",
                    f"Deleting model {deletion.name} version {deletion.version} failed: the "
                    "registry could not remove the version's replicas.")
            return _Response(204)
        return self._arm_error(404, "ResourceNotFound", f"Operation {m['op']} not found.")

    def _copy_into_registry(self, reg: AzureMLResource, key: tuple[str, str],
                            model_uri: str) -> str:
        """Copy a version's staged files into the registry's own container; the copy's URL."""
        files = self.model_uri_files(model_uri)
        folder = f"models/{key[0]}/versions/{key[1]}"
        client = self._blob_service_client().get_container_client(reg.blob_container)
        for rel, data in files.items():
            client.upload_blob(f"{folder}/{rel}", data, overwrite=True)
        return (f"https://{ACCOUNT_NAME}{BLOB_HOST_SUFFIX}/{reg.blob_container}/"
                f"{quote(folder)}")

    # -- registry state, for assertions and for what other clients do ---------------------------

    def add_registry_version(self, registry: AzureMLResource, name: str, version: str,
                             files: dict[str, bytes], *, tags: dict[str, str] | None = None,
                             archived: bool = False) -> dict[str, Any]:
        """A version registered (already Succeeded) by another client: its files in a pending
        upload of its own, as if that client had staged them there."""
        container = f"pending-{uuid.uuid4().hex}"
        with registry.lock:
            registry.pending_uploads[uuid.uuid4().hex] = _PendingUpload(container, name, version)
        client = self._blob_service_client().create_container(container)
        for rel, data in files.items():
            client.upload_blob(f"model/{rel}", data)
        model_uri = f"https://{ACCOUNT_NAME}{BLOB_HOST_SUFFIX}/{container}/model"
        record = _RegistryVersion(
            name, version, {"modelType": "mlflow_model", "modelUri": model_uri,
                            "tags": dict(tags or {}), "isArchived": archived},
            _now(), 0.0, uuid.uuid4().hex, submitted_uri=model_uri)
        with registry.lock:
            if (name, version) in registry.model_versions:
                raise ValueError(f"{name} version {version} exists")
            registry.model_versions[(name, version)] = record
        return self._registry_version_json(registry, record)

    def set_registry_version_archived(self, registry: AzureMLResource, name: str, version: str,
                                      archived: bool = True) -> None:
        """Archive (or restore) a version, as `az ml model archive --registry-name` does."""
        with registry.lock:
            registry.model_versions[(name, version)].properties["isArchived"] = archived

    def registry_versions(self, registry: AzureMLResource, name: str) -> list[dict[str, Any]]:
        """A registry model's versions as GET answers them, by version number."""
        with registry.lock:
            records = [r for (n, _), r in registry.model_versions.items() if n == name]
        records.sort(key=lambda r: int(r.version) if r.version.isdigit() else 0)
        return [self._registry_version_json(registry, r) for r in records]
