"""copy-model end to end, through the CLI, against real registries (README "Promotion
semantics", "JSON output", "Exit codes").

What is checked here is what a user relies on: the promoted files are the source's bytes, the
`amlpromote.*` tags say where they came from, a re-run changes nothing, concurrent and interrupted
runs leave exactly one version, and the promoted model loads and predicts like the source in a
fresh Python process pointed only at the target.

Nothing in amlpromote or MLflow is mocked. Expectations are computed independently of the product:
files are read from the registries with MLflow's own client (or straight from local folders) and
the digest is recomputed from its README definition. Most runs are in-process (`CliRunner`, fast);
runs whose point is a real process (model loading, concurrency, SIGKILL) use
`python -m amlpromote`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import pytest
from support import FreshStores
from support.cli import cli
from support.flaky_proxy import FlakyProxy
from support.mlflow_server import MlflowServer
from support.models import (
    HEART_VERSION_DESCRIPTION,
    HEART_VERSION_TAGS,
    register_heart_model,
    register_raw_model,
    sha256_tree,
)

from amlpromote import __version__

if TYPE_CHECKING:
    import pandas as pd

# README "JSON output": the document's keys, exactly.
TOP_KEYS = {"status", "source", "target", "files", "bytes", "seconds", "verified", "plan"}
SOURCE_KEYS = {"uri", "name", "version", "digest"}
TARGET_KEYS = {"uri", "name", "version", "aliases", "created_registry"}
# README "Provenance tags": always written (source.run_id / source.model_id / chain only when the
# source has them).
PROVENANCE_TAGS = {
    "amlpromote.source.uri",
    "amlpromote.source.name",
    "amlpromote.source.version",
    "amlpromote.source.key",
    "amlpromote.digest",
    "amlpromote.files",
    "amlpromote.bytes",
    "amlpromote.promoted_at",
    "amlpromote.tool_version",
}
# Put in the server source's URI as user info; it must never reach a tag or any output.
SECRET = "pr0m0te-s3cret"
RM_DESCRIPTION = "Heart-disease classifier, source registry"
RM_TAGS = {"team": "cardio-ml"}
# Loading a model in a fresh interpreter, the way a consumer of the target registry would: only
# MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI say where it is.
PREDICT_SCRIPT = """
import json, sys
import numpy, pandas
import mlflow.pyfunc
frame = pandas.read_pickle(sys.argv[2])
model = mlflow.pyfunc.load_model(sys.argv[1])
print(json.dumps(numpy.asarray(model.predict(frame)).tolist()))
"""


# -- reading registries independently of the product ------------------------------------------


@contextlib.contextmanager
def file_store_allowed(uri: str) -> Iterator[None]:
    """MLflow 3 opens a file store only with MLFLOW_ALLOW_FILE_STORE; set it for this read only,
    so a test cannot pass because a reader left it on for the product."""
    saved = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    if uri.startswith("file:"):
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = saved


def mlflow_client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def version_folder(registry_uri: str, name: str, version: str, scratch: Path) -> Path:
    """A local folder holding exactly what a version stores: the files at its download URI (the
    stored artifacts; a `models:/name/version` download would add MLflow's metadata file)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    with file_store_allowed(registry_uri):
        client = mlflow_client(registry_uri)
        location = client.get_model_version_download_uri(name, version)
        if location.startswith("models:/m-"):
            location = client.get_logged_model(location.removeprefix("models:/")) \
                .artifact_location
        parts = urlsplit(location)
        if parts.scheme == "file":
            return Path(unquote(parts.path))
        # Remote (proxied) artifacts: download with MLflow's repository for that URI, bound to
        # this server through tracking_uri rather than MLflow's global URI.
        scratch.mkdir(parents=True, exist_ok=True)
        repo = get_artifact_repository(location, tracking_uri=registry_uri)
        return Path(repo.download_artifacts("", dst_path=str(scratch)))


def version_files(registry_uri: str, name: str, version: str, scratch: Path) -> dict[str, str]:
    """sha256 by relative path of every file a version stores."""
    return sha256_tree(version_folder(registry_uri, name, version, scratch))


def tree_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def digest_of(hashes: Mapping[str, str]) -> str:
    """README's content digest: sha256 over `<sha256>  <path>` lines sorted by path."""
    manifest = "".join(f"{hashes[path]}  {path}\n" for path in sorted(hashes))
    return "sha256:" + hashlib.sha256(manifest.encode()).hexdigest()


def get_version(registry_uri: str, name: str, version: str) -> Any:
    with file_store_allowed(registry_uri):
        return mlflow_client(registry_uri).get_model_version(name, version)


def versions_of(registry_uri: str, name: str) -> list[Any]:
    """Every version of `name` in the registry (none if the model or the store is missing)."""
    if registry_uri.startswith("sqlite:") and not Path(registry_uri[len("sqlite:///"):]).exists():
        return []  # opening a missing sqlite store would create it
    if registry_uri.startswith("file:") and not Path(unquote(urlsplit(registry_uri).path)).exists():
        return []
    with file_store_allowed(registry_uri):
        found = mlflow_client(registry_uri).search_model_versions(f"name='{name}'")
    return sorted(found, key=lambda mv: int(mv.version))


def version_numbers(registry_uri: str, name: str) -> list[str]:
    # Stores disagree on the type (the sqlalchemy store says int); the CLI says str.
    return [str(mv.version) for mv in versions_of(registry_uri, name)]


def registered_models(registry_uri: str) -> list[str]:
    if registry_uri.startswith("sqlite:") and not Path(registry_uri[len("sqlite:///"):]).exists():
        return []
    if registry_uri.startswith("file:") and not Path(unquote(urlsplit(registry_uri).path)).exists():
        return []
    with file_store_allowed(registry_uri):
        return [m.name for m in mlflow_client(registry_uri).search_registered_models()]


# -- running the CLI ----------------------------------------------------------------------------


def check_document(document: dict[str, Any]) -> dict[str, Any]:
    """The JSON document has exactly README's keys, with README's types."""
    assert set(document) == TOP_KEYS, document
    assert set(document["source"]) == SOURCE_KEYS, document["source"]
    assert set(document["target"]) == TARGET_KEYS, document["target"]
    assert document["status"] in ("copied", "unchanged", "planned")
    assert isinstance(document["files"], int) and isinstance(document["bytes"], int)
    assert isinstance(document["seconds"], int | float) and document["seconds"] >= 0
    assert document["verified"] in (True, None)
    assert isinstance(document["target"]["aliases"], list)
    return document


def copy_json(*args: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`amlpromote copy-model ARGS -o json` in-process; exit 0 and one valid JSON document."""
    run = cli("copy-model", *args, "--output", "json", env=env)
    assert run.code == 0, f"exit {run.code}\n{run.both}"
    assert "Traceback" not in run.both, run.both
    return check_document(json.loads(run.stdout))  # json.loads fails on any stray text


def cli_process_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "amlpromote", *args]


def subprocess_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMLPROMOTE_", "MLFLOW_"))}
    env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"})
    env.update(extra or {})
    return env


# -- predictions in a separate process ----------------------------------------------------------


def predict_in_subprocess(
    registry_uri: str, model_uri: str, frame_path: Path, cwd: Path
) -> list[Any]:
    """Load `model_uri` with mlflow.pyfunc in a fresh interpreter that knows only
    `registry_uri` (through the environment) and predict on the pickled frame."""
    env = subprocess_env({"MLFLOW_TRACKING_URI": registry_uri, "MLFLOW_REGISTRY_URI": registry_uri})
    if registry_uri.startswith("file:"):
        env["MLFLOW_ALLOW_FILE_STORE"] = "true"
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", PREDICT_SCRIPT, model_uri, str(frame_path)],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"loading {model_uri} from {registry_uri} failed:\n{proc.stderr}"
    predictions: list[Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return predictions


@pytest.fixture(scope="module")
def frame_file(tmp_path_factory: pytest.TempPathFactory, heart_frame: pd.DataFrame) -> Path:
    # Pickle keeps heart_frame's dtypes exactly; a CSV round trip could change them.
    path = tmp_path_factory.mktemp("frame") / "heart.pkl"
    heart_frame.to_pickle(path)
    return path


class SourcePredictions:
    """Each source model's predictions on heart_frame, computed once (in a subprocess, so this
    process's MLflow state is never touched) and only for the sources a test asks about.

    The source is loaded from a private copy of its stored files: `load_model("models:/...")`
    on a local store writes a `registered_model_meta` file INTO the version's artifact folder,
    which would change the very bytes later tests compare against.
    """

    def __init__(self, frame: Path, scratch: Path) -> None:
        self.frame = frame
        self.scratch = scratch
        self._cache: dict[str, list[Any]] = {}

    def of(self, source: Source) -> list[Any]:
        if source.kind not in self._cache:
            work = self.scratch / source.kind
            stored = version_folder(source.read_uri, source.name, source.version, work / "dl")
            private = work / "model"
            shutil.copytree(stored, private)
            assert sha256_tree(private) == source.hashes, "the source changed under the tests"
            self._cache[source.kind] = predict_in_subprocess(
                source.read_uri, str(private), self.frame, work / "cwd")
        return self._cache[source.kind]


@pytest.fixture(scope="module")
def source_predictions(
    frame_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> SourcePredictions:
    return SourcePredictions(frame_file, tmp_path_factory.mktemp("source-predictions"))


# -- source registries: the heart model in each kind of store -----------------------------------


@dataclass(frozen=True)
class Source:
    kind: str
    uri: str  # what the CLI gets (the server's carries credentials)
    read_uri: str  # credential-free, for the test's own reads
    display: str  # what README says is recorded: the URI without credentials
    name: str
    version: str
    run_id: str
    model_id: str  # the source version's LoggedModel
    hashes: dict[str, str]  # sha256 by relative path of the stored files
    sizes: int  # total bytes

    @property
    def digest(self) -> str:
        return digest_of(self.hashes)


def _heart_source(kind: str, uri: str, read_uri: str, scratch: Path) -> Source:
    name = f"e2e-heart-{kind}-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as mp:
        # Module fixtures run outside the per-test working directory; keep strays out of the
        # repository.
        mp.chdir(scratch)
        version = register_heart_model(read_uri, name=name, alias="champion")
        with file_store_allowed(read_uri):
            client = mlflow_client(read_uri)
            client.update_registered_model(name, description=RM_DESCRIPTION)
            for key, value in RM_TAGS.items():
                client.set_registered_model_tag(name, key, value)
            mv = client.get_model_version(name, version)
        folder = version_folder(read_uri, name, version, scratch / "download")
    assert mv.source.startswith("models:/m-"), mv.source  # an MLflow 3 LoggedModel version
    return Source(kind, uri, read_uri, read_uri, name, version, mv.run_id,
                  mv.source.removeprefix("models:/"), sha256_tree(folder), tree_size(folder))


@pytest.fixture(scope="module")
def file_source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    root = tmp_path_factory.mktemp("source-file")
    uri = (root / "mlruns").as_uri()
    return _heart_source("file", uri, uri, root)


@pytest.fixture(scope="module")
def sqlite_source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    root = tmp_path_factory.mktemp("source-sqlite")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return _heart_source("sqlite", uri, uri, root)


@pytest.fixture(scope="module")
def server_source(
    mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory
) -> Source:
    root = tmp_path_factory.mktemp("source-server")
    # The user info is accepted (and ignored) by an unauthenticated server; the product must
    # still keep it out of everything it records.
    with_credentials = f"http://promoter:{SECRET}@{mlflow_server.host}:{mlflow_server.port}"
    source = _heart_source("server", with_credentials, mlflow_server.url, root)
    return source


def source_of(request: pytest.FixtureRequest, kind: str) -> Source:
    source: Source = request.getfixturevalue(f"{kind}_source")
    return source


# -- 1: every pair of store kinds ---------------------------------------------------------------


def target_of(request: pytest.FixtureRequest, kind: str, source_kind: str,
              fresh_stores: FreshStores) -> str:
    if kind == "file":
        return fresh_stores["file"]
    if kind == "sqlite":
        return fresh_stores["sqlite"]
    if kind == "server-unproxied":
        server: MlflowServer = request.getfixturevalue("mlflow_server_unproxied")
    else:
        # Server to server goes between two independent servers.
        fixture = "mlflow_server_b" if source_kind == "server" else "mlflow_server"
        server = request.getfixturevalue(fixture)
    return server.url


def _pair(source: str, target: str, predict: bool = False) -> Any:
    marks = [pytest.mark.mlflow_server] if "server" in (source + target) else []
    label = f"{source}-to-{target}" + ("-predicts" if predict else "")
    return pytest.param(source, target, predict, marks=marks, id=label)


# Predictions cost a fresh interpreter each (~4 s): one per target kind, from varied sources.
# Bytes, digest and tags are checked on every pair.
PAIRS = [
    _pair("file", "file"),
    _pair("file", "sqlite", predict=True),
    _pair("file", "server"),
    _pair("sqlite", "file"),
    _pair("sqlite", "sqlite"),
    _pair("sqlite", "server"),
    _pair("sqlite", "server-unproxied", predict=True),
    _pair("server", "file", predict=True),
    _pair("server", "sqlite"),
    _pair("server", "server", predict=True),
]


@pytest.mark.parametrize(("source_kind", "target_kind", "predict"), PAIRS)
def test_promotion_between_store_kinds(
    source_kind: str,
    target_kind: str,
    predict: bool,
    request: pytest.FixtureRequest,
    fresh_stores: FreshStores,
    unique_model_name: str,
    source_predictions: SourcePredictions,
    frame_file: Path,
    tmp_path: Path,
) -> None:
    source = source_of(request, source_kind)
    target = target_of(request, target_kind, source_kind, fresh_stores)
    # Shared servers outlive this test: a name of its own keeps the target version "1".
    target_name = unique_model_name

    run = cli("copy-model", f"{source.name}/{source.version}", "--source", source.uri,
              "--target", target, "--target-name", target_name, "--output", "json")  # fmt: skip

    assert run.code == 0, run.both
    assert SECRET not in run.both
    doc = check_document(json.loads(run.stdout))
    assert doc["status"] == "copied"
    assert doc["source"] == {"uri": source.display, "name": source.name,
                             "version": source.version, "digest": source.digest}  # fmt: skip
    # fresh_stores are new paths: the run creates those registries (and says so).
    assert doc["target"] == {"uri": target, "name": target_name, "version": "1", "aliases": [],
                             "created_registry": target_kind in ("file", "sqlite")}
    assert (doc["files"], doc["bytes"]) == (len(source.hashes), source.sizes)
    assert doc["verified"] is None

    # Byte-exact: the same files, the same bytes, MLmodel included and nothing added.
    copied = version_files(target, target_name, "1", tmp_path / "target-download")
    assert copied == source.hashes
    assert "MLmodel" in copied

    mv = get_version(target, target_name, "1")
    tags: dict[str, str] = dict(mv.tags)
    assert set(tags) >= PROVENANCE_TAGS, sorted(tags)
    assert tags["amlpromote.digest"] == source.digest
    assert tags["amlpromote.source.uri"] == source.display
    assert tags["amlpromote.source.name"] == source.name
    assert tags["amlpromote.source.version"] == source.version
    assert tags["amlpromote.source.run_id"] == source.run_id
    assert tags["amlpromote.source.model_id"] == source.model_id
    assert re.fullmatch(r"[0-9a-f]{16,}", tags["amlpromote.source.key"])
    assert tags["amlpromote.files"] == str(len(source.hashes))
    assert tags["amlpromote.bytes"] == str(source.sizes)
    assert tags["amlpromote.tool_version"] == __version__
    promoted_at = datetime.strptime(tags["amlpromote.promoted_at"], "%Y-%m-%dT%H:%M:%SZ")
    age = datetime.now(UTC) - promoted_at.replace(tzinfo=UTC)
    assert timedelta(seconds=-5) < age < timedelta(minutes=10), tags["amlpromote.promoted_at"]
    assert "amlpromote.chain" not in tags  # the source was never promoted itself
    # No credential in any recorded value, in any spelling.
    assert not any(SECRET in value or "promoter" in value for value in tags.values()), tags
    # Carried: the version's description and tags, and (new target model) the model's.
    assert mv.description == HEART_VERSION_DESCRIPTION
    assert HEART_VERSION_TAGS.items() <= tags.items()
    with file_store_allowed(target):
        model = mlflow_client(target).get_registered_model(target_name)
    assert model.description == RM_DESCRIPTION
    assert RM_TAGS.items() <= dict(model.tags).items()

    if predict:
        expected = source_predictions.of(source)
        assert len(expected) == 100 and set(expected) <= {0, 1}
        got = predict_in_subprocess(target, f"models:/{target_name}/1", frame_file,
                                    tmp_path / "predict-cwd")
        assert got == expected


# -- 2: idempotency and the options ------------------------------------------------------------


def test_rerun_is_unchanged_with_the_same_version(
    sqlite_source: Source, fresh_stores: FreshStores
) -> None:
    args = (sqlite_source.name, "--source", sqlite_source.uri, "--target", fresh_stores["sqlite"])

    first = copy_json(*args)
    second = copy_json(*args)

    assert first["status"] == "copied"
    assert second["status"] == "unchanged"
    assert second["target"]["version"] == first["target"]["version"] == "1"
    assert second["source"]["digest"] == first["source"]["digest"] == sqlite_source.digest
    assert version_numbers(fresh_stores["sqlite"], sqlite_source.name) == ["1"]


def test_force_registers_a_new_version(sqlite_source: Source, fresh_stores: FreshStores) -> None:
    args = (sqlite_source.name, "--source", sqlite_source.uri, "--target", fresh_stores["sqlite"])
    copy_json(*args)

    forced = copy_json(*args, "--force")

    assert forced["status"] == "copied"
    assert forced["target"]["version"] == "2"
    versions = versions_of(fresh_stores["sqlite"], sqlite_source.name)
    assert [str(mv.version) for mv in versions] == ["1", "2"]
    # Both are the same promotion of the same bytes.
    assert {mv.tags["amlpromote.digest"] for mv in versions} == {sqlite_source.digest}
    # A later plain run still finds an identical version and does nothing.
    assert copy_json(*args)["status"] == "unchanged"
    assert len(versions_of(fresh_stores["sqlite"], sqlite_source.name)) == 2


@pytest.mark.parametrize(
    "target_kind", ["file", "sqlite", pytest.param("server", marks=pytest.mark.mlflow_server)]
)
def test_dry_run_plans_and_changes_nothing(
    target_kind: str,
    sqlite_source: Source,
    fresh_stores: FreshStores,
    request: pytest.FixtureRequest,
    unique_model_name: str,
) -> None:
    target = target_of(request, target_kind, "sqlite", fresh_stores)

    doc = copy_json(sqlite_source.name, "--source", sqlite_source.uri, "--target", target,
                    "--target-name", unique_model_name, "-a", "staging", "--dry-run")  # fmt: skip

    assert doc["status"] == "planned"
    assert doc["target"] == {"uri": target, "name": unique_model_name, "version": None,
                             "aliases": ["staging"], "created_registry": False}  # fmt: skip
    assert doc["source"]["version"] == sqlite_source.version
    assert doc["files"] == len(sqlite_source.hashes)
    assert doc["bytes"] == sqlite_source.sizes
    assert doc["verified"] is None
    if target_kind == "server":
        assert unique_model_name not in registered_models(target)
    else:
        # Not even an empty store: a dry run writes nothing at all into a local target.
        store = Path(target[len("sqlite:///"):]) if target_kind == "sqlite" \
            else Path(unquote(urlsplit(target).path))
        assert not store.exists(), sorted(p.name for p in store.parent.rglob("*"))
        assert list(store.parent.iterdir()) == []


def test_target_name(sqlite_source: Source, fresh_stores: FreshStores) -> None:
    target = fresh_stores["file"]

    doc = copy_json(sqlite_source.name, "--source", sqlite_source.uri, "--target", target,
                    "--target-name", "heart-prod")  # fmt: skip

    assert doc["target"]["name"] == "heart-prod"
    assert registered_models(target) == ["heart-prod"]
    mv = get_version(target, "heart-prod", "1")
    assert mv.tags["amlpromote.source.name"] == sqlite_source.name


def test_aliases_repeatable_and_copied(sqlite_source: Source, fresh_stores: FreshStores) -> None:
    target = fresh_stores["sqlite"]
    base = (sqlite_source.name, "--source", sqlite_source.uri, "--target", target)

    doc = copy_json(*base, "--alias", "staging", "-a", "canary", "--copy-aliases")

    # The source version carries the alias "champion".
    assert doc["target"]["aliases"] == ["canary", "champion", "staging"]
    mv = get_version(target, sqlite_source.name, "1")
    assert sorted(mv.aliases) == ["canary", "champion", "staging"]

    # A re-run is unchanged, yet still sets the aliases it is asked for.
    again = copy_json(*base, "--alias", "prod")
    assert again["status"] == "unchanged"
    assert again["target"]["aliases"] == ["canary", "champion", "prod", "staging"]
    # Without --copy-aliases the source's aliases are not carried.
    other = fresh_stores["file"]
    plain = copy_json(sqlite_source.name, "--source", sqlite_source.uri, "--target", other)
    assert plain["target"]["aliases"] == []


def test_verify_reports_verified(sqlite_source: Source, fresh_stores: FreshStores) -> None:
    args = (sqlite_source.name, "--source", sqlite_source.uri, "--target", fresh_stores["file"])

    copied = copy_json(*args, "--verify")
    unchanged = copy_json(*args, "--verify")

    assert (copied["status"], copied["verified"]) == ("copied", True)
    # On a re-run --verify re-reads the existing target version.
    assert (unchanged["status"], unchanged["verified"]) == ("unchanged", True)
    assert copy_json(*args)["verified"] is None


def test_quiet_prints_exactly_name_slash_version(
    sqlite_source: Source, fresh_stores: FreshStores
) -> None:
    args = ("--source", sqlite_source.uri, "--target", fresh_stores["sqlite"])

    first = cli("copy-model", sqlite_source.name, *args, "-q")
    # The global form, before the command name, means the same.
    second = cli("-q", "copy-model", sqlite_source.name, *args)

    assert (first.code, second.code) == (0, 0)
    assert first.stdout == f"{sqlite_source.name}/1\n"
    assert second.stdout == f"{sqlite_source.name}/1\n"


def test_other_source_versions_make_new_versions(
    multi_source: MultiSource, fresh_stores: FreshStores
) -> None:
    args = ("--source", multi_source.uri, "--target", fresh_stores["sqlite"])

    one = copy_json(f"{multi_source.name}/1", *args)
    two = copy_json(f"{multi_source.name}/2", *args)
    one_again = copy_json(f"{multi_source.name}/1", *args)

    assert [d["status"] for d in (one, two, one_again)] == ["copied", "copied", "unchanged"]
    assert [d["target"]["version"] for d in (one, two, one_again)] == ["1", "2", "1"]
    versions = versions_of(fresh_stores["sqlite"], multi_source.name)
    assert [mv.tags["amlpromote.source.version"] for mv in versions] == ["1", "2"]
    assert [mv.tags["amlpromote.digest"] for mv in versions] == [
        multi_source.digests["1"], multi_source.digests["2"]]  # fmt: skip


def test_loading_the_model_does_not_break_reruns(
    fresh_stores: FreshStores, unique_model_name: str, frame_file: Path, tmp_path: Path
) -> None:
    """Loading `models:/NAME/VERSION` from a local store makes MLflow write a
    `registered_model_meta` file into the version's own folder. That is MLflow's metadata, not
    the model: it must neither be promoted, nor turn a re-run into a new copy, nor fail
    --verify after a consumer loaded the promoted version."""
    source, target = fresh_stores["file"], fresh_stores["sqlite"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        register_heart_model(source, name=unique_model_name)
    model_hashes = version_files(source, unique_model_name, "1", tmp_path / "unused")
    expected = predict_in_subprocess(source, f"models:/{unique_model_name}/1", frame_file,
                                     tmp_path / "load-source")  # fmt: skip
    loaded = version_files(source, unique_model_name, "1", tmp_path / "unused")
    assert set(loaded) - set(model_hashes) == {"registered_model_meta"}  # what MLflow does
    args = (unique_model_name, "--source", source, "--target", target, "--verify")

    first = copy_json(*args)
    got = predict_in_subprocess(target, f"models:/{unique_model_name}/1", frame_file,
                                tmp_path / "load-target")  # fmt: skip
    again = copy_json(*args)

    assert first["status"] == "copied"
    assert first["source"]["digest"] == digest_of(model_hashes)
    assert got == expected
    assert (again["status"], again["verified"]) == ("unchanged", True)
    assert again["target"]["version"] == "1"
    assert version_numbers(target, unique_model_name) == ["1"]
    copied = version_files(target, unique_model_name, "1", tmp_path / "unused")
    # The target's own load wrote its own metadata file; the promoted bytes are the model's.
    assert {k: v for k, v in copied.items() if k != "registered_model_meta"} == model_hashes


# -- 3: provenance over two hops ----------------------------------------------------------------


def test_provenance_chain_over_two_hops(
    sqlite_source: Source, fresh_stores: FreshStores, tmp_path: Path
) -> None:
    a, b, c = sqlite_source.uri, fresh_stores["file"], fresh_stores["sqlite"]
    name = sqlite_source.name

    ab = copy_json(name, "--source", a, "--target", b)
    bc = copy_json(f"{name}/{ab['target']['version']}", "--source", b, "--target", c)

    assert (ab["status"], bc["status"]) == ("copied", "copied")
    mv_b = get_version(b, name, "1")
    mv_c = get_version(c, name, "1")
    tags = dict(mv_c.tags)
    assert tags["amlpromote.source.uri"] == b
    assert tags["amlpromote.source.name"] == name
    assert tags["amlpromote.source.version"] == "1"
    # Every hop keeps the bytes, so every hop has the same digest.
    assert tags["amlpromote.digest"] == mv_b.tags["amlpromote.digest"] == sqlite_source.digest
    chain = json.loads(tags["amlpromote.chain"])
    assert chain == [{
        "uri": a,
        "name": name,
        "version": sqlite_source.version,
        "digest": sqlite_source.digest,
        "at": mv_b.tags["amlpromote.promoted_at"],
    }]  # fmt: skip
    # B's own provenance moved into the chain rather than being carried as plain tags, and
    # the user's tags went all the way.
    assert HEART_VERSION_TAGS.items() <= tags.items()
    assert version_files(c, name, "1", tmp_path / "c") == sqlite_source.hashes


# -- 4: every REF form --------------------------------------------------------------------------


@dataclass(frozen=True)
class MultiSource:
    uri: str
    name: str
    digests: dict[str, str]  # by version


@pytest.fixture(scope="module")
def multi_source(tmp_path_factory: pytest.TempPathFactory) -> MultiSource:
    """A sqlite registry with three versions of different content: the alias `champion` on 2,
    the legacy stage Production on 1, version 3 the latest."""
    root = tmp_path_factory.mktemp("source-multi")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    name = f"e2e-multi-{uuid.uuid4().hex[:8]}"
    digests: dict[str, str] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for number in (1, 2, 3):
            files = {
                "MLmodel": f"artifact_path: model\nflavors: {{}}\nrelease: {number}\n".encode(),
                "weights/w.bin": bytes([number]) * (1000 + number),
            }
            version = register_raw_model(uri, name, files, description=f"release {number}")
            assert version == str(number)
            digests[version] = digest_of(
                {path: hashlib.sha256(data).hexdigest() for path, data in files.items()})
        client = mlflow_client(uri)
        client.set_registered_model_alias(name, "champion", "2")
        with warnings.catch_warnings():
            # Stages are deprecated in MLflow, yet registries still hold them and the README
            # promises NAME/Production.
            warnings.simplefilter("ignore", FutureWarning)
            client.transition_model_version_stage(name, "1", "Production")
    return MultiSource(uri, name, digests)


@pytest.mark.parametrize(
    ("ref", "version"),
    [
        ("{name}", "3"),
        ("{name}/2", "2"),
        ("{name}@champion", "2"),
        ("{name}/latest", "3"),
        ("models:/{name}/1", "1"),
        ("models:/{name}@champion", "2"),
        ("{name}/Production", "1"),
    ],
)
def test_every_ref_form(
    ref: str, version: str, multi_source: MultiSource, fresh_stores: FreshStores, tmp_path: Path
) -> None:
    target = fresh_stores["sqlite"]

    doc = copy_json(ref.format(name=multi_source.name), "--source", multi_source.uri,
                    "--target", target)  # fmt: skip

    assert doc["status"] == "copied"
    assert doc["source"]["version"] == version
    assert doc["source"]["digest"] == multi_source.digests[version]
    mv = get_version(target, multi_source.name, "1")
    assert mv.tags["amlpromote.source.version"] == version
    assert mv.description == f"release {version}"
    assert digest_of(version_files(target, multi_source.name, "1", tmp_path)) == \
        multi_source.digests[version]


# -- 5: concurrent runs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target_kind", ["sqlite", pytest.param("server", marks=pytest.mark.mlflow_server)]
)
def test_concurrent_runs_end_with_one_version(
    target_kind: str,
    sqlite_source: Source,
    fresh_stores: FreshStores,
    request: pytest.FixtureRequest,
    unique_model_name: str,
    tmp_path: Path,
) -> None:
    if target_kind == "sqlite":
        # A registry that does not exist yet, on purpose: two first runs (CI jobs on a new
        # registry) also race creating its schema.
        target = fresh_stores["sqlite"]
    else:
        target = request.getfixturevalue("mlflow_server_b").url
    cmd = cli_process_cmd("copy-model", sqlite_source.name, "--source", sqlite_source.uri,
                          "--target", target, "--target-name", unique_model_name, "-o", "json")
    env = subprocess_env()

    procs = [
        subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    outputs = [proc.communicate(timeout=180) for proc in procs]

    for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, f"exit {proc.returncode}\n{stdout}{stderr}"
    docs = [check_document(json.loads(stdout)) for stdout, _ in outputs]
    assert sorted(d["status"] for d in docs) == ["copied", "unchanged"], docs
    assert docs[0]["target"]["version"] == docs[1]["target"]["version"]
    versions = versions_of(target, unique_model_name)
    same_source = [mv for mv in versions
                   if mv.tags.get("amlpromote.source.name") == sqlite_source.name]
    assert len(same_source) == 1, [(mv.version, mv.tags) for mv in versions]
    assert len(versions) == 1
    assert str(same_source[0].version) == docs[0]["target"]["version"]
    assert same_source[0].tags["amlpromote.digest"] == sqlite_source.digest
    assert version_files(target, unique_model_name, str(same_source[0].version),
                         tmp_path / "download") == sqlite_source.hashes  # fmt: skip


# -- 6: an interrupted run ----------------------------------------------------------------------

BIG_FILES = 4
BIG_FILE_SIZE = 50 * 1024 * 1024


@pytest.mark.timeout(300)
def test_interrupted_run_leaves_no_version_and_the_next_run_completes(
    fresh_stores: FreshStores,
    mlflow_server_b: MlflowServer,
    flaky_proxy_factory: Callable[..., FlakyProxy],
    unique_model_name: str,
    tmp_path: Path,
) -> None:
    # ~200 MB in a few big files, written to disk rather than held in memory.
    originals = tmp_path / "originals"
    originals.mkdir()
    files: dict[str, bytes | os.PathLike[str]] = {
        "MLmodel": b"artifact_path: model\nflavors: {}\n"}
    for index in range(BIG_FILES):
        path = originals / f"part-{index}.bin"
        with path.open("wb") as handle:
            for _ in range(BIG_FILE_SIZE // (1 << 20)):
                handle.write(os.urandom(1 << 20))
        files[f"weights/part-{index}.bin"] = path
    source = fresh_stores["sqlite"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        version = register_raw_model(source, "big", files)
    for path in originals.iterdir():
        path.unlink()  # the source store holds its own copy
    source_hashes = version_files(source, "big", version, tmp_path / "unused")
    assert len(source_hashes) == BIG_FILES + 1

    # The last part's upload fails with a long Retry-After: the run is then deterministically
    # midway (the other parts are written, one is not) when it is killed, however fast the disk.
    last = f"part-{BIG_FILES - 1}.bin"
    proxy = flaky_proxy_factory(mlflow_server_b.url, always_fail=True, retry_after=10,
                                match=rf"^PUT /api/2\.0/mlflow-artifacts/artifacts/.*/{last}")
    target = proxy.url
    cmd = cli_process_cmd("copy-model", f"big/{version}", "--source", source,
                          "--target", target, "--target-name", unique_model_name,
                          "--parallel", "2", "-o", "json")  # fmt: skip
    proc = subprocess.Popen(cmd, env=subprocess_env(), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        staged = _wait_for_partial_upload(proxy, mlflow_server_b, unique_model_name, proc)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    # Midway: some parts were written into the staging area, not all of them.
    landed = {p.name for p in staged.rglob("part-*.bin")}
    assert landed and last not in landed, landed
    # ... and a reader of the target sees no version at all.
    assert versions_of(mlflow_server_b.url, unique_model_name) == []

    proxy.heal()
    doc = copy_json(f"big/{version}", "--source", source, "--target", target,
                    "--target-name", unique_model_name)  # fmt: skip

    assert doc["status"] == "copied"
    assert version_numbers(mlflow_server_b.url, unique_model_name) == ["1"]
    assert version_files(mlflow_server_b.url, unique_model_name, "1",
                         tmp_path / "download") == source_hashes  # fmt: skip


def _wait_for_partial_upload(proxy: FlakyProxy, server: MlflowServer, label: str,
                             proc: subprocess.Popen[str], timeout: float = 120) -> Path:
    """Wait until the run's staged logged model holds a complete part and the upload of the
    last part has been refused; returns the staging folder on the server's disk."""
    client = mlflow_client(server.url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stdout, stderr = proc.communicate()
            raise AssertionError(f"the run ended early ({proc.returncode}):\n{stdout}{stderr}")
        if proxy.counters.failed >= 1:
            experiment = client.get_experiment_by_name("amlpromote")
            if experiment is not None:
                logged = [m for m in client.search_logged_models([experiment.experiment_id])
                          if m.name.startswith(label)]
                if logged:
                    assert len(logged) == 1
                    assert str(logged[0].status).endswith("PENDING"), logged[0].status
                    location = urlsplit(logged[0].artifact_location)
                    assert location.scheme == "mlflow-artifacts", logged[0].artifact_location
                    folder = server.artifacts_dir / unquote(location.path).lstrip("/")
                    if any(folder.rglob("part-*.bin")):
                        return folder
        time.sleep(0.1)
    raise AssertionError("the run never got midway")


# -- 7: no global state leaks -------------------------------------------------------------------


@pytest.mark.parametrize(("source_kind", "target_kind"), [("file", "sqlite"), ("sqlite", "file")])
def test_in_process_copy_leaves_no_global_state(
    source_kind: str,
    target_kind: str,
    request: pytest.FixtureRequest,
    fresh_stores: FreshStores,
) -> None:
    import mlflow

    source = source_of(request, source_kind)
    cwd = Path.cwd()
    tracking_before = mlflow.get_tracking_uri()
    registry_before = mlflow.get_registry_uri()
    env_before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}

    target = fresh_stores["file"] if target_kind == "file" else fresh_stores["sqlite"]

    doc = copy_json(source.name, "--source", source.uri, "--target", target)

    assert doc["status"] == "copied"
    assert mlflow.get_tracking_uri() == tracking_before
    assert mlflow.get_registry_uri() == registry_before
    assert {k: os.environ.get(k) for k in env_before} == env_before
    strays = [p.name for p in cwd.iterdir()
              if p.name in ("mlflow.db", "mlruns", "mlartifacts", "mlflow-artifacts")]
    assert strays == [], f"the copy wrote {strays} into the working directory"
