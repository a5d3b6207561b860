"""The platform-neutral contract of an online endpoint, as a rollout needs it.

An `EndpointPlatform` is what `rollout.py` drives: Azure ML managed online endpoints
(azureml_online.py) and local endpoints (local/platform.py) implement it. Every method that
starts a long operation waits for it, reporting through `progress`, and gives up at `deadline`
(a `time.monotonic()` value) with `DeploymentTimeout`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from amlpromote.core.errors import NotFound, OperationFailed

# A progress report: (what, state, seconds elapsed), e.g. ("deployment blue", "Creating", 42.0).
Progress = Callable[[str, str, float], None]


def no_progress(what: str, state: str, elapsed: float) -> None:
    """The progress callback when nobody watches (JSON output, no terminal)."""


class Placed(Protocol):
    place: str  # EndpointPlatform.place


def endpoints_command(where: Placed, words: str, deployment: str | None = None) -> str:
    """`amlpromote endpoints WORDS [--deployment D]`, with the options that find the endpoints
    of `where` (a platform, or a client of one of its endpoints)."""
    words += f" --deployment {deployment}" if deployment else ""
    return f"amlpromote endpoints {words}" + (f" {where.place}" if where.place else "")


@dataclass
class ModelVersion:
    """The registered version a deployment serves."""

    name: str
    version: str
    # Azure ML: the model asset's ARM id or azureml://registries/... id. Local: the registry
    # URI and version, as `amlpromote models show` names it.
    asset_id: str
    # The version's files on this machine (local endpoints; None for Azure ML, which reads them
    # from its own storage).
    path: str | None = None
    digest: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "asset_id": self.asset_id}


@dataclass
class DeploymentSettings:
    """How a deployment runs: size, probes, request settings, environment."""

    instance_type: str = "Standard_DS3_v2"
    instance_count: int = 1
    # Probe initial delays in seconds; MLflow images install the model's environment at start,
    # so Azure ML's defaults (10 s) fail them (DESIGN.md, "what users struggle with most").
    liveness_initial_delay: int = 600
    readiness_initial_delay: int = 600
    request_timeout_ms: int = 5000
    max_concurrent_requests: int = 1
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class DeploymentSpec:
    """One deployment to create."""

    endpoint: str
    name: str
    model: ModelVersion
    settings: DeploymentSettings = field(default_factory=DeploymentSettings)


@dataclass
class DeploymentInfo:
    name: str
    model_asset_id: str
    state: str  # Succeeded | Creating | Updating | Failed | Deleting | ...
    instance_type: str | None = None
    instance_count: int | None = None
    # What the platform noticed while creating it (a local endpoint: requirements.txt pins
    # that differ from this environment).
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model_asset_id, "state": self.state,
                "instance_type": self.instance_type, "instance_count": self.instance_count}


@dataclass
class EndpointInfo:
    name: str
    platform: str  # "azureml" | "local"
    scoring_uri: str
    auth_mode: str  # key | aml_token | aad_token
    state: str  # provisioning state; local: Running | Stale
    traffic: dict[str, int] = field(default_factory=dict)
    mirror: dict[str, int] = field(default_factory=dict)
    deployments: list[DeploymentInfo] = field(default_factory=list)

    def deployment(self, name: str) -> DeploymentInfo | None:
        return next((d for d in self.deployments if d.name == name), None)

    def require_deployment(self, name: str) -> DeploymentInfo:
        """The named deployment; NotFound naming the ones there are when it is not one."""
        found = self.deployment(name)
        if found is None:
            raise NotFound(f"endpoint '{self.name}' has no deployment '{name}'",
                           hint="its deployments: "
                                + (", ".join(d.name for d in self.deployments) or "none"))
        return found

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "platform": self.platform, "scoring_uri": self.scoring_uri,
                "auth_mode": self.auth_mode, "state": self.state, "traffic": self.traffic,
                "mirror": self.mirror, "deployments": [d.as_dict() for d in self.deployments]}


@dataclass
class Invocation:
    """One scoring request's answer (the body as received; never the key)."""

    status: int
    body: bytes
    headers: dict[str, str]
    seconds: float


class DeploymentFailed(OperationFailed):
    """Provisioning or loading a deployment failed; `logs` holds its last log lines."""

    def __init__(self, message: str, hint: str | None = None, logs: str = "") -> None:
        super().__init__(message, hint)
        self.logs = logs


class DeploymentTimeout(OperationFailed):
    """A long operation did not end before the deadline."""


class EndpointBusy(OperationFailed):
    """Another operation runs on the endpoint (ARM's 409): another deploy is under way."""


class EndpointPlatform(Protocol):
    kind: str  # "azureml" | "local"
    # The options that name this platform on a command line ("--local", "--profile prod",
    # "--workspace W --resource-group RG --subscription S"): hints that name an `amlpromote
    # endpoints` command carry them, so the command they suggest looks where this one did.
    place: str

    def reserve(self, endpoint: str) -> AbstractContextManager[None]:
        """Held for a whole rollout to `endpoint`: EndpointBusy at once if another holds it
        (local endpoints); Azure ML has no such lease, its 409 and the rollout's re-read of
        the traffic before moving it stand in."""
        ...

    def get_endpoint(self, name: str) -> EndpointInfo | None: ...

    def list_endpoints(self) -> list[EndpointInfo]: ...

    def create_endpoint(self, name: str, auth_mode: str, progress: Progress,
                        deadline: float) -> EndpointInfo: ...

    def create_deployment(self, spec: DeploymentSpec, progress: Progress,
                          deadline: float) -> DeploymentInfo:
        """Create and wait until it serves; DeploymentFailed (with logs) when it cannot."""
        ...

    def invoke(self, endpoint: str, body: bytes, deployment: str | None = None,
               content_type: str = "application/json", timeout: float = 90.0) -> Invocation:
        """POST to the scoring URI (to one deployment when named), with the endpoint's key.
        NotFound for an unknown endpoint or deployment, before anything is sent."""
        ...

    def set_traffic(self, endpoint: str, traffic: dict[str, int], mirror: dict[str, int],
                    progress: Progress, deadline: float) -> None: ...

    def delete_deployment(self, endpoint: str, deployment: str, progress: Progress,
                          deadline: float) -> None: ...

    def delete_endpoint(self, endpoint: str, progress: Progress, deadline: float) -> None: ...

    def get_logs(self, endpoint: str, deployment: str, tail: int = 50) -> str: ...

    def get_key(self, endpoint: str) -> str:
        """The primary key (or a token, for token auth). Never logged."""
        ...
