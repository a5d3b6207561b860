"""copy-model re-runs and dry runs: a re-run decides "unchanged" from the source version's
identity and file listing without reading file contents; `--verify` still reads every byte; a
dry run never writes (no alias either); bad aliases and target names are refused before
anything is read or written."""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from support import FreshStores
from support.cli import cli
from support.flaky_proxy import FlakyProxy
from support.mlflow_server import MlflowServer
from support.models import register_raw_model, stored_folder

from amlpromote.core.names import alias_problem, target_name_problem
from amlpromote.core.registries.lineage import listing_digest
from amlpromote.core.storage.artifacts import ArtifactFile

MLMODEL = b"artifact_path: model\nflavors:\n  python_function:\n    loader_module: none\n"
WEIGHTS = bytes(range(256)) * 64  # 16 KiB


def raw_files() -> dict[str, bytes | os.PathLike[str]]:
    return {"MLmodel": MLMODEL, "weights.bin": WEIGHTS, "sub/extra.txt": b"extra\n"}


def copy(*args: str) -> dict[str, Any]:
    run = cli("copy-model", *args, "--output", "json")
    assert run.code == 0, run.both
    document: dict[str, Any] = json.loads(run.stdout)
    return document


def versions_in(uri: str, name: str) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))


def tree_state(path: Path) -> dict[str, str]:
    """sha256 of every file under `path` (or of the file itself)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture
def sqlite_source(tmp_path: Path) -> tuple[str, str]:
    uri = f"sqlite:///{tmp_path / 'source' / 'mlflow.db'}"
    (tmp_path / "source").mkdir()
    name = f"rerun-{uuid.uuid4().hex[:8]}"
    register_raw_model(uri, name, raw_files(), alias="champion")
    return uri, name


def test_rerun_decides_unchanged_from_the_listing_without_reading(
        sqlite_source: tuple[str, str], fresh_stores: FreshStores) -> None:
    source, name = sqlite_source
    target = fresh_stores["sqlite"]
    first = copy(f"{name}/1", "--source", source, "--target", target)
    assert first["status"] == "copied"

    # Same size, same modification time, other bytes: only a read could tell. The re-run must
    # not read, so it reports the recorded digest and "unchanged".
    weights = stored_folder(source, name) / "weights.bin"
    stat = weights.stat()
    weights.write_bytes(bytes(reversed(WEIGHTS)))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = copy(f"{name}/1", "--source", source, "--target", target)
    assert again["status"] == "unchanged"
    assert again["source"]["digest"] == first["source"]["digest"]
    assert again["target"]["version"] == "1"

    # --verify reads every byte of the source: the content changed, so a new version.
    verified = copy(f"{name}/1", "--source", source, "--target", target, "--verify")
    assert verified["status"] == "copied"
    assert verified["target"]["version"] == "2"
    assert verified["source"]["digest"] != first["source"]["digest"]
    assert verified["verified"] is True


def test_a_changed_listing_is_decided_by_reading(
        sqlite_source: tuple[str, str], fresh_stores: FreshStores) -> None:
    source, name = sqlite_source
    target = fresh_stores["sqlite"]
    first = copy(f"{name}/1", "--source", source, "--target", target)
    weights = stored_folder(source, name) / "weights.bin"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    run = cli("copy-model", f"{name}/1", "--source", source, "--target", target)
    assert run.code == 0, run.both
    assert "reading the source to compare digests" in run.stderr
    assert "unchanged" in run.stdout
    assert [str(v.version) for v in versions_in(target, name)] == ["1"]
    assert versions_in(target, name)[0].tags["amlpromote.digest"] == first["source"]["digest"]


@pytest.mark.parametrize("extra", [(), ("--verify",)])
def test_server_rerun_downloads_no_file(
        mlflow_server: MlflowServer, flaky_proxy: FlakyProxy, fresh_stores: FreshStores,
        extra: tuple[str, ...]) -> None:
    name = f"rerun-server-{uuid.uuid4().hex[:8]}"
    register_raw_model(mlflow_server.url, name, raw_files())
    target = fresh_stores["sqlite"]
    assert copy(f"{name}/1", "--source", flaky_proxy.url, "--target", target)["status"] \
        == "copied"
    proxy_downloads = re.compile(r"^/api/2\.0/mlflow-artifacts/artifacts/.+")

    flaky_proxy.reset_counters()
    again = copy(f"{name}/1", "--source", flaky_proxy.url, "--target", target, *extra)
    assert again["status"] == "unchanged"
    downloads = [r.path for r in flaky_proxy.records
                 if r.method == "GET" and proxy_downloads.match(r.path.split("?", 1)[0])]
    if extra:
        assert len(downloads) == len(raw_files()), downloads  # --verify reads every file
    else:
        assert downloads == []
        assert flaky_proxy.requests_seen > 0  # the re-run did ask the source (the listing)


def test_dry_run_over_an_identical_promotion_sets_no_alias(
        sqlite_source: tuple[str, str], fresh_stores: FreshStores) -> None:
    source, name = sqlite_source
    target = fresh_stores["sqlite"]
    copy(f"{name}/1", "--source", source, "--target", target)
    database = Path(target.removeprefix("sqlite:///"))
    before = tree_state(database.parent)

    plan = copy(f"{name}/1", "--source", source, "--target", target, "-a", "canary",
                "--dry-run")

    assert plan["status"] == "planned"
    assert plan["plan"] == {"copy": False, "existing_version": "1", "set_aliases": ["canary"]}
    assert plan["target"]["aliases"] == ["canary"]
    assert tree_state(database.parent) == before
    assert list(versions_in(target, name)[0].aliases) == []


def test_dry_run_of_a_new_promotion_plans_a_copy(
        sqlite_source: tuple[str, str], fresh_stores: FreshStores) -> None:
    source, name = sqlite_source
    plan = copy(f"{name}@champion", "--source", source, "--target", fresh_stores["sqlite"],
                "--copy-aliases", "--dry-run")
    assert plan["plan"] == {"copy": True, "existing_version": None,
                            "set_aliases": ["champion"]}
    assert not Path(fresh_stores["sqlite"].removeprefix("sqlite:///")).exists()


@pytest.mark.parametrize("args, message", [
    (("-a", "good", "-a", "bad alias"), "--alias: 'bad alias' has characters"),
    (("-a", "latest"), "'latest' is reserved"),
    (("-a", "V12"), "'V12' is reserved"),
    (("--target-name", "team/model"), "cannot contain '/' or ':'"),
    (("--target-name", "  "), "cannot be blank"),
])
def test_bad_alias_or_target_name_writes_nothing(
        sqlite_source: tuple[str, str], fresh_stores: FreshStores, args: tuple[str, ...],
        message: str) -> None:
    source, name = sqlite_source
    before = tree_state(Path(source.removeprefix("sqlite:///")).parent)
    run = cli("copy-model", f"{name}/1", "--source", source, "--target", fresh_stores["sqlite"],
              *args)
    assert run.code == 2, run.both
    assert message in run.stderr
    assert "Traceback" not in run.both
    assert not Path(fresh_stores["sqlite"].removeprefix("sqlite:///")).parent.joinpath(
        "mlflow.db").exists()
    assert tree_state(Path(source.removeprefix("sqlite:///")).parent) == before


def test_bad_alias_is_refused_before_the_azure_target_is_discovered() -> None:
    # No Azure anywhere: had the check come after discovery, this would fail on sign-in.
    run = cli("copy-model", "m/1", "--source", "sqlite:///nowhere.db", "--workspace", "ws-one",
              "--resource-group", "rg", "--subscription", "00000000-0000-0000-0000-000000000000",
              "-a", "no way")
    assert run.code == 2, run.both
    assert "--alias" in run.stderr


def test_name_rules() -> None:
    assert alias_problem("champion-2_b") is None
    assert alias_problem("") is not None
    assert alias_problem("x" * 256) is not None
    assert target_name_problem("main.fraud.scorer", "sqlite") is None
    assert target_name_problem("main.fraud.scorer", "azureml") is not None
    assert target_name_problem("../up", "file") is not None
    assert target_name_problem("ok-name", "azureml") is None


def test_listing_digest() -> None:
    a = [ArtifactFile("MLmodel", 10, "mtime:1"), ArtifactFile("b/c", 3)]
    assert listing_digest(a) == listing_digest(list(reversed(a)))
    assert listing_digest(a) != listing_digest([ArtifactFile("MLmodel", 11, "mtime:1"), a[1]])
    assert listing_digest(a) != listing_digest([ArtifactFile("MLmodel", 10, "mtime:2"), a[1]])
    assert listing_digest([ArtifactFile("MLmodel", None)]) is None
