"""Shared data of Azure ML in a box: the names every service uses (provider, host suffixes, the
route patterns of the box's services), the records a test reads (Identity, Fault, Gate,
RequestRecord, AzureMLResource) and one request/response as the services see them.

What each pattern's service answers is in its own module (see the package docstring).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from support.mlflow_server import MlflowServer

if TYPE_CHECKING:
    from .box import AzureMLBox

PROVIDER = "Microsoft.MachineLearningServices"
BLOB_HOST_SUFFIX = ".blob.core.windows.net"
AML_HOST_SUFFIX = ".api.azureml.ms"
TOKEN_PATH = "/msi/token"
DISCOVERY_PATH = "/discovery"
# The artifact service's datastore for LocalUpload artifacts in a real workspace.
ARTIFACT_DATASTORE = "workspaceartifactstore"
_LIST_PAGE_SIZE = 100
_SECRET_QUERY_KEYS = frozenset({"sig", "token", "access_token", "code", "client_secret"})

_SCOPE = (
    r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
    r"/providers/Microsoft\.MachineLearningServices/(?P<kind>workspaces|registries)/(?P<name>[^/]+)"
)
_ARM_RESOURCE = re.compile(rf"^{_SCOPE}/?$", re.IGNORECASE)
# A model asset version (what `MLClient.models.get(name, version)` reads).
_ARM_MODEL_VERSION = re.compile(
    rf"^{_SCOPE}/models/(?P<model>[^/]+)/versions/(?P<version>[^/]+)/?$", re.IGNORECASE
)
# Registry model versions through Azure Resource Manager (azure-rest-api-specs
# machinelearningservices, RegistryModelVersions / RegistryDataReferences): list, start a pending
# upload (a SAS of a temporary blob container), and a SAS to read a version's files.
_ARM_MODEL_VERSIONS = re.compile(rf"^{_SCOPE}/models/(?P<model>[^/]+)/versions/?$", re.IGNORECASE)
# A registry's model containers (RegistryModelContainers_List), what `amlpromote models list` reads.
_ARM_MODEL_CONTAINERS = re.compile(rf"^{_SCOPE}/models/?$", re.IGNORECASE)
_ARM_PENDING_UPLOAD = re.compile(
    rf"^{_SCOPE}/models/(?P<model>[^/]+)/versions/(?P<version>[^/]+)/startPendingUpload/?$",
    re.IGNORECASE,
)
_ARM_DATA_REFERENCE = re.compile(
    rf"^{_SCOPE}/datareferences/(?P<model>[^/]+)/versions/(?P<version>[^/]+)/?$", re.IGNORECASE
)
# Where an asynchronous ARM operation reports its status (Azure-AsyncOperation: a registry
# version being created) or its result (Location: a registry version being deleted).
_ARM_OPERATION = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/providers/Microsoft\.MachineLearningServices/locations/"
    r"(?P<location>[^/]+)/(?P<monitor>mfeOperationsStatus|mfeOperationResults)/(?P<op>[^/]+)/?$",
    re.IGNORECASE,
)
# azure-ai-ml reaches registry assets through the registry's "management front end": the
# discovery answer's primaryRegionResourceProviderUri + this prefix + the ARM path.
_MFE_PREFIX = "/mferp/managementfrontend"
# Where a registered version's files are, from its MLflow `source`.
_SOURCE_RUN_ARTIFACTS = re.compile(
    r"/experiments/(?P<exp>[^/]+)/runs/(?P<run>[^/]+)/artifacts(?P<rest>/.*)?$"
)
_SOURCE_LOCAL_UPLOAD = re.compile(r"^azureml://artifacts/LocalUpload/(?P<container>[^/]+)"
                                  r"(?P<rest>/.*)?$")
_ARM_LIST = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
    r"/providers/Microsoft\.MachineLearningServices/(?P<kind>workspaces|registries)/?$",
    re.IGNORECASE,
)
_MLFLOW = re.compile(rf"^/mlflow/v(?P<ver>[12])\.0{_SCOPE}(?P<rest>/.*)$", re.IGNORECASE)
_ARTIFACT = re.compile(
    r"^/artifact/v2\.0/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
    r"/providers/Microsoft\.MachineLearningServices/(?P<kind>workspaces)/(?P<name>[^/]+)"
    r"/artifacts/(?P<rest>.+)$",
    re.IGNORECASE,
)
# Run artifacts (the "history" service): what azureml-mlflow's RunArtifactsClient calls for
# `azureml://.../experiments/E/runs/R/artifacts` URIs.
_HISTORY = re.compile(
    r"^/history/v1\.0/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
    r"/providers/Microsoft\.MachineLearningServices/(?P<kind>workspaces)/(?P<name>[^/]+)"
    r"/(?P<by>experiments|experimentids)/(?P<experiment>[^/]+)/runs/(?P<run>[^/]+)/artifacts"
    r"(?P<rest>/.*)?$",
    re.IGNORECASE,
)
# Artifact locations as the backing `mlflow server` reports them (it proxies artifacts).
_BACKEND_RUN_ARTIFACTS = re.compile(
    r"^mlflow-artifacts:/(?P<exp>[^/]+)/(?P<run>[^/]+)/artifacts(?P<rest>/.*)?$"
)
_BACKEND_EXPERIMENT = re.compile(r"^mlflow-artifacts:/(?P<exp>[^/]+)/?$")
# How a workspace names artifact locations in its MLflow answers (`artifact_uri_form`):
# - "long": runs as `azureml://HOST/mlflow/v2.0/<workspace id>/experiments/E/runs/R/artifacts`,
#   what clients outside Azure ML see (mlflow/mlflow#9495, with the experiment id);
# - "short": runs as `azureml://experiments/NAME/runs/R/artifacts`, what runs inside Azure ML
#   jobs report (mlflow/mlflow#7806, microsoft/MLOps#74; azureml-mlflow's
#   `_ARTIFACT_URI_EXP_RUN_REGEX` reads it against the tracking workspace);
# - "datastore": runs as "short", and a model version whose files are a run's names them as a
#   path in the workspace artifact store (`source`, `storage_location`, the download URI):
#   `azureml://subscriptions/S/resourcegroups/RG/workspaces/W/datastores/workspaceartifactstore/
#   paths/ExperimentRun/dcid.R/P`, the form of a model asset's path (azure-ai-ml
#   LONG_URI_FORMAT; the New-AzMLWorkspaceModelVersion example in Az.MachineLearningServices);
# - "datastore-short": the same as `azureml://datastores/workspaceartifactstore/paths/...`
#   (azure-ai-ml SHORT_URI_FORMAT).
ARTIFACT_URI_FORMS = ("long", "short", "datastore", "datastore-short")
# Managed online endpoints and their deployments (azure-rest-api-specs machinelearningservices
# OnlineEndpoints_* / OnlineDeployments_*; endpoints.py), with their POST actions.
_ARM_ONLINE_ENDPOINTS = re.compile(rf"^{_SCOPE}/onlineEndpoints/?$", re.IGNORECASE)
_ARM_ONLINE_ENDPOINT = re.compile(
    rf"^{_SCOPE}/onlineEndpoints/(?P<endpoint>[^/]+)"
    r"(?:/(?P<action>listKeys|regenerateKeys|token))?/?$",
    re.IGNORECASE,
)
_ARM_ONLINE_DEPLOYMENTS = re.compile(
    rf"^{_SCOPE}/onlineEndpoints/(?P<endpoint>[^/]+)/deployments/?$", re.IGNORECASE
)
_ARM_ONLINE_DEPLOYMENT = re.compile(
    rf"^{_SCOPE}/onlineEndpoints/(?P<endpoint>[^/]+)/deployments/(?P<deployment>[^/]+)"
    r"(?:/(?P<action>getLogs))?/?$",
    re.IGNORECASE,
)
# Scoring URIs of managed online endpoints: `https://{endpoint}.{region}.inference.ml.azure.com/
# score` (the `scoringUri` azure-ai-ml shows, e.g. Azure/azure-sdk-for-python#26295); the proxy
# tunnels these names to the box, whose front door (frontdoor.py) routes them by Host.
INFERENCE_HOST_SUFFIX = ".inference.ml.azure.com"
# Azure public-cloud region names, for the `*.{region}.inference.ml.azure.com` names on the
# box's certificate (a wildcard covers one label only, so each region needs its own).
AZURE_REGIONS = (
    "eastus", "eastus2", "westus", "westus2", "westus3", "centralus", "northcentralus",
    "southcentralus", "westcentralus", "canadacentral", "canadaeast", "brazilsouth",
    "northeurope", "westeurope", "uksouth", "ukwest", "francecentral", "germanywestcentral",
    "norwayeast", "swedencentral", "switzerlandnorth", "polandcentral", "italynorth",
    "spaincentral", "uaenorth", "qatarcentral", "israelcentral", "southafricanorth",
    "centralindia", "southindia", "westindia", "japaneast", "japanwest", "koreacentral",
    "koreasouth", "eastasia", "southeastasia", "australiaeast", "australiasoutheast",
    "australiacentral",
)
_REGISTRY_DISCOVERY = re.compile(
    r"^/registrymanagement/v1\.0/registries/(?P<name>[^/]+)/discovery$", re.IGNORECASE
)


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")



def _read_chunked(rfile: Any) -> bytes:
    chunks: list[bytes] = []
    while True:
        size_line = rfile.readline(65537)
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        chunks.append(rfile.read(size))
        rfile.readline(65537)



# -- model ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """A managed identity the token endpoint can issue tokens for."""

    name: str
    object_id: str
    client_id: str
    # The Entra ID tenant the identity lives in; None: the box's own tenant. An identity from
    # another tenant gets tokens, which the box's services refuse (wrong issuer), as Azure does.
    tenant_id: str | None = None


@dataclass
class Fault:
    """One injected fault; see `AzureMLBox.inject_fault`."""

    status: int | None
    retry_after: float | None
    delay: float
    route: str | None
    method: str | None
    path: re.Pattern[str] | None
    times: int | None
    hits: int = 0
    # Let this many matching requests through untouched before the fault applies.
    after: int = 0
    passed: int = 0
    # What another client does while this request is on its way (run in the request's thread
    # before it is served; see inject_fault's `before`).
    before: Callable[[], None] | None = None
    # Hang up without answering (a connection dropped midway) instead of answering `status`.
    drop: bool = False
    # Blobs only: after a successful commit (Put Blob / Put Block List) flip the stored blob's
    # byte at this offset (negative: from the end); see `AzureMLBox.inject_fault`.
    corrupt: int | None = None

    def matches(self, route: str, method: str, path: str, commit: bool = False) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.corrupt is not None and not commit:
            # Only a request that commits a blob's content can be followed by its corruption;
            # the Put Block requests before a Put Block List do not use up the fault.
            return False
        if self.route is not None and self.route != route:
            return False
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.path is None or self.path.search(path) is not None


@dataclass
class Gate:
    """Requests held until `count` of them arrived; see `AzureMLBox.hold`."""

    route: str | None
    method: str | None
    path: re.Pattern[str] | None
    count: int
    timeout: float
    arrived: int = 0
    released: bool = False
    # True when `timeout` passed before `count` requests arrived (all were let go then).
    timed_out: bool = False
    condition: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def is_released(self) -> bool:
        return self.released

    def matches(self, route: str, method: str, path: str) -> bool:
        if self.route is not None and self.route != route:
            return False
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.path is None or self.path.search(path) is not None


@dataclass(frozen=True)
class RequestRecord:
    """One request as the box saw it (no tokens, no SAS signatures)."""

    method: str
    path: str
    query: dict[str, str]
    route: str
    status: int
    identity: str | None
    fault: str | None
    started: float
    duration: float
    host: str


@dataclass
class _Artifact:
    origin: str
    container: str
    path: str
    blob_name: str
    created: datetime
    etag: str


@dataclass
class _RegistryVersion:
    name: str
    version: str
    properties: dict[str, Any]
    created: datetime
    ready_at: float  # monotonic time at which its creation (a long-running operation) ends
    operation: str
    # The modelUri the PUT named (`properties` hold where the registry keeps the files, which
    # differs when it copied them: `AzureMLResource.copy_on_register`).
    submitted_uri: str = ""

    @property
    def state(self) -> str:
        return "Succeeded" if time.monotonic() >= self.ready_at else "Creating"


@dataclass
class _RegistryDeletion:
    """A registry model version's DELETE, a long-running operation (202 + Location)."""

    name: str
    version: str
    ready_at: float
    outcome: str  # "Succeeded" | "Failed"


@dataclass(frozen=True)
class _PendingUpload:
    """A temporary container startPendingUpload handed out, and for which version."""

    container: str
    name: str
    version: str


@dataclass
class AzureMLResource:
    """A workspace or a registry: its ARM identity, who may use it, and its MLflow backend."""

    box: AzureMLBox
    kind: str  # "workspaces" | "registries"
    subscription_id: str
    resource_group: str
    name: str
    location: str
    allowed: bool | frozenset[str]  # True: everyone; False: nobody; else object ids
    backend: MlflowServer | None
    owns_backend: bool
    logged_models: bool = False
    # How the workspace's MLflow API reports artifact locations: one of ARTIFACT_URI_FORMS.
    artifact_uri_form: str = "long"
    resource_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: datetime = field(default_factory=_now)
    artifacts: dict[tuple[str, str], dict[str, _Artifact]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # A registry's model versions (ARM assets; not the MLflow backend's), by (name, version).
    model_versions: dict[tuple[str, str], _RegistryVersion] = field(default_factory=dict)
    # Blob containers handed out by startPendingUpload, by pending upload id.
    pending_uploads: dict[str, _PendingUpload] = field(default_factory=dict)
    # Running and finished deletions of registry model versions, by operation id.
    deletions: dict[str, _RegistryDeletion] = field(default_factory=dict)
    # Registry behaviours the service may show and a test switches on (see the registry
    # handlers): the registration copies the files elsewhere and rewrites `modelUri`;
    # datareferences answers `NoCredentials` (the files are readable anonymously) instead of a
    # SAS; a DELETE's operation ends "Failed".
    copy_on_register: bool = False
    data_reference_credential: str = "SAS"
    delete_outcome: str = "Succeeded"

    @property
    def arm_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/{PROVIDER}/{self.kind}/{self.name}"
        )

    @property
    def mlflow_uri_v1(self) -> str:
        """What ARM reports (`mlFlowTrackingUri` / `mlFlowRegistryUri`)."""
        return f"azureml://{self.box.netloc}/mlflow/v1.0{self.arm_id}"

    @property
    def mlflow_uri(self) -> str:
        """What azure-ai-ml hands to users for MLflow 2/3 (`/mlflow/v2.0`)."""
        return f"azureml://{self.box.netloc}/mlflow/v2.0{self.arm_id}"

    @property
    def blob_container(self) -> str:
        # One Azurite account stands for every workspace's storage account, so each workspace
        # gets its own container (a real one gets its own account with an `azureml` container).
        return f"azureml-{self.resource_id}"

    def may_use(self, identity: Identity) -> bool:
        if isinstance(self.allowed, bool):
            return self.allowed
        return identity.object_id in self.allowed or identity.name in self.allowed


@dataclass
class _Request:
    method: str
    raw_path: str
    path: str
    query: dict[str, str]
    raw_query: str
    headers: Any
    body: bytes
    host: str


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # hang up instead of answering

    @classmethod
    def json(cls, status: int, payload: Any, headers: dict[str, str] | None = None) -> _Response:
        merged = {"Content-Type": "application/json; charset=utf-8"}
        merged.update(headers or {})
        return cls(status, json.dumps(payload).encode(), merged)
