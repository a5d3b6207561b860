"""`amlpromote configure`: profiles written atomically, 0600, no secrets, precedence."""

from __future__ import annotations

import json
import os
import stat
import tomllib
from pathlib import Path

import pytest
from support import free_port
from support.cli import cli
from support.mlflow_server import MlflowServer
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


def _saved(config_file: Path) -> bytes:
    return config_file.read_bytes()


def test_delete_removes_one_profile_atomically(config_file: Path) -> None:
    for name in ("keep", "gone"):
        assert invoke("configure", name, "--source", "file:///data/mlruns")[0] == 0
    run = cli("configure", "delete", "gone", "-o", "json")
    assert run.code == 0, run.both
    assert run.document == {"status": "deleted", "profile": "gone", "path": str(config_file)}
    assert set(tomllib.loads(config_file.read_text())["profiles"]) == {"keep"}
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert not list(config_file.parent.glob(".config-*")), "temp file left behind"

    run = cli("configure", "delete", "keep")
    assert run.code == 0 and "deleted profile 'keep'" in run.stdout, run.both
    assert tomllib.loads(config_file.read_text()).get("profiles", {}) == {}


def test_delete_of_a_missing_profile_is_not_found_and_changes_nothing(config_file: Path) -> None:
    assert invoke("configure", "keep", "--source", "file:///data/mlruns")[0] == 0
    before = _saved(config_file)
    for json_mode in (False, True):
        run = cli("configure", "delete", "nope", *(["-o", "json"] if json_mode else []))
        assert run.code == 3, run.both
        assert "'nope'" in run.stderr and "Traceback" not in run.both
        if json_mode:
            assert run.document["status"] == "failed" and run.document["exit_code"] == 3
        else:
            assert run.stdout == ""
    assert _saved(config_file) == before


@pytest.mark.parametrize("args", [
    ["configure", "delete"],
    ["configure", "delete", "a", "b"],
    ["configure", "delete", "keep", "--source", "file:///x"],
    ["configure", "show", "--source", "file:///x"],
    ["configure", "show", "keep", "--workspace", "ml-prod"],
    ["configure", "show", "--check"],
    ["configure", "list", "--target", "sqlite:///x.db"],
    ["configure", "list", "keep"],
])
def test_show_list_and_delete_refuse_what_they_would_ignore(config_file: Path,
                                                            args: list[str]) -> None:
    assert invoke("configure", "keep", "--source", "file:///data/mlruns")[0] == 0
    before = _saved(config_file)
    run = cli(*args, "-o", "json")
    assert run.code == 2, run.both
    document = run.document
    assert document["status"] == "failed" and document["exit_code"] == 2
    assert document["error"] and document["hint"]
    if "--source" in args or "--workspace" in args or "--target" in args or "--check" in args:
        assert f"{args[1]} takes no settings" in document["error"]
    assert _saved(config_file) == before


@pytest.mark.parametrize("name", ["show", "list", "delete"])
def test_reserved_words_are_not_profile_names(config_file: Path, name: str) -> None:
    run = cli("configure", "--source", "file:///x", env={"AMLPROMOTE_PROFILE": name})
    assert run.code == 2 and "AMLPROMOTE_PROFILE" in run.stderr, run.both
    run = cli("copy-model", "m/1", "--profile", name, "--source", "file:///x")
    assert run.code == 3 and f"'{name}'" in run.stderr, run.both  # no such profile
    assert not config_file.exists()


def test_check_says_missing_where_the_json_does(config_file: Path, tmp_path: Path,
                                                mlflow_server: MlflowServer) -> None:
    target = tmp_path / "new" / "t.db"
    args = ["configure", "c", "--source", mlflow_server.tracking_uri, "--target", str(target),
            "--check"]
    run = cli(*args, "-o", "json")
    assert run.code == 0, run.both
    assert [c["status"] for c in run.document["checks"]] == ["ok", "missing"]
    run = cli("configure", "c", "--check")
    assert run.code == 0, run.both
    lines = run.stdout.splitlines()
    assert lines[0].startswith("source  ok ")
    target_line = next(line for line in lines if line.startswith("target "))
    assert target_line.split()[:2] == ["target", "missing"], run.stdout
    assert not target.parent.exists(), "--check must not create the target"


def test_check_of_an_unreachable_side_exits_1(config_file: Path, tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    args = ["configure", "u", "--source", closed, "--target", str(tmp_path / "t.db"), "--check"]
    run = cli(*args, "-o", "json", env=env)
    assert run.code == 1, run.both
    document = run.document
    assert document["status"] == "failed" and document["exit_code"] == 1
    assert document["checks"][0]["status"] == "failed" and document["checks"][0]["exit_code"] == 1
    assert document["error"].startswith("source: ") and closed in document["error"]
    assert document["hint"]
    run = cli("configure", "u", "--check", env=env)
    assert run.code == 1, run.both
    assert run.stdout.splitlines()[0].startswith("source  FAILED")
    assert "Traceback" not in run.both
