"""Models and registries written by older MLflow versions, scored and deployed by this one.

The heart model of tests/fixtures/mlflow-{1.30,2.16}/heart was logged and registered by
MLflow 1.30.1 and 2.16.2 themselves (tests/fixtures/make_old_heart_models.py): their MLmodel
forms (a 1.x signature without `required`, 2.x `env` mappings and `serving_input_example.json`),
their environment files, their input examples and their sqlite schema. Only `model.pkl` is
written here, from the same pipeline, by this scikit-learn (a pickle loads only in the version
that wrote it). `score` and `deploy` only read a registry: an older one is read as it is, and
stays byte for byte unchanged; nothing asks for --upgrade-target-schema.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from support import HEART_UNLABELED_CSV
from support.cli import cli
from support.models import trained_heart_model
from support.old_registries import FIXTURES, relocate_sqlite

pytestmark = pytest.mark.timeout(600)

MODEL = "uci-heart-old"
VERSIONS = ("1.30", "2.16")


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def old_heart(tmp_path: Path, mlflow_version: str) -> dict[str, Any]:
    """A relocated copy of the old registry, its version's model folder completed with
    model.pkl; `tree` is its state before the test."""
    import cloudpickle

    source = FIXTURES / f"mlflow-{mlflow_version}" / "heart"
    root = tmp_path / f"old-{mlflow_version}"
    shutil.copytree(source, root)
    relocate_sqlite(root / "registry.db", (source / "ROOT").read_text().strip(), str(root))
    (model,) = (p.parent for p in root.rglob("MLmodel"))
    with (model / "model.pkl").open("wb") as handle:
        cloudpickle.dump(trained_heart_model().pipeline, handle)
    return {"root": root, "model": model, "uri": f"sqlite:///{root / 'registry.db'}",
            "tree": _tree(root)}


def _expected(rows: pd.DataFrame) -> list[int]:
    return [int(v) for v in trained_heart_model().pipeline.predict(rows)]


@pytest.mark.parametrize("mlflow_version", VERSIONS)
def test_an_old_model_folder_and_registered_version_score_locally(
        tmp_path: Path, mlflow_version: str) -> None:
    old = old_heart(tmp_path, mlflow_version)
    rows = pd.read_csv(HEART_UNLABELED_CSV)
    expected = _expected(rows)

    for model in (f"{MODEL}/1", str(old["model"])):
        out = tmp_path / f"preds-{len(model)}.csv"
        run = cli("score", "--model", model, "--target", old["uri"], "--input",
                  str(HEART_UNLABELED_CSV), "--output", str(out), "-o", "json")
        assert run.code == 0, run.both
        assert run.document["rows"] == len(rows)
        scored = pd.read_csv(out)
        assert scored["prediction"].tolist() == expected
        pd.testing.assert_frame_equal(scored.drop(columns=["prediction"]), rows)
    # Read from a snapshot: the old registry (schema, rows, files) is as it was.
    assert _tree(old["root"]) == old["tree"]


@pytest.mark.parametrize("mlflow_version", VERSIONS)
def test_an_old_registered_version_deploys_locally_and_answers(
        tmp_path: Path, mlflow_version: str) -> None:
    old = old_heart(tmp_path, mlflow_version)
    env = {"AMLPROMOTE_DATA_DIR": str(tmp_path / "data")}
    endpoint = f"old-{mlflow_version.replace('.', '')}"
    ref = f"{MODEL}@champion" if mlflow_version != "1.30" else f"{MODEL}/1"  # 1.x: no aliases
    deployed = cli("deploy", ref, "--endpoint", endpoint, "--target", old["uri"], "-o", "json",
                   env=env)
    try:
        assert deployed.code == 0, deployed.both
        document = deployed.document
        assert document["status"] == "deployed"
        assert document["model"]["name"] == MODEL and document["model"]["version"] == "1"
        # The smoke test sent the old MLflow's own input example (five rows).
        assert document["smoke"]["rows"] == 5

        few = pd.read_csv(HEART_UNLABELED_CSV).head(7)
        request = tmp_path / "few.csv"
        few.to_csv(request, index=False)
        scored = cli("score", "--endpoint", endpoint, "--local", "--input", str(request),
                     "--output", "-", env=env)
        assert scored.code == 0, scored.both
        answers = pd.read_json(io.StringIO(scored.stdout), lines=True)
        assert answers["prediction"].tolist() == _expected(few)
    finally:
        cli("endpoints", "delete", endpoint, "--local", env=env)
    assert _tree(old["root"]) == old["tree"]


def test_upgrade_target_schema_goes_with_promote_only(tmp_path: Path) -> None:
    old = old_heart(tmp_path, "1.30")
    run = cli("deploy", f"{MODEL}/1", "--endpoint", "old", "--target", old["uri"],
              "--upgrade-target-schema", env={"AMLPROMOTE_DATA_DIR": str(tmp_path / "data")})
    assert run.code == 2, run.both
    assert run.stderr.startswith("error: --upgrade-target-schema goes with --promote"), run.stderr
    assert "Traceback" not in run.both
    assert not (tmp_path / "data" / "endpoints").exists()
    assert _tree(old["root"]) == old["tree"]


@pytest.mark.parametrize("mlflow_version", VERSIONS)
def test_models_show_reads_an_old_registry_unchanged(tmp_path: Path, mlflow_version: str) -> None:
    old = old_heart(tmp_path, mlflow_version)
    run = cli("models", "show", f"{MODEL}/1", "--target", old["uri"], "-o", "json")
    assert run.code == 0, run.both
    assert run.document["name"] == MODEL and run.document["version"] == "1"
    assert _tree(old["root"]) == old["tree"]
