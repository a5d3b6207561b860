"""Preflight checks and smoke-test requests on real and hand-written MLflow model folders.

Real folders are saved by the installed mlflow (the heart classifier); the MLflow 1.x forms and
the broken ones are written by hand, as those MLflow versions wrote them. No servers run: the
answer check gets status codes and bodies directly.
"""

from __future__ import annotations

import io
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.models import trained_heart_model

from amlpromote.core.deploy.preflight import (
    SUPPORTED_PYTHON,
    LocalModelFiles,
    preflight,
)
from amlpromote.core.deploy.smoke import SmokeRequest, check_smoke_answer, smoke_request
from amlpromote.core.errors import EXIT_USAGE, BadInput, NotFound, OperationFailed

HEART_COLUMNS = ["age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang",
                 "oldpeak", "slope", "ca", "thal"]


# --- model folders -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def heart_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The heart pipeline saved by the installed mlflow, with signature and input example."""
    import mlflow.sklearn

    model = trained_heart_model()
    folder = tmp_path_factory.mktemp("heart") / "model"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.sklearn.save_model(model.pipeline, folder, signature=model.signature,
                                  input_example=model.example,
                                  pip_requirements=list(model.pip_requirements))
    return folder


def write_folder(root: Path, files: dict[str, Any]) -> Path:
    """Write a model folder: dict/list values as YAML (MLmodel, env files), str/bytes as is."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        elif isinstance(content, str):
            target.write_text(content)
        else:
            target.write_text(yaml.safe_dump(content, sort_keys=False))
    return root


HEART_SIGNATURE_1X = {
    # MLflow 1.x wrote the schema as a JSON string, without "required".
    "inputs": json.dumps([{"name": c, "type": "string" if c == "thal" else
                           ("double" if c == "oldpeak" else "long")} for c in HEART_COLUMNS]),
    "outputs": json.dumps([{"type": "long"}]),
}


def mlflow_1x_files(**overrides: Any) -> dict[str, Any]:
    """A model folder as mlflow 1.x wrote it for sklearn: `env: conda.yaml`, a JSON-string
    signature, saved_input_example_info without serving_input_path."""
    mlmodel: dict[str, Any] = {
        "artifact_path": "model",
        "flavors": {
            "python_function": {"env": "conda.yaml", "loader_module": "mlflow.sklearn",
                                "model_path": "model.pkl", "python_version": "3.9.7"},
            "sklearn": {"pickled_model": "model.pkl", "serialization_format": "cloudpickle",
                        "sklearn_version": "1.0.2"},
        },
        "mlflow_version": "1.20.2",
        "run_id": "4d5678b7aad14bbd988c68083149f8f1",
        "saved_input_example_info": {"artifact_path": "input_example.json",
                                     "pandas_orient": "split", "type": "dataframe"},
        "signature": HEART_SIGNATURE_1X,
        "utc_time_created": "2022-11-02 10:00:00.000000",
    }
    files: dict[str, Any] = {
        "MLmodel": mlmodel,
        "conda.yaml": {"channels": ["conda-forge"],
                       "dependencies": ["python=3.9.7", "pip<=22.3",
                                        {"pip": ["mlflow<2", "cloudpickle==2.2.0",
                                                 "scikit-learn==1.0.2"]}],
                       "name": "mlflow-env"},
        "model.pkl": b"\x80\x04not-really-a-pickle",
        "input_example.json": json.dumps({"columns": HEART_COLUMNS,
                                          "data": [[63, 1, 1, 145, 233, 1, 2, 150, 0, 2.3, 3,
                                                    0, "fixed"]]}),
    }
    files.update(overrides)
    return files


def run_preflight(folder: Path, *, platform: str = "azureml",
                  instance_type: str | None = "Standard_DS3_v2",
                  smoke_input_given: bool = False) -> Any:
    return preflight(LocalModelFiles(folder), platform=platform, instance_type=instance_type,
                     smoke_input_given=smoke_input_given)


def checks(report: Any) -> list[str]:
    return [p.check for p in report.problems]


# --- preflight ---------------------------------------------------------------------------------

def test_saved_heart_model_passes_and_reports_its_facts(heart_folder: Path) -> None:
    report = run_preflight(heart_folder)
    assert report.problems == []
    report.raise_for_problems()  # nothing to raise
    assert "python_function" in report.flavors and "sklearn" in report.flavors
    assert report.python_version == f"{sys.version_info.major}.{sys.version_info.minor}." \
        f"{sys.version_info.micro}"
    assert report.python_version_source == "conda.yaml"
    assert report.env_file == "conda.yaml"
    assert report.python_env_file == "python_env.yaml"
    assert report.loader == "mlflow.sklearn"
    assert report.has_signature and report.has_input_example
    assert report.input_example == "serving_input_example.json"
    assert any(r.startswith("scikit-learn==") for r in report.requirements)
    assert report.as_dict()["ok"] is True


def test_mlflow_1x_folder_passes(tmp_path: Path) -> None:
    report = run_preflight(write_folder(tmp_path / "m", mlflow_1x_files()))
    assert report.problems == []
    assert report.mlflow_version == "1.20.2"
    assert report.env_file == "conda.yaml" and report.python_env_file is None
    assert (report.python_version, report.python_version_source) == ("3.9.7", "conda.yaml")
    assert report.input_example == "input_example.json"
    # No requirements.txt in 1.x folders: the pins come from conda.yaml's pip list.
    assert "scikit-learn==1.0.2" in report.requirements


def test_mlflow_1x_python_version_only_in_mlmodel(tmp_path: Path) -> None:
    files = mlflow_1x_files()
    files["conda.yaml"] = {"dependencies": ["pip", {"pip": ["mlflow"]}]}
    report = run_preflight(write_folder(tmp_path / "m", files))
    assert (report.python_version, report.python_version_source) == ("3.9.7", "MLmodel")
    assert report.problems == []


def test_missing_python_function_names_the_flavors_present(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "m", {
        "MLmodel": {"flavors": {"keras": {"keras_version": "2.11"},
                                "onnx": {"onnx_version": "1.13"}}},
        "model.onnx": b"onnx"})
    report = run_preflight(folder)
    assert checks(report) == ["flavor", "example"]
    assert "no python_function flavor" in report.problems[0].message
    assert "keras, onnx" in report.problems[0].message


def test_broken_conda_yaml(tmp_path: Path) -> None:
    files = mlflow_1x_files(**{"conda.yaml": "dependencies:\n  - python=3.9\n  - [unclosed\n"})
    report = run_preflight(write_folder(tmp_path / "m", files))
    assert checks(report) == ["environment"]
    assert report.problems[0].message.startswith("conda.yaml is not valid YAML (line ")


def test_conda_yaml_without_dependencies_list(tmp_path: Path) -> None:
    files = mlflow_1x_files(**{"conda.yaml": {"name": "env", "dependencies": "python=3.9"}})
    report = run_preflight(write_folder(tmp_path / "m", files))
    assert [p.message for p in report.problems] == ["conda.yaml has no dependencies list"]


def test_missing_env_file_and_broken_python_env(tmp_path: Path) -> None:
    files = mlflow_1x_files()
    mlmodel = files["MLmodel"]
    mlmodel["flavors"]["python_function"]["env"] = {"conda": "conda.yaml",
                                                    "virtualenv": "python_env.yaml"}
    files["python_env.yaml"] = {"python": "3.10.4", "dependencies": ["-r requirements.txt"]}
    del files["conda.yaml"]
    report = run_preflight(write_folder(tmp_path / "m", files))
    messages = [p.message for p in report.problems]
    assert messages == ["MLmodel names conda.yaml, which is missing",
                        "python_env.yaml lacks build_dependencies"]
    assert (report.python_version, report.python_version_source) == ("3.10.4",
                                                                     "python_env.yaml")


def test_python_36_is_refused_with_exit_2(tmp_path: Path) -> None:
    files = mlflow_1x_files()
    files["conda.yaml"]["dependencies"][0] = "python=3.6.9"
    report = run_preflight(write_folder(tmp_path / "m", files))
    assert checks(report) == ["python"]
    assert "Python 3.6 (conda.yaml)" in report.problems[0].message
    assert "3.9-3.12" in report.problems[0].message
    with pytest.raises(BadInput) as caught:
        report.raise_for_problems()
    assert caught.value.exit_code == EXIT_USAGE
    assert "Python 3.6" in caught.value.message
    assert caught.value.hint and "--skip-preflight skips these checks" in caught.value.hint


@pytest.mark.parametrize(("version", "ok"), [("3.8.10", False), ("3.9", True), ("3.12.1", True),
                                             ("3.13.0", False), ("3.10.*", True)])
def test_python_range(tmp_path: Path, version: str, ok: bool) -> None:
    assert SUPPORTED_PYTHON == ((3, 9), (3, 12))
    files = mlflow_1x_files()
    files["conda.yaml"]["dependencies"][0] = f"python={version}"
    report = run_preflight(write_folder(tmp_path / "m", files))
    assert (checks(report) == []) is ok


def test_conda_python_spec_does_not_match_python_packages(tmp_path: Path) -> None:
    files = mlflow_1x_files()
    files["conda.yaml"]["dependencies"] = ["python=3.10", "python-dateutil=2.8.2"]
    report = run_preflight(write_folder(tmp_path / "m", files))
    assert report.python_version == "3.10" and report.problems == []


def test_no_example_and_no_signature(tmp_path: Path) -> None:
    files = mlflow_1x_files()
    del files["MLmodel"]["signature"]
    del files["input_example.json"]
    folder = write_folder(tmp_path / "m", files)
    report = run_preflight(folder)
    assert checks(report) == ["example"]
    assert "MLmodel names input_example.json, which is missing" in report.problems[0].message
    assert "--smoke-input" in report.problems[0].fix
    assert run_preflight(folder, smoke_input_given=True).problems == []


def test_bad_instance_type_suggests_the_closest(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "m", mlflow_1x_files())
    report = run_preflight(folder, instance_type="Standard_DS3_v3")
    assert checks(report) == ["instance-type"]
    assert "'Standard_DS3_v3' is not offered" in report.problems[0].message
    assert "did you mean Standard_DS3_v2?" in report.problems[0].fix
    far = run_preflight(folder, instance_type="m5.large").problems[0]
    assert "SKU list" in far.fix
    # Case-insensitive, as Azure ML matches them; local endpoints take no instance type.
    assert run_preflight(folder, instance_type="standard_f4s_V2").problems == []
    assert run_preflight(folder, instance_type="STANDARD_NC24ADS_A100_V4").problems == []
    assert run_preflight(folder, platform="local", instance_type="m5.large").problems == []


def test_no_mlmodel_and_mlmodel_one_folder_down(tmp_path: Path) -> None:
    report = run_preflight(write_folder(tmp_path / "a", {"weights.bin": b"x"}))
    assert checks(report) == ["mlmodel"]
    nested = write_folder(tmp_path / "b", {f"model/{k}": v for k, v in mlflow_1x_files().items()})
    report = run_preflight(nested)
    assert "there is one at model/MLmodel" in report.problems[0].message


def test_invalid_mlmodel_yaml(tmp_path: Path) -> None:
    report = run_preflight(write_folder(tmp_path / "m", {"MLmodel": "flavors: [a\n"}))
    assert checks(report) == ["mlmodel"]
    assert report.problems[0].message.startswith("MLmodel is not valid YAML")


def test_missing_model_file_and_all_problems_in_the_hint(tmp_path: Path) -> None:
    files = mlflow_1x_files()
    del files["model.pkl"]
    files["conda.yaml"]["dependencies"][0] = "python=3.7"
    report = run_preflight(write_folder(tmp_path / "m", files), instance_type="Standard_D3")
    assert checks(report) == ["python", "files", "instance-type"]
    with pytest.raises(BadInput) as caught:
        report.raise_for_problems()
    hint = caught.value.hint or ""
    assert hint.startswith("3 problems: (1) ")
    assert "(2) python_function model_path model.pkl is not among" in hint
    assert "(3) instance type 'Standard_D3'" in hint
    assert hint.endswith("--skip-preflight skips these checks")


def test_local_platform_warns_about_another_python(tmp_path: Path) -> None:
    files = mlflow_1x_files()
    files["conda.yaml"]["dependencies"][0] = "python=3.6.9"
    folder = write_folder(tmp_path / "m", files)
    report = run_preflight(folder, platform="local", instance_type=None)
    assert report.problems == []
    assert report.warnings == [
        f"the model was saved for Python 3.6 (conda.yaml); local endpoints load it with this "
        f"Python {sys.version_info.major}.{sys.version_info.minor}, where its pickles may not "
        "load"]


def test_mlflow_1x_data_key_must_exist(tmp_path: Path) -> None:
    # MLflow 1.x flavors such as pytorch and keras named their files with `data:`.
    files = mlflow_1x_files()
    pyfunc = files["MLmodel"]["flavors"]["python_function"]
    del pyfunc["model_path"]
    pyfunc["data"] = "data"
    folder = write_folder(tmp_path / "a", files)
    assert [p.message for p in run_preflight(folder).problems] == [
        "python_function data data is not among the model's files"]
    write_folder(folder, {"data/model.pth": b"weights"})
    assert run_preflight(folder).problems == []


def test_azureml_needs_a_conda_file(tmp_path: Path) -> None:
    files = mlflow_1x_files()
    files["MLmodel"]["flavors"]["python_function"]["env"] = {"virtualenv": "python_env.yaml"}
    files["python_env.yaml"] = {"python": "3.11", "build_dependencies": ["pip"],
                                "dependencies": ["scikit-learn"]}
    folder = write_folder(tmp_path / "m", files)
    assert checks(run_preflight(folder)) == ["environment"]
    assert run_preflight(folder, platform="local").problems == []


# --- smoke requests from the model -------------------------------------------------------------

def body_of(request: SmokeRequest) -> Any:
    return json.loads(request.body)


def predict_like_azureml(folder: Path, input_data: dict[str, Any]) -> Any:
    """Score the way Azure ML's MLflow scoring script reads a split frame (pd.read_json)."""
    import mlflow.pyfunc
    import pandas as pd

    frame = pd.read_json(io.StringIO(json.dumps(input_data)), orient="split", dtype=False)
    return mlflow.pyfunc.load_model(str(folder)).predict(frame)


def test_heart_model_request_scores(heart_folder: Path) -> None:
    request = smoke_request(LocalModelFiles(heart_folder), None)
    assert (request.rows, request.source) == (5, "serving_input_example.json")
    input_data = body_of(request)["input_data"]
    assert input_data["columns"] == HEART_COLUMNS
    assert input_data["index"] == [0, 1, 2, 3, 4]
    assert len(predict_like_azureml(heart_folder, input_data)) == 5


def test_heart_model_request_from_signature_scores(heart_folder: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(heart_folder, folder)
    (folder / "input_example.json").unlink()
    (folder / "serving_input_example.json").unlink()
    request = smoke_request(LocalModelFiles(folder), None)
    assert (request.rows, request.source) == (2, "signature")
    input_data = body_of(request)["input_data"]
    assert input_data["columns"] == HEART_COLUMNS
    assert input_data["data"][0][HEART_COLUMNS.index("thal")] == "sample"
    assert len(predict_like_azureml(folder, input_data)) == 2


def test_tensor_models_saved_by_mlflow(tmp_path: Path) -> None:
    import numpy as np

    with warnings.catch_warnings():
        # MLflow warns, once per class and again around loading and predicting, that predict
        # has no type hints; these models take their signature from the example on purpose.
        warnings.simplefilter("ignore")
        import mlflow.pyfunc
        from mlflow.pyfunc import PythonModel

        class RowSums(PythonModel):
            def predict(self, context, model_input, params=None):
                if isinstance(model_input, dict):
                    return np.asarray(model_input["a"]).sum(axis=-1)
                return np.asarray(model_input).sum(axis=-1)

        mlflow.pyfunc.save_model(tmp_path / "plain", python_model=RowSums(),
                                 input_example=np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]),
                                 pip_requirements=["mlflow"])
        mlflow.pyfunc.save_model(tmp_path / "named", python_model=RowSums(),
                                 input_example={"a": np.array([[1.0, 2.0]]),
                                                "b": np.array([[1, 2]])},
                                 pip_requirements=["mlflow"])
        model = mlflow.pyfunc.load_model(str(tmp_path / "plain"))
        plain = smoke_request(LocalModelFiles(tmp_path / "plain"), None)
        assert body_of(plain) == {"input_data": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]}
        assert plain.rows == 3
        named = smoke_request(LocalModelFiles(tmp_path / "named"), None)
        assert body_of(named) == {"input_data": {"a": [[1.0, 2.0]], "b": [[1, 2]]}}
        assert named.rows == 1
        # Azure ML's scoring script reads a list as one ndarray (np.asarray(input_data)).
        assert len(model.predict(np.asarray(body_of(plain)["input_data"]))) == 3
        for name in ("input_example.json", "serving_input_example.json"):
            (tmp_path / "plain" / name).unlink()
        from_signature = smoke_request(LocalModelFiles(tmp_path / "plain"), None)
        assert body_of(from_signature) == {"input_data": [[0.5, 0.5], [0.5, 0.5]]}
        assert len(model.predict(np.asarray(body_of(from_signature)["input_data"]))) == 2
        assert run_preflight(tmp_path / "plain").problems == []


SPLIT = {"columns": ["a", "b"], "data": [[1, "x"], [2, None]]}
EXPECTED_SPLIT = {"columns": ["a", "b"], "index": [0, 1], "data": [[1, "x"], [2, None]]}


@pytest.mark.parametrize(("example", "example_type", "input_data", "rows", "params"), [
    # MLflow 1.x-3.x input_example.json for a DataFrame: split orient without index.
    (SPLIT, "dataframe", EXPECTED_SPLIT, 2, None),
    ({**SPLIT, "index": [7, 8]}, "dataframe", {**EXPECTED_SPLIT, "index": [7, 8]}, 2, None),
    ({"dataframe_split": SPLIT}, "dataframe", EXPECTED_SPLIT, 2, None),
    ({"dataframe_records": [{"a": 1, "b": "x"}, {"a": 2}]}, "dataframe", EXPECTED_SPLIT, 2,
     None),
    ([{"a": 1, "b": "x"}, {"a": 2, "b": None}], "json_object", EXPECTED_SPLIT, 2, None),
    # MLflow 3.x examples saved with params.
    ({"inputs": SPLIT, "params": {"k": 3}}, "dataframe", EXPECTED_SPLIT, 2, {"k": 3}),
    # MLflow 1.x/2.x ndarray examples, and MLflow 3's raw list.
    ({"inputs": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]}, "ndarray", [[1.0, 2.0], [3.0, 4.0],
                                                                   [5.0, 6.0]], 3, None),
    ([[1.0, 2.0]], "ndarray", [[1.0, 2.0]], 1, None),
    ({"inputs": {"tokens": [[1, 2], [3, 4]], "mask": [[1, 1], [1, 0]]}}, "ndarray",
     {"tokens": [[1, 2], [3, 4]], "mask": [[1, 1], [1, 0]]}, 2, None),
    ({"tokens": [[1, 2]], "mask": [[1, 1]]}, "ndarray", {"tokens": [[1, 2]], "mask": [[1, 1]]},
     1, None),
    ({"instances": [{"x": 1}, {"x": 2}]}, None, {"x": [1, 2]}, 2, None),
    # A JSON object example (a chat request): one request, count not checked.
    ({"messages": [{"role": "user", "content": "hi"}]}, "json_object",
     {"messages": [{"role": "user", "content": "hi"}]}, 0, None),
    (["one text", "another"], "json_object", ["one text", "another"], 2, None),
])
def test_request_from_each_example_form(tmp_path: Path, example: Any, example_type: str | None,
                                        input_data: Any, rows: int, params: Any) -> None:
    info: dict[str, Any] = {"artifact_path": "input_example.json"}
    if example_type:
        info["type"] = example_type
    folder = write_folder(tmp_path / "m", {
        "MLmodel": {"flavors": {"python_function": {"loader_module": "x"}},
                    "saved_input_example_info": info},
        "input_example.json": json.dumps(example)})
    request = smoke_request(LocalModelFiles(folder), None)
    expected: dict[str, Any] = {"input_data": input_data}
    if params:
        expected["params"] = params
    assert body_of(request) == expected
    assert (request.rows, request.source) == (rows, "input_example.json")


def test_serving_example_is_preferred(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "m", {
        "MLmodel": {"flavors": {"python_function": {}},
                    "saved_input_example_info": {"artifact_path": "input_example.json",
                                                 "serving_input_path":
                                                     "serving_input_example.json",
                                                 "type": "ndarray"}},
        "input_example.json": json.dumps([[1, 2]]),
        "serving_input_example.json": json.dumps({"inputs": [[1, 2], [3, 4]]})})
    request = smoke_request(LocalModelFiles(folder), None)
    assert body_of(request) == {"input_data": [[1, 2], [3, 4]]}
    assert (request.rows, request.source) == (2, "serving_input_example.json")


def test_broken_example_falls_back_to_signature_else_names_the_file(tmp_path: Path) -> None:
    files = mlflow_1x_files(**{"input_example.json": json.dumps(
        {"columns": ["a", "b"], "data": [[1, 2, 3]]})})
    request = smoke_request(LocalModelFiles(write_folder(tmp_path / "a", files)), None)
    assert request.source == "signature"
    del files["MLmodel"]["signature"]
    with pytest.raises(BadInput, match=r"^input_example.json: row 1 has 3 values for 2 columns"):
        smoke_request(LocalModelFiles(write_folder(tmp_path / "b", files)), None)
    files["input_example.json"] = "{not json"
    with pytest.raises(BadInput, match=r"^input_example.json is not valid JSON"):
        smoke_request(LocalModelFiles(write_folder(tmp_path / "c", files)), None)


def test_no_example_no_signature(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "m", {"MLmodel": {"flavors": {"python_function": {}}}})
    with pytest.raises(BadInput, match="no input example and no signature") as caught:
        smoke_request(LocalModelFiles(folder), None)
    assert "--smoke-input" in (caught.value.hint or "")


@pytest.mark.parametrize(("inputs", "input_data", "rows"), [
    ([{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1, 3]}}],
     [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]], 2),
    ([{"type": "tensor", "name": "ids", "tensor-spec": {"dtype": "int64", "shape": [-1, 2]}},
      {"type": "tensor", "name": "flag", "tensor-spec": {"dtype": "bool", "shape": [-1]}}],
     {"ids": [[1, 1], [1, 1]], "flag": [True, True]}, 2),
    ([{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [1, 2]}}],
     [[0.5, 0.5]], 1),
    ([{"type": "string"}], ["sample", "example"], 2),
    ([{"name": "when", "type": "datetime"}, {"name": "tags", "type": "array",
                                              "items": {"type": "string"}},
      {"name": "on", "type": "boolean"}, {"name": "x", "type": "double"}],
     {"columns": ["when", "tags", "on", "x"], "index": [0, 1],
      "data": [["2024-01-01T00:00:00", ["sample"], True, 0.5],
               ["2024-01-02T00:00:00", ["example"], False, 1.5]]}, 2),
])
def test_request_from_signature(tmp_path: Path, inputs: list[dict[str, Any]], input_data: Any,
                                rows: int) -> None:
    folder = write_folder(tmp_path / "m", {
        "MLmodel": {"flavors": {"python_function": {}},
                    "signature": {"inputs": json.dumps(inputs)}}})
    request = smoke_request(LocalModelFiles(folder), None)
    assert body_of(request) == {"input_data": input_data}
    assert request.rows == rows


# --- smoke requests from the user's file -------------------------------------------------------

def test_csv_file(tmp_path: Path, heart_folder: Path) -> None:
    import pandas as pd

    frame = trained_heart_model().example.copy()
    frame.loc[frame.index[1], "chol"] = None  # NaN in an int column → null
    path = tmp_path / "rows.csv"
    frame.to_csv(path)  # with its index column, as to_csv writes by default
    request = smoke_request(LocalModelFiles(heart_folder), path)
    input_data = body_of(request)["input_data"]
    assert input_data["columns"] == HEART_COLUMNS
    assert input_data["index"] == [0, 1, 2, 3, 4]
    assert input_data["data"][1][HEART_COLUMNS.index("chol")] is None
    assert input_data["data"][0][HEART_COLUMNS.index("oldpeak")] == 2.3
    assert (request.rows, request.source) == (5, str(path))
    assert b"NaN" not in request.body
    assert len(pd.read_json(io.StringIO(json.dumps(input_data)), orient="split")) == 5


def test_parquet_file(tmp_path: Path, heart_folder: Path) -> None:
    frame = trained_heart_model().example.set_index("age")  # a stored index is dropped
    frame = frame.reset_index()
    frame.index = [10, 11, 12, 13, 14]
    path = tmp_path / "rows.parquet"
    frame.to_parquet(path)
    request = smoke_request(LocalModelFiles(heart_folder), path)
    input_data = body_of(request)["input_data"]
    assert input_data["columns"] == HEART_COLUMNS
    assert input_data["index"] == [0, 1, 2, 3, 4]
    assert input_data["data"][0][-1] == "fixed"
    assert len(predict_like_azureml(heart_folder, input_data)) == 5


def test_request_file_passes_through(tmp_path: Path, heart_folder: Path) -> None:
    raw = json.dumps({"input_data": {"columns": HEART_COLUMNS, "index": [1],
                                     "data": [[63, 1, 1, 145, 233, 1, 2, 150, 0, 2.3, 3, 0,
                                               "fixed"]]},
                      "params": {}}, indent=2).encode()
    path = tmp_path / "request.json"
    path.write_bytes(raw)
    request = smoke_request(LocalModelFiles(heart_folder), path)
    assert (request.body, request.rows) == (raw, 1)
    tensor = tmp_path / "tensor.req"  # no suffix to go by: sniffed as JSON
    tensor.write_text('{"input_data": [[1, 2], [3, 4], [5, 6]]}')
    assert smoke_request(LocalModelFiles(heart_folder), tensor).rows == 3


@pytest.mark.parametrize(("name", "content", "message"), [
    ("r.json", '{"dataframe_split": {"columns": ["a"], "data": [[1]]}}',
     "dataframe_split is MLflow's serving format; Azure ML endpoints take input_data"),
    ("r.json", '{"data": [[1]]}', "no input_data key (keys: data)"),
    ("r.json", '[[1, 2]]', "a JSON list, not an object with input_data"),
    ("r.json", '{"input_data": []}', "input_data is empty"),
    ("r.json", '{"input_data": {"columns": ["a"], "data": [[1, 2]]}}',
     "row 1 has 2 values for 1 columns"),
    ("r.json", "{'input_data': 1}", "not valid JSON"),
    ("r.csv", "", "not a readable CSV file"),
    ("r.csv", "a,b\n", "no rows"),
    ("r.parquet", "PAR1 but not really", "not a readable parquet file"),
])
def test_bad_user_files(tmp_path: Path, heart_folder: Path, name: str, content: str,
                        message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(BadInput) as caught:
        smoke_request(LocalModelFiles(heart_folder), path)
    assert caught.value.message.startswith(f"--smoke-input {path}: ")
    assert message in caught.value.message
    assert "\n" not in caught.value.message


def test_missing_and_oversized_user_files(tmp_path: Path, heart_folder: Path) -> None:
    with pytest.raises(NotFound, match="no such file"):
        smoke_request(LocalModelFiles(heart_folder), tmp_path / "nope.csv")
    with pytest.raises(BadInput, match="a folder, not a file"):
        smoke_request(LocalModelFiles(heart_folder), tmp_path)
    big = tmp_path / "big.csv"
    big.write_text("a,b\n" + "123456789,987654321\n" * 100_000)
    with pytest.raises(BadInput, match="refuse requests over 1500000 bytes"):
        smoke_request(LocalModelFiles(heart_folder), big)


# --- the answer --------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    b"[0, 1, 1]",  # Azure ML's MLflow scoring script: an ndarray as a list
    b'[{"label": 0}, {"label": 1}, {"label": 1}]',  # a data frame, records orientation
    b'{"predictions": [0, 1, 1]}',  # MLflow's own scoring server
    b'{"label": [0, 1, 1], "score": [0.1, 0.9, 0.8]}',  # named outputs
    b'"[0, 1, 1]"',  # an older scoring script's json.dumps, encoded twice
])
def test_answers_that_pass(body: bytes) -> None:
    check_smoke_answer(200, body, 3)


def test_unknown_row_count_checks_only_status_and_json() -> None:
    check_smoke_answer(200, b'{"choices": [{"message": "hi"}]}', 0)
    with pytest.raises(OperationFailed, match="not JSON"):
        check_smoke_answer(200, b"<html>", 0)


def test_non_200_names_status_and_message() -> None:
    long_message = "model failed: " + "x" * 500
    with pytest.raises(OperationFailed) as caught:
        check_smoke_answer(424, json.dumps({"message": long_message}).encode(), 3)
    message = caught.value.message
    assert message.startswith("answered HTTP 424: model failed: x")
    assert len(message) < 300 and message.endswith("...")
    assert "424" in (caught.value.hint or "")
    with pytest.raises(OperationFailed, match=r"HTTP 502: Bad gateway"):
        check_smoke_answer(502, b"Bad   gateway\n", 3)
    with pytest.raises(OperationFailed, match=r"HTTP 500: \(empty body\)"):
        check_smoke_answer(500, b"", 3)
    with pytest.raises(OperationFailed, match=r"HTTP 400: bad input_data"):
        check_smoke_answer(400, b'{"error": {"code": "x", "message": "bad input_data"}}', 3)


@pytest.mark.parametrize(("body", "message"), [
    (b"not json", "the answer is not JSON: not json"),
    (b"[0, 1]", "sent 3 rows, the answer holds 2 predictions"),
    (b'{"predictions": [0]}', "sent 3 rows, the answer holds 1 predictions"),
    (b'{"result": "ok"}', "no list of predictions (a JSON object with keys result)"),
    (b'{"a": [1, 2, 3], "b": [1]}', "no list of predictions"),
    (b"42", "no list of predictions (a JSON int)"),
])
def test_answers_that_fail(body: bytes, message: str) -> None:
    with pytest.raises(OperationFailed) as caught:
        check_smoke_answer(200, body, 3)
    assert message in caught.value.message
