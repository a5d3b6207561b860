"""Names and helpers shared by the box fixtures and the tests that use them.

Kept apart from fixtures.py so a test module can import these while pytest loads the fixtures
as a plugin (`pytest_plugins = ["azureml_box.fixtures"]`), which must import that module first.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from support.models import mlflow_global_state_preserved

from .server import AzureMLBox, AzureMLResource

SUBSCRIPTION = "00000000-0000-4000-8000-000000000001"
RESOURCE_GROUP = "rg-amlpromote-box"
WORKSPACE = "ws-box"
FORBIDDEN_WORKSPACE = "ws-box-forbidden"
REGISTRY = "reg-box"


@dataclass
class BoxWorkspaces:
    """The session box and the resources registered in it."""

    box: AzureMLBox
    workspace: AzureMLResource
    forbidden: AzureMLResource
    registry: AzureMLResource


@dataclass
class EgressGuard:
    """Connection attempts to non-loopback addresses seen (and refused) during a test."""

    attempts: list[str] = field(default_factory=list)


def is_loopback(host: Any) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def mlflow_global_uris(uri: str) -> Iterator[None]:
    """Point MLflow's global tracking and registry URIs at `uri`, restoring them on exit.

    Needed for downloads from Azure ML: `models:/` URIs resolve through the global registry
    URI, and azureml-mlflow's artifact repository takes its credentials from
    `MlflowClient()` (the global tracking store), not from the client that asked.
    """
    import mlflow

    with mlflow_global_state_preserved():
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        yield


def assert_no_secrets(text: str, env: dict[str, str]) -> None:
    """No SAS signature, managed-identity header or bearer token (a JWT) in `text`."""
    leak = re.search(r"sig=(?!REDACTED)[^&\s\"']+", text)
    assert not leak, f"a SAS signature leaked: {text[max(0, leak.start() - 300):leak.end()]}"
    assert env["IDENTITY_HEADER"] not in text
    assert not re.search(r"\beyJ[A-Za-z0-9_-]{5,}\.", text), "a token leaked"
