"""The hand-written MLflow copy that the benchmarks compare amlpromote against.

What a user writes today with MLflow's own client (the Azure ML docs' "download and re-register"):
download the version's stored artifacts to a temp folder, create a LoggedModel in the target,
log the folder into it, finalize it and register it with create_model_version. No digest, no
verification, no idempotence. Run as a subprocess by copy.py so its time and memory are measured
like amlpromote's.

    python scripts/bench/mlflow_copy.py NAME/VERSION --source URI --target URI [--target-name N]
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ref", help="NAME/VERSION")
    parser.add_argument("--source", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--target-name")
    parser.add_argument("--artifact-location",
                        help="artifact root of the target experiment (sqlite targets)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    import mlflow
    from mlflow import MlflowClient

    name, version = args.ref.rsplit("/", 1)
    target_name = args.target_name or name
    source = MlflowClient(tracking_uri=args.source, registry_uri=args.source)
    target = MlflowClient(tracking_uri=args.target, registry_uri=args.target)

    # The version's stored files (its LoggedModel's artifact location), not models:/ (which
    # adds a registered_model_meta file).
    mv = source.get_model_version(name, version)
    if mv.model_id:
        artifact_uri = source.get_logged_model(mv.model_id).artifact_location
    else:
        artifact_uri = source.get_model_version_download_uri(name, version)

    scratch = tempfile.mkdtemp(prefix="mlflow-copy-")
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=scratch,
                                                    tracking_uri=args.source)
        experiment = target.get_experiment_by_name("mlflow-copy")
        experiment_id = (experiment.experiment_id if experiment is not None else
                         target.create_experiment("mlflow-copy",
                                                  artifact_location=args.artifact_location))
        logged = target.create_logged_model(experiment_id, name=f"{target_name}-v{version}")
        target.log_model_artifacts(logged.model_id, local)
        target.finalize_logged_model(logged.model_id, "READY")
        if not target.search_registered_models(f"name='{target_name}'"):
            target.create_registered_model(target_name)
        # A local registry store resolves models:/ through the global tracking URI.
        mlflow.set_tracking_uri(args.target)
        mlflow.set_registry_uri(args.target)
        created = target.create_model_version(target_name, f"models:/{logged.model_id}",
                                              model_id=logged.model_id)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps({"name": created.name, "version": created.version,
                      "seconds": round(time.perf_counter() - started, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
