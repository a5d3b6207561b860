"""README claims that no other test proved, each proved here against real registries.

Every test's docstring quotes the README sentence it proves. Claims other modules already prove
are left to them: `-o json` before the command and `AMLPROMOTE_OUTPUT` (test_cli_output.py),
`-q` before or after the command (test_copy_model_e2e.py), a bad `--parallel 0` or
`AMLPROMOTE_PARALLEL=0` (test_cli_output.py), a new source version making a new target version
(test_copy_model_e2e.py) and changed bytes found by `--verify` (test_copy_model_rerun.py).

The MLflow servers are the session's real `mlflow server` behind loopback proxies that record
what the product sends (support/recording_proxy.py): one terminating TLS with a test CA's
certificate, one demanding basic auth, one holding downloads so concurrent ones overlap. The
Azure ML target is Azure ML in a box.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azureml_box import TestCA
from azureml_box.testing import BoxWorkspaces, assert_no_secrets
from support.cli import Run, cli
from support.mlflow_server import MlflowServer
from support.models import register_raw_model, sha256_tree, stored_folder
from support.recording_proxy import RecordingProxy

from amlpromote import __version__

pytest_plugins = ["azureml_box.fixtures"]
pytestmark = pytest.mark.timeout(300)

MLMODEL = b"artifact_path: model\nflavors: {}\n"
# Opaque: no redaction pattern matches it, so it must simply never be printed.
PASSWORD = "pw-Hq7Tz2Vb9Lm4Xc"
USER = "promoter"
ARTIFACT_DOWNLOAD = r"^GET /api/2\.0/mlflow-artifacts/artifacts/"
# Stages of the versions of the staged model, in version order (version 4 is the latest).
STAGES = ("None", "Staging", "Archived", "Production")


def raw_files(count: int, tag: str) -> dict[str, bytes | os.PathLike[str]]:
    files: dict[str, bytes | os.PathLike[str]] = {"MLmodel": MLMODEL}
    files.update({f"data/part-{i:04d}.bin": f"{tag}-{i}\n".encode() for i in range(count - 1)})
    return files


def copy(*args: str, env: Mapping[str, str] | None = None) -> Run:
    return cli("copy-model", *args, env=env)


def copy_json(*args: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    run = cli("copy-model", *args, "-o", "json", env=env)
    assert run.code == 0, run.both
    document: dict[str, Any] = json.loads(run.stdout)
    return document


@contextlib.contextmanager
def file_stores_allowed() -> Iterator[None]:
    """MLflow 3 opens a file store only with MLFLOW_ALLOW_FILE_STORE; set for this read only,
    so the product cannot pass because a reader left it on."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        yield


def versions_in(uri: str, name: str) -> list[Any]:
    from mlflow import MlflowClient

    with file_stores_allowed():
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        versions = client.search_model_versions(f"name='{name}'")
    return sorted(versions, key=lambda v: int(v.version))


def version_folder(uri: str, name: str, version: str = "1") -> Path:
    """The local folder that holds a version's files."""
    with file_stores_allowed():
        return stored_folder(uri, name, version)


def one_error_and_hint(run: Run) -> str:
    """The failure's `error:` line; exactly one of it and one `hint:` line, no traceback."""
    assert "Traceback" not in run.both, run.both
    lines = run.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    hints = [line for line in lines if line.startswith("hint: ")]
    assert len(errors) == 1 and len(hints) == 1, run.stderr
    return errors[0]


def sqlite_uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def file_store(folder: Path) -> str:
    """A file store in `folder` (a new one is made in a moment; a new sqlite registry takes
    seconds of schema migrations, so targets whose kind does not matter are file stores)."""
    return (folder / "mlruns").as_uri()


# -- sources ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalSource:
    uri: str
    name: str


@pytest.fixture(scope="module")
def local_source(tmp_path_factory: pytest.TempPathFactory) -> LocalSource:
    """A sqlite registry with one small model version."""
    root = tmp_path_factory.mktemp("claims-source")
    uri = sqlite_uri(root)
    name = f"claims-{uuid.uuid4().hex[:8]}"
    with contextlib.chdir(root):
        register_raw_model(uri, name, raw_files(3, "local"))
    return LocalSource(uri, name)


@dataclass(frozen=True)
class ServerModel:
    server: MlflowServer
    name: str
    hashes: dict[str, str]  # sha256 by relative path of the version's files


SERVER_FILES = 10


@pytest.fixture(scope="module")
def server_model(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory
                 ) -> ServerModel:
    """A version of SERVER_FILES small files on the session's `mlflow server`."""
    name = f"claims-server-{uuid.uuid4().hex[:8]}"
    files = raw_files(SERVER_FILES, "server")
    with contextlib.chdir(tmp_path_factory.mktemp("claims-server")):
        register_raw_model(mlflow_server.url, name, files)
    hashes = {path: hashlib.sha256(data).hexdigest() for path, data in files.items()
              if isinstance(data, bytes)}
    return ServerModel(mlflow_server, name, hashes)


# -- global options -----------------------------------------------------------------------------


def test_version_prints_the_version() -> None:
    """README "Global options": "`--version` | | print the version"."""
    proc = subprocess.run([sys.executable, "-m", "amlpromote", "--version"], capture_output=True,
                          text=True, timeout=120, check=False)
    in_process = cli("--version")
    for code, stdout in ((proc.returncode, proc.stdout), (in_process.code, in_process.stdout)):
        assert code == 0, proc.stderr
        assert stdout == f"amlpromote {__version__}\n"


@pytest.mark.parametrize("value", ["1", "yes"])
def test_quiet_variable_prints_only_the_result(value: str, local_source: LocalSource,
                                               tmp_path: Path) -> None:
    """README "Global options": "`--quiet`, `-q` | `AMLPROMOTE_QUIET` | only the essential
    result (e.g. `name/version`), no notes or progress"."""
    args = (local_source.name, "--source", local_source.uri)
    loud = copy(*args, "--target", file_store(tmp_path / "loud"))
    # The control: without it, the run has notes (a new registry) and a human result.
    assert loud.code == 0 and "created a new registry" in loud.stderr, loud.both
    assert loud.stdout.startswith("copied ")

    quiet = copy(*args, "--target", file_store(tmp_path / "quiet"),
                 env={"AMLPROMOTE_QUIET": value})

    assert quiet.code == 0, quiet.both
    assert quiet.stdout == f"{local_source.name}/1\n"
    assert quiet.stderr == ""


@pytest.mark.parametrize("variable", ["AMLPROMOTE_VERBOSE", "AMLPROMOTE_DEBUG", None])
def test_verbose_variables_say_which_setting_won_and_show_tracebacks(
        variable: str | None, local_source: LocalSource, tmp_path: Path) -> None:
    """README "Global options": "`--verbose`, `-v` | `AMLPROMOTE_VERBOSE`, `AMLPROMOTE_DEBUG=1`
    | say which setting won; show tracebacks of failures"; "Environment variables":
    "`AMLPROMOTE_DEBUG` | `1`: same as `--verbose`"."""
    env = {"AMLPROMOTE_TARGET": file_store(tmp_path / "target")}
    if variable:
        env[variable] = "1"

    done = copy(local_source.name, "--source", local_source.uri, env=env)
    failed = copy(f"{local_source.name}-missing/1", "--source", local_source.uri, env=env)

    assert done.code == 0, done.both
    assert failed.code == 3, failed.both
    won = "debug: profile 'default'; source from option, target from environment " \
          "AMLPROMOTE_TARGET"
    if variable is None:
        assert "debug:" not in done.stderr and "Traceback" not in failed.stderr
        return
    assert won in done.stderr.splitlines(), done.stderr
    assert "Traceback (most recent call last)" in failed.stderr
    assert failed.stderr.splitlines()[-2].startswith("error: ")


def test_an_option_beats_its_variable_which_beats_the_profile(
        local_source: LocalSource, tmp_path: Path) -> None:
    """README "Precedence": "for every setting: command-line option > `AMLPROMOTE_*`
    environment variable > profile > default. `--verbose` prints which one won." and "Global
    options": "An option beats its variable, wherever it is typed"."""
    places = {where: tmp_path / where for where in ("option", "environment", "profile")}
    config = tmp_path / "config.toml"
    config.write_text(f'[profiles."default"]\ntarget = "{file_store(places["profile"])}"\n')
    env = {"AMLPROMOTE_CONFIG": str(config),
           "AMLPROMOTE_TARGET": file_store(places["environment"]),
           # Used, this source would fail the run (no such store): the option must win.
           "AMLPROMOTE_SOURCE": sqlite_uri(tmp_path / "no-such-source")}
    origins = {"option": "option", "environment": "environment AMLPROMOTE_TARGET",
               "profile": "profile"}

    for step, where in enumerate(places):
        extra = ["--target", file_store(places["option"])] if where == "option" else []
        if where == "profile":
            del env["AMLPROMOTE_TARGET"]
        run = copy(local_source.name, "--source", local_source.uri, *extra, "-v", env=env)

        assert run.code == 0, run.both
        assert f"target from {origins[where]}" in run.stderr, run.stderr
        assert "source from option" in run.stderr
        assert [str(v.version) for v in versions_in(file_store(places[where]),
                                                      local_source.name)] == ["1"]
        # Nothing went anywhere else: each run so far made only its own registry.
        made = [w for w, folder in places.items() if (folder / "mlruns").exists()]
        assert made == list(places)[:step + 1], made
    assert not (tmp_path / "no-such-source").exists()


@pytest.mark.parametrize("data_dir", [False, True], ids=["default", "AMLPROMOTE_DATA_DIR"])
def test_without_a_target_the_version_lands_in_the_embedded_registry(
        data_dir: bool, local_source: LocalSource, isolated_environment: Path,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """README "Defaults": "With no configuration at all the target is the embedded local
    registry: `sqlite:///<user data folder>/amlpromote/registry/mlflow.db`
    (`~/.local/share/amlpromote/` on Linux; `$AMLPROMOTE_DATA_DIR` overrides the folder)";
    "Where a sqlite target keeps its files": "`/srv/reg/mlflow.db` →
    `/srv/reg/mlflow-artifacts/`"."""
    # Linux's default, not an XDG override: the README names ~/.local/share.
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    folder = isolated_environment / ".local" / "share" / "amlpromote"
    env: dict[str, str] = {}
    if data_dir:
        folder = tmp_path / "data"
        env["AMLPROMOTE_DATA_DIR"] = str(folder)
    database = folder / "registry" / "mlflow.db"

    document = copy_json(local_source.name, "--source", local_source.uri, env=env)

    assert document["status"] == "copied"
    assert document["target"]["uri"] == f"sqlite:///{database}"
    assert document["target"]["created_registry"] is True
    (version,) = versions_in(f"sqlite:///{database}", local_source.name)
    artifacts = folder / "registry" / "mlflow-artifacts"
    assert version_folder(f"sqlite:///{database}", local_source.name).is_relative_to(artifacts)
    assert sha256_tree(version_folder(f"sqlite:///{database}", local_source.name)) == \
        sha256_tree(version_folder(local_source.uri, local_source.name))
    assert not (Path.cwd() / "mlruns").exists()
    assert str(version.version) == "1"


# -- references ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StagedModel:
    uri: str
    name: str
    digests: dict[str, str]  # content digest by version


def _digest(files: Mapping[str, bytes | os.PathLike[str]]) -> str:
    # README "Digest": sha256 over "<sha256 of file>  <relative path>" lines, sorted by path.
    lines = "".join(f"{hashlib.sha256(data).hexdigest()}  {path}\n"
                    for path, data in sorted(files.items()) if isinstance(data, bytes))
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


@pytest.fixture(scope="module", params=["file", "sqlite"])
def staged_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[StagedModel]:
    """A file store or sqlite registry with four versions of different content, in the stages
    STAGES (version 1 in None ... version 4 in Production, the latest)."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp(f"claims-stages-{request.param}")
    uri = (root / "mlruns").as_uri() if request.param == "file" else sqlite_uri(root)
    name = f"claims-stages-{uuid.uuid4().hex[:8]}"
    digests = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for number, stage in enumerate(STAGES, start=1):
            files = raw_files(2, f"stage-{stage}")
            assert register_raw_model(uri, name, files) == str(number)
            digests[str(number)] = _digest(files)
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # stages are deprecated in MLflow
            for number, stage in enumerate(STAGES, start=1):
                if stage != "None":
                    client.transition_model_version_stage(name, str(number), stage)
        assert [v.current_stage for v in versions_in(uri, name)] == list(STAGES)
    yield StagedModel(uri, name, digests)


@pytest.mark.parametrize("stage", ["None", "Staging", "Archived"])
def test_legacy_stage_references(stage: str, staged_model: StagedModel, tmp_path: Path) -> None:
    """README "`amlpromote copy-model REF`": "`NAME/Production` (a legacy stage: `None`,
    `Staging`, `Production`, `Archived`)"."""
    expected = str(STAGES.index(stage) + 1)

    document = copy_json(f"{staged_model.name}/{stage}", "--source", staged_model.uri,
                         "--target", file_store(tmp_path))
    lowered = copy_json(f"models:/{staged_model.name}/{stage.lower()}", "--source",
                        staged_model.uri, "--target", file_store(tmp_path))

    assert document["status"] == "copied"
    assert document["source"]["version"] == expected
    assert document["source"]["digest"] == staged_model.digests[expected]
    assert (lowered["status"], lowered["source"]["version"]) == ("unchanged", expected)


# -- MLflow servers: TLS, basic auth, --parallel ------------------------------------------------


@dataclass(frozen=True)
class TlsFront:
    proxy: RecordingProxy
    ca_bundle: Path


@pytest.fixture(scope="module")
def tls_front(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[TlsFront]:
    """`https://127.0.0.1:PORT` in front of the session's `mlflow server`, with a certificate
    from a CA no system bundle trusts."""
    ca = TestCA(tmp_path_factory.mktemp("claims-ca"), name="claims test CA")
    cert = ca.issue_server_cert("mlflow-front")
    with RecordingProxy(mlflow_server.url, tls=(cert.chain_path, cert.key_path)) as proxy:
        yield TlsFront(proxy, ca.bundle_path)


@pytest.fixture
def no_ca_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only MLFLOW_TRACKING_SERVER_CERT_PATH may make the test CA trusted.
    for key in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR",
                "MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_INSECURE_TLS"):
        monkeypatch.delenv(key, raising=False)


def test_an_https_server_is_trusted_through_the_cert_path_variable(
        tls_front: TlsFront, server_model: ServerModel, local_source: LocalSource,
        no_ca_bundle: None, tmp_path: Path) -> None:
    """README "Registry URIs": "`http(s)://host[:port]` (an `mlflow server`)" and "TLS trust
    from `MLFLOW_TRACKING_SERVER_CERT_PATH` or `REQUESTS_CA_BUNDLE`"; "Exit codes": "1 | the
    operation failed (I/O, network after retries, ...)"."""
    front = tls_front.proxy.url
    assert front.startswith("https://")
    target = tmp_path / "target"
    args = (f"{server_model.name}/1", "--source", front, "--target", file_store(target))

    untrusted = copy(*args)
    assert untrusted.code == 1, untrusted.both
    assert front in one_error_and_hint(untrusted)
    assert "certificate" in untrusted.stderr and "MLFLOW_TRACKING_SERVER_CERT_PATH" in \
        untrusted.stderr, untrusted.stderr  # what was wrong and what to set, not "the network"
    assert not target.exists(), "a failed run created the target"

    tls_front.proxy.reset()
    env = {"MLFLOW_TRACKING_SERVER_CERT_PATH": str(tls_front.ca_bundle)}
    trusted = copy_json(*args, env=env)
    assert trusted["status"] == "copied"
    assert sha256_tree(version_folder(file_store(target), server_model.name)) == \
        server_model.hashes
    downloads = [r for r in tls_front.proxy.requests
                 if r.method == "GET" and "/mlflow-artifacts/artifacts/" in r.path]
    assert len(downloads) == SERVER_FILES, "the files were not read through the https front"

    # And as a target: the files go up through it.
    name = f"claims-tls-{uuid.uuid4().hex[:8]}"
    up = copy_json(local_source.name, "--source", local_source.uri, "--target", front,
                   "--target-name", name, env=env)
    assert up["status"] == "copied"
    (version,) = versions_in(server_model.server.url, name)
    assert version.tags["amlpromote.source.name"] == local_source.name


def test_the_cert_path_variable_wins_over_another_ca_bundle_as_in_mlflow(
        tls_front: TlsFront, server_model: ServerModel, no_ca_bundle: None,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """README "Registry URIs": "An `mlflow server` is spoken to through MLflow's REST API
    directly, with the same variables ... as MLflow's own client": MLflow's client
    (mlflow.utils.rest_utils.http_request, `verify=host_creds.verify`) trusts
    `MLFLOW_TRACKING_SERVER_CERT_PATH` even when `REQUESTS_CA_BUNDLE` names another bundle,
    as a CI runner with a corporate bundle has."""
    corporate = TestCA(tmp_path / "corporate", name="corporate CA").bundle_path
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(corporate))
    env = {"MLFLOW_TRACKING_SERVER_CERT_PATH": str(tls_front.ca_bundle)}

    run = copy(f"{server_model.name}/1", "--source", tls_front.proxy.url, "--target",
               file_store(tmp_path / "target"), env=env)

    assert run.code == 0, run.both


@pytest.fixture
def auth_gateway(mlflow_server: MlflowServer) -> Iterator[RecordingProxy]:
    """The session's server behind a gateway that demands USER:PASSWORD, as an MLflow server
    with basic auth does."""
    with RecordingProxy(mlflow_server.url, basic_auth=(USER, PASSWORD)) as proxy:
        yield proxy


def test_basic_auth_credentials_are_sent_and_never_shown(
        auth_gateway: RecordingProxy, server_model: ServerModel, tmp_path: Path) -> None:
    """README "Registry URIs": "Credentials for MLflow servers come from
    `MLFLOW_TRACKING_TOKEN`, `MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD` or the URI's
    user info"; "Exit codes": "Tokens, passwords, keys and SAS signatures never appear in any
    output, log or error, at any verbosity"; "4 | authentication or authorization refused"."""
    args = (f"{server_model.name}/1", "--source", auth_gateway.url)
    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    anonymous = copy(*args, "--target", file_store(tmp_path / "anonymous"))
    assert anonymous.code == 4, anonymous.both
    assert "refused the credentials" in one_error_and_hint(anonymous)
    assert {r.status for r in auth_gateway.requests} == {401}

    auth_gateway.reset()
    env = {"MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": PASSWORD}
    for extra in (["-v"], ["-o", "json"]):
        target = file_store(tmp_path / extra[-1])
        run = copy(*args, "--target", target, *extra, env=env)
        assert run.code == 0, run.both
        assert PASSWORD not in run.both and basic.split()[1] not in run.both
        (version,) = versions_in(target, server_model.name)
        assert PASSWORD not in json.dumps(dict(version.tags))
    seen = auth_gateway.requests
    assert seen and all(r.headers.get("authorization") == basic for r in seen), \
        {(r.method, r.path, r.headers.get("authorization")) for r in seen}
    assert any("/mlflow-artifacts/artifacts/" in r.path for r in seen)
    assert {r.status for r in seen} <= {200}, {(r.path, r.status) for r in seen}


@pytest.mark.parametrize(("args", "env", "expected"), [
    (["--parallel", "2"], {}, 2),
    ([], {"AMLPROMOTE_PARALLEL": "3"}, 3),
    (["--parallel", "1"], {"AMLPROMOTE_PARALLEL": "5"}, 1),
    ([], {}, 8),
], ids=["option", "variable", "option-beats-variable", "default"])
def test_parallel_is_the_number_of_files_transferred_at_once(
        args: list[str], env: dict[str, str], expected: int, server_model: ServerModel,
        tmp_path: Path) -> None:
    """README "copy-model" options: "`--parallel` N | `AMLPROMOTE_PARALLEL` | files
    transferred at once (default 8)"."""
    # Each download waits in the proxy, so downloads that run at once overlap there.
    with RecordingProxy(server_model.server.url, hold=(ARTIFACT_DOWNLOAD, 0.4)) as proxy:
        document = copy_json(f"{server_model.name}/1", "--source", proxy.url, "--target",
                             file_store(tmp_path), *args, env=env)
        downloads = [r for r in proxy.requests if "/mlflow-artifacts/artifacts/" in r.path]

    assert document["status"] == "copied" and document["files"] == SERVER_FILES
    assert len(downloads) == SERVER_FILES
    assert proxy.peak_in_flight == expected


@pytest.mark.parametrize("how", ["option", "variable"])
def test_parallel_accepts_1_to_64(how: str, local_source: LocalSource, tmp_path: Path) -> None:
    """README "Environment variables": "`AMLPROMOTE_PARALLEL` a number from 1 to 64"; "a bad
    value is exit 2 naming it"."""
    def run(value: str) -> Run:
        if how == "option":
            return copy(local_source.name, "--source", local_source.uri, "--target",
                        file_store(tmp_path / value), "--parallel", value)
        return copy(local_source.name, "--source", local_source.uri, "--target",
                    file_store(tmp_path / value), env={"AMLPROMOTE_PARALLEL": value})

    for value in ("1", "64"):
        assert run(value).code == 0, value
    for value in ("65", "-1", "many"):
        refused = run(value)
        assert refused.code == 2, refused.both
        error = one_error_and_hint(refused)
        assert ("--parallel" if how == "option" else "AMLPROMOTE_PARALLEL") in error
        assert not (tmp_path / value).exists()


def test_an_empty_parallel_variable_counts_as_unset(local_source: LocalSource,
                                                    tmp_path: Path) -> None:
    """README "Environment variables": "An empty variable counts as unset."."""
    run = copy(local_source.name, "--source", local_source.uri, "--target",
               file_store(tmp_path), env={"AMLPROMOTE_PARALLEL": ""})

    assert run.code == 0, run.both


# -- content changes ----------------------------------------------------------------------------


def test_changed_source_content_is_a_new_version(tmp_path: Path) -> None:
    """README "Idempotent": "If the source version's content changed, a new version is
    registered."""
    source = file_store(tmp_path / "source")
    name = f"claims-changed-{uuid.uuid4().hex[:8]}"
    with contextlib.chdir(tmp_path):
        register_raw_model(source, name, raw_files(3, "before"))
    args = (f"{name}/1", "--source", source, "--target", file_store(tmp_path / "target"))
    first = copy_json(*args)

    changed = version_folder(source, name) / "data" / "part-0000.bin"
    changed.write_bytes(b"other bytes, another size\n")
    second = copy_json(*args)
    third = copy_json(*args)

    assert (first["status"], first["target"]["version"]) == ("copied", "1")
    assert (second["status"], second["target"]["version"]) == ("copied", "2")
    assert second["source"]["digest"] != first["source"]["digest"]
    assert (third["status"], third["target"]["version"]) == ("unchanged", "2")
    versions = versions_in(file_store(tmp_path / "target"), name)
    assert [v.tags["amlpromote.digest"] for v in versions] == [
        first["source"]["digest"], second["source"]["digest"]]


# -- Azure ML targets ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AzureSource:
    uri: str
    small: str  # MLmodel and one file
    at_limit: str  # 1,500 files
    over_limit: str  # 1,501 files


@pytest.fixture(scope="module")
def azure_source(tmp_path_factory: pytest.TempPathFactory) -> AzureSource:
    root = tmp_path_factory.mktemp("claims-azure-source")
    uri = sqlite_uri(root)
    tag = uuid.uuid4().hex[:8]
    source = AzureSource(uri, f"small-{tag}", f"files-1500-{tag}", f"files-1501-{tag}")
    with contextlib.chdir(root):
        register_raw_model(uri, source.small, raw_files(2, "small"))
        register_raw_model(uri, source.at_limit, raw_files(1500, "limit"))
        register_raw_model(uri, source.over_limit, raw_files(1501, "over"))
    return source


def writes(box: BoxWorkspaces) -> list[tuple[str, str, str]]:
    """Every request the box saw that was not a read (token requests are reads here)."""
    return [(r.route, r.method, r.path) for r in box.box.requests
            if r.method not in ("GET", "HEAD") and r.route != "token"]


@pytest.fixture
def inspected_box(azureml_box: BoxWorkspaces, box_env: dict[str, str]) -> Iterator[BoxWorkspaces]:
    """The box with blob requests recorded too, so a write to storage would be seen."""
    azureml_box.box.inspect_blobs = True
    try:
        yield azureml_box
    finally:
        azureml_box.box.inspect_blobs = False


def test_more_than_1500_files_is_refused_before_anything_is_written_to_azure_ml(
        inspected_box: BoxWorkspaces, box_env: dict[str, str], azure_source: AzureSource,
        unique_model_name: str) -> None:
    """README "Azure ML workspace targets": "Azure ML's limits apply: at most 1,500 files per
    model version (exit 2 before anything is written)"."""
    box = inspected_box
    base = ("--source", azure_source.uri, "--target", box.workspace.mlflow_uri,
            "--target-name", unique_model_name)

    refused = copy(f"{azure_source.over_limit}/1", *base)
    # The limit itself is allowed (planned without writing, so it stays cheap).
    at_limit = copy_json(f"{azure_source.at_limit}/1", *base, "--dry-run")

    assert refused.code == 2, refused.both
    error = one_error_and_hint(refused)
    assert "1501 files" in error and "1500" in error, error
    assert_no_secrets(refused.both, box_env)
    assert (at_limit["status"], at_limit["files"]) == ("planned", 1500)
    assert writes(box) == []
    assert box.workspace.backend is not None
    assert versions_in(box.workspace.backend.url, unique_model_name) == []


def test_dry_run_into_azure_ml_prints_the_plan_and_writes_nothing(
        inspected_box: BoxWorkspaces, box_env: dict[str, str], azure_source: AzureSource,
        unique_model_name: str) -> None:
    """README "copy-model" options: "`--dry-run` | | print the plan (status `planned`):
    whether a copy is needed and which aliases would be set; change nothing in either
    registry"."""
    box = inspected_box
    run = copy(f"{azure_source.small}/1", "--source", azure_source.uri, "--target",
               box.workspace.mlflow_uri, "--target-name", unique_model_name, "-a", "prod",
               "--dry-run")

    assert run.code == 0, run.both
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"plan: copy {azure_source.small}/1 (2 files, ")
    assert f"to {unique_model_name} in " in lines[0]
    assert lines[1].strip() == "set aliases: prod"
    assert lines[-1] == "dry run: nothing was changed"
    assert_no_secrets(run.both, box_env)
    assert [r for r in box.box.requests if r.route == "mlflow"], "the workspace was not read"
    assert writes(box) == []
    assert box.workspace.backend is not None
    assert versions_in(box.workspace.backend.url, unique_model_name) == []

    # The control: the same command without --dry-run writes, and the box sees it.
    done = copy_json(f"{azure_source.small}/1", "--source", azure_source.uri, "--target",
                     box.workspace.mlflow_uri, "--target-name", unique_model_name, "-a", "prod")
    assert done["status"] == "copied"
    assert {"blob", "mlflow"} <= {route for route, _, _ in writes(box)}
