"""The Azure ML artifact service and run history service in the box, served from Azurite.

- azureml-mlflow, `create_model_version(source="file:///local/folder")`: the artifact service
  `POST /artifact/v2.0/.../workspaces/W/artifacts/LocalUpload/{container}/batch/metadata`
  (returns write SAS URIs), blob PUTs to those URIs, then the version is created with source
  `azureml://artifacts/LocalUpload/{container}/{folder name}`.
- Downloading that version: `GET .../artifacts/LocalUpload/{container}` (list) and
  `GET .../artifacts/LocalUpload/{container}/contentinfo?path=P` (read SAS URI), then blob GETs.
- Run artifacts (`client.log_artifacts`, `runs:/` and run-sourced versions): the MLflow API
  reports them in the workspace form (mlflow_api.py), which azureml-mlflow serves through the
  run history service:
  `POST /history/v1.0/.../workspaces/W/experiments/E/runs/R/artifacts/batch/metadata`,
  `GET .../runs/R/artifacts` (list), `GET .../runs/R/artifacts/contentinfo?path=P`.
  Blobs land at `ExperimentRun/dcid.R/<path>`, as in a real workspace.
"""

from __future__ import annotations

import http.client
import json
import re
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlencode

from .blobs import BlobStorage
from .model import (
    _LIST_PAGE_SIZE,
    ARTIFACT_DATASTORE,
    AzureMLResource,
    _Artifact,
    _iso,
    _now,
    _Request,
    _Response,
)


class ArtifactService(BlobStorage):
    """The artifact service (LocalUpload) and the run history service's artifacts."""

    def _artifact_json(self, art: _Artifact) -> dict[str, Any]:
        artifact_id = f"{art.origin}/{art.container}/{art.path}"
        return {
            "artifactId": artifact_id,
            "origin": art.origin,
            "container": art.container,
            "path": art.path,
            "etag": art.etag,
            "createdTime": _iso(art.created),
            "dataPath": {
                "dataStoreName": ARTIFACT_DATASTORE,
                "relativePath": art.blob_name,
                "sqlDataPath": None,
            },
            "tags": {},
        }

    def _content_json(self, ws: AzureMLResource, art: _Artifact, *, write: bool) -> dict[str, Any]:
        return {
            "contentUri": self._sas_url(ws.blob_container, art.blob_name, write=write),
            "origin": art.origin,
            "container": art.container,
            "path": art.path,
            "tags": {},
        }

    def _artifact_workspace(self, req: _Request, m: re.Match[str]) -> AzureMLResource | _Response:
        """The workspace both artifact services' paths name, if the caller may use it (a
        write needs runs/write) and the box has blob storage; else the error answer."""
        action = "experiments/runs/write" if req.method != "GET" else "experiments/runs/read"
        found = self._authorize(req, "artifact", "workspaces", m["sub"], m["rg"], m["name"],
                                action)
        if isinstance(found, _Response):
            return found
        if self.azurite is None:
            return self._aml_error(503, "ServiceUnavailable", "No blob storage in this box.")
        return found

    def _handle_artifact(self, req: _Request, m: re.Match[str] | None) -> _Response:
        assert m is not None
        found = self._artifact_workspace(req, m)
        if isinstance(found, _Response):
            return found
        parts = [unquote(p) for p in m["rest"].split("/")]
        if len(parts) < 2 or not all(parts[:2]):
            return self._aml_error(404, "NotFound", f"{req.method} {req.path} is not emulated.")
        return self._artifact_operation(found, parts[0], parts[1], parts[2:], req)

    def _artifact_operation(
        self, ws: AzureMLResource, origin: str, container: str, op: list[str], req: _Request
    ) -> _Response:
        # Both services share these operations under their container prefix:
        # .../batch/metadata             POST create empty artifacts -> write SAS URIs
        # ...                            GET  list (paged: continuationToken / nextLink)
        # .../path?path=                 GET  list under a path (paged)
        # .../contentinfo?path=          GET  read SAS URI of one artifact
        # .../metadata?path=             GET  metadata of one artifact
        # .../prefix/contentinfo?path=   GET  read SAS URIs under a prefix (paged)
        method = req.method
        if op == ["batch", "metadata"] and method == "POST":
            return self._artifacts_create(ws, origin, container, req)
        if op in ([], [""]) and method == "GET":
            return self._artifacts_list(ws, origin, container, req)
        if op == ["path"] and method == "GET":
            return self._artifacts_list(ws, origin, container, req)
        if op == ["contentinfo"] and method == "GET":
            return self._artifact_lookup(ws, origin, container, req, content=True)
        if op == ["metadata"] and method == "GET":
            return self._artifact_lookup(ws, origin, container, req, content=False)
        if op == ["prefix", "contentinfo"] and method == "GET":
            return self._artifacts_list(ws, origin, container, req, content=True)
        return self._aml_error(404, "NotFound", f"{method} {req.path} is not emulated.")

    def _handle_run_artifact(self, req: _Request, m: re.Match[str] | None) -> _Response:
        assert m is not None
        found = self._artifact_workspace(req, m)
        if isinstance(found, _Response):
            return found
        run_id = unquote(m["run"])
        # Strict where the service is silent: the run must exist in the experiment the path
        # names (RunArtifactsOperations has both routes: experiments/{experimentName} and
        # experimentids/{experimentId}); a wrong experiment is the run-not-found the history
        # service answers for an unknown run (azureml-mlflow raises it as RunNotFound).
        experiment = self._run_experiment(found, run_id)
        named = unquote(m["experiment"])
        # `experimentids/ID` names the experiment by id only. `experiments/X` takes its name,
        # and also the id: azureml-mlflow (get_run_info, RunArtifactsClient) puts whatever the
        # run's artifact URI holds in that segment, and the long form carries the id.
        by_id = m["by"].lower() == "experimentids"
        if experiment is None or named not in (experiment[:1] if by_id else experiment):
            return self._aml_error(404, "NotFound",
                                   f"Run {run_id} not found in experiment {named}.",
                                   inner="RunNotFound")
        op = [unquote(p) for p in (m["rest"] or "").strip("/").split("/") if p]
        # Where real workspaces keep run artifacts: ExperimentRun/dcid.<run id>/<path>.
        return self._artifact_operation(found, "ExperimentRun", f"dcid.{run_id}", op, req)

    def _run_experiment(self, ws: AzureMLResource, run_id: str) -> tuple[str, str] | None:
        """(experiment id, experiment name) of a run in the workspace's backend, or None.
        Cached: a run never changes experiment, and every file request asks."""
        cached = self._run_experiments.get((ws.arm_id, run_id))
        if cached is not None:
            return cached
        if ws.backend is None:
            return None
        run = self._backend_get(ws.backend, "/api/2.0/mlflow/runs/get", {"run_id": run_id})
        if run is None:
            return None
        exp_id = str(run["run"]["info"]["experiment_id"])
        exp = self._backend_get(ws.backend, "/api/2.0/mlflow/experiments/get",
                                {"experiment_id": exp_id})
        if exp is None:
            return None
        found = (exp_id, str(exp["experiment"]["name"]))
        self._run_experiments[(ws.arm_id, run_id)] = found
        return found

    def _run_exists(self, ws: AzureMLResource, run_id: str) -> bool:
        if ws.backend is None:
            return False
        conn = http.client.HTTPConnection(ws.backend.host, ws.backend.port, timeout=30)
        try:
            conn.request("GET", f"/api/2.0/mlflow/runs/get?{urlencode({'run_id': run_id})}")
            response = conn.getresponse()
            response.read()
            return response.status == 200
        finally:
            conn.close()

    def _artifacts_create(
        self, ws: AzureMLResource, origin: str, container: str, req: _Request
    ) -> _Response:
        try:
            paths = [p["path"] for p in json.loads(req.body or b"{}").get("paths", [])]
        except (ValueError, TypeError, KeyError, AttributeError):
            return self._aml_error(
                400, "BadRequest", 'Body must be {"paths": [{"path": ...}]}.'
            )
        artifacts: dict[str, Any] = {}
        contents: dict[str, Any] = {}
        with ws.lock:
            store = ws.artifacts.setdefault((origin, container), {})
            for path in paths:
                clean = path.strip("/")
                if not clean or ".." in clean.split("/"):
                    return self._aml_error(400, "BadRequest", f"Invalid artifact path {path!r}.")
                # Re-creating an existing path hands out a fresh write URI (overwrite), which
                # is what a retried upload needs.
                art = store.get(clean) or _Artifact(
                    origin=origin,
                    container=container,
                    path=clean,
                    blob_name=f"{origin}/{container}/{clean}",
                    created=_now(),
                    etag=uuid.uuid4().hex,
                )
                store[clean] = art
                artifacts[path] = self._artifact_json(art)
                contents[path] = self._content_json(ws, art, write=True)
        return _Response.json(
            200, {"artifacts": artifacts, "artifactContentInformation": contents, "errors": {}}
        )

    def _artifacts_list(
        self,
        ws: AzureMLResource,
        origin: str,
        container: str,
        req: _Request,
        *,
        content: bool = False,
    ) -> _Response:
        prefix = (req.query.get("path") or "").strip("/")
        with ws.lock:
            # A container nothing was written to lists as empty (a fresh run has no files).
            store = ws.artifacts.get((origin, container), {})
            items = sorted(
                (a for a in store.values()
                 if not prefix or a.path == prefix or a.path.startswith(prefix + "/")),
                key=lambda a: a.path,
            )
        start = int(req.query.get("continuationToken") or 0)
        size = int(req.query.get("pageSize") or _LIST_PAGE_SIZE)
        page = items[start:start + size]
        token = str(start + size) if start + size < len(items) else None
        next_link = None
        if token is not None:
            query = {k: v for k, v in req.query.items() if k != "continuationToken"}
            query["continuationToken"] = token
            next_link = f"https://{req.host}{req.raw_path}?{urlencode(query)}"
        render: Callable[[_Artifact], dict[str, Any]] = (
            (lambda a: self._content_json(ws, a, write=False)) if content else self._artifact_json
        )
        return _Response.json(
            200,
            {"value": [render(a) for a in page], "continuationToken": token, "nextLink": next_link},
        )

    def _artifact_lookup(
        self, ws: AzureMLResource, origin: str, container: str, req: _Request, *, content: bool
    ) -> _Response:
        path = (req.query.get("path") or "").strip("/")
        with ws.lock:
            art = ws.artifacts.get((origin, container), {}).get(path)
        if art is None:
            return self._aml_error(
                404, "NotFound", f"Artifact {origin}/{container}/{path} not found.",
                inner="ArtifactNotFound",
            )
        if content:
            return _Response.json(200, self._content_json(ws, art, write=False))
        return _Response.json(200, self._artifact_json(art))
