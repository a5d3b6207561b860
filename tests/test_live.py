"""Live tests against real services, skipped unless their AMLPROMOTE_LIVE_* variables are set
(README "Live tests"). They never run in CI by default and are the only tests that leave
loopback.

The variables are read when this module is imported: the per-test isolation in conftest.py
removes every AMLPROMOTE_* variable before a test body runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

# ============================================================================================
# Databricks (source side): AMLPROMOTE_LIVE_DATABRICKS_HOST, _TOKEN, _MODEL (NAME/VERSION; a
# three-part catalog.schema.model name goes through Unity Catalog)
# ============================================================================================

DATABRICKS_HOST = os.environ.get("AMLPROMOTE_LIVE_DATABRICKS_HOST", "")
DATABRICKS_TOKEN = os.environ.get("AMLPROMOTE_LIVE_DATABRICKS_TOKEN", "")
DATABRICKS_MODEL = os.environ.get("AMLPROMOTE_LIVE_DATABRICKS_MODEL", "")

live_databricks = pytest.mark.skipif(
    not (DATABRICKS_HOST and DATABRICKS_TOKEN and DATABRICKS_MODEL),
    reason="set AMLPROMOTE_LIVE_DATABRICKS_HOST, AMLPROMOTE_LIVE_DATABRICKS_TOKEN and "
           "AMLPROMOTE_LIVE_DATABRICKS_MODEL (NAME/VERSION) to run",
)


def _sha256_tree(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _digest(hashes: dict[str, str]) -> str:
    manifest = "".join(f"{hashes[path]}  {path}\n" for path in sorted(hashes))
    return "sha256:" + hashlib.sha256(manifest.encode()).hexdigest()


def _databricks_env(home: Path) -> dict[str, str]:
    """The developer's environment with only the live workspace's host and token."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AMLPROMOTE_", "MLFLOW_", "DATABRICKS_"))}
    env.update({"HOME": str(home), "DATABRICKS_HOST": DATABRICKS_HOST,
                "DATABRICKS_TOKEN": DATABRICKS_TOKEN, "MLFLOW_DISABLE_TELEMETRY": "true",
                "DO_NOT_TRACK": "true"})
    return env


@live_databricks
def test_live_databricks_version_promotes_byte_exact_and_loads(
    tmp_path: Path, isolated_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, _, version = DATABRICKS_MODEL.rpartition("/")
    assert name and version.isdigit(), "AMLPROMOTE_LIVE_DATABRICKS_MODEL must be NAME/VERSION"
    source = "databricks-uc" if name.count(".") == 2 else "databricks"
    target = f"sqlite:///{tmp_path / 'target' / 'mlflow.db'}"
    (tmp_path / "target").mkdir()
    env = _databricks_env(isolated_environment)  # conftest's per-test HOME

    # The token travels only in the environment, never on a command line.
    proc = subprocess.run(
        [sys.executable, "-m", "amlpromote", "copy-model", DATABRICKS_MODEL, "--source", source,
         "--target", target, "--target-name", "live-dbx", "--verify", "--output", "json"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=3600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert DATABRICKS_TOKEN not in proc.stdout + proc.stderr
    document = json.loads(proc.stdout)
    assert document["status"] == "copied" and document["verified"] is True

    # The target's files, read with MLflow's own client, give the digest the tool reported.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=target, registry_uri=target)
    location = client.get_model_version_download_uri("live-dbx", "1")
    if location.startswith("models:/m-"):
        location = client.get_logged_model(location.removeprefix("models:/")).artifact_location
    folder = Path(unquote(urlsplit(location).path))
    hashes = _sha256_tree(folder)
    assert "MLmodel" in hashes
    assert _digest(hashes) == document["source"]["digest"]
    # ... and they are the source's bytes, read independently through MLflow's models:/ route
    # (which adds its registered_model_meta file beside the model).
    import mlflow

    monkeypatch.setenv("DATABRICKS_HOST", DATABRICKS_HOST)
    monkeypatch.setenv("DATABRICKS_TOKEN", DATABRICKS_TOKEN)
    downloaded = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{name}/{version}", dst_path=str(tmp_path / "source"),
        tracking_uri="databricks", registry_uri=source))
    expected = _sha256_tree(downloaded)
    expected.pop("registered_model_meta", None)
    assert hashes == expected
    tags = client.get_model_version("live-dbx", "1").tags
    assert tags["amlpromote.digest"] == document["source"]["digest"]
    assert DATABRICKS_TOKEN not in json.dumps(tags)

    # It loads in a fresh interpreter that knows only the target.
    load = subprocess.run(
        [sys.executable, "-c", "import mlflow.pyfunc, sys; mlflow.pyfunc.load_model(sys.argv[1])",
         "models:/live-dbx/1"],
        env={**env, "MLFLOW_TRACKING_URI": target, "MLFLOW_REGISTRY_URI": target},
        cwd=tmp_path, capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    assert load.returncode == 0, load.stderr


# ============================================================================================
# Azure ML (target side): AMLPROMOTE_LIVE_AZUREML_SUBSCRIPTION, _RESOURCE_GROUP, _WORKSPACE, and
# optionally _CREDENTIAL (default: default) and _REGISTRY (an Azure ML registry to promote into
# as well). Signs in through azure-identity exactly like the CLI (az login, a service principal
# in AZURE_*, a managed identity). Each run registers a new model name, `amlpromote-live-<id>`,
# in the workspace; delete it afterwards if you like.
# With the Databricks variables also set, the source is that Databricks model (the mission's
# main path); otherwise it is the heart classifier in a local sqlite registry.
# ============================================================================================

AZUREML_SUBSCRIPTION = os.environ.get("AMLPROMOTE_LIVE_AZUREML_SUBSCRIPTION", "")
AZUREML_RESOURCE_GROUP = os.environ.get("AMLPROMOTE_LIVE_AZUREML_RESOURCE_GROUP", "")
AZUREML_WORKSPACE = os.environ.get("AMLPROMOTE_LIVE_AZUREML_WORKSPACE", "")
AZUREML_CREDENTIAL = os.environ.get("AMLPROMOTE_LIVE_AZUREML_CREDENTIAL", "default")
AZUREML_REGISTRY = os.environ.get("AMLPROMOTE_LIVE_AZUREML_REGISTRY", "")

live_azureml = pytest.mark.skipif(
    not (AZUREML_SUBSCRIPTION and AZUREML_RESOURCE_GROUP and AZUREML_WORKSPACE),
    reason="set AMLPROMOTE_LIVE_AZUREML_SUBSCRIPTION, AMLPROMOTE_LIVE_AZUREML_RESOURCE_GROUP "
           "and AMLPROMOTE_LIVE_AZUREML_WORKSPACE to run",
)


def _azure_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMLPROMOTE_", "MLFLOW_"))}
    env.update({"HOME": os.environ.get("HOME", str(home)), "MLFLOW_DISABLE_TELEMETRY": "true",
                "DO_NOT_TRACK": "true"})
    if DATABRICKS_HOST and DATABRICKS_TOKEN:
        env.update({"DATABRICKS_HOST": DATABRICKS_HOST, "DATABRICKS_TOKEN": DATABRICKS_TOKEN})
    return env


def _live_source(tmp_path: Path) -> tuple[str, str]:
    """(source URI, REF): the live Databricks model if configured, else a local heart model."""
    if DATABRICKS_HOST and DATABRICKS_TOKEN and DATABRICKS_MODEL:
        name = DATABRICKS_MODEL.rpartition("/")[0]
        return ("databricks-uc" if name.count(".") == 2 else "databricks"), DATABRICKS_MODEL
    from support.models import register_heart_model

    source = f"sqlite:///{tmp_path / 'source' / 'mlflow.db'}"
    (tmp_path / "source").mkdir()
    version = register_heart_model(source, name="live-heart", alias=None)
    return source, f"live-heart/{version}"


def _promote(env: dict[str, str], cwd: Path, source: str, ref: str, name: str,
             *target: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-m", "amlpromote", "copy-model", ref, "--source", source, *target,
         "--credential", AZUREML_CREDENTIAL, "--target-name", name, "--verify", "-o", "json"],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=3600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert DATABRICKS_TOKEN == "" or DATABRICKS_TOKEN not in proc.stdout + proc.stderr
    document: dict[str, object] = json.loads(proc.stdout)
    return document


@live_azureml
def test_live_azureml_workspace_promotion_is_verified_idempotent_and_loads(
    tmp_path: Path, isolated_environment: Path
) -> None:
    import uuid

    env = _azure_env(isolated_environment)
    source, ref = _live_source(tmp_path)
    name = f"amlpromote-live-{uuid.uuid4().hex[:8]}"
    coordinates = ("--workspace", AZUREML_WORKSPACE, "--resource-group", AZUREML_RESOURCE_GROUP,
                   "--subscription", AZUREML_SUBSCRIPTION)
    first = _promote(env, tmp_path, source, ref, name, *coordinates)
    assert first["status"] == "copied" and first["verified"] is True
    target = first["target"]
    assert isinstance(target, dict) and str(target["uri"]).startswith("azureml://")
    again = _promote(env, tmp_path, source, ref, name, *coordinates)
    assert again["status"] == "unchanged"

    # The workspace holds an MLflow-model asset that plain MLflow loads from the azureml:// URI.
    script = ("import mlflow, mlflow.pyfunc, sys; mlflow.set_tracking_uri(sys.argv[1]); "
              "mlflow.set_registry_uri(sys.argv[1]); mlflow.pyfunc.load_model(sys.argv[2])")
    load = subprocess.run(
        [sys.executable, "-c", script, str(target["uri"]), f"models:/{name}/{target['version']}"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1800, check=False)
    assert load.returncode == 0, load.stderr[-3000:]

    if AZUREML_REGISTRY:
        shared = _promote(env, tmp_path, source, ref, name, "--registry", AZUREML_REGISTRY)
        assert shared["status"] == "copied" and shared["verified"] is True


# Deploying costs money (a managed online endpoint bills per instance-hour), so it runs only when
# asked for: AMLPROMOTE_LIVE_AZUREML_DEPLOY=1 beside the workspace variables above, optionally
# AMLPROMOTE_LIVE_AZUREML_INSTANCE_TYPE (default Standard_DS3_v2). The endpoint is deleted at
# the end, also when the test fails.
AZUREML_DEPLOY = os.environ.get("AMLPROMOTE_LIVE_AZUREML_DEPLOY", "") in ("1", "true", "yes")
AZUREML_INSTANCE_TYPE = os.environ.get("AMLPROMOTE_LIVE_AZUREML_INSTANCE_TYPE",
                                       "Standard_DS3_v2")


@live_azureml
@pytest.mark.skipif(not AZUREML_DEPLOY, reason="set AMLPROMOTE_LIVE_AZUREML_DEPLOY=1 (it "
                                                "bills a managed online endpoint) to run")
@pytest.mark.timeout(7200)
def test_live_azureml_deploy_smoke_tests_serves_and_is_a_no_op_again(
    tmp_path: Path, isolated_environment: Path
) -> None:
    import uuid

    env = _azure_env(isolated_environment)
    source, ref = _live_source(tmp_path)
    endpoint = f"amlp-live-{uuid.uuid4().hex[:8]}"
    coordinates = ("--workspace", AZUREML_WORKSPACE, "--resource-group", AZUREML_RESOURCE_GROUP,
                   "--subscription", AZUREML_SUBSCRIPTION, "--credential", AZUREML_CREDENTIAL)

    def amlpromote(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "amlpromote", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=3600, check=False)

    try:
        first = amlpromote("deploy", ref, "--promote", "--source", source, "--endpoint",
                           endpoint, *coordinates, "--instance-type", AZUREML_INSTANCE_TYPE,
                           "-o", "json")
        assert first.returncode == 0, first.stderr[-3000:]
        result = json.loads(first.stdout)
        assert result["status"] == "deployed" and result["smoke"]["rows"] >= 1
        assert result["traffic"]["after"] == {result["deployment"]: 100}
        again = amlpromote("deploy", f"{result['model']['name']}/{result['model']['version']}",
                           "--endpoint", endpoint, *coordinates, "-o", "json")
        assert again.returncode == 0, again.stderr[-3000:]
        assert json.loads(again.stdout)["status"] == "unchanged"
        key = amlpromote("endpoints", "keys", endpoint, *coordinates).stdout.strip()
        assert key and key not in first.stdout + first.stderr
    finally:
        amlpromote("endpoints", "delete", endpoint, *coordinates)
