"""The box's deployments really serve: Microsoft's azureml-inference-server-http (azmlinfsrv)
with our MLflow entry script, against a real sklearn model, over loopback HTTP.

The statuses and bodies asserted here are what the real server answers (read from its code in
azureml_inference_server_http/server/{input_parsers,routes}.py and observed here); they are the
contract a product-side local endpoint must match. The first run builds the inference venv
(~70 s, see azureml_box/inference_env.py); later runs start a server in ~5 s.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
from azureml_box.serving import Container, ServingFailed, start_container

if TYPE_CHECKING:
    import pandas as pd

pytestmark = pytest.mark.timeout(400)

_ENV_OVERRIDES = {"AMLPROMOTE_BOX_DEPLOYMENT_VAR": "blue", "AML_APP_INSIGHTS_ENABLED": "true"}


def _save_heart_model(path: Path) -> Path:
    import mlflow.sklearn
    from support.models import trained_heart_model

    trained = trained_heart_model()
    mlflow.sklearn.save_model(
        trained.pipeline,
        str(path),
        signature=trained.signature,
        input_example=trained.example,
        pip_requirements=list(trained.pip_requirements),
    )
    return path


@pytest.fixture(scope="module")
def heart_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_heart_model(tmp_path_factory.mktemp("heart") / "model")


@pytest.fixture(scope="module")
def heart_container(
    heart_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Container]:
    container = start_container(
        heart_model_dir, tmp_path_factory.mktemp("container"), env=_ENV_OVERRIDES
    )
    try:
        yield container
    finally:
        container.stop()


@pytest.fixture
def rows(heart_frame: pd.DataFrame) -> pd.DataFrame:
    return heart_frame.head(5)


def _expected(rows: pd.DataFrame) -> list[int]:
    from support.models import trained_heart_model

    return [int(v) for v in trained_heart_model().pipeline.predict(rows)]


def _score(container: Container, body: Any, **kwargs: Any) -> requests.Response:
    return requests.post(container.scoring_url, json=body, timeout=30, **kwargs)


def _split(rows: pd.DataFrame) -> dict[str, Any]:
    split: dict[str, Any] = json.loads(rows.to_json(orient="split"))
    return split


# -- scoring -----------------------------------------------------------------------------------


def test_split_frame_answers_predictions_as_a_json_list(
    heart_container: Container, rows: pd.DataFrame
) -> None:
    response = _score(heart_container, {"input_data": _split(rows)})

    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    # A bare list, no {"predictions": ...} envelope (that is `mlflow models serve`).
    assert response.json() == _expected(rows)
    assert response.headers["x-ms-run-function-failed"] == "False"
    assert response.headers["x-ms-server-version"].startswith("azmlinfsrv/")


def test_named_tensors_are_scored_like_columns(
    heart_container: Container, rows: pd.DataFrame
) -> None:
    response = _score(heart_container, {"input_data": rows.to_dict(orient="list")})

    assert response.status_code == 200, response.text
    assert response.json() == _expected(rows)


def test_params_are_passed_and_ignored_by_a_model_without_a_params_schema(
    heart_container: Container, rows: pd.DataFrame
) -> None:
    response = _score(heart_container, {"input_data": _split(rows), "params": {"threshold": 0.9}})

    assert response.status_code == 200, response.text
    assert response.json() == _expected(rows)
    assert "Ignoring provided params: ['threshold']" in heart_container.logs(50)


def test_a_tensor_for_a_column_model_is_a_model_failure(
    heart_container: Container, rows: pd.DataFrame
) -> None:
    # The heart model's signature names columns; a bare 2-D list has none, so MLflow's schema
    # enforcement rejects it inside run(): the server's 500, with the cause only in the log.
    response = _score(heart_container, {"input_data": rows.to_numpy().tolist()})

    assert response.status_code == 500
    assert response.json() == {
        "message": "An unexpected error occurred in scoring script. Check the logs for more info."
    }
    assert response.headers["x-ms-run-function-failed"] == "True"
    assert "Model is missing inputs" in heart_container.logs(60)


# -- bad requests: the inference server's own answers ------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"data": []}', "A value is not provided for the 'input_data' parameter."),
        (b"", "POST body is empty. Expecting a JSON dictionary."),
        (b"[1, 2]", "POST body should be a JSON dictionary."),
        (b'"input_data"', "POST body should be a JSON dictionary."),
        (
            b"not json",
            "POST body could not be decoded as JSON: Expecting value: line 1 column 1 (char 0)",
        ),
    ],
    ids=["missing-input_data", "empty", "list", "string", "not-json"],
)
def test_bad_bodies_are_400_with_a_message(
    heart_container: Container, data: bytes, message: str
) -> None:
    response = requests.post(
        heart_container.scoring_url,
        data=data,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )

    assert response.status_code == 400
    assert response.json() == {"message": message}
    assert response.headers["x-ms-run-function-failed"] == "False"


@pytest.mark.parametrize("content_type", ["text/plain", "text/csv", None])
def test_a_non_json_content_type_is_415(
    heart_container: Container, rows: pd.DataFrame, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = requests.post(
        heart_container.scoring_url,
        data=json.dumps({"input_data": _split(rows)}).encode(),
        headers=headers,
        timeout=30,
    )

    assert response.status_code == 415
    assert response.json() == {"message": "Expects Content-Type to be application/json"}


def test_liveness_route_answers_healthy(heart_container: Container) -> None:
    response = requests.get(f"{heart_container.url}/", timeout=10)

    assert response.status_code == 200
    assert response.text == "Healthy"


# -- the container around the server -----------------------------------------------------------


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {key.decode(): value.decode() for key, value in pairs}


def test_server_sees_azure_ml_model_variables_and_deployment_overrides(
    heart_container: Container, heart_model_dir: Path
) -> None:
    env = _environ(heart_container.pid)

    model_dir = Path(env["AZUREML_MODEL_DIR"])
    assert model_dir.parts[-3:] == ("azureml-models", "model", "1")
    assert env["MLFLOW_MODEL_FOLDER"] == heart_model_dir.name
    assert (model_dir / env["MLFLOW_MODEL_FOLDER"] / "MLmodel").is_file()
    assert env["AMLPROMOTE_BOX_DEPLOYMENT_VAR"] == "blue"
    # A deployment cannot turn App Insights on: nothing may leave loopback.
    assert env["AML_APP_INSIGHTS_ENABLED"] == "false"
    assert "AML_APP_INSIGHTS_KEY" not in env
    assert not any(key.startswith(("MLFLOW_TRACKING", "AZURE_")) for key in env)
    assert not any(key.lower().endswith("_proxy") for key in env)


def _listen_addresses(port: int) -> set[str]:
    # /proc/net/tcp{,6}: local address as hex ip:port, state 0A is LISTEN.
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(port_hex, 16) == port:
                found.add(address)
    return found


def test_server_listens_on_loopback_only(heart_container: Container) -> None:
    # 0100007F is 127.0.0.1 in /proc's little-endian hex; azmlinfsrv alone would bind 0.0.0.0.
    assert _listen_addresses(heart_container.port) == {"0100007F"}


def test_logs_tail_the_server_and_the_storage_initializer(heart_container: Container) -> None:
    server_log = heart_container.logs(tail=500)
    assert "Azure ML Inferencing HTTP server" in server_log
    assert "Users's init has completed successfully" in server_log
    assert len(heart_container.logs(tail=3).splitlines()) == 3

    storage_log = heart_container.logs(container_type="StorageInitializer")
    assert "Downloaded MLmodel" in storage_log
    assert "Downloaded model.skops" in storage_log
    assert storage_log.splitlines()[-1].startswith("Model download complete")


# -- failures and stop ---------------------------------------------------------------------------


def test_a_model_that_cannot_load_fails_with_the_cause_in_the_log(
    heart_model_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken-model"
    shutil.copytree(heart_model_dir, broken)
    mlmodel = broken / "MLmodel"
    mlmodel.write_text(
        mlmodel.read_text().replace(
            "loader_module: mlflow.sklearn", "loader_module: no_such_loader"
        )
    )

    started = time.monotonic()
    with pytest.raises(ServingFailed) as failure:
        start_container(broken, tmp_path / "container", timeout=120)

    assert "No module named 'no_such_loader'" in failure.value.logs
    assert "User's init function failed" in failure.value.logs
    assert "Worker failed to boot" in failure.value.logs
    assert "exited with code 3" in str(failure.value)
    assert time.monotonic() - started < 60  # the exit is noticed, not waited out


def test_a_folder_without_mlmodel_is_refused(tmp_path: Path) -> None:
    (tmp_path / "not-a-model").mkdir()

    with pytest.raises(ServingFailed, match="no MLmodel"):
        start_container(tmp_path / "not-a-model", tmp_path / "container")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_tensor_model_scores_nested_lists_and_stop_ends_the_process_group(
    tmp_path: Path, heart_frame: pd.DataFrame
) -> None:
    import mlflow.sklearn
    import numpy as np
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    features = heart_frame[["age", "trestbps", "chol", "thalach"]].to_numpy(dtype=np.float64)
    labels = (features[:, 3] > 150).astype(np.int64)
    model = LogisticRegression(max_iter=1000).fit(features, labels)
    signature = infer_signature(features[:5], model.predict(features[:5]))
    model_dir = tmp_path / "tensor-model"
    mlflow.sklearn.save_model(model, str(model_dir), signature=signature)

    container = start_container(model_dir, tmp_path / "container")
    try:
        response = _score(container, {"input_data": features[:5].tolist()})
        assert response.status_code == 200, response.text
        assert response.json() == model.predict(features[:5]).tolist()
        assert _group_alive(container.pid)
    finally:
        container.stop()

    assert not _group_alive(container.pid)
    assert not container.running()
    container.stop()  # idempotent
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", container.port)) != 0
