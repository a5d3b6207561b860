"""Failures as users meet them: usage errors, `--output json` on every failure, options beating
their variables, and bad `AMLPROMOTE_*` values or config files refused before anything is read
or written. Each case runs in this process (`support.cli.cli`, the console script's own entry)
and, where the entry point itself matters, as `python -m amlpromote`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support.cli import Run, cli

FAILURE_KEYS = {"status", "error", "hint", "exit_code", "kind"}


class _Recorder(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PATCH = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def listener() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP source that records every request: proof that nothing was read."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.paths = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.paths  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def default_target(isolated_environment: Path) -> Path:
    """The folder of the embedded default registry, which no failure may create."""
    return isolated_environment / ".local" / "share" / "amlpromote"


def python_m(*args: str, env: dict[str, str] | None = None) -> Run:
    """`python -m amlpromote ARGS`: the console script's `main()`, in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-m", "amlpromote", *args],
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=120, check=False)
    return Run(proc.returncode, proc.stdout, proc.stderr, 0.0)


def assert_failure(run: Run, code: int, *needles: str, json_mode: bool) -> dict[str, Any] | None:
    """One `error:` line and one `hint:` line on stderr, no traceback, no usage text; with
    JSON output exactly one failure document on stdout, else nothing there."""
    assert run.code == code, f"exit {run.code}, expected {code}\n{run.both}"
    assert "Traceback" not in run.both and "Usage:" not in run.both, run.both
    lines = run.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    hints = [line for line in lines if line.startswith("hint: ")]
    assert len(errors) == 1 and len(hints) == 1 and hints[0] != "hint: ", run.stderr
    assert "internal error" not in errors[0]
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    if not json_mode:
        assert run.stdout == "", run.stdout
        return None
    document: dict[str, Any] = json.loads(run.stdout)  # exactly one document, nothing else
    assert set(document) == FAILURE_KEYS, document
    assert document["status"] == "failed" and document["exit_code"] == code
    assert errors[0] == f"error: {document['error']}"
    assert hints[0] == f"hint: {document['hint']}"
    return document


# -- usage errors ---------------------------------------------------------------------------

USAGE_CASES = {
    "unknown option": (["copy-model", "m/1", "--bogus"], "--bogus"),
    "missing argument": (["copy-model"], "REF"),
    "bad value": (["copy-model", "m/1", "--parallel", "0"], "must be at least 1"),
    "value over its bound": (["deploy", "m/1", "-e", "heart", "--local", "--traffic", "150"],
                             "'--traffic': must be at most 100"),
    "bad choice": (["configure", "list", "--output", "xml"], "'xml'"),
    "unknown command": (["promote"], "'promote'"),
    "no command": ([], "command"),
}


@pytest.mark.parametrize(("case", "json_by"), [
    (case, json_by) for case in sorted(USAGE_CASES) for json_by in (None, "before", "after", "env")
    if json_by is None or case != "bad choice"])  # there the bad value is the --output itself
def test_usage_error_is_one_line_and_a_hint(case: str, json_by: str | None,
                                             default_target: Path) -> None:
    args, needle = USAGE_CASES[case]
    env = {"AMLPROMOTE_OUTPUT": "json"} if json_by == "env" else None
    argv = ["-o", "json", *args] if json_by == "before" else [
        *args, "--output=json"] if json_by == "after" else args
    if case == "no command" and json_by is None:
        # Bare `amlpromote`: the help is the answer (on stderr, Click's convention), exit 2.
        run = cli(*argv)
        assert run.code == 2 and "Commands:" in run.stderr and run.stdout == ""
        return
    run = cli(*argv, env=env)
    document = assert_failure(run, 2, needle, json_mode=json_by is not None)
    assert "--help" in run.stderr
    if document is not None:
        assert document["kind"] == "usage"
    assert not default_target.exists()


@pytest.mark.parametrize("json_mode", [False, True])
def test_usage_error_through_main(json_mode: bool) -> None:
    run = python_m("copy-model", "m/1", "--no-such-flag", *(["-o", "json"] if json_mode else []))
    document = assert_failure(run, 2, "--no-such-flag", json_mode=json_mode)
    assert "amlpromote copy-model --help" in run.stderr
    if document is not None:
        assert document["kind"] == "usage"


def test_failure_document_through_main(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "mlflow.db"
    run = python_m("copy-model", "m/1", "--source", str(missing), "-o", "json")
    document = assert_failure(run, 3, str(missing), json_mode=True)
    assert document is not None and document["kind"] == "not-found"
    assert not missing.parent.exists()


# -- an option beats its variable, also for --output -----------------------------------------


@pytest.mark.parametrize("where", ["before", "after"])
def test_output_option_beats_a_bad_variable(where: str) -> None:
    args = ["-o", "json", "configure", "list"] if where == "before" else [
        "configure", "list", "-o", "json"]
    for run in (cli(*args, env={"AMLPROMOTE_OUTPUT": "xml"}),
                python_m(*args, env={"AMLPROMOTE_OUTPUT": "xml"})):
        assert run.code == 0, run.both
        assert set(json.loads(run.stdout)) == {"path", "profiles"}


def test_output_option_beats_the_variable_and_the_command_beats_the_root() -> None:
    run = cli("configure", "list", "-o", "human", env={"AMLPROMOTE_OUTPUT": "json"})
    assert run.code == 0 and run.stdout.startswith("no profiles in "), run.both
    run = cli("-o", "json", "configure", "list", "-o", "human")
    assert run.code == 0 and run.stdout.startswith("no profiles in "), run.both
    run = cli("configure", "list", env={"AMLPROMOTE_OUTPUT": "JSON"})
    assert run.code == 0 and "profiles" in json.loads(run.stdout)


def test_bad_output_variable_alone_is_a_usage_error() -> None:
    for run in (cli("configure", "list", env={"AMLPROMOTE_OUTPUT": "xml"}),
                python_m("configure", "list", env={"AMLPROMOTE_OUTPUT": "xml"})):
        assert_failure(run, 2, "AMLPROMOTE_OUTPUT", "'xml'", json_mode=False)


def test_quiet_option_beats_a_bad_variable() -> None:
    run = cli("-q", "configure", "list", env={"AMLPROMOTE_QUIET": "maybe"})
    assert run.code == 0 and run.stdout == "", run.both


def test_source_option_beats_a_bad_variable(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    run = cli("configure", "p", "--source", "file:///data/mlruns", "-o", "json",
              env={"AMLPROMOTE_SOURCE": "ftp://nowhere", "AMLPROMOTE_CONFIG": str(config)})
    assert run.code == 0, run.both
    assert json.loads(run.stdout)["settings"] == {"source": "file:///data/mlruns"}


# -- AMLPROMOTE_* checked before anything is read or written ---------------------------------

BAD_ENVIRONMENT = [
    ("AMLPROMOTE_RETRIES", "abc"),
    ("AMLPROMOTE_RETRIES", "-1"),
    ("AMLPROMOTE_PARALLEL", "0"),
    ("AMLPROMOTE_VERIFY", "maybe"),
    ("AMLPROMOTE_QUIET", "maybe"),
    ("AMLPROMOTE_DEBUG", "sometimes"),
    ("AMLPROMOTE_OUTPUT", "xml"),
    ("AMLPROMOTE_TARGET", "ftp://elsewhere"),
    ("AMLPROMOTE_CREDENTIAL", "bogus"),
    ("AMLPROMOTE_WORKSPACE", "x"),
    ("AMLPROMOTE_PROFILE", "show"),
]


def test_the_listener_sees_a_run_with_good_settings(listener: tuple[str, list[str]]) -> None:
    # The control for the tests below: the same command with good settings reads the source.
    url, requests = listener
    run = cli("copy-model", "m/1", "--source", url, env={"AMLPROMOTE_RETRIES": "0"})
    assert run.code != 0 and requests, run.both


@pytest.mark.parametrize(("variable", "value"), BAD_ENVIRONMENT)
@pytest.mark.parametrize("json_mode", [False, True])
def test_bad_variable_fails_before_the_source_is_read(
        variable: str, value: str, json_mode: bool, listener: tuple[str, list[str]],
        default_target: Path) -> None:
    url, requests = listener
    args = ["copy-model", "m/1", "--source", url]
    if json_mode and variable != "AMLPROMOTE_OUTPUT":
        args += ["-o", "json"]
    run = cli(*args, env={variable: value})
    document = assert_failure(run, 2, variable, json_mode=json_mode and variable !=
                              "AMLPROMOTE_OUTPUT")
    assert requests == [], "the source was contacted before the bad variable was reported"
    assert not default_target.exists(), "the default target was created"
    if document is not None:
        assert document["kind"] in ("bad-input", "usage")


def test_bad_variable_fails_configure_before_the_file_is_written(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    run = cli("configure", "p", "--source", "file:///data/mlruns", "-o", "json",
              env={"AMLPROMOTE_RETRIES": "lots", "AMLPROMOTE_CONFIG": str(config)})
    assert_failure(run, 2, "AMLPROMOTE_RETRIES", "'lots'", json_mode=True)
    assert not config.exists()


# -- the config file checked when it is loaded ------------------------------------------------

BAD_CONFIGS = {
    "array target": ('[profiles.p]\ntarget = ["sqlite:///x.db"]\n', "'target'", "an array"),
    "number target": ("[profiles.p]\ntarget = 3\n", "'target'", "a number"),
    "unknown setting": ('[profiles.p]\ntagret = "sqlite:///x.db"\n', "'tagret'", "unknown"),
    "unknown top-level key": ('[profile.p]\ntarget = "sqlite:///x.db"\n', "'profile'",
                              "unknown"),
    "profile not a table": ('[profiles]\np = "sqlite:///x.db"\n', "'p'", "table"),
    "profiles not a table": ('profiles = "p"\n', "'profiles'", "table"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_file_fails_before_anything_is_read(
        case: str, tmp_path: Path, listener: tuple[str, list[str]], default_target: Path) -> None:
    text, key, what = BAD_CONFIGS[case]
    config = tmp_path / "config.toml"
    config.write_text(text)
    env = {"AMLPROMOTE_CONFIG": str(config)}
    url, requests = listener
    for args, json_mode in ((["copy-model", "m/1", "--source", url, "-o", "json"], True),
                            (["copy-model", "m/1", "--source", url, "--profile", "p"], False),
                            (["configure", "list"], False),
                            (["configure", "p", "--source", "file:///data/mlruns", "-o", "json"],
                             True)):
        run = cli(*args, env=env)
        assert_failure(run, 2, key, str(config), what, json_mode=json_mode)
    assert requests == []
    assert config.read_text() == text, "the config file was changed"
    assert not default_target.exists()
