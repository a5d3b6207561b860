"""`amlpromote configure`: profiles written atomically, 0600, no secrets, precedence."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from amlpromote.cli.app import app


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "conf" / "config.toml"
    monkeypatch.setenv("AMLPROMOTE_CONFIG", str(path))
    monkeypatch.setenv("AMLPROMOTE_DATA_DIR", str(tmp_path / "data"))
    for key in list(os.environ):
        if key.startswith("AMLPROMOTE_") and key not in (
            "AMLPROMOTE_CONFIG",
            "AMLPROMOTE_DATA_DIR",
        ):
            monkeypatch.delenv(key)
    return path


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.stdout


def test_write_show_list(config_file: Path, tmp_path: Path) -> None:
    code, out = invoke(
        "configure",
        "prod",
        "--source",
        "file:///data/mlruns",
        "--target",
        str(tmp_path / "reg.db"),
        "-o",
        "json",
    )
    assert code == 0, out
    doc = json.loads(out)
    assert doc["status"] == "saved" and doc["profile"] == "prod"
    assert doc["settings"]["target"] == f"sqlite:///{tmp_path / 'reg.db'}"
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert not list(config_file.parent.glob(".config-*")), "temp file left behind"

    code, out = invoke("configure", "show", "prod", "-o", "json")
    assert code == 0
    settings = json.loads(out)["settings"]
    assert settings["source"] == {"value": "file:///data/mlruns", "origin": "profile"}

    code, out = invoke(
        "configure", "show", "prod", "-o", "json", env={"AMLPROMOTE_SOURCE": "sqlite:////x.db"}
    )
    assert json.loads(out)["settings"]["source"]["origin"] == "environment AMLPROMOTE_SOURCE"

    invoke("configure", "--source", "file:///other")
    code, out = invoke("configure", "list", "-o", "json")
    assert code == 0
    assert [p["name"] for p in json.loads(out)["profiles"]] == ["default", "prod"]

    # Removing a setting with an empty value.
    code, _ = invoke("configure", "prod", "--target", "")
    assert code == 0
    code, out = invoke("configure", "show", "prod", "-o", "json")
    assert json.loads(out)["settings"]["target"]["origin"] == "default"


def test_default_show_without_config(config_file: Path, tmp_path: Path) -> None:
    code, out = invoke("configure", "show", "-o", "json")
    assert code == 0
    target = json.loads(out)["settings"]["target"]
    assert target["origin"] == "default"
    assert target["value"] == f"sqlite:///{tmp_path / 'data' / 'registry' / 'mlflow.db'}"


def test_secrets_are_refused(config_file: Path) -> None:
    result = CliRunner().invoke(
        app, ["configure", "--source", "https://user:s3cr3t@mlflow.example.com", "-v"]
    )
    assert result.exit_code == 2
    assert "s3cr3t" not in result.output
    assert not config_file.exists()
    code, _ = invoke("configure", "--source", "https://mlflow.example.com?token=s3cr3t")
    assert code == 2
    assert not config_file.exists()


def test_bad_input(config_file: Path) -> None:
    assert invoke("configure", "--source", "ftp://x")[0] == 2
    assert invoke("configure", "show", "missing")[0] == 3
    assert invoke("configure", "a", "b")[0] == 2
    # No options without a terminal: a usage error, not a prompt that hangs.
    assert invoke("configure", "prod")[0] == 2
    assert not config_file.exists()


def test_corrupt_config_is_a_clear_error(config_file: Path) -> None:
    config_file.parent.mkdir(parents=True)
    config_file.write_text("[profiles\nsource=")
    result = CliRunner().invoke(app, ["configure", "list"])
    assert result.exit_code == 2
    assert "not valid TOML" in result.stderr
    assert "Traceback" not in result.output
