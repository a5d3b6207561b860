"""Local online endpoints: a real server process per endpoint, the real heart model loaded by
mlflow.pyfunc, scored over HTTP with Azure ML's contract (core/deploy/scoring.py).

Most scoring tests share one endpoint (blue and green serving the heart model) started once per
module in its own data folder; tests that stop, break or replace servers make their own. Every
server started here is stopped by its fixture's finalizer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from support.models import save_heart_model, trained_heart_model

from amlpromote.core.deploy import scoring
from amlpromote.core.deploy.local import state as st
from amlpromote.core.deploy.local.platform import WORKERS, LocalPlatform
from amlpromote.core.deploy.platform import (
    DeploymentFailed,
    DeploymentSpec,
    ModelVersion,
    no_progress,
)
from amlpromote.core.errors import BadInput, NotFound, OperationFailed

NO_PROXY = {"http": "", "https": ""}


def later(seconds: float = 120.0) -> float:
    return time.monotonic() + seconds


def spec(endpoint: str, name: str, path: Path, version: str = "1") -> DeploymentSpec:
    return DeploymentSpec(endpoint, name, ModelVersion(
        "uci-heart-classifier", version, f"models:/uci-heart-classifier/{version}",
        path=str(path)))


def split_body(frame: Any) -> bytes:
    return json.dumps({"input_data": frame.to_dict(orient="split")}).encode()


@pytest.fixture(scope="module")
def heart_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_heart_model(tmp_path_factory.mktemp("heart-model") / "model")


def stop_all(platform: LocalPlatform) -> None:
    for info in platform.list_endpoints():
        folder = st.endpoint_dir(info.name)
        recorded = st.read_state(folder)
        try:
            platform.delete_endpoint(info.name, no_progress, later(30))
        finally:
            # Whatever delete could not stop must not outlive the test session.
            if recorded and st.pid_alive(recorded.pid) and st.is_our_server(recorded.pid, folder):
                os.kill(recorded.pid, signal.SIGKILL)


@dataclass
class Shared:
    data_dir: Path
    platform: LocalPlatform
    scoring_uri: str
    key: str


@pytest.fixture(scope="module")
def shared_endpoint(tmp_path_factory: pytest.TempPathFactory,
                    heart_model_dir: Path) -> Iterator[Shared]:
    """Endpoint `shared`: blue and green both serve the heart model, traffic blue 100."""
    data_dir = tmp_path_factory.mktemp("shared-endpoint-data")
    with pytest.MonkeyPatch.context() as patch:
        # Module fixtures run before the per-test isolation: give this one its own data folder.
        patch.setenv("AMLPROMOTE_DATA_DIR", str(data_dir))
        platform = LocalPlatform()
        try:
            info = platform.create_endpoint("shared", "key", no_progress, later(60))
            platform.create_deployment(spec("shared", "blue", heart_model_dir), no_progress,
                                       later())
            platform.create_deployment(spec("shared", "green", heart_model_dir), no_progress,
                                       later())
            platform.set_traffic("shared", {"blue": 100, "green": 0}, {}, no_progress, later(10))
            yield Shared(data_dir, platform, info.scoring_uri, platform.get_key("shared"))
        finally:
            stop_all(platform)


@pytest.fixture
def shared(shared_endpoint: Shared, monkeypatch: pytest.MonkeyPatch) -> Shared:
    monkeypatch.setenv("AMLPROMOTE_DATA_DIR", str(shared_endpoint.data_dir))
    return shared_endpoint


@pytest.fixture
def platform(isolated_environment: Path) -> Iterator[LocalPlatform]:
    """A platform over this test's own data folder; its servers are stopped at the end."""
    platform = LocalPlatform()
    try:
        yield platform
    finally:
        stop_all(platform)


def server_processes(folder: Path) -> list[int]:
    """Pids of live processes whose command line names `folder` (every worker's does)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(folder).encode() in argv and st.pid_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def score(shared: Shared, body: bytes, content_type: str | None = "application/json",
          key: str | None = None, deployment: str | None = None) -> requests.Response:
    headers = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if deployment is not None:
        headers[scoring.DEPLOYMENT_HEADER] = deployment
    return requests.post(shared.scoring_uri, data=body, headers=headers, timeout=30,
                         proxies=NO_PROXY)


# -- scoring -----------------------------------------------------------------------------------


def test_a_split_frame_scores_as_the_pipeline_predicts(shared: Shared, heart_frame: Any) -> None:
    rows = heart_frame.head(5)
    answer = shared.platform.invoke("shared", split_body(rows))
    assert answer.status == 200, answer.body
    assert json.loads(answer.body) == trained_heart_model().pipeline.predict(rows).tolist()
    assert answer.headers[scoring.DEPLOYMENT_HEADER] == "blue"


def test_the_header_picks_a_deployment_without_traffic(shared: Shared, heart_frame: Any) -> None:
    answer = shared.platform.invoke("shared", split_body(heart_frame.head(2)), deployment="green")
    assert answer.status == 200
    assert answer.headers[scoring.DEPLOYMENT_HEADER] == "green"


def test_scoring_needs_the_key(shared: Shared, heart_frame: Any) -> None:
    body = split_body(heart_frame.head(1))
    for key in (None, "not-the-key"):
        answer = score(shared, body, key=key)
        assert answer.status_code == 401
        assert set(answer.json()) == {"message"}
        assert shared.key not in answer.text


def test_a_non_json_content_type_is_the_containers_415_as_424(shared: Shared) -> None:
    answer = score(shared, b"age,sex\n1,2\n", content_type="text/csv", key=shared.key)
    assert answer.status_code == 424
    assert answer.headers[scoring.MODEL_ERROR_STATUS_HEADER] == "415"
    assert answer.headers[scoring.MODEL_ERROR_REASON_HEADER] == "model_error"
    assert answer.json() == {"message": "Expects Content-Type to be application/json"}


@pytest.mark.parametrize(("body", "message"), [
    (b'{"data": [[1, 2]]}', "A value is not provided for the 'input_data' parameter."),
    (b"", "POST body is empty. Expecting a JSON dictionary."),
    (b"{not json", "POST body could not be decoded as JSON"),
    (b"[1, 2, 3]", "POST body should be a JSON dictionary."),
])
def test_bad_requests_are_the_containers_400_as_424(shared: Shared, body: bytes,
                                                    message: str) -> None:
    answer = score(shared, body, key=shared.key)
    assert answer.status_code == 424
    assert answer.headers[scoring.MODEL_ERROR_STATUS_HEADER] == "400"
    assert answer.json()["message"].startswith(message)


def test_a_model_failure_is_the_containers_500_as_424(shared: Shared) -> None:
    body = json.dumps({"input_data": {"columns": ["age"], "index": [0], "data": [[63]]}})
    answer = score(shared, body.encode(), key=shared.key)
    assert answer.status_code == 424
    assert answer.headers[scoring.MODEL_ERROR_STATUS_HEADER] == "500"
    assert answer.json() == {"message": scoring.RUN_FAILED_MESSAGE}
    assert "scoring failed" in shared.platform.get_logs("shared", "blue", tail=200)


def test_an_unknown_deployment_header_is_404(shared: Shared, heart_frame: Any) -> None:
    answer = score(shared, split_body(heart_frame.head(1)), key=shared.key, deployment="purple")
    assert answer.status_code == 404
    assert "purple" in answer.json()["message"]
    # The platform's invoke says it before sending anything, as Azure ML's does.
    with pytest.raises(NotFound, match="has no deployment 'purple'"):
        shared.platform.invoke("shared", split_body(heart_frame.head(1)), deployment="purple")


def test_a_payload_over_the_limit_is_413(shared: Shared) -> None:
    body = b'{"input_data": [' + b"1," * (scoring.MAX_PAYLOAD_BYTES // 2) + b"1]}"
    answer = score(shared, body, key=shared.key)
    assert answer.status_code == 413
    assert "1.5 MB" in answer.json()["message"]


def test_tensors_and_params_reach_the_model_as_the_script_builds_them() -> None:
    import numpy as np
    import pandas as pd

    seen: list[tuple[Any, Any]] = []

    def predict(data: Any, params: Any) -> Any:
        seen.append((data, params))
        return data if not isinstance(data, dict) else pd.DataFrame({"n": [len(data)]})

    tensor = scoring.container_answer(predict, "application/json",
                                      b'{"input_data": [[1, 2], [3, 4]], "params": {"k": 1}}')
    assert (tensor.status, json.loads(tensor.body)) == (200, [[1, 2], [3, 4]])
    assert isinstance(seen[-1][0], np.ndarray) and seen[-1][1] == {"k": 1}
    named = scoring.container_answer(predict, "application/json; charset=utf-8",
                                     b'{"input_data": {"a": [1], "b": [2.5]}}')
    assert json.loads(named.body) == [{"n": 2}]  # a data frame answers in records orientation
    assert set(seen[-1][0]) == {"a", "b"} and seen[-1][1] is None


# Split payloads of every JSON value kind, and the ones the column-by-column path hands on to
# pandas' row constructor (duplicate or non-string names, ragged rows, no rows).
SPLIT_CASES = [
    (["a", "b"], [[1, 2.5], [2, 3]]),
    (["a"], [[1], [None]]),
    (["a"], [[True], [False]]),
    (["a"], [[True], [1]]),
    (["a"], [["x"], [None]]),
    (["a"], [[[1, 2]], [[3, 4]]]),
    (["a"], [[{"k": 1}], [{"k": 2}]]),
    (["a"], [[2**63]]),
    (["a", "a"], [[1, 2]]),
    ([0, 1], [[1, 2]]),
    (["a", "b"], []),
    (["a", "b"], [[1, 2], [3]]),  # pandas fills the short row with NaN
    (["i", "f", "m", "s", "n"], [[1, 1.5, 1, "x", float("nan")], [-2, 2.0, 2.5, "y", 1.0]]),
    (["big", "mixed_big"], [[2**62, 2**60], [-(2**63), 0.5]]),  # int64; ints past 2**53
    (["s", "b"], [["x", True], [1, False]]),
    (["e"], [[""]]),
]


@pytest.mark.parametrize(("columns", "data"), SPLIT_CASES)
def test_a_split_frame_is_the_frame_pandas_builds_from_its_rows(columns: list[Any],
                                                                 data: list[Any]) -> None:
    import pandas as pd

    index = list(range(10, 10 + len(data)))
    built = scoring.model_input({"columns": columns, "index": index, "data": data})
    expected = pd.DataFrame(data, columns=columns, index=index)
    pd.testing.assert_frame_equal(built, expected, check_index_type=True, check_column_type=True)


def raw_exchange(shared: Shared, request: bytes, read_until_close: bool = True) -> bytes:
    """Send bytes to the scoring port as they are; what comes back (until the server closes,
    or the first answer)."""
    import socket

    port = int(shared.scoring_uri.rsplit(":", 1)[1].split("/", 1)[0])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        received = b""
        while True:
            chunk = sock.recv(65536)
            received += chunk
            if not chunk or (not read_until_close and b"\r\n\r\n" in received
                             and received.rstrip().endswith(b"]")):
                return received


def scoring_request(shared: Shared, body: bytes, *extra: str,
                    version: str = "HTTP/1.1") -> bytes:
    head = [f"POST /score {version}", "Host: 127.0.0.1", "content-type: application/json",
            f"authorization: Bearer {shared.key}", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@pytest.mark.parametrize(("request_head", "status"), [
    (b"POST /score\r\n\r\n", 400),                            # no version
    (b"POST /score HTTP/2.0\r\n\r\n", 400),                   # not HTTP/1.x
    (b"POST /score HTTP/1.1\r\nContent-Type : x\r\n\r\n", 400),  # space before the colon
    (b"POST /score HTTP/1.1\r\nA: 1\r\n  folded\r\n\r\n", 400),   # obsolete line folding
    (b"POST /score HTTP/1.1\r\nno colon\r\n\r\n", 400),
    (b"POST /score HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST /score HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", 400),
    (b"POST /score HTTP/1.1\r\n" + b"".join(b"H%d: v\r\n" % n for n in range(101))
     + b"\r\n", 431),                                                 # over 100 headers
    (b"POST /score HTTP/1.1\r\nA: " + b"x" * 70_000 + b"\r\n\r\n", 431),
])
def test_malformed_http_is_refused_and_the_connection_closed(shared: Shared,
                                                              request_head: bytes,
                                                              status: int) -> None:
    answer = raw_exchange(shared, request_head)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]


def test_header_names_are_case_insensitive_and_http_1_0_closes(shared: Shared,
                                                               heart_frame: Any) -> None:
    body = split_body(heart_frame.head(2))
    expected = json.dumps(trained_heart_model().pipeline.predict(heart_frame.head(2)).tolist())
    answer = raw_exchange(shared, scoring_request(shared, body, version="HTTP/1.0"))
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert json.loads(payload) == json.loads(expected)


def test_connection_close_is_honoured_and_keep_alive_serves_the_next(shared: Shared,
                                                                      heart_frame: Any) -> None:
    body = split_body(heart_frame.head(1))
    two = scoring_request(shared, body) + scoring_request(shared, body, "Connection: close")
    answer = raw_exchange(shared, two)  # returns once the server closed after the second
    assert answer.count(b"HTTP/1.1 200 ") == 2, answer[:500]


def test_expect_100_continue_gets_100_before_the_answer(shared: Shared,
                                                         heart_frame: Any) -> None:
    body = split_body(heart_frame.head(1))
    answer = raw_exchange(shared, scoring_request(shared, body, "Expect: 100-continue",
                                                  "Connection: close"))
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 "), answer[:300]


def test_the_traffic_split_sends_to_both(shared: Shared, heart_frame: Any) -> None:
    platform = shared.platform
    platform.set_traffic("shared", {"blue": 50, "green": 50}, {}, no_progress, later(10))
    try:
        body = split_body(heart_frame.head(1))
        answered = Counter(platform.invoke("shared", body).headers[scoring.DEPLOYMENT_HEADER]
                           for _ in range(60))
    finally:
        platform.set_traffic("shared", {"blue": 100, "green": 0}, {}, no_progress, later(10))
    assert set(answered) == {"blue", "green"}
    assert min(answered.values()) >= 10, answered  # 60 fair coin flips: below 10 is ~1e-7


def test_mirror_traffic_copies_requests_and_discards_the_answer(shared: Shared,
                                                                heart_frame: Any) -> None:
    platform = shared.platform
    platform.set_traffic("shared", {"blue": 100, "green": 0}, {"green": 50}, no_progress,
                         later(10))
    try:
        body = split_body(heart_frame.head(1))
        answers = [platform.invoke("shared", body) for _ in range(40)]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            mirrored = platform.get_logs("shared", "green", tail=1000).count("mirror copy")
            if mirrored:
                break
            time.sleep(0.1)
    finally:
        platform.set_traffic("shared", {"blue": 100, "green": 0}, {}, no_progress, later(10))
    assert {a.headers[scoring.DEPLOYMENT_HEADER] for a in answers} == {"blue"}
    assert 0 < mirrored < 40


def test_traffic_is_validated_as_azure_validates_it(shared: Shared) -> None:
    platform = shared.platform
    bad = [({"blue": 90}, {}), ({"blue": 100}, {"green": 60}), ({"purple": 100}, {}),
           ({"blue": 100}, {"blue": 10})]
    for traffic, mirror in bad:
        with pytest.raises(BadInput):
            platform.set_traffic("shared", traffic, mirror, no_progress, later(10))
    assert platform.get_endpoint("shared").traffic == {"blue": 100, "green": 0}  # type: ignore[union-attr]


def test_every_worker_serves_what_the_admin_api_changed(shared: Shared,
                                                        heart_frame: Any) -> None:
    recorded = st.read_state(st.endpoint_dir("shared"))
    assert recorded is not None and recorded.workers == WORKERS
    # New connections spread over the workers; every one of them routes as set.
    answers = [shared.platform.invoke("shared", split_body(heart_frame.head(1)))
               for _ in range(20)]
    assert {a.headers[scoring.DEPLOYMENT_HEADER] for a in answers} == {"blue"}
    logs = shared.platform.get_logs("shared", "blue", tail=1000)
    assert logs.count("model loaded") == WORKERS  # merged: one load line per worker


def test_liveness_names_the_instance_without_a_key(shared: Shared) -> None:
    recorded = st.read_state(st.endpoint_dir("shared"))
    assert recorded is not None
    for path in ("/", "/health"):
        doc = requests.get(recorded.base_url + path, timeout=5, proxies=NO_PROXY).json()
        assert doc["instance"] == recorded.instance_id
        assert doc["server"] == st.SERVER_NAME


def test_secrets_stay_in_their_files(shared: Shared, heart_frame: Any) -> None:
    folder = st.endpoint_dir("shared")
    admin = st.read_secret(folder, st.ADMIN_TOKEN_FILE)
    shared.platform.invoke("shared", split_body(heart_frame.head(1)))
    for name in (st.KEY_FILE, st.ADMIN_TOKEN_FILE):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    for name in (st.STATE_FILE, st.LOG_FILE):
        text = (folder / name).read_text()
        assert shared.key not in text and admin not in text
    assert shared.key not in shared.platform.get_logs("shared", "blue", tail=1000)


# -- lifecycle ---------------------------------------------------------------------------------


def test_no_deployment_with_traffic_is_404_no_route(platform: LocalPlatform,
                                                    heart_model_dir: Path,
                                                    heart_frame: Any) -> None:
    platform.create_endpoint("quiet", "key", no_progress, later(60))
    # Requirements pinned apart from this environment load, with a warning in the logs.
    pinned = heart_model_dir.parent / "pinned-model"
    if not pinned.exists():
        shutil.copytree(heart_model_dir, pinned)
        with (pinned / "requirements.txt").open("a") as out:
            out.write("scikit-learn==0.0.1\n")
    info = platform.create_deployment(spec("quiet", "blue", pinned), no_progress, later())
    assert info.state == "Succeeded"
    assert any("scikit-learn==0.0.1" in w for w in info.warnings), info.warnings
    assert "scikit-learn==0.0.1" in platform.get_logs("quiet", "blue")
    answer = platform.invoke("quiet", split_body(heart_frame.head(1)))
    assert answer.status == 404
    assert json.loads(answer.body) == {"message": scoring.NO_ROUTE_MESSAGE}


def test_a_model_that_cannot_load_fails_with_the_missing_package(platform: LocalPlatform,
                                                                 tmp_path: Path,
                                                                 heart_frame: Any) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "MLmodel").write_text(
        "flavors:\n  python_function:\n    loader_module: amlpromote_missing_flavor\n"
        "    python_version: 3.11.7\nmlflow_version: 3.15.0\n")
    platform.create_endpoint("broken", "key", no_progress, later(60))
    with pytest.raises(DeploymentFailed) as failed:
        platform.create_deployment(spec("broken", "blue", broken), no_progress, later())
    message = str(failed.value)
    assert "\n" not in message
    assert "the model needs package amlpromote_missing_flavor" in message
    assert "amlpromote_missing_flavor" in failed.value.logs
    info = platform.get_endpoint("broken")
    assert info is not None and info.deployment("blue").state == "Failed"  # type: ignore[union-attr]
    with pytest.raises(BadInput):
        platform.set_traffic("broken", {"blue": 100}, {}, no_progress, later(10))
    answer = platform.invoke("broken", split_body(heart_frame.head(1)))
    assert answer.status == 404  # nothing takes traffic
    assert platform.invoke("broken", split_body(heart_frame.head(1)),
                           deployment="blue").status == 404


def test_a_killed_server_is_stale_and_a_new_deploy_replaces_it(platform: LocalPlatform,
                                                               heart_frame: Any) -> None:
    first = platform.create_endpoint("kill9", "key", no_progress, later(60))
    assert first.state == "Running"
    recorded = st.read_state(st.endpoint_dir("kill9"))
    assert recorded is not None
    os.kill(recorded.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while st.pid_alive(recorded.pid) and time.monotonic() < deadline:
        LocalPlatform._reap(recorded.pid)  # our child: reap it, as init would for the CLI's
        time.sleep(0.05)
    [listed] = platform.list_endpoints()
    assert (listed.name, listed.state) == ("kill9", "Stale")
    with pytest.raises(OperationFailed, match="stale"):
        platform.invoke("kill9", split_body(heart_frame.head(1)))
    assert (listed.traffic, listed.mirror) == ({}, {})  # a dead server routes nothing
    again = platform.create_endpoint("kill9", "key", no_progress, later(60))
    assert again.state == "Running" and again.deployments == []
    replaced = st.read_state(st.endpoint_dir("kill9"))
    assert replaced is not None and replaced.pid != recorded.pid
    assert replaced.instance_id != recorded.instance_id


def test_a_deploy_to_a_stale_endpoint_replaces_its_server(platform: LocalPlatform,
                                                          heart_model_dir: Path,
                                                          heart_frame: Any) -> None:
    platform.create_endpoint("revive", "key", no_progress, later(60))
    old = st.read_state(st.endpoint_dir("revive"))
    assert old is not None
    os.kill(old.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while st.pid_alive(old.pid) and time.monotonic() < deadline:
        LocalPlatform._reap(old.pid)
        time.sleep(0.05)
    created = platform.create_deployment(spec("revive", "blue", heart_model_dir), no_progress,
                                         later())
    assert created.state == "Succeeded"
    platform.set_traffic("revive", {"blue": 100}, {}, no_progress, later(10))
    assert platform.invoke("revive", split_body(heart_frame.head(3))).status == 200
    new = st.read_state(st.endpoint_dir("revive"))
    assert new is not None and new.pid != old.pid


def test_delete_stops_the_server_and_removes_the_folder(platform: LocalPlatform) -> None:
    platform.create_endpoint("gone", "key", no_progress, later(60))
    folder = st.endpoint_dir("gone")
    recorded = st.read_state(folder)
    assert recorded is not None and st.pid_alive(recorded.pid)
    platform.delete_endpoint("gone", no_progress, later(30))
    assert not st.pid_alive(recorded.pid)
    assert not folder.exists()
    deadline = time.monotonic() + 10
    while server_processes(folder) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server_processes(folder) == []  # the other workers went with the first
    assert platform.get_endpoint("gone") is None
