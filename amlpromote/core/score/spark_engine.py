"""The Spark engine: `mlflow.pyfunc.spark_udf` over a DataFrame that Spark reads and writes.

`score_on_spark` reads a CSV or parquet file or folder with Spark, adds the model's predictions
as columns and lets Spark write the output folder (its own layout: part files and `_SUCCESS`),
so the same call scores a laptop's file at `local[2]` or a folder on a cluster.

- Session: the active one when there is one (`spark-submit`, Databricks, a notebook), never
  stopped; else one built here with `master` and stopped at the end. Under `spark-submit`
  (`PYSPARK_GATEWAY_PORT` set) the master and configuration are spark-submit's.
- Environment: the model runs in this Python environment (`env_manager="local"`); on a
  cluster the executors' Python must have the model's packages. The model is loaded once on
  the driver first, so a missing flavor package fails in a second, with its name.
- Input order: every file is read as its own DataFrame and the files are unioned in name
  order; Spark keeps row order within a file's partitions and across a union, and nothing here
  shuffles, so the part files, read in name order, give the input rows in input order.
- Output: for local paths (plain or `file:`), Spark writes `.{name}.partial-XXXX` beside the
  final path, which is renamed into place once Spark has committed; a failed run leaves
  nothing (or `{name}.partial` with `keep_partial`). For other URI schemes (`abfss:`, `dbfs:`,
  `s3a:`...) Spark writes the final path directly, because object stores have no atomic
  folder rename: a failed run there can leave Spark's partial files behind.
- An existing output folder is replaced only when it is empty or was written by this function
  (Spark's `_SUCCESS` plus our `_amlpromote_score.json`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import secrets
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from amlpromote.core.errors import AmlPromoteError, BadInput, NotFound, OperationFailed

# The marker of a folder written by `amlpromote score`, and how one is put in place: the same
# for Spark's folders as for the local engine's.
from amlpromote.core.score.tables import MARKER, make_parents, remove_made, replace_folder

if TYPE_CHECKING:
    from pyspark.sql import Column as SparkColumn
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import DataType, StructType

SUCCESS = "_SUCCESS"
_PREDICTION_TMP = "__amlpromote_prediction"
_INPUT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_OUTPUT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
# Spark's CSV and parquet readers decompress these by extension.
_COMPRESSION = {".gz", ".bz2", ".snappy", ".lz4", ".zst", ".deflate", ".xz"}
# Where a widening cast of a parquet column is what MLflow's own enforcement would do
# (signature.py's rules): target MLflow type -> Spark type names accepted as they are or cast.
_WIDENS_TO = {
    "long": {"byte", "short", "integer", "long"},
    "integer": {"byte", "short", "integer"},
    "double": {"byte", "short", "integer", "long", "float", "double"},
    "float": {"byte", "short", "float"},
    "boolean": {"boolean"},
    "string": {"string"},
    "binary": {"binary"},
    "datetime": {"timestamp", "timestamp_ntz", "date"},
}
_SPARK_TYPE_NAMES = {
    "long": "LongType", "integer": "IntegerType", "double": "DoubleType", "float": "FloatType",
    "boolean": "BooleanType", "string": "StringType", "datetime": "TimestampType",
    "binary": "BinaryType",
}
# Output types spark_udf can return for one prediction (others come back as strings).
_OUTPUT_TYPE_NAMES = {
    "long": "LongType", "integer": "IntegerType", "double": "DoubleType", "float": "FloatType",
    "boolean": "BooleanType", "string": "StringType",
}


@dataclass
class SparkResult:
    rows: int  # rows written
    files: int  # input files read
    output: str  # the output path or URI, as given
    seconds: float


def score_on_spark(model_path: Path, input_spec: str, output_spec: str, *,
                   signature_types: dict[str, str] | None,
                   output_names: list[str] | None,
                   prediction_column: str = "prediction", id_column: str | None = None,
                   output_format: str | None = None,
                   master: str = "local[*]", keep_partial: bool = False,
                   progress: Callable[[str], None] | None = None) -> SparkResult:
    """Score `input_spec` (CSV or parquet, file or folder) with the MLflow model at
    `model_path` through `mlflow.pyfunc.spark_udf`, and write `output_spec` as a Spark folder.

    `signature_types` (column -> MLflow type name) are the model's input columns: read with
    those Spark types (CSV) or checked and widened (parquet), passed to the model by name;
    every other column passes through untouched. Without them the model gets every column, as
    Spark infers them. `output_names` (more than one) become `{prediction_column}_{name}`
    columns; else one `prediction_column`. With `id_column`, only that column and the
    predictions are written. Raises BadInput, NotFound or OperationFailed with one line.
    """
    started = time.monotonic()
    report = progress or (lambda _phase: None)
    if input_spec == "-" or output_spec == "-":
        raise BadInput("the Spark engine reads and writes files, not standard input or output",
                       hint="give --input and --output paths, or use --engine local")
    fmt = _output_format(output_spec, output_format)
    target = _OutputTarget(output_spec)
    if not (model_path / "MLmodel").is_file():
        raise NotFound(f"no MLflow model at {model_path} (no MLmodel file)",
                       hint="pass the folder of an MLflow model (it holds an MLmodel file)")
    # The driver's check that the model loads runs while the JVM starts (seconds each).
    with ThreadPoolExecutor(max_workers=1) as pool:
        loading = pool.submit(_check_model_loads, model_path)
        try:
            spark, created = _session(master)
        except BaseException:
            loading.cancel()
            raise
        try:
            loading.result()
        except BaseException:
            if created:
                spark.stop()
            raise
    try:
        target.check_replaceable(spark)
        report("reading")
        files, in_fmt = _input_files(spark, input_spec)
        if target.same_as_any(files):
            raise BadInput(f"the output {output_spec} is the input",
                           hint="write the output somewhere else")
        frame = _read(spark, files, in_fmt, signature_types, input_spec)
        report("scoring")
        scored, observation = _score(spark, frame, model_path, signature_types, output_names,
                                     prediction_column, id_column, input_spec)
        report("writing")
        target.write(spark, scored, fmt, keep_partial, input_spec, model_path)
        rows = int(observation.get["rows"])
        target.finish(spark, rows)
        return SparkResult(rows=rows, files=len(files), output=output_spec,
                           seconds=time.monotonic() - started)
    except AmlPromoteError:
        raise
    except Exception as exc:
        translated = _translate(exc, input_spec)
        if translated is None:
            raise
        raise translated from None
    finally:
        if created:
            spark.stop()


# --- session --------------------------------------------------------------------------------

def _session(master: str) -> tuple[SparkSession, bool]:
    """The active session (not ours to stop), or a new one; True when created here."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise OperationFailed("the Spark engine needs pyspark, which is not installed",
                              hint="pip install 'pyspark>=3.5' (and Java 17), or use "
                                   "--engine local") from None
    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    builder = SparkSession.builder.appName("amlpromote score")
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit already chose everything
    if not submitted:
        builder = builder.master(master).config("spark.ui.enabled", "false")
        builder = builder.config("spark.ui.showConsoleProgress", "false")
        if master.startswith("local"):
            # Loopback only: a laptop's driver must not listen on the network. (A cluster's
            # executors must reach the driver, so other masters keep Spark's defaults.)
            builder = builder.config("spark.driver.host", "127.0.0.1")
            builder = builder.config("spark.driver.bindAddress", "127.0.0.1")
        if _no_spark_configuration():
            builder = builder.config("spark.driver.extraJavaOptions",
                                     f"-Dlog4j2.configurationFile={_LOG4J2.as_uri()}")
    # env_manager="local": the Python workers must be this interpreter, with the model's
    # packages, not whatever `python3` is first on PATH. SparkContext reads PYSPARK_PYTHON once,
    # when it starts, so it is set only for that moment.
    launch_env = {} if "PYSPARK_PYTHON" in os.environ or submitted else \
        {"PYSPARK_PYTHON": sys.executable}
    if not submitted and master.startswith("local") and "SPARK_LOCAL_IP" not in os.environ:
        # Else the JVM looks up this host's network address at start (and warns on stderr
        # that it resolves to loopback, "using" the network interface's address instead).
        launch_env["SPARK_LOCAL_IP"] = "127.0.0.1"
    # SparkContext installs its own SIGINT handler (cancel every job, raise KeyboardInterrupt);
    # the caller's handler is put back, and `_OutputTarget.write` cancels our own jobs.
    previous = signal.getsignal(signal.SIGINT)
    try:
        with _environment(launch_env):
            spark = builder.getOrCreate()
        if threading.current_thread() is threading.main_thread() and previous is not None:
            signal.signal(signal.SIGINT, previous)
    except Exception as exc:
        raise OperationFailed(f"could not start Spark ({master}): {_first_line(str(exc))}",
                              hint="Spark needs Java 17 or later (JAVA_HOME); check "
                                   "--spark-master") from None
    if not submitted:
        # Failures are reported as one line; Spark's ERROR log would repeat each one as a
        # Java stack trace on stderr.
        spark.sparkContext.setLogLevel("FATAL")
    return spark, True


_LOG4J2 = Path(__file__).with_name("spark-log4j2.properties")


def _no_spark_configuration() -> bool:
    """Whether Spark would run with its built-in defaults: no SPARK_CONF_DIR and no conf/
    under SPARK_HOME. Only then is the JVM's logging ours to quiet; a user's log4j2.properties
    or spark-defaults.conf (which may set extraJavaOptions) is left to do what it says."""
    if os.environ.get("SPARK_CONF_DIR"):
        return False
    home = os.environ.get("SPARK_HOME")
    return not (home and (Path(home) / "conf").exists())


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """No download bars or env_manager warning from spark_udf: the docstring says it once."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with _environment({"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}):
            yield
    finally:
        logger.setLevel(level)


def _check_model_loads(model_path: Path) -> None:
    """Load the model once on the driver: a missing package then fails in seconds, by name,
    not as a Python traceback from inside a Spark task."""
    import mlflow.pyfunc

    try:
        # MLflow's advice to the model's author (type hints, input examples) is not the
        # scoring user's to act on.
        with _quiet_mlflow(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            mlflow.pyfunc.load_model(str(model_path))
    except ModuleNotFoundError as exc:
        raise OperationFailed(
            f"the model at {model_path} cannot load here: it needs the Python package "
            f"'{exc.name}', which is not installed",
            hint=f"install {exc.name} in this environment (the Spark engine runs the model in "
                 "this Python, env_manager=local)") from None
    except Exception as exc:
        raise OperationFailed(
            f"the model at {model_path} cannot load here: {type(exc).__name__}: "
            f"{_first_line(str(exc))}",
            hint="check the model's requirements against this environment") from None


# --- input ----------------------------------------------------------------------------------

def _is_local(spec: str) -> bool:
    scheme = urlparse(spec).scheme
    return scheme in ("", "file") or len(scheme) == 1  # one letter: a Windows drive


def _local_path(spec: str) -> Path:
    parsed = urlparse(spec)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(spec)


def _format_of(name: str) -> str | None:
    suffixes = [s.lower() for s in Path(name).suffixes]
    while suffixes and suffixes[-1] in _COMPRESSION:
        suffixes.pop()
    return _INPUT_FORMATS.get(suffixes[-1]) if suffixes else None


def _hidden(name: str) -> bool:
    # Spark's own rule for files a folder read skips (_SUCCESS, .crc checksums, our marker).
    return name.startswith(("_", "."))


def _input_files(spark: SparkSession, spec: str) -> tuple[list[str], str]:
    """The data files of `spec` in name order, and their one format."""
    if _is_local(spec):
        path = _local_path(spec)
        if not path.exists():
            raise NotFound(f"input {spec} does not exist", hint="check the --input path")
        if path.is_file():
            names = [(str(path.resolve()), path.name)]
            folder = False
        else:
            names = [(str(p.resolve()), p.name) for p in sorted(path.iterdir())
                     if p.is_file() and not _hidden(p.name)]
            folder = True
    else:
        names, folder = _remote_listing(spark, spec)
    if not names:
        raise BadInput(f"input folder {spec} holds no data files",
                       hint="point --input at a CSV or parquet file or a folder of them")
    formats: dict[str, str] = {}
    for full, name in names:
        found = _format_of(name)
        if found is None:
            raise BadInput(
                f"{full if folder else spec}: the Spark engine reads CSV (.csv) or parquet "
                "(.parquet) files", hint="use --engine local for JSON lines, or rename")
        formats.setdefault(found, full)
    if len(formats) > 1:
        raise BadInput(f"input folder {spec} mixes CSV and parquet files "
                       f"({formats['csv']}, {formats['parquet']})",
                       hint="score each format separately")
    return [full for full, _ in names], next(iter(formats))


def _remote_listing(spark: SparkSession, spec: str) -> tuple[list[tuple[str, str]], bool]:
    """List a URI through Hadoop's FileSystem (abfss, s3a, dbfs...), as Spark itself will."""
    fs, path = _hadoop(spark, spec)
    if not fs.exists(path):
        raise NotFound(f"input {spec} does not exist", hint="check the --input URI")
    if not fs.getFileStatus(path).isDirectory():
        return [(spec, path.getName())], False
    listed = [(str(s.getPath().toString()), str(s.getPath().getName()))
              for s in fs.listStatus(path) if s.isFile()]
    return sorted(item for item in listed if not _hidden(item[1])), True


def _hadoop(spark: SparkSession, uri: str) -> tuple[Any, Any]:
    jvm = getattr(spark.sparkContext, "_jvm", None)
    if jvm is None:
        raise BadInput(f"{uri}: this Spark session cannot list files (Spark Connect)",
                       hint="use a local path, or run amlpromote on the cluster's driver")
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path


def _spark_type(mlflow_type: str) -> DataType:
    from pyspark.sql import types

    return getattr(types, _SPARK_TYPE_NAMES.get(mlflow_type, "StringType"))()


def _col(name: str) -> SparkColumn:
    from pyspark.sql import functions as F

    # Backticks keep dots and spaces in a column name from being read as struct access.
    return F.col("`" + name.replace("`", "``") + "`")


def _read(spark: SparkSession, files: list[str], fmt: str,
          signature_types: dict[str, str] | None, spec: str) -> DataFrame:
    # CSV is read as RFC 4180 (a quote inside quotes is doubled), as pandas and the local engine
    # read it: Spark's default escape, a backslash, would mangle Windows paths and "" quotes.
    if fmt == "csv":
        schema = _csv_schema(spark, files, signature_types, spec)
        frames = [_narrow_floats(spark.read.options(header=True, mode="FAILFAST",
                                                    enforceSchema=False, escape='"')
                                 .schema(schema).csv(f), f, signature_types)
                  for f in files]
    else:
        frames = [spark.read.parquet(f) for f in files]
        first = _shape(frames[0].schema)
        for path, frame in zip(files[1:], frames[1:], strict=True):
            if _shape(frame.schema) != first:
                raise BadInput(f"{path} has other columns or types than {files[0]} "
                               f"({_differences(frames[0].schema, frame.schema)})",
                               hint="a folder input needs one schema in every file")
    # A union in file order keeps the input order (one read of many files would pack them
    # into partitions by size).
    frame = functools.reduce(lambda a, b: a.union(b), frames)
    if signature_types:
        _check_signature(frame.schema, signature_types, spec)
        if fmt == "parquet":
            frame = _widen(frame, signature_types)
    return frame


def _csv_schema(spark: SparkSession, files: list[str],
                signature_types: dict[str, str] | None, spec: str) -> StructType:
    from pyspark.sql import types

    if not signature_types:
        # No signature: Spark infers the types, over every file at once so they agree.
        return spark.read.options(header=True, inferSchema=True, mode="FAILFAST",
                                  escape='"').csv(files).schema
    header = spark.read.options(header=True, escape='"').csv(files[0]).columns
    if not header:
        raise BadInput(f"{files[0]} has no header row",
                       hint="CSV input needs a header naming the columns")
    # A float column is read as a double and narrowed by _narrow_floats: Spark parses "1e40"
    # into a float as Infinity, a value the row never had.
    return types.StructType([types.StructField(
        name, types.DoubleType() if signature_types.get(name) == "float" else
        _spark_type(signature_types[name]) if name in signature_types else types.StringType())
        for name in header])


_FLOAT_MAX = 3.4028234663852886e38
_OUR_ERROR = "amlpromote: "  # starts the message of a check of ours that fails a Spark job


def _narrow_floats(frame: DataFrame, path: str,
                   signature_types: dict[str, str] | None) -> DataFrame:
    """The signature's float columns of a CSV (read as doubles) as floats; a finite value
    beyond a float's range fails the job with a message naming the file, column and value."""
    from pyspark.sql import functions as F

    floats = {n for n, kind in (signature_types or {}).items() if kind == "float"}
    if not floats & set(frame.columns):
        return frame
    where = _LOCAL_FILE_URI.sub(r"\1", path)

    def narrow(name: str) -> SparkColumn:
        value = _col(name)
        beyond = (F.abs(value) > F.lit(_FLOAT_MAX)) & ~F.isnan(value) & \
            (F.abs(value) != F.lit(float("inf")))
        message = F.concat(F.lit(f"{_OUR_ERROR}{where}: column {name!r} value "),
                           value.cast("string"), F.lit(" is beyond a float's range (about "
                                                       "±3.4e38)"))
        return F.when(beyond, F.raise_error(message)).otherwise(value.cast("float")).alias(name)

    return frame.select(*[narrow(n) if n in floats else _col(n) for n in frame.columns])


def _shape(schema: StructType) -> list[tuple[str, str]]:
    return [(f.name, f.dataType.simpleString()) for f in schema.fields]


def _differences(a: StructType, b: StructType) -> str:
    left, right = dict(_shape(a)), dict(_shape(b))
    parts = [f"{n}: {left.get(n, 'missing')} vs {right.get(n, 'missing')}"
             for n in list(left) + [n for n in right if n not in left]
             if left.get(n) != right.get(n)]
    return ", ".join(parts[:5]) or "column order"


def _check_signature(schema: StructType, signature_types: dict[str, str], spec: str) -> None:
    fields = {f.name: f.dataType.typeName() for f in schema.fields}
    missing = [n for n in signature_types if n not in fields]
    wrong = [f"{n} is {fields[n]}, the model takes {t}" for n, t in signature_types.items()
             if n in fields and t in _WIDENS_TO and fields[n] not in _WIDENS_TO[t]]
    problems = ([f"missing columns: {', '.join(missing)}"] if missing else []) + wrong
    if problems:
        raise BadInput(f"{spec} does not fit the model's signature: {'; '.join(problems)}",
                       hint="give the columns the model's signature names, with its types")


def _widen(frame: DataFrame, signature_types: dict[str, str]) -> DataFrame:
    types = {f.name: f.dataType.typeName() for f in frame.schema.fields}
    columns = [(_col(n).cast(_spark_type(signature_types[n])).alias(n)
                if n in signature_types and signature_types[n] in _SPARK_TYPE_NAMES
                and types[n] != _spark_type(signature_types[n]).typeName() else _col(n))
               for n in frame.columns]
    return frame.select(*columns)


# --- scoring --------------------------------------------------------------------------------

def _result_type(model_path: Path, output_names: list[str] | None,
                 prediction_column: str) -> tuple[DataType, list[tuple[str, Any]]]:
    """spark_udf's result type, and how each output column is taken from the UDF's value."""
    from mlflow.models import Model
    from mlflow.types import DataType as MlflowType
    from mlflow.types.schema import ColSpec, TensorSpec
    from pyspark.sql import types

    schema = Model.load(str(model_path / "MLmodel")).get_output_schema()
    specs = list(schema.inputs) if schema is not None else []

    def spark_of(spec: Any) -> DataType:
        if isinstance(spec, ColSpec):
            name = spec.type.name if isinstance(spec.type, MlflowType) else "string"
        elif isinstance(spec, TensorSpec):
            found = MlflowType.from_numpy_type(spec.type)
            name = found.name if found is not None else "double"
        else:
            name = "string"
        return getattr(types, _OUTPUT_TYPE_NAMES.get(name, "StringType"))()

    if output_names and len(output_names) > 1:
        by_name = {s.name: s for s in specs if getattr(s, "name", None)}
        fields = [types.StructField(n, spark_of(by_name[n]) if n in by_name
                                    else types.DoubleType()) for n in output_names]
        return types.StructType(fields), [(f"{prediction_column}_{n}", n) for n in output_names]
    if not specs:
        return types.DoubleType(), [(prediction_column, None)]
    spec = specs[0]
    shape = getattr(spec, "shape", None)
    if isinstance(spec, TensorSpec) and shape is not None and len(shape) == 2 and shape[1] > 0:
        # A 2-D output, one row per input row: prediction_0 ... prediction_{k-1}.
        return (types.ArrayType(spark_of(spec)),
                [(f"{prediction_column}_{i}", i) for i in range(shape[1])])
    return spark_of(spec), [(prediction_column, None)]


def _score(spark: SparkSession, frame: DataFrame, model_path: Path,
           signature_types: dict[str, str] | None, output_names: list[str] | None,
           prediction_column: str, id_column: str | None, spec: str) -> tuple[DataFrame, Any]:
    import mlflow.pyfunc
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    result_type, outputs = _result_type(model_path, output_names, prediction_column)
    if id_column is not None and id_column not in frame.columns:
        raise BadInput(f"{spec} has no column {id_column!r} (--id-column)",
                       hint=f"the columns are: {', '.join(frame.columns[:20])}")
    kept = [id_column] if id_column is not None else list(frame.columns)
    clashes = [name for name, _ in outputs if name in kept]
    if clashes:
        raise BadInput(f"{spec} already has a column named {clashes[0]!r}",
                       hint="name the predictions otherwise with --prediction-column")
    inputs = [n for n in signature_types if n in frame.columns] if signature_types \
        else list(frame.columns)
    with _quiet_mlflow():
        udf = mlflow.pyfunc.spark_udf(spark, str(model_path), result_type=result_type,
                                      env_manager="local")
    # One struct argument: the model gets a pandas DataFrame with the real column names.
    scored = frame.select(*[_col(c) for c in kept],
                          udf(F.struct(*[_col(c) for c in inputs])).alias(_PREDICTION_TMP))
    prediction = F.col(_PREDICTION_TMP)
    columns = [_col(c) for c in kept] + [
        (prediction if key is None else prediction[key]).alias(name) for name, key in outputs]
    observation = Observation("amlpromote_score")
    return scored.select(*columns).observe(observation, F.count(F.lit(1)).alias("rows")), \
        observation


# --- output ---------------------------------------------------------------------------------

def _flat_for_csv(frame: DataFrame) -> DataFrame:
    """The frame with each array, struct or map column (an input column passed through, or a
    model's vector per row) as JSON text, as the local engine writes them: Spark's CSV writer
    refuses nested columns."""
    from pyspark.sql import functions as F
    from pyspark.sql import types

    nested = (types.ArrayType, types.MapType, types.StructType)
    if not any(isinstance(field.dataType, nested) for field in frame.schema.fields):
        return frame
    return frame.select(*[
        F.to_json(_col(field.name)).alias(field.name) if isinstance(field.dataType, nested)
        else _col(field.name) for field in frame.schema.fields])


def _output_format(spec: str, given: str | None) -> str:
    if given is not None:
        if given not in ("csv", "parquet"):
            raise BadInput(f"the Spark engine writes csv or parquet, not {given!r}",
                           hint="use --output-format csv or parquet")
        return given
    suffix = Path(urlparse(spec).path if not _is_local(spec) else spec).suffix.lower()
    if suffix not in _OUTPUT_FORMATS:
        raise BadInput(f"cannot tell the output format of {spec}",
                       hint="end the output path with .csv or .parquet")
    return _OUTPUT_FORMATS[suffix]


class _OutputTarget:
    """Where Spark writes, and the swap into place (local) or the direct write (URIs)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.local = _local_path(spec) if _is_local(spec) else None
        self.temporary: Path | None = None
        self.made: list[Path] = []  # the output's parent folders this run created
        self.replace = False
        self.model = ""
        self.input = ""

    def same_as_any(self, files: list[str]) -> bool:
        if self.local is None:
            return self.spec.rstrip("/") in {f.rstrip("/") for f in files}
        final = self.local.resolve()
        return any(final == Path(f) or final in Path(f).parents for f in files)

    def check_replaceable(self, spark: SparkSession) -> None:
        """Refuse early an output that exists and is not ours to replace."""
        if self.local is not None:
            if self.local.is_file() or (self.local.exists() and not self.local.is_dir()):
                raise BadInput(f"the output {self.spec} exists and is a file",
                               hint="the Spark engine writes a folder: choose another --output")
            if self.local.is_dir():
                names = {p.name for p in self.local.iterdir()}
                self._refuse_unless_ours(names)
                self.replace = True
            return
        fs, path = _hadoop(spark, self.spec)
        if fs.exists(path):
            if not fs.getFileStatus(path).isDirectory():
                raise BadInput(f"the output {self.spec} exists and is a file",
                               hint="the Spark engine writes a folder: choose another --output")
            self._refuse_unless_ours({str(s.getPath().getName()) for s in fs.listStatus(path)})
            self.replace = True

    def _refuse_unless_ours(self, names: set[str]) -> None:
        if names and not {SUCCESS, MARKER} <= names:
            raise BadInput(f"the output {self.spec} exists and was not written by "
                           "`amlpromote score`; not replacing it",
                           hint="choose another --output, or remove that folder first")

    def write(self, spark: SparkSession, frame: DataFrame, fmt: str, keep_partial: bool,
              input_spec: str, model_path: Path) -> None:
        self.model, self.input = str(model_path), input_spec
        if self.local is None:
            self._save(frame, fmt, self.spec, "overwrite" if self.replace else "errorifexists")
            return
        self.made = make_parents(self.local.parent)
        self.temporary = self.local.parent / f".{self.local.name}.partial-{secrets.token_hex(4)}"
        try:
            self._save(frame, fmt, str(self.temporary), "errorifexists")
        except BaseException:
            self._discard(keep_partial)
            raise

    @staticmethod
    def _save(frame: DataFrame, fmt: str, where: str, mode: str) -> None:
        """Run the one Spark job (read, score, write), cancelled if this process is stopped."""
        if fmt == "csv":
            frame = _flat_for_csv(frame)
        writer = frame.write.mode(mode)
        # A tag, not a job group: a session that is the caller's keeps its own group, and an
        # interrupt cancels only this run's jobs (Spark Connect sessions have no context).
        context = None
        with contextlib.suppress(Exception):
            context = frame.sparkSession.sparkContext
        tag = f"amlpromote-score-{secrets.token_hex(4)}"
        if context is not None:
            context.addJobTag(tag)
        try:
            if fmt == "csv":
                # RFC 4180 quoting ("" inside quotes), as pandas and the local engine write
                # it: Spark's default escape is a backslash, which other readers keep as text.
                writer.option("header", True).option("escape", '"').csv(where)
            else:
                writer.parquet(where)
        except KeyboardInterrupt:
            if context is not None:
                with contextlib.suppress(Exception):
                    context.cancelJobsWithTag(tag)
            raise
        finally:
            if context is not None:
                with contextlib.suppress(Exception):
                    context.removeJobTag(tag)

    def _discard(self, keep_partial: bool) -> None:
        if self.temporary is not None and self.temporary.exists():
            if keep_partial and self.local is not None:
                kept = self.local.parent / f"{self.local.name}.partial"
                if kept.is_dir():
                    shutil.rmtree(kept)
                self.temporary.rename(kept)
                return
            shutil.rmtree(self.temporary, ignore_errors=True)
        remove_made(self.made)

    def finish(self, spark: SparkSession, rows: int) -> None:
        """Mark the folder as ours, then move it into place (local) or leave it (URIs)."""
        marker = json.dumps({"written_by": "amlpromote score", "engine": "spark",
                             "model": self.model, "input": self.input, "rows": rows,
                             "finished": datetime.now(UTC).isoformat(timespec="seconds")},
                            indent=2) + "\n"
        if self.local is None:
            if getattr(spark.sparkContext, "_jvm", None) is not None:
                fs, path = _hadoop(spark, self.spec.rstrip("/") + "/" + MARKER)
                stream = fs.create(path, True)
                try:
                    stream.write(bytearray(marker.encode()))
                finally:
                    stream.close()
            return
        assert self.temporary is not None
        try:
            (self.temporary / MARKER).write_text(marker)
            final = self.local
            if final.exists():
                # Checked again: something may have appeared there while Spark ran.
                self._refuse_unless_ours({p.name for p in final.iterdir()}
                                         if final.is_dir() else {"(a file)"})
            replace_folder(self.temporary, final)
        except BaseException:
            self._discard(keep_partial=False)
            raise
        self.temporary = None


# --- errors ---------------------------------------------------------------------------------

_ERROR_CLASS = re.compile(r"^\[[A-Z0-9_.]+\]\s*")
_SQLSTATE = re.compile(r"\s*SQLSTATE: \w+\.?")
_JAVA_CLASS = re.compile(r"^(?:[\w$]+\.)+[\w$]+(?:Exception|Error): ")
_LOCAL_FILE_URI = re.compile(r"file:(?://)?(/[^\s,;]*[^\s,;.])")
_READ_FILE = re.compile(r"(?:reading file|CSV file:|for file:?) (\S*[^\s.])")
_HEADER_MISMATCH = re.compile(r"Expected: (.+?) but found: (.+?)\s*(?:\n|CSV file:|$)")
_NO_MODULE = re.compile(r"No module named '([\w.]+)'")


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip() and not line.startswith(": "):
            return line.strip()
        if line.startswith(": "):
            return line[2:].strip()
    return text.strip()


def _clean(text: str) -> str:
    line = _first_line(text)
    line = _JAVA_CLASS.sub("", line)
    line = _ERROR_CLASS.sub("", line)
    line = _SQLSTATE.sub("", line)
    return _LOCAL_FILE_URI.sub(r"\1", " ".join(line.split()))


def _messages(exc: BaseException) -> list[str]:
    """The messages of a Spark failure, outermost first: the Java cause chain of a
    Py4JJavaError, or the Python exception's own text."""
    java = getattr(exc, "java_exception", None)
    found: list[str] = []
    while java is not None and len(found) < 12:
        try:
            found.append(f"{java.getClass().getName()}: {java.getMessage()}")
            java = java.getCause()
        except Exception:
            break
    return found or [str(exc)]


def _python_error(text: str) -> str | None:
    """The last line of a Python traceback in a Spark message (the exception itself)."""
    if "Traceback (most recent call last)" not in text:
        return None
    lines = [line for line in _SQLSTATE.sub("", text).splitlines()
             if line.strip() and not line.startswith((" ", "\t", "Traceback"))]
    return " ".join(lines[-1].split()) if lines else None


def _translate(exc: BaseException, spec: str) -> AmlPromoteError | None:
    """One line for a failure Spark reports as a Java or Python exception; None: a bug."""
    try:
        from py4j.protocol import Py4JError
        from pyspark.errors import PySparkException
    except ImportError:
        return None
    if not isinstance(exc, (Py4JError, PySparkException)):
        return None
    messages = _messages(exc)
    text = "\n".join(messages)
    python = next((p for p in map(_python_error, messages) if p), None)
    if python is not None:
        module = _NO_MODULE.search(python)
        if module:
            return OperationFailed(
                f"the model cannot load in Spark's Python workers: it needs the package "
                f"'{module.group(1)}', which is not installed there",
                hint=f"install {module.group(1)} in the workers' Python (env_manager=local)")
        if "MlflowException" in python and ("schema" in python or "type" in python):
            return BadInput(f"the model refused rows of {spec}: {python}",
                            hint="check the input's columns and types against the signature")
        return OperationFailed(f"the model failed while scoring {spec}: {python}",
                               hint="run the model on a few of these rows with --engine local "
                                    "to see which ones")
    ours = next((m for m in map(_clean, messages) if m.startswith(_OUR_ERROR)), None)
    if ours is not None:
        return BadInput(ours.removeprefix(_OUR_ERROR), hint="fix those values in the input")
    if "PATH_NOT_FOUND" in text or "Path does not exist" in text:
        return NotFound(f"input {spec} does not exist: {_clean(messages[-1])}",
                        hint="check the --input path")
    read = _READ_FILE.search(_LOCAL_FILE_URI.sub(r"\1", text))
    if read or "Malformed" in text or "CSV header does not conform" in text:
        where = read.group(1) if read else spec
        header = _HEADER_MISMATCH.search(text)
        if header:
            return BadInput(f"cannot read {where}: its header has {header.group(2).strip()!r} "
                            f"where the first file has {header.group(1).strip()!r}",
                            hint="every CSV file of a folder input needs the same header")
        details: list[str] = []
        for message in messages:
            cleaned = _clean(message).replace(where, "")
            cleaned = re.sub(r"^Encountered error while reading file\.?\s*", "", cleaned)
            cleaned = cleaned.strip(" .:")
            if cleaned and cleaned not in details and not cleaned.startswith(
                    ("Job aborted", "An error occurred", "Exception thrown in awaitResult")):
                details.append(cleaned)
        hint = ("fix or remove the malformed rows (CSV is read with its header, in FAILFAST "
                "mode: a bad row fails the run; a quoted value over several lines needs "
                "parquet or --engine local)" if where.lower().endswith(".csv") or
                "Malformed" in text else "check that the file is what its name says")
        return BadInput(f"cannot read {where}: {'; '.join(details)[:400] or 'malformed'}",
                        hint=hint)
    return OperationFailed(f"Spark failed: {_clean(messages[-1])[:400]}",
                           hint="rerun with --verbose to see Spark's own error")
