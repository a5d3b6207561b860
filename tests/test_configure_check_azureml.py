"""`configure --check` against Azure ML in a box: the workspace's MLflow URI is discovered from
its coordinates with the chosen credential, then one page of models is listed; each failure
(authentication, authorization, unknown workspace) gets its own exit code and names the
credential that was tried."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from azureml_box.testing import (
    FORBIDDEN_WORKSPACE,
    REGISTRY,
    RESOURCE_GROUP,
    SUBSCRIPTION,
    WORKSPACE,
    BoxWorkspaces,
)
from typer.testing import CliRunner

from amlpromote.cli.app import app

pytest_plugins = ["azureml_box.fixtures"]
pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "conf" / "config.toml"
    monkeypatch.setenv("AMLPROMOTE_CONFIG", str(path))
    monkeypatch.setenv("AMLPROMOTE_DATA_DIR", str(tmp_path / "data"))
    for key in list(os.environ):
        if key.startswith("AMLPROMOTE_") and key not in ("AMLPROMOTE_CONFIG",
                                                          "AMLPROMOTE_DATA_DIR"):
            monkeypatch.delenv(key)
    return path


def check(*args: str) -> tuple[int, dict[str, object], str]:
    result = CliRunner().invoke(app, ["configure", "az", *args, "--check", "-o", "json", "-v"])
    document = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.exit_code, document, result.stdout + result.stderr


def target_of(document: dict[str, object]) -> dict[str, object]:
    checks = document["checks"]
    assert isinstance(checks, list)
    target = checks[1]
    assert isinstance(target, dict) and target["side"] == "target"
    return target


def coordinates(workspace: str) -> list[str]:
    return ["--workspace", workspace, "--resource-group", RESOURCE_GROUP,
            "--subscription", SUBSCRIPTION]


def test_check_discovers_the_workspace_and_lists_models(
    config_file: Path, tmp_path: Path, azureml_box: BoxWorkspaces, box_env: dict[str, str]
) -> None:
    code, document, text = check("--source", str(tmp_path / "src.db"),
                                 *coordinates(WORKSPACE), "--credential", "managed-identity")
    target = target_of(document)
    assert target["status"] == "ok", text
    note = str(target["note"])
    assert f"workspaces/{WORKSPACE}" in note and "credential managed-identity" in note
    assert "azureml://" in note
    # The source does not exist: the run fails with its code, the target still reports ok.
    assert code == 3
    assert box_env["IDENTITY_HEADER"] not in text
    arm = azureml_box.box.requests_for("arm")
    assert arm and all(r.status == 200 for r in arm)
    assert [r.status for r in azureml_box.box.requests_for("mlflow")] == [200]


def test_forbidden_workspace_is_an_authorization_failure(
    config_file: Path, tmp_path: Path, azureml_box: BoxWorkspaces, box_env: dict[str, str]
) -> None:
    code, document, text = check(*coordinates(FORBIDDEN_WORKSPACE))
    target = target_of(document)
    assert target["status"] == "failed" and target["exit_code"] == 4, text
    assert FORBIDDEN_WORKSPACE in str(target["error"])
    assert code == 2  # the first side (no source configured) decides the exit code
    code, document, _ = check("--source", "sqlite:///" + str(tmp_path / "s.db"))
    assert target_of(document)["exit_code"] == 4


def test_unknown_workspace_is_not_found(
    config_file: Path, azureml_box: BoxWorkspaces, box_env: dict[str, str]
) -> None:
    _, document, text = check(*coordinates("no-such-ws"))
    target = target_of(document)
    assert target["status"] == "failed" and target["exit_code"] == 3, text
    assert "no-such-ws" in str(target["error"])


def test_a_credential_that_gets_no_token_names_itself(
    config_file: Path, azureml_box: BoxWorkspaces, box_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDENTITY_HEADER", "wrong-header-value-123456")
    _, document, text = check(*coordinates(WORKSPACE), "--credential", "managed-identity")
    target = target_of(document)
    assert target["status"] == "failed" and target["exit_code"] == 4, text
    assert "managed" in (str(target["error"]) + str(target["hint"])).lower()
    assert "wrong-header-value-123456" not in text
    assert "Traceback" not in text


def test_check_discovers_an_azure_ml_registry(
    config_file: Path, azureml_box: BoxWorkspaces, box_env: dict[str, str]
) -> None:
    _, document, text = check("--registry", REGISTRY, "--credential", "managed-identity")
    target = target_of(document)
    assert target["status"] == "ok", text
    assert f"registries/{REGISTRY}" in str(target["note"])
    _, document, text = check("--registry", "no-such-registry")
    target = target_of(document)
    assert target["status"] == "failed" and target["exit_code"] == 3, text
