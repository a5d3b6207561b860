"""`amlpromote deploy` and `amlpromote endpoints` on local endpoints, end to end through the CLI.

The versions are real MLflow models in a real sqlite registry; each endpoint is the product's
own loopback server process serving them with mlflow. Nothing of ours is mocked. One endpoint
is carried through the module's tests in order (first deploy, no-op redeploy, a canary, two
broken versions rolled back, manual traffic, delete), as a user would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests
from support.cli import cli
from support.custom_models import custom_model, mlmodel_text
from support.models import register_heart_model, register_raw_model, trained_heart_model

pytestmark = pytest.mark.timeout(600)

ENDPOINT = "heart-local"
NAME = "uci-heart-classifier"

@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A registry with the heart model twice and two broken versions, and a data folder whose
    endpoints are deleted at the end whatever happened."""
    root = tmp_path_factory.mktemp("deploy-local")
    registry = f"sqlite:///{root / 'registry' / 'mlflow.db'}"
    (root / "registry").mkdir()
    data = root / "data"
    env = {"AMLPROMOTE_DATA_DIR": str(data), "MLFLOW_ALLOW_FILE_STORE": "true"}
    first = register_heart_model(registry, NAME, alias="champion")
    second = register_heart_model(registry, NAME, alias=None)
    example = trained_heart_model().example
    failing = register_raw_model(registry, "failing-model",
                                 custom_model("failing_loader", "raise", example))
    short = register_raw_model(registry, "short-model",
                               custom_model("short_loader", "short", example))
    missing = custom_model("failing_loader", "raise", example)
    missing["MLmodel"] = mlmodel_text("amlpromote_no_such_flavor", with_code=False)
    unloadable = register_raw_model(registry, "unloadable-model", missing)
    yield {"registry": registry, "env": env, "data": data, "versions": (first, second),
           "failing": failing, "short": short, "unloadable": unloadable, "root": root}
    cli("endpoints", "delete", ENDPOINT, "--local", env=env)
    for state in data.glob("endpoints/*/state.json"):
        pid = json.loads(state.read_text()).get("pid")
        if pid:
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)


def deploy(world: dict[str, Any], ref: str, *extra: str) -> Any:
    return cli("deploy", ref, "--endpoint", ENDPOINT, "--target", world["registry"],
               "-o", "json", *extra, env=world["env"])


def show(world: dict[str, Any]) -> dict[str, Any]:
    run = cli("endpoints", "show", ENDPOINT, "--local", "-o", "json", env=world["env"])
    assert run.code == 0, run.both
    return run.document


def score(world: dict[str, Any], rows: pd.DataFrame, deployment: str | None = None) \
        -> requests.Response:
    endpoint = show(world)
    key = cli("endpoints", "keys", ENDPOINT, "--local", env=world["env"]).stdout.strip()
    headers = {"Authorization": f"Bearer {key}"}
    if deployment:
        headers["azureml-model-deployment"] = deployment
    body = {"input_data": json.loads(rows.to_json(orient="split"))}
    return requests.post(endpoint["scoring_uri"], json=body, headers=headers, timeout=30)


def test_a_dry_run_plans_and_creates_nothing(world: dict[str, Any]) -> None:
    run = deploy(world, f"{NAME}/1", "--dry-run", "--env", "LOG_LEVEL=debug")
    assert run.code == 0, run.both
    plan = run.document
    assert plan["status"] == "planned"
    assert any("--env is not applied on a local endpoint" in w for w in plan["warnings"]), plan
    assert plan["deployment"] == "blue" and plan["created_endpoint"] is True
    assert plan["traffic"] == {"before": {}, "after": {"blue": 100}}
    listed = cli("endpoints", "list", "--local", "-o", "json", env=world["env"])
    assert listed.code == 0 and listed.document["endpoints"] == []
    assert not (world["data"] / "endpoints" / ENDPOINT).exists()


def test_first_deploy_serves_the_model_behind_a_key(world: dict[str, Any],
                                                     heart_frame: pd.DataFrame) -> None:
    run = deploy(world, f"{NAME}@champion")
    assert run.code == 0, run.both
    result = run.document
    assert result["status"] == "deployed"
    assert result["deployment"] == "blue"
    assert result["traffic"] == {"before": {}, "after": {"blue": 100}}
    assert result["model"]["name"] == NAME and result["model"]["version"] == "1"
    assert result["smoke"]["rows"] == 5
    assert result["scoring_uri"].startswith("http://127.0.0.1:")
    rows = heart_frame.head(7)
    answer = score(world, rows)
    assert answer.status_code == 200, answer.text
    assert answer.headers["azureml-model-deployment"] == "blue"
    expected = trained_heart_model().pipeline.predict(rows).tolist()
    assert answer.json() == expected
    # No key, no answer; the key is never in the deploy's output.
    key = cli("endpoints", "keys", ENDPOINT, "--local", env=world["env"]).stdout.strip()
    assert len(key) >= 32 and key not in run.both
    bare = requests.post(result["scoring_uri"], json={"input_data": {}}, timeout=30)
    assert bare.status_code == 401


def test_redeploying_the_live_version_is_a_no_op(world: dict[str, Any]) -> None:
    before = show(world)
    run = deploy(world, f"{NAME}/1")
    assert run.code == 0, run.both
    assert run.document["status"] == "unchanged"
    assert run.document["deployment"] == "blue"
    assert show(world) == before


def test_a_second_version_takes_the_asked_share_after_its_smoke_test(
        world: dict[str, Any], heart_frame: pd.DataFrame) -> None:
    run = deploy(world, f"{NAME}/2", "--traffic", "20")
    assert run.code == 0, run.both
    assert run.document["deployment"] == "green"
    assert run.document["traffic"] == {"before": {"blue": 100},
                                       "after": {"blue": 80, "green": 20}}
    endpoint = show(world)
    assert endpoint["traffic"] == {"blue": 80, "green": 20}
    answered = {score(world, heart_frame.head(1))
                .headers["azureml-model-deployment"] for _ in range(40)}
    assert answered == {"blue", "green"}
    only_green = score(world, heart_frame.head(2), "green")
    assert only_green.status_code == 200
    assert only_green.headers["azureml-model-deployment"] == "green"


@pytest.mark.parametrize(("model", "reason"), [
    ("unloadable", "amlpromote_no_such_flavor"),
    ("failing", "smoke test"),
    ("short", "smoke test"),
])
def test_a_broken_version_is_rolled_back_with_traffic_untouched(
        world: dict[str, Any], model: str, reason: str) -> None:
    before = show(world)
    name = {"unloadable": "unloadable-model", "failing": "failing-model",
            "short": "short-model"}[model]
    run = deploy(world, f"{name}/{world[model]}", "--deployment", "canary", "--traffic", "10")
    assert run.code == 1, run.both
    document = run.document
    assert document["status"] == "rolled_back"
    assert reason in document["error"]
    assert document["traffic"]["after"] == before["traffic"]
    after = show(world)
    assert after["traffic"] == before["traffic"]
    assert [d["name"] for d in after["deployments"]] == [d["name"] for d in
                                                          before["deployments"]]
    assert "rolled back" in run.stderr
    if model == "unloadable":
        # Named once, and the log excerpt is this load's: no traceback of a missing module.
        assert document["error"].count("canary") == 2, document["error"]  # failed; deleted
        assert "Traceback" not in run.stderr and "loading model" in run.stderr, run.stderr


def test_traffic_can_be_moved_back_by_hand_and_a_deployment_deleted(
        world: dict[str, Any], tmp_path: Path) -> None:
    bad = cli("endpoints", "traffic", ENDPOINT, "blue=50", "green=20", "--local",
              env=world["env"])
    assert bad.code == 2 and "add up to 70%" in bad.stderr
    for shares, code, message in [
            (["blue=50", "blue=50"], 2, "names deployment 'blue' twice"),
            (["blue=100", "--mirror", "green=60"], 2, "at most 50% of the traffic"),
            (["purple=100"], 3, "has no deployment purple")]:
        refused = cli("endpoints", "traffic", ENDPOINT, *shares, "--local", env=world["env"])
        assert refused.code == code and message in refused.stderr.splitlines()[0], \
            (shares, refused.both)
    run = cli("endpoints", "traffic", ENDPOINT, "blue=100", "--local", "-o", "json",
              env=world["env"])
    assert run.code == 0, run.both
    assert run.document["traffic"]["after"] == {"blue": 100}
    assert run.document["status"] == "updated"
    same = cli("endpoints", "traffic", ENDPOINT, "blue=100", "green=0", "--local",
               env=world["env"])
    assert same.code == 0 and "unchanged: blue 100%" in same.stdout, same.both
    (tmp_path / "bad.json").write_text('{"input_data": {"columns": ["age"],}}')
    (tmp_path / "good.json").write_text('{"input_data": {"columns": ["age"], "data": [[63]]}}')
    for request, extra, code, message in [
            ("bad.json", (), 2, "bad.json line 1 column 36: not JSON"),
            ("missing.json", (), 3, "missing.json: no such file"),
            (".", (), 2, "--request-file"),  # a folder
            ("good.json", ("--deployment", "purple"), 3, "has no deployment 'purple'")]:
        sent = cli("endpoints", "invoke", ENDPOINT, "--request-file", str(tmp_path / request),
                   *extra, "--local", env=world["env"])
        assert sent.code == code and message in sent.stderr.splitlines()[0], sent.both
    (tmp_path / "rows.csv").write_text("age\n63\n")
    rows = cli("endpoints", "invoke", ENDPOINT, "--request-file", str(tmp_path / "rows.csv"),
               "--local", env=world["env"])
    assert rows.code == 2, rows.both
    assert (f"hint: rows go through amlpromote score --endpoint {ENDPOINT} --input "
            f"{tmp_path / 'rows.csv'} --output - --local") in rows.stderr, rows.both
    gone = cli("endpoints", "delete", ENDPOINT, "--deployment", "green", "--local",
               env=world["env"])
    assert gone.code == 0, gone.both
    assert [d["name"] for d in show(world)["deployments"]] == ["blue"]


def test_mirror_then_a_full_switch_that_retires_the_old_deployment(
        world: dict[str, Any], heart_frame: pd.DataFrame) -> None:
    mirrored = deploy(world, f"{NAME}/2", "--mirror", "20")
    assert mirrored.code == 0, mirrored.both
    assert mirrored.document["deployment"] == "green"
    assert mirrored.document["traffic"]["after"] == {"blue": 100}
    assert mirrored.document["mirror"]["after"] == {"green": 20}
    endpoint = show(world)
    assert endpoint["traffic"] == {"blue": 100} and endpoint["mirror"] == {"green": 20}
    # Requests are answered by blue only; green gets copies.
    answered = {score(world, heart_frame.head(1)).headers["azureml-model-deployment"]
                for _ in range(10)}
    assert answered == {"blue"}
    again = deploy(world, f"{NAME}/2", "--mirror", "20")
    assert again.code == 0 and again.document["status"] == "unchanged", again.both

    switched = deploy(world, f"{NAME}/2", "--retire-old")
    assert switched.code == 0, switched.both
    result = switched.document
    assert result["deployment"] == "green"
    assert result["traffic"]["after"] == {"green": 100}
    assert result["retired"] == ["blue"]
    assert [d["name"] for d in show(world)["deployments"]] == ["green"]


def test_preflight_refuses_a_folder_that_is_not_a_model(world: dict[str, Any]) -> None:
    version = register_raw_model(world["registry"], "not-a-model", {"weights.bin": b"\0" * 16})
    run = deploy(world, f"not-a-model/{version}", "--endpoint", "never-made")
    assert run.code == 2, run.both
    assert "MLmodel" in run.document["error"]
    listed = cli("endpoints", "list", "--local", "-o", "json", env=world["env"])
    assert "never-made" not in [e["name"] for e in listed.document["endpoints"]]


def test_deleting_the_endpoint_stops_its_server(world: dict[str, Any]) -> None:
    state = json.loads((world["data"] / "endpoints" / ENDPOINT / "state.json").read_text())
    pid = int(state["pid"])
    run = cli("endpoints", "delete", ENDPOINT, "--local", env=world["env"])
    assert run.code == 0, run.both
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the endpoint's server (pid {pid}) still runs")
    assert not (world["data"] / "endpoints" / ENDPOINT).exists()
    missing = cli("endpoints", "show", ENDPOINT, "--local", env=world["env"])
    assert missing.code == 3


def test_bad_input_is_refused_before_anything_is_read(world: dict[str, Any],
                                                      tmp_path: Path) -> None:
    wrong_columns = tmp_path / "wrong.csv"
    wrong_columns.write_text("a,b\n1,2\n")
    cases = [
        (("--endpoint", "x"), "endpoint name"),
        (("--smoke-input", str(wrong_columns)), "needs columns it lacks: age"),
        (("--timeout", "soon"), "not a duration"),
        (("--env", "NOEQUALS"), "KEY=VALUE"),
        (("--smoke-input", str(tmp_path)), "a folder, not a file"),
        (("--timeout", "0"), "the rollout needs some time"),
        (("--auth-mode", "password"), "--auth-mode"),
        (("--auth-mode", "aml_token"), "local endpoints use key auth"),
    ]
    for extra, expected in cases:
        args = ["deploy", f"{NAME}/1", "--target", world["registry"], "-o", "json"]
        if extra[0] != "--endpoint":
            args += ["--endpoint", "heart-bad"]
        run = cli(*args, *extra, env=world["env"])
        assert run.code == 2, (extra, run.both)
        assert expected in run.document["error"], (extra, run.document)
        assert "Traceback" not in run.both
    # A missing input file is "not found" (README "Exit codes"), as score's --input is.
    missing = cli("deploy", f"{NAME}/1", "--target", world["registry"], "-o", "json",
                  "--endpoint", "heart-bad", "--smoke-input", str(tmp_path / "missing.csv"),
                  env=world["env"])
    assert missing.code == 3, missing.both
    assert "no such file" in missing.document["error"], missing.document
    listed = cli("endpoints", "list", "--local", "-o", "json", env=world["env"])
    assert "heart-bad" not in [e["name"] for e in listed.document["endpoints"]]
