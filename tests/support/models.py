"""Real models in real registries: the UCI heart classifier, and raw file-only versions.

Self-contained on purpose (nothing is imported from examples/): a change to the demo script must
not silently change what the tests promote.

Every function here leaves MLflow's global state (tracking/registry URI, their environment
variables, the active experiment, MLFLOW_ALLOW_FILE_STORE) exactly as it found it, so a test that
passes because a helper left the global tracking URI pointing at the right store cannot happen.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from . import HEART_CSV

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.models import ModelSignature

HEART_MODEL_NAME = "uci-heart-classifier"
HEART_EXPERIMENT = "heart-classifier"
RAW_EXPERIMENT = "raw-models"
FEATURES_NUMERIC = [
    "age",
    "sex",
    "cp",
    "trestbps",
    "chol",
    "fbs",
    "restecg",
    "thalach",
    "exang",
    "oldpeak",
    "slope",
    "ca",
]
FEATURES_CATEGORICAL = ["thal"]
HEART_VERSION_DESCRIPTION = "Logistic regression on the UCI heart-disease data"
HEART_VERSION_TAGS = {"data": "uci-heart"}

# Every environment variable through which MLflow's fluent API carries global state.
_MLFLOW_STATE_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_RUN_ID",
    "MLFLOW_ALLOW_FILE_STORE",
)


@dataclass(frozen=True)
class TrainedHeartModel:
    """The fitted pipeline plus what log_model needs to describe it."""

    pipeline: Any  # sklearn Pipeline; Any keeps sklearn out of import time
    example: pd.DataFrame
    signature: ModelSignature
    pip_requirements: tuple[str, ...]
    train_accuracy: float


@functools.cache
def trained_heart_model() -> TrainedHeartModel:
    """Train the heart pipeline once per process (pytest session) and reuse it."""
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = pd.read_csv(HEART_CSV)
    features = frame.drop(columns=["target"])
    labels = frame["target"]
    pipeline = Pipeline(
        [
            (
                "prepare",
                ColumnTransformer(
                    [
                        ("numeric", StandardScaler(), FEATURES_NUMERIC),
                        (
                            "categorical",
                            OneHotEncoder(handle_unknown="ignore"),
                            FEATURES_CATEGORICAL,
                        ),
                    ]
                ),
            ),
            ("classify", LogisticRegression(max_iter=1000)),
        ]
    )
    pipeline.fit(features, labels)
    example = features.head(5)
    # Explicit requirements skip MLflow's inference, which spawns a Python subprocess per
    # log_model (seconds each) and picks up whatever test tooling happens to be imported.
    requirements = (
        *mlflow.sklearn.get_default_pip_requirements(include_skops=True),
        f"pandas=={pd.__version__}",
    )
    with warnings.catch_warnings():
        # The integer-columns hint is about data with missing values; the heart data has none.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        signature = infer_signature(example, pipeline.predict(example))
    return TrainedHeartModel(
        pipeline=pipeline,
        example=example,
        signature=signature,
        pip_requirements=tuple(requirements),
        train_accuracy=float(pipeline.score(features, labels)),
    )


def save_heart_model(path: Path) -> Path:
    """The heart pipeline saved at `path` as an MLflow model folder (signature, input example,
    pinned requirements), as the deploy and score tests serve it."""
    import mlflow.sklearn

    model = trained_heart_model()
    mlflow.sklearn.save_model(model.pipeline, str(path), signature=model.signature,
                              input_example=model.example,
                              pip_requirements=list(model.pip_requirements))
    return path


@contextlib.contextmanager
def mlflow_global_state_preserved() -> Iterator[None]:
    """Restore MLflow's global URIs, active experiment and related env vars on exit.

    The module-level values are saved rather than `get_tracking_uri()`, because the getter
    resolves a default: restoring that would turn "unset" into "explicitly set".
    """
    import mlflow
    from mlflow.tracking import fluent
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_env = {key: os.environ.get(key) for key in _MLFLOW_STATE_ENV}
    saved_tracking = tracking_utils._tracking_uri
    saved_registry = registry_utils._registry_uri
    saved_experiment = fluent._active_experiment_id
    try:
        yield
    finally:
        # The public setters also reset tracing state that caches the tracking URI.
        mlflow.set_tracking_uri(saved_tracking)  # type: ignore[arg-type]
        registry_utils._registry_uri = saved_registry
        fluent._active_experiment_id = saved_experiment
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _store_access(registry_uri: str) -> Iterator[None]:
    # MLflow 3 refuses file stores without this opt-in; the helpers want them on purpose, but
    # product code must opt in on its own, so it is undone on exit.
    with mlflow_global_state_preserved():
        if urlparse(registry_uri).scheme in ("", "file"):
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        yield


def _artifact_location_for(registry_uri: str, experiment: str) -> str | None:
    parsed = urlparse(registry_uri)
    if parsed.scheme != "sqlite":
        return None
    # Without a server, sqlite stores put artifacts in ./mlruns; keep them beside the db instead.
    db_path = Path(parsed.path)
    return (db_path.parent / f"{db_path.stem}-artifacts" / experiment).resolve().as_uri()


def _ensure_experiment(client: MlflowClient, registry_uri: str, name: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(
            client.create_experiment(
                name, artifact_location=_artifact_location_for(registry_uri, name)
            )
        )
    except MlflowException:
        # Lost a creation race against another test sharing this registry.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def register_heart_model(
    registry_uri: str,
    name: str = HEART_MODEL_NAME,
    alias: str | None = "champion",
) -> str:
    """Log the heart pipeline to `registry_uri` and register it; returns the new version.

    The version gets a description (HEART_VERSION_DESCRIPTION), the tags HEART_VERSION_TAGS and,
    if given, `alias`. Works for file://, sqlite:/// and http:// registries; MLflow's global
    state is unchanged afterwards.
    """
    import mlflow
    import mlflow.sklearn

    model = trained_heart_model()
    with _store_access(registry_uri):
        # log_model only speaks the fluent API, which reads the global URIs; they are restored
        # by _store_access.
        mlflow.set_tracking_uri(registry_uri)
        mlflow.set_registry_uri(registry_uri)
        client = mlflow.MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)
        experiment_id = _ensure_experiment(client, registry_uri, HEART_EXPERIMENT)
        with mlflow.start_run(experiment_id=experiment_id, run_name="train-heart-classifier"):
            mlflow.log_metric("train_accuracy", model.train_accuracy)
            info = mlflow.sklearn.log_model(
                model.pipeline,
                name="model",
                signature=model.signature,
                input_example=model.example,
                pip_requirements=list(model.pip_requirements),
                registered_model_name=name,
            )
        version = str(info.registered_model_version)
        client.update_model_version(name, version, description=HEART_VERSION_DESCRIPTION)
        for key, value in HEART_VERSION_TAGS.items():
            client.set_model_version_tag(name, version, key, value)
        if alias:
            client.set_registered_model_alias(name, alias, version)
        return version


def register_raw_model(
    registry_uri: str,
    name: str,
    files: Mapping[str, bytes | os.PathLike[str]],
    *,
    folder: str = "model",
    description: str | None = None,
    tags: Mapping[str, str] | None = None,
    alias: str | None = None,
) -> str:
    """Register a version whose stored artifacts are exactly `files`; returns the version.

    Keys are POSIX relative paths (subfolders allowed); values are the bytes, or a path to a
    file to copy (for files too big to hold in memory). No MLmodel is added, so this makes
    "not really a model" and large/binary edge cases. The version's source is the run's
    artifact URI + `/folder`, i.e. a classic run-based version, not a LoggedModel.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    for relative in files:
        pure = PurePosixPath(relative)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts:
            raise ValueError(f"artifact paths must be relative and inside the folder: {relative}")

    with _store_access(registry_uri):
        client = mlflow.MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)
        experiment_id = _ensure_experiment(client, registry_uri, RAW_EXPERIMENT)
        run = client.create_run(experiment_id, run_name=f"raw-{name}")
        run_id = run.info.run_id
        with tempfile.TemporaryDirectory(prefix="raw-model-") as staging:
            for relative, content in files.items():
                target = Path(staging, *PurePosixPath(relative).parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(content, bytes | bytearray):
                    target.write_bytes(content)
                else:
                    shutil.copyfile(content, target)
            client.log_artifacts(run_id, staging, artifact_path=folder)
        client.set_terminated(run_id)

        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
        source = f"{run.info.artifact_uri.rstrip('/')}/{folder}"
        model_version = client.create_model_version(
            name, source=source, run_id=run_id, description=description, tags=dict(tags or {})
        )
        version = str(model_version.version)
        if alias:
            client.set_registered_model_alias(name, alias, version)
        return version


def sha256_tree(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by POSIX relative path."""
    assert folder.is_dir(), f"no folder {folder}"
    hashes: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
            hashes[path.relative_to(folder).as_posix()] = digest.hexdigest()
    return hashes


def stored_folder(registry_uri: str, name: str, version: str = "1") -> Path:
    """The local folder that holds a version's stored files (a store with local artifacts)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)
    location = client.get_model_version_download_uri(name, version)
    if location.startswith("models:/m-"):
        location = client.get_logged_model(location.removeprefix("models:/")).artifact_location
    assert location.startswith("file://"), location
    return Path(location.removeprefix("file://"))
