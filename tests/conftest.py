"""Shared fixtures: an isolated environment for every test, real MLflow servers, stores, data.

Test modules import helpers as `from support.models import register_heart_model` (pytest puts
this folder on sys.path because it has no __init__.py).
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from support import (
    HEART_UNLABELED_CSV,
    NO_PHONE_HOME_ENV,
    FreshStores,
    apply_no_phone_home_env,
)
from support.flaky_proxy import FlakyProxy
from support.mlflow_server import MlflowServer

if TYPE_CHECKING:
    import pandas as pd

# MLflow creates its telemetry client (which fetches a config from the internet) at
# `import mlflow`, and test modules import mlflow during collection, before any fixture runs.
apply_no_phone_home_env()


def _add_no_proxy(hosts: tuple[str, ...]) -> None:
    # Loopback traffic must never be routed through a developer's HTTP(S)_PROXY.
    for key in ("NO_PROXY", "no_proxy"):
        present = [h for h in os.environ.get(key, "").split(",") if h]
        os.environ[key] = ",".join(present + [h for h in hosts if h not in present])


_add_no_proxy(("127.0.0.1", "localhost"))

SERVER_FIXTURES = frozenset(
    {"mlflow_server", "mlflow_server_b", "mlflow_server_unproxied", "flaky_proxy"}
)
# Global MLflow state a test may not leave changed (module, attribute).
_MLFLOW_GLOBALS = (
    ("mlflow.tracking._tracking_service.utils", "_tracking_uri"),
    ("mlflow.tracking._model_registry.utils", "_registry_uri"),
    ("mlflow.tracking.fluent", "_active_experiment_id"),
)
_MLFLOW_GLOBAL_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
# Variables that would point product code somewhere other than what the test set up.
_CLEARED_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_RUN_ID",
    "MLFLOW_ALLOW_FILE_STORE",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "mlflow_server: uses a real `mlflow server` (shared per session; ~7 s to start once). "
        "Applied automatically to tests that request a server fixture.",
    )
    config.addinivalue_line(
        "markers",
        "allow_mlflow_global_state: the test may leave MLflow's global tracking/registry URI or "
        "active experiment changed (otherwise that fails the test).",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Lets `-m "not mlflow_server"` give a fast loop without the server start-up.
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.mlflow_server)


# -- isolation ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A fresh HOME / XDG dirs / working directory per test, with no AMLPROMOTE_* or
    MLFLOW_TRACKING_URI-like variables; returns the HOME path.

    The working directory moves too: MLflow writes ./mlruns or ./mlflow.db when a URI is
    missing, and that must land in the test's tmp dir, never in the repository.
    """
    home = tmp_path / "home"
    dirs = {
        "HOME": home,
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_DATA_HOME": home / ".local" / "share",
        "XDG_CACHE_HOME": home / ".cache",
    }
    for key, path in dirs.items():
        path.mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(key, str(path))
    for key in list(os.environ):
        if key.startswith("AMLPROMOTE_"):
            monkeypatch.delenv(key)
    for key in _CLEARED_ENV:
        monkeypatch.delenv(key, raising=False)
    for key, value in NO_PHONE_HOME_ENV.items():
        monkeypatch.setenv(key, value)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return home


def _mlflow_globals() -> dict[str, Any]:
    values: dict[str, Any] = {}
    for module_name, attribute in _MLFLOW_GLOBALS:
        module = sys.modules.get(module_name)
        values[f"{module_name}.{attribute}"] = getattr(module, attribute, None)
    return values


def _restore_mlflow_globals(values: dict[str, Any]) -> None:
    for module_name, attribute in _MLFLOW_GLOBALS:
        module = sys.modules.get(module_name)
        if module is not None:
            setattr(module, attribute, values[f"{module_name}.{attribute}"])


@pytest.fixture(autouse=True)
def mlflow_global_state_guard(
    request: pytest.FixtureRequest, isolated_environment: Path
) -> Iterator[None]:
    """Fail a test that leaves MLflow's global URIs changed, and undo every env var change.

    DESIGN: product code must never rely on or silently change global MLflow state. Without
    this, one test's leak makes later tests pass (or fail) for the wrong reason. Opt out with
    @pytest.mark.allow_mlflow_global_state.

    monkeypatch.delenv(raising=False) records nothing for an absent variable, so a test that
    sets it (mlflow.set_tracking_uri does) would leak it; the full snapshot below prevents that.
    """
    env_before = dict(os.environ)
    globals_before = _mlflow_globals()
    yield
    globals_after = _mlflow_globals()
    env_after = dict(os.environ)
    os.environ.clear()
    os.environ.update(env_before)
    _restore_mlflow_globals(globals_before)

    if request.node.get_closest_marker("allow_mlflow_global_state") is not None:
        return
    leaks = [
        f"{name}: {globals_before[name]!r} -> {value!r}"
        for name, value in globals_after.items()
        if value != globals_before[name]
    ]
    leaks += [
        f"${key}: {env_before.get(key)!r} -> {env_after.get(key)!r}"
        for key in _MLFLOW_GLOBAL_ENV
        if env_before.get(key) != env_after.get(key)
    ]
    if leaks:
        pytest.fail(
            "test left MLflow's global state changed (restored now): " + "; ".join(leaks),
            pytrace=False,
        )


# -- real MLflow servers ------------------------------------------------------------------------


def _session_server(
    tmp_path_factory: pytest.TempPathFactory, name: str, *, serve_artifacts: bool = True
) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp(name), serve_artifacts=serve_artifacts)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """The session's shared `mlflow server` (sqlite + proxied `mlflow-artifacts:/`).

    Shared by every test that asks for it: use unique model names (`unique_model_name`).
    """
    yield from _session_server(tmp_path_factory, "mlflow-server-a")


@pytest.fixture(scope="session")
def mlflow_server_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A second, independent shared server, for server -> server copies."""
    yield from _session_server(tmp_path_factory, "mlflow-server-b")


@pytest.fixture(scope="session")
def mlflow_server_unproxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A shared server with `--default-artifact-root file://... --no-serve-artifacts`:
    clients get `file://` artifact URIs and read/write the folder directly."""
    yield from _session_server(tmp_path_factory, "mlflow-server-unproxied", serve_artifacts=False)


@pytest.fixture
def mlflow_server_factory(tmp_path: Path) -> Iterator[Callable[..., MlflowServer]]:
    """Start private servers (e.g. to kill one mid-test); all are stopped when the test ends.

    Call as `mlflow_server_factory(serve_artifacts=True, **MlflowServer kwargs)`.
    """
    started: list[MlflowServer] = []

    def start(**kwargs: Any) -> MlflowServer:
        server = MlflowServer(tmp_path / f"mlflow-server-{len(started)}", **kwargs)
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.stop()


# -- fault injection ----------------------------------------------------------------------------


@pytest.fixture
def flaky_proxy_factory() -> Iterator[Callable[..., FlakyProxy]]:
    """`flaky_proxy_factory(upstream_url, **FlakyProxy options)` -> a started proxy, closed at
    the end of the test."""
    proxies: list[FlakyProxy] = []

    def start(upstream: str, **kwargs: Any) -> FlakyProxy:
        proxy = FlakyProxy(upstream, **kwargs).start()
        proxies.append(proxy)
        return proxy

    try:
        yield start
    finally:
        for proxy in proxies:
            proxy.close()


@pytest.fixture
def flaky_proxy(
    mlflow_server: MlflowServer, flaky_proxy_factory: Callable[..., FlakyProxy]
) -> FlakyProxy:
    """A proxy in front of the shared `mlflow_server`, no faults until `configure(...)`."""
    return flaky_proxy_factory(mlflow_server.url)


# -- stores and data ----------------------------------------------------------------------------


@pytest.fixture
def fresh_stores(tmp_path: Path) -> FreshStores:
    """URIs of a new, empty file store and a new, empty sqlite registry (created on first use)."""
    file_root = tmp_path / "stores" / "file"
    sqlite_root = tmp_path / "stores" / "sqlite"
    file_root.mkdir(parents=True)
    sqlite_root.mkdir(parents=True)
    return FreshStores(
        file=(file_root / "mlruns").as_uri(),
        sqlite=f"sqlite:///{sqlite_root / 'mlflow.db'}",
    )


@pytest.fixture(scope="session")
def heart_frame() -> pd.DataFrame:
    """The unlabeled heart features (100 rows, no `target`), for predictions.

    Session-shared: copy before mutating.
    """
    import pandas as pd

    return pd.read_csv(HEART_UNLABELED_CSV)


@pytest.fixture
def unique_model_name(request: pytest.FixtureRequest) -> str:
    """A registered-model name no other test uses (the shared servers outlive tests)."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    return f"{stem}-{uuid.uuid4().hex[:8]}"
