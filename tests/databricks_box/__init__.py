"""Databricks in a box: the workspace model registry as mlflow's `databricks://` client sees it.

An HTTPS server on loopback, with its own test CA, that authenticates Databricks personal access
tokens and serves what mlflow 3.x calls for the *workspace* (non-Unity-Catalog) registry:

- the MLflow REST API under `/api/2.0/mlflow/` (and `/api/2.0/preview/mlflow/`), forwarded to a
  real `mlflow server`;
- `model-versions/get-download-uri`, answered the Databricks way
  (`dbfs:/databricks/mlflow-registry/<id>/models/<artifact_path>`);
- `model-versions/list-artifacts` and `model-versions/get-signed-download-uri` plus the signed
  URLs they hand out (what `DatabricksModelsArtifactRepository` uses for `models:/` downloads);
- a read-only DBFS view of `/databricks/mlflow-registry/...` (`/api/2.0/dbfs/get-status`,
  `/api/2.0/dbfs/list`, `GET /dbfs/...`: what `DbfsRestArtifactRepository` uses for the download
  URI);
- `/.well-known/databricks-config`, which databricks-sdk probes whenever it builds a client.

    with DatabricksBox(tmp_path / "dbx", backend=mlflow_server) as box:
        box.write_databrickscfg(home, "dev")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(box.ca_bundle))
        MlflowClient("databricks://dev", "databricks://dev").get_registered_model(name)
"""

from __future__ import annotations

from .server import DatabricksBox, RecordedRequest, is_loopback

__all__ = ["DatabricksBox", "RecordedRequest", "is_loopback"]
