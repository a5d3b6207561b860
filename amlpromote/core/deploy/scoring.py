"""Azure ML's scoring contract for MLflow models, in one place: what a request may be, what the
answer looks like, and which status code and body each failure gets.

Two layers answer a scoring request on a managed online endpoint, and both are shaped here:

- the *container*: Microsoft's `azureml-inference-server-http` running Azure ML's MLflow scoring
  script (microsoft/azureml-inference-server, `server/routes.py` and `server/input_parsers.py`;
  the script is Azure ML's `mlflow_score_script.py`): it parses the body, calls the model's
  pyfunc `predict`, and answers the predictions as JSON;
- the *front door* (the managed endpoint itself): key auth, the 1.5 MB payload limit, routing by
  the `azureml-model-deployment` header or the traffic split, and the mapping of any non-200
  from the container to 424 with `ms-azureml-model-error-*` headers (Azure ML docs,
  how-to-troubleshoot-online-endpoints.md, "HTTP status codes").

The local endpoint server (local/server.py) uses these functions; the Azure ML emulator's front
door in tests (tests/azureml_box/frontdoor.py) answers with the same words, and a contract test
can compare the two. Stdlib only at import time; numpy and
pandas are imported when a request is parsed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# -- front door --------------------------------------------------------------------------------

DEPLOYMENT_HEADER = "azureml-model-deployment"
MODEL_ERROR_STATUS_HEADER = "ms-azureml-model-error-statuscode"
MODEL_ERROR_REASON_HEADER = "ms-azureml-model-error-reason"
# The reason the front door (envoy) gives when the container itself answered non-200, as a
# captured Azure ML answer shows ("server: envoy ... ms-azureml-model-error-reason: model_error,
# ms-azureml-model-error-statuscode: 404"); it sets `model_not_ready` and
# `too_many_pending_request` for its own refusals.
MODEL_ERROR_REASON = "model_error"
# Azure ML's documented request payload limit for managed online endpoints ("1.5 MB",
# how-to-manage-quotas.md); read as MiB, the larger reading, so nothing Azure takes is refused.
MAX_PAYLOAD_BYTES = 1_572_864
# The message Azure ML answers (with 404) when no deployment has positive traffic and no header
# names one (quoted in Azure ML's batch troubleshooting doc and in public user reports).
NO_ROUTE_MESSAGE = ("No valid deployments to route to. Please check that the endpoint has at "
                    "least one deployment with positive weight values or use a deployment "
                    "specific header to route.")

# -- container (azureml-inference-server-http) -------------------------------------------------

# routes.py: a run() that raised answers this, with x-ms-run-function-failed: True.
RUN_FAILED_MESSAGE = "An unexpected error occurred in scoring script. Check the logs for more info."
RUN_FAILED_HEADER = "x-ms-run-function-failed"


@dataclass
class Answer:
    """One HTTP answer: status, JSON body bytes, extra headers (Content-Type is always JSON)."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    # The model's own time (its predict call) within this answer, for the server's log: the
    # part of a request's latency that any server running the model pays.
    model_seconds: float | None = None


class ScoringRejected(Exception):
    """The container refused the request before running the model (400 or 415)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_body(message: str) -> bytes:
    """`{"message": ...}`: the body shape of every error, container's and front door's."""
    return json.dumps({"message": message}).encode()


def error_answer(status: int, message: str, **headers: str) -> Answer:
    return Answer(status, error_body(message), dict(headers))


# Front-door refusals. Azure ML documents the status codes (troubleshooting guide, "HTTP status
# codes"); the 413 wording follows its "Your payload size is larger than 1.5 megabytes", the 404
# without a route is Azure's own text, the others are ours in the same `{"message": ...}` shape
# (and the same words as the Azure ML box's front door in tests/azureml_box/frontdoor.py).
def unauthorized() -> Answer:
    return error_answer(401, "Unauthorized: the key or token is missing, wrong or expired.")


def payload_too_large() -> Answer:
    return error_answer(413, "Payload too large: the body is larger than 1.5 MB.")


def no_route() -> Answer:
    return error_answer(404, NO_ROUTE_MESSAGE)


def unknown_deployment(endpoint: str, deployment: str) -> Answer:
    return error_answer(404, f"Deployment {deployment} not found in endpoint {endpoint}.")


def through_front_door(answer: Answer, deployment: str) -> Answer:
    """What the managed endpoint makes of the container's answer: 200 passes; anything else
    becomes 424 with the container's status and `model_error` in headers, body unchanged (users
    see the inference server's message, e.g. Azure/azureml-examples#3385)."""
    headers = dict(answer.headers)
    headers[DEPLOYMENT_HEADER] = deployment
    if answer.status == 200:
        return Answer(200, answer.body, headers)
    headers[MODEL_ERROR_STATUS_HEADER] = str(answer.status)
    headers[MODEL_ERROR_REASON_HEADER] = MODEL_ERROR_REASON
    return Answer(424, answer.body, headers)


# -- request parsing (input_parsers.py ObjectInput, for a run() decorated with input_schema) ---


def is_json_content_type(content_type: str | None) -> bool:
    """Flask's `request.is_json`: application/json or application/*+json, parameters ignored."""
    if not content_type:
        return False
    mimetype = content_type.split(";", 1)[0].strip().lower()
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json"))


def parse_request(content_type: str | None, body: bytes) -> tuple[Any, dict[str, Any] | None]:
    """`(input_data, params)` of a scoring request; ScoringRejected as the inference server
    answers (messages as in its input_parsers.py)."""
    if not is_json_content_type(content_type):
        raise ScoringRejected(415, "Expects Content-Type to be application/json")
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        if body:
            raise ScoringRejected(400, f"POST body could not be decoded as JSON: {exc}") from None
        raise ScoringRejected(400, "POST body is empty. Expecting a JSON dictionary.") from None
    if not isinstance(document, dict):
        raise ScoringRejected(400, "POST body should be a JSON dictionary.")
    if "input_data" not in document:
        raise ScoringRejected(400, "A value is not provided for the 'input_data' parameter.")
    params = document.get("params")
    return document["input_data"], params if isinstance(params, dict) else None


def model_input(input_data: Any) -> Any:
    """The pyfunc input for `input_data`, as Azure ML's MLflow scoring script builds it: a
    split-orientation dict -> DataFrame, a list -> ndarray, any other dict -> named tensors."""
    import numpy as np

    if isinstance(input_data, list):
        return np.asarray(input_data)
    if isinstance(input_data, dict):
        if "columns" in input_data and "index" in input_data and "data" in input_data:
            import pandas as pd

            # Same frame as the script's pd.read_json(orient="split", dtype=False), built
            # directly: read_json re-serialises the JSON and costs ~5 ms on one row.
            columns, rows, index = (input_data["columns"], input_data["data"],
                                    input_data["index"])
            if _column_lists_fit(columns, rows):
                # Column by column, with numpy arrays where the dtype pandas would infer is
                # plain: half the time of pandas' row constructor on one row, the same frame.
                frame = {name: _plain_column(values)
                         for name, values in zip(columns, zip(*rows, strict=True), strict=True)}
                return pd.DataFrame(frame, index=_plain_column(index), copy=False)
            return pd.DataFrame(rows, columns=columns, index=index)
        return {name: np.asarray(value) for name, value in input_data.items()}
    return input_data


def _column_lists_fit(columns: Any, rows: Any) -> bool:
    """Whether `rows` can be turned into one list per column without changing the frame: some
    rows, each a list as long as the unique string column names (anything else goes to pandas'
    row constructor, which gives its own answer or error)."""
    if not (isinstance(columns, list) and isinstance(rows, list) and rows):
        return False
    if not all(isinstance(name, str) for name in columns) or len(set(columns)) != len(columns):
        return False
    width = len(columns)
    return all(type(row) is list and len(row) == width for row in rows)


# Python ints a float64 holds exactly: a column mixing them with floats is float64 in pandas.
_EXACT_IN_FLOAT = 2**53
_INT64 = (-(2**63), 2**63 - 1)


def _plain_column(values: Any) -> Any:
    """`values` as the numpy array pandas would infer for them, when that is plain: all ints
    (int64), all floats or ints and floats (float64), all strings (object). Anything else
    (None, bools, nested values, ints beyond int64) is left to pandas' own inference, as a
    list."""
    import numpy as np
    import pandas as pd

    kinds = set(map(type, values))
    if kinds == {int}:
        if _INT64[0] <= min(values) and max(values) <= _INT64[1]:
            return np.array(values, dtype=np.int64)
    elif kinds == {float} or (kinds == {int, float} and all(
            -_EXACT_IN_FLOAT <= v <= _EXACT_IN_FLOAT for v in values if type(v) is int)):
        return np.array(values, dtype=np.float64)
    elif kinds == {str} and not pd.get_option("future.infer_string"):
        # pandas 3 (infer_string) makes strings its own str dtype: its inference decides.
        strings = np.empty(len(values), dtype=object)
        strings[:] = values
        return strings
    return list(values)


def jsonable(result: Any) -> Any:
    """mlflow's `_get_jsonable_obj(result, pandas_orient="records")`, which the script returns."""
    kind = type(result).__module__.split(".", 1)[0]
    if kind == "numpy" and hasattr(result, "tolist"):
        return result.tolist()
    if kind == "pandas":
        import pandas as pd

        if isinstance(result, pd.DataFrame):
            return result.to_dict(orient="records")
        if isinstance(result, pd.Series):
            return pd.DataFrame(result).to_dict(orient="records")
    return result


def json_default(value: Any) -> Any:
    # numpy scalars and arrays nested in dicts/lists, timestamps: what mlflow's NumpyEncoder does
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def predictions_body(result: Any) -> bytes:
    return json.dumps(jsonable(result), default=json_default).encode()


Predict = Callable[[Any, "dict[str, Any] | None"], Any]


def container_answer(predict: Predict, content_type: str | None, body: bytes,
                     on_error: Callable[[BaseException], None] | None = None) -> Answer:
    """What the inference server with Azure ML's MLflow scoring script answers: 200 with the
    predictions, 400/415 for a request it cannot take, 500 when parsing the input for the model
    or the model itself fails (`on_error` sees that exception, for the deployment's log)."""
    try:
        input_data, params = parse_request(content_type, body)
    except ScoringRejected as exc:
        return error_answer(exc.status, exc.message, **{RUN_FAILED_HEADER: "False"})
    try:
        data = model_input(input_data)
        started = time.perf_counter()
        result = predict(data, params)
        model_seconds = time.perf_counter() - started
        payload = predictions_body(result)
    except Exception as exc:  # the model's failure is the answer, never the server's
        if on_error is not None:
            on_error(exc)
        return error_answer(500, RUN_FAILED_MESSAGE, **{RUN_FAILED_HEADER: "True"})
    return Answer(200, payload, {RUN_FAILED_HEADER: "False"}, model_seconds)
