"""Staged files never outlive their run (README "Leftovers").

The bytes a target keeps on disk are measured after the ways a run can end early: a failed
transfer, SIGKILL followed by a re-run, three concurrent runs (two lose), and a run that goes on
while another run of the same promotion completes (its live staging must survive). Targets are
a real sqlite registry (files beside the database) and a real `mlflow server` of the test's own
(files under its artifact root, removed through its artifact proxy).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.cli import cli
from support.flaky_proxy import FlakyProxy
from support.mlflow_server import MlflowServer
from support.staging import (
    PART_SIZE,
    PARTS,
    BigModel,
    bytes_under,
    kill,
    parts_under,
    register_big_model,
    stall,
    start_cli,
    wait_until,
)

from amlpromote.core.registries import staging


@pytest.fixture(scope="module")
def big(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> BigModel:
    return register_big_model(mlflow_server.url, f"left-{uuid.uuid4().hex[:8]}",
                              tmp_path_factory.mktemp("left-big"))


def new_sqlite_registry(folder: Path) -> tuple[str, Path]:
    """A sqlite registry with its schema made, and the folder its artifacts go to."""
    from mlflow import MlflowClient

    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models()
    return uri, folder / "mlflow-artifacts"


def client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def logged_models(uri: str) -> list[Any]:
    experiment = client(uri).get_experiment_by_name("amlpromote")
    if experiment is None:
        return []
    return list(client(uri).search_logged_models([experiment.experiment_id]))


def versions(uri: str, name: str) -> list[Any]:
    return list(client(uri).search_model_versions(f"name='{name}'"))


def copy(big: BigModel, source: str, target: str, *extra: str,
         env: dict[str, str] | None = None) -> Any:
    return cli("copy-model", f"{big.name}/{big.version}", "--source", source, "--target", target,
               *extra, env=env)


@pytest.mark.mlflow_server
@pytest.mark.timeout(180)
def test_a_failed_transfer_removes_what_it_staged(
    big: BigModel, mlflow_server: MlflowServer,
    flaky_proxy_factory: Callable[..., FlakyProxy], tmp_path: Path,
) -> None:
    target, root = new_sqlite_registry(tmp_path / "target")
    proxy = flaky_proxy_factory(mlflow_server.url)
    stall(proxy)

    run = copy(big, proxy.url, target, env={"AMLPROMOTE_RETRIES": "0"})

    assert run.code == 1, run.both
    assert "nothing was registered" in run.stderr
    assert versions(target, big.name) == []
    assert bytes_under(root) == 0
    assert logged_models(target) == []


@pytest.mark.mlflow_server
@pytest.mark.timeout(240)
@pytest.mark.parametrize("target_kind", ["sqlite", "server"])
def test_what_a_killed_run_staged_is_removed_by_the_next_run(
    target_kind: str, big: BigModel, mlflow_server: MlflowServer,
    mlflow_server_factory: Callable[..., MlflowServer],
    flaky_proxy_factory: Callable[..., FlakyProxy], tmp_path: Path,
) -> None:
    if target_kind == "sqlite":
        target, root = new_sqlite_registry(tmp_path / "target")
    else:
        # A server of its own: every byte under its artifact root is this test's. Removed
        # through its REST API and artifact proxy.
        server = mlflow_server_factory(serve_artifacts=True)
        target, root = server.url, server.artifacts_dir
    proxy = flaky_proxy_factory(mlflow_server.url)
    stall(proxy)
    proc = start_cli("copy-model", f"{big.name}/{big.version}", "--source", proxy.url,
                     "--target", target, "--parallel", "4", cwd=tmp_path)
    wait_until(proc, lambda: proxy.counters.failed >= 1
               and bytes_under(root) >= (PARTS - 1) * PART_SIZE)
    kill(proc)
    left = bytes_under(root)
    assert left > 0
    print(f"measured: killed run left {left} bytes")
    (killed,) = logged_models(target)
    assert str(killed.status).endswith("PENDING")

    proxy.heal()
    run = copy(big, proxy.url, target, "-o", "json")

    assert run.code == 0, run.both
    assert json.loads(run.stdout)["status"] == "copied"
    print(f"measured: after the re-run {bytes_under(root)} bytes, one copy is {big.bytes}")
    # One copy on disk: the killed run's staging went, its logged model too.
    assert bytes_under(root) == big.bytes, (left, bytes_under(root), big.bytes)
    kept = logged_models(target)
    assert [m.model_id for m in kept] != [killed.model_id] and len(kept) == 1
    assert [str(v.version) for v in versions(target, big.name)] == ["1"]


@pytest.mark.mlflow_server
@pytest.mark.timeout(240)
def test_an_unchanged_rerun_removes_what_a_killed_run_left(
    big: BigModel, mlflow_server: MlflowServer,
    flaky_proxy_factory: Callable[..., FlakyProxy], tmp_path: Path,
) -> None:
    target, root = new_sqlite_registry(tmp_path / "target")
    proxy = flaky_proxy_factory(mlflow_server.url)
    assert copy(big, proxy.url, target).code == 0
    # A --force run stages a second copy and is killed midway: only an unchanged re-run
    # follows, and it is "the next run of the same promotion" too.
    stall(proxy)
    proc = start_cli("copy-model", f"{big.name}/{big.version}", "--source", proxy.url,
                     "--target", target, "--force", "--parallel", "4", cwd=tmp_path)
    wait_until(proc, lambda: proxy.counters.failed >= 1
               and bytes_under(root) >= big.bytes + (PARTS - 1) * PART_SIZE)
    kill(proc)
    assert bytes_under(root) > big.bytes
    assert len(logged_models(target)) == 2

    proxy.heal()
    run = copy(big, proxy.url, target, "-o", "json")

    assert run.code == 0, run.both
    assert json.loads(run.stdout)["status"] == "unchanged"
    assert bytes_under(root) == big.bytes
    assert len(logged_models(target)) == 1
    assert [str(v.version) for v in versions(target, big.name)] == ["1"]


@pytest.mark.mlflow_server
@pytest.mark.timeout(300)
@pytest.mark.parametrize("target_kind", ["sqlite", "server"])
def test_three_concurrent_runs_leave_one_copy(
    target_kind: str, big: BigModel, mlflow_server: MlflowServer,
    mlflow_server_factory: Callable[..., MlflowServer], tmp_path: Path,
) -> None:
    if target_kind == "sqlite":
        target, root = new_sqlite_registry(tmp_path / "target")
    else:
        server = mlflow_server_factory(serve_artifacts=True)
        target, root = server.url, server.artifacts_dir
    procs = [start_cli("copy-model", f"{big.name}/{big.version}", "--source", mlflow_server.url,
                       "--target", target, "-o", "json", cwd=tmp_path) for _ in range(3)]
    outputs = [proc.communicate(timeout=240) for proc in procs]

    for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, f"{stdout}{stderr}"
    statuses = sorted(json.loads(stdout)["status"] for stdout, _ in outputs)
    assert statuses.count("copied") >= 1, statuses
    assert [str(v.version) for v in versions(target, big.name)] == \
        [json.loads(outputs[0][0])["target"]["version"]]
    print(f"measured: {target_kind}: {statuses}, {bytes_under(root)} bytes, one copy is "
          f"{big.bytes}")
    # The losers removed their duplicates' files and logged models.
    assert bytes_under(root) == big.bytes, (bytes_under(root), big.bytes)
    assert len(logged_models(target)) == 1


@pytest.mark.mlflow_server
@pytest.mark.timeout(300)
def test_a_live_runs_staging_is_not_removed_by_a_concurrent_run(
    big: BigModel, mlflow_server: MlflowServer,
    flaky_proxy_factory: Callable[..., FlakyProxy], tmp_path: Path,
) -> None:
    target, root = new_sqlite_registry(tmp_path / "target")
    proxy = flaky_proxy_factory(mlflow_server.url)
    stall(proxy)
    # Run A stalls midway: three parts staged, the fourth refused with a 10 s Retry-After.
    proc = start_cli("copy-model", f"{big.name}/{big.version}", "--source", proxy.url,
                     "--target", target, "--parallel", "4", "-o", "json", cwd=tmp_path)
    wait_until(proc, lambda: proxy.counters.failed >= 1
               and bytes_under(root) >= (PARTS - 1) * PART_SIZE)
    (mine,) = logged_models(target)
    folder = Path(mine.artifact_location.removeprefix("file://"))
    staged_by_a = parts_under(folder)

    # Run B, the same promotion, completes meanwhile (its sweep sees A alive).
    proxy.heal()
    run = copy(big, proxy.url, target, "-o", "json")
    assert run.code == 0, run.both
    assert json.loads(run.stdout)["status"] == "copied"
    assert proc.poll() is None, "run A ended before run B finished"
    still = {m.model_id: m for m in logged_models(target)}
    assert mine.model_id in still and str(still[mine.model_id].status).endswith("PENDING")
    assert parts_under(folder) >= staged_by_a

    # A completes its transfer, finds B's version, removes its own duplicate and its files.
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"{stdout}{stderr}"
    assert json.loads(stdout)["status"] == "unchanged"
    assert [str(v.version) for v in versions(target, big.name)] == ["1"]
    assert bytes_under(root) == big.bytes
    assert mine.model_id not in {m.model_id for m in logged_models(target)}


# -- the rule itself (core/registries/staging.py), on real processes -------------------------


def test_an_owner_is_gone_only_when_provably_so() -> None:
    me = staging.this_process()
    now = time.time()

    def tags(owner: staging.Owner, beat: float = now) -> dict[str, str]:
        return {staging.OWNER: owner.tag(), staging.HEARTBEAT: str(int(beat))}

    # This process, and its live parent: not gone, however old the heartbeat.
    assert not staging.owner_gone(tags(me, now - 10 * staging.STALE_AFTER))
    parent = staging.Owner(me.host, me.boot, os.getppid(), staging._start_time(os.getppid()))
    assert not staging.owner_gone(tags(parent, now - 10 * staging.STALE_AFTER))
    # The parent's pid with another start time: the pid was reused, the owner is gone.
    assert staging.owner_gone(tags(staging.Owner(me.host, me.boot, os.getppid(), "1")))
    # A pid that runs nothing.
    assert staging.owner_gone(tags(staging.Owner(me.host, me.boot, 2 ** 22 + 1, "")))
    # Another boot of this host.
    if me.boot:
        assert staging.owner_gone(tags(staging.Owner(me.host, "other-boot", me.pid,
                                                     me.started)))
    # Another host: alive while its heartbeat is fresh, gone once it is stale.
    other = staging.Owner(f"not-{socket.gethostname()}", "", 1, "")
    assert not staging.owner_gone(tags(other, now - 60))
    assert staging.owner_gone(tags(other, now - staging.STALE_AFTER - 60))
    # A container staged without owner tags is never anyone's to remove.
    assert not staging.owner_gone({})


# -- each kind of MLflow target, through the target itself -------------------------------------


@pytest.fixture(params=["file", "sqlite", pytest.param("server", marks=pytest.mark.mlflow_server)])
def target_store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    """(URI, artifact root on disk) of a fresh file store, sqlite registry or private server."""
    if request.param == "file":
        root = tmp_path / "mlruns"
        return root.as_uri(), root
    if request.param == "sqlite":
        return new_sqlite_registry(tmp_path / "target")
    server = request.getfixturevalue("mlflow_server_factory")(serve_artifacts=True)
    return server.url, server.artifacts_dir


def test_a_staging_container_is_tagged_renewed_and_removed(
    target_store: tuple[str, Path],
) -> None:
    from amlpromote.core.registries.lineage import KEY
    from amlpromote.core.registries.mlflow_target import make_target
    from amlpromote.core.uris import parse_registry_uri

    uri, root = target_store
    target = make_target(parse_registry_uri(uri))
    target.prepare()
    staged = target.begin("tagged-v1", {KEY: "k" * 40}, name="tagged")
    staged.sink.write("MLmodel", len(b"flavors: {}\n"), iter([b"flavors: {}\n"]))
    staged.sink.write("data/blob.bin", 1 << 20, iter([b"x" * (1 << 20)]))
    tags = client(uri).get_logged_model(staged.model_id).tags
    assert staging.Owner.parse(tags[staging.OWNER]) == staging.this_process()
    assert tags[staging.NAME] == "tagged"
    target.renew(staged, {staging.HEARTBEAT: "12345"})
    assert client(uri).get_logged_model(staged.model_id).tags[staging.HEARTBEAT] == "12345"
    assert bytes_under(root) >= (1 << 20)

    assert target.abort(staged) is None
    # No staged byte is left (a file store keeps its metadata beside, outside `artifacts`).
    assert [p for p in root.rglob("*")
            if p.is_file() and "artifacts" in p.relative_to(root).parts] == []
    if not uri.startswith("file:"):
        assert bytes_under(root) == 0
    assert staged.model_id not in {m.model_id for m in logged_models(uri)}
