"""Azure ML managed online endpoints, through azure-ai-ml's `MLClient`.

An MLflow model deploys "no-code": the deployment names the model asset and Azure ML builds the
image and scoring script from its MLmodel. azure-ai-ml sends the PUT/DELETE and hands back a
poller; instead of blocking on it (it sleeps 5 s between polls and reports nothing), the wait
here reads the resource itself, so the progress display shows its provisioning state and
`--timeout` is honoured to the second. A failed operation's error is then read from the poller.

ARM answers 409 while another operation runs on an endpoint or deployment: that is
`EndpointBusy`, and a concurrent deploy fails cleanly on it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from amlpromote.core.azure.arm import arm_errors, azure_error, service_contexts_restored
from amlpromote.core.azure.credentials import NamedCredential
from amlpromote.core.deploy.platform import (
    DeploymentFailed,
    DeploymentInfo,
    DeploymentSpec,
    DeploymentTimeout,
    EndpointBusy,
    EndpointInfo,
    Invocation,
    Progress,
    endpoints_command,
)
from amlpromote.core.errors import (
    AmlPromoteError,
    NotFound,
    OperationFailed,
    Unreachable,
)

_TERMINAL = ("succeeded", "failed", "canceled")
# azure-ai-ml's names for the three auth modes (ManagedOnlineEndpoint.auth_mode).
AUTH_MODES = {"key": "key", "aml_token": "aml_token", "aad_token": "aad_token"}


def _poll_pause(elapsed: float) -> float:
    # Quick at first (an update of traffic takes seconds), then every 5 s as azure-ai-ml does.
    return 1.0 if elapsed < 20 else 5.0


class _DotFilter:
    """stdout without the dots azure-ai-ml's pollers print.

    azure-ai-ml's `AzureMLPolling.update_status` prints "." to stdout from the poller's own
    thread at every poll; stdout carries our result (one JSON document with -o json), and the
    progress of a wait is reported on stderr. Exactly those writes (a lone "." from a thread
    other than the one that installed the filter) are dropped; everything else passes.
    """

    def __init__(self, inner: Any, owner: int) -> None:
        self._inner = inner
        self._owner = owner

    def write(self, text: str) -> int:
        if text == "." and threading.get_ident() != self._owner:
            return len(text)
        written: int = self._inner.write(text)
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def keep_poller_dots_off_stdout() -> None:
    """Install the filter on the current stdout (idempotent). The CLI does it for every
    command: a poller of an earlier call in the same process may still be running."""
    if not isinstance(sys.stdout, _DotFilter):
        sys.stdout = _DotFilter(sys.stdout, threading.get_ident())


class _Missing(Exception):
    """ARM answered 404 for the resource asked for."""


class AzureMlOnline:
    """Managed online endpoints of one workspace."""

    kind = "azureml"

    def __init__(self, subscription: str, resource_group: str, workspace: str,
                 credential: NamedCredential, place: str = "") -> None:
        self.place = place
        self.subscription = subscription
        self.resource_group = resource_group
        self.workspace = workspace
        self.credential = credential
        self._client: Any = None
        self._workspace_seen = False

    @property
    def where(self) -> str:
        return (f"Azure ML workspace '{self.workspace}' (resource group '{self.resource_group}',"
                f" subscription {self.subscription})")

    @property
    def client(self) -> Any:
        if self._client is None:
            from azure.ai.ml import MLClient

            self._client = MLClient(self.credential, self.subscription, self.resource_group,
                                    self.workspace)
            keep_poller_dots_off_stdout()
        return self._client

    @contextmanager
    def _calls(self, what: str, absent_ok: bool = False) -> Iterator[None]:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        with arm_errors(self.credential, f"{what} in {self.where}",
                        subscription=self.subscription, resource_group=self.resource_group,
                        workspace=self.workspace), service_contexts_restored():
            try:
                yield
            except ResourceNotFoundError as exc:
                if absent_ok:
                    # Past arm_errors: for this caller "not there" is an answer (a first
                    # deploy, a finished delete).
                    raise _Missing() from None
                _, message = azure_error(exc)
                raise NotFound(f"{what}: not found in {self.where} ({message})",
                               hint=f"{endpoints_command(self, 'list')} shows the "
                                    "endpoints") from None
            except HttpResponseError as exc:
                if getattr(exc, "status_code", None) == 409:
                    code, message = azure_error(exc)
                    raise EndpointBusy(f"{what}: Azure ML refused it while another operation "
                                       f"runs ({code or 'Conflict'}: {message})",
                                       hint="another deploy or update is under way; wait for "
                                            "it and run again") from None
                raise

    # -- reading ---------------------------------------------------------------------------

    def get_endpoint(self, name: str) -> EndpointInfo | None:
        try:
            with self._calls(f"reading endpoint '{name}'", absent_ok=True):
                found = self.client.online_endpoints.get(name)
                deployments = list(self.client.online_deployments.list(name))
        except _Missing:
            self._require_workspace()
            return None
        return _endpoint_info(found, deployments)

    def _require_workspace(self) -> None:
        """A 404 for an endpoint says nothing of its workspace: ask for the workspace once, so
        that a mistyped workspace is NotFound, never "the endpoint will be created"."""
        if self._workspace_seen:
            return
        try:
            with self._calls("reading the workspace", absent_ok=True):
                self.client.workspaces.get(self.workspace)
        except _Missing:
            raise NotFound(f"{self.where} not found",
                           hint="check the names (az ml workspace list -g RESOURCE_GROUP) "
                                "and the subscription") from None
        self._workspace_seen = True

    def reserve(self, endpoint: str) -> AbstractContextManager[None]:
        # ARM has no lease on an endpoint: its 409 while an operation runs, and the rollout's
        # re-read of the traffic before moving it, keep concurrent deploys apart.
        return nullcontext()

    def list_endpoints(self) -> list[EndpointInfo]:
        with self._calls("listing online endpoints"):
            found = list(self.client.online_endpoints.list())
        return [_endpoint_info(e, []) for e in found]

    # -- long operations -------------------------------------------------------------------

    def _wait(self, what: str, read_state: Callable[[], str | None], progress: Progress,
              deadline: float, gone_is_done: bool = False) -> str:
        """Poll until a terminal state (or, for deletes, until the resource is gone)."""
        started = time.monotonic()
        while True:
            state = read_state()
            elapsed = time.monotonic() - started
            if state is None:
                if gone_is_done:
                    progress(what, "Deleted", elapsed)
                    return "Deleted"
                state = "NotFound"
            progress(what, state, elapsed)
            if state.lower() in _TERMINAL:
                return state
            if time.monotonic() >= deadline:
                raise DeploymentTimeout(f"{what} was still {state} after {elapsed:.0f}s",
                                        hint="raise --timeout")
            time.sleep(min(_poll_pause(elapsed), max(0.1, deadline - time.monotonic())))

    def _endpoint_state(self, name: str) -> str | None:
        try:
            with self._calls(f"reading endpoint '{name}'", absent_ok=True):
                return _state(self.client.online_endpoints.get(name).provisioning_state)
        except _Missing:
            return None

    def _deployment_state(self, endpoint: str, name: str) -> str | None:
        try:
            with self._calls(f"reading deployment '{name}'", absent_ok=True):
                return _state(self.client.online_deployments.get(name, endpoint)
                              .provisioning_state)
        except _Missing:
            return None

    @staticmethod
    def _operation_error(poller: Any) -> str:
        """The failed operation's `error.message`, as its poller read it."""
        try:
            poller.result(timeout=30)
        except Exception as exc:  # the poller raises the operation's error
            code, message = azure_error(exc)
            return f"{code}: {message}" if code else message
        return "the operation ended Failed"

    def create_endpoint(self, name: str, auth_mode: str, progress: Progress,
                        deadline: float) -> EndpointInfo:
        from azure.ai.ml.entities import ManagedOnlineEndpoint

        what = f"endpoint {name}"
        with self._calls(f"creating endpoint '{name}'"):
            poller = self.client.online_endpoints.begin_create_or_update(
                ManagedOnlineEndpoint(name=name, auth_mode=AUTH_MODES[auth_mode]))
        state = self._wait(what, lambda: self._endpoint_state(name), progress, deadline)
        if state.lower() != "succeeded":
            raise OperationFailed(f"creating endpoint '{name}' ended {state}: "
                                  f"{self._operation_error(poller)}",
                                  hint="check the workspace's quota and the endpoint name "
                                       "(unique in the Azure region)")
        found = self.get_endpoint(name)
        if found is None:
            raise OperationFailed(f"endpoint '{name}' vanished after it was created",
                                  hint="another client deleted it; run again")
        return found

    def create_deployment(self, spec: DeploymentSpec, progress: Progress,
                          deadline: float) -> DeploymentInfo:
        from azure.ai.ml.entities import (
            ManagedOnlineDeployment,
            OnlineRequestSettings,
            ProbeSettings,
        )

        settings = spec.settings
        deployment = ManagedOnlineDeployment(
            name=spec.name, endpoint_name=spec.endpoint, model=spec.model.asset_id,
            instance_type=settings.instance_type, instance_count=settings.instance_count,
            liveness_probe=ProbeSettings(initial_delay=settings.liveness_initial_delay),
            readiness_probe=ProbeSettings(initial_delay=settings.readiness_initial_delay),
            request_settings=OnlineRequestSettings(
                request_timeout_ms=settings.request_timeout_ms,
                max_concurrent_requests_per_instance=settings.max_concurrent_requests),
            environment_variables=dict(settings.env) or None)
        with self._calls(f"creating deployment '{spec.name}' of endpoint '{spec.endpoint}'"):
            poller = self.client.online_deployments.begin_create_or_update(deployment)
        state = self._wait(f"deployment {spec.name}",
                           lambda: self._deployment_state(spec.endpoint, spec.name), progress,
                           deadline)
        if state.lower() != "succeeded":
            raise DeploymentFailed(f"provisioning ended {state} "
                                   f"({self._operation_error(poller)})",
                                   logs=self._logs_or_note(spec.endpoint, spec.name))
        return DeploymentInfo(spec.name, spec.model.asset_id, state, settings.instance_type,
                              settings.instance_count)

    def _logs_or_note(self, endpoint: str, deployment: str) -> str:
        try:
            return self.get_logs(endpoint, deployment, 30)
        except AmlPromoteError as exc:
            return f"(its logs could not be read: {exc.message})"

    def set_traffic(self, endpoint: str, traffic: dict[str, int], mirror: dict[str, int],
                    progress: Progress, deadline: float) -> None:
        with self._calls(f"updating the traffic of endpoint '{endpoint}'"):
            found = self.client.online_endpoints.get(endpoint)
            found.traffic = dict(traffic)
            found.mirror_traffic = dict(mirror)
            poller = self.client.online_endpoints.begin_create_or_update(found)
        state = self._wait(f"endpoint {endpoint}", lambda: self._endpoint_state(endpoint),
                           progress, deadline)
        if state.lower() != "succeeded":
            raise OperationFailed(f"updating the traffic of endpoint '{endpoint}' ended "
                                  f"{state}: {self._operation_error(poller)}",
                                  hint=f"{endpoints_command(self, 'show ' + endpoint)} shows "
                                       "the traffic now")

    def delete_deployment(self, endpoint: str, deployment: str, progress: Progress,
                          deadline: float) -> None:
        with self._calls(f"deleting deployment '{deployment}' of endpoint '{endpoint}'"):
            self.client.online_deployments.begin_delete(name=deployment,
                                                        endpoint_name=endpoint)
        state = self._wait(f"deployment {deployment}",
                           lambda: self._deployment_state(endpoint, deployment), progress,
                           deadline, gone_is_done=True)
        if state != "Deleted":
            raise OperationFailed(f"deleting deployment '{deployment}' ended {state}",
                                  hint="run " + endpoints_command(
                                      self, f"delete {endpoint}", deployment) + " again")

    def delete_endpoint(self, endpoint: str, progress: Progress, deadline: float) -> None:
        with self._calls(f"deleting endpoint '{endpoint}'"):
            self.client.online_endpoints.begin_delete(name=endpoint)
        state = self._wait(f"endpoint {endpoint}", lambda: self._endpoint_state(endpoint),
                           progress, deadline, gone_is_done=True)
        if state != "Deleted":
            raise OperationFailed(f"deleting endpoint '{endpoint}' ended {state}",
                                  hint="run " + endpoints_command(self, f"delete {endpoint}")
                                  + " again")

    # -- data plane ------------------------------------------------------------------------

    def get_logs(self, endpoint: str, deployment: str, tail: int = 50) -> str:
        with self._calls(f"reading the logs of deployment '{deployment}'"):
            text = str(self.client.online_deployments.get_logs(
                name=deployment, endpoint_name=endpoint, lines=tail) or "")
            if not text.strip():
                # Nothing from the server yet: the model download is where it stopped.
                text = str(self.client.online_deployments.get_logs(
                    name=deployment, endpoint_name=endpoint, lines=tail,
                    container_type="storage-initializer") or "")
        return text

    def get_key(self, endpoint: str) -> str:
        with self._calls(f"reading the keys of endpoint '{endpoint}'"):
            keys = self.client.online_endpoints.get_keys(endpoint)
        secret = (getattr(keys, "primary_key", None) or getattr(keys, "access_token", None))
        if not secret:
            raise OperationFailed(f"endpoint '{endpoint}' gave no key or token",
                                  hint="check its auth mode with "
                                       + endpoints_command(self, f"show {endpoint}"))
        return str(secret)

    def invoke(self, endpoint: str, body: bytes, deployment: str | None = None,
               content_type: str = "application/json", timeout: float = 90.0) -> Invocation:
        import requests

        found = self.get_endpoint(endpoint)
        if found is None:
            raise NotFound(f"endpoint '{endpoint}' not found in {self.where}",
                           hint=f"{endpoints_command(self, 'list')} shows the endpoints")
        if deployment is not None:
            found.require_deployment(deployment)
        headers = {"Authorization": "Bearer " + self.get_key(endpoint),
                   "Content-Type": content_type}
        if deployment:
            headers["azureml-model-deployment"] = deployment
        started = time.monotonic()
        try:
            response = requests.post(found.scoring_uri, data=body, headers=headers,
                                     timeout=timeout)
        except requests.RequestException as exc:
            raise Unreachable(f"cannot reach the scoring URI of endpoint '{endpoint}' "
                              f"({exc.__class__.__name__})",
                              hint="check the network and proxy settings") from None
        return Invocation(response.status_code, response.content,
                          {k.lower(): v for k, v in response.headers.items()},
                          time.monotonic() - started)


def _endpoint_info(found: Any, deployments: list[Any]) -> EndpointInfo:
    auth = (_state(getattr(found, "auth_mode", None)) or "key").lower()
    return EndpointInfo(
        name=str(found.name), platform="azureml", scoring_uri=str(found.scoring_uri or ""),
        auth_mode=auth, state=_state(found.provisioning_state),
        traffic={str(k): int(v) for k, v in (found.traffic or {}).items()},
        mirror={str(k): int(v) for k, v in (getattr(found, "mirror_traffic", None)
                                            or {}).items()},
        deployments=[DeploymentInfo(
            name=str(d.name), model_asset_id=_model_id(d.model),
            state=_state(d.provisioning_state), instance_type=d.instance_type,
            instance_count=d.instance_count) for d in deployments])


def _state(value: Any) -> str:
    """A provisioning state as ARM spells it: azure-ai-ml hands some back as enum members
    (whose str() is "EndpointProvisioningState.SUCCEEDED"), others as strings."""
    raw = getattr(value, "value", value)
    return str(raw or "")


def _model_id(model: Any) -> str:
    text = str(getattr(model, "id", None) or model or "")
    # azure-ai-ml shows the asset as "azureml:<arm id>" on some paths; ARM has no prefix.
    # A registry asset keeps its scheme: "azureml://registries/R/models/N/versions/V".
    if text.startswith("azureml:/") and not text.startswith("azureml://"):
        return text[len("azureml:"):]
    return text
