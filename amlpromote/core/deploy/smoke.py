"""The smoke-test request sent to a new deployment before it gets traffic, and the answer's check.

The request is in the Azure ML online endpoint format for MLflow models: everything under
`input_data`, a data frame in split orientation (`{"columns", "index", "data"}`), a tensor (a
list) or named tensors (a dict of lists), optionally with `params` beside it
(MicrosoftDocs/azure-ai-docs how-to-deploy-mlflow-models.md, "Input structure"). It comes from,
in order: the user's `--smoke-input FILE` (a request file as `az ml online-endpoint invoke
--request-file` takes, or a CSV or parquet file of rows), the model's saved input example, or
rows made up from its signature.

`rows` is how many predictions the answer must hold; 0 when the input's form does not say
(named inputs that are not a batch, such as a chat request), and then only the status and JSON
are checked.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amlpromote.core.deploy.preflight import (
    ModelFiles,
    example_files,
    loads_json,
    read_mlmodel,
)
from amlpromote.core.errors import BadInput, NotFound, OperationFailed

# Managed online endpoints answer 413 to a request payload over 1.5 MB
# (how-to-troubleshoot-online-endpoints.md, "HTTP status codes"); a smoke test never needs one.
MAX_BODY_BYTES = 1_500_000
# Rows made up from a signature: enough to tell one prediction from a batch.
SIGNATURE_ROWS = 2
MESSAGE_CHARS = 200

SMOKE_INPUT_HINT = ("pass --smoke-input FILE: a request JSON ({\"input_data\": ...}), or a CSV or "
                    "parquet file of rows")


@dataclass
class SmokeRequest:
    body: bytes
    rows: int
    # Where the request came from: the user's file, the model's example file, or "signature".
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "rows": self.rows, "bytes": len(self.body)}


def smoke_request(files: ModelFiles, smoke_input: Path | None) -> SmokeRequest:
    """The request to send, from `smoke_input` if given, else the model's example or signature.

    BadInput names the file and what is wrong with it.
    """
    request = _from_user_file(Path(smoke_input)) if smoke_input is not None \
        else _from_model(files)
    if len(request.body) > MAX_BODY_BYTES:
        raise BadInput(
            f"the smoke-test request from {request.source} is {len(request.body)} bytes; Azure "
            f"ML endpoints refuse requests over {MAX_BODY_BYTES} bytes",
            "pass --smoke-input FILE with a few rows")
    if smoke_input is not None:
        _check_columns(request, files, Path(smoke_input))
    return request


def _check_columns(request: SmokeRequest, files: ModelFiles, path: Path) -> None:
    """A user's rows that lack a column the model's signature requires would fail the smoke
    test only after the deployment was provisioned (minutes on Azure ML): refused now."""
    try:
        mlmodel = read_mlmodel(files)
        signature = mlmodel.get("signature")
        inputs = json.loads(signature["inputs"]) if isinstance(signature, dict) \
            and isinstance(signature.get("inputs"), str) else None
        input_data = json.loads(request.body).get("input_data")
    except (BadInput, ValueError, TypeError, AttributeError):
        return  # no readable signature or not a frame: the smoke test itself decides
    if not (isinstance(inputs, list) and isinstance(input_data, dict)
            and isinstance(input_data.get("columns"), list)):
        return
    required = [str(spec["name"]) for spec in inputs if isinstance(spec, dict)
                and spec.get("name") and spec.get("required", True)]
    missing = [name for name in required if name not in input_data["columns"]]
    if missing:
        shown = ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else "")
        raise BadInput(f"--smoke-input {path}: the model's signature needs columns it lacks: "
                       f"{shown}",
                       hint="give rows with the model's input columns (amlpromote models show "
                            "NAME/VERSION --files lists its files; MLmodel has the signature)")


def check_smoke_answer(status: int, body: bytes, rows: int) -> None:
    """OperationFailed unless the answer is a 200 JSON holding `rows` predictions.

    Messages are phrased to follow "deployment NAME failed its smoke test: " (rollout.py).

    Accepts the shapes MLflow scoring returns: a list (predictions, or records for data frame
    outputs), `{"predictions": [...]}` (MLflow's own server), or a dict of equally long lists
    (named outputs). `rows` <= 0 skips the count.
    """
    if status != 200:
        raise OperationFailed(
            f"answered HTTP {status}: {_message(body)}",
            _status_hint(status))
    try:
        answer = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OperationFailed(
            f"the answer is not JSON: {_snippet(body) or '(empty body)'}",
            "the scoring script returned something else than JSON; see the deployment's "
            "logs") from exc
    if isinstance(answer, str):
        # Older scoring scripts returned json.dumps(predictions), which arrives JSON-encoded
        # twice.
        with contextlib.suppress(json.JSONDecodeError):
            answer = json.loads(answer)
    if rows <= 0:
        return
    predictions = _predictions(answer)
    if predictions is None:
        raise OperationFailed(
            f"the answer holds no list of predictions ({_describe(answer)})",
            "expected a list, {\"predictions\": [...]} or named outputs of one value per row")
    if len(predictions) != rows:
        raise OperationFailed(
            f"sent {rows} rows, the answer holds {len(predictions)} predictions",
            "the model does not answer one prediction per row; see the deployment's logs")


# --- the user's file ---------------------------------------------------------------------------

def check_user_file(path: Path) -> None:
    """--smoke-input names a file: a folder is bad input, a missing file is not found (exit 3,
    as a missing --input of score: README "Exit codes")."""
    hint = "a JSON request file, or a CSV or parquet file of rows"
    if path.is_dir():
        raise BadInput(f"--smoke-input {path}: a folder, not a file", hint)
    if not path.is_file():
        raise NotFound(f"--smoke-input {path}: no such file", hint)


def _from_user_file(path: Path) -> SmokeRequest:
    check_user_file(path)
    kind = _file_kind(path)
    if kind == "json":
        return _from_request_file(path)
    frame = _read_csv(path) if kind == "csv" else _read_parquet(path)
    split = _frame_to_split(frame, path)
    return SmokeRequest(_dumps({"input_data": split}), len(split["data"]), str(path))


def _file_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "json"
    if suffix in (".csv", ".txt"):
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    with path.open("rb") as handle:
        head = handle.read(64)
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.lstrip()[:1] in (b"{", b"["):
        return "json"
    return "csv"


def _from_request_file(path: Path) -> SmokeRequest:
    raw = path.read_bytes()
    try:
        request = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"--smoke-input {path}: not valid JSON ({exc})", SMOKE_INPUT_HINT) from exc
    if not isinstance(request, dict):
        raise BadInput(f"--smoke-input {path}: a JSON {type(request).__name__}, not an object "
                       "with input_data", 'wrap the rows as {"input_data": ...}')
    if "input_data" not in request:
        mlflow_keys = [k for k in ("dataframe_split", "dataframe_records", "inputs", "instances")
                       if k in request]
        if mlflow_keys:
            raise BadInput(
                f"--smoke-input {path}: {mlflow_keys[0]} is MLflow's serving format; Azure ML "
                "endpoints take input_data",
                f'rename "{mlflow_keys[0]}" to "input_data" (records become '
                '{"columns", "index", "data"})')
        raise BadInput(f"--smoke-input {path}: no input_data key (keys: "
                       f"{', '.join(sorted(request)) or 'none'})", 'write {"input_data": ...}')
    input_data = request["input_data"]
    if input_data in (None, [], {}, ""):
        raise BadInput(f"--smoke-input {path}: input_data is empty", "give at least one row")
    if isinstance(input_data, dict) and ("columns" in input_data or "data" in input_data):
        split = _split(input_data, f"--smoke-input {path}")
        rows = len(split["data"])
    else:
        rows = _tensor_rows(input_data, batch_dict=False)
    # The file goes out as written: it is what the user tested with `az ml ... invoke`.
    return SmokeRequest(raw, rows, str(path))


def _read_csv(path: Path) -> Any:
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BadInput(f"--smoke-input {path}: not a readable CSV file "
                       f"({_first_line(exc)})", SMOKE_INPUT_HINT) from exc
    # DataFrame.to_csv writes the index as a first column with an empty header, which pandas
    # reads back as "Unnamed: 0"; it is never a model input.
    if len(frame.columns) and frame.columns[0] == "Unnamed: 0":
        frame = frame.drop(columns=frame.columns[0])
    return frame


def _read_parquet(path: Path) -> Any:
    import pandas as pd

    try:
        # pandas' parquet engine; without it a parquet file is a usage problem, not a bug.
        import pyarrow.lib
    except ImportError as exc:
        raise BadInput(f"--smoke-input {path}: reading parquet needs pyarrow",
                       "pip install pyarrow, or pass a CSV file") from exc

    try:
        frame = pd.read_parquet(path)
    except (pyarrow.lib.ArrowException, OSError, ValueError) as exc:
        raise BadInput(f"--smoke-input {path}: not a readable parquet file "
                       f"({_first_line(exc)})", SMOKE_INPUT_HINT) from exc
    # A stored pandas index is row labels, not a model input.
    return frame.reset_index(drop=True)


def _frame_to_split(frame: Any, path: Path) -> dict[str, Any]:
    if len(frame.columns) == 0:
        raise BadInput(f"--smoke-input {path}: no columns", SMOKE_INPUT_HINT)
    if len(frame) == 0:
        raise BadInput(f"--smoke-input {path}: no rows", "give at least one row")
    try:
        # to_json turns NaN into null, numpy scalars into numbers and timestamps into ISO text;
        # 15 digits keeps doubles as written (its default is 10).
        text = frame.to_json(orient="split", index=False, date_format="iso",
                             double_precision=15)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadInput(f"--smoke-input {path}: a column cannot be sent as JSON "
                       f"({_first_line(exc)})", "keep to numbers, text, booleans and dates") \
            from exc
    split = json.loads(text)
    columns = [str(c) for c in split["columns"]]
    return {"columns": columns, "index": list(range(len(split["data"]))),
            "data": split["data"]}


# --- the model's example or signature ----------------------------------------------------------

def _from_model(files: ModelFiles) -> SmokeRequest:
    mlmodel = read_mlmodel(files)
    names = set(files.names())
    info = mlmodel.get("saved_input_example_info")
    example_type = info.get("type") if isinstance(info, dict) else None
    first_error: BadInput | None = None
    for name in example_files(mlmodel, names):
        try:
            return _from_example(loads_json(files, name), example_type, name)
        except BadInput as exc:
            # The other example file or the signature may still do.
            first_error = first_error or exc
    signature = mlmodel.get("signature")
    if isinstance(signature, dict) and signature.get("inputs"):
        return _from_signature(signature["inputs"])
    if first_error is not None:
        raise first_error
    raise BadInput("the model has no input example and no signature to build a smoke-test "
                   "request from", SMOKE_INPUT_HINT)


def _from_example(example: Any, example_type: Any, name: str) -> SmokeRequest:
    input_data, params, rows = _example_input_data(example, example_type, name)
    request: dict[str, Any] = {"input_data": input_data}
    if params:
        request["params"] = params
    return SmokeRequest(_dumps(request), rows, name)


def _example_input_data(example: Any, example_type: Any, name: str) -> tuple[Any, Any, int]:
    """(input_data, params, rows) for any form MLflow has written an example in."""
    if isinstance(example, dict):
        params = example.get("params")
        # serving_input_example.json and MLflow's scoring-server request forms.
        if "dataframe_split" in example:
            split = _split(example["dataframe_split"], name)
            return split, params, len(split["data"])
        if "dataframe_records" in example:
            split = _records(example["dataframe_records"], name)
            return split, params, len(split["data"])
        if "instances" in example:
            return _tensor_form(example["instances"], name, params)
        if "inputs" in example and set(example) <= {"inputs", "params"}:
            # MLflow 1.x/2.x ndarray examples ({"inputs": ...}), and 3.x examples saved with
            # params ({"inputs": <data>, "params": ...}).
            inner = example["inputs"]
            if isinstance(inner, dict) and _looks_split(inner):
                split = _split(inner, name)
                return split, params, len(split["data"])
            if isinstance(inner, list) and inner and all(isinstance(r, dict) for r in inner):
                split = _records(inner, name)
                return split, params, len(split["data"])
            return _tensor_form(inner, name, params, batch_dict=example_type == "ndarray")
        if _looks_split(example):  # split-orient pandas, MLflow 1.x-3.x input_example.json
            split = _split(example, name)
            return split, None, len(split["data"])
        # A dict of arrays (MLflow 3 ndarray example) or a JSON object (chat requests, ...).
        return example, None, _tensor_rows(example, batch_dict=example_type == "ndarray")
    if isinstance(example, list):
        if example and all(isinstance(r, dict) for r in example):
            split = _records(example, name)  # records orientation
            return split, None, len(split["data"])
        return _tensor_form(example, name, None)
    if example is None:
        raise BadInput(f"{name} holds null, not an input example", SMOKE_INPUT_HINT)
    return example, None, 1  # a scalar example (one string, one number)


def _tensor_form(value: Any, name: str, params: Any,
                 batch_dict: bool = True) -> tuple[Any, Any, int]:
    if value in (None, [], {}):
        raise BadInput(f"{name}: the example's inputs are empty", SMOKE_INPUT_HINT)
    if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
        # TF-serving row format (instances: [{name: value}, ...]): one named tensor per key.
        keys = list(dict.fromkeys(k for r in value for k in r))
        value = {k: [r.get(k) for r in value] for k in keys}
    return value, params, _tensor_rows(value, batch_dict=batch_dict)


def _tensor_rows(value: Any, *, batch_dict: bool) -> int:
    if isinstance(value, list):
        return len(value)
    if isinstance(value, dict):
        lengths = {len(v) for v in value.values() if isinstance(v, list)}
        if batch_dict and value and len(lengths) == 1 and \
                all(isinstance(v, list) for v in value.values()):
            return lengths.pop()
        return 0
    return 1


def _looks_split(value: dict[str, Any]) -> bool:
    return "columns" in value and "data" in value


def _split(value: Any, name: str) -> dict[str, Any]:
    """A validated split frame, with an index (Azure ML's parser wants all three keys)."""
    if not isinstance(value, dict):
        raise BadInput(f"{name}: the data frame is a {type(value).__name__}, not "
                       '{"columns", "data"}', SMOKE_INPUT_HINT)
    columns, data = value.get("columns"), value.get("data")
    if not isinstance(columns, list) or not columns:
        raise BadInput(f"{name}: the data frame has no columns list", SMOKE_INPUT_HINT)
    if not isinstance(data, list) or not data:
        raise BadInput(f"{name}: the data frame has no rows (data)", SMOKE_INPUT_HINT)
    for number, row in enumerate(data, start=1):
        if not isinstance(row, list) or len(row) != len(columns):
            width = len(row) if isinstance(row, list) else type(row).__name__
            raise BadInput(f"{name}: row {number} has {width} values for {len(columns)} "
                           "columns", SMOKE_INPUT_HINT)
    index = value.get("index")
    if index is None:
        index = list(range(len(data)))
    elif not isinstance(index, list) or len(index) != len(data):
        raise BadInput(f"{name}: the index does not have one label per row", SMOKE_INPUT_HINT)
    return {"columns": columns, "index": index, "data": data}


def _records(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, list) or not value or \
            not all(isinstance(r, dict) for r in value):
        raise BadInput(f"{name}: records must be a non-empty list of objects", SMOKE_INPUT_HINT)
    columns = list(dict.fromkeys(k for r in value for k in r))
    data = [[r.get(c) for c in columns] for r in value]
    return {"columns": columns, "index": list(range(len(data))), "data": data}


def _from_signature(inputs: Any) -> SmokeRequest:
    specs = json.loads(inputs) if isinstance(inputs, str) else inputs
    if not isinstance(specs, list) or not specs or not all(isinstance(s, dict) for s in specs):
        raise BadInput("MLmodel's signature inputs are not a list of column or tensor specs",
                       SMOKE_INPUT_HINT)
    if all(s.get("type") == "tensor" for s in specs):
        input_data, rows = _signature_tensors(specs)
    else:
        rows = SIGNATURE_ROWS
        values = [[_sample(spec, i) for spec in specs] for i in range(rows)]
        if all(spec.get("name") for spec in specs):
            input_data = {"columns": [spec["name"] for spec in specs],
                          "index": list(range(rows)), "data": values}
        else:
            # Unnamed columns cannot make a frame; Azure ML reads a list as a tensor.
            input_data = [row[0] for row in values] if len(specs) == 1 else values
    return SmokeRequest(_dumps({"input_data": input_data}), rows, "signature")


def _signature_tensors(specs: list[dict[str, Any]]) -> tuple[Any, int]:
    def shape_of(spec: dict[str, Any]) -> list[int]:
        shape = (spec.get("tensor-spec") or {}).get("shape") or []
        return [int(d) for d in shape]

    def rows_of(shape: list[int]) -> int:
        return shape[0] if shape and shape[0] > 0 else SIGNATURE_ROWS

    def filled(spec: dict[str, Any]) -> Any:
        shape = shape_of(spec)
        dims = [rows_of(shape)] + [d if d > 0 else 1 for d in shape[1:]] if shape else []
        value: Any = _tensor_value(str((spec.get("tensor-spec") or {}).get("dtype", "")))
        for dim in reversed(dims):
            value = [value for _ in range(dim)]
        return value

    first = shape_of(specs[0])
    rows = rows_of(first) if first else 1
    if len(specs) == 1 and not specs[0].get("name"):
        return filled(specs[0]), rows
    return {str(spec.get("name") or f"input_{i}"): filled(spec)
            for i, spec in enumerate(specs)}, rows


def _tensor_value(dtype: str) -> Any:
    if dtype.startswith("float"):
        return 0.5
    if dtype.startswith(("int", "uint")):
        return 1
    if dtype.startswith("bool"):
        return True
    return "sample"


def _sample(spec: Any, row: int) -> Any:
    """A plausible value for one column spec (MLflow DataType names, arrays, objects, maps)."""
    if not isinstance(spec, dict):
        return "sample"
    kind = spec.get("type")
    if kind == "boolean":
        return row % 2 == 0
    if kind in ("integer", "long"):
        return row + 1
    if kind in ("float", "double"):
        return row + 0.5
    if kind == "string":
        return ("sample", "example")[row % 2]
    if kind == "datetime":
        return f"2024-01-0{row % 9 + 1}T00:00:00"
    if kind == "binary":
        return ""
    if kind == "array":
        return [_sample(spec.get("items"), row)]
    if kind == "object":
        properties = spec.get("properties") or {}
        return {key: _sample(value, row) for key, value in properties.items()}
    if kind == "map":
        return {"key": _sample(spec.get("values"), row)}
    if kind == "tensor":
        return _tensor_value(str((spec.get("tensor-spec") or {}).get("dtype", "")))
    return "sample"  # "any" and types newer than this code


# --- answers -----------------------------------------------------------------------------------

def _predictions(answer: Any) -> list[Any] | None:
    if isinstance(answer, list):
        return answer
    if isinstance(answer, dict):
        if "predictions" in answer:
            inner = answer["predictions"]
            return inner if isinstance(inner, list) else _predictions_of_named(inner)
        return _predictions_of_named(answer)
    return None


def _predictions_of_named(answer: Any) -> list[Any] | None:
    # Named outputs ({"label": [...], "score": [...]}) hold one value per row in each list.
    if not isinstance(answer, dict) or not answer:
        return None
    values = list(answer.values())
    if all(isinstance(v, list) for v in values) and len({len(v) for v in values}) == 1:
        return values[0]
    return None


def _message(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        parsed = None
    text: Any = None
    if isinstance(parsed, dict):
        error = parsed.get("error")
        text = parsed.get("message") or parsed.get("detail") or \
            (error.get("message") if isinstance(error, dict) else error)
    elif isinstance(parsed, str):
        text = parsed
    if not isinstance(text, str) or not text:
        text = body.decode("utf-8", errors="replace")
    return _snippet(text.encode()) or "(empty body)"


def _snippet(body: bytes) -> str:
    text = re.sub(r"\s+", " ", body.decode("utf-8", errors="replace")).strip()
    return text[:MESSAGE_CHARS] + ("..." if len(text) > MESSAGE_CHARS else "")


def _status_hint(status: int) -> str:
    if status == 424:
        return ("the model's container answered an error (Azure ML reports it as 424); the "
                "deployment's logs say why")
    if status == 400:
        return f"the model refused the smoke-test input; {SMOKE_INPUT_HINT} it accepts"
    if status == 413:
        return "the smoke-test request is too large; pass --smoke-input FILE with fewer rows"
    if status in (401, 403):
        return "the endpoint refused the key or token"
    if status == 408:
        return "the model took longer than the deployment's request timeout"
    return "see the deployment's logs"


def _describe(answer: Any) -> str:
    if isinstance(answer, dict):
        return f"a JSON object with keys {', '.join(sorted(map(str, answer))[:8])}"
    return f"a JSON {type(answer).__name__}"


def _dumps(request: Any) -> bytes:
    return json.dumps(_finite(request), separators=(",", ":")).encode()


def _finite(value: Any) -> Any:
    # Python's json reads NaN/Infinity, which is not JSON; the endpoint would refuse it.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:MESSAGE_CHARS]
