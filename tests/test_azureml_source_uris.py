"""An Azure ML workspace as the source, whatever `azureml://` form it names its files in.

Runs inside Azure ML jobs report `azureml://experiments/NAME/runs/R/artifacts`, and a model
version can name its files as a path in the workspace artifact store
(`azureml://[subscriptions/S/resourcegroups/RG/workspaces/W/]datastores/workspaceartifactstore/
paths/ExperimentRun/dcid.R/...`). The box reports each form (`artifact_uri_form`, see
ARTIFACT_URI_FORMS in azureml_box/model.py); the source model is logged with the real
azureml-mlflow plugin against the short form, promoted into a local sqlite registry through the
CLI and compared file by file. A table runs accepted and refused URIs through `artifact_folder`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azureml_box import AzureMLResource
from azureml_box.testing import (
    RESOURCE_GROUP,
    SUBSCRIPTION,
    BoxWorkspaces,
    assert_no_secrets,
    mlflow_global_uris,
)
from support.cli import cli
from support.models import sha256_tree, stored_folder

from amlpromote.core.azure.connection import AzureMlConnection, AzureMlScope, make_credential
from amlpromote.core.errors import EXIT_FAILED, EXIT_USAGE, AmlPromoteError
from amlpromote.core.storage.azure_blob import artifact_folder

pytest_plugins = ["azureml_box.fixtures"]
pytestmark = pytest.mark.timeout(300)

JOBS_WORKSPACE = "ws-box-jobs"
OTHER_WORKSPACE = "ws-box-elsewhere"
MODEL = "job-model"
EXPERIMENT = "nightly-training"
FILES: dict[str, bytes] = {
    "MLmodel": b"flavors:\n  python_function:\n    loader_module: model\n",
    "data/weights.bin": os.urandom(1024 * 1024 + 17),
    "data/empty.txt": b"",
    "conda.yaml": b"dependencies: []\n",
}


@dataclass(frozen=True)
class JobModel:
    workspace: AzureMLResource
    folder: Path  # the files as logged
    run_id: str
    experiment_id: str


@pytest.fixture(scope="module")
def job_model(azureml_box: BoxWorkspaces, tmp_path_factory: pytest.TempPathFactory) -> JobModel:
    """A workspace of its own (its own `mlflow server`: nothing else lists its models) whose
    run reports the short form, with a model logged there by azureml-mlflow and registered from
    the run, as a training job does it."""
    from mlflow import MlflowClient

    box = azureml_box.box
    workspace = box.workspace(SUBSCRIPTION, RESOURCE_GROUP, JOBS_WORKSPACE,
                              artifact_uri_form="short")
    root = tmp_path_factory.mktemp("job-model")
    folder = root / "model"
    for rel, data in FILES.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    with pytest.MonkeyPatch.context() as patch:
        for key in box.ENV_TO_REMOVE:
            patch.delenv(key, raising=False)
        for key, value in box.env().items():
            patch.setenv(key, value)
        patch.setenv("HOME", str(root / "home"))
        client = MlflowClient(tracking_uri=workspace.mlflow_uri, registry_uri=workspace.mlflow_uri)
        experiment_id = client.create_experiment(EXPERIMENT)
        run = client.create_run(experiment_id)
        run_id = run.info.run_id
        # What `mlflow.get_artifact_uri()` says inside a job (mlflow/mlflow#7806).
        assert run.info.artifact_uri == f"azureml://experiments/{EXPERIMENT}/runs/{run_id}/artifacts"
        # azureml-mlflow reads the short form against its global tracking workspace.
        with mlflow_global_uris(workspace.mlflow_uri):
            client.log_artifacts(run_id, str(folder), "model")
            client.create_registered_model(MODEL)
            version = client.create_model_version(MODEL, f"{run.info.artifact_uri}/model",
                                                  run_id=run_id)
        assert version.version == "1"
    assert sorted(box.blob_names(workspace, prefix=f"ExperimentRun/dcid.{run_id}/model/")) == \
        sorted(f"ExperimentRun/dcid.{run_id}/model/{rel}" for rel in FILES)
    return JobModel(workspace, folder, run_id, experiment_id)


@pytest.fixture
def jobs_workspace(job_model: JobModel, box_env: dict[str, str]) -> Iterator[AzureMLResource]:
    workspace = job_model.workspace
    try:
        yield workspace
    finally:
        workspace.artifact_uri_form = "short"


def reported_download_uri(workspace: AzureMLResource, name: str, version: str = "1") -> str:
    """The version's files as the workspace's MLflow API names them (plain MLflow client)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=workspace.mlflow_uri, registry_uri=workspace.mlflow_uri)
    return str(client.get_model_version_download_uri(name, version))


# -- promotion from each form, byte for byte ------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "reported", "service"),
    [
        ("short", f"azureml://experiments/{EXPERIMENT}/runs/{{run}}/artifacts/model",
         f"/history/v1.0/{{scope}}/experiments/{EXPERIMENT}/runs/{{run}}/artifacts/"),
        ("datastore",
         f"azureml://subscriptions/{SUBSCRIPTION}/resourcegroups/{RESOURCE_GROUP}/workspaces/"
         f"{JOBS_WORKSPACE}/datastores/workspaceartifactstore/paths/ExperimentRun/dcid.{{run}}/model",
         "/artifact/v2.0/{scope}/artifacts/ExperimentRun/dcid.{run}/"),
        ("datastore-short",
         "azureml://datastores/workspaceartifactstore/paths/ExperimentRun/dcid.{run}/model",
         "/artifact/v2.0/{scope}/artifacts/ExperimentRun/dcid.{run}/"),
    ],
    ids=["short", "datastore", "datastore-short"],
)
def test_a_job_model_is_promoted_byte_for_byte_from_the_form_its_workspace_reports(
    azureml_box: BoxWorkspaces, jobs_workspace: AzureMLResource, job_model: JobModel,
    box_env: dict[str, str], tmp_path: Path, form: str, reported: str, service: str,
) -> None:
    jobs_workspace.artifact_uri_form = form
    assert reported_download_uri(jobs_workspace, MODEL) == reported.format(run=job_model.run_id)
    azureml_box.box.clear_requests()
    target = f"sqlite:///{tmp_path / 'target' / 'mlflow.db'}"
    (tmp_path / "target").mkdir()

    run = cli("copy-model", f"{MODEL}/1", "--source", jobs_workspace.mlflow_uri,
              "--target", target, "--target-name", "promoted", "-o", "json")

    assert run.code == 0, run.both
    assert run.document["status"] == "copied", run.document
    assert sha256_tree(stored_folder(target, "promoted")) == sha256_tree(job_model.folder)
    # The files were read where the form says, in the source workspace.
    prefix = service.format(scope=jobs_workspace.arm_id.strip("/"), run=job_model.run_id)
    reads = [r.path for r in azureml_box.box.requests_for("artifact") if r.method == "GET"]
    assert reads and all(p.startswith(prefix) for p in reads), reads
    assert_no_secrets(run.both, box_env)


def test_a_version_naming_another_workspaces_files_is_refused_and_nothing_is_read(
    azureml_box: BoxWorkspaces, jobs_workspace: AzureMLResource, job_model: JobModel,
    box_env: dict[str, str], tmp_path: Path, unique_model_name: str,
) -> None:
    from mlflow import MlflowClient

    # The same run's path, but in another workspace: reading it here would copy the wrong files.
    elsewhere = (f"azureml://subscriptions/{SUBSCRIPTION}/resourcegroups/{RESOURCE_GROUP}/"
                 f"workspaces/{OTHER_WORKSPACE}/datastores/workspaceartifactstore/paths/"
                 f"ExperimentRun/dcid.{job_model.run_id}/model")
    assert jobs_workspace.backend is not None
    backend = MlflowClient(tracking_uri=jobs_workspace.backend.url,
                           registry_uri=jobs_workspace.backend.url)
    backend.create_registered_model(unique_model_name)
    backend.create_model_version(unique_model_name, elsewhere)
    assert reported_download_uri(jobs_workspace, unique_model_name) == elsewhere
    azureml_box.box.clear_requests()
    target = f"sqlite:///{tmp_path / 'mlflow.db'}"

    run = cli("copy-model", f"{unique_model_name}/1", "--source", jobs_workspace.mlflow_uri,
              "--target", target)

    assert run.code == EXIT_USAGE, run.both
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, run.stderr
    assert f"workspace '{OTHER_WORKSPACE}'" in errors[0]
    assert f"Azure ML workspace '{JOBS_WORKSPACE}'" in errors[0]
    assert "Traceback" not in run.both
    assert azureml_box.box.requests_for("artifact") == []
    if (tmp_path / "mlflow.db").exists():  # nothing was registered in the target
        assert MlflowClient(tracking_uri=target, registry_uri=target) \
            .search_registered_models() == []
    assert_no_secrets(run.both, box_env)


def test_a_short_form_naming_another_experiment_finds_no_run(
    azureml_box: BoxWorkspaces, jobs_workspace: AzureMLResource, job_model: JobModel,
    box_env: dict[str, str], tmp_path: Path, unique_model_name: str,
) -> None:
    """The run exists, but not in the experiment the short form names: the history service's
    run-not-found (exit 3), not the run's files under a wrong name."""
    from mlflow import MlflowClient

    assert jobs_workspace.backend is not None
    backend = MlflowClient(tracking_uri=jobs_workspace.backend.url,
                           registry_uri=jobs_workspace.backend.url)
    backend.create_registered_model(unique_model_name)
    backend.create_model_version(
        unique_model_name,
        f"azureml://experiments/other-experiment/runs/{job_model.run_id}/artifacts/model")
    target = f"sqlite:///{tmp_path / 'mlflow.db'}"

    run = cli("copy-model", f"{unique_model_name}/1", "--source", jobs_workspace.mlflow_uri,
              "--target", target, "-o", "json")

    assert run.code == 3, run.both
    assert run.document["kind"] == "not-found", run.document
    assert "Traceback" not in run.both
    if (tmp_path / "mlflow.db").exists():
        assert MlflowClient(tracking_uri=target, registry_uri=target) \
            .search_registered_models() == []
    assert_no_secrets(run.both, box_env)


# -- the table: what `artifact_folder` accepts and refuses -----------------------------------------

HOST = "eastus.api.azureml.ms"
SUB, RG, WS = "sub-1", "rg-1", "ws-1"
SCOPE = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.MachineLearningServices" \
        f"/workspaces/{WS}"
MLFLOW = f"azureml://{HOST}/mlflow/v2.0{SCOPE}"
HISTORY = f"https://{HOST}/history/v1.0{SCOPE}"
ARTIFACT = f"https://{HOST}/artifact/v2.0{SCOPE}/artifacts"
LONG_DS = f"azureml://subscriptions/{SUB}/resourcegroups/{RG}/workspaces/{WS}/datastores"

ACCEPTED = [
    # run artifacts, azureml-mlflow's two forms
    (f"{MLFLOW}/experiments/3/runs/r1/artifacts/model",
     f"{HISTORY}/experiments/3/runs/r1/artifacts", "model"),
    (f"{MLFLOW}/experiments/3/runs/r1/artifacts", f"{HISTORY}/experiments/3/runs/r1/artifacts", ""),
    (f"{MLFLOW}/experiments/3/runs/r1", f"{HISTORY}/experiments/3/runs/r1/artifacts", ""),
    (f"azureml://{HOST}/mlflow/v1.0/subscriptions/{SUB.upper()}/resourcegroups/{RG.upper()}/"
     f"providers/Microsoft.MachineLearningServices/workspaces/{WS.upper()}/experiments/3/runs/r1/"
     "artifacts/model/", f"{HISTORY}/experiments/3/runs/r1/artifacts", "model"),
    ("azureml://experiments/train-exp/runs/r1/artifacts/outputs/model",
     f"{HISTORY}/experiments/train-exp/runs/r1/artifacts", "outputs/model"),
    ("azureml://experiments/train-exp/runs/r1/artifacts",
     f"{HISTORY}/experiments/train-exp/runs/r1/artifacts", ""),
    ("azureml://experiments/train-exp/runs/r1",
     f"{HISTORY}/experiments/train-exp/runs/r1/artifacts", ""),
    # artifact service folders
    ("azureml://artifacts/LocalUpload/c0ffee/model", f"{ARTIFACT}/LocalUpload/c0ffee", "model"),
    # the workspace artifact store, as datastore paths
    ("azureml://datastores/workspaceartifactstore/paths/ExperimentRun/dcid.r1/model/",
     f"{ARTIFACT}/ExperimentRun/dcid.r1", "model"),
    ("azureml://datastores/WorkspaceArtifactStore/paths/ExperimentRun/dcid.r1/model",
     f"{ARTIFACT}/ExperimentRun/dcid.r1", "model"),
    ("azureml://datastores/workspaceartifactstore/ExperimentRun/dcid.r1/outputs/model",
     f"{ARTIFACT}/ExperimentRun/dcid.r1", "outputs/model"),
    ("azureml://datastores/workspaceartifactstore/paths/LocalUpload/c0ffee/model",
     f"{ARTIFACT}/LocalUpload/c0ffee", "model"),
    (f"{LONG_DS}/workspaceartifactstore/paths/ExperimentRun/dcid.r1/model",
     f"{ARTIFACT}/ExperimentRun/dcid.r1", "model"),
    (f"azureml://subscriptions/{SUB}/resourceGroups/{RG.upper()}/workspaces/{WS}/datastores/"
     "workspaceartifactstore/paths/ExperimentRun/dcid.r1", f"{ARTIFACT}/ExperimentRun/dcid.r1", ""),
    # a job's default output is its run's artifacts
    ("azureml://jobs/r1/outputs/artifacts/paths/model/", f"{ARTIFACT}/ExperimentRun/dcid.r1",
     "model"),
]

OTHER_WS = "another workspace"
UNREADABLE = "cannot read"
UNRECOGNISED = "unrecognised"
REFUSED = [
    (f"azureml://{HOST}/mlflow/v2.0/subscriptions/{SUB}/resourceGroups/{RG}/providers/"
     "Microsoft.MachineLearningServices/workspaces/ws-2/experiments/3/runs/r1/artifacts/model",
     EXIT_USAGE, OTHER_WS),
    (f"azureml://subscriptions/{SUB}/resourcegroups/{RG}/workspaces/ws-2/datastores/"
     "workspaceartifactstore/paths/ExperimentRun/dcid.r1/model", EXIT_USAGE, OTHER_WS),
    (f"azureml://subscriptions/{SUB}/resourcegroups/rg-2/workspaces/{WS}/datastores/"
     "workspaceartifactstore/paths/ExperimentRun/dcid.r1/model", EXIT_USAGE, OTHER_WS),
    (f"azureml://subscriptions/sub-2/resourcegroups/{RG}/workspaces/{WS}/datastores/"
     "workspaceartifactstore/paths/ExperimentRun/dcid.r1/model", EXIT_USAGE, OTHER_WS),
    ("azureml://datastores/workspaceblobstore/paths/LocalUpload/c0ffee/model", EXIT_USAGE,
     UNREADABLE),
    (f"{LONG_DS}/my_adls/paths/models/m1", EXIT_USAGE, UNREADABLE),
    ("azureml://datastores/workspaceartifactstore/paths/azureml/r1/outputs", EXIT_USAGE,
     UNREADABLE),
    ("azureml://datastores/workspaceartifactstore/paths/ExperimentRun/r1/model", EXIT_USAGE,
     UNREADABLE),
    ("azureml://jobs/r1/outputs/model_output/paths/model", EXIT_USAGE, UNREADABLE),
    ("azureml://experiments/train-exp/runs/r1/outputs/model", EXIT_FAILED, UNRECOGNISED),
    ("azureml://experiments/train-exp", EXIT_FAILED, UNRECOGNISED),
    ("azureml://datastores/workspaceartifactstore", EXIT_FAILED, UNRECOGNISED),
    ("azureml://jobs/r1/outputs/artifacts", EXIT_FAILED, UNRECOGNISED),
    ("azureml://feeds/x/y", EXIT_FAILED, UNRECOGNISED),
    ("azureml://artifacts/LocalUpload", EXIT_FAILED, UNRECOGNISED),
]


@pytest.fixture(scope="module")
def connection() -> AzureMlConnection:
    # `artifact_folder` only reads the scope; the credential is never asked for a token.
    return AzureMlConnection(AzureMlScope.parse(MLFLOW), make_credential("environment"))


@pytest.mark.parametrize(("uri", "base_url", "root"), ACCEPTED)
def test_accepted_forms_resolve_in_the_connections_workspace(
    connection: AzureMlConnection, uri: str, base_url: str, root: str,
) -> None:
    folder = artifact_folder(connection, uri)

    assert (folder.base_url, folder.root) == (base_url, root)


@pytest.mark.parametrize(("uri", "code", "says"), REFUSED)
def test_refused_forms_say_why_in_one_line(
    connection: AzureMlConnection, uri: str, code: int, says: str,
) -> None:
    with pytest.raises(AmlPromoteError) as caught:
        artifact_folder(connection, uri + "?sv=2021&sig=SECRETSIGNATURE")

    error: Any = caught.value
    assert error.exit_code == code
    text = f"{error.message} {error.hint}"
    assert "\n" not in text and "SECRETSIGNATURE" not in text
    if says == OTHER_WS:
        assert f"Azure ML workspace '{WS}'" in error.message  # the one it was asked to read
        assert "--source" in error.hint
    else:
        assert says in error.message
        assert error.hint


def test_a_registry_has_no_artifact_folders() -> None:
    scope = AzureMlScope.parse(f"azureml://{HOST}/mlflow/v2.0/subscriptions/{SUB}/resourceGroups/"
                               f"{RG}/providers/Microsoft.MachineLearningServices/registries/reg")
    with pytest.raises(AmlPromoteError, match="registry"):
        artifact_folder(AzureMlConnection(scope, make_credential("environment")),
                        "azureml://experiments/e/runs/r1/artifacts")
