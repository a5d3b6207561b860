"""The mission's main path, end to end through the CLI: the heart classifier in a Databricks
workspace registry (Databricks in a box, reached through a real ~/.databrickscfg profile) promoted
into an Azure ML workspace (Azure ML in a box, named by its coordinates, the MLflow URI
discovered), then loaded back with plain `mlflow.pyfunc.load_model("models:/...")` against the
workspace's `azureml://` URI in a separate process, predicting what the source predicts.

Both boxes share one test CA, so one CA bundle trusts both; every process gets exactly the
environment a user would set (HOME with .databrickscfg, the box's documented Azure variables).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from azureml_box.testing import RESOURCE_GROUP, SUBSCRIPTION, WORKSPACE, BoxWorkspaces
from databricks_box import DatabricksBox
from support.mlflow_server import MlflowServer
from support.models import register_heart_model

if TYPE_CHECKING:
    import pandas as pd

pytest_plugins = ["azureml_box.fixtures"]
pytestmark = pytest.mark.timeout(300)

PROFILE = "dbx-e2e"

# Loads the promoted version from the workspace (the tracking URI comes from argv, the way a
# user's notebook sets it) and the source from Databricks, in one fresh interpreter.
PREDICT_BOTH = """
import json, sys
import numpy, pandas
import mlflow, mlflow.pyfunc
frame = pandas.read_pickle(sys.argv[3])
mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_registry_uri(sys.argv[1])
promoted = mlflow.pyfunc.load_model(sys.argv[2]).predict(frame)
mlflow.set_tracking_uri("databricks://" + sys.argv[5])
mlflow.set_registry_uri("databricks://" + sys.argv[5])
source = mlflow.pyfunc.load_model(sys.argv[4]).predict(frame)
print(json.dumps([numpy.asarray(promoted).tolist(), numpy.asarray(source).tolist()]))
"""


@pytest.fixture(scope="module")
def databricks(
    azureml_box: BoxWorkspaces, mlflow_server: MlflowServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[DatabricksBox]:
    root = tmp_path_factory.mktemp("dbx-e2e")
    with DatabricksBox(root, backend=mlflow_server, ca=azureml_box.box.ca) as box:
        yield box


@pytest.fixture(scope="module")
def heart(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    name = f"e2e-heart-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("e2e-cwd"))
        version = register_heart_model(mlflow_server.tracking_uri, name=name, alias="champion")
    return name, version


@pytest.fixture
def user_env(azureml_box: BoxWorkspaces, databricks: DatabricksBox, tmp_path: Path) \
        -> dict[str, str]:
    """A user's shell: HOME with a Databricks profile, the Azure environment, nothing else of
    ours."""
    home = tmp_path / "user-home"
    home.mkdir()
    databricks.write_databrickscfg(home, PROFILE)
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("AMLPROMOTE_", "MLFLOW_", "DATABRICKS_"))}
    env = azureml_box.box.client_env(base)
    env.update({"HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                "AMLPROMOTE_CONFIG": str(tmp_path / "config.toml"),
                "AMLPROMOTE_DATA_DIR": str(tmp_path / "data")})
    return env


def amlpromote(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "amlpromote", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=240, check=False)


def test_databricks_to_azureml_end_to_end(
    azureml_box: BoxWorkspaces, databricks: DatabricksBox, heart: tuple[str, str],
    user_env: dict[str, str], tmp_path: Path, heart_frame: pd.DataFrame,
) -> None:
    name, version = heart
    cwd = tmp_path / "e2e-cwd"
    cwd.mkdir()
    configured = amlpromote(user_env, cwd, "configure", "prod", "--source",
                            f"databricks://{PROFILE}", "--workspace", WORKSPACE,
                            "--resource-group", RESOURCE_GROUP, "--subscription", SUBSCRIPTION,
                            "--credential", "managed-identity", "--check", "-o", "json")
    assert configured.returncode == 0, configured.stderr
    checks = json.loads(configured.stdout)["checks"]
    assert [c["status"] for c in checks] == ["ok", "ok"]
    assert name in checks[0]["models"] or len(checks[0]["models"]) == 10

    copied = amlpromote(user_env, cwd, "copy-model", f"{name}/{version}", "--profile", "prod",
                        "--verify", "-o", "json")
    assert copied.returncode == 0, copied.stderr
    document = json.loads(copied.stdout)
    assert document["status"] == "copied"
    assert document["target"]["name"] == name
    target_uri = document["target"]["uri"]
    assert target_uri.startswith("azureml://") and f"workspaces/{WORKSPACE}" in target_uri
    promoted_version = document["target"]["version"]

    # The stored blobs are the source's bytes, file for file.
    source_files = databricks_files(databricks, name, version)
    assert "MLmodel" in source_files
    blobs = stored_blobs(azureml_box, source_files)
    assert blobs == source_files

    # Plain MLflow, in a separate process, against the azureml:// URI.
    frame_file = tmp_path / "frame.pkl"
    heart_frame.head(20).to_pickle(frame_file)
    workspace_uri = azureml_box.workspace.mlflow_uri
    predicted = subprocess.run(
        [sys.executable, "-c", PREDICT_BOTH, workspace_uri, f"models:/{name}/{promoted_version}",
         str(frame_file), f"models:/{name}/{version}", PROFILE],
        env=user_env, cwd=cwd, capture_output=True, text=True, timeout=240, check=False)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    promoted, source = json.loads(predicted.stdout.strip().splitlines()[-1])
    assert promoted == source and len(promoted) == 20

    # A re-run changes nothing.
    again = amlpromote(user_env, cwd, "copy-model", f"{name}/{version}", "--profile", "prod",
                       "-o", "json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["status"] == "unchanged"
    assert json.loads(again.stdout)["target"]["version"] == promoted_version
    for secret in (user_env["IDENTITY_HEADER"], databricks.token):
        assert secret not in copied.stdout + copied.stderr + again.stdout + again.stderr
    assert not list(cwd.iterdir()), "nothing written to the working directory"


def databricks_files(databricks: DatabricksBox, name: str, version: str) -> dict[str, str]:
    """sha256 per file of the version as its backing server stores it."""
    from urllib.parse import urlsplit

    from mlflow import MlflowClient

    backend: Any = databricks.backend
    client = MlflowClient(backend.tracking_uri, backend.tracking_uri)
    location = client.get_model_version_download_uri(name, version)
    folder = backend.artifacts_dir / urlsplit(location).path.lstrip("/")
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def stored_blobs(azureml_box: BoxWorkspaces, expected: dict[str, str]) -> dict[str, str]:
    """sha256 per file of the newest upload in the workspace's blob container that holds the
    expected file names (the run folder the promotion staged into)."""
    box, workspace = azureml_box.box, azureml_box.workspace
    names = box.blob_names(workspace)
    mlmodels = [n for n in names if n.endswith("/MLmodel")]
    found: dict[str, str] = {}
    for mlmodel in mlmodels:
        prefix = mlmodel[: -len("MLmodel")]
        candidate = {n[len(prefix):]: n for n in names if n.startswith(prefix)}
        if set(candidate) == set(expected):
            found = {rel: hashlib.sha256(box.read_blob(workspace, blob)).hexdigest()
                     for rel, blob in candidate.items()}
            if found == expected:
                return found
    return found
