"""pytest fixtures for Azure ML in a box. A test module loads them with::

    pytest_plugins = ["azureml_box.fixtures"]

and imports names and helpers from `azureml_box.testing`.

`azureml_box` is session-wide (one Azurite, one `mlflow server` per workspace, ~10-15 s to
start once); `box_env` applies the client environment to one test through monkeypatch, so it is
undone with the test (conftest's isolation restores the rest).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from .server import AzureMLBox, AzureMLResource
from .testing import (
    FORBIDDEN_WORKSPACE,
    REGISTRY,
    RESOURCE_GROUP,
    SUBSCRIPTION,
    WORKSPACE,
    BoxWorkspaces,
    EgressGuard,
    is_loopback,
)


@pytest.fixture(scope="session")
def azureml_box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BoxWorkspaces]:
    """The session's Azure ML in a box: one usable workspace (with its own `mlflow server`),
    one workspace the box identity may not use, and one registry sharing the workspace's
    MLflow backend (cheap; registry tests use unique model names)."""
    box = AzureMLBox(tmp_path_factory.mktemp("azureml-box"))
    box.start()
    try:
        workspace = box.workspace(SUBSCRIPTION, RESOURCE_GROUP, WORKSPACE)
        forbidden = box.workspace(
            SUBSCRIPTION, RESOURCE_GROUP, FORBIDDEN_WORKSPACE, allowed=False, start_backend=False
        )
        registry = box.registry(SUBSCRIPTION, RESOURCE_GROUP, REGISTRY, backend=workspace.backend)
        yield BoxWorkspaces(box, workspace, forbidden, registry)
    finally:
        box.stop()


@pytest.fixture
def box_env(
    azureml_box: BoxWorkspaces, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """This test's process environment points at the box (and at nothing else); faults and
    the request log start empty and faults are cleared afterwards."""
    box = azureml_box.box
    for key in box.ENV_TO_REMOVE:
        monkeypatch.delenv(key, raising=False)
    env = box.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    box.clear_faults()
    box.clear_requests()
    # Egress an earlier test provoked on purpose is not this test's.
    box.blocked_egress.clear()
    try:
        yield env
    finally:
        box.clear_faults()


@pytest.fixture
def box_workspace(azureml_box: BoxWorkspaces, box_env: dict[str, str]) -> AzureMLResource:
    """The usable workspace, with the environment already applied."""
    return azureml_box.workspace


@pytest.fixture
def no_egress(monkeypatch: pytest.MonkeyPatch) -> EgressGuard:
    """Refuse (and record) any DNS lookup or TCP/UDP connect to a non-loopback address from this
    process, so a library that would reach the network fails the test instead of leaving the
    machine. Subprocesses are not covered; they go through the box's proxy."""
    guard = EgressGuard()
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def check(address: Any) -> None:
        if isinstance(address, tuple) and address and not is_loopback(address[0]):
            guard.attempts.append(f"connect {address[0]}:{address[1]}")
            raise ConnectionRefusedError(f"no_egress: connect to {address[0]} refused")

    def connect(self: socket.socket, address: Any) -> None:
        check(address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and not is_loopback(host):
            guard.attempts.append(f"resolve {host}")
            raise socket.gaierror(socket.EAI_NONAME, f"no_egress: lookup of {host} refused")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return guard
