"""`amlpromote deploy` and `amlpromote endpoints` against Azure ML managed online endpoints (Azure
ML in a box), end to end through the CLI.

The product reaches the box as it reaches Azure: azure-ai-ml's ARM calls with the managed
identity's token, long-running operations, keys, and scoring URIs on
`*.inference.ml.azure.com` served by Microsoft's real azureml-inference-server-http loading the
version's files from the box's storage. Expectations are read from the box's own records
(endpoint traffic, the ARM requests it saw), never from the product.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests
from azureml_box.testing import (
    REGISTRY,
    RESOURCE_GROUP,
    SUBSCRIPTION,
    WORKSPACE,
    BoxWorkspaces,
    assert_no_secrets,
)
from support.cli import Run, cli
from support.custom_models import custom_model, mlmodel_text
from support.models import register_heart_model, register_raw_model, trained_heart_model
from support.staging import start_cli

pytest_plugins = ["azureml_box.fixtures"]
pytestmark = pytest.mark.timeout(600)

ENDPOINT = "heart-box"
COORDINATES = ("--workspace", WORKSPACE, "--resource-group", RESOURCE_GROUP,
               "--subscription", SUBSCRIPTION, "--credential", "managed-identity")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A sqlite source with the heart classifier twice and three broken versions."""
    root = tmp_path_factory.mktemp("deploy-azureml-source")
    uri = "sqlite:///" + str(root / "mlflow.db")
    example = trained_heart_model().example
    register_heart_model(uri, name="heart-src", alias=None)
    register_heart_model(uri, name="heart-src", alias=None)
    register_raw_model(uri, "failing-src", custom_model("failing_loader", "raise", example))
    unloadable = custom_model("failing_loader", "raise", example)
    unloadable["MLmodel"] = mlmodel_text("amlpromote_no_such_flavor", with_code=False)
    register_raw_model(uri, "unloadable-src", unloadable)
    return {"uri": uri, "root": root}


@pytest.fixture(scope="module")
def names(azureml_box: BoxWorkspaces) -> dict[str, str]:
    # Unique per module run: the box is shared by the whole session.
    suffix = str(int(time.time() * 1000))[-6:]
    return {"heart": f"heart-{suffix}", "failing": f"failing-{suffix}",
            "unloadable": f"unloadable-{suffix}"}


@pytest.fixture(scope="module", autouse=True)
def strict_retry_after(azureml_box: BoxWorkspaces) -> Any:
    """The product is tested with the Retry-After the REST spec declares (10 s at least), not
    the box's 1 s for its own tests: deploy never waits on azure-ai-ml's pollers for its pace
    (it reads the resources itself), and this shows it."""
    box = azureml_box.box
    saved = box.lro_retry_after
    box.lro_retry_after = 10
    yield
    box.lro_retry_after = saved


def deploy(ref: str, *extra: str) -> Run:
    return cli("deploy", ref, "--endpoint", ENDPOINT, *COORDINATES, "-o", "json", *extra)


def promote(source: dict[str, Any], ref: str, name: str) -> Run:
    return cli("copy-model", ref, "--source", source["uri"], "--target-name", name,
               *COORDINATES, "-o", "json")


def endpoint_record(box: BoxWorkspaces) -> Any:
    return box.box.online_endpoint(box.workspace, ENDPOINT)


def traffic_of(box: BoxWorkspaces) -> dict[str, int]:
    record = endpoint_record(box)
    return {} if record is None else {k: v for k, v in record.traffic.items() if v}


def endpoint_writes(box: BoxWorkspaces) -> list[Any]:
    return [r for r in box.box.requests if r.method in ("PUT", "PATCH", "DELETE")
            and "/onlineEndpoints/" in r.path]


def test_first_deploy_creates_the_endpoint_and_serves_behind_its_key(
        azureml_box: BoxWorkspaces, box_env: dict[str, str], source: dict[str, Any],
        names: dict[str, str], heart_frame: pd.DataFrame, tmp_path: Path) -> None:
    assert promote(source, "heart-src/1", names["heart"]).code == 0
    dry = deploy(f"{names['heart']}/1", "--dry-run")
    assert dry.code == 0, dry.both
    assert dry.document["status"] == "planned" and dry.document["created_endpoint"] is True
    assert endpoint_record(azureml_box) is None and endpoint_writes(azureml_box) == []

    run = deploy(f"{names['heart']}/1")
    assert run.code == 0, run.both
    result = run.document
    assert result["status"] == "deployed" and result["deployment"] == "blue"
    assert result["model"]["asset_id"].endswith(
        f"/workspaces/{WORKSPACE}/models/{names['heart']}/versions/1")
    assert result["smoke"]["rows"] == 5
    assert re.match(rf"^https://{ENDPOINT}\.[a-z0-9]+\.inference\.ml\.azure\.com/score$",
                    result["scoring_uri"])
    assert traffic_of(azureml_box) == {"blue": 100}
    assert_no_secrets(run.both, box_env)
    key = cli("endpoints", "keys", ENDPOINT, *COORDINATES).stdout.strip()
    assert key and key not in run.both

    rows = heart_frame.head(6)
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(
        {"input_data": json.loads(rows.to_json(orient="split"))}))
    invoked = cli("endpoints", "invoke", ENDPOINT, "--request-file", str(request_file),
                  *COORDINATES, "-o", "json")
    assert invoked.code == 0, invoked.both
    assert invoked.document["answer"] == trained_heart_model().pipeline.predict(rows).tolist()
    assert requests.post(result["scoring_uri"], json={}, timeout=30).status_code == 401


def test_redeploying_the_live_version_sends_nothing(azureml_box: BoxWorkspaces,
                                                    box_env: dict[str, str],
                                                    names: dict[str, str]) -> None:
    run = deploy(f"{names['heart']}/1")
    assert run.code == 0, run.both
    assert run.document["status"] == "unchanged"
    assert endpoint_writes(azureml_box) == []


def test_promote_and_canary_a_second_version(azureml_box: BoxWorkspaces,
                                             box_env: dict[str, str], source: dict[str, Any],
                                             names: dict[str, str]) -> None:
    run = cli("deploy", "heart-src/2", "--promote", "--source", source["uri"], "--endpoint",
              ENDPOINT, *COORDINATES, "--traffic", "30", "-o", "json")
    assert run.code == 0, run.both
    # --promote copies under the source's name, then deploys the copy.
    assert run.document["model"]["name"] == "heart-src"
    assert run.document["deployment"] == "green"
    assert run.document["traffic"]["after"] == {"blue": 70, "green": 30}
    assert traffic_of(azureml_box) == {"blue": 70, "green": 30}


@pytest.mark.parametrize("which", ["unloadable", "failing"])
def test_a_broken_version_is_rolled_back_and_traffic_is_untouched(
        azureml_box: BoxWorkspaces, box_env: dict[str, str], source: dict[str, Any],
        names: dict[str, str], which: str) -> None:
    assert promote(source, f"{which}-src/1", names[which]).code == 0
    before = traffic_of(azureml_box)
    deployments_before = set(endpoint_record(azureml_box).deployments)
    run = deploy(f"{names[which]}/1", "--deployment", "canary", "--traffic", "10")
    assert run.code == 1, run.both
    document = run.document
    assert document["status"] == "rolled_back"
    assert traffic_of(azureml_box) == before
    assert document["traffic"]["after"] == before
    assert set(endpoint_record(azureml_box).deployments) == deployments_before
    # The inference server's own words are in the error's log lines.
    logs = "\n".join(document["logs"])
    expected = "amlpromote_no_such_flavor" if which == "unloadable" else "always fails"
    assert expected in logs or expected in document["error"], document
    # No traffic update was ever sent for the broken deployment.
    assert not [r for r in endpoint_writes(azureml_box)
                if r.method == "PUT" and r.path.rstrip("/").endswith(f"/{ENDPOINT}")]


def test_two_concurrent_deploys_leave_traffic_on_a_whole_deployment(
        azureml_box: BoxWorkspaces, box_env: dict[str, str], names: dict[str, str],
        tmp_path: Path) -> None:
    args = ("deploy", f"{names['heart']}/1", "--endpoint", ENDPOINT, *COORDINATES, "-o",
            "json", "--traffic", "100")
    procs = [start_cli(*args, "--deployment", name, cwd=tmp_path, env=box_env)
             for name in ("one", "two")]
    ended = [p.communicate(timeout=400) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) in ([0, 1], [0, 0]), ended
    live = traffic_of(azureml_box)
    assert sum(live.values()) == 100
    record = endpoint_record(azureml_box)
    for name in live:
        assert record.deployments[name].provisioning_state == "Succeeded"
    if codes != [0, 0]:
        loser = json.loads(ended[codes.index(1)][0])
        assert loser["status"] in ("failed", "rolled_back"), loser


def test_preflight_refuses_an_instance_type_azure_ml_does_not_offer(
        azureml_box: BoxWorkspaces, box_env: dict[str, str], names: dict[str, str]) -> None:
    run = deploy(f"{names['heart']}/1", "--endpoint", "never-made", "--instance-type",
                 "Standard_DS3")
    assert run.code == 2, run.both
    assert "Standard_DS3" in run.document["error"]
    assert "Standard_DS3_v2" in run.document["hint"]
    assert azureml_box.box.online_endpoint(azureml_box.workspace, "never-made") is None


def test_endpoints_commands_show_shift_and_delete(azureml_box: BoxWorkspaces,
                                                  box_env: dict[str, str]) -> None:
    listed = cli("endpoints", "list", *COORDINATES, "-o", "json")
    assert listed.code == 0, listed.both
    assert ENDPOINT in [e["name"] for e in listed.document["endpoints"]]
    shown = cli("endpoints", "show", ENDPOINT, *COORDINATES, "-o", "json")
    assert shown.code == 0, shown.both
    assert {k: v for k, v in shown.document["traffic"].items() if v} == traffic_of(azureml_box)
    live = max(traffic_of(azureml_box), key=lambda d: traffic_of(azureml_box)[d])
    logs = cli("endpoints", "logs", ENDPOINT, "--deployment", live, "--tail", "5",
               *COORDINATES, "-o", "json")
    assert logs.code == 0, logs.both
    assert 0 < len(logs.document["logs"]) <= 5
    moved = cli("endpoints", "traffic", ENDPOINT, f"{live}=100", *COORDINATES, "-o", "json")
    assert moved.code == 0, moved.both
    assert traffic_of(azureml_box) == {live: 100}
    busy = cli("endpoints", "delete", ENDPOINT, "--deployment", live, *COORDINATES)
    assert busy.code == 2 and "traffic" in busy.stderr
    gone = cli("endpoints", "delete", ENDPOINT, *COORDINATES, "-o", "json")
    assert gone.code == 0, gone.both
    assert endpoint_record(azureml_box) is None
    missing = cli("endpoints", "show", ENDPOINT, *COORDINATES)
    assert missing.code == 3, missing.both


def test_a_registry_version_is_served_by_the_named_workspace(
        azureml_box: BoxWorkspaces, box_env: dict[str, str], source: dict[str, Any],
        names: dict[str, str]) -> None:
    name = names["heart"] + "-shared"
    copied = cli("copy-model", "heart-src/1", "--source", source["uri"], "--registry", REGISTRY,
                 "--credential", "managed-identity", "--target-name", name, "-o", "json")
    assert copied.code == 0, copied.both
    version = copied.document["target"]["version"]
    # Without a workspace there is nowhere to put the endpoint.
    nowhere = cli("deploy", f"{name}/{version}", "--endpoint", "heart-shared", "--registry",
                  REGISTRY, "--credential", "managed-identity", "-o", "json")
    assert nowhere.code == 2 and "--workspace" in nowhere.document["hint"], nowhere.both
    run = cli("deploy", f"{name}/{version}", "--endpoint", "heart-shared", "--registry",
              REGISTRY, *COORDINATES, "-o", "json")
    assert run.code == 0, run.both
    assert run.document["model"]["asset_id"] == (
        f"azureml://registries/{REGISTRY}/models/{name}/versions/{version}")
    record = azureml_box.box.online_endpoint(azureml_box.workspace, "heart-shared")
    assert record is not None and {k: v for k, v in record.traffic.items() if v} == {"blue": 100}
    gone = cli("endpoints", "delete", "heart-shared", *COORDINATES)
    assert gone.code == 0, gone.both


def test_sigterm_while_provisioning_leaves_traffic_as_it_was(
        azureml_box: BoxWorkspaces, box_env: dict[str, str], names: dict[str, str],
        tmp_path: Path) -> None:
    import signal

    from support.staging import wait_until

    first = deploy(f"{names['heart']}/1")
    assert first.code == 0, first.both
    before = traffic_of(azureml_box)
    box = azureml_box.box
    box.provisioning_seconds = 8.0
    try:
        proc = start_cli("deploy", f"{names['heart']}/1", "--endpoint", ENDPOINT,
                         "--deployment", "stopped", *COORDINATES, "-o", "json", cwd=tmp_path,
                         env=box_env)

        def provisioning() -> bool:
            record = endpoint_record(azureml_box)
            return record is not None and "stopped" in record.deployments

        wait_until(proc, provisioning, timeout=120)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        box.provisioning_seconds = 0.3
    assert proc.returncode == 143, stdout + stderr
    document = json.loads(stdout)
    assert document["status"] == "failed" and "SIGTERM" in document["error"]
    assert "takes no traffic" in document["error"], document
    # The hint's commands look where this deploy did: the same workspace options.
    assert (f"amlpromote endpoints delete {ENDPOINT} --deployment stopped "
            + " ".join(COORDINATES)) in document["hint"], document["hint"]
    # Azure goes on provisioning it: a deploy to it meanwhile is refused before any write.
    again = deploy(f"{names['heart']}/1", "--deployment", "stopped")
    assert again.code == 1, again.both
    assert "deployment stopped of endpoint" in again.document["error"], again.document
    assert "is creating" in again.document["error"] and "interrupted" in again.document["error"]
    assert traffic_of(azureml_box) == before
    assert box.wait_for_endpoint_operations(timeout=60)
    assert traffic_of(azureml_box) == before
    cleanup = cli("endpoints", "delete", ENDPOINT, "--deployment", "stopped", *COORDINATES)
    assert cleanup.code == 0, cleanup.both
    assert cli("endpoints", "delete", ENDPOINT, *COORDINATES).code == 0
