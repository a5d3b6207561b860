"""copy-model from Databricks (issue 3, source side), through the CLI, against Databricks in a box.

The heart classifier is registered once in the session's `mlflow server`; one DatabricksBox per
module serves it as a Databricks workspace registry (token auth, signed download URLs, fault
injection). Promotions go to a fresh local sqlite registry. Expectations come from outside the
product: the source bytes are read from the backing server's artifact folder, the target's with
MLflow's own client, and the digest is recomputed from its README definition.

Runs whose point is a real process (a real ~/.databrickscfg found through HOME, a bounded
failure, loading the promoted model) use `python -m amlpromote`; the rest run in-process
(`CliRunner`), where mlflow's legacy config reader needs DATABRICKS_CONFIG_FILE (it expanded "~"
when mlflow was imported, before the per-test HOME existed).

Unity Catalog is not emulated: its name rules and reference checks are covered without a server.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import pytest
from databricks_box import DatabricksBox
from support.cli import Run, cli, run_cli_reporting_imports
from support.mlflow_server import MlflowServer
from support.models import (
    HEART_VERSION_DESCRIPTION,
    HEART_VERSION_TAGS,
    register_heart_model,
    register_raw_model,
    sha256_tree,
)

from amlpromote.core.errors import BadInput, NotFound
from amlpromote.core.names import default_target_name, is_valid_target_name, target_model_name
from amlpromote.core.refs import parse_model_ref
from amlpromote.core.registries.databricks import (
    DEFAULT_RETRY_TIMEOUT_SECONDS,
    RETRY_TIMEOUT_ENV,
    DatabricksRegistry,
    configure_databricks_environment,
)
from amlpromote.core.registries.registry import MlflowRegistry
from amlpromote.core.uris import parse_registry_uri

if TYPE_CHECKING:
    import pandas as pd

PROFILE = "dbx-prod"
# Loads the promoted version (models:/ against the target, which the environment names) and the
# source (a private copy of its stored folder) in one fresh interpreter; prints both predictions.
PREDICT_BOTH = """
import json, sys
import numpy, pandas
import mlflow.pyfunc
frame = pandas.read_pickle(sys.argv[3])
promoted = mlflow.pyfunc.load_model(sys.argv[1]).predict(frame)
source = mlflow.pyfunc.load_model(sys.argv[2]).predict(frame)
print(json.dumps([numpy.asarray(promoted).tolist(), numpy.asarray(source).tolist()]))
"""


# -- reading registries independently of the product ------------------------------------------


def digest_of(hashes: Mapping[str, str]) -> str:
    """README's content digest: sha256 over `<sha256>  <path>` lines sorted by path."""
    manifest = "".join(f"{hashes[path]}  {path}\n" for path in sorted(hashes))
    return "sha256:" + hashlib.sha256(manifest.encode()).hexdigest()


def mlflow_client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def target_folder(registry_uri: str, name: str, version: str) -> Path:
    """The local folder a sqlite registry's version stores its files in."""
    client = mlflow_client(registry_uri)
    location = client.get_model_version_download_uri(name, version)
    if location.startswith("models:/m-"):
        location = client.get_logged_model(location.removeprefix("models:/")).artifact_location
    parts = urlsplit(location)
    assert parts.scheme == "file", location
    return Path(unquote(parts.path))


def versions_of(registry_uri: str, name: str) -> list[str]:
    if not Path(registry_uri.removeprefix("sqlite:///")).exists():
        return []
    found = mlflow_client(registry_uri).search_model_versions(f"name='{name}'")
    return sorted(str(mv.version) for mv in found)


# -- the CLI ------------------------------------------------------------------------------------


def cli_process(*args: str, env: Mapping[str, str], cwd: Path, timeout: float = 180) -> Run:
    """`python -m amlpromote ARGS` in a fresh process with exactly `env`."""
    cwd.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "amlpromote", *args],
        env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def process_env(home: Path, box: DatabricksBox, **extra: str) -> dict[str, str]:
    """The developer's environment minus anything that would point the tool elsewhere."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AMLPROMOTE_", "MLFLOW_", "DATABRICKS_"))
    }
    env.update({"HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"})
    env.update(box.tls_env())
    env.update(extra)
    return env


# -- fixtures -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Heart:
    name: str
    version: str
    folder: Path  # the backing server's stored files of the version
    hashes: dict[str, str]

    @property
    def digest(self) -> str:
        return digest_of(self.hashes)


@pytest.fixture(scope="module")
def box(
    mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DatabricksBox]:
    with DatabricksBox(tmp_path_factory.mktemp("dbx-box"), backend=mlflow_server) as started:
        yield started


@pytest.fixture(scope="module")
def heart(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Heart:
    """The heart classifier registered in the box's backing server (alias champion there)."""
    name = f"dbx-copy-heart-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("dbx-heart-cwd"))  # no strays in the repository
        version = register_heart_model(mlflow_server.tracking_uri, name=name, alias="champion")
        location = mlflow_client(mlflow_server.tracking_uri).get_model_version_download_uri(
            name, version
        )
    assert location.startswith("mlflow-artifacts:/"), location
    folder = mlflow_server.artifacts_dir / urlsplit(location).path.lstrip("/")
    hashes = sha256_tree(folder)
    assert "MLmodel" in hashes and "registered_model_meta" not in hashes
    return Heart(name, version, folder, hashes)


@dataclass(frozen=True)
class Staged:
    """A model with one version per legacy stage: which version each stage holds, and the
    bytes of each version (all different)."""

    name: str
    stage_version: dict[str, str]  # "Production" / "Staging" / "None" -> version
    hashes: dict[str, dict[str, str]]  # version -> its stored files' sha256


@pytest.fixture(scope="module")
def staged(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Staged:
    """Registered in the backing server: v1 Production, v2 Staging, v3 in no stage (the latest).
    Stages are set on the server itself, as a workspace user would in the UI."""
    name = f"dbx-stages-{uuid.uuid4().hex[:8]}"
    client = mlflow_client(mlflow_server.tracking_uri)
    hashes: dict[str, dict[str, str]] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("dbx-stages-cwd"))
        for n in range(1, 4):
            files = {"MLmodel": f"artifact_path: model\nflavors: {{}}\nrelease: {n}\n".encode(),
                     "weights.bin": bytes([n]) * (1000 * n)}
            version = register_raw_model(mlflow_server.tracking_uri, name, files)
            hashes[version] = {path: hashlib.sha256(data).hexdigest()
                               for path, data in files.items()}
    stage_version = {"Production": "1", "Staging": "2", "None": "3"}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stages are deprecated in mlflow 3; workspaces have them
        for stage in ("Production", "Staging"):
            client.transition_model_version_stage(name, stage_version[stage], stage)
    assert sorted(hashes) == ["1", "2", "3"]
    return Staged(name, stage_version, hashes)


@pytest.fixture(autouse=True)
def databricks_isolated(
    isolated_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """No DATABRICKS_* from the developer; the config file pinned to this test's HOME."""
    for key in list(os.environ):
        if key.startswith("DATABRICKS_"):
            monkeypatch.delenv(key)
    config = isolated_environment / ".databrickscfg"
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(config))
    return config


@pytest.fixture
def clean_box(box: DatabricksBox) -> Iterator[DatabricksBox]:
    """The module's box with no faults and an empty request log, left that way."""
    box.clear_faults()
    box.clear_requests()
    box.token_refusal = "json"
    yield box
    box.clear_faults()
    box.token_refusal = "json"


@pytest.fixture
def profile_source(
    clean_box: DatabricksBox, isolated_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """`databricks://dbx-prod`, written to the test HOME's ~/.databrickscfg, CA trusted."""
    clean_box.write_databrickscfg(isolated_environment, PROFILE)
    for key, value in clean_box.tls_env().items():
        monkeypatch.setenv(key, value)
    return f"databricks://{PROFILE}"


@pytest.fixture
def target(tmp_path: Path) -> str:
    folder = tmp_path / "target"
    folder.mkdir()
    return f"sqlite:///{folder / 'mlflow.db'}"


@pytest.fixture(scope="module")
def frame_file(tmp_path_factory: pytest.TempPathFactory, heart_frame: pd.DataFrame) -> Path:
    path = tmp_path_factory.mktemp("dbx-frame") / "heart.pkl"
    heart_frame.to_pickle(path)
    return path


def assert_promoted(target: str, heart: Heart, document: dict[str, Any]) -> None:
    """The target holds exactly the source's bytes, registered with provenance."""
    assert document["source"]["name"] == heart.name
    assert document["source"]["version"] == heart.version
    assert document["source"]["digest"] == heart.digest
    assert document["files"] == len(heart.hashes)
    name, version = document["target"]["name"], document["target"]["version"]
    assert sha256_tree(target_folder(target, name, version)) == heart.hashes
    mv = mlflow_client(target).get_model_version(name, version)
    assert mv.description == HEART_VERSION_DESCRIPTION
    assert HEART_VERSION_TAGS.items() <= dict(mv.tags).items()
    assert mv.tags["amlpromote.digest"] == heart.digest
    assert mv.tags["amlpromote.source.name"] == heart.name
    assert mv.tags["amlpromote.source.version"] == heart.version


# -- promotion ----------------------------------------------------------------------------------


def test_profile_promotion_in_a_real_process_is_byte_exact_and_loads(
    clean_box: DatabricksBox,
    heart: Heart,
    target: str,
    frame_file: Path,
    isolated_environment: Path,
    tmp_path: Path,
) -> None:
    """A real ~/.databrickscfg found through HOME. DATABRICKS_HOST/TOKEN point elsewhere (a
    closed port, a wrong token): a named profile must not be overridden by them."""
    clean_box.write_databrickscfg(isolated_environment, PROFILE)
    env = process_env(isolated_environment, clean_box,
                      DATABRICKS_HOST="https://127.0.0.1:9", DATABRICKS_TOKEN="dapi" + "1" * 32)
    cwd = tmp_path / "cwd-copy"
    args = ("copy-model", f"{heart.name}/{heart.version}", "--source", f"databricks://{PROFILE}",
            "--target", target, "--output", "json")  # fmt: skip

    run = cli_process(*args, env=env, cwd=cwd)

    assert run.code == 0, run.both
    document = json.loads(run.stdout)
    assert document["status"] == "copied"
    assert document["source"]["uri"] == f"databricks://{PROFILE}"
    assert document["target"]["name"] == heart.name  # a valid name is kept as it is
    assert_promoted(target, heart, document)
    # The signed-URL route (not the lossy DBFS one), every call with the profile's token.
    api = clean_box.requests_to("/api/")
    assert api and {r.bearer for r in api} == {DatabricksBox.fingerprint(clean_box.token)}
    assert clean_box.requests_to("/api/2.0/mlflow/model-versions/get-signed-download-uri")
    assert len(clean_box.requests_to("/blob/")) == len(heart.hashes)
    assert not clean_box.requests_to("/api/2.0/dbfs/")
    assert not clean_box.non_loopback_requests()
    # No global-state strays: mlflow's default store would land in the working directory.
    assert sorted(p.name for p in cwd.iterdir()) == []
    assert clean_box.token not in run.both

    # A re-run with --verify changes nothing and reads the target back.
    again = cli_process(*args, "--verify", env=env, cwd=cwd)
    assert again.code == 0, again.both
    redo = json.loads(again.stdout)
    assert (redo["status"], redo["verified"]) == ("unchanged", True)
    assert redo["target"]["version"] == document["target"]["version"]
    assert versions_of(target, heart.name) == [document["target"]["version"]]

    # The promoted model loads and predicts like the source, in a process that knows only the
    # target registry.
    private = tmp_path / "source-copy"
    shutil.copytree(heart.folder, private)  # loading writes into the folder; keep the source
    load_env = process_env(isolated_environment, clean_box,
                           MLFLOW_TRACKING_URI=target, MLFLOW_REGISTRY_URI=target)
    promoted_uri = f"models:/{heart.name}/{document['target']['version']}"
    proc = subprocess.run(
        [sys.executable, "-c", PREDICT_BOTH, promoted_uri, str(private), str(frame_file)],
        env=load_env, cwd=tmp_path, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    promoted, source = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(promoted) == 100 and set(promoted) <= {0, 1}
    assert promoted == source


def test_a_token_profile_to_an_mlflow_server_imports_neither_mlflow_nor_the_sdk(
    clean_box: DatabricksBox,
    heart: Heart,
    mlflow_server: MlflowServer,
    isolated_environment: Path,
    tmp_path: Path,
) -> None:
    """A personal-access-token profile is called over REST: a copy to a plain MLflow server
    never imports mlflow or databricks-sdk (3.5 s and 240 MB), and stays byte-exact."""
    clean_box.write_databrickscfg(isolated_environment, PROFILE)
    env = process_env(isolated_environment, clean_box)
    name = f"dbx-rest-{uuid.uuid4().hex[:8]}"
    cwd = tmp_path / "cwd-rest"
    cwd.mkdir()
    args = ("copy-model", f"{heart.name}/{heart.version}", "--source", f"databricks://{PROFILE}",
            "--target", mlflow_server.tracking_uri, "--target-name", name, "--output", "json")

    proc = run_cli_reporting_imports(*args, env=env, inherit=False, cwd=cwd, timeout=180)

    assert proc.code == 0, proc.stdout + proc.stderr
    assert proc.imported == {"mlflow": False, "databricks.sdk": False,
                             "azureml.mlflow": False}, proc.stderr
    document = json.loads(proc.stdout)
    assert document["status"] == "copied"
    assert document["source"]["digest"] == heart.digest
    assert clean_box.token not in proc.stdout + proc.stderr
    # Every API call went out from our client with the profile's token; files via signed URLs.
    api = clean_box.requests_to("/api/")
    assert api and {r.bearer for r in api} == {DatabricksBox.fingerprint(clean_box.token)}
    assert all(r.headers.get("user-agent", "").startswith("amlpromote/") for r in api)
    assert len(clean_box.requests_to("/blob/")) == len(heart.hashes)
    # The target server holds the source's bytes (read back with MLflow's own client).
    client = mlflow_client(mlflow_server.tracking_uri)
    mv = client.get_model_version(name, document["target"]["version"])
    assert mv.tags["amlpromote.digest"] == heart.digest
    location = client.get_logged_model(mv.source.removeprefix("models:/")).artifact_location
    assert location.startswith("mlflow-artifacts:/"), location
    stored = mlflow_server.artifacts_dir / urlsplit(location).path.lstrip("/")
    assert sha256_tree(stored) == heart.hashes


def test_env_var_promotion_then_unchanged(
    clean_box: DatabricksBox, heart: Heart, target: str
) -> None:
    """The bare `databricks` URI: DATABRICKS_HOST / DATABRICKS_TOKEN, no config file at all."""
    env = clean_box.env()
    args = ("copy-model", f"{heart.name}/{heart.version}", "--source", "databricks",
            "--target", target, "--output", "json")  # fmt: skip

    first = cli(*args, env=env)
    assert first.code == 0, first.both
    document = json.loads(first.stdout)
    assert document["status"] == "copied"
    assert_promoted(target, heart, document)

    second = cli(*args, "--verify", env=env)
    assert second.code == 0, second.both
    assert (json.loads(second.stdout)["status"], json.loads(second.stdout)["verified"]) == (
        "unchanged", True)  # fmt: skip
    assert versions_of(target, heart.name) == ["1"]
    assert clean_box.token not in first.both + second.both


def test_one_workspace_is_one_source_whatever_the_profile_is_called(
    clean_box: DatabricksBox, heart: Heart, target: str, profile_source: str,
    isolated_environment: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Provenance names the workspace host, not the profile: a promotion made through a
    teammate's profile name (or DATABRICKS_HOST) is found again, not duplicated."""
    clean_box.write_databrickscfg(isolated_environment, "someone-elses-name")
    ref = f"{heart.name}/{heart.version}"
    first = cli("copy-model", ref, "--source", profile_source, "--target", target, "-o", "json")
    assert first.code == 0, first.both
    assert json.loads(first.stdout)["status"] == "copied"
    for source, env in (("databricks://someone-elses-name", None),
                        ("databricks", clean_box.env())):
        again = cli("copy-model", ref, "--source", source, "--target", target, "-o", "json",
                    env=env)
        assert again.code == 0, again.both
        assert json.loads(again.stdout)["status"] == "unchanged", source
    assert versions_of(target, heart.name) == ["1"]
    tags = mlflow_client(target).get_model_version(heart.name, "1").tags
    assert tags["amlpromote.source.uri"] == profile_source


def test_an_unreachable_workspace_fails_fast_with_exit_1(
    isolated_environment: Path, target: str
) -> None:
    """A host nobody listens on: one TCP probe says so (the SDK would retry a refused connection
    for its whole window, and MLflow the SDK call again on top)."""
    import socket

    with socket.socket() as probe:  # a loopback port that is free, so nothing answers on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = isolated_environment / ".databrickscfg"
    config.write_text(f"[dead]\nhost = https://127.0.0.1:{port}\ntoken = not-a-real-token\n")
    run = cli("copy-model", "m/1", "--source", "databricks://dead", "--target", target)
    assert run.code == 1, run.both
    assert "refused" in run.stderr.lower(), run.stderr  # the probe's answer, not a retried call
    assert "cannot reach Databricks workspace https://127.0.0.1" in run.stderr
    assert "profile dead" in run.stderr
    assert "not-a-real-token" not in run.both
    assert versions_of(target, "m") == []


def test_a_host_that_drops_every_connection_is_retried_within_the_window(
    isolated_environment: Path, target: str
) -> None:
    """A host that accepts and resets each connection (a broken proxy, a dying load balancer)
    passes the probe; each call is then retried like databricks-sdk does, one second longer
    per attempt, until RETRY_TIMEOUT_ENV: bounded by attempts, not by the machine's speed."""
    from support.refuser import ResettingPort

    with ResettingPort() as dead:
        config = isolated_environment / ".databrickscfg"
        config.write_text(f"[dead]\nhost = https://127.0.0.1:{dead.port}\n"
                          "token = not-a-real-token\n")
        run = cli("copy-model", "m/1", "--source", "databricks://dead", "--target", target,
                  env={RETRY_TIMEOUT_ENV: "3"})
        attempts = dead.connections
    assert run.code == 1, run.both
    assert "cannot reach Databricks workspace https://127.0.0.1" in run.stderr, run.stderr
    assert "Traceback" not in run.both
    # The probe, then one call: tries after pauses of 1 and 2 s fit a 3 s window, a third
    # (3 s more) does not.
    assert 2 <= attempts <= 4, f"{attempts} connections to a host that drops them: {run.both}"
    assert versions_of(target, "m") == []


def test_a_bare_name_copies_the_latest_version(
    clean_box: DatabricksBox, heart: Heart, target: str, profile_source: str
) -> None:
    run = cli("copy-model", heart.name, "--source", profile_source, "--target", target,
              "--target-name", "heart-from-dbx", "--output", "json")  # fmt: skip
    assert run.code == 0, run.both
    document = json.loads(run.stdout)
    assert document["source"]["version"] == heart.version
    assert document["target"]["name"] == "heart-from-dbx"
    assert sha256_tree(target_folder(target, "heart-from-dbx", "1")) == heart.hashes


@pytest.mark.parametrize("route", ["rest", "sdk"])
@pytest.mark.parametrize("stage", ["Production", "Staging"])
def test_a_stage_reference_copies_the_version_in_that_stage(
    clean_box: DatabricksBox,
    staged: Staged,
    target: str,
    isolated_environment: Path,
    monkeypatch: pytest.MonkeyPatch,
    stage: str,
    route: str,
) -> None:
    """NAME/Production and NAME/Staging on the workspace registry (which has stages): the
    version in that stage, not the latest, byte for byte."""
    source = use_route(clean_box, isolated_environment, route)
    for key, value in clean_box.tls_env().items():
        monkeypatch.setenv(key, value)
    wanted = staged.stage_version[stage]

    run = cli("copy-model", f"{staged.name}/{stage}", "--source", source, "--target", target,
              "--output", "json")  # fmt: skip

    assert run.code == 0, run.both
    document = json.loads(run.stdout)
    assert document["status"] == "copied"
    assert document["source"]["version"] == wanted != staged.stage_version["None"]
    assert document["source"]["digest"] == digest_of(staged.hashes[wanted])
    name, version = document["target"]["name"], document["target"]["version"]
    assert sha256_tree(target_folder(target, name, version)) == staged.hashes[wanted]
    assert mlflow_client(target).get_model_version(name, version).tags[
        "amlpromote.source.version"] == wanted
    # Resolved by the workspace registry's own answers, through the box.
    assert clean_box.requests_to("/api/2.0/mlflow/model-versions/search")
    assert {r.bearer for r in clean_box.requests_to("/api/")} == {
        DatabricksBox.fingerprint(clean_box.token)}


def test_a_stage_without_versions_is_exit_3(
    clean_box: DatabricksBox, staged: Staged, target: str, profile_source: str
) -> None:
    run = cli("copy-model", f"{staged.name}/Archived", "--source", profile_source,
              "--target", target)  # fmt: skip

    assert run.code == 3, run.both
    assert f"model '{staged.name}' has no versions in stage Archived" in run.stderr
    assert "Traceback" not in run.both
    assert versions_of(target, staged.name) == []


# -- failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
@pytest.mark.parametrize("how", ["profile", "env"])
def test_a_bad_token_is_exit_4_naming_where_to_fix_it(
    clean_box: DatabricksBox,
    heart: Heart,
    target: str,
    isolated_environment: Path,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
    verbose: bool,
) -> None:
    # Not in Databricks' token format, so no output filter can hide it by its shape.
    bad = f"wrong-token-{uuid.uuid4().hex}"
    for key, value in clean_box.tls_env().items():
        monkeypatch.setenv(key, value)
    if how == "profile":
        clean_box.write_databrickscfg(isolated_environment, PROFILE, token=bad)
        source, env = f"databricks://{PROFILE}", {}
    else:
        source, env = "databricks", clean_box.env(token=bad)

    run = cli("copy-model", f"{heart.name}/{heart.version}", "--source", source,
              "--target", target, *(["-v"] if verbose else []), env=env)  # fmt: skip

    assert run.code == 4, run.both
    assert bad not in run.both
    assert clean_box.token not in run.both
    # --verbose adds the traceback (and the SDK's request log): still without the token.
    assert ("Traceback" in run.both) == verbose
    error = next(line for line in run.stderr.splitlines() if "refused the token" in line)
    assert clean_box.host in error
    assert "refused the token (HTTP 403): it is expired, revoked or wrong" in error
    assert "CAN READ" not in run.stderr  # not a permission on the model
    if how == "profile":
        assert f"profile {PROFILE}" in error
        assert f"check the token in ~/.databrickscfg profile {PROFILE}" in run.stderr
    else:
        assert "DATABRICKS_HOST" in error
        assert "check DATABRICKS_TOKEN" in run.stderr
    # A real workspace refuses a wrong token with 403, not 401 (see the box's sources).
    assert {(r.status, r.auth) for r in clean_box.requests_to("/api/")} == {(403, "invalid")}
    assert versions_of(target, heart.name) == []  # nothing half-written


def test_a_revoked_token_is_exit_4(
    clean_box: DatabricksBox,
    heart: Heart,
    target: str,
    isolated_environment: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = clean_box.add_token()  # the module's box keeps its own token valid
    clean_box.write_databrickscfg(isolated_environment, PROFILE, token=token)
    for key, value in clean_box.tls_env().items():
        monkeypatch.setenv(key, value)
    clean_box.revoke_token(token)

    run = cli("copy-model", f"{heart.name}/{heart.version}", "--source", f"databricks://{PROFILE}",
              "--target", target)  # fmt: skip

    assert run.code == 4, run.both
    assert token not in run.both
    assert "refused the token (HTTP 403): it is expired, revoked or wrong" in run.stderr
    assert {r.auth for r in clean_box.requests_to("/api/")} == {"revoked"}


def use_route(box: DatabricksBox, home: Path, route: str, token: str | None = None) -> str:
    """Write the PROFILE the CLI will use; the source URI. "rest": host and token only (our
    REST client); "sdk": the same plus a databricks-sdk setting the REST route does not
    reproduce (`rate_limit`), so the call goes through MlflowClient and databricks-sdk."""
    path = box.write_databrickscfg(home, PROFILE, token=token)
    if route == "sdk":
        with path.open("a") as handle:
            handle.write("rate_limit = 1000\n")
    registry = MlflowRegistry(parse_registry_uri(f"databricks://{PROFILE}"))
    assert registry.uses_rest == (route == "rest")
    return f"databricks://{PROFILE}"


@pytest.mark.parametrize("route", ["rest", "sdk"])
@pytest.mark.parametrize("form", ["json", "html"])
def test_a_refused_token_in_either_form_is_exit_4_saying_so(
    clean_box: DatabricksBox,
    heart: Heart,
    target: str,
    isolated_environment: Path,
    monkeypatch: pytest.MonkeyPatch,
    form: str,
    route: str,
) -> None:
    """A revoked token gets today's JSON 403 (numeric error_code) or an older workspace's HTML
    403 page; both routes say the token was refused, never "ask for CAN READ", and no page."""
    token = clean_box.add_token()
    source = use_route(clean_box, isolated_environment, route, token=token)
    for key, value in clean_box.tls_env().items():
        monkeypatch.setenv(key, value)
    clean_box.revoke_token(token)
    clean_box.token_refusal = form

    run = cli("copy-model", f"{heart.name}/{heart.version}", "--source", source,
              "--target", target)  # fmt: skip

    assert run.code == 4, run.both
    error = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1, run.stderr
    assert f"Databricks workspace {clean_box.host} (profile {PROFILE}) refused the token " \
           "(HTTP 403): it is expired, revoked or wrong" in error[0]
    hint = [line for line in run.stderr.splitlines() if line.startswith("hint:")]
    assert hint and f"check the token in ~/.databrickscfg profile {PROFILE}" in hint[0]
    assert "create a new personal access token" in hint[0]
    assert "CAN READ" not in run.stderr
    # Neither the page nor the SDK's config dump reaches the user; nor any token.
    for page_text in ("<", "HTTP ERROR", "Problem accessing", "Config:", "FORBIDDEN"):
        assert page_text not in run.both, page_text
    assert token not in run.both and clean_box.token not in run.both
    assert "Traceback" not in run.both
    refused = clean_box.requests_to("/api/")
    assert refused and {(r.status, r.auth) for r in refused} == {(403, "revoked")}
    assert not clean_box.requests_to("/blob/")
    assert versions_of(target, heart.name) == []


@pytest.mark.parametrize("route", ["rest", "sdk"])
def test_a_valid_token_without_permission_is_exit_4_asking_for_can_read(
    clean_box: DatabricksBox,
    heart: Heart,
    target: str,
    isolated_environment: Path,
    monkeypatch: pytest.MonkeyPatch,
    route: str,
) -> None:
    """403 PERMISSION_DENIED on a token the workspace accepts: the model's permission."""
    source = use_route(clean_box, isolated_environment, route)
    for key, value in clean_box.tls_env().items():
        monkeypatch.setenv(key, value)
    clean_box.inject_fault(403, count=1000, path_contains="/api/2.0/mlflow/")

    run = cli("copy-model", f"{heart.name}/{heart.version}", "--source", source,
              "--target", target)  # fmt: skip

    assert run.code == 4, run.both
    assert "refused access (HTTP 403)" in run.stderr
    assert "ask for CAN READ on it" in run.stderr
    assert "refused the token" not in run.stderr
    assert clean_box.token not in run.both
    denied = clean_box.requests_to("/api/2.0/mlflow/")
    assert denied and {(r.status, r.auth) for r in denied} == {(403, "ok")}


def test_unknown_model_and_version_are_exit_3(
    clean_box: DatabricksBox, heart: Heart, target: str, profile_source: str
) -> None:
    missing_model = cli("copy-model", "no-such-model-x/1", "--source", profile_source,
                        "--target", target)  # fmt: skip
    assert missing_model.code == 3, missing_model.both
    assert "no-such-model-x" in missing_model.stderr

    missing_version = cli("copy-model", f"{heart.name}/99", "--source", profile_source,
                          "--target", target)  # fmt: skip
    assert missing_version.code == 3, missing_version.both
    assert "has no version 99" in missing_version.stderr
    assert f"versions that exist: {heart.version}" in missing_version.stderr
    assert "Traceback" not in missing_model.both + missing_version.both


@pytest.mark.parametrize("route", ["rest", "sdk"])
def test_an_alias_on_the_workspace_registry_is_a_clear_error(
    clean_box: DatabricksBox,
    heart: Heart,
    target: str,
    isolated_environment: Path,
    monkeypatch: pytest.MonkeyPatch,
    route: str,
) -> None:
    """The backing server has alias champion, the workspace registry has no aliases: exit 2
    with README's message, whichever client would have been used."""
    source = use_route(clean_box, isolated_environment, route)
    for key, value in clean_box.tls_env().items():
        monkeypatch.setenv(key, value)
    run = cli("copy-model", f"{heart.name}@champion", "--source", source,
              "--target", target)  # fmt: skip

    assert run.code == 2, run.both
    assert f"error: '{heart.name}@champion': the Databricks workspace model registry has no " \
           "aliases" in run.stderr
    assert "NAME/Production" in run.stderr  # what to write instead
    assert "databricks-uc://" in run.stderr  # where aliases do exist
    assert not clean_box.requests_to("/api/")  # refused before any call
    assert versions_of(target, heart.name) == []


def test_a_missing_profile_is_exit_3_and_no_configuration_exit_2(
    heart: Heart, target: str, isolated_environment: Path
) -> None:
    missing = cli("copy-model", f"{heart.name}/1", "--source", "databricks://nope",
                  "--target", target)  # fmt: skip
    assert missing.code == 3, missing.both
    assert "no profile 'nope' in ~/.databrickscfg" in missing.stderr

    unconfigured = cli("copy-model", f"{heart.name}/1", "--source", "databricks",
                       "--target", target)  # fmt: skip
    assert unconfigured.code == 2, unconfigured.both
    assert "set DATABRICKS_HOST and DATABRICKS_TOKEN" in unconfigured.stderr


def test_throttling_is_ridden_out(
    clean_box: DatabricksBox, heart: Heart, target: str, profile_source: str
) -> None:
    """429 with Retry-After on the registry API and on the signed downloads, twice each."""
    clean_box.inject_fault(429, count=2, retry_after=1,
                           path_contains="/api/2.0/mlflow/model-versions/get")
    clean_box.inject_fault(429, count=2, retry_after=1, path_contains="/blob/")

    run = cli("copy-model", f"{heart.name}/{heart.version}", "--source", profile_source,
              "--target", target, "--output", "json")  # fmt: skip

    assert run.code == 0, run.both
    assert_promoted(target, heart, json.loads(run.stdout))
    throttled = [r for r in clean_box.requests if r.status == 429]
    assert len(throttled) == 4, [(r.path, r.status) for r in clean_box.requests]
    assert any(r.path.startswith("/blob/") for r in throttled)


def test_persistent_unavailability_fails_in_bounded_time(
    clean_box: DatabricksBox, heart: Heart, target: str, isolated_environment: Path,
    tmp_path: Path,
) -> None:
    clean_box.write_databrickscfg(isolated_environment, PROFILE)
    clean_box.inject_fault(503, count=10_000, path_contains="/api/2.0/mlflow/")
    env = process_env(isolated_environment, clean_box, **{RETRY_TIMEOUT_ENV: "3"})

    run = cli_process("copy-model", f"{heart.name}/{heart.version}", "--source",
                      f"databricks://{PROFILE}", "--target", target, env=env,
                      cwd=tmp_path / "cwd", timeout=120)  # fmt: skip

    assert run.code == 1, run.both
    assert "stayed throttled/unavailable" in run.stderr
    assert RETRY_TIMEOUT_ENV in run.stderr  # the hint names the knob
    assert "Traceback" not in run.both
    # Bounded by attempts, not wall time: databricks-sdk sleeps at least `attempt` s (1, 2, ...)
    # between tries and stops at the 3 s deadline, so one call makes at most 3 requests; the
    # run gives up on the first call that stays unavailable.
    tried = clean_box.requests_to("/api/2.0/mlflow/")
    assert {r.status for r in tried} == {503}
    assert 2 <= len(tried) <= 3, [(r.path, r.status) for r in tried]
    assert len({r.path for r in tried}) == 1, "a later call was made after one stayed unavailable"
    assert versions_of(target, heart.name) == []


# -- Unity Catalog and names (no server) --------------------------------------------------------


def test_unity_catalog_references_are_checked_before_any_call(target: str) -> None:
    two_parts = cli("copy-model", "fraud.scorer/3", "--source", "databricks-uc://prod",
                    "--target", target)  # fmt: skip
    assert two_parts.code == 2, two_parts.both
    assert "not a Unity Catalog model name" in two_parts.stderr
    assert "catalog.schema.model" in two_parts.stderr

    stage = cli("copy-model", "main.fraud.scorer/Production", "--source", "databricks-uc",
                "--target", target)  # fmt: skip
    assert stage.code == 2, stage.both
    assert "no stages" in stage.stderr


def test_unity_catalog_search_results_without_tags_or_aliases_are_read() -> None:
    """mlflow's Unity Catalog store returns search results whose `tags` and `aliases` are
    methods that raise (ModelVersionSearch / RegisteredModelSearch): a version read from one
    is marked partial, not a TypeError; an entity whose fields are working methods is read
    through them; an ordinary entity as before."""
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel
    from mlflow.entities.model_registry.model_version_search import ModelVersionSearch
    from mlflow.entities.model_registry.registered_model_alias import RegisteredModelAlias
    from mlflow.entities.model_registry.registered_model_search import RegisteredModelSearch

    from amlpromote.core.promote.inventory import _aliases_of
    from amlpromote.core.registries.registry import VersionInfo

    searched = ModelVersionSearch(
        name="main.fraud.scorer", version="3", creation_timestamp=1, source="models:/m-1",
        run_id="r1", description="d")  # fmt: skip
    with pytest.raises(Exception, match="do not have tags"):
        searched.tags()  # what the library really does
    info = VersionInfo.from_mlflow(searched)
    assert (info.name, info.version, info.run_id, info.description) == (
        "main.fraud.scorer", "3", "r1", "d")  # fmt: skip
    assert (info.tags, info.aliases, info.extra.get("partial")) == ({}, [], True)

    class MethodFields(ModelVersion):  # the same shape, with methods that answer
        def tags(self) -> dict[str, str]:  # type: ignore[override]
            return {"team": "risk"}

        def aliases(self) -> list[str]:  # type: ignore[override]
            return ["champion"]

    called = VersionInfo.from_mlflow(MethodFields("m", "2", 1, source="s"))
    assert (called.tags, called.aliases, "partial" in called.extra) == (
        {"team": "risk"}, ["champion"], False)  # fmt: skip

    plain = VersionInfo.from_mlflow(ModelVersion("m", "1", 1, source="s", aliases=["a"],
                                                 tags=[], current_stage="Staging"))
    assert (plain.aliases, plain.extra) == (["a"], {"stage": "Staging"})

    assert _aliases_of(RegisteredModelSearch("main.fraud.scorer")) == {}
    full = RegisteredModel("m", aliases=[RegisteredModelAlias("champion", "2")])
    assert _aliases_of(full) == {"champion": "2"}


def test_unity_catalog_registry_mapping() -> None:
    registry = DatabricksRegistry.of(parse_registry_uri("databricks-uc://prod"))
    assert (registry.unity_catalog, registry.profile) == (True, "prod")
    assert registry.registry_uri == "databricks-uc://prod"
    assert registry.tracking_uri == "databricks://prod"  # runs stay in the workspace
    assert registry.artifact_uri("main.fraud.scorer", "3") == "models:/main.fraud.scorer/3"
    for ok in ("main.fraud.scorer/3", "main.fraud.scorer@champion", "main.fraud.scorer"):
        registry.check_ref(parse_model_ref(ok))

    default = DatabricksRegistry.of(parse_registry_uri("databricks-uc"))
    assert (default.profile, default.registry_uri, default.tracking_uri) == (
        None, "databricks-uc", "databricks")  # fmt: skip

    workspace = DatabricksRegistry.of(parse_registry_uri(f"databricks://{PROFILE}"))
    assert workspace.artifact_uri("heart", "3") == f"models://{PROFILE}@databricks/heart/3"
    assert DatabricksRegistry.of(parse_registry_uri("databricks")).artifact_uri("h", "1") == (
        "models://databricks/h/1")
    with pytest.raises(BadInput, match="no aliases"):
        workspace.check_ref(parse_model_ref("heart@champion"))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("uci-heart-classifier", "uci-heart-classifier"),  # already valid: unchanged
        ("Fraud_Scorer-2", "Fraud_Scorer-2"),
        ("main.fraud.scorer", "main-fraud-scorer"),
        ("ml_prod.risk_models.credit_v2", "ml_prod-risk_models-credit_v2"),
    ],
)
def test_target_model_name_rule(source: str, expected: str) -> None:
    assert target_model_name(source) == expected
    assert is_valid_target_name(expected)


def test_target_model_name_is_valid_deterministic_and_keeps_lossy_names_apart() -> None:
    lossy = ["main.fraud.my scorer", "main.fraud.my/scorer", "_hidden.x.y", "caf\u00e9.a.b",
             "a" * 300, "x." + "b" * 300, "...", "m\u00fcnchen"]  # fmt: skip
    mapped = [target_model_name(name) for name in lossy]
    assert all(is_valid_target_name(name) for name in mapped), mapped
    assert all(len(name) <= 255 for name in mapped)
    assert len(set(mapped)) == len(lossy)
    assert mapped == [target_model_name(name) for name in lossy]  # deterministic
    digest = hashlib.sha256(b"main.fraud.my scorer").hexdigest()[:8]
    assert mapped[0] == f"main-fraud-my-scorer-{digest}"
    assert target_model_name("...").startswith("model-")
    # Valid names (periods are not: Azure ML's ARM API refuses them) pass through.
    assert not is_valid_target_name("a.b") and not is_valid_target_name("-a")
    assert not is_valid_target_name("a" * 256) and is_valid_target_name("a" * 255)


def test_default_target_name_maps_only_where_a_plain_name_is_needed() -> None:
    assert default_target_name("main.fraud.scorer", "databricks-uc", "sqlite") == (
        "main-fraud-scorer")
    assert default_target_name("my.model", "databricks", "azureml") == "my-model"
    # Between MLflow registries a workspace name is kept exactly, as before.
    assert default_target_name("my.model", "databricks", "sqlite") == "my.model"
    assert default_target_name("my model", "sqlite", "file") == "my model"


# -- environment handling (no server) -----------------------------------------------------------


def test_a_named_profile_hides_databricks_variables_only_during_a_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABRICKS_HOST", "https://elsewhere.example")
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi" + "2" * 32)
    monkeypatch.setenv("ARM_CLIENT_ID", "00000000-0000-0000-0000-000000000000")
    config_file = os.environ["DATABRICKS_CONFIG_FILE"]
    named = DatabricksRegistry.of(parse_registry_uri(f"databricks://{PROFILE}"))

    with named.contained():
        assert "DATABRICKS_HOST" not in os.environ
        assert "DATABRICKS_TOKEN" not in os.environ
        assert "ARM_CLIENT_ID" not in os.environ
        assert os.environ["DATABRICKS_CONFIG_FILE"] == config_file  # where the profile is
    assert os.environ["DATABRICKS_HOST"] == "https://elsewhere.example"
    assert os.environ["ARM_CLIENT_ID"] == "00000000-0000-0000-0000-000000000000"

    with DatabricksRegistry.of(parse_registry_uri("databricks")).contained():
        assert os.environ["DATABRICKS_HOST"] == "https://elsewhere.example"  # they *are* it

    with pytest.raises(RuntimeError), named.contained():
        raise RuntimeError("restored on failure too")
    assert os.environ["DATABRICKS_TOKEN"] == "dapi" + "2" * 32


def test_only_personal_access_tokens_take_the_rest_route(
    databricks_isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Host + token (profile or environment) is called over REST; any other authentication, or
    a setting the REST route does not reproduce, keeps MlflowClient and databricks-sdk."""
    token = "dapi" + "3" * 32
    databricks_isolated.write_text(
        f"[pat]\nhost = https://pat.example/\ntoken = {token}\n"
        f"[pat-typed]\nhost = pat.example\ntoken = {token}\nauth_type = pat\n"
        "[cli]\nhost = https://cli.example\nauth_type = databricks-cli\n"
        "[m2m]\nhost = https://m2m.example\nclient_id = x\nclient_secret = y\n"
        f"[insecure]\nhost = https://i.example\ntoken = {token}\ninsecure = true\n"
        f"[DEFAULT]\nhost = https://default.example\ntoken = {token}\n")

    def rest(uri: str) -> tuple[str, str] | None:
        registry = DatabricksRegistry.of(parse_registry_uri(uri))
        uses_rest = MlflowRegistry(parse_registry_uri(uri)).uses_rest
        assert uses_rest == (registry.personal_access_token() is not None)
        return registry.personal_access_token()

    assert rest("databricks://pat") == ("https://pat.example", token)
    assert rest("databricks://pat-typed") == ("https://pat.example", token)
    for other in ("cli", "m2m", "insecure", "nope", "scope:prefix"):
        assert rest(f"databricks://{other}") is None, other
    assert rest("databricks-uc://pat") is None  # Unity Catalog keeps MLflow's UC repository
    assert rest("databricks") == ("https://default.example", token)

    monkeypatch.setenv("DATABRICKS_HOST", "https://env.example")
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi" + "4" * 32)
    assert rest("databricks") == ("https://env.example", "dapi" + "4" * 32)  # env wins
    monkeypatch.setenv("DATABRICKS_CONFIG_PROFILE", "m2m")  # env host/token over OAuth fields
    assert rest("databricks") is None
    monkeypatch.delenv("DATABRICKS_CONFIG_PROFILE")
    for key in ("ARM_CLIENT_ID", "DATABRICKS_CLIENT_SECRET", "DATABRICKS_RUNTIME_VERSION"):
        with monkeypatch.context() as patch:
            patch.setenv(key, "x")
            assert rest("databricks") is None, key
    # A named profile ignores the environment, as its containment does.
    with monkeypatch.context() as patch:
        patch.setenv("ARM_CLIENT_ID", "x")
        assert rest("databricks://pat") == ("https://pat.example", token)


def test_the_rest_route_knows_every_databricks_sdk_variable() -> None:
    """Contract with databricks-sdk: each variable it reads is one the REST route uses, one it
    may ignore, or one (by its prefix) that sends the registry to the MlflowClient route."""
    from databricks.sdk.config import Config

    from amlpromote.core.registries import databricks as module

    envs = {attr.name: attr.env for attr in Config.attributes() if attr.env}
    assert all(env.startswith(module._SDK_ENV_PREFIXES) for env in envs.values()), envs
    assert {envs[name] for name in module._NEUTRAL_SDK_SETTINGS} == module._NEUTRAL_ENV
    assert set(envs.values()) >= module._PAT_ENV


def test_retry_timeout_default_user_value_and_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RETRY_TIMEOUT_ENV, raising=False)
    assert configure_databricks_environment() == DEFAULT_RETRY_TIMEOUT_SECONDS
    assert os.environ[RETRY_TIMEOUT_ENV] == str(DEFAULT_RETRY_TIMEOUT_SECONDS)
    monkeypatch.setenv(RETRY_TIMEOUT_ENV, "7")
    assert configure_databricks_environment() == 7
    for bad in ("soon", "0", "1.5"):
        monkeypatch.setenv(RETRY_TIMEOUT_ENV, bad)
        with pytest.raises(BadInput, match=RETRY_TIMEOUT_ENV):
            configure_databricks_environment()


def test_profile_checks_name_the_config_file(databricks_isolated: Path) -> None:
    databricks_isolated.write_text("[other]\nhost = https://h.example\ntoken = t\n")
    with pytest.raises(NotFound, match="no profile 'prod'") as info:
        DatabricksRegistry.of(parse_registry_uri("databricks://prod")).require_configured()
    assert "profiles there: other" in (info.value.hint or "")
    DatabricksRegistry.of(parse_registry_uri("databricks://other")).require_configured()
    assert DatabricksRegistry.of(parse_registry_uri("databricks://other")).describe() == (
        "Databricks workspace https://h.example (profile other)")



def test_unity_catalog_calls_go_to_the_uc_registry_with_the_profile(
    clean_box: DatabricksBox, target: str, profile_source: str
) -> None:
    """The box has no Unity Catalog; what can be checked is that a UC source reaches the UC
    registry API of the profile's workspace with the profile's token, and that the "no such
    API" answer is a clean one-line failure."""
    run = cli("copy-model", "main.fraud.scorer/1", "--source", f"databricks-uc://{PROFILE}",
              "--target", target)  # fmt: skip

    assert run.code == 1, run.both
    assert "Traceback" not in run.both
    assert "looking up main.fraud.scorer/1" in run.stderr
    uc = clean_box.requests_to("/api/2.0/mlflow/unity-catalog/model-versions/get")
    assert uc and {r.bearer for r in uc} == {DatabricksBox.fingerprint(clean_box.token)}
    assert uc[0].query.get("name") == ("main.fraud.scorer",)
    assert not clean_box.requests_to("/api/2.0/mlflow/model-versions/")  # not the workspace's
    assert versions_of(target, "main-fraud-scorer") == []
