"""Entry script for MLflow no-code deployments in the box: what Azure ML's generated MLflow scoring
script does, written for the emulator (runs inside the inference venv, under
azureml-inference-server-http; never imported by the test process).

The contract it follows, from Microsoft's own script (Azure/azureml-assets,
assets/inference/environments/mlflow-py312-inference/context/mlflow_score_script.py, and
assets/training/model_management/environments/mlflow-model-inference/context/
mlflow_score_script.py) and the MLflow deployment guide
(learn.microsoft.com/azure/machine-learning/how-to-deploy-mlflow-models):

- The model folder is AZUREML_MODEL_DIR joined with MLFLOW_MODEL_FOLDER (both set by Azure ML for
  MLflow deployments; see also microsoft/azureml-inference-server issue #112, where a missing
  MLFLOW_MODEL_FOLDER breaks that script), loaded with mlflow.pyfunc.load_model.
- run() is decorated with inference-schema's @input_schema for `input_data` and an optional
  `params`. That decoration is what makes the inference server parse the body as a JSON object
  and pass its keys as arguments (azureml_inference_server_http/server/user_script.py picks
  ObjectInput for schema-decorated run functions), so the server itself answers 415 for a
  non-JSON content type and 400 for an empty / non-JSON / non-object body or a missing
  `input_data` (server/input_parsers.py), and 500 when run() raises (server/routes.py).
- `input_data` is a split-orientation data frame ({columns, index, data}), a tensor (a list,
  possibly nested), or named tensors ({name: list}); `params` go to predict(params=...).
- The answer is the predictions made JSON-able as MLflow's _get_jsonable_obj does with
  pandas_orient="records": arrays become lists, data frames a list of records; the server
  serialises it with json.dumps (no {"predictions": ...} envelope, unlike `mlflow models serve`).

Microsoft's script builds its inference-schema parameter types from the model's signature and
input example (which only shapes swagger.json and deserialisation) and also wires up the model
data collector; here the input is parsed by hand in the same way, and there is no collector.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from inference_schema.parameter_types.abstract_parameter_type import AbstractParameterType
from inference_schema.schema_decorators import input_schema

_logger = logging.getLogger("mlflow_score")
_model: Any = None


class _AsSent(AbstractParameterType):
    """Hands the parsed JSON value to run() unchanged (the Microsoft script's no-sample type)."""

    def __init__(self) -> None:
        super().__init__(None)

    def deserialize_input(self, input_data: Any) -> Any:
        return input_data

    def input_to_swagger(self) -> dict[str, Any]:
        return {"type": "object", "example": {}}


def model_path() -> str:
    return os.path.join(os.environ["AZUREML_MODEL_DIR"], os.environ.get("MLFLOW_MODEL_FOLDER", ""))


def init() -> None:
    """Load the model once per worker; an exception here makes the server exit (code 3)."""
    global _model
    import mlflow.pyfunc

    path = model_path()
    _logger.info("loading MLflow model from %s", path)
    _model = mlflow.pyfunc.load_model(path)


def _model_input(input_data: Any) -> Any:
    # The same three shapes, tested in the same order, as the Microsoft script's
    # parse_model_input_from_input_data_traditional.
    import numpy as np

    if isinstance(input_data, str):
        input_data = json.loads(input_data)
    if isinstance(input_data, list):
        return np.asarray(input_data)
    if isinstance(input_data, dict) and {"columns", "index", "data"} <= input_data.keys():
        return _split_frame(input_data)
    if isinstance(input_data, dict):
        return {name: np.asarray(value) for name, value in input_data.items()}
    raise ValueError(
        "input_data must be a split data frame {columns, index, data}, a list, or named lists"
    )


def _split_frame(input_data: dict[str, Any]) -> Any:
    # pd.read_json(orient="split", dtype=False), as the Microsoft script does: column types come
    # from the JSON values, and the model's signature enforcement converts them from there.
    import io

    import pandas as pd

    return pd.read_json(io.StringIO(json.dumps(input_data)), orient="split", dtype=False)


def _jsonable(result: Any) -> Any:
    # MLflow's pyfunc.scoring_server._get_jsonable_obj(result, pandas_orient="records").
    import numpy as np
    import pandas as pd

    if isinstance(result, np.ndarray):
        return result.tolist()
    if isinstance(result, pd.DataFrame):
        return result.to_dict(orient="records")
    if isinstance(result, pd.Series):
        return pd.DataFrame(result).to_dict(orient="records")
    return result


@input_schema("input_data", _AsSent())
@input_schema("params", _AsSent(), optional=True)
def run(input_data: Any, params: dict[str, Any] | None = None) -> Any:
    """Score one request; any exception becomes the server's 500 answer."""
    if _model is None:
        raise RuntimeError("init() has not loaded the model")
    model_input = _model_input(input_data)
    # Models whose signature has no params schema ignore them with a warning (MLflow's
    # behaviour), so passing them always is what the Microsoft script does too.
    result = _model.predict(model_input, params=params)
    return _jsonable(result)
