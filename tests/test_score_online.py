"""The online scoring client (core/score/online.py) against real endpoints serving the heart
classifier: a local endpoint (the product's own server, started once for the module) and a
managed online endpoint of Azure ML in a box, behind the box's front door, whose faults
(throttling, restarts, dropped connections, 413) the client must ride over.

Expected predictions come from the fitted scikit-learn pipeline itself, never from the client.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from azureml_box.testing import RESOURCE_GROUP, SUBSCRIPTION, WORKSPACE, BoxWorkspaces
from support.cli import cli
from support.models import register_heart_model, save_heart_model, trained_heart_model

from amlpromote.core.deploy.local import state as st
from amlpromote.core.deploy.local.platform import LocalPlatform
from amlpromote.core.deploy.platform import DeploymentSpec, ModelVersion, no_progress
from amlpromote.core.errors import AuthFailed, BadInput, NotFound, OperationFailed
from amlpromote.core.score.online import (
    OnlineScorer,
    backoff_delay,
    parse_retry_after,
    request_body,
)

pytest_plugins = ["azureml_box.fixtures"]
pytestmark = pytest.mark.timeout(600)

ENDPOINT = "heart-online"
COORDINATES = ("--workspace", WORKSPACE, "--resource-group", RESOURCE_GROUP,
               "--subscription", SUBSCRIPTION, "--credential", "managed-identity")
# Sizes of the frames a test sends: an empty one, a single row, ragged ones, one over several
# requests; 500 rows in all.
FRAME_SIZES = (0, 1, 37, 100, 250, 0, 112)


def later(seconds: float = 120.0) -> float:
    return time.monotonic() + seconds


def heart_rows(frame: pd.DataFrame, rows: int) -> pd.DataFrame:
    """`rows` heart rows (the 100 unlabeled ones repeated), with a fresh 0..rows-1 index."""
    repeats = -(-rows // len(frame))
    return pd.concat([frame] * repeats, ignore_index=True).head(rows)


def batches_of(rows: pd.DataFrame, sizes: tuple[int, ...] = FRAME_SIZES,
               label: str = "heart.csv") -> list[tuple[str, int, pd.DataFrame]]:
    """`rows` cut into frames of `sizes`, as a reader hands them on (index restarting)."""
    out, start = [], 0
    for size in sizes:
        out.append((label, start, rows.iloc[start:start + size].reset_index(drop=True)))
        start += size
    assert start == len(rows)
    return out


def expected(batches: list[tuple[str, int, pd.DataFrame]]) -> list[tuple[str, int, list[Any]]]:
    pipeline = trained_heart_model().pipeline
    return [(label, first, pipeline.predict(frame).tolist() if len(frame) else [])
            for label, first, frame in batches]


def fixed(key: str) -> Any:
    calls: list[int] = []

    def authorization() -> str:
        calls.append(1)
        return key

    authorization.calls = calls  # type: ignore[attr-defined]
    return authorization


def score_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("amlpromote-score-")]


def wait_for_no_score_threads(seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while score_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert score_threads() == []


# -- the request body -------------------------------------------------------------------------


def test_request_body_is_split_orientation_with_file_row_numbers() -> None:
    import numpy as np

    frame = pd.DataFrame({
        "f": [1.5, np.nan, 3.0],
        "i": np.array([1, 2, 3], dtype=np.int64),
        "n": pd.array([1, None, 3], dtype="Int64"),
        "b": [True, False, True],
        "s": ["a", None, "c"],
        "o": [np.int64(7), np.float32(0.5), float("nan")],
        "t": pd.to_datetime(["2024-01-02T03:04:05", None, "2024-12-31T00:00:00"]),
        "z": pd.to_datetime(["2024-01-02T03:04:05Z"] * 3, utc=True),
        "c": pd.Categorical(["x", "y", None]),
    }, index=[10, 11, 12])
    document = json.loads(request_body(frame, 200))
    assert document == {"input_data": {
        "columns": ["f", "i", "n", "b", "s", "o", "t", "z", "c"],
        "index": [200, 201, 202],
        "data": [
            [1.5, 1, 1, True, "a", 7, "2024-01-02T03:04:05", "2024-01-02T03:04:05+00:00", "x"],
            [None, 2, None, False, None, 0.5, None, "2024-01-02T03:04:05+00:00", "y"],
            [3.0, 3, 3, True, "c", None, "2024-12-31T00:00:00", "2024-01-02T03:04:05+00:00",
             None],
        ]}}


def test_request_body_names_a_column_json_cannot_carry() -> None:
    frame = pd.DataFrame({"ok": [1], "blob": [object()]})
    with pytest.raises(BadInput, match="column 'blob'"):
        request_body(frame, 0)


def test_a_column_json_cannot_carry_names_the_rows(local: Local) -> None:
    frame = pd.DataFrame({"ok": range(30), "blob": [object()] * 30})
    scorer = OnlineScorer(local.scoring_uri, fixed(local.key), batch_size=10, concurrency=1)
    with pytest.raises(BadInput, match=r"^rows 1-10 of odd.parquet: column 'blob' holds"):
        list(scorer.predict([("odd.parquet", 0, frame)]))
    wait_for_no_score_threads()


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    import email.utils

    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    in_five = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 3.0 <= (parse_retry_after(in_five) or 0) <= 5.0
    assert parse_retry_after(email.utils.formatdate(time.time() - 60, usegmt=True)) == 0.0
    assert backoff_delay(3, 2.0) == 2.0
    assert all(0.5 <= backoff_delay(2, None) <= 1.0 for _ in range(50))
    assert all(15.0 <= backoff_delay(40, None) <= 30.0 for _ in range(50))


# -- a local endpoint ---------------------------------------------------------------------------


@dataclass
class Local:
    data_dir: Path
    scoring_uri: str
    key: str
    platform: LocalPlatform

    def requests_served(self) -> int:
        """Scoring requests blue has answered so far (from its log, not from the client)."""
        log = self.platform.get_logs(ENDPOINT, "blue", 1000)
        return sum(" POST /score " in line for line in log.splitlines())


@pytest.fixture(scope="module")
def heart_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_heart_model(tmp_path_factory.mktemp("online-heart-model") / "model")


def _spec(name: str, path: Path) -> DeploymentSpec:
    return DeploymentSpec(ENDPOINT, name, ModelVersion(
        "uci-heart-classifier", "1", "models:/uci-heart-classifier/1", path=str(path)))


@pytest.fixture(scope="module")
def local_endpoint(tmp_path_factory: pytest.TempPathFactory,
                   heart_model_dir: Path) -> Iterator[Local]:
    """A local endpoint with blue (all traffic) and green, both serving the heart model."""
    data_dir = tmp_path_factory.mktemp("online-endpoint-data")
    with pytest.MonkeyPatch.context() as patch:
        # Module fixtures run before the per-test isolation: give this one its own data folder.
        patch.setenv("AMLPROMOTE_DATA_DIR", str(data_dir))
        platform = LocalPlatform()
        try:
            info = platform.create_endpoint(ENDPOINT, "key", no_progress, later(60))
            platform.create_deployment(_spec("blue", heart_model_dir), no_progress, later())
            platform.create_deployment(_spec("green", heart_model_dir), no_progress, later())
            platform.set_traffic(ENDPOINT, {"blue": 100, "green": 0}, {}, no_progress,
                                 later(10))
            yield Local(data_dir, info.scoring_uri, platform.get_key(ENDPOINT), platform)
        finally:
            folder = st.endpoint_dir(ENDPOINT)
            recorded = st.read_state(folder)
            try:
                platform.delete_endpoint(ENDPOINT, no_progress, later(30))
            finally:
                if recorded and st.pid_alive(recorded.pid) \
                        and st.is_our_server(recorded.pid, folder):
                    os.kill(recorded.pid, signal.SIGKILL)


@pytest.fixture
def local(local_endpoint: Local, monkeypatch: pytest.MonkeyPatch) -> Local:
    monkeypatch.setenv("AMLPROMOTE_DATA_DIR", str(local_endpoint.data_dir))
    return local_endpoint


@pytest.mark.parametrize(("batch_size", "concurrency"),
                         [(100, 1), (7, 1), (1, 8), (33, 8), (1000, 8)])
def test_local_endpoint_predictions_match_the_pipeline_in_order(
        local: Local, heart_frame: pd.DataFrame, batch_size: int, concurrency: int) -> None:
    batches = batches_of(heart_rows(heart_frame, 500))
    scorer = OnlineScorer(local.scoring_uri, fixed(local.key), batch_size=batch_size,
                          concurrency=concurrency)
    scored: list[int] = []
    got = list(scorer.predict(iter(batches), progress=scored.append))
    assert got == expected(batches)
    assert sum(scored) == 500
    # Progress comes per request: never more rows at once than one request holds.
    assert max(scored) <= batch_size
    wait_for_no_score_threads()


def test_local_endpoint_pinned_deployment_and_unknown_one(local: Local,
                                                          heart_frame: pd.DataFrame) -> None:
    batches = batches_of(heart_rows(heart_frame, 150), (150,))
    green = OnlineScorer(local.scoring_uri, fixed(local.key), "green", batch_size=40)
    assert list(green.predict(batches)) == expected(batches)

    missing = OnlineScorer(local.scoring_uri, fixed(local.key), "purple", batch_size=40)
    with pytest.raises(NotFound) as caught:
        list(missing.predict(batches))
    # Whichever request of the first four was answered first names its rows.
    assert re.match(r"rows (1-40|41-80|81-120|121-150) of heart.csv: deployment 'purple' of "
                    rf"the endpoint at {re.escape(local.scoring_uri)} answered 404: Deployment "
                    "purple not found", caught.value.message), caught.value.message
    wait_for_no_score_threads()


def test_local_endpoint_wrong_key_is_auth_failed_after_one_refresh(
        local: Local, heart_frame: pd.DataFrame) -> None:
    wrong = fixed("not-the-key-" + "x" * 20)
    batches = batches_of(heart_rows(heart_frame, 100), (100,))
    with pytest.raises(AuthFailed) as caught:
        list(OnlineScorer(local.scoring_uri, wrong, concurrency=1).predict(batches))
    assert len(wrong.calls) == 2  # the first value, then once more after the 401
    assert "401" in caught.value.message and "not-the-key" not in caught.value.message
    assert local.key not in caught.value.message


def test_local_endpoint_expired_token_is_fetched_again(local: Local,
                                                       heart_frame: pd.DataFrame) -> None:
    values = iter(["expired-token", local.key])
    calls: list[str] = []

    def authorization() -> str:
        calls.append("called")
        return next(values)

    batches = batches_of(heart_rows(heart_frame, 200), (200,))
    scorer = OnlineScorer(local.scoring_uri, authorization, batch_size=50, concurrency=4)
    assert list(scorer.predict(batches)) == expected(batches)
    # Four threads met the 401 at once; the key was fetched again once, not four times.
    assert len(calls) == 2


def test_local_endpoint_model_failure_names_the_row_range(local: Local,
                                                          heart_frame: pd.DataFrame) -> None:
    good = heart_rows(heart_frame, 100)
    broken = heart_rows(heart_frame, 80).drop(columns=["thal"])
    batches = [("a.csv", 0, good), ("b.csv", 0, broken.iloc[:30]),
               ("b.csv", 30, broken.iloc[30:].reset_index(drop=True))]
    scorer = OnlineScorer(local.scoring_uri, fixed(local.key), "blue", batch_size=25,
                          concurrency=1, name=ENDPOINT, place="--local")
    with pytest.raises(OperationFailed) as caught:
        list(scorer.predict(batches))
    message = caught.value.message
    assert message.startswith("rows 1-25 of b.csv: ")
    assert "424" in message and "model status 500" in message
    assert "unexpected error occurred in scoring script" in message
    # The log command as the user runs it: this endpoint, its deployment, where it is.
    assert caught.value.hint and (f"amlpromote endpoints logs {ENDPOINT} --deployment blue "
                                  "--local") in caught.value.hint, caught.value.hint


def test_local_endpoint_oversized_requests_are_split(local: Local,
                                                     heart_frame: pd.DataFrame) -> None:
    # An extra column (passed over by the model) makes 400 rows about 3.2 MB of JSON.
    rows = heart_rows(heart_frame, 400).assign(note="n" * 8000)
    batches = batches_of(rows, (400,))
    assert len(request_body(rows, 0)) > 2 * 1_572_864
    scorer = OnlineScorer(local.scoring_uri, fixed(local.key), batch_size=400, concurrency=2)
    assert list(scorer.predict(batches)) == expected(batches)


def test_local_endpoint_ctrl_c_stops_sending(local: Local, heart_frame: pd.DataFrame) -> None:
    batches = batches_of(heart_rows(heart_frame, 5000), (5000,))
    scorer = OnlineScorer(local.scoring_uri, fixed(local.key), batch_size=10, concurrency=4)
    scored: list[int] = []

    def progress(rows: int) -> None:
        scored.append(rows)
        if len(scored) == 3:
            raise KeyboardInterrupt  # what Ctrl-C raises in the waiting main thread

    served = local.requests_served()
    with pytest.raises(KeyboardInterrupt):
        list(scorer.predict(batches, progress))
    wait_for_no_score_threads(10)
    assert len(scored) == 3
    # Three answered, at most the window of 8 more in flight or queued; never the other 490.
    assert local.requests_served() - served <= 3 + 8


# -- Azure ML in a box --------------------------------------------------------------------------


@dataclass
class Box:
    box: Any  # AzureMLBox
    scoring_uri: str
    key: str

    def scoring_requests(self) -> list[Any]:
        return [r for r in self.box.requests if r.route == "scoring"]


@pytest.fixture(scope="module")
def box_endpoint(azureml_box: BoxWorkspaces,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    """The heart model promoted into the box's workspace with copy-model and deployed with
    `amlpromote deploy` (deployment blue), deleted at the end."""
    box = azureml_box.box
    root = tmp_path_factory.mktemp("online-box")
    source = "sqlite:///" + str(root / "mlflow.db")
    # Unique per module run: the box is shared by the whole session.
    name = f"heart-online-{str(int(time.time() * 1000))[-6:]}"
    with pytest.MonkeyPatch.context() as patch:
        # Module fixtures run before conftest's per-test isolation: isolate here for the CLI.
        for key in list(os.environ):
            if key.startswith("AMLPROMOTE_") or key in box.ENV_TO_REMOVE:
                patch.delenv(key)
        home = root / "home"
        for key, sub in (("HOME", ""), ("XDG_CONFIG_HOME", ".config"),
                         ("XDG_DATA_HOME", ".local/share"), ("XDG_CACHE_HOME", ".cache")):
            (home / sub).mkdir(parents=True, exist_ok=True)
            patch.setenv(key, str(home / sub))
        for key, value in box.env().items():
            patch.setenv(key, value)
        patch.chdir(home)
        register_heart_model(source, name="heart-online-src", alias=None)
        try:
            promoted = cli("copy-model", "heart-online-src/1", "--source", source,
                           "--target-name", name, *COORDINATES, "-o", "json")
            assert promoted.code == 0, promoted.both
            run = cli("deploy", f"{name}/1", "--endpoint", ENDPOINT, *COORDINATES, "-o", "json")
            assert run.code == 0, run.both
            assert run.document["deployment"] == "blue"
            key = cli("endpoints", "keys", ENDPOINT, *COORDINATES).stdout.strip()
            assert key
            yield Box(box, run.document["scoring_uri"], key)
        finally:
            cli("endpoints", "delete", ENDPOINT, *COORDINATES)


@pytest.fixture
def front_door(box_endpoint: Box, box_env: dict[str, str]) -> Box:
    """The box endpoint, with this test's environment pointing at the box (its proxy and CA
    bundle, which the client takes from the environment), faults and request log cleared."""
    return box_endpoint


def test_box_predictions_in_order_through_the_front_door(front_door: Box,
                                                         heart_frame: pd.DataFrame) -> None:
    batches = batches_of(heart_rows(heart_frame, 500))
    scorer = OnlineScorer(front_door.scoring_uri, fixed(front_door.key), batch_size=50,
                          concurrency=4)
    assert list(scorer.predict(batches)) == expected(batches)
    # The frames of 37, 100, 250 and 112 rows (and the single row) in requests of 50 at most.
    sent = front_door.scoring_requests()
    assert len(sent) == 1 + 1 + 2 + 5 + 3 and all(r.status == 200 for r in sent)


def test_box_rides_over_throttling_restarts_and_dropped_connections(
        front_door: Box, heart_frame: pd.DataFrame) -> None:
    box = front_door.box
    faults = [box.inject_fault(route="scoring", status=429, retry_after=1, times=2),
              box.inject_fault(route="scoring", status=503, times=2, after=3),
              box.inject_fault(route="scoring", drop=True, times=2, after=6)]
    batches = batches_of(heart_rows(heart_frame, 500))
    scorer = OnlineScorer(front_door.scoring_uri, fixed(front_door.key), batch_size=25,
                          concurrency=4)
    assert list(scorer.predict(batches)) == expected(batches)
    assert [f.hits for f in faults] == [2, 2, 2]
    sent = front_door.scoring_requests()
    # 22 requests of rows, and one more for each of the 6 that met a fault.
    assert sum(r.status == 200 for r in sent) == 1 + 2 + 4 + 10 + 5
    assert len(sent) == 22 + 6


def test_box_retry_after_is_honoured(front_door: Box, heart_frame: pd.DataFrame) -> None:
    front_door.box.inject_fault(route="scoring", status=429, retry_after=2, times=1)
    batches = batches_of(heart_rows(heart_frame, 10), (10,))
    scorer = OnlineScorer(front_door.scoring_uri, fixed(front_door.key), concurrency=1)
    assert list(scorer.predict(batches)) == expected(batches)
    first, second = front_door.scoring_requests()
    assert (first.status, second.status) == (429, 200)
    assert second.started - first.started >= 2.0


def test_box_gives_up_after_max_attempts_and_stops_sending(front_door: Box,
                                                           heart_frame: pd.DataFrame) -> None:
    front_door.box.inject_fault(route="scoring", status=503, times=None)
    batches = batches_of(heart_rows(heart_frame, 1000), (1000,))
    scorer = OnlineScorer(front_door.scoring_uri, fixed(front_door.key), batch_size=10,
                          concurrency=4, max_attempts=3)
    with pytest.raises(OperationFailed) as caught:
        list(scorer.predict(batches))
    assert re.match(r"rows (1-10|11-20|21-30|31-40) of heart.csv: the endpoint at "
                    r"https://\S+/score still answered 503 after 3 attempts: Injected fault: "
                    r"HTTP 503.$", caught.value.message), caught.value.message
    wait_for_no_score_threads()
    # The four requests in flight, three attempts each at most; none of the other 96.
    assert len(front_door.scoring_requests()) <= 4 * 3


def test_box_413_is_split_and_both_halves_sent(front_door: Box,
                                               heart_frame: pd.DataFrame) -> None:
    front_door.box.inject_fault(route="scoring", status=413, times=1)
    batches = batches_of(heart_rows(heart_frame, 100), (100,))
    scorer = OnlineScorer(front_door.scoring_uri, fixed(front_door.key), concurrency=1)
    assert list(scorer.predict(batches)) == expected(batches)
    assert [r.status for r in front_door.scoring_requests()] == [413, 200, 200]


def test_box_request_over_the_payload_limit_is_split_before_sending(
        front_door: Box, heart_frame: pd.DataFrame) -> None:
    rows = heart_rows(heart_frame, 600).assign(note="n" * 8000)  # about 4.8 MB of JSON
    batches = batches_of(rows, (600,))
    scorer = OnlineScorer(front_door.scoring_uri, fixed(front_door.key), batch_size=600,
                          concurrency=4)
    assert list(scorer.predict(batches)) == expected(batches)
    sent = front_door.scoring_requests()
    # Never a 413: 600 rows in pieces that fit (halved until under 1.5 MB: 150 rows each).
    assert [r.status for r in sent] == [200] * 4


def test_box_single_row_too_large_fails_naming_it(front_door: Box,
                                                  heart_frame: pd.DataFrame) -> None:
    rows = heart_rows(heart_frame, 3).assign(note=["short", "x" * 1_600_000, "short"])
    scorer = OnlineScorer(front_door.scoring_uri, fixed(front_door.key), concurrency=1)
    with pytest.raises(OperationFailed, match=r"^row 2 of big.csv: the row is 1,600,\d+ bytes"):
        list(scorer.predict([("big.csv", 0, rows)]))


def test_box_wrong_key_is_auth_failed(front_door: Box, heart_frame: pd.DataFrame) -> None:
    wrong = fixed(front_door.key[::-1] + "x")
    scorer = OnlineScorer(front_door.scoring_uri, wrong, concurrency=2)
    with pytest.raises(AuthFailed) as caught:
        list(scorer.predict(batches_of(heart_rows(heart_frame, 300), (300,))))
    assert len(wrong.calls) == 2
    assert front_door.key[::-1] not in caught.value.message + str(caught.value.hint)


def test_box_unknown_deployment_is_not_found(front_door: Box, heart_frame: pd.DataFrame) -> None:
    scorer = OnlineScorer(front_door.scoring_uri, fixed(front_door.key), "purple")
    with pytest.raises(NotFound, match=r"rows 1-100 of heart.csv: deployment 'purple' .* 404"):
        list(scorer.predict(batches_of(heart_rows(heart_frame, 100), (100,))))
    pinned = OnlineScorer(front_door.scoring_uri, fixed(front_door.key), "blue")
    batches = batches_of(heart_rows(heart_frame, 100), (100,))
    assert list(pinned.predict(batches)) == expected(batches)


def test_box_model_failure_names_the_row_range(front_door: Box,
                                               heart_frame: pd.DataFrame) -> None:
    broken = heart_rows(heart_frame, 300).drop(columns=["age"])
    batches = [("good.csv", 0, heart_rows(heart_frame, 150)), ("bad.csv", 200, broken)]
    scorer = OnlineScorer(front_door.scoring_uri, fixed(front_door.key), concurrency=1)
    with pytest.raises(OperationFailed) as caught:
        list(scorer.predict(batches))
    assert caught.value.message.startswith(
        "rows 201-300 of bad.csv: the endpoint at "), caught.value.message
    assert "answered 424 (model status 500): An unexpected error occurred in scoring script" \
        in caught.value.message
    # The model failed: the same rows were not sent again.
    assert [r.status for r in front_door.scoring_requests()] == [200, 200, 424]


def test_box_ctrl_c_while_waiting_stops_and_reraises(front_door: Box,
                                                     heart_frame: pd.DataFrame) -> None:
    # Every request takes half a second: 40 requests over 4 threads would take 5 s.
    front_door.box.inject_fault(route="scoring", delay=0.5, times=None)
    batches = batches_of(heart_rows(heart_frame, 400), (400,))
    scorer = OnlineScorer(front_door.scoring_uri, fixed(front_door.key), batch_size=10,
                          concurrency=4)
    timer = threading.Timer(1.2, os.kill, (os.getpid(), signal.SIGINT))
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            list(scorer.predict(batches))
    finally:
        timer.cancel()
    assert time.monotonic() - started < 3.0
    wait_for_no_score_threads()
    assert len(front_door.scoring_requests()) < 20


# -- `amlpromote score --endpoint`, through the CLI ------------------------------------------


def test_cli_scores_a_csv_through_the_local_endpoint(local: Local, tmp_path: Path,
                                                     heart_frame: pd.DataFrame) -> None:
    rows = heart_rows(heart_frame, 730)
    rows.to_csv(tmp_path / "in.csv", index=False)
    before = local.requests_served()
    run = cli("score", "--endpoint", ENDPOINT, "--local", "--input", str(tmp_path / "in.csv"),
              "--output", str(tmp_path / "out.parquet"), "--batch-size", "50",
              "--concurrency", "3", "-o", "json")
    assert run.code == 0, run.both
    assert run.document["rows"] == 730 and run.document["mode"] == "endpoint"
    scored = pd.read_parquet(tmp_path / "out.parquet")
    assert scored["prediction"].tolist() == trained_heart_model().pipeline.predict(
        rows).tolist()
    pd.testing.assert_frame_equal(scored.drop(columns=["prediction"]), rows)
    assert local.requests_served() - before == 15  # 730 rows in requests of 50
    assert local.key not in run.both


def test_cli_signature_problems_send_nothing(local: Local, tmp_path: Path,
                                             heart_frame: pd.DataFrame) -> None:
    heart_frame.drop(columns=["age", "thal"]).to_csv(tmp_path / "in.csv", index=False)
    before = local.requests_served()
    run = cli("score", "--endpoint", ENDPOINT, "--local", "--input", str(tmp_path / "in.csv"),
              "--output", str(tmp_path / "out.csv"))
    assert run.code == 2, run.both
    assert "'age'" in run.stderr and "'thal'" in run.stderr
    assert local.requests_served() == before
    assert not (tmp_path / "out.csv").exists()


def test_cli_unknown_endpoint_and_deployment(local: Local, tmp_path: Path,
                                             heart_frame: pd.DataFrame) -> None:
    heart_frame.to_csv(tmp_path / "in.csv", index=False)
    missing = cli("score", "--endpoint", "no-such-endpoint", "--local", "--input",
                  str(tmp_path / "in.csv"), "--output", str(tmp_path / "out.csv"))
    assert missing.code == 3, missing.both
    assert "no endpoint 'no-such-endpoint'" in missing.stderr
    purple = cli("score", "--endpoint", ENDPOINT, "--local", "--deployment", "purple",
                 "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out.csv"))
    assert purple.code == 3, purple.both
    assert "no deployment 'purple'" in purple.stderr and "blue" in purple.stderr
    assert not (tmp_path / "out.csv").exists()


def test_cli_scores_through_the_box_over_a_flaky_front_door(
        front_door: Box, tmp_path: Path, heart_frame: pd.DataFrame) -> None:
    rows = heart_rows(heart_frame, 300)
    rows.to_csv(tmp_path / "in.csv", index=False)
    front_door.box.inject_fault(route="scoring", status=503, times=2, after=1)
    front_door.box.inject_fault(route="scoring", status=429, retry_after=1, times=1, after=4)
    run = cli("score", "--endpoint", ENDPOINT, *COORDINATES, "--input",
              str(tmp_path / "in.csv"), "--output", str(tmp_path / "out.csv"),
              "--batch-size", "40", "--concurrency", "2", "-o", "json")
    assert run.code == 0, run.both
    scored = pd.read_csv(tmp_path / "out.csv")
    assert scored["prediction"].tolist() == trained_heart_model().pipeline.predict(
        rows).tolist()
    statuses = [r.status for r in front_door.scoring_requests()]
    assert statuses.count(503) == 2 and statuses.count(429) == 1, statuses
    assert statuses.count(200) == 8  # 300 rows in requests of 40
    assert front_door.key not in run.both


def test_box_a_request_timing_out_twice_is_split(front_door: Box,
                                                 heart_frame: pd.DataFrame) -> None:
    rows = heart_rows(heart_frame, 80)
    front_door.box.inject_fault(route="scoring", status=408, times=2)
    scorer = OnlineScorer(front_door.scoring_uri, fixed(front_door.key), batch_size=80,
                          concurrency=1)
    answered = list(scorer.predict([("rows.csv", 0, rows)]))
    assert answered == [("rows.csv", 0, trained_heart_model().pipeline.predict(rows).tolist())]
    assert [r.status for r in front_door.scoring_requests()] == [408, 408, 200, 200]
