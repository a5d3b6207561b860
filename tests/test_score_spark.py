"""The Spark engine (core/score/spark_engine.py) on a real local[2] Spark, with real models.

One SparkSession is shared by the module (it starts a JVM: seconds); `score_on_spark` finds it
active and reuses it, which is also what it does under spark-submit or in Databricks. The
session it builds and stops itself is checked in a subprocess, so the shared one is untouched.
Outputs are compared row by row, in order, with `mlflow.pyfunc.load_model(path).predict` on the
same rows read by pandas.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

pytest.importorskip("pyspark", reason="the Spark engine tests need pyspark "
                                      "(.venv/bin/pip install 'pyspark>=3.5', and Java 17)")

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from support import HEART_CSV, REPO_ROOT
from support.models import trained_heart_model

from amlpromote.core.errors import BadInput, NotFound, OperationFailed
from amlpromote.core.score.spark_engine import MARKER, SparkResult, score_on_spark

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

HEART_TYPES = {"age": "long", "sex": "long", "cp": "long", "trestbps": "long", "chol": "long",
               "fbs": "long", "restecg": "long", "thalach": "long", "exang": "long",
               "oldpeak": "double", "slope": "long", "ca": "long", "thal": "string"}

TWO_OUTPUTS_CODE = '''
import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class TwoOutputs(PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return pd.DataFrame({
            "score": model_input["x"] * 2.0,
            "label": ["big" if v > 2 else "small" for v in model_input["x"]],
        })


mlflow.models.set_model(TwoOutputs())
'''


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    import signal

    from pyspark.sql import SparkSession

    # SparkContext installs a SIGINT handler that calls cancelAllJobs on it; once the session
    # is stopped that raises instead of KeyboardInterrupt, so a later test module of this
    # worker that sends itself SIGINT would see another error. The old handler goes back.
    previous = signal.getsignal(signal.SIGINT)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPARK_LOCAL_IP", "127.0.0.1")
        # The Python workers must be this venv's interpreter (env_manager="local").
        patch.setenv("PYSPARK_PYTHON", sys.executable)
        session = (SparkSession.builder.master("local[2]").appName("test_score_spark")
                   .config("spark.driver.host", "127.0.0.1")
                   .config("spark.driver.bindAddress", "127.0.0.1")
                   .config("spark.ui.enabled", "false")
                   .config("spark.ui.showConsoleProgress", "false")
                   .getOrCreate())
        session.sparkContext.setLogLevel("FATAL")
        try:
            yield session
        finally:
            session.stop()
            signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def heart_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import mlflow.sklearn

    model = trained_heart_model()
    path = tmp_path_factory.mktemp("models") / "heart"
    mlflow.sklearn.save_model(model.pipeline, path, signature=model.signature,
                              input_example=model.example,
                              pip_requirements=list(model.pip_requirements))
    return path


@pytest.fixture(scope="module")
def two_output_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    folder = tmp_path_factory.mktemp("two-outputs")
    code = folder / "two_outputs.py"
    code.write_text(TWO_OUTPUTS_CODE)
    signature = ModelSignature(
        inputs=Schema([ColSpec("double", "x")]),
        outputs=Schema([ColSpec("double", "score"), ColSpec("string", "label")]))
    path = folder / "model"
    # Models from code: the workers load the file, not a pickle of a class in this test module.
    mlflow.pyfunc.save_model(path, python_model=str(code), signature=signature,
                             pip_requirements=["mlflow", "pandas"])
    return path


FLOAT_CODE = '''
import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class Twice(PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.Series:
        return model_input["f"].astype("float64") * 2


mlflow.models.set_model(Twice())
'''


@pytest.fixture(scope="module")
def float_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model whose signature takes a float (float32) column."""
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    folder = tmp_path_factory.mktemp("float-input")
    code = folder / "twice.py"
    code.write_text(FLOAT_CODE)
    path = folder / "model"
    mlflow.pyfunc.save_model(path, python_model=str(code), pip_requirements=["mlflow", "pandas"],
                             signature=ModelSignature(inputs=Schema([ColSpec("float", "f")]),
                                                      outputs=Schema([ColSpec("double")])))
    return path


@pytest.fixture(scope="module")
def heart() -> pd.DataFrame:
    return pd.read_csv(HEART_CSV)


def expected_predictions(model: Path, frame: pd.DataFrame) -> Any:
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(str(model)).predict(frame)


def read_output(folder: Path, fmt: str) -> pd.DataFrame:
    """The part files in name order: Spark's partition order, which is the input order."""
    parts = sorted(p for p in folder.iterdir() if p.name.startswith("part-"))
    assert parts, f"no part files in {folder}"
    if fmt == "parquet":
        return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    frames = [pd.read_csv(p) for p in parts if p.stat().st_size > 0]
    return pd.concat(frames, ignore_index=True)


def assert_clean_beside(output: Path) -> None:
    leftovers = [p.name for p in output.parent.iterdir() if ".partial" in p.name
                 or ".old-" in p.name]
    assert leftovers == []


def split_sizes(frame: pd.DataFrame) -> list[pd.DataFrame]:
    # Unequal sizes on purpose: one Spark read of the folder would order files by size.
    return [frame.iloc[:40], frame.iloc[40:240], frame.iloc[240:]]


def test_heart_csv_file_to_parquet_matches_pyfunc(spark: SparkSession, heart_model: Path,
                                                  heart: pd.DataFrame, tmp_path: Path) -> None:
    output = tmp_path / "scored.parquet"
    phases: list[str] = []
    result = score_on_spark(heart_model, str(HEART_CSV), str(output),
                            signature_types=HEART_TYPES, output_names=None,
                            progress=phases.append)
    assert isinstance(result, SparkResult)
    assert (result.rows, result.files, result.output) == (len(heart), 1, str(output))
    assert phases == ["reading", "scoring", "writing"]
    scored = read_output(output, "parquet")
    assert list(scored.columns) == [*heart.columns, "prediction"]
    # Columns outside the signature pass through as the text they were.
    assert str(scored["target"].dtype) == "object"
    pd.testing.assert_frame_equal(scored.drop(columns="prediction"), heart.astype({"target": str}))
    assert scored["prediction"].tolist() == list(expected_predictions(heart_model, heart))
    assert str(scored["prediction"].dtype) == "int64"  # the tensor output's int64, not double
    assert (output / "_SUCCESS").exists()
    assert json.loads((output / MARKER).read_text())["rows"] == len(heart)
    assert_clean_beside(output)


def test_heart_csv_folder_keeps_file_order(spark: SparkSession, heart_model: Path,
                                           heart: pd.DataFrame, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i, part in enumerate(split_sizes(heart)):
        part.to_csv(folder / f"part-{i}.csv", index=False)
    (folder / "_SUCCESS").write_text("")  # Spark's hidden files are not data
    output = tmp_path / "scored.csv"
    result = score_on_spark(heart_model, str(folder), str(output), signature_types=HEART_TYPES,
                            output_names=None)
    assert (result.rows, result.files) == (len(heart), 3)
    scored = read_output(output, "csv")
    pd.testing.assert_frame_equal(scored.drop(columns="prediction"), heart)
    assert scored["prediction"].tolist() == list(expected_predictions(heart_model, heart))


def test_heart_parquet_folder_widens_ints(spark: SparkSession, heart_model: Path,
                                          heart: pd.DataFrame, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i, part in enumerate(split_sizes(heart)):
        table = pa.Table.from_pandas(part, preserve_index=False)
        # int32 where the signature says long: widened as MLflow would.
        table = table.set_column(0, "age", table["age"].cast(pa.int32()))
        pq.write_table(table, folder / f"part-{i}.parquet")
    output = tmp_path / "scored.parquet"
    result = score_on_spark(heart_model, str(folder), str(output), signature_types=HEART_TYPES,
                            output_names=None, output_format="parquet")
    assert (result.rows, result.files) == (len(heart), 3)
    scored = read_output(output, "parquet")
    assert scored["age"].tolist() == heart["age"].tolist()
    assert scored["target"].tolist() == heart["target"].tolist()  # passed through
    assert scored["prediction"].tolist() == list(expected_predictions(heart_model, heart))


def test_heart_parquet_file_with_id_column(spark: SparkSession, heart_model: Path,
                                           heart: pd.DataFrame, tmp_path: Path) -> None:
    frame = heart.assign(patient=[f"p{i:04d}" for i in range(len(heart))])
    source = tmp_path / "heart.parquet"
    frame.to_parquet(source, index=False)
    output = tmp_path / "ids.csv"
    score_on_spark(heart_model, str(source), str(output), signature_types=HEART_TYPES,
                   output_names=None, id_column="patient", prediction_column="disease")
    scored = read_output(output, "csv")
    assert list(scored.columns) == ["patient", "disease"]
    assert scored["patient"].tolist() == frame["patient"].tolist()
    assert scored["disease"].tolist() == list(expected_predictions(heart_model, heart))


def test_nested_columns_are_json_text_and_quotes_doubled_in_csv(
        spark: SparkSession, heart_model: Path, heart: pd.DataFrame, tmp_path: Path) -> None:
    # Spark's CSV writer refuses array, map and struct columns, and escapes quotes with a
    # backslash; the local engine writes JSON text and RFC 4180 quoting, and so does this one.
    frame = heart.head(20)
    table = pa.Table.from_pandas(frame, preserve_index=False).append_column(
        "visits", pa.array([[i, i + 1] for i in range(len(frame))], pa.list_(pa.int64())))
    table = table.append_column("note", pa.array(
        [f'said "yes", then {i}' for i in range(len(frame))], pa.string()))
    table = table.append_column("meta", pa.array(
        [{"site": f"s{i % 3}", "n": i} for i in range(len(frame))],
        pa.struct([("site", pa.string()), ("n", pa.int64())])))
    source = tmp_path / "nested.parquet"
    pq.write_table(table, source)
    output = tmp_path / "nested.csv"
    score_on_spark(heart_model, str(source), str(output), signature_types=HEART_TYPES,
                   output_names=None)
    scored = read_output(output, "csv")
    assert [json.loads(v) for v in scored["visits"]] == [[i, i + 1] for i in range(len(frame))]
    assert [json.loads(v) for v in scored["meta"]] == [
        {"site": f"s{i % 3}", "n": i} for i in range(len(frame))]
    assert scored["note"].tolist() == [f'said "yes", then {i}' for i in range(len(frame))]
    assert scored["prediction"].tolist() == list(expected_predictions(heart_model, frame))


def test_csv_quotes_and_backslashes_read_as_pandas_reads_them(
        spark: SparkSession, heart_model: Path, heart: pd.DataFrame, tmp_path: Path) -> None:
    frame = heart.head(12).assign(note=[
        'said "no"', 'C:\\data\\x.csv', 'a, b', '\\"odd', "plain", 'end\\', '"', "",
        "tab\there", 'x""y', "more", "last"])
    source = tmp_path / "quoted.csv"
    frame.to_csv(source, index=False)  # pandas: RFC 4180 quoting
    output = tmp_path / "quoted-out.csv"
    score_on_spark(heart_model, str(source), str(output), signature_types=HEART_TYPES,
                   output_names=None)
    scored = read_output(output, "csv")
    expected = pd.read_csv(source)
    assert scored["note"].fillna("").tolist() == expected["note"].fillna("").tolist()
    assert scored["prediction"].tolist() == list(expected_predictions(heart_model, frame))
    # A quoted value over two lines: refused (Spark splits a file by lines), never misread.
    frame.assign(note="two\nlines").to_csv(tmp_path / "multiline.csv", index=False)
    with pytest.raises(BadInput, match="Malformed"):
        score_on_spark(heart_model, str(tmp_path / "multiline.csv"),
                       str(tmp_path / "multiline-out.csv"), signature_types=HEART_TYPES,
                       output_names=None)
    assert not (tmp_path / "multiline-out.csv").exists()


def test_multi_output_model_gives_one_column_per_output(spark: SparkSession, two_output_model: Path,
                                                        tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": [0.5, 1.5, 2.5, 3.5, 4.0], "name": list("abcde")})
    source = tmp_path / "x.csv"
    frame.to_csv(source, index=False)
    output = tmp_path / "out.parquet"
    result = score_on_spark(two_output_model, str(source), str(output),
                            signature_types={"x": "double"}, output_names=["score", "label"])
    assert result.rows == 5
    scored = read_output(output, "parquet")
    assert list(scored.columns) == ["x", "name", "prediction_score", "prediction_label"]
    expected = expected_predictions(two_output_model, frame)
    assert isinstance(expected, pd.DataFrame)
    assert scored["prediction_score"].tolist() == expected["score"].tolist()
    assert scored["prediction_label"].tolist() == expected["label"].tolist()
    assert scored["name"].tolist() == list("abcde")


@pytest.mark.parametrize("bad_line", ["oops,1,1,145,233,1,2,150,0,2.3,3,0,fixed,0",
                                      "63,1,1,145,233"], ids=["wrong-type", "ragged"])
def test_malformed_csv_fails_naming_the_file(spark: SparkSession, heart_model: Path,
                                             tmp_path: Path, bad_line: str) -> None:
    lines = HEART_CSV.read_text().splitlines()
    source = tmp_path / "broken.csv"
    source.write_text("\n".join([*lines[:50], bad_line, *lines[50:]]) + "\n")
    output = tmp_path / "new" / "folder" / "out.parquet"  # folders made for it, then removed
    with pytest.raises(BadInput) as caught:
        score_on_spark(heart_model, str(source), str(output), signature_types=HEART_TYPES,
                       output_names=None)
    message = caught.value.message
    assert str(source) in message and "Malformed" in message
    assert "\n" not in message and "at org." not in message and "file:" not in message
    assert not (tmp_path / "new").exists()


def test_a_csv_number_beyond_a_float_fails_instead_of_scoring_infinity(
        spark: SparkSession, float_model: Path, tmp_path: Path) -> None:
    # Spark alone parses "1e40" into a FloatType column as Infinity.
    source = tmp_path / "floats.csv"
    source.write_text("f,name\n1.5,a\n-3.4e38,b\nInf,c\n")  # Spark's word for inf
    output = tmp_path / "ok.parquet"
    score_on_spark(float_model, str(source), str(output), signature_types={"f": "float"},
                   output_names=None)
    scored = read_output(output, "parquet")
    assert str(scored["f"].dtype) == "float32" and scored["name"].tolist() == ["a", "b", "c"]
    assert scored["prediction"].tolist()[0] == 3.0 and scored["prediction"].tolist()[2] == \
        float("inf")
    source.write_text("f,name\n1.5,a\n1e40,b\n")
    output = tmp_path / "bad.parquet"
    with pytest.raises(BadInput) as caught:
        score_on_spark(float_model, str(source), str(output), signature_types={"f": "float"},
                       output_names=None)
    assert caught.value.message == (f"{source}: column 'f' value 1.0E40 is beyond a float's "
                                    "range (about ±3.4e38)")
    assert not output.exists()
    assert_clean_beside(output)


def test_keep_partial_keeps_the_failed_folder(spark: SparkSession, heart_model: Path,
                                              tmp_path: Path) -> None:
    source = tmp_path / "broken.csv"
    source.write_text(HEART_CSV.read_text() + "1,2\n")
    output = tmp_path / "out.parquet"
    with pytest.raises(BadInput):
        score_on_spark(heart_model, str(source), str(output), signature_types=HEART_TYPES,
                       output_names=None, keep_partial=True)
    assert not output.exists()
    assert (tmp_path / "out.parquet.partial").is_dir()


def test_not_parquet_is_bad_input(spark: SparkSession, heart_model: Path, tmp_path: Path) -> None:
    source = tmp_path / "fake.parquet"
    source.write_text("this is not parquet\n")
    with pytest.raises(BadInput) as caught:
        score_on_spark(heart_model, str(source), str(tmp_path / "out.parquet"),
                       signature_types=HEART_TYPES, output_names=None)
    assert str(source) in caught.value.message and "\n" not in caught.value.message


def test_missing_input_and_missing_columns(spark: SparkSession, heart_model: Path,
                                           heart: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        score_on_spark(heart_model, str(tmp_path / "nowhere.csv"), str(tmp_path / "o.parquet"),
                       signature_types=HEART_TYPES, output_names=None)
    source = tmp_path / "partial.csv"
    heart.drop(columns=["thal", "ca"]).to_csv(source, index=False)
    with pytest.raises(BadInput, match="missing columns: ca, thal"):
        score_on_spark(heart_model, str(source), str(tmp_path / "o.parquet"),
                       signature_types=HEART_TYPES, output_names=None)
    assert not (tmp_path / "o.parquet").exists()


def test_output_folder_replaced_only_when_ours(spark: SparkSession, heart_model: Path,
                                               tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.parquet"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(BadInput, match="not written by"):
        score_on_spark(heart_model, str(HEART_CSV), str(foreign), signature_types=HEART_TYPES,
                       output_names=None)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    ours = tmp_path / "ours.parquet"
    ours.mkdir()  # empty: may be replaced
    for _ in range(2):  # then our own output, replaced by the second run
        score_on_spark(heart_model, str(HEART_CSV), str(ours), signature_types=HEART_TYPES,
                       output_names=None)
        assert (ours / MARKER).exists()
    assert len(read_output(ours, "parquet")) == len(pd.read_csv(HEART_CSV))
    assert_clean_beside(ours)


def test_model_that_cannot_load_names_the_package(spark: SparkSession, heart_model: Path,
                                                  tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken-model"
    shutil.copytree(heart_model, broken)
    mlmodel = broken / "MLmodel"
    mlmodel.write_text(mlmodel.read_text().replace("loader_module: mlflow.sklearn",
                                                   "loader_module: flavor_not_installed_here"))
    with pytest.raises(OperationFailed, match="'flavor_not_installed_here'"):
        score_on_spark(broken, str(HEART_CSV), str(tmp_path / "out.parquet"),
                       signature_types=HEART_TYPES, output_names=None)
    assert not (tmp_path / "out.parquet").exists()


def test_active_session_is_reused_and_not_stopped(spark: SparkSession, heart_model: Path,
                                                  tmp_path: Path) -> None:
    from pyspark.sql import SparkSession

    score_on_spark(heart_model, str(HEART_CSV), str(tmp_path / "o.parquet"),
                   signature_types=HEART_TYPES, output_names=None, master="local[1]")
    assert SparkSession.getActiveSession() is spark
    assert spark.conf.get("spark.master") == "local[2]"  # its own master, not local[1]
    assert spark.range(3).count() == 3


def test_own_session_is_created_and_stopped(heart_model: Path, tmp_path: Path) -> None:
    # A fresh process: the module's shared session must not be the one found.
    output = tmp_path / "o.parquet"
    script = textwrap.dedent(f"""
        import signal
        from pathlib import Path
        from pyspark.sql import SparkSession
        from amlpromote.core.score.spark_engine import score_on_spark
        def handler(signum, frame):
            raise KeyboardInterrupt
        signal.signal(signal.SIGINT, handler)
        result = score_on_spark(Path({str(heart_model)!r}), {str(HEART_CSV)!r},
                                {str(output)!r}, signature_types={HEART_TYPES!r},
                                output_names=None, master="local[1]")
        print("rows", result.rows)
        print("active", SparkSession.getActiveSession())
        print("sigint handler kept", signal.getsignal(signal.SIGINT) is handler)
    """)
    env = dict(os.environ)
    # The engine sets the workers' Python and, for a local master, the JVM's address itself;
    # with no Spark configuration of the user's, it also quiets the JVM's logging.
    for name in ("PYSPARK_PYTHON", "SPARK_LOCAL_IP", "SPARK_CONF_DIR", "SPARK_HOME"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for noise in ("log4j profile", "Setting default log level", " WARN ", "resolves to a loopback"):
        assert noise not in done.stderr, done.stderr[-2000:]
    assert "rows 303" in done.stdout and "active None" in done.stdout
    # SparkContext installs its own SIGINT handler; the caller's (the CLI's) is put back.
    assert "sigint handler kept True" in done.stdout
    assert (output / "_SUCCESS").exists()


def test_folder_with_mixed_headers_or_schemas_is_refused(spark: SparkSession, heart_model: Path,
                                                         heart: pd.DataFrame,
                                                         tmp_path: Path) -> None:
    csvs = tmp_path / "csvs"
    csvs.mkdir()
    heart.iloc[:100].to_csv(csvs / "a.csv", index=False)
    heart.iloc[100:].rename(columns={"chol": "cholesterol"}).to_csv(csvs / "b.csv", index=False)
    with pytest.raises(BadInput) as caught:
        score_on_spark(heart_model, str(csvs), str(tmp_path / "o.parquet"),
                       signature_types=HEART_TYPES, output_names=None)
    assert str(csvs / "b.csv") in caught.value.message and "'cholesterol'" in caught.value.message

    parquets = tmp_path / "parquets"
    parquets.mkdir()
    heart.iloc[:100].to_parquet(parquets / "a.parquet", index=False)
    heart.iloc[100:].astype({"oldpeak": str}).to_parquet(parquets / "b.parquet", index=False)
    with pytest.raises(BadInput, match=r"b\.parquet has other columns or types.*oldpeak"):
        score_on_spark(heart_model, str(parquets), str(tmp_path / "o.parquet"),
                       signature_types=HEART_TYPES, output_names=None)
    assert not (tmp_path / "o.parquet").exists()


def test_model_without_signature_gets_inferred_columns(spark: SparkSession, heart: pd.DataFrame,
                                                       tmp_path: Path) -> None:
    import mlflow.sklearn

    model = tmp_path / "unsigned"
    mlflow.sklearn.save_model(trained_heart_model().pipeline, model,
                              pip_requirements=list(trained_heart_model().pip_requirements))
    features = heart.drop(columns=["target"])
    source = tmp_path / "features.csv"
    features.to_csv(source, index=False)
    output = tmp_path / "o.parquet"
    score_on_spark(model, str(source), str(output), signature_types=None, output_names=None)
    scored = read_output(output, "parquet")
    assert str(scored["oldpeak"].dtype) == "float64"  # inferred by Spark, not left as text
    # No output signature: predictions are doubles (spark_udf's default result type).
    assert scored["prediction"].tolist() == [float(v) for v in
                                             expected_predictions(model, features)]


def test_prediction_column_that_clashes_is_refused(spark: SparkSession, heart_model: Path,
                                                   tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="already has a column named 'target'"):
        score_on_spark(heart_model, str(HEART_CSV), str(tmp_path / "o.parquet"),
                       signature_types=HEART_TYPES, output_names=None,
                       prediction_column="target")


def test_the_cli_scores_on_spark_with_the_active_session(spark: SparkSession, heart_model: Path,
                                                          heart: pd.DataFrame,
                                                          tmp_path: Path) -> None:
    from support.cli import cli

    output = tmp_path / "cli-scored.parquet"
    run = cli("score", "--model", str(heart_model), "--engine", "spark", "--input",
              str(HEART_CSV), "--output", str(output), "--output", "json")
    assert run.code == 0, run.both
    assert run.document["mode"] == "spark" and run.document["rows"] == len(heart)
    scored = read_output(output, "parquet")
    assert scored["prediction"].tolist() == list(expected_predictions(heart_model, heart))
    assert spark.sparkContext._jsc is not None  # the session it found is still running
    refused = cli("score", "--model", str(heart_model), "--engine", "spark", "--input", "-",
                  "--output", str(tmp_path / "x.parquet"))
    assert refused.code == 2 and "stdin" in refused.stderr
