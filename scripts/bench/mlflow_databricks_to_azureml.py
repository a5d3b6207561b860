"""The hand-written Databricks -> Azure ML promotion that copy.py compares amlpromote against.

What the docs tell a user to write, with MLflow and the azureml-mlflow plugin and nothing else:

1. Download the registered version from the Databricks workspace registry with
   `mlflow.artifacts.download_artifacts("models:/NAME/VERSION")` (MLflow docs, "mlflow.artifacts";
   the `databricks://PROFILE` registry URI reads ~/.databrickscfg).
2. Point MLflow at the workspace's `azureml://` tracking URI and register the local folder with
   `mlflow.register_model(f"file://{folder}", NAME)`: Azure ML docs, "Manage models registry in
   Azure Machine Learning with MLflow" (learn.microsoft.com/azure/machine-learning/
   how-to-manage-models-mlflow), section "Create models from an asset": "use the URI schema
   file://path/to/model to register MLflow models stored in the local file system".
   azureml-mlflow's registry store (AzureMLflowModelRegistry.create_model_version) then uploads
   the folder through the artifact service (LocalUpload, SAS blob PUTs) and creates the version
   with source `azureml://artifacts/LocalUpload/...`.

No digest, no verification, no idempotence, no provenance tags; authentication is whatever
azureml-mlflow picks (DefaultAzureCredential: the managed identity here). Run as a subprocess by
copy.py so its time and memory are measured like amlpromote's.

    python scripts/bench/mlflow_databricks_to_azureml.py NAME/VERSION --source databricks://P \
        --target azureml://... [--target-name N]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Keep this folder (which holds copy.py) from shadowing the standard library's `copy` module.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("ref", help="NAME/VERSION in the Databricks workspace registry")
    parser.add_argument("--source", required=True, help="databricks://PROFILE")
    parser.add_argument("--target", required=True, help="the workspace's azureml:// URI")
    parser.add_argument("--target-name")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    import mlflow

    name, version = args.ref.rsplit("/", 1)
    scratch = tempfile.mkdtemp(prefix="mlflow-dbx-aml-")
    try:
        # models:/ resolves through the registry URI.
        mlflow.set_registry_uri(args.source)
        local = mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=scratch)
        mlflow.set_tracking_uri(args.target)
        mlflow.set_registry_uri(args.target)
        created = mlflow.register_model(f"file://{local}", args.target_name or name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps({"name": created.name, "version": created.version,
                      "seconds": round(time.perf_counter() - started, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
