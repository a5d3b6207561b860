"""`amlpromote score --model` with the local engine, end to end through the CLI.

Models are real MLflow models (the heart pipeline saved with mlflow.sklearn, and hand-made
pyfunc models with a loader module of their own); predictions are compared row by row with
`mlflow.pyfunc.load_model(...).predict` on the same rows read by pandas. Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from support import HEART_UNLABELED_CSV
from support.cli import cli
from support.custom_models import PYTHON
from support.models import register_heart_model, save_heart_model

pytestmark = pytest.mark.timeout(600)

# A pyfunc model with a loader module of its own (no pickle, so a spawned worker loads it):
# "multi" answers a frame of two outputs, "raise_on_old" fails on rows with age over 65,
# "short" answers one prediction fewer than it was given, "slow" takes 50 ms a call, "nulls"
# counts each row's missing values, "ragged" answers a list of one or two numbers a row.
_LOADER = '''
import time

import pandas as pd


class _Model:
    def __init__(self, mode):
        self.mode = mode

    def predict(self, data, params=None):
        if self.mode == "multi":
            return pd.DataFrame({"risk": data["age"] * 0.5, "label": data["sex"].astype(str)})
        if self.mode == "raise_on_old":
            if (data["age"] > 65).any():
                raise ValueError("age over 65 is not supported")
            return data["age"] * 2
        if self.mode == "short":
            return list(range(len(data) - 1))
        if self.mode == "slow":
            time.sleep(0.05)
            return data["age"] * 2
        if self.mode == "nulls":
            return data.isna().sum(axis=1)
        if self.mode == "ragged":
            return [[0.5] * (1 + i % 2) for i in range(len(data))]
        raise AssertionError(self.mode)


def _load_pyfunc(path):
    with open(path + "/mode.txt") as handle:
        return _Model(handle.read().strip())
'''

_SIGNATURE_INPUTS = json.dumps([{"type": "long", "name": "age", "required": True},
                                {"type": "long", "name": "sex", "required": True}])
_SIGNATURE_OUTPUTS = json.dumps([{"type": "double", "name": "risk", "required": True},
                                 {"type": "string", "name": "label", "required": True}])


def write_custom_model(folder: Path, mode: str, outputs: str | None = None,
                       loader: str = "score_custom_loader", typed: bool = True) -> Path:
    (folder / "code").mkdir(parents=True)
    (folder / "data").mkdir()
    (folder / "code" / "score_custom_loader.py").write_text(_LOADER)
    (folder / "data" / "mode.txt").write_text(mode)
    signature = f"signature:\n  inputs: '{_SIGNATURE_INPUTS}'\n" if typed else ""
    if outputs:
        signature += f"  outputs: '{outputs}'\n"
    (folder / "MLmodel").write_text(
        "artifact_path: model\nflavors:\n  python_function:\n    code: code\n    data: data\n"
        f"    loader_module: {loader}\n    python_version: {PYTHON}\n"
        f"mlflow_version: 3.15.0\n{signature}")
    return folder


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder of the test's own (tmp_path also holds the isolated HOME and cwd)."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


@pytest.fixture(scope="module")
def heart_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_heart_model(tmp_path_factory.mktemp("score-heart") / "model")


@pytest.fixture(scope="module")
def expected(heart_model: Path) -> list[Any]:
    import mlflow.pyfunc

    frame = pd.read_csv(HEART_UNLABELED_CSV)
    return list(mlflow.pyfunc.load_model(str(heart_model)).predict(frame))


def test_a_csv_scores_as_pyfunc_predicts_in_input_order(heart_model: Path, expected: list[Any],
                                                        work: Path) -> None:
    out = work / "preds.csv"
    run = cli("score", "--model", str(heart_model), "--input", str(HEART_UNLABELED_CSV),
              "--output", str(out), "--output", "json")
    assert run.code == 0, run.both
    summary = run.document
    assert summary["status"] == "scored" and summary["rows"] == len(expected)
    assert summary["output"] == str(out)
    scored = pd.read_csv(out)
    original = pd.read_csv(HEART_UNLABELED_CSV)
    pd.testing.assert_frame_equal(scored.drop(columns=["prediction"]), original)
    assert scored["prediction"].tolist() == expected
    assert not [p for p in work.iterdir() if p.name != "preds.csv"]  # no temporary left


def test_parquet_out_with_an_id_column_and_two_workers(heart_model: Path, expected: list[Any],
                                                       work: Path) -> None:
    source = pd.read_csv(HEART_UNLABELED_CSV)
    source.insert(0, "patient", [f"p{i}" for i in range(len(source))])
    big = pd.concat([source] * 30, ignore_index=True)
    big.to_parquet(work / "in.parquet")
    out = work / "preds.parquet"
    run = cli("score", "--model", str(heart_model), "--input", str(work / "in.parquet"),
              "--output", str(out), "--id-column", "patient", "--workers", "2",
              "--batch-size", "500", "-o", "json")
    assert run.code == 0, run.both
    assert run.document["workers"] == 2 and run.document["rows"] == len(big)
    scored = pd.read_parquet(out)
    assert list(scored.columns) == ["patient", "prediction"]
    assert scored["patient"].tolist() == big["patient"].tolist()
    assert scored["prediction"].tolist() == expected * 30


def test_a_registered_version_is_fetched_once_into_the_cache(work: Path,
                                                             expected: list[Any]) -> None:
    registry = f"sqlite:///{work / 'mlflow.db'}"
    register_heart_model(registry, "heart-score", alias="champion")
    first = cli("score", "--model", "heart-score@champion", "--target", registry,
                "--input", str(HEART_UNLABELED_CSV), "--output", str(work / "a.csv"))
    assert first.code == 0, first.both
    assert "fetched heart-score/1 into the model cache" in first.stderr
    again = cli("score", "--model", "heart-score/1", "--target", registry,
                "--input", str(HEART_UNLABELED_CSV), "--output", str(work / "b.csv"))
    assert again.code == 0, again.both
    assert "fetched" not in again.stderr
    assert pd.read_csv(work / "b.csv")["prediction"].tolist() == expected


def test_missing_columns_and_wrong_types_are_listed_together(heart_model: Path,
                                                             work: Path) -> None:
    frame = pd.read_csv(HEART_UNLABELED_CSV).drop(columns=["chol", "thal"])
    frame["age"] = frame["age"].astype(float) + 0.5
    frame.to_parquet(work / "bad.parquet")
    out = work / "preds.csv"
    run = cli("score", "--model", str(heart_model), "--input", str(work / "bad.parquet"),
              "--output", str(out))
    assert run.code == 2, run.both
    line = run.stderr.splitlines()[0]
    assert "'chol'" in line and "'thal'" in line and "'age' is double" in line, line
    assert not out.exists() and list(work.iterdir()) == [work / "bad.parquet"]


def test_a_value_of_the_wrong_type_names_its_row_and_nothing_is_written(
        heart_model: Path, work: Path) -> None:
    lines = HEART_UNLABELED_CSV.read_text().splitlines()
    header = lines[0].split(",")
    row = lines[7].split(",")
    row[header.index("age")] = "old"
    lines[7] = ",".join(row)
    (work / "in.csv").write_text("\n".join(lines) + "\n")
    run = cli("score", "--model", str(heart_model), "--input", str(work / "in.csv"),
              "--output", str(work / "out.csv"))
    assert run.code == 2, run.both
    assert "in.csv" in run.stderr and "age" in run.stderr and "old" in run.stderr
    assert sorted(p.name for p in work.iterdir()) == ["in.csv"]


def test_a_model_of_two_outputs_gives_two_columns(work: Path) -> None:
    model = write_custom_model(work / "multi", "multi", _SIGNATURE_OUTPUTS)
    frame = pd.read_csv(HEART_UNLABELED_CSV)
    run = cli("score", "--model", str(model), "--input", str(HEART_UNLABELED_CSV),
              "--output", str(work / "out.parquet"), "--prediction-column", "p")
    assert run.code == 0, run.both
    scored = pd.read_parquet(work / "out.parquet")
    assert scored.columns[-2:].tolist() == ["p_risk", "p_label"]
    assert scored["p_risk"].tolist() == (frame["age"] * 0.5).tolist()
    assert scored["p_label"].tolist() == frame["sex"].astype(str).tolist()


def test_a_model_that_fails_on_some_rows_names_them_and_leaves_no_output(
        work: Path) -> None:
    model = write_custom_model(work / "fails", "raise_on_old")
    # Youngest first: the rows the model refuses come after some batches it answers.
    frame = pd.read_csv(HEART_UNLABELED_CSV).sort_values("age", kind="stable")
    frame.to_csv(work / "by-age.csv", index=False)
    old = int((frame["age"] > 65).to_numpy().argmax())
    assert old >= 20
    run = cli("score", "--model", str(model), "--input", str(work / "by-age.csv"),
              "--output", str(work / "out.csv"), "--batch-size", "10")
    assert run.code == 1, run.both
    start = old // 10 * 10
    assert f"rows {start + 1}-{start + 10} of" in run.stderr, run.stderr
    assert "age over 65 is not supported" in run.stderr
    assert "Traceback" not in run.both
    assert not (work / "out.csv").exists()
    kept = cli("score", "--model", str(model), "--input", str(work / "by-age.csv"),
               "--output", str(work / "out.csv"), "--batch-size", "10", "--keep-partial")
    assert kept.code == 1
    assert f"the rows scored before it are kept in {work / 'out.csv'}.partial" in kept.stderr
    partial = pd.read_csv(work / "out.csv.partial")
    assert len(partial) == start  # every batch before the failing one


def test_a_model_answering_too_few_predictions_fails(work: Path) -> None:
    model = write_custom_model(work / "short", "short")
    run = cli("score", "--model", str(model), "--input", str(HEART_UNLABELED_CSV),
              "--output", str(work / "out.csv"))
    assert run.code == 1, run.both
    assert "answered 99 predictions for the 100 rows" in run.stderr


def test_an_empty_input_gives_an_empty_output_with_the_columns(heart_model: Path,
                                                               work: Path) -> None:
    header = HEART_UNLABELED_CSV.read_text().splitlines()[0]
    (work / "empty.csv").write_text(header + "\n")
    run = cli("score", "--model", str(heart_model), "--input", str(work / "empty.csv"),
              "--output", str(work / "out.parquet"), "-o", "json")
    assert run.code == 0, run.both
    assert run.document["rows"] == 0
    scored = pd.read_parquet(work / "out.parquet")
    assert len(scored) == 0
    assert scored.columns.tolist() == [*header.split(","), "prediction"]


def test_stdin_to_stdout_through_the_console_script(heart_model: Path,
                                                    expected: list[Any]) -> None:
    env = {**os.environ}
    done = subprocess.run([str(Path(sys.executable).parent / "amlpromote"), "score", "--model",
                           str(heart_model), "--input", "-", "--output", "-"],
                          input=HEART_UNLABELED_CSV.read_bytes(), capture_output=True,
                          env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr.decode()
    rows = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert [r["prediction"] for r in rows] == expected
    assert rows[0]["age"] == pd.read_csv(HEART_UNLABELED_CSV)["age"][0]
    assert b"scored 100 rows" in done.stderr


@pytest.mark.parametrize(("args", "message"), [
    ([], "one of --model and --endpoint"),
    (["--model", "m", "--endpoint", "e"], "both given"),
    (["--model", "m", "--output", "x.csv"], "no --input"),
    (["--model", "m", "--input", "README.md"], "no --output destination"),
    (["--model", "m", "--input", "README.md", "--output", "y.csv", "--engine", "gpu"],
     "--engine 'gpu'"),
    (["--endpoint", "e", "--input", "README.md", "--output", "y.csv", "--workers", "2"],
     "--workers applies to --model"),
    (["--model", "m", "--input", "README.md", "--output", "a.csv", "--output", "b.csv"],
     "two destinations"),
    (["--model", "m", "--input", "README.md", "--output", "-", "--output", "json"],
     "stdout"),
])
def test_bad_options_are_one_line_and_exit_2(args: list[str], message: str,
                                             work: Path) -> None:
    (Path.cwd() / "README.md").write_text("an input that exists\n")
    run = cli("score", *args)
    assert run.code == 2, run.both
    assert message in run.stderr.splitlines()[0], run.stderr
    assert "Traceback" not in run.both


def test_a_folder_that_is_not_a_model_is_refused(work: Path) -> None:
    run = cli("score", "--model", str(work), "--input", str(HEART_UNLABELED_CSV),
              "--output", str(work / "out.csv"))
    assert run.code == 2, run.both
    assert "not an MLflow model folder" in run.stderr


def test_a_folder_path_that_does_not_exist_is_not_found(work: Path) -> None:
    run = cli("score", "--model", "./no-such-model", "--input", str(HEART_UNLABELED_CSV),
              "--output", str(work / "out.csv"))
    assert run.code == 3, run.both
    assert run.stderr.splitlines()[0] == "error: no model folder at ./no-such-model", run.stderr
    assert "Traceback" not in run.both and not (work / "out.csv").exists()


def test_missing_cells_reach_the_model_as_pandas_reads_them(work: Path) -> None:
    import mlflow.pyfunc

    model = write_custom_model(work / "nulls", "nulls", typed=False)
    (work / "in.csv").write_text("age,sex,thal,note\n63,1,fixed,a\n37,,NA,\n41,0,,<NA>\n"
                                 "56,1,normal, NA\n")
    run = cli("score", "--model", str(model), "--input", str(work / "in.csv"),
              "--output", str(work / "out.csv"))
    assert run.code == 0, run.both
    frame = pd.read_csv(work / "in.csv")
    expected = mlflow.pyfunc.load_model(str(model)).predict(frame).tolist()
    assert expected == [0, 3, 2, 0]  # the case this test is about: text cells that are NaN
    assert pd.read_csv(work / "out.csv")["prediction"].tolist() == expected


def test_a_list_per_row_is_written_to_csv_as_json(work: Path) -> None:
    model = write_custom_model(work / "ragged", "ragged")
    run = cli("score", "--model", str(model), "--input", str(HEART_UNLABELED_CSV),
              "--output", str(work / "out.csv"))
    assert run.code == 0, run.both
    scored = pd.read_csv(work / "out.csv")
    assert [json.loads(v) for v in scored["prediction"]] == \
        [[0.5] * (1 + i % 2) for i in range(100)]


def test_a_model_that_cannot_load_names_the_missing_package(work: Path) -> None:
    model = write_custom_model(work / "unloadable", "multi", loader="amlpromote_no_such_flavor")
    run = cli("score", "--model", str(model), "--input", str(HEART_UNLABELED_CSV),
              "--output", str(work / "out.csv"))
    assert run.code == 1, run.both
    assert "amlpromote_no_such_flavor" in run.stderr.splitlines()[0], run.stderr
    assert "Traceback" not in run.both and not (work / "out.csv").exists()


@pytest.mark.parametrize(("workers", "keep"), [("1", False), ("2", False), ("1", True)])
def test_sigterm_mid_run_leaves_no_output_and_no_workers(work: Path, workers: str,
                                                         keep: bool) -> None:
    import signal
    import time

    model = write_custom_model(work / "slow", "slow")
    frame = pd.concat([pd.read_csv(HEART_UNLABELED_CSV)] * 40, ignore_index=True)
    frame.to_csv(work / "in.csv", index=False)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "amlpromote"), "score",
                             "--model", str(model), "--input", str(work / "in.csv"),
                             "--output", str(work / "out.csv"), "--batch-size", "10",
                             "--workers", workers, *(["--keep-partial"] if keep else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not any(".partial-" in p.name for p in work.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.5)  # some batches written
    workers_seen = children_of(proc.pid)
    assert len(workers_seen) >= (2 if workers == "2" else 0), workers_seen
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err.decode()
    assert "SIGTERM" in err.decode() and b"Traceback" not in err
    if keep:
        assert f"scoring stopped; the rows scored before it are kept in {work / 'out.csv'}" \
            f".partial" in err.decode(), err.decode()
        assert sorted(p.name for p in work.iterdir()) == ["in.csv", "out.csv.partial", "slow"]
        kept = pd.read_csv(work / "out.csv.partial")
        assert 0 < len(kept) < len(frame) and list(kept.columns)[-1] == "prediction"
    else:
        assert f"scoring stopped; nothing was written to {work / 'out.csv'}" in err.decode()
        assert sorted(p.name for p in work.iterdir()) == ["in.csv", "slow"]
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in workers_seen):
        assert time.monotonic() < deadline, "workers outlived the command"
        time.sleep(0.1)


def children_of(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                found.append(int(entry.name))
    return found


def test_from_source_reads_the_source_registry(work: Path, expected: list[Any]) -> None:
    source = f"sqlite:///{work / 'source.db'}"
    register_heart_model(source, "heart-in-source", alias=None)
    run = cli("score", "--model", "heart-in-source/1", "--from", "source", "--source", source,
              "--input", str(HEART_UNLABELED_CSV), "--output", str(work / "out.csv"))
    assert run.code == 0, run.both
    assert pd.read_csv(work / "out.csv")["prediction"].tolist() == expected
    missing = cli("score", "--model", "heart-in-source/1", "--input", str(HEART_UNLABELED_CSV),
                  "--output", str(work / "other.csv"), "--target", source.replace(
                      "source.db", "empty.db"))
    assert missing.code == 3, missing.both
    assert not (work / "other.csv").exists()
    assert not (work / "empty.db").exists()  # reading a registry never creates one


def test_a_missing_input_is_reported_before_any_registry_is_read(work: Path) -> None:
    run = cli("score", "--model", "heart/1", "--target", f"sqlite:///{work / 'none.db'}",
              "--input", str(work / "nope.csv"), "--output", str(work / "out.csv"))
    assert run.code == 3, run.both
    assert "--input" in run.stderr and "nope.csv" in run.stderr


def test_without_a_signature_a_value_past_the_sampled_types_names_its_row(work: Path) -> None:
    # README: types come from the first megabyte; a later decimal in a whole-number column is
    # exit 2 naming the row (pandas, reading the whole file first, would widen the column).
    model = write_custom_model(work / "nulls", "nulls", typed=False)
    rows = 300_000  # "63,1\n" a row: 1.5 MB, past the sample
    (work / "in.csv").write_text("age,sex\n" + "63,1\n" * rows + "1.5,1\n")
    run = cli("score", "--model", str(model), "--input", str(work / "in.csv"),
              "--output", str(work / "out.csv"))
    assert run.code == 2, run.both
    assert f"row {rows + 1:,}: column 'age' value '1.5' is not a long" in run.stderr, run.stderr
    assert "first megabyte" in run.stderr
    assert "Traceback" not in run.both
    assert sorted(p.name for p in work.iterdir()) == ["in.csv", "nulls"]


def test_a_signal_as_the_run_ends_is_reported_truthfully_without_a_traceback(
        work: Path) -> None:
    # SIGTERM sent the moment the output appears lands in one of the last windows of the run:
    # inside the command after its commit, as Typer returns, or in the interpreter's exit.
    # Whichever it is: no traceback, and either a clean 0 or 143 with an error line that
    # says the output is complete.
    import signal
    import time

    model = write_custom_model(work / "multi", "multi")
    out = work / "out.csv"
    for _ in range(4):
        out.unlink(missing_ok=True)
        proc = subprocess.Popen([str(Path(sys.executable).parent / "amlpromote"), "score",
                                 "--model", str(model), "--input", str(HEART_UNLABELED_CSV),
                                 "--output", str(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not out.exists() and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.0002)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
        assert "Traceback" not in stderr, stderr
        assert proc.returncode in (0, 143), (proc.returncode, stdout, stderr)
        assert len(pd.read_csv(out)) == 100  # the run had finished its output
        if proc.returncode == 143:
            # Wherever it landed after the output was in place, inside the command or as the
            # result was printed, the line says the output is complete.
            assert ("error: interrupted by SIGTERM: it came after the work was done: all 100 "
                    f"rows are in {out}") in stderr, stderr
