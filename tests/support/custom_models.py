"""Hand-made pyfunc models for deploy tests: a loader module of their own in `code/` (no
pickle, so any process with mlflow and pandas loads them), whose `predict` fails or answers the
wrong number of rows, and an MLmodel naming a loader that is not installed anywhere.

The MLmodel is written as MLflow 3 writes it (python_function with `code`, `data`, `env` and
`loader_module`; `saved_input_example_info` in split orientation).
"""

from __future__ import annotations

import platform

import pandas as pd

PYTHON = platform.python_version()

# A pyfunc model with a loader of its own (no pickle). Modes: "raise" (`predict` fails),
# "short" (one prediction whatever it was given), "slow-load:S" (loading takes S seconds),
# "slow-predict:S" (each predict takes S seconds); the slow ones answer one 1 per row. The
# MLmodel is written as MLflow 3 writes it.
_LOADER = """
import time

import pandas as pd


class _Model:
    def __init__(self, mode):
        self.mode = mode

    def predict(self, data, params=None):
        if self.mode == "raise":
            raise ValueError("this model always fails")
        if self.mode.startswith("slow-predict:"):
            time.sleep(float(self.mode.split(":")[1]))
        if self.mode.startswith("slow"):
            return [1] * len(data)
        return [1]


def _load_pyfunc(path):
    with open(path + "/mode.txt") as handle:
        mode = handle.read().strip()
    if mode.startswith("slow-load:"):
        time.sleep(float(mode.split(":")[1]))
    return _Model(mode)
"""


def mlmodel_text(loader: str, with_code: bool = True) -> bytes:
    code = "    code: code\n" if with_code else ""
    return f"""artifact_path: model
flavors:
  python_function:
{code}    data: data
    env:
      conda: conda.yaml
      virtualenv: python_env.yaml
    loader_module: {loader}
    python_version: {PYTHON}
mlflow_version: 3.15.0
model_uuid: 0c9d9b0c6e2e4f3f8c0b6b2f5a3e7d11
saved_input_example_info:
  artifact_path: input_example.json
  pandas_orient: split
  type: dataframe
""".encode()


def custom_model(loader: str, mode: str, example: pd.DataFrame) -> dict[str, bytes]:
    conda = (f"name: mlflow-env\nchannels: [conda-forge]\ndependencies:\n- python={PYTHON}\n"
             "- pip\n").encode()
    python_env = (f"python: {PYTHON}\nbuild_dependencies:\n- pip\n"
                  "dependencies:\n- -r requirements.txt\n").encode()
    return {
        "MLmodel": mlmodel_text(loader),
        "conda.yaml": conda,
        "python_env.yaml": python_env,
        "requirements.txt": b"pandas\n",
        "input_example.json": example.to_json(orient="split", index=False).encode(),
        "data/mode.txt": mode.encode(),
        f"code/{loader}.py": _LOADER.encode(),
    }


