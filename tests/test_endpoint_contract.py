"""One scoring contract, two implementations: the product's local endpoint
(core/deploy/scoring.py behind local/server.py) and a managed online endpoint of Azure ML in a
box (the box's front door, tests/azureml_box/frontdoor.py, in front of Microsoft's real
azureml-inference-server-http running tests/azureml_box/mlflow_score.py).

The same heart classifier is deployed to both, through the CLI as a user deploys it, and every
request below (good and bad) goes to both: the status, the body (JSON-equal) and the contract
headers must be the same. The box never imports product code, so an agreement here is two
independent readings of Azure ML's contract agreeing, and a disagreement is a bug on one side.
Where they disagreed, the side that did not match the real service was fixed, with the source
cited beside the fix (all in the box's front door: the 424's `ms-azureml-model-error-reason` is
`model_error`, the container's headers pass through, its own refusals say `application/json`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from azureml_box.testing import RESOURCE_GROUP, SUBSCRIPTION, WORKSPACE, BoxWorkspaces
from support import HEART_UNLABELED_CSV
from support.cli import cli
from support.models import register_heart_model, trained_heart_model

pytest_plugins = ["azureml_box.fixtures"]
pytestmark = pytest.mark.timeout(600)

ENDPOINT = "heart-contract"
SOURCE_NAME = "heart-contract-src"
COORDINATES = ("--workspace", WORKSPACE, "--resource-group", RESOURCE_GROUP,
               "--subscription", SUBSCRIPTION, "--credential", "managed-identity")
# Headers the contract fixes: who served, why a 424, the body's type, and the inference
# server's own flag for a failed run() (the front door passes the container's headers on).
CONTRACT_HEADERS = ("azureml-model-deployment", "ms-azureml-model-error-statuscode",
                    "ms-azureml-model-error-reason", "content-type", "x-ms-run-function-failed")
RUN_FAILED = "An unexpected error occurred in scoring script. Check the logs for more info."


@dataclass
class Target:
    """One endpoint serving the heart model, and how a client reaches it."""

    name: str
    scoring_uri: str
    key: str
    deployment: str
    proxies: dict[str, str]
    verify: str | bool

    def post(self, body: bytes, content_type: str | None, key: str | None,
             deployment: str | None) -> requests.Response:
        headers = {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        if deployment is not None:
            headers["azureml-model-deployment"] = deployment
        with requests.Session() as session:
            # Only what is given here: no proxy or CA from this process's environment.
            session.trust_env = False
            return session.post(self.scoring_uri, data=body, headers=headers, timeout=60,
                                proxies=self.proxies, verify=self.verify)


def _rows() -> Any:
    import pandas as pd

    return pd.read_csv(HEART_UNLABELED_CSV).head(5)


def _split(rows: Any) -> dict[str, Any]:
    split: dict[str, Any] = json.loads(rows.to_json(orient="split"))
    assert "index" in split
    return split


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A sqlite registry with the heart classifier (version 1): the local endpoint deploys it
    from here, and copy-model promotes it into the box's workspace."""
    root = tmp_path_factory.mktemp("contract-source")
    uri = "sqlite:///" + str(root / "mlflow.db")
    register_heart_model(uri, name=SOURCE_NAME, alias=None)
    return uri


@contextlib.contextmanager
def _client_environment(home: Path, extra: dict[str, str],
                        remove: tuple[str, ...] = ()) -> Iterator[None]:
    # Module fixtures run before conftest's per-test isolation: isolate here for the CLI runs.
    with pytest.MonkeyPatch.context() as patch:
        for key in list(os.environ):
            if key.startswith("AMLPROMOTE_") or key in remove:
                patch.delenv(key)
        for key, sub in (("HOME", ""), ("XDG_CONFIG_HOME", ".config"),
                         ("XDG_DATA_HOME", ".local/share"), ("XDG_CACHE_HOME", ".cache")):
            (home / sub).mkdir(parents=True, exist_ok=True)
            patch.setenv(key, str(home / sub))
        for key, value in extra.items():
            patch.setenv(key, value)
        patch.chdir(home)
        yield


@pytest.fixture(scope="module")
def local_target(source: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """`amlpromote deploy --target SQLITE` (a local endpoint), stopped and deleted at the end."""
    root = tmp_path_factory.mktemp("contract-local")
    data = root / "data"
    env = {"AMLPROMOTE_DATA_DIR": str(data), "MLFLOW_ALLOW_FILE_STORE": "true"}
    with _client_environment(root / "home", env):
        try:
            run = cli("deploy", f"{SOURCE_NAME}/1", "--endpoint", ENDPOINT, "--target", source,
                      "-o", "json", env=env)
            assert run.code == 0, run.both
            key = cli("endpoints", "keys", ENDPOINT, "--local", env=env).stdout.strip()
            assert key
            yield Target("local", run.document["scoring_uri"], key, run.document["deployment"],
                         {}, True)
        finally:
            cli("endpoints", "delete", ENDPOINT, "--local", env=env)
            for state in data.glob("endpoints/*/state.json"):
                pid = json.loads(state.read_text()).get("pid")
                if pid:
                    with contextlib.suppress(OSError):
                        os.kill(int(pid), signal.SIGKILL)


@pytest.fixture(scope="module")
def box_target(azureml_box: BoxWorkspaces, source: str,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """The heart model promoted into the box's workspace with copy-model and deployed with
    `amlpromote deploy` to a managed online endpoint, deleted at the end."""
    box = azureml_box.box
    env = box.env()
    # Unique per module run: the box is shared by the whole session.
    name = f"heart-contract-{str(int(time.time() * 1000))[-6:]}"
    with _client_environment(tmp_path_factory.mktemp("contract-box") / "home", env,
                             tuple(box.ENV_TO_REMOVE)):
        try:
            promoted = cli("copy-model", f"{SOURCE_NAME}/1", "--source", source,
                           "--target-name", name, *COORDINATES, "-o", "json")
            assert promoted.code == 0, promoted.both
            run = cli("deploy", f"{name}/1", "--endpoint", ENDPOINT, *COORDINATES, "-o", "json")
            assert run.code == 0, run.both
            key = cli("endpoints", "keys", ENDPOINT, *COORDINATES).stdout.strip()
            assert key
            yield Target("box", run.document["scoring_uri"], key, run.document["deployment"],
                         {"https": env["HTTPS_PROXY"], "http": env["HTTP_PROXY"]},
                         env["REQUESTS_CA_BUNDLE"])
        finally:
            cli("endpoints", "delete", ENDPOINT, *COORDINATES)


@pytest.fixture(scope="module")
def targets(local_target: Target, box_target: Target) -> tuple[Target, Target]:
    assert local_target.deployment == box_target.deployment == "blue"
    return local_target, box_target


def _body_of(response: requests.Response) -> Any:
    try:
        return ("json", response.json())
    except ValueError:
        return ("bytes", response.content)


def _answer(response: requests.Response) -> dict[str, Any]:
    return {"status": response.status_code, "body": _body_of(response),
            "headers": {name: response.headers.get(name) for name in CONTRACT_HEADERS}}


# Each case: (body, content type, which key, deployment header). Keys: "key", None, "wrong".
ROWS = _rows()
EXPECTED = trained_heart_model().pipeline.predict(ROWS).tolist()
CASES: dict[str, tuple[bytes, str | None, str | None, str | None]] = {
    "split frame with index": (json.dumps({"input_data": _split(ROWS)}).encode(),
                               "application/json", "key", None),
    "named tensors": (json.dumps({"input_data": ROWS.to_dict(orient="list")}).encode(),
                      "application/json", "key", None),
    "params": (json.dumps({"input_data": _split(ROWS), "params": {"threshold": 0.9}}).encode(),
               "application/json", "key", None),
    "no input_data": (b'{"data": [[1, 2]]}', "application/json", "key", None),
    "empty body": (b"", "application/json", "key", None),
    "JSON list body": (b"[1, 2, 3]", "application/json", "key", None),
    "non-JSON body": (b"{not json", "application/json", "key", None),
    "text/plain content type": (json.dumps({"input_data": _split(ROWS)}).encode(),
                                "text/plain", "key", None),
    "nested-list tensor (model failure)": (
        json.dumps({"input_data": ROWS.to_numpy().tolist()}).encode(), "application/json",
        "key", None),
    "body over 1.5 MB": (json.dumps({"input_data": "x" * 1_600_000}).encode(),
                         "application/json", "key", None),
    "no key": (json.dumps({"input_data": _split(ROWS)}).encode(), "application/json", None,
               None),
    "wrong key": (json.dumps({"input_data": _split(ROWS)}).encode(), "application/json",
                  "wrong", None),
    "unknown deployment header": (json.dumps({"input_data": _split(ROWS)}).encode(),
                                  "application/json", "key", "purple"),
    "known deployment header": (json.dumps({"input_data": _split(ROWS)}).encode(),
                                "application/json", "key", "blue"),
}
# What each case must answer on both sides (so two equally wrong answers still fail):
# (status, container status in ms-azureml-model-error-statuscode or None).
EXPECTED_STATUS: dict[str, tuple[int, str | None]] = {
    "split frame with index": (200, None), "named tensors": (200, None), "params": (200, None),
    "no input_data": (424, "400"), "empty body": (424, "400"), "JSON list body": (424, "400"),
    "non-JSON body": (424, "400"), "text/plain content type": (424, "415"),
    "nested-list tensor (model failure)": (424, "500"), "body over 1.5 MB": (413, None),
    "no key": (401, None), "wrong key": (401, None), "unknown deployment header": (404, None),
    "known deployment header": (200, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_both_endpoints_answer_the_same(targets: tuple[Target, Target], case: str) -> None:
    body, content_type, which_key, deployment = CASES[case]
    answers = {}
    for target in targets:
        key = {"key": target.key, None: None, "wrong": target.key[::-1] + "x"}[which_key]
        answers[target.name] = _answer(target.post(body, content_type, key, deployment))
    local, box = answers["local"], answers["box"]
    assert local == box, json.dumps(answers, indent=1, default=repr)[:4000]

    status, container_status = EXPECTED_STATUS[case]
    assert local["status"] == status, local
    headers = local["headers"]
    assert headers["ms-azureml-model-error-statuscode"] == container_status
    if status == 200:
        assert local["body"] == ("json", EXPECTED)
        assert headers["azureml-model-deployment"] == "blue"
    if status == 424:
        assert headers["ms-azureml-model-error-reason"] == "model_error"
        assert headers["azureml-model-deployment"] == "blue"
    if status in (200, 424):
        assert headers["content-type"] == "application/json"
        failed = "True" if container_status == "500" else "False"
        assert headers["x-ms-run-function-failed"] == failed
    else:  # the front door's own refusal: no container answered
        assert headers["x-ms-run-function-failed"] is None
        assert headers["azureml-model-deployment"] is None
    if case == "nested-list tensor (model failure)":
        assert local["body"] == ("json", {"message": RUN_FAILED})
    for target in targets:
        assert target.key not in json.dumps(answers[target.name], default=repr)
