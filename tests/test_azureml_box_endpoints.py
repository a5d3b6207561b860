"""Managed online endpoints in the box, driven by azure-ai-ml's MLClient as a user drives Azure ML.

The box runs each deployment's model for real (serving.py: Microsoft's azureml-inference-server-
http on the registered heart classifier), and its front door answers the scoring URI the service
hands out, reached through the box's proxy like any Azure host. No library internals are patched.
One box per module; one served deployment shared by the scoring tests (a server takes ~5-10 s to
start), short provisioning delays elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from azureml_box import AzureMLBox, AzureMLResource
from azureml_box.testing import REGISTRY, RESOURCE_GROUP, SUBSCRIPTION, WORKSPACE, EgressGuard
from support import HEART_UNLABELED_CSV
from support.models import register_heart_model, register_raw_model, stored_folder

pytest_plugins = ["azureml_box.fixtures"]
pytestmark = pytest.mark.timeout(300)

HEART = "heart"
BROKEN = "broken"
SERVED = "ep-served"


@dataclass
class EndpointBox:
    box: AzureMLBox
    workspace: AzureMLResource
    registry: AzureMLResource
    heart_folder: Path


@pytest.fixture(scope="module")
def endpoint_box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EndpointBox]:
    """A box with a workspace holding the heart classifier (version 1) and a model whose
    MLmodel names no flavor (its server cannot load it), both registered through azureml-mlflow
    as a user registers a local folder, and a registry."""
    import mlflow

    root = tmp_path_factory.mktemp("endpoint-box")
    source = "sqlite:///" + str(root / "source.db")
    with contextlib.chdir(root):
        register_heart_model(source, name=HEART, alias=None)
        register_raw_model(source, BROKEN, {"MLmodel": b"flavors: {}\n", "x.txt": b"x"})
    heart_folder = stored_folder(source, HEART)
    broken_folder = stored_folder(source, BROKEN)
    box = AzureMLBox(root / "box", provisioning_seconds=0.2).start()
    try:
        workspace = box.workspace(SUBSCRIPTION, RESOURCE_GROUP, WORKSPACE)
        registry = box.registry(SUBSCRIPTION, RESOURCE_GROUP, REGISTRY, start_backend=False)
        with pytest.MonkeyPatch.context() as patch:
            for key in box.ENV_TO_REMOVE:
                patch.delenv(key, raising=False)
            for key, value in box.env().items():
                patch.setenv(key, value)
            client = mlflow.MlflowClient(tracking_uri=workspace.mlflow_uri,
                                         registry_uri=workspace.mlflow_uri)
            for name, folder in ((HEART, heart_folder), (BROKEN, broken_folder)):
                client.create_registered_model(name)
                client.create_model_version(name, source=folder.as_uri())
        yield EndpointBox(box, workspace, registry, heart_folder)
    finally:
        box.stop()


@pytest.fixture
def env(endpoint_box: EndpointBox, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    box = endpoint_box.box
    for key in box.ENV_TO_REMOVE:
        monkeypatch.delenv(key, raising=False)
    values = box.env()
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    box.clear_faults()
    box.clear_requests()
    box.provisioning_seconds = 0.2
    box.serve_deployments = True
    try:
        yield values
    finally:
        box.clear_faults()
        box.provisioning_seconds = 0.2
        box.serve_deployments = True
        assert box.wait_for_endpoint_operations(120)


def _ml_client() -> Any:
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    return MLClient(DefaultAzureCredential(), SUBSCRIPTION, RESOURCE_GROUP, WORKSPACE)


def _endpoint(name: str, auth_mode: str = "key") -> Any:
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    return ManagedOnlineEndpoint(name=name, auth_mode=auth_mode)


def _deployment(name: str, endpoint: str, model: str = f"azureml:{HEART}:1") -> Any:
    from azure.ai.ml.entities import ManagedOnlineDeployment

    return ManagedOnlineDeployment(name=name, endpoint_name=endpoint, model=model,
                                   instance_type="Standard_DS3_v2", instance_count=1)


def _payload(rows: int = 3) -> dict[str, Any]:
    import pandas as pd

    frame = pd.read_csv(HEART_UNLABELED_CSV).head(rows)
    return {"input_data": json.loads(frame.to_json(orient="split"))}


def _score(uri: str, key: str | None, payload: Any = None, **headers: str) -> requests.Response:
    sent = dict(headers)
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    # Through the box's proxy (HTTPS_PROXY from `env`) and its CA, as any client reaches Azure.
    return requests.post(uri, json=_payload() if payload is None else payload, headers=sent,
                         timeout=60)


def _arm(box: AzureMLBox, method: str, path: str, body: Any = None,
         api_version: str = "2024-04-01") -> requests.Response:
    return requests.request(
        method, f"{box.url}{path}", params={"api-version": api_version}, json=body,
        headers={"Authorization": f"Bearer {box.issue_token()}"}, timeout=30,
        verify=str(box.ca_bundle))


def _endpoint_path(workspace: AzureMLResource, endpoint: str) -> str:
    return f"{workspace.arm_id}/onlineEndpoints/{endpoint}"


@pytest.fixture(scope="module")
def served(endpoint_box: EndpointBox) -> Iterator[str]:
    """Endpoint SERVED with deployment `blue` (the heart classifier, really served) taking all
    traffic; created once for the scoring tests."""
    box = endpoint_box.box
    with pytest.MonkeyPatch.context() as patch:
        for key in box.ENV_TO_REMOVE:
            patch.delenv(key, raising=False)
        for key, value in box.env().items():
            patch.setenv(key, value)
        ml = _ml_client()
        ml.online_endpoints.begin_create_or_update(_endpoint(SERVED)).result()
        ml.online_deployments.begin_create_or_update(_deployment("blue", SERVED)).result()
        endpoint = ml.online_endpoints.get(SERVED)
        endpoint.traffic = {"blue": 100}
        ml.online_endpoints.begin_create_or_update(endpoint).result()
    yield SERVED


# -- endpoints ------------------------------------------------------------------------------------


def test_endpoint_create_get_list_delete_are_long_running_operations(
    endpoint_box: EndpointBox, env: dict[str, str], no_egress: EgressGuard
) -> None:
    from azure.core.exceptions import ResourceNotFoundError

    box, ws = endpoint_box.box, endpoint_box.workspace
    ml = _ml_client()

    poller = ml.online_endpoints.begin_create_or_update(_endpoint("ep-lro"))
    created = poller.result()

    assert created.provisioning_state == "Succeeded"
    assert created.scoring_uri == f"https://ep-lro.{ws.location}.inference.ml.azure.com/score"
    put = next(r for r in box.requests if r.method == "PUT" and r.route == "endpoints")
    assert put.status == 201 and put.query["api-version"] == "2022-02-01-preview"
    assert any("/mfeOperationsStatus/oe:" in r.path for r in box.requests)
    assert "ep-lro" in [e.name for e in ml.online_endpoints.list()]
    assert ml.online_endpoints.get("ep-lro").auth_mode == "key"

    box.provisioning_seconds = 1.5
    deleting = ml.online_endpoints.begin_delete("ep-lro")
    # ARM shows the operation on the resource while it runs.
    assert ml.online_endpoints.get("ep-lro").provisioning_state == "Deleting"
    deleting.result()

    with pytest.raises(ResourceNotFoundError):
        ml.online_endpoints.get("ep-lro")
    delete = next(r for r in box.requests if r.method == "DELETE")
    assert delete.status == 202
    assert [r.status for r in box.requests if "/mfeOperationResults/" in r.path][-1] == 200
    assert box.endpoint_api_versions["OnlineEndpoints_Delete"] == {"2022-02-01-preview"}
    assert no_egress.attempts == [] and box.blocked_egress == []


def test_a_write_while_an_operation_runs_is_a_409_conflict(
    endpoint_box: EndpointBox, env: dict[str, str]
) -> None:
    from azure.core.exceptions import HttpResponseError

    box, ws = endpoint_box.box, endpoint_box.workspace
    ml = _ml_client()
    ml.online_endpoints.begin_create_or_update(_endpoint("ep-busy")).result()
    box.provisioning_seconds = 3.0

    endpoint = ml.online_endpoints.get("ep-busy")
    endpoint.tags = {"round": "1"}
    updating = ml.online_endpoints.begin_create_or_update(endpoint)
    assert ml.online_endpoints.get("ep-busy").provisioning_state == "Updating"
    endpoint.tags = {"round": "2"}
    with pytest.raises(HttpResponseError) as conflict:
        ml.online_endpoints.begin_create_or_update(endpoint)
    deployment = _arm(box, "PUT", f"{_endpoint_path(ws, 'ep-busy')}/deployments/d1", {
        "location": ws.location, "sku": {"name": "Default", "capacity": 1},
        "properties": {"endpointComputeType": "Managed",
                       "model": f"{ws.arm_id}/models/{HEART}/versions/1"}})
    updating.result()

    assert conflict.value.status_code == 409
    assert deployment.status_code == 409
    assert "Updating provisioning state" in deployment.json()["error"]["message"]
    assert ml.online_endpoints.get("ep-busy").tags == {"round": "1"}
    ml.online_endpoints.begin_delete("ep-busy").result()


def test_traffic_must_name_existing_deployments_and_add_up(
    endpoint_box: EndpointBox, env: dict[str, str]
) -> None:
    box, ws = endpoint_box.box, endpoint_box.workspace
    path = _endpoint_path(ws, "ep-traffic")
    base = {"location": ws.location, "properties": {"authMode": "Key"}}
    assert _arm(box, "PUT", path, base).status_code == 201
    assert box.wait_for_endpoint_operations(30)
    box.serve_deployments = False  # ARM semantics only: no model server for these
    for name in ("a", "b"):
        put = _arm(box, "PUT", f"{path}/deployments/{name}", {
            "location": ws.location, "properties": {
                "endpointComputeType": "Managed",
                "model": f"{ws.arm_id}/models/{HEART}/versions/1"}})
        assert put.status_code == 201, put.text
        assert box.wait_for_endpoint_operations(30)

    def put_traffic(traffic: dict[str, int], mirror: dict[str, int] | None = None) -> int:
        body = {**base, "properties": {"authMode": "Key", "traffic": traffic,
                                       "mirrorTraffic": mirror or {}}}
        status = _arm(box, "PUT", path, body).status_code
        assert box.wait_for_endpoint_operations(30)
        return status

    assert put_traffic({"a": 60, "c": 40}) == 400  # no deployment c
    assert put_traffic({"a": 60, "b": 30}) == 400  # 90, not 100
    assert put_traffic({"a": 101}) == 400
    assert put_traffic({"a": 100}, {"b": 60}) == 400  # mirror at most 50
    assert put_traffic({"a": 70, "b": 30}, {"b": 0}) == 200
    got = _arm(box, "GET", path).json()["properties"]
    assert got["traffic"] == {"a": 70, "b": 30}
    assert got["provisioningState"] == "Succeeded"
    # PATCH (tags, identity): 202 + Location, which answers the resource once done.
    patched = _arm(box, "PATCH", path, {"tags": {"team": "box"}})
    assert patched.status_code == 202
    assert box.wait_for_endpoint_operations(30)
    result = requests.get(patched.headers["Location"], timeout=30, verify=str(box.ca_bundle),
                          headers={"Authorization": f"Bearer {box.issue_token()}"})
    assert result.status_code == 200 and result.json()["tags"] == {"team": "box"}
    assert _arm(box, "DELETE", path).status_code == 202
    assert box.wait_for_endpoint_operations(30)
    assert _arm(box, "GET", path).status_code == 404


# -- deployments ----------------------------------------------------------------------------------


def test_a_deployment_serves_the_model_through_the_scoring_uri_with_the_key(
    endpoint_box: EndpointBox, served: str, env: dict[str, str], no_egress: EgressGuard
) -> None:
    box = endpoint_box.box
    ml = _ml_client()
    endpoint = ml.online_endpoints.get(served)
    keys = ml.online_endpoints.get_keys(served)

    scored = _score(endpoint.scoring_uri, keys.primary_key)
    secondary = _score(endpoint.scoring_uri, keys.secondary_key)
    no_key = _score(endpoint.scoring_uri, None)
    wrong_key = _score(endpoint.scoring_uri, "not-the-key")
    (tmp := Path("request.json")).write_text(json.dumps(_payload(2)))
    invoked = ml.online_endpoints.invoke(served, request_file=str(tmp))

    assert scored.status_code == 200, scored.text
    predictions = scored.json()
    assert len(predictions) == 3 and set(predictions) <= {0, 1}
    assert scored.headers["azureml-model-deployment"] == "blue"
    assert secondary.status_code == 200
    assert no_key.status_code == 401 and wrong_key.status_code == 401
    assert json.loads(invoked) == predictions[:2]
    deployment = ml.online_deployments.get("blue", served)
    assert deployment.provisioning_state == "Succeeded"
    assert deployment.model.endswith(f"/models/{HEART}/versions/1")
    assert endpoint.traffic == {"blue": 100}
    tunnels = [r.path for r in box.requests_for("proxy")]
    assert f"{served}.{endpoint_box.workspace.location}.inference.ml.azure.com:443" in tunnels
    assert no_egress.attempts == [] and box.blocked_egress == []


def test_the_front_door_maps_model_errors_sizes_and_unknown_deployments(
    endpoint_box: EndpointBox, served: str, env: dict[str, str]
) -> None:
    ml = _ml_client()
    uri = ml.online_endpoints.get(served).scoring_uri
    key = ml.online_endpoints.get_keys(served).primary_key

    model_error = _score(uri, key, {"not_input_data": []})
    too_big = _score(uri, key, {"input_data": "x" * 1_600_000})
    unknown = _score(uri, key, **{"azureml-model-deployment": "green"})
    by_header = _score(uri, key, **{"azureml-model-deployment": "blue"})

    # The inference server answers 400 for a body without input_data; the front door: 424.
    assert model_error.status_code == 424
    assert model_error.headers["ms-azureml-model-error-statuscode"] == "400"
    assert model_error.headers["ms-azureml-model-error-reason"] == "model_error"
    assert "input_data" in model_error.text
    assert too_big.status_code == 413
    assert unknown.status_code == 404
    assert by_header.status_code == 200


def test_traffic_update_routes_and_mirrors_requests(
    endpoint_box: EndpointBox, served: str, env: dict[str, str]
) -> None:
    box, ws = endpoint_box.box, endpoint_box.workspace
    ml = _ml_client()
    uri = ml.online_endpoints.get(served).scoring_uri
    key = ml.online_endpoints.get_keys(served).primary_key
    box.serve_deployments = False  # `green` only takes mirrored copies: no server needed
    ml.online_deployments.begin_create_or_update(_deployment("green", served)).result()
    green = box.online_endpoint(ws, served).deployments["green"]  # type: ignore[union-attr]
    try:
        endpoint = ml.online_endpoints.get(served)
        endpoint.traffic = {"blue": 0, "green": 0}
        ml.online_endpoints.begin_create_or_update(endpoint).result()
        no_traffic = _score(uri, key)
        still_by_header = _score(uri, key, **{"azureml-model-deployment": "blue"})

        endpoint.traffic = {"blue": 100}
        endpoint.mirror_traffic = {"green": 50}
        ml.online_endpoints.begin_create_or_update(endpoint).result()
        answers = [_score(uri, key) for _ in range(4)]
        deadline = time.monotonic() + 30
        while green.mirrored < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        endpoint = ml.online_endpoints.get(served)
        endpoint.traffic, endpoint.mirror_traffic = {"blue": 100}, {}
        ml.online_endpoints.begin_create_or_update(endpoint).result()
        ml.online_deployments.begin_delete("green", served).result()

    # Troubleshooting guide: no deployment with positive weight -> 404.
    assert no_traffic.status_code == 404
    assert still_by_header.status_code == 200
    assert [a.status_code for a in answers] == [200] * 4
    assert {a.headers["azureml-model-deployment"] for a in answers} == {"blue"}
    assert green.mirrored == 2 and green.scored == 0
    assert "green" not in box.online_endpoint(ws, served).deployments  # type: ignore[union-attr]


def test_get_logs_reads_the_model_server_and_storage_initializer(
    endpoint_box: EndpointBox, served: str, env: dict[str, str]
) -> None:
    ml = _ml_client()
    _score(ml.online_endpoints.get(served).scoring_uri,
           ml.online_endpoints.get_keys(served).primary_key)

    server = ml.online_deployments.get_logs("blue", served, lines=50)
    storage = ml.online_deployments.get_logs("blue", served, lines=50,
                                             container_type="storage-initializer")

    assert "POST /score" in server
    assert len(server.splitlines()) <= 50
    assert "MLmodel" in storage and "Downloading model" in storage


def test_an_unknown_model_version_fails_the_deployment(
    endpoint_box: EndpointBox, served: str, env: dict[str, str]
) -> None:
    from azure.core.exceptions import HttpResponseError

    box = endpoint_box.box
    ml = _ml_client()

    with pytest.raises(HttpResponseError) as failed:
        ml.online_deployments.begin_create_or_update(
            _deployment("missing", served, f"azureml:{HEART}:99")).result()

    assert "not found" in str(failed.value)
    assert ml.online_deployments.get("missing", served).provisioning_state == "Failed"
    status = [r for r in box.requests if "/mfeOperationsStatus/od:" in r.path]
    assert status and status[-1].status == 200
    ml.online_deployments.begin_delete("missing", served).result()


def test_a_model_the_server_cannot_load_fails_with_its_logs(
    endpoint_box: EndpointBox, served: str, env: dict[str, str]
) -> None:
    from azure.core.exceptions import HttpResponseError

    ml = _ml_client()

    with pytest.raises(HttpResponseError) as failed:
        ml.online_deployments.begin_create_or_update(
            _deployment("broken", served, f"azureml:{BROKEN}:1")).result()
    logs = ml.online_deployments.get_logs("broken", served, lines=200)

    assert "ResourceNotReady" in str(failed.value)
    assert ml.online_deployments.get("broken", served).provisioning_state == "Failed"
    assert logs.strip()
    ml.online_deployments.begin_delete("broken", served).result()


def test_a_registry_model_version_is_deployed_from_the_registry_storage(
    endpoint_box: EndpointBox, served: str, env: dict[str, str]
) -> None:
    box, registry = endpoint_box.box, endpoint_box.registry
    files = {p.relative_to(endpoint_box.heart_folder).as_posix(): p.read_bytes()
             for p in endpoint_box.heart_folder.rglob("*") if p.is_file()}
    box.add_registry_version(registry, "heart-shared", "3", files)
    box.serve_deployments = False
    ml = _ml_client()

    done = ml.online_deployments.begin_create_or_update(_deployment(
        "shared", served, f"azureml://registries/{REGISTRY}/models/heart-shared/versions/3"))
    deployment = done.result()
    storage = ml.online_deployments.get_logs("shared", served, lines=20,
                                             container_type="storage-initializer")
    ml.online_deployments.begin_delete("shared", served).result()

    assert deployment.provisioning_state == "Succeeded"
    assert f"{len(files)} files" in storage


def test_aml_token_endpoints_score_with_their_token_and_faults_apply(
    endpoint_box: EndpointBox, served: str, env: dict[str, str]
) -> None:
    box = endpoint_box.box
    ml = _ml_client()
    ml.online_endpoints.begin_create_or_update(_endpoint("ep-token", "aml_token")).result()
    uri = ml.online_endpoints.get("ep-token").scoring_uri
    token = ml.online_endpoints.get_keys("ep-token")

    with_token = _score(uri, token.access_token)
    without = _score(uri, "a-guess")
    # AADToken: an Entra ID token of an identity that may use the workspace (azure-ai-ml gets
    # it from its credential for https://ml.azure.com).
    ml.online_endpoints.begin_create_or_update(_endpoint("ep-aad", "aad_token")).result()
    aad_uri = ml.online_endpoints.get("ep-aad").scoring_uri
    aad = _score(aad_uri, ml.online_endpoints.get_keys("ep-aad").access_token)
    aad_with_aml_token = _score(aad_uri, token.access_token)
    ml.online_endpoints.begin_delete("ep-aad").result()
    box.inject_fault(route="scoring", status=429, retry_after=1)
    served_uri = ml.online_endpoints.get(served).scoring_uri
    throttled = _score(served_uri, ml.online_endpoints.get_keys(served).primary_key)
    ml.online_endpoints.begin_delete("ep-token").result()

    assert token.expiry_time_utc > time.time()
    assert with_token.status_code == 404  # authenticated; no deployment takes traffic
    assert without.status_code == 401
    assert aad.status_code == 404 and aad_with_aml_token.status_code == 401
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "1"


def test_deleting_the_endpoint_deletes_its_deployments_and_stops_their_servers(
    endpoint_box: EndpointBox, served: str, env: dict[str, str]
) -> None:
    from azure.core.exceptions import ResourceNotFoundError

    box, ws = endpoint_box.box, endpoint_box.workspace
    ml = _ml_client()
    blue = box.online_endpoint(ws, served).deployments["blue"]  # type: ignore[union-attr]
    container = blue.container
    assert container is not None and container.running()

    ml.online_endpoints.begin_delete(served).result()

    assert not container.running()
    assert box.online_endpoint(ws, served) is None
    with pytest.raises(ResourceNotFoundError):
        ml.online_deployments.get("blue", served)


def test_regenerated_keys_replace_the_old_ones_and_arm_faults_apply(
    endpoint_box: EndpointBox, env: dict[str, str]
) -> None:
    box = endpoint_box.box
    ml = _ml_client()
    ml.online_endpoints.begin_create_or_update(_endpoint("ep-keys")).result()
    uri = ml.online_endpoints.get("ep-keys").scoring_uri
    before = ml.online_endpoints.get_keys("ep-keys")

    ml.online_endpoints.begin_regenerate_keys("ep-keys", key_type="secondary").result()
    after = ml.online_endpoints.get_keys("ep-keys")
    box.inject_fault(route="endpoints", method="GET", status=503, retry_after=0)
    survived = ml.online_endpoints.get("ep-keys")  # azure-core retries the 503
    # Authenticated with the new key (no deployment takes traffic: 404), refused with the old.
    new_key = _score(uri, after.secondary_key)
    old_key = _score(uri, before.secondary_key)
    ml.online_endpoints.begin_delete("ep-keys").result()

    assert after.primary_key == before.primary_key
    assert after.secondary_key != before.secondary_key
    assert survived.name == "ep-keys"
    assert any(r.route == "endpoints" and r.status == 503 and r.fault for r in box.requests)
    assert new_key.status_code == 404 and old_key.status_code == 401


def test_the_api_versions_azure_ai_ml_used_are_recorded(
    endpoint_box: EndpointBox, env: dict[str, str]
) -> None:
    from azure.core.exceptions import HttpResponseError

    ml = _ml_client()
    ml.online_endpoints.begin_create_or_update(_endpoint("ep-versions")).result()
    with pytest.raises(HttpResponseError):
        ml.online_deployments.begin_create_or_update(
            _deployment("none", "ep-versions", f"azureml:{HEART}:98")).result()
    ml.online_endpoints.begin_delete("ep-versions").result()
    used = endpoint_box.box.endpoint_api_versions
    print(json.dumps({k: sorted(v) for k, v in sorted(used.items())}, indent=1))

    # azure-ai-ml 1.35: endpoints at 2022-02-01-preview, deployments at 2023-04-01-preview
    # (the raw requests of this module add 2024-04-01).
    assert "2022-02-01-preview" in used["OnlineEndpoints_CreateOrUpdate"]
    assert "2023-04-01-preview" in used["OnlineDeployments_CreateOrUpdate"]
    assert set().union(*used.values()) <= {"2022-02-01-preview", "2023-04-01-preview",
                                           "2024-04-01"}
