"""Local deploys that overlap, outlive their --timeout, fail over an idle deployment, or are
interrupted.

Each leaves the endpoint exactly as the rules say: one of two concurrent deploys wins and the
other changes nothing; a load that ends after its deploy timed out and rolled back is
discarded, never served; a failed replacement of the idle deployment of blue/green leaves the
one that was there; the smoke test is bounded by --timeout; the load of an interrupted deploy
shows as Creating and takes neither traffic nor another deploy until it ends. Real servers
and models (loaders that sleep, tests/support/custom_models.py); nothing mocked.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cli import cli
from support.custom_models import custom_model, mlmodel_text
from support.models import register_heart_model, register_raw_model, trained_heart_model

pytestmark = pytest.mark.timeout(600)

NAME = "race-heart"
CONSOLE = Path(sys.executable).with_name("amlpromote")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("deploy-races")
    (root / "registry").mkdir()
    registry = f"sqlite:///{root / 'registry' / 'mlflow.db'}"
    data = root / "data"
    example = trained_heart_model().example
    versions = {
        "heart1": f"{NAME}/{register_heart_model(registry, NAME, alias=None)}",
        "heart2": f"{NAME}/{register_heart_model(registry, NAME, alias=None)}",
    }
    for key, mode in (("slow_load", "slow-load:6"), ("slow_predict", "slow-predict:30")):
        number = register_raw_model(registry, f"race-{key}",
                                    custom_model("race_loader", mode, example))
        versions[key] = f"race-{key}/{number}"
    unloadable = custom_model("race_loader", "raise", example)
    unloadable["MLmodel"] = mlmodel_text("amlpromote_no_such_flavor", with_code=False)
    number = register_raw_model(registry, "race-unloadable", unloadable)
    versions["unloadable"] = f"race-unloadable/{number}"
    env = {"AMLPROMOTE_DATA_DIR": str(data)}
    made: list[str] = []
    yield {"registry": registry, "env": env, "data": data, "v": versions, "made": made}
    for endpoint in made:
        cli("endpoints", "delete", endpoint, "--local", env=env)
    for state in data.glob("endpoints/*/state.json"):
        pid = json.loads(state.read_text()).get("pid")
        if pid:
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)


def deploy(world: dict[str, Any], endpoint: str, ref: str, *extra: str) -> Any:
    if endpoint not in world["made"]:
        world["made"].append(endpoint)
    return cli("deploy", ref, "--endpoint", endpoint, "--target", world["registry"],
               "-o", "json", *extra, env=world["env"])


def deploy_in_background(world: dict[str, Any], endpoint: str, ref: str,
                         *extra: str) -> subprocess.Popen[str]:
    """The console script in a process of its own: a test can signal it, or race it."""
    return subprocess.Popen(
        [str(CONSOLE), "deploy", ref, "--endpoint", endpoint, "--target", world["registry"],
         *extra], env={**os.environ, **world["env"]}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def show(world: dict[str, Any], endpoint: str) -> dict[str, Any]:
    run = cli("endpoints", "show", endpoint, "--local", "-o", "json", env=world["env"])
    assert run.code == 0, run.both
    return run.document


def deployments(document: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {d["name"]: (d["state"], d["model"]) for d in document["deployments"]}


def test_of_two_concurrent_deploys_one_wins_and_the_other_changes_nothing(
        world: dict[str, Any]) -> None:
    endpoint = "race-two"
    assert deploy(world, endpoint, world["v"]["heart1"]).code == 0
    before = show(world, endpoint)

    first = deploy_in_background(world, endpoint, world["v"]["slow_load"], "--traffic", "30",
                                 "-o", "json")
    try:
        lock = world["data"] / "endpoints" / f".{endpoint}.deploy-lock"
        deadline = time.monotonic() + 60
        while not (lock.exists() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first deploy never took its lock"
            time.sleep(0.05)
        second = deploy(world, endpoint, world["v"]["heart2"], "--traffic", "20")
        assert second.code == 1, second.both
        assert f"another deploy to local endpoint '{endpoint}' is running (pid {first.pid})" \
            in second.stderr, second.stderr
        assert "Traceback" not in second.both
        # The second deploy changed nothing, even while the first one is still under way.
        assert deployments(show(world, endpoint)).get("blue") == deployments(before)["blue"]
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, out + err
    after = show(world, endpoint)
    assert after["traffic"] == {"blue": 70, "green": 30}
    assert deployments(after)["green"][1].endswith(f"models:/{world['v']['slow_load']}")


def test_a_load_that_outlives_the_timeout_is_rolled_back_for_good(
        world: dict[str, Any]) -> None:
    endpoint = "race-timeout"
    assert deploy(world, endpoint, world["v"]["heart1"]).code == 0
    before = show(world, endpoint)
    started = time.monotonic()
    run = deploy(world, endpoint, world["v"]["slow_load"], "--timeout", "2s")
    assert run.code == 1, run.both
    assert "rolled back" in run.stderr and "deployment green deleted" in run.stderr, run.stderr
    # The model's load (6 s) ends after the rollback: it must not come back as a deployment.
    time.sleep(max(0.0, 6 + 3 - (time.monotonic() - started)))
    after = show(world, endpoint)
    assert deployments(after) == deployments(before)
    assert after["traffic"] == before["traffic"] == {"blue": 100}


def test_a_failed_replacement_of_the_idle_deployment_leaves_it_as_it_was(
        world: dict[str, Any]) -> None:
    endpoint = "race-idle"
    assert deploy(world, endpoint, world["v"]["heart1"]).code == 0
    idle = deploy(world, endpoint, world["v"]["heart2"], "--traffic", "0")
    assert idle.code == 0, idle.both
    before = show(world, endpoint)
    assert deployments(before)["green"][0] == "Succeeded"

    failed = deploy(world, endpoint, world["v"]["unloadable"])
    assert failed.code == 1, failed.both
    assert "deployment green still serves its previous model" in failed.stderr, failed.stderr
    after = show(world, endpoint)
    assert deployments(after) == deployments(before)
    assert after["traffic"] == before["traffic"]


def test_the_smoke_test_is_bounded_by_the_timeout(world: dict[str, Any]) -> None:
    endpoint = "race-smoke"
    assert deploy(world, endpoint, world["v"]["heart1"]).code == 0
    before = show(world, endpoint)
    started = time.monotonic()
    run = deploy(world, endpoint, world["v"]["slow_predict"], "--timeout", "20s")
    # The model answers after 30 s; the rollout gives up at its 20 s deadline.
    assert time.monotonic() - started < 29, run.both
    assert run.code == 1, run.both
    assert "failed its smoke test" in run.stderr and "rolled back" in run.stderr, run.stderr
    assert show(world, endpoint)["traffic"] == before["traffic"]


def test_an_interrupted_deploy_leaves_its_load_visible_and_traffic_untouched(
        world: dict[str, Any]) -> None:
    endpoint = "race-interrupt"
    assert deploy(world, endpoint, world["v"]["heart1"]).code == 0
    before = show(world, endpoint)
    first = deploy_in_background(world, endpoint, world["v"]["slow_load"])
    try:
        state = world["data"] / "endpoints" / endpoint / "state.json"
        deadline = time.monotonic() + 60
        while json.loads(state.read_text()).get("deployments", {}).get(
                "green", {}).get("state") != "Creating":
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the load of green never showed as Creating"
            time.sleep(0.05)
        first.send_signal(signal.SIGINT)  # Ctrl-C while the server loads the model (6 s)
        out, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, out + err
    assert "deployment green was being created" in err and "Traceback" not in err, err
    assert f"amlpromote endpoints show {endpoint} --local" in err, err  # where it looked

    # The server's load goes on: it is shown, and nothing may use green until it ends.
    during = show(world, endpoint)
    assert deployments(during)["green"][0] == "Creating", during
    assert during["traffic"] == before["traffic"] == {"blue": 100}
    moved = cli("endpoints", "traffic", endpoint, "blue=50", "green=50", "--local",
                env=world["env"])
    assert moved.code == 1 and "still loading its model" in moved.stderr, moved.both
    again = deploy(world, endpoint, world["v"]["heart2"])
    assert again.code == 1, again.both
    assert "deployment green of endpoint 'race-interrupt' is creating" in again.stderr
    assert "interrupted" in again.stderr, again.stderr
    assert show(world, endpoint)["traffic"] == {"blue": 100}

    deadline = time.monotonic() + 60
    while deployments(show(world, endpoint))["green"][0] == "Creating":
        assert time.monotonic() < deadline, "the interrupted load never ended"
        time.sleep(0.2)
    after = show(world, endpoint)
    assert deployments(after)["green"][0] == "Succeeded"
    assert after["traffic"] == {"blue": 100}  # the load ended; nobody moved traffic to it
    logs = cli("endpoints", "logs", endpoint, "--deployment", "green", "--local",
               env=world["env"])
    assert logs.code == 0 and "model loaded" in logs.stdout, logs.both
