"""`copy-model --verify` catches target storage that does not hold the bytes it was sent.

For each kind of target (an Azure ML workspace and an Azure ML registry in the box, a real
`mlflow server`, a local sqlite store) the TARGET's storage inverts one byte of a model file
after the upload succeeded and before the product reads anything back (tests/support/
alteration.py and the box's "corrupt" blob fault say how, each without a race):

- with --verify the run fails: exit 1, one `error:` line saying the verification failed, no
  traceback, no version registered, and the staged files removed where the product can remove
  them (an MLflow server, a local store; Azure ML keeps a FAILED staging run's files, and a
  registry's upload URL cannot delete);
- the same copy without the alteration succeeds, verified, byte-exact (so each test can fail
  both ways);
- without --verify the alteration is not noticed: the staged listing is compared by path and
  size only (`_check_staged` in core/promote/promote.py), the altered byte keeps the size, and the
  version is registered with it. A later `--verify` re-run then finds the version's digest
  differs from the source's and fails. That is what --verify buys.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from azureml_box.testing import REGISTRY, BoxWorkspaces, assert_no_secrets
from support import FreshStores
from support.alteration import ServerArtifactAlteration, run_cli_altering_local_file
from support.cli import Run, cli
from support.flaky_proxy import FlakyProxy
from support.mlflow_server import MlflowServer
from support.models import register_raw_model, stored_folder

pytest_plugins = ["azureml_box.fixtures"]
pytestmark = pytest.mark.timeout(300)

SMALL = "small-model"
BIG = "big-model"
ALTERED = "data/weights.bin"  # the file whose stored byte changes, in both models
SMALL_SIZE = 64 * 1024 + 3  # one Put Blob on Azure
BIG_SIZE = 8 * 1024 * 1024 + 12_345  # two blocks and a Put Block List on Azure
MLMODEL = b"artifact_path: model\nflavors: {}\n"


@dataclass(frozen=True)
class Source:
    uri: str
    files: dict[str, dict[str, bytes]]  # model name -> its stored files


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    """A sqlite registry with two MLflow-model-shaped versions that hold `ALTERED`."""
    root = tmp_path_factory.mktemp("verify-source")
    uri = "sqlite:///" + str(root / "mlflow.db")
    with contextlib.chdir(root):
        for name, size in ((SMALL, SMALL_SIZE), (BIG, BIG_SIZE)):
            register_raw_model(uri, name, {"MLmodel": MLMODEL, "conda.yaml": b"name: m\n",
                                           ALTERED: os.urandom(size)})
    files = {name: _read_tree(stored_folder(uri, name)) for name in (SMALL, BIG)}
    return Source(uri, files)


def _read_tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _digest(files: dict[str, bytes]) -> str:
    """README's content digest, computed here independently of the product."""
    manifest = "".join(f"{hashlib.sha256(files[p]).hexdigest()}  {p}\n" for p in sorted(files))
    return "sha256:" + hashlib.sha256(manifest.encode()).hexdigest()


# -- the targets ----------------------------------------------------------------------------


@dataclass
class Target:
    """One kind of target, with its way of altering a stored byte and of reading back what it
    holds independently of the product."""

    model: str  # the source model copied into it
    run: Callable[[str, tuple[str, ...], bool], Run]  # (target name, flags, alter) -> the run
    alterations: Callable[[], int]  # bytes altered so far (each alter=True run alters one)
    versions: Callable[[str], list[str]]  # the versions registered under a name
    stored: Callable[[str, str], dict[str, bytes]]  # a registered version's files
    staging_left: Callable[[str], str]  # after a failed run: what of its staging is left
    env: dict[str, str]  # secrets that must not appear in any output


def _mlflow_client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _version_numbers(uri: str, name: str) -> list[str]:
    found = _mlflow_client(uri).search_model_versions(f"name='{name}'")
    return sorted(str(v.version) for v in found)


def _json_copy(*args: str) -> tuple[str, ...]:
    return ("copy-model", *args, "-o", "json")


def _workspace(box: BoxWorkspaces, env: dict[str, str], source: Source) -> Target:
    workspace = box.workspace
    assert workspace.backend is not None
    backend = workspace.backend.url
    hits: list[int] = []

    def run(name: str, flags: tuple[str, ...], alter: bool) -> Run:
        fault = box.box.inject_fault(route="blob", method="PUT", path=rf"/{re.escape(ALTERED)}$",
                                     corrupt=-1) if alter else None
        try:
            return cli(*_json_copy(f"{SMALL}/1", "--source", source.uri, "--target",
                                   workspace.mlflow_uri, "--target-name", name, *flags))
        finally:
            box.box.clear_faults()
            hits.append(fault.hits if fault else 0)

    def stored(name: str, version: str) -> dict[str, bytes]:
        mv = _mlflow_client(backend).get_model_version(name, version)
        found = re.search(r"/runs/([^/]+)/artifacts/model$", mv.source)
        assert found, mv.source
        prefix = f"ExperimentRun/dcid.{found.group(1)}/model/"
        return {n[len(prefix):]: box.box.read_blob(workspace, n)
                for n in box.box.blob_names(workspace, prefix=prefix)}

    def staging_left(name: str) -> str:
        client = _mlflow_client(backend)
        experiment = client.get_experiment_by_name("amlpromote")
        runs = client.search_runs([experiment.experiment_id],
                                  f"attributes.run_name = 'amlpromote-{name}-v1'")
        # Azure ML cannot delete a run's files (core/registries/mlflow_target.py `_remove`): the
        # staging run is marked FAILED, so no later run or reader takes it for a live one.
        assert [r.info.status for r in runs] == ["FAILED"]
        return "a FAILED staging run"

    return Target(SMALL, run, lambda: sum(hits), lambda n: _version_numbers(backend, n), stored,
                  staging_left, env)


def _registry(box: BoxWorkspaces, env: dict[str, str], source: Source) -> Target:
    hits: list[int] = []

    def run(name: str, flags: tuple[str, ...], alter: bool) -> Run:
        fault = box.box.inject_fault(route="blob", method="PUT", path=rf"/{re.escape(ALTERED)}$",
                                     corrupt=-1) if alter else None
        try:
            return cli(*_json_copy(f"{BIG}/1", "--source", source.uri, "--registry", REGISTRY,
                                   "--credential", "managed-identity", "--target-name", name,
                                   *flags))
        finally:
            box.box.clear_faults()
            hits.append(fault.hits if fault else 0)

    def versions(name: str) -> list[str]:
        return [v["name"] for v in box.box.registry_versions(box.registry, name)]

    def stored(name: str, version: str) -> dict[str, bytes]:
        (found,) = [v for v in box.box.registry_versions(box.registry, name)
                    if v["name"] == version]
        return box.box.model_uri_files(found["properties"]["modelUri"])

    def staging_left(name: str) -> str:
        # The pending upload's SAS cannot delete (azure_blob.ContainerSink.remove); the
        # temporary container is referenced by no version and Azure ML expires it.
        return "the registry's temporary upload container"

    return Target(BIG, run, lambda: sum(hits), versions, stored, staging_left, env)


def _mlflow_server(server: MlflowServer, proxy_factory: Callable[..., FlakyProxy],
                   source: Source) -> Target:
    alteration = ServerArtifactAlteration(server.artifacts_dir, ALTERED)
    proxy = proxy_factory(server.url, on_response=alteration)

    def run(name: str, flags: tuple[str, ...], alter: bool) -> Run:
        if alter:
            alteration.arm()
        try:
            return cli(*_json_copy(f"{SMALL}/1", "--source", source.uri, "--target", proxy.url,
                                   "--target-name", name, *flags))
        finally:
            alteration.disarm()

    def stored(name: str, version: str) -> dict[str, bytes]:
        client = _mlflow_client(server.url)
        mv = client.get_model_version(name, version)
        model_id = mv.model_id or mv.source.removeprefix("models:/").split("/", 1)[0]
        location = client.get_logged_model(model_id).artifact_location
        assert location.startswith("mlflow-artifacts:"), location
        return _read_tree(server.artifacts_dir / unquote(urlsplit(location).path).lstrip("/"))

    def staging_left(name: str) -> str:
        (altered,) = alteration.altered[-1:]
        assert not altered.exists(), f"the staged {altered} was left on the server"
        return "nothing"

    return Target(SMALL, run, lambda: len(alteration.altered),
                  lambda n: _version_numbers(server.url, n), stored, staging_left, {})


def _sqlite(stores: FreshStores, source: Source, scratch: Path) -> Target:
    uri = stores["sqlite"]
    db = Path(uri.removeprefix("sqlite:///"))
    # A sqlite target without a server keeps artifacts beside the database (mlflow_target.py).
    root = db.parent / f"{db.stem}-artifacts"
    markers: list[Path] = []

    def run(name: str, flags: tuple[str, ...], alter: bool) -> Run:
        args = _json_copy(f"{SMALL}/1", "--source", source.uri, "--target", uri,
                          "--target-name", name, *flags)
        if not alter:
            # Nothing to hook: the same command in this process, which is seconds faster.
            return cli(*args)
        marker = scratch / f"altered-{len(markers)}"
        markers.append(marker)
        return run_cli_altering_local_file(*args, root=root, file=ALTERED, size=SMALL_SIZE,
                                           marker=marker, cwd=scratch)

    def altered() -> list[Path]:
        return [Path(m.read_text()) for m in markers if m.exists()]

    def stored(name: str, version: str) -> dict[str, bytes]:
        return _read_tree(stored_folder(uri, name, version))

    def staging_left(name: str) -> str:
        (last,) = altered()[-1:]
        assert not last.exists(), f"the staged {last} was left in the store"
        return "nothing"

    return Target(SMALL, run, lambda: len(altered()), lambda n: _version_numbers(uri, n),
                  stored, staging_left, {})


KINDS = ("workspace", "registry", "mlflow-server", "sqlite")


@pytest.fixture(params=KINDS)
def target(request: pytest.FixtureRequest, source: Source, tmp_path: Path) -> Iterator[Target]:
    kind = request.param
    if kind in ("workspace", "registry"):
        box: BoxWorkspaces = request.getfixturevalue("azureml_box")
        env: dict[str, str] = request.getfixturevalue("box_env")
        yield (_workspace if kind == "workspace" else _registry)(box, env, source)
    elif kind == "mlflow-server":
        yield _mlflow_server(request.getfixturevalue("mlflow_server"),
                             request.getfixturevalue("flaky_proxy_factory"), source)
    else:
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        yield _sqlite(request.getfixturevalue("fresh_stores"), source, scratch)


def assert_verification_failed(run: Run, env: dict[str, str]) -> str:
    """Exit 1, one `error:` line that says the verification failed, one hint, no traceback,
    and the JSON error document on stdout."""
    assert run.code == 1, f"exit {run.code}, expected 1\n{run.both}"
    assert "Traceback" not in run.both, run.both
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    hints = [line for line in run.stderr.splitlines() if line.startswith("hint: ")]
    assert len(errors) == 1 and len(hints) == 1, run.stderr
    assert errors[0].startswith("error: verification failed"), errors[0]
    assert "nothing was registered" in hints[0], hints[0]
    document = run.document
    assert (document["status"], document["exit_code"]) == ("failed", 1), document
    if env:  # an Azure ML target: no token, SAS signature or identity header in the output
        assert_no_secrets(run.both, env)
    return errors[0]


# -- the tests --------------------------------------------------------------------------------


def test_verify_catches_a_byte_the_target_storage_altered_and_registers_nothing(
    target: Target, source: Source, unique_model_name: str,
) -> None:
    caught_name, clean_name = f"{unique_model_name}-a", f"{unique_model_name}-b"

    caught = target.run(caught_name, ("--verify",), True)

    assert target.alterations() == 1, "the target's storage never altered the byte"
    assert_verification_failed(caught, target.env)
    assert target.versions(caught_name) == []
    target.staging_left(caught_name)

    # The same copy, the storage left alone: verified and byte-exact.
    clean = target.run(clean_name, ("--verify",), False)

    assert target.alterations() == 1
    assert clean.code == 0, clean.both
    document = clean.document
    assert (document["status"], document["verified"]) == ("copied", True), document
    assert target.versions(clean_name) == ["1"]
    expected = source.files[target.model]
    assert target.stored(clean_name, "1") == expected
    assert document["source"]["digest"] == _digest(expected)


def test_without_verify_the_altered_byte_is_registered_and_a_verify_rerun_catches_it(
    target: Target, source: Source, unique_model_name: str,
) -> None:
    missed = target.run(unique_model_name, (), True)

    # The staged listing has the right paths and sizes, and that is all a run without
    # --verify compares: the version is registered with the altered byte.
    assert target.alterations() == 1, "the target's storage never altered the byte"
    assert missed.code == 0, missed.both
    document = missed.document
    assert (document["status"], document["verified"]) == ("copied", None), document
    assert target.versions(unique_model_name) == ["1"]
    expected = source.files[target.model]
    stored = target.stored(unique_model_name, "1")
    assert set(stored) == set(expected)
    assert len(stored[ALTERED]) == len(expected[ALTERED])
    assert stored[ALTERED][:-1] == expected[ALTERED][:-1]
    assert stored[ALTERED][-1] == expected[ALTERED][-1] ^ 0xFF
    assert {p: b for p, b in stored.items() if p != ALTERED} == \
        {p: b for p, b in expected.items() if p != ALTERED}

    # A --verify re-run reads the registered version back and says its files changed.
    rerun = target.run(unique_model_name, ("--verify",), False)

    assert rerun.code == 1, rerun.both
    assert "Traceback" not in rerun.both
    (error,) = [line for line in rerun.stderr.splitlines() if line.startswith("error: ")]
    assert error.startswith("error: verification failed"), error
    assert f"version 1 has digest {_digest(stored)}, the source has {_digest(expected)}" \
        in error
    assert target.versions(unique_model_name) == ["1"]
