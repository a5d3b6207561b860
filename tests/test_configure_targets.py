"""`configure` with Azure ML targets (coordinates, not URIs), target precedence, and `--check`
against local stores and a real `mlflow server`. The Azure ML side of `--check` is tested against
Azure ML in a box in tests/test_configure_check_azureml.py."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest
from support.mlflow_server import MlflowServer
from support.models import register_heart_model
from typer.testing import CliRunner

from amlpromote.cli.app import app

SUB = "11111111-2222-4333-8444-555555555555"


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "conf" / "config.toml"
    monkeypatch.setenv("AMLPROMOTE_CONFIG", str(path))
    monkeypatch.setenv("AMLPROMOTE_DATA_DIR", str(tmp_path / "data"))
    for key in list(os.environ):
        if key.startswith(("AMLPROMOTE_", "AZURE_")) and key not in (
            "AMLPROMOTE_CONFIG",
            "AMLPROMOTE_DATA_DIR",
        ):
            monkeypatch.delenv(key)
    return path


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def stored(config_file: Path) -> dict[str, dict[str, str]]:
    profiles: dict[str, dict[str, str]] = tomllib.loads(config_file.read_text())["profiles"]
    return profiles


def test_workspace_target_is_stored_as_coordinates(config_file: Path) -> None:
    code, out, err = invoke(
        "configure", "prod", "--source", "databricks://prod", "--workspace", "ml-prod",
        "--resource-group", "rg-ml", "--subscription", SUB, "--credential", "managed-identity",
        "-o", "json")
    assert code == 0, err
    assert json.loads(out)["settings"] == {
        "source": "databricks://prod", "workspace": "ml-prod", "resource_group": "rg-ml",
        "subscription": SUB, "credential": "managed-identity"}
    assert stored(config_file)["prod"]["workspace"] == "ml-prod"

    code, out, _ = invoke("configure", "show", "prod", "-o", "json")
    doc = json.loads(out)
    assert doc["target"]["kind"] == "workspace"
    assert "ml-prod" in doc["target"]["registry"] and "rg-ml" in doc["target"]["registry"]
    assert doc["settings"]["target"] == {"value": None, "origin": "not used"}
    assert doc["settings"]["credential"] == {"value": "managed-identity", "origin": "profile"}

    code, out, _ = invoke("configure", "list")
    assert "azureml workspace rg-ml/ml-prod" in out


def test_one_kind_of_target_replaces_the_other(config_file: Path, tmp_path: Path) -> None:
    assert invoke("configure", "p", "--workspace", "ml-prod", "-g", "rg", "--subscription",
                  SUB)[0] == 0
    assert invoke("configure", "p", "--target", str(tmp_path / "r.db"))[0] == 0
    profile = stored(config_file)["p"]
    assert "workspace" not in profile and "resource_group" not in profile
    assert profile["target"].startswith("sqlite:///")
    assert invoke("configure", "p", "--registry", "shared-models")[0] == 0
    profile = stored(config_file)["p"]
    assert profile == {"registry": "shared-models"}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--subscription", "not-a-guid", "--workspace", "ws1", "-g", "rg"],
         "not a valid subscription"),
        (["--workspace", "a b", "-g", "rg", "--subscription", SUB], "not a valid workspace"),
        (["--workspace", "ws1", "-g", "rg/x", "--subscription", SUB],
         "not a valid resource group"),
        (["--registry", "r/../x"], "not a valid registry"),
        (["--credential", "browser", "--registry", "reg1"], "unknown credential 'browser'"),
        (["--workspace", "ws1", "--registry", "reg1"], "both --workspace and --registry"),
        (["--target", "sqlite:///x.db", "--workspace", "ws1"], "both --target"),
    ],
)
def test_bad_azure_settings_are_refused_and_nothing_is_written(
    config_file: Path, args: list[str], needle: str
) -> None:
    code, out, err = invoke("configure", "prod", *args)
    assert code == 2, (out, err)
    assert needle in err
    assert "Traceback" not in err
    assert not config_file.exists()


def test_environment_values_are_not_written_into_a_profile(config_file: Path) -> None:
    env = {"AMLPROMOTE_TARGET": "sqlite:////ci/reg.db", "AMLPROMOTE_WORKSPACE": "ws-ci"}
    code, _, err = invoke("configure", "prod", "--source", "file:///data/mlruns", env=env)
    assert code == 0, err
    assert stored(config_file)["prod"] == {"source": "file:///data/mlruns"}


def test_target_precedence_and_conflicts(config_file: Path, tmp_path: Path) -> None:
    invoke("configure", "p", "--source", str(tmp_path / "src.db"), "--workspace", "ml-prod",
           "-g", "rg", "--subscription", SUB)
    # An environment target beats the profile's workspace.
    code, out, _ = invoke("configure", "show", "p", "-o", "json",
                          env={"AMLPROMOTE_TARGET": str(tmp_path / "t.db")})
    assert code == 0
    assert json.loads(out)["target"]["kind"] == "uri"
    # Two kinds at the same level are an error, not a guess.
    code, _, err = invoke("configure", "show", "p",
                          env={"AMLPROMOTE_TARGET": str(tmp_path / "t.db"),
                               "AMLPROMOTE_REGISTRY": "shared"})
    assert code == 2
    assert "both --target and --registry" in err
    # A workspace without its resource group is named as such.
    code, _, err = invoke("copy-model", "m/1", "--source", str(tmp_path / "src.db"),
                          "--workspace", "ml-prod", "--subscription", SUB)
    assert code == 2
    assert "needs --resource-group" in err
    assert not (tmp_path / "data").exists()


def test_check_reports_both_sides(config_file: Path, tmp_path: Path,
                                  mlflow_server: MlflowServer, unique_model_name: str) -> None:
    register_heart_model(mlflow_server.tracking_uri, unique_model_name)
    target = tmp_path / "new" / "reg.db"
    code, out, err = invoke("configure", "c", "--source", mlflow_server.tracking_uri, "--target",
                            str(target), "--check", "-o", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["status"] == "ok" and doc["profile"] == "c"
    source, tgt = doc["checks"]
    assert source["side"] == "source" and source["status"] == "ok"
    assert source["models"], "one page of the server's models"
    assert tgt["status"] == "missing" and "creates it" in tgt["note"]
    assert not target.parent.exists(), "--check must not create the target"
    assert stored(config_file)["c"]["source"] == mlflow_server.tracking_uri

    # A check of the saved profile alone, in human form.
    code, out, _ = invoke("configure", "c", "--check")
    assert code == 0
    assert out.splitlines()[0].startswith("source  ok")


def test_check_exit_code_is_the_first_failure(config_file: Path, tmp_path: Path) -> None:
    code, out, err = invoke("configure", "--source", str(tmp_path / "missing.db"), "--check",
                            "-o", "json")
    assert code == 3, err
    doc = json.loads(out)
    assert doc["status"] == "failed"
    assert doc["checks"][0]["status"] == "failed"
    assert "no sqlite database" in doc["checks"][0]["error"]
    assert doc["checks"][1]["status"] in ("ok", "missing")

    code, out, err = invoke("configure", "nosrc", "--target", str(tmp_path / "t.db"),
                            "--check")
    assert code == 2
    assert "no source registry set" in out
