"""Azure ML in a box, exercised with the real client libraries.

Every test talks to the box the way a user talks to a non-public cloud: environment variables
the libraries document (AZUREML_DEV_URL_MFE, IDENTITY_ENDPOINT/IDENTITY_HEADER, the CA bundle,
proxy variables) and the URIs the service hands out. No library internals are patched; the
`no_egress` guard refuses any non-loopback connection from this process, so a library that
would reach the internet fails the test instead of leaving the machine.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
from azureml_box import AzureMLBox, AzureMLResource
from azureml_box.testing import (
    FORBIDDEN_WORKSPACE,
    RESOURCE_GROUP,
    SUBSCRIPTION,
    WORKSPACE,
    BoxWorkspaces,
    EgressGuard,
    mlflow_global_uris,
)

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from mlflow import MlflowClient

# The fixtures (azureml_box, box_env, box_workspace, no_egress) live with the box.
pytest_plugins = ["azureml_box.fixtures"]
pytestmark = pytest.mark.timeout(180)

ARM_SCOPE = "https://management.azure.com/.default"


# -- helpers --------------------------------------------------------------------------------------


def _credential() -> TokenCredential:
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def _ml_client(credential: TokenCredential, workspace: str = WORKSPACE) -> Any:
    from azure.ai.ml import MLClient

    return MLClient(credential, SUBSCRIPTION, RESOURCE_GROUP, workspace)


def _mlflow_client(uri: str) -> MlflowClient:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _workspace_uri(credential: TokenCredential) -> str:
    uri: str = _ml_client(credential).workspaces.get(WORKSPACE).mlflow_tracking_uri
    return uri


def _save_model(folder: Path) -> Path:
    """A small real pyfunc model folder (MLmodel, pickled model, env files)."""
    import mlflow.pyfunc
    from mlflow.pyfunc import PythonModel

    class Doubler(PythonModel):
        def predict(
            self, context: Any, model_input: list[float], params: dict[str, Any] | None = None
        ) -> list[float]:
            return [2 * x for x in model_input]

    mlflow.pyfunc.save_model(str(folder), python_model=Doubler(), pip_requirements=[])
    return folder


def _digests(folder: Path, exclude: frozenset[str] = frozenset()) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and str(p.relative_to(folder)) not in exclude
    }


def _raw(box: AzureMLBox, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(
        method, f"{box.url}{path}", headers=headers, verify=str(box.ca_bundle), timeout=30, **kw
    )


def _arm_path(workspace: str) -> str:
    return (
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
        f"Microsoft.MachineLearningServices/workspaces/{workspace}"
    )


# -- identity -------------------------------------------------------------------------------------


def test_default_azure_credential_gets_its_token_from_the_box_managed_identity(
    azureml_box: BoxWorkspaces, box_env: dict[str, str], no_egress: EgressGuard
) -> None:
    box = azureml_box.box

    token = _credential().get_token(ARM_SCOPE)

    assert box._verify_token(f"Bearer {token.token}") == box.identity
    assert token.expires_on > time.time() + 600
    # The first and only network call is the App Service managed identity request: no IMDS
    # probe (169.254.169.254), no Entra ID, nothing through the proxy.
    (request,) = box.requests
    assert (request.route, request.method, request.status) == ("token", "GET", 200)
    assert request.query == {"api-version": "2019-08-01", "resource": "https://management.azure.com"}
    assert no_egress.attempts == []
    assert box.blocked_egress == []


def test_default_azure_credential_fails_fast_and_stays_local_when_the_endpoint_fails(
    azureml_box: BoxWorkspaces, box_env: dict[str, str], no_egress: EgressGuard
) -> None:
    from azure.core.exceptions import ClientAuthenticationError

    box = azureml_box.box
    box.inject_fault(route="token", status=500, times=None)

    # The rest of the chain (environment, workload identity, shared cache, VS Code, Azure CLI,
    # PowerShell, azd) must give up without any network access.
    with pytest.raises(ClientAuthenticationError):
        _credential().get_token(ARM_SCOPE)

    # Bounded by attempts, not wall time: azure-identity's managed identity client retries a
    # 500 per azure-core's default RetryPolicy (retry_total 10), then the chain moves on.
    # (Measured: 4 requests.)
    tried = box.requests_for("token")
    assert 1 <= len(tried) <= 11, [(r.method, r.status) for r in tried]
    assert no_egress.attempts == []
    assert box.blocked_egress == []


# -- ARM: workspace -> MLflow tracking URI ---------------------------------------------------------


def test_ml_client_resolves_the_workspace_mlflow_uri_to_the_box(
    azureml_box: BoxWorkspaces, box_env: dict[str, str], no_egress: EgressGuard
) -> None:
    box = azureml_box.box

    workspace = _ml_client(_credential()).workspaces.get(WORKSPACE)

    assert workspace.mlflow_tracking_uri == azureml_box.workspace.mlflow_uri
    assert workspace.mlflow_tracking_uri.startswith(f"azureml://{box.netloc}/mlflow/v2.0/")
    assert workspace.id == azureml_box.workspace.arm_id
    assert workspace.discovery_url == f"{box.url}/discovery"
    arm = box.requests_for("arm")
    assert [(r.method, r.path, r.status) for r in arm] == [
        ("GET", _arm_path(WORKSPACE), 200)
    ]
    assert arm[0].query["api-version"]
    assert arm[0].identity == box.identity.name
    assert no_egress.attempts == []


def test_discovery_document_names_the_box_for_every_service(
    azureml_box: BoxWorkspaces, box_env: dict[str, str]
) -> None:
    box = azureml_box.box
    response = _raw(box, "GET", "/discovery")
    assert response.status_code == 200
    document = response.json()
    assert document["api"] == box.url
    assert {"history", "experimentation", "modelmanagement", "pipelines"} <= document.keys()


# -- MLflow REST API + artifact service + Azurite -------------------------------------------------


def test_registering_a_local_folder_uploads_through_the_artifact_service_into_azurite(
    azureml_box: BoxWorkspaces,
    box_workspace: AzureMLResource,
    no_egress: EgressGuard,
    unique_model_name: str,
    tmp_path: Path,
) -> None:
    box = azureml_box.box
    folder = _save_model(tmp_path / "model")
    client = _mlflow_client(_workspace_uri(_credential()))

    client.create_registered_model(unique_model_name, description="box test")
    version = client.create_model_version(unique_model_name, source=folder.as_uri())

    assert version.version == "1"
    assert version.status == "READY"
    # azureml-mlflow replaced the local path with the artifact service's location.
    source = str(version.source)
    assert source.startswith("azureml://artifacts/LocalUpload/")
    assert source.endswith("/model")
    container = source.split("/")[4]
    blobs = box.blob_names(box_workspace, prefix=f"LocalUpload/{container}/")
    assert sorted(b.split("/", 2)[2] for b in blobs) == sorted(
        f"model/{name}" for name in _digests(folder)
    )
    for name, digest in _digests(folder).items():
        stored = box.read_blob(box_workspace, f"LocalUpload/{container}/model/{name}")
        assert hashlib.sha256(stored).hexdigest() == digest, name
    routes = [(r.route, r.method, r.status) for r in box.requests]
    assert ("artifact", "POST", 200) in routes
    assert ("proxy", "CONNECT", 200) in routes  # blob PUTs went to Azurite via the proxy
    assert no_egress.attempts == []
    assert box.blocked_egress == []


def test_models_uri_downloads_back_from_the_workspace_byte_for_byte(
    azureml_box: BoxWorkspaces,
    box_workspace: AzureMLResource,
    no_egress: EgressGuard,
    unique_model_name: str,
    tmp_path: Path,
) -> None:
    import mlflow
    import mlflow.pyfunc
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    box = azureml_box.box
    folder = _save_model(tmp_path / "model")
    uri = _workspace_uri(_credential())
    client = _mlflow_client(uri)
    client.create_registered_model(unique_model_name)
    version = client.create_model_version(unique_model_name, source=folder.as_uri())
    box.clear_requests()

    # What azureml-mlflow forces: downloads go through MLflow's global URIs (see fixtures).
    with mlflow_global_uris(uri):
        model = mlflow.pyfunc.load_model(f"models:/{unique_model_name}/{version.version}")
        # The stored files, as a byte-exact copy reads them: the version's download URI.
        download_uri = client.get_model_version_download_uri(unique_model_name, version.version)
        repo = get_artifact_repository(download_uri)
        (tmp_path / "download").mkdir()
        downloaded = Path(repo.download_artifacts("", dst_path=str(tmp_path / "download")))

    assert model.predict([1.0, 2.5]) == [2.0, 5.0]
    assert _digests(downloaded) == _digests(folder)
    paths = {(r.route, r.path.rsplit("/", 1)[-1]) for r in box.requests}
    assert ("mlflow", "get-download-uri") in paths
    assert ("artifact", "contentinfo") in paths
    assert no_egress.attempts == []
    assert box.blocked_egress == []


def test_run_artifacts_go_through_the_history_service_and_logged_models_are_404(
    azureml_box: BoxWorkspaces,
    box_workspace: AzureMLResource,
    no_egress: EgressGuard,
    unique_model_name: str,
    tmp_path: Path,
) -> None:
    import mlflow
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    box = azureml_box.box
    folder = _save_model(tmp_path / "model")
    uri = _workspace_uri(_credential())
    client = _mlflow_client(uri)
    experiment_id = client.create_experiment(unique_model_name)

    # Azure ML has no MLflow 3 LoggedModel endpoints: 404 with an empty body.
    with pytest.raises(MlflowException, match="404"):
        client.create_logged_model(experiment_id, name="m")

    run = client.create_run(experiment_id)
    run_id = run.info.run_id
    assert run.info.artifact_uri == (
        f"azureml://{box.netloc}/mlflow/v2.0{box_workspace.arm_id}/experiments/"
        f"{experiment_id}/runs/{run_id}/artifacts"
    )
    # azureml-mlflow's artifact repository takes its credentials from the global tracking store.
    with mlflow_global_uris(uri):
        client.log_artifacts(run_id, str(folder), "model")
        source = f"{run.info.artifact_uri}/model"
        client.create_registered_model(unique_model_name)
        version = client.create_model_version(unique_model_name, source=source, run_id=run_id)
        model = mlflow.pyfunc.load_model(f"models:/{unique_model_name}/{version.version}")
        listed = get_artifact_repository(run.info.artifact_uri).list_artifacts("model")

    assert version.source == source
    assert model.predict([4.0]) == [8.0]
    assert sorted(f.path for f in listed) == sorted(f"model/{name}" for name in _digests(folder))
    blobs = box.blob_names(box_workspace, prefix=f"ExperimentRun/dcid.{run_id}/")
    assert len(blobs) == len(_digests(folder))
    history = [r for r in box.requests_for("artifact") if "/history/v1.0/" in r.path]
    assert {r.method for r in history} == {"GET", "POST"}
    assert no_egress.attempts == []
    assert box.blocked_egress == []


def test_registry_mlflow_api_with_the_plugins_own_credential_chain(
    azureml_box: BoxWorkspaces, box_env: dict[str, str], no_egress: EgressGuard,
    unique_model_name: str,
) -> None:
    # A registry URI nobody resolved through MLClient: azureml-mlflow builds its own chain
    # (DefaultAzureCredential's credentials + fallbacks) and must find the managed identity.
    box = azureml_box.box
    client = _mlflow_client(azureml_box.registry.mlflow_uri)

    client.create_registered_model(unique_model_name, tags={"k": "v"})
    model = client.get_registered_model(unique_model_name)

    assert model.tags == {"k": "v"}
    mlflow_calls = box.requests_for("mlflow")
    assert mlflow_calls and all("/registries/" in r.path for r in mlflow_calls)
    assert all(r.identity == box.identity.name for r in mlflow_calls)
    assert no_egress.attempts == []


_CLIENT_SCRIPT = """
import json, sys
from pathlib import Path

import mlflow
import mlflow.pyfunc
from azure.ai.ml import MLClient
from azure.identity import DefaultAzureCredential

sub, rg, ws, name, folder = sys.argv[1:6]
uri = MLClient(DefaultAzureCredential(), sub, rg, ws).workspaces.get(ws).mlflow_tracking_uri
client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
client.create_registered_model(name)
version = client.create_model_version(name, source=Path(folder).as_uri())
# A separate process owns its global MLflow state; downloads need it (see fixtures).
mlflow.set_tracking_uri(uri)
mlflow.set_registry_uri(uri)
model = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}")
print(json.dumps({"uri": uri, "source": version.source, "prediction": model.predict([3.0])}))
"""


def test_a_separate_client_process_needs_only_the_box_environment(
    azureml_box: BoxWorkspaces, unique_model_name: str, tmp_path: Path
) -> None:
    import json
    import os
    import subprocess
    import sys

    box = azureml_box.box
    box.clear_requests()
    folder = _save_model(tmp_path / "model")
    script = tmp_path / "client.py"
    script.write_text(_CLIENT_SCRIPT)

    proc = subprocess.run(
        [sys.executable, str(script), SUBSCRIPTION, RESOURCE_GROUP, WORKSPACE,
         unique_model_name, str(folder)],
        env=box.client_env(dict(os.environ)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["uri"] == azureml_box.workspace.mlflow_uri
    assert result["source"].startswith("azureml://artifacts/LocalUpload/")
    assert result["prediction"] == [6.0]
    routes = {r.route for r in box.requests}
    assert {"token", "arm", "mlflow", "artifact", "proxy"} <= routes
    assert box.blocked_egress == []


# -- authentication and authorization -------------------------------------------------------------


def test_requests_without_a_valid_token_get_401(
    azureml_box: BoxWorkspaces, box_env: dict[str, str]
) -> None:
    from azure.core.credentials import AccessToken
    from azure.core.exceptions import ClientAuthenticationError

    box = azureml_box.box
    ws = azureml_box.workspace
    mlflow_path = f"/mlflow/v2.0{ws.arm_id}/api/2.0/mlflow/registered-models/search"
    artifact_path = f"/artifact/v2.0{ws.arm_id}/artifacts/LocalUpload/c1/batch/metadata"
    arm_path = _arm_path(WORKSPACE) + "?api-version=2024-10-01-preview"

    for method, path in (("GET", arm_path), ("GET", mlflow_path), ("POST", artifact_path)):
        missing = _raw(box, method, path)
        assert missing.status_code == 401, path
        assert missing.headers["WWW-Authenticate"].startswith("Bearer ")
        forged = _raw(box, method, path, token="eyJhbGciOiJub25lIn0.e30.")
        assert forged.status_code == 401, path
    assert _raw(box, "GET", arm_path).json()["error"]["code"] == "AuthenticationFailed"

    class ForeignToken:
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            return AccessToken("not-a-token-from-this-box", int(time.time()) + 3600)

    with pytest.raises(ClientAuthenticationError):
        _ml_client(ForeignToken()).workspaces.get(WORKSPACE)


def test_a_workspace_the_identity_may_not_use_gives_403(
    azureml_box: BoxWorkspaces, box_env: dict[str, str], no_egress: EgressGuard
) -> None:
    from azure.core.exceptions import HttpResponseError
    from mlflow.exceptions import MlflowException

    forbidden = azureml_box.forbidden
    with pytest.raises(HttpResponseError) as arm_error:
        _ml_client(_credential(), FORBIDDEN_WORKSPACE).workspaces.get(FORBIDDEN_WORKSPACE)
    assert arm_error.value.status_code == 403
    assert "AuthorizationFailed" in str(arm_error.value)

    # MLflow's REST client reports Azure ML's error body, not the status code.
    with pytest.raises(MlflowException, match="AuthorizationFailed"):
        _mlflow_client(forbidden.mlflow_uri).search_registered_models()
    assert [r.status for r in azureml_box.box.requests_for("mlflow")] == [403]
    assert no_egress.attempts == []


def test_unknown_workspaces_and_routes_give_404(
    azureml_box: BoxWorkspaces, box_env: dict[str, str]
) -> None:
    from azure.core.exceptions import ResourceNotFoundError

    box = azureml_box.box
    with pytest.raises(ResourceNotFoundError, match="ResourceNotFound"):
        _ml_client(_credential(), "no-such-ws").workspaces.get("no-such-ws")

    token = box.issue_token()
    unknown = f"/mlflow/v2.0{_arm_path('no-such-ws')}/api/2.0/mlflow/registered-models/search"
    assert _raw(box, "GET", unknown, token=token).status_code == 404
    other_rg = _arm_path(WORKSPACE).replace(RESOURCE_GROUP, "no-such-rg")
    response = _raw(box, "GET", other_rg + "?api-version=2024-10-01-preview", token=token)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "ResourceGroupNotFound"
    assert _raw(box, "GET", "/no/such/route", token=token).status_code == 404


# -- fault injection ------------------------------------------------------------------------------


def _gaps(records: list[Any]) -> list[float]:
    return [b.started - a.started for a, b in itertools.pairwise(records)]


def test_azure_ai_ml_retries_429_after_the_retry_after_delay(
    azureml_box: BoxWorkspaces, box_env: dict[str, str]
) -> None:
    box = azureml_box.box
    credential = _credential()
    credential.get_token(ARM_SCOPE)
    box.inject_fault(route="arm", status=429, retry_after=1, times=2)

    workspace = _ml_client(credential).workspaces.get(WORKSPACE)

    assert workspace.name == WORKSPACE
    arm = box.requests_for("arm")
    assert [r.status for r in arm] == [429, 429, 200]
    assert all(gap >= 0.9 for gap in _gaps(arm))


def test_mlflow_retries_429_after_the_retry_after_delay(
    azureml_box: BoxWorkspaces, box_workspace: AzureMLResource, unique_model_name: str
) -> None:
    box = azureml_box.box
    client = _mlflow_client(_workspace_uri(_credential()))
    client.create_registered_model(unique_model_name)
    box.clear_requests()
    box.inject_fault(route="mlflow", status=429, retry_after=1, times=2)

    model = client.get_registered_model(unique_model_name)

    assert model.name == unique_model_name
    calls = box.requests_for("mlflow")
    assert [r.status for r in calls] == [429, 429, 200]
    assert all(gap >= 0.9 for gap in _gaps(calls))


def test_artifact_upload_retries_a_503_and_slow_responses_still_succeed(
    azureml_box: BoxWorkspaces,
    box_workspace: AzureMLResource,
    unique_model_name: str,
    tmp_path: Path,
) -> None:
    box = azureml_box.box
    folder = _save_model(tmp_path / "model")
    client = _mlflow_client(_workspace_uri(_credential()))
    client.create_registered_model(unique_model_name)
    box.clear_requests()
    box.inject_fault(route="artifact", method="POST", status=503, retry_after=0.5, times=1)
    box.inject_fault(route="mlflow", path=r"/model-versions/create$", delay=1.0, times=1)

    version = client.create_model_version(unique_model_name, source=folder.as_uri())

    assert version.status == "READY"
    posts = [r for r in box.requests_for("artifact") if r.method == "POST"]
    assert [r.status for r in posts] == [503, 200]
    (create,) = [r for r in box.requests_for("mlflow") if r.path.endswith("/model-versions/create")]
    assert create.status == 200
    assert create.fault == "delay=1"
    assert create.duration >= 1.0


# -- the proxy keeps everything else off the network ----------------------------------------------


def test_proxy_refuses_hosts_that_are_not_part_of_the_box(
    azureml_box: BoxWorkspaces, box_env: dict[str, str], no_egress: EgressGuard
) -> None:
    box = azureml_box.box
    proxies = {"https": box.proxy_url, "http": box.proxy_url}

    with pytest.raises(requests.exceptions.ProxyError):
        requests.get("https://login.microsoftonline.com/common", proxies=proxies, timeout=10)
    with pytest.raises(requests.exceptions.ProxyError):
        requests.get("https://169.254.169.254/metadata", proxies=proxies, timeout=10)

    assert box.blocked_egress == ["login.microsoftonline.com:443", "169.254.169.254:443"]
    assert no_egress.attempts == []


# -- a forced race: requests held until all racers arrived -----------------------------------------


def test_a_gate_holds_requests_until_count_arrived_and_then_lets_them_all_go(
    azureml_box: BoxWorkspaces, box_env: dict[str, str]
) -> None:
    import threading

    box = azureml_box.box
    token = box.issue_token()
    search = f"/mlflow/v2.0{_arm_path(WORKSPACE)}/api/2.0/mlflow/registered-models/search"
    gate = box.hold(route="mlflow", method="GET", path=r"/registered-models/search$", count=2)
    answers: list[int] = []

    def call() -> None:
        answers.append(_raw(box, "GET", search, token=token).status_code)

    first = threading.Thread(target=call)
    first.start()
    while gate.arrived < 1:
        time.sleep(0.02)
    first.join(0.5)
    assert first.is_alive() and answers == [], "the first request was not held"
    second = threading.Thread(target=call)
    second.start()
    first.join(30)
    second.join(30)

    assert answers == [200, 200] and not gate.timed_out
    # Once released, the gate lets later requests through untouched.
    assert _raw(box, "GET", search, token=token).status_code == 200
    assert [r.fault for r in box.requests_for("mlflow")] == ["held", "held", None]


def test_a_gate_whose_racers_never_all_come_lets_go_after_its_timeout(
    azureml_box: BoxWorkspaces, box_env: dict[str, str]
) -> None:
    box = azureml_box.box
    search = f"/mlflow/v2.0{_arm_path(WORKSPACE)}/api/2.0/mlflow/registered-models/search"
    gate = box.hold(route="mlflow", path=r"/registered-models/search$", count=2, timeout=0.5)

    started = time.monotonic()
    response = _raw(box, "GET", search, token=box.issue_token())

    assert response.status_code == 200
    assert gate.timed_out and gate.arrived == 1
    assert time.monotonic() - started >= 0.5


# -- tag limits: Azure ML's published figures, enforced by the box itself --------------------------


def _mlflow_api(workspace: str = WORKSPACE) -> str:
    return f"/mlflow/v2.0{_arm_path(workspace)}/api/2.0/mlflow"


def _refused_field(response: Any) -> str:
    """The over-limit field Azure ML names in its 400 ValidationError document."""
    assert response.status_code == 400, response.text
    document = response.json()
    assert document["error_code"] == "INVALID_PARAMETER_VALUE"
    assert document["statusCode"] == 400 and document["ComponentName"] == "mlflow"
    assert document["Error"]["Code"] == "ValidationError"
    message = document["Error"]["Message"]
    assert message.startswith("A field of the entity is over the size limit. FieldName=")
    assert "https://aka.ms/azure-machine-learning-limits" in message
    named = re.search(r"FieldName=([^,]+), Limit=\d+, Size=\d+\.", message)
    assert named, message
    return named.group(1)


def test_tags_over_azure_ml_limits_are_refused_on_every_mlflow_write(
    azureml_box: BoxWorkspaces, box_workspace: AzureMLResource, unique_model_name: str
) -> None:
    box = azureml_box.box
    token = box.issue_token()
    api = _mlflow_api()

    def post(endpoint: str, body: dict[str, Any]) -> Any:
        return _raw(box, "POST", f"{api}/{endpoint}", token=token, json=body)

    def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
        return [{"key": k, "value": v} for k, v in tags.items()]

    at_limits = {"k" * 100: "v" * 1000, **{f"t{i:02d}": "x" for i in range(49)}}
    assert post("registered-models/create",
                {"name": unique_model_name, "tags": tag_list(at_limits)}).status_code == 200
    # One more key on a model that holds 50 is refused; setting one it has is an update.
    assert _refused_field(post("registered-models/set-tag", {
        "name": unique_model_name, "key": "t99", "value": "x"})) == "Tags"
    assert post("registered-models/set-tag", {
        "name": unique_model_name, "key": "t00", "value": "y" * 1000}).status_code == 200
    assert _refused_field(post("registered-models/set-tag", {
        "name": unique_model_name, "key": "t00", "value": "y" * 1001})) == "Tags.Value"
    assert _refused_field(post("registered-models/create", {
        "name": unique_model_name + "-2", "tags": tag_list({"k" * 101: "v"})})) == "Tags.Key"
    assert _refused_field(post("model-versions/create", {
        "name": unique_model_name, "source": "azureml://unused",
        "tags": tag_list({f"t{i:02d}": "x" for i in range(51)})})) == "Tags"
    # Runs: the same figures (the "Runs" table), counting what the run already has.
    experiment = post("experiments/create", {"name": f"limits-{unique_model_name}"}).json()
    run = post("runs/create", {"experiment_id": experiment["experiment_id"],
                               "tags": tag_list({"a": "v" * 1000})})
    assert run.status_code == 200
    run_id = run.json()["run"]["info"]["run_id"]
    assert _refused_field(post("runs/set-tag", {
        "run_id": run_id, "key": "b", "value": "v" * 1001})) == "Tags.Value"
    assert _refused_field(post("runs/log-batch", {
        "run_id": run_id, "tags": tag_list({"k" * 101: "v"})})) == "Tags.Key"
    # Nothing refused reached the backend.
    backend = _mlflow_client(box_workspace.backend.url) if box_workspace.backend else None
    assert backend is not None
    assert backend.get_registered_model(unique_model_name).tags["t00"] == "y" * 1000
    assert "t99" not in backend.get_registered_model(unique_model_name).tags
    assert backend.search_registered_models(f"name = '{unique_model_name}-2'") == []
    assert "b" not in backend.get_run(run_id).data.tags


def test_the_mlflow_client_sees_azure_ml_s_validation_error(
    azureml_box: BoxWorkspaces, box_workspace: AzureMLResource, unique_model_name: str
) -> None:
    from mlflow.exceptions import MlflowException

    client = _mlflow_client(_workspace_uri(_credential()))

    with pytest.raises(MlflowException) as refused:
        client.create_registered_model(unique_model_name, tags={"long": "v" * 1001})

    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"
    assert refused.value.get_http_status_code() == 400
    assert "FieldName=Tags.Value, Limit=1000, Size=1001" in refused.value.message


def test_a_registry_version_put_with_tags_over_the_limits_is_refused(
    azureml_box: BoxWorkspaces, box_env: dict[str, str], unique_model_name: str
) -> None:
    box = azureml_box.box
    path = (_arm_path(azureml_box.registry.name).replace("/workspaces/", "/registries/")
            + f"/models/{unique_model_name}/versions/1?api-version=2023-04-01")
    body = {"properties": {"modelType": "mlflow_model", "modelUri": "https://x.blob.core.windows"
                           ".net/c/f", "tags": {f"t{i:02d}": "x" for i in range(51)}}}

    response = _raw(box, "PUT", path, token=box.issue_token(), json=body)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "UserError"
    assert "FieldName=Tags, Limit=50, Size=51" in response.json()["error"]["message"]
    # Within the limits, the same PUT gets as far as the model URI check.
    body["properties"]["tags"] = {"k" * 100: "v" * 1000}
    response = _raw(box, "PUT", path, token=box.issue_token(), json=body)
    assert response.status_code == 400
    assert "startPendingUpload" in response.json()["error"]["message"]
    assert box.registry_versions(azureml_box.registry, unique_model_name) == []
