"""`amlpromote models list` / `models show` through the CLI, against real registries (README
"amlpromote models").

A model is promoted with copy-model over two hops (file store -> sqlite -> sqlite), then read
back on both sides. Expectations come from outside the product: copy-model's own JSON documents,
the stored files read straight from the folders (or from Azurite), and the registries through
MLflow's client. The other registry kinds are read the same way: an `mlflow server`, an Azure ML
workspace and registry (Azure ML in a box), a Databricks workspace registry (Databricks in a box).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from azureml_box.testing import (
    REGISTRY,
    RESOURCE_GROUP,
    SUBSCRIPTION,
    WORKSPACE,
    BoxWorkspaces,
    assert_no_secrets,
)
from databricks_box import DatabricksBox
from mlflow import MlflowClient
from support.cli import Run, cli, run_cli_reporting_imports
from support.mlflow_server import MlflowServer
from support.models import register_heart_model, register_raw_model, stored_folder

from amlpromote import __version__
from amlpromote.core.promote import inventory
from amlpromote.core.uris import parse_registry_uri

pytest_plugins = ["azureml_box.fixtures"]

HEART = "uci-heart-classifier"
# README "amlpromote models": the JSON documents' keys, exactly.
LIST_KEYS = {"registry", "side", "models", "truncated"}
MODEL_KEYS = {"name", "versions", "latest", "aliases", "promoted_from"}
SHOW_KEYS = {"registry", "side", "name", "description", "aliases", "versions"}
VERSION_KEYS = {"version", "created", "aliases", "stage", "status", "provenance"}
DETAIL_KEYS = SHOW_KEYS - {"versions"} | VERSION_KEYS | {"run_id", "source", "tags", "files"}
PROVENANCE_KEYS = {"source", "digest", "promoted_at", "tool_version", "files", "bytes", "chain",
                   "chain_dropped"}


@dataclass(frozen=True)
class Hops:
    """heart@champion in a file store (a), promoted to sqlite (b), and from there to sqlite (c)."""

    a: str
    b: str
    c: str
    first: dict[str, Any]  # copy-model's JSON of a -> b
    second: dict[str, Any]  # and of b -> c


def copy(*args: str) -> dict[str, Any]:
    run = cli("copy-model", *args, "-o", "json")
    assert run.code == 0, run.both
    document: dict[str, Any] = run.document
    return document


def models(*args: str) -> Run:
    run = cli("models", *args)
    assert "Traceback" not in run.both, run.both
    return run


def models_json(*args: str) -> dict[str, Any]:
    run = models(*args, "-o", "json")
    assert run.code == 0, run.both
    document: dict[str, Any] = json.loads(run.stdout)  # fails on any stray text
    return document


def mlflow_tags(uri: str, name: str, version: str) -> dict[str, str]:
    return dict(MlflowClient(tracking_uri=uri, registry_uri=uri)
                .get_model_version(name, version).tags)


@pytest.fixture(scope="module")
def hops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hops]:
    root = tmp_path_factory.mktemp("models-hops")
    a = (root / "a" / "mlruns").as_uri()
    (root / "b").mkdir()
    (root / "c").mkdir()
    b = f"sqlite:///{root / 'b' / 'mlflow.db'}"
    c = f"sqlite:///{root / 'c' / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch, contextlib.chdir(root):
        patch.setenv("HOME", str(root / "home"))
        patch.setenv("XDG_CONFIG_HOME", str(root / "home" / ".config"))
        patch.setenv("XDG_DATA_HOME", str(root / "home" / ".data"))
        register_heart_model(a, name=HEART, alias="champion")
        first = copy(f"{HEART}@champion", "--source", a, "--target", b, "--alias", "champion")
        second = copy(f"{HEART}/1", "--source", b, "--target", c)
        yield Hops(a, b, c, first, second)


# -- models list ------------------------------------------------------------------------------


def test_list_the_target_names_where_the_latest_version_came_from(hops: Hops) -> None:
    document = models_json("list", "--target", hops.c)

    assert set(document) == LIST_KEYS
    assert document["registry"] == parse_registry_uri(hops.c).display
    assert document["side"] == "target"
    assert document["truncated"] is False
    assert document["models"] == [{
        "name": HEART, "versions": 1, "latest": "1", "aliases": {},
        "promoted_from": {"uri": parse_registry_uri(hops.b).display, "name": HEART,
                          "version": "1"}}]


def test_list_with_only_source_typed_reads_the_source(hops: Hops) -> None:
    document = models_json("list", "--source", hops.a)

    assert document["side"] == "source"
    assert document["registry"] == parse_registry_uri(hops.a).display
    (model,) = document["models"]
    assert set(model) == MODEL_KEYS
    assert model == {"name": HEART, "versions": 1, "latest": "1",
                     "aliases": {"champion": "1"}, "promoted_from": None}


def test_a_profile_is_read_on_either_side(hops: Hops) -> None:
    saved = cli("configure", "hop", "--source", hops.b, "--target", hops.c)
    assert saved.code == 0, saved.both

    target = models_json("list", "--profile", "hop")
    source = models_json("list", "--profile", "hop", "--from", "source")

    assert (target["side"], target["registry"]) == ("target", parse_registry_uri(hops.c).display)
    assert (source["side"], source["registry"]) == ("source", parse_registry_uri(hops.b).display)
    # b's version came from a and carries the alias copy-model set.
    assert source["models"][0]["aliases"] == {"champion": "1"}
    assert source["models"][0]["promoted_from"]["uri"] == parse_registry_uri(hops.a).display


def test_list_human_output_is_a_table(hops: Hops) -> None:
    run = models("list", "--target", hops.b)

    assert run.code == 0, run.both
    lines = run.stdout.splitlines()
    assert lines[0] == f"1 model in the target registry {parse_registry_uri(hops.b).display}"
    assert lines[1].split() == ["model", "versions", "latest", "aliases", "latest", "promoted",
                                "from"]
    assert lines[2].split()[:4] == [HEART, "1", "1", "champion=1"]
    assert f"{HEART}/1 from {parse_registry_uri(hops.a).display}" in lines[2]
    quiet = models("list", "--target", hops.b, "-q")
    assert quiet.stdout == f"{HEART}\n"


def test_list_reads_every_page_and_max_stops_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path / 'many.db'}"
    names = [f"model-{i}" for i in range(5)]
    for name in names:
        register_raw_model(uri, name, {"MLmodel": b"flavors: {}\n"})
    register_raw_model(uri, "model-0", {"MLmodel": b"flavors: {}\n", "x": b"2"})
    # Pages of two: five models take three pages.
    monkeypatch.setattr(inventory, "PAGE_SIZE", 2)

    every = models_json("list", "--target", uri)
    first = models_json("list", "--target", uri, "--max", "3")
    exact = models_json("list", "--target", uri, "--max", "5")

    assert [m["name"] for m in every["models"]] == names and every["truncated"] is False
    assert [m["versions"] for m in every["models"]] == [2, 1, 1, 1, 1]
    assert every["models"][0]["latest"] == "2"
    assert [m["name"] for m in first["models"]] == names[:3] and first["truncated"] is True
    assert len(exact["models"]) == 5 and exact["truncated"] is False


# -- models show ------------------------------------------------------------------------------


def test_show_a_model_after_two_hops_has_the_provenance_and_the_chain(hops: Hops) -> None:
    document = models_json("show", HEART, "--target", hops.c)

    assert set(document) == SHOW_KEYS
    assert (document["name"], document["side"]) == (HEART, "target")
    (version,) = document["versions"]
    assert set(version) == VERSION_KEYS
    assert version["version"] == hops.second["target"]["version"] == "1"
    assert version["status"] == "READY"
    assert version["aliases"] == []
    provenance = version["provenance"]
    assert set(provenance) == PROVENANCE_KEYS
    b_tags = mlflow_tags(hops.b, HEART, "1")
    c_tags = mlflow_tags(hops.c, HEART, "1")
    assert provenance["source"] == {
        "uri": parse_registry_uri(hops.b).display, "name": HEART, "version": "1",
        "run_id": c_tags.get("amlpromote.source.run_id"),
        "model_id": c_tags["amlpromote.source.model_id"]}
    # Byte-exact twice: every hop has the digest copy-model reported.
    assert provenance["digest"] == hops.second["source"]["digest"] == hops.first["source"]["digest"]
    assert provenance["tool_version"] == __version__
    assert provenance["files"] == hops.second["files"]
    assert provenance["bytes"] == hops.second["bytes"]
    assert provenance["chain"] == [{
        "uri": parse_registry_uri(hops.a).display, "name": HEART, "version": "1",
        "digest": hops.first["source"]["digest"], "at": b_tags["amlpromote.promoted_at"]}]
    assert provenance["chain_dropped"] == 0


def test_show_a_source_model_that_was_never_promoted(hops: Hops) -> None:
    document = models_json("show", HEART, "--source", hops.a)

    assert document["side"] == "source"
    assert document["aliases"] == {"champion": "1"}
    (version,) = document["versions"]
    assert version["provenance"] is None
    assert version["aliases"] == ["champion"]
    assert version["stage"] == "None"  # MLflow's legacy stage of a version never staged


def test_show_one_version_by_alias_in_full_with_its_files(hops: Hops) -> None:
    document = models_json("show", f"{HEART}@champion", "--target", hops.b, "--files")

    assert set(document) == DETAIL_KEYS
    assert (document["name"], document["version"]) == (HEART, "1")
    assert document["aliases"] == ["champion"]
    assert document["tags"] == {"data": "uci-heart"}
    assert document["provenance"]["source"]["uri"] == parse_registry_uri(hops.a).display
    assert document["provenance"]["digest"] == hops.first["source"]["digest"]
    assert document["provenance"]["chain"] == []
    folder = stored_folder(hops.b, HEART, "1")
    expected = sorted((p.relative_to(folder).as_posix(), p.stat().st_size)
                      for p in folder.rglob("*") if p.is_file())
    assert [(f["path"], f["size"]) for f in document["files"]] == expected
    assert len(document["files"]) == hops.first["files"]
    # Without --files nothing is listed.
    assert models_json("show", f"{HEART}/1", "--target", hops.b)["files"] is None


def test_show_one_version_human_output_names_the_chain(hops: Hops) -> None:
    run = models("show", f"{HEART}/1", "--target", hops.c)

    assert run.code == 0, run.both
    text = run.stdout
    assert text.startswith(f"{HEART} version 1 in the target registry "
                           f"{parse_registry_uri(hops.c).display}\n")
    assert f"promoted from  {HEART}/1 from {parse_registry_uri(hops.b).display}" in text
    assert f"digest         {hops.second['source']['digest']}" in text
    chain = text.split("chain (oldest first):\n")[1].splitlines()
    assert chain[0].split()[:3] == [f"{HEART}/1", "in", parse_registry_uri(hops.a).display]
    assert chain[1].split()[:3] == [f"{HEART}/1", "in", parse_registry_uri(hops.b).display]
    assert chain[2].strip() == f"-> {HEART}/1 (this version)"


def test_show_model_human_output_is_a_table(hops: Hops) -> None:
    run = models("show", HEART, "--target", hops.c)

    assert run.code == 0, run.both
    lines = run.stdout.splitlines()
    assert lines[0] == f"{HEART} in the target registry {parse_registry_uri(hops.c).display}"
    header = next(line for line in lines if line.startswith("version"))
    assert header.split() == ["version", "created", "aliases", "stage", "status", "promoted",
                              "from", "digest"]
    row = lines[lines.index(header) + 1]
    assert row.split()[0] == "1" and "(+1 earlier)" in row
    assert hops.second["source"]["digest"][:19] in row


# -- errors and read-only -----------------------------------------------------------------------


def test_an_unknown_model_is_exit_3_with_a_hint_naming_models_list(hops: Hops) -> None:
    run = models("show", "no-such-model", "--target", hops.c)

    assert run.code == 3, run.both
    assert run.stdout == ""
    display = parse_registry_uri(hops.c).display
    assert f"error: model 'no-such-model' does not exist in the target registry {display}" \
        in run.stderr
    assert f"hint: check the name; list the models: amlpromote models list --from target " \
           f"--target {display}" in run.stderr


def test_an_unknown_version_or_alias_is_exit_3_naming_what_exists(hops: Hops) -> None:
    version = models("show", f"{HEART}/9", "--source", hops.a)
    alias = models("show", f"{HEART}@nope", "--target", hops.b, "-o", "json")

    assert version.code == 3, version.both
    assert "hint: versions that exist: 1; all of them: amlpromote models show " \
           f"{HEART} --from source --source {parse_registry_uri(hops.a).display}" in version.stderr
    assert alias.code == 3, alias.both
    failure = alias.document
    assert (failure["status"], failure["kind"], failure["exit_code"]) == ("failed", "not-found", 3)
    assert failure["hint"].startswith("aliases of this model: champion; all versions: "
                                    f"amlpromote models show {HEART} --from target")


def test_a_missing_local_store_is_exit_3_and_is_not_created(tmp_path: Path) -> None:
    db = tmp_path / "nowhere" / "mlflow.db"
    db_here = tmp_path / "mlflow.db"
    folder = tmp_path / "mlruns"

    runs = [models("list", "--target", f"sqlite:///{db}"),
            models("list", "--target", f"sqlite:///{db_here}"),
            models("show", HEART, "--source", folder.as_uri()),
            models("list")]  # the embedded default target, before any copy-model

    for run in runs:
        assert run.code == 3, run.both
        assert "does not exist" in run.stderr and "hint: " in run.stderr
    assert "the first copy-model into it creates it" in runs[0].stderr
    assert not db.parent.exists() and not db_here.exists() and not folder.exists()
    assert list(tmp_path.rglob("*.db")) == []
    assert not list(Path.cwd().iterdir())  # no ./mlruns, no ./mlflow.db


def test_contradicting_sides_and_bad_refs_are_exit_2(hops: Hops) -> None:
    both = models("list", "--from", "source", "--target", hops.c)
    other = models("list", "--from", "target", "--source", hops.a)
    files = models("show", HEART, "--target", hops.c, "--files")
    bad = models("show", f"{HEART}/x", "--target", hops.c)

    for run in (both, other, files, bad):
        assert run.code == 2, run.both
        assert "error: " in run.stderr and "hint: " in run.stderr
    assert "--target name the target, but --from source reads the source" in both.stderr


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every entry under `folder`: (size, modification time), by relative path."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def test_reading_changes_nothing(hops: Hops) -> None:
    stores = [Path(uri.removeprefix("sqlite:///")).parent for uri in (hops.b, hops.c)]
    file_store = Path(urlsplit(hops.a).path)
    before = [tree(folder) for folder in (*stores, file_store)]

    models_json("list", "--target", hops.b)
    models_json("show", HEART, "--target", hops.c)
    models_json("show", f"{HEART}/1", "--source", hops.b, "--files")
    models_json("list", "--source", hops.a)
    models_json("show", f"{HEART}@champion", "--source", hops.a, "--files")

    assert [tree(folder) for folder in (*stores, file_store)] == before
    client = MlflowClient(tracking_uri=hops.c, registry_uri=hops.c)
    assert [m.name for m in client.search_registered_models()] == [HEART]


# -- an MLflow server ---------------------------------------------------------------------------


def test_an_mlflow_server_target(
    hops: Hops, mlflow_server: MlflowServer, unique_model_name: str
) -> None:
    copied = copy(f"{HEART}/1", "--source", hops.c, "--target", mlflow_server.url,
                  "--target-name", unique_model_name, "--alias", "prod")

    listing = models_json("list", "--target", mlflow_server.url)
    shown = models_json("show", f"{unique_model_name}@prod", "--target", mlflow_server.url,
                        "--files")

    mine = [m for m in listing["models"] if m["name"] == unique_model_name]
    assert mine == [{"name": unique_model_name, "versions": 1, "latest": "1",
                     "aliases": {"prod": "1"},
                     "promoted_from": {"uri": parse_registry_uri(hops.c).display,
                                       "name": HEART, "version": "1"}}]
    assert shown["version"] == copied["target"]["version"]
    assert shown["aliases"] == ["prod"]
    provenance = shown["provenance"]
    assert provenance["digest"] == copied["source"]["digest"]
    # Three hops now: a -> b -> c -> server.
    assert [h["uri"] for h in provenance["chain"]] == [parse_registry_uri(u).display
                                                       for u in (hops.a, hops.b)]
    assert len(shown["files"]) == copied["files"]
    assert sum(f["size"] for f in shown["files"]) == copied["bytes"]
    # A server is read over REST: seeing what it holds does not pay for importing MLflow.
    fresh = run_cli_reporting_imports("models", "show", f"{unique_model_name}/1", "--target",
                                      mlflow_server.url, "--files", "-o", "json")
    assert fresh.code == 0, fresh.both
    assert json.loads(fresh.stdout) == shown
    assert fresh.imported["mlflow"] is False


# -- Azure ML in a box: a workspace (MLflow API) and a registry (Azure Resource Manager) ---------


WORKSPACE_OPTIONS = ("--workspace", WORKSPACE, "--resource-group", RESOURCE_GROUP,
                     "--subscription", SUBSCRIPTION, "--credential", "managed-identity")
REGISTRY_OPTIONS = ("--registry", REGISTRY, "--credential", "managed-identity")


@pytest.mark.timeout(300)
def test_an_azure_ml_workspace_target(
    hops: Hops, box_env: dict[str, str], unique_model_name: str
) -> None:
    copied = copy(f"{HEART}/1", "--source", hops.c, *WORKSPACE_OPTIONS,
                  "--target-name", unique_model_name)

    listing = models_json("list", *WORKSPACE_OPTIONS)
    shown = models_json("show", unique_model_name, *WORKSPACE_OPTIONS)
    one = models_json("show", f"{unique_model_name}/latest", *WORKSPACE_OPTIONS, "--files")
    missing = models("show", "no-such-model", *WORKSPACE_OPTIONS)

    assert listing["side"] == "target" and listing["registry"].startswith("azureml://")
    mine = [m for m in listing["models"] if m["name"] == unique_model_name]
    assert len(mine) == 1
    assert (mine[0]["versions"], mine[0]["latest"]) == (1, copied["target"]["version"])
    assert mine[0]["promoted_from"] == {"uri": parse_registry_uri(hops.c).display,
                                        "name": HEART, "version": "1"}
    (version,) = shown["versions"]
    assert version["provenance"]["digest"] == copied["source"]["digest"]
    assert [h["uri"] for h in version["provenance"]["chain"]] == [
        parse_registry_uri(u).display for u in (hops.a, hops.b)]
    assert one["version"] == copied["target"]["version"]
    assert sorted((f["path"], f["size"]) for f in one["files"]) == stored_files(hops.c)
    assert missing.code == 3, missing.both
    assert "amlpromote models list --from target --workspace" in missing.stderr
    for text in (json.dumps(listing), json.dumps(shown), missing.both):
        assert_no_secrets(text, box_env)


@pytest.mark.timeout(300)
def test_an_azure_ml_registry_target(
    hops: Hops, azureml_box: BoxWorkspaces, box_env: dict[str, str], unique_model_name: str
) -> None:
    copied = copy(f"{HEART}/1", "--source", hops.c, *REGISTRY_OPTIONS,
                  "--target-name", unique_model_name)

    listing = models_json("list", *REGISTRY_OPTIONS)
    shown = models_json("show", unique_model_name, *REGISTRY_OPTIONS)
    one = models_json("show", f"{unique_model_name}/1", *REGISTRY_OPTIONS, "--files")
    alias = models("show", f"{unique_model_name}@champion", *REGISTRY_OPTIONS)
    unknown = models("show", f"{unique_model_name}/7", *REGISTRY_OPTIONS)

    mine = [m for m in listing["models"] if m["name"] == unique_model_name]
    assert mine == [{"name": unique_model_name, "versions": 1, "latest": "1", "aliases": None,
                     "promoted_from": {"uri": parse_registry_uri(hops.c).display,
                                       "name": HEART, "version": "1"}}]
    assert shown["aliases"] is None
    (version,) = shown["versions"]
    assert (version["version"], version["aliases"], version["status"]) == \
        ("1", None, "Succeeded")
    assert version["provenance"]["digest"] == copied["source"]["digest"]
    assert len(version["provenance"]["chain"]) == 2
    # The files as the registry's storage holds them, read straight from Azurite.
    (record,) = azureml_box.box.registry_versions(azureml_box.registry, unique_model_name)
    blobs = azureml_box.box.model_uri_files(record["properties"]["modelUri"])
    assert [(f["path"], f["size"]) for f in one["files"]] == \
        sorted((path, len(data)) for path, data in blobs.items())
    assert sorted(blobs) == [path for path, _ in stored_files(hops.c)]
    assert alias.code == 2, alias.both
    assert unknown.code == 3, unknown.both
    assert "hint: versions that exist: 1; all of them: amlpromote models show " \
           f"{unique_model_name} --from target --registry {REGISTRY}" in unknown.stderr
    assert_no_secrets(json.dumps(listing) + alias.both + unknown.both, box_env)

    # An archived higher version is listed as such and is not "latest" (Azure ML's latest
    # label skips archived versions).
    azureml_box.box.add_registry_version(azureml_box.registry, unique_model_name, "2",
                                         {"MLmodel": b"flavors: {}\n"}, archived=True)
    listing = models_json("list", *REGISTRY_OPTIONS)
    shown = models_json("show", unique_model_name, *REGISTRY_OPTIONS)
    latest = models_json("show", f"{unique_model_name}/latest", *REGISTRY_OPTIONS)
    (mine,) = [m for m in listing["models"] if m["name"] == unique_model_name]
    assert (mine["versions"], mine["latest"]) == (2, "1")
    assert [(v["version"], v["status"]) for v in shown["versions"]] == \
        [("2", "Archived"), ("1", "Succeeded")]  # newest first
    assert latest["version"] == "1", latest


# -- Databricks in a box: the workspace registry over REST --------------------------------------


@pytest.mark.timeout(300)
def test_a_databricks_source(
    mlflow_server: MlflowServer, tmp_path: Path, isolated_environment: Path,
    monkeypatch: pytest.MonkeyPatch, unique_model_name: str,
) -> None:
    for key in list(os.environ):
        if key.startswith("DATABRICKS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(isolated_environment / ".databrickscfg"))
    version = register_heart_model(mlflow_server.tracking_uri, name=unique_model_name,
                                   alias="champion")
    with DatabricksBox(tmp_path / "dbx", backend=mlflow_server) as box:
        box.write_databrickscfg(isolated_environment, "dbx")
        for key, value in box.tls_env().items():
            monkeypatch.setenv(key, value)
        source = ("--source", "databricks://dbx")

        listing = models_json("list", *source)
        shown = models_json("show", unique_model_name, *source)
        one = models_json("show", f"{unique_model_name}/{version}", *source, "--files")
        alias = models("show", f"{unique_model_name}@champion", *source)
        unknown = models("show", f"{unique_model_name}/99", *source)
        requests = [r.path for r in box.requests]

    assert listing["side"] == "source" and listing["registry"] == "databricks://dbx"
    mine = [m for m in listing["models"] if m["name"] == unique_model_name]
    # The workspace registry has no aliases (the box strips them, as the service has none).
    assert mine == [{"name": unique_model_name, "versions": 1, "latest": version,
                     "aliases": None, "promoted_from": None}]
    (entry,) = shown["versions"]
    assert (entry["version"], entry["aliases"], entry["provenance"]) == (version, None, None)
    assert entry["stage"] == "None"
    location = MlflowClient(tracking_uri=mlflow_server.tracking_uri).get_model_version_download_uri(
        unique_model_name, version)
    folder = mlflow_server.artifacts_dir / urlsplit(location).path.lstrip("/")
    assert sorted((f["path"], f["size"]) for f in one["files"]) == sorted(
        (p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*")
        if p.is_file())
    assert one["tags"] == {"data": "uci-heart"}
    assert alias.code == 2, alias.both
    assert "no aliases" in alias.stderr
    assert unknown.code == 3, unknown.both
    assert "amlpromote models show " + unique_model_name + " --from source --source " \
           "databricks://dbx" in unknown.stderr
    assert any("registered-models/search" in path for path in requests)


def stored_files(uri: str) -> list[tuple[str, int]]:
    """(path, size) of the heart version's stored files in a local registry, by path."""
    folder = stored_folder(uri, HEART, "1")
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size)
                  for p in folder.rglob("*") if p.is_file())
