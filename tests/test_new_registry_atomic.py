"""A new sqlite registry appears whole or not at all: MLflow's schema migrations take seconds
and are not one transaction, so the schema is made in a temporary file and renamed into place.
An interrupt (SIGINT) or a kill (SIGKILL) during the creation leaves no registry, no half-made
schema, and the next run creates it and copies."""

from __future__ import annotations

import json
import signal
import uuid
from pathlib import Path

import pytest
from support.cli import cli
from support.models import register_raw_model
from support.staging import start_cli, wait_until

from amlpromote.core.registries.stores import CURRENT, inspect_sqlite


@pytest.mark.timeout(180)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL])
def test_a_run_stopped_while_creating_the_registry_leaves_none(
        tmp_path: Path, signum: int) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    name = f"atomic-{uuid.uuid4().hex[:8]}"
    register_raw_model(source, name, {"MLmodel": b"flavors: {}\n", "w.bin": b"w" * 1000})
    folder = tmp_path / "target"
    db = folder / "mlflow.db"
    target = f"sqlite:///{db}"

    proc = start_cli("copy-model", f"{name}/1", "--source", source, "--target", target,
                     cwd=tmp_path)
    wait_until(proc, lambda: any(folder.glob(".mlflow.db.creating-*")), timeout=120)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=30)

    assert proc.returncode == (130 if signum == signal.SIGINT else -signal.SIGKILL), stderr
    assert not db.exists()
    if signum == signal.SIGINT:
        assert "nothing was registered" in stderr or "stopped before" in stderr, stderr
        assert list(folder.glob(".mlflow.db.creating-*")) == []

    run = cli("copy-model", f"{name}/1", "--source", source, "--target", target, "-o", "json")
    assert run.code == 0, run.both
    assert json.loads(run.stdout)["status"] == "copied"
    assert inspect_sqlite(db).kind == CURRENT
    assert list(folder.glob(".mlflow.db.creating-*")) == []
