"""Train the UCI heart-disease classifier and register it in an MLflow registry.

This builds the demo *source* registry that `scripts/quickstart` promotes:

    python examples/heart/train.py --registry-uri file:///tmp/demo/mlruns

It logs a scikit-learn pipeline with a signature and an input example, registers it as
`uci-heart-classifier` and points the alias `champion` at the new version. Running it again adds
a version (as retraining would).
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path
from urllib.parse import urlparse

HERE = Path(__file__).resolve().parent
MODEL_NAME = "uci-heart-classifier"
FEATURES_NUMERIC = ["age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang",
                    "oldpeak", "slope", "ca"]
FEATURES_CATEGORICAL = ["thal"]


def train_and_register(registry_uri: str, model_name: str = MODEL_NAME,
                       alias: str | None = "champion", data: Path = HERE / "heart.csv") -> str:
    """Train the pipeline, log it to `registry_uri`, register it; returns the new version."""
    # No telemetry from the demo: it must run with no network but loopback.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    if registry_uri.startswith("file:"):
        # MLflow 3 refuses file stores unless asked explicitly; the demo registry is one on purpose.
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    mlflow.set_tracking_uri(registry_uri)
    mlflow.set_registry_uri(registry_uri)

    frame = pd.read_csv(data)
    features = frame.drop(columns=["target"])
    labels = frame["target"]
    pipeline = Pipeline([
        ("prepare", ColumnTransformer([
            ("numeric", StandardScaler(), FEATURES_NUMERIC),
            ("categorical", OneHotEncoder(handle_unknown="ignore"), FEATURES_CATEGORICAL),
        ])),
        ("classify", LogisticRegression(max_iter=1000)),
    ])
    pipeline.fit(features, labels)

    experiment_name = "heart-classifier"
    if mlflow.get_experiment_by_name(experiment_name) is None:
        location = None
        if urlparse(registry_uri).scheme == "sqlite":
            # Without a server, sqlite stores write artifacts to ./mlruns; keep them beside the db.
            db_path = Path(urlparse(registry_uri).path)
            location = (db_path.parent / f"{db_path.stem}-artifacts").resolve().as_uri()
        mlflow.create_experiment(experiment_name, artifact_location=location)
    mlflow.set_experiment(experiment_name)

    example = features.head(5)
    with mlflow.start_run(run_name="train-heart-classifier"), warnings.catch_warnings():
        # MLflow warns about every integer column of an inferred signature: such a column could
        # not hold a missing value. The heart data has none, and its CSVs have integer columns
        # that the signature must keep accepting, so this one hint (and only it) is silenced.
        warnings.filterwarnings("ignore", category=UserWarning,
                                message="Hint: Inferred schema contains integer column")
        mlflow.log_metric("train_accuracy", float(pipeline.score(features, labels)))
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=infer_signature(example, pipeline.predict(example)),
            input_example=example,
            registered_model_name=model_name,
        )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)
    client.update_registered_model(model_name, description="UCI heart-disease classifier "
                                   "(scikit-learn pipeline), trained by examples/heart/train.py")
    client.update_model_version(model_name, version, description="Logistic regression on the "
                                "UCI heart-disease data")
    client.set_model_version_tag(model_name, version, "data", "uci-heart")
    if alias:
        client.set_registered_model_alias(model_name, alias, version)
    return version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry-uri", required=True, help="MLflow tracking/registry URI")
    parser.add_argument("--name", default=MODEL_NAME)
    parser.add_argument("--alias", default="champion")
    args = parser.parse_args()
    version = train_and_register(args.registry_uri, args.name, args.alias)
    print(f"registered {args.name} version {version} in {args.registry_uri}")


if __name__ == "__main__":
    main()
