"""Azure ML in a box: one loopback HTTPS server that answers what azure-identity, azure-ai-ml and
azureml-mlflow call, plus a loopback HTTP(S) proxy that stands in for DNS.

What real clients send here (measured by logging every request; mlflow 3.15, azureml-mlflow
1.62, azure-ai-ml 1.35, azure-identity 1.27):

- azure-identity, managed identity "App Service" flow (chosen because IDENTITY_ENDPOINT and
  IDENTITY_HEADER are set, before any IMDS probing):
  `GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=https://management.azure.com`
  with `X-IDENTITY-HEADER: {IDENTITY_HEADER}`.
- azure-ai-ml `MLClient(...).workspaces.get(ws)` (ARM base from AZUREML_DEV_URL_MFE):
  `GET /subscriptions/S/resourceGroups/R/providers/Microsoft.MachineLearningServices/workspaces/W
  ?api-version=2024-10-01-preview`. `.mlflow_tracking_uri` is `properties.mlFlowTrackingUri`
  with `/mlflow/v1.0` rewritten to `/mlflow/v2.0` by azureml-mlflow.
- azureml-mlflow: the MLflow REST API under
  `/mlflow/v2.0/subscriptions/S/resourceGroups/R/providers/Microsoft.MachineLearningServices/
  workspaces/W/api/2.0/mlflow/...` (or `.../registries/NAME/...`), forwarded here to a real
  `mlflow server` per workspace.
- azureml-mlflow, `create_model_version(source="file:///local/folder")`: the artifact service
  `POST /artifact/v2.0/.../workspaces/W/artifacts/LocalUpload/{container}/batch/metadata`
  (returns write SAS URIs), blob PUTs to those URIs, then the version is created with source
  `azureml://artifacts/LocalUpload/{container}/{folder name}`.
- Downloading that version: `GET .../artifacts/LocalUpload/{container}` (list) and
  `GET .../artifacts/LocalUpload/{container}/contentinfo?path=P` (read SAS URI), then blob GETs.
- Run artifacts (`client.log_artifacts`, `runs:/` and run-sourced versions): the box reports
  the backend's `mlflow-artifacts:/E/R/artifacts` locations as the workspace form
  `azureml://HOST/mlflow/v2.0/.../workspaces/W/experiments/E/runs/R/artifacts`, which
  azureml-mlflow serves through the run history service:
  `POST /history/v1.0/.../workspaces/W/experiments/E/runs/R/artifacts/batch/metadata`,
  `GET .../runs/R/artifacts` (list), `GET .../runs/R/artifacts/contentinfo?path=P`.
  Blobs land at `ExperimentRun/dcid.R/<path>`, as in a real workspace.
- MLflow 3 LoggedModel endpoints (`/api/2.0/mlflow/logged-models...`) answer 404 with an empty
  body, as Azure ML does today (set `resource.logged_models = True` to forward them instead);
  the backend's own artifact proxy (`/api/2.0/mlflow-artifacts/...`) is not reachable.
- azure-ai-ml `MLClient(...).models.get(name, version)`: `GET <workspace>/models/N/versions/V`,
  answered from the backend's model version: `modelType` is `mlflow_model` (with the flavors of
  its MLmodel) when the version's files hold an MLmodel at their root, as Azure ML records a
  version registered through MLflow, `custom_model` otherwise.
- Azure ML registry model versions, through ARM (azure-rest-api-specs machinelearningservices
  RegistryModelVersions / RegistryDataReferences; also under azure-ai-ml's registry "management
  front end" prefix `/mferp/managementfrontend`, which `MLClient(registry_name=...).models.get`
  calls): `POST .../registries/R/models/N/versions/V/startPendingUpload` hands out a SAS of a
  fresh temporary container in Azurite, for version V only (its SAS writes and reads blobs,
  cannot list or delete); `PUT .../versions/V` creates the version as a
  long-running operation (201 + `Azure-AsyncOperation`, InProgress for REGISTRY_LRO_SECONDS), 400
  when `modelUri` holds no files (or an `mlflow_model` no MLmodel) or is another version's
  pending upload, 409 when an existing version's asset path would change; `DELETE` is a
  long-running operation too (202 + `Location`); `GET .../versions` lists active versions, or
  per `listViewType` archived ones / all (404 for a model without
  versions), `GET .../registries/R/models` lists the models that have a version
  (RegistryModelContainers); `POST .../registries/R/datareferences/N/versions/V` gives a
  read SAS of a version's files. A registry's versions live in the box, not in its MLflow backend.
  A registry can be made less convenient per test: `copy_on_register` (the registration moves
  the files and rewrites `modelUri`), `data_reference_credential = "NoCredentials"`,
  `delete_outcome = "Failed"`.
- Tokens carry the identity's tenant; a token of another tenant gets 401
  InvalidAuthenticationTokenTenant everywhere (`add_identity(name, tenant_id=...)`).
- Tags over Azure ML's published limits (RUN_TAG_LIMITS and the rest, with their source) are
  refused before the backend sees them: MLflow writes with Azure ML's 400 ValidationError
  document, registry version PUTs with ARM's 400 UserError.

Why a proxy: azureml-mlflow downloads a file only if its SAS URI matches
`https://*.blob.<cloud storage suffix>/...` (`core.windows.net` for AzureCloud) and silently
skips it otherwise, and registry discovery is hard-wired to `https://eastus.api.azureml.ms/`.
Such names cannot resolve to loopback without touching /etc/hosts, so clients get
HTTPS_PROXY/HTTP_PROXY pointing at this box (the way a user behind a corporate proxy works):
CONNECT to `*.blob.core.windows.net:443` is tunnelled to Azurite, `*.api.azureml.ms:443` to this
server, and everything else is refused with 403 and recorded in `blocked_egress`, so a library
that tries the internet fails fast and visibly instead of leaving the machine. While a "blob"
fault is registered (or `inspect_blobs` is set), the proxy terminates TLS for blob hosts itself
(the test CA signs `*.blob.core.windows.net`), so blob requests can be recorded, throttled or
cut off midway like the box's own routes.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.client
import json
import re
import secrets
import select
import socket
import socketserver
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from support.mlflow_server import MlflowServer

from .azurite import ACCOUNT_KEY, ACCOUNT_NAME, DEFAULT_NODE_DIR, Azurite
from .ca import TestCA

PROVIDER = "Microsoft.MachineLearningServices"
BLOB_HOST_SUFFIX = ".blob.core.windows.net"
AML_HOST_SUFFIX = ".api.azureml.ms"
TOKEN_PATH = "/msi/token"
DISCOVERY_PATH = "/discovery"
# Audiences our services accept (ARM's; Azure ML data planes accept ARM tokens too).
ACCEPTED_AUDIENCES = frozenset(
    {
        "https://management.azure.com",
        "https://management.azure.com/",
        "https://management.core.windows.net/",
        "https://ml.azure.com",
        "https://ml.azure.com/",
    }
)
# The artifact service's datastore for LocalUpload artifacts in a real workspace.
ARTIFACT_DATASTORE = "workspaceartifactstore"
_LIST_PAGE_SIZE = 100
_LOG_LIMIT = 20_000
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
# How long creating a registry model version stays "InProgress" (a long-running operation).
REGISTRY_LRO_SECONDS = 0.3
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
# MLflow API answers that carry model versions (whose sources the datastore forms rename).
_VERSION_APIS = re.compile(r"^/api/[23]\.0/mlflow/(model-versions|registered-models)/")
# MLflow 3 LoggedModel endpoints: Azure ML answers 404 with an empty body (measured by users
# with azureml-mlflow 1.60/1.61 and mlflow 3.5-3.8, Azure/azure-sdk-for-python#44896).
_LOGGED_MODELS = re.compile(r"^/api/[23]\.0/mlflow/logged-models(/|$)")
_MLFLOW_ARTIFACTS_API = re.compile(r"^/api/[23]\.0/mlflow-artifacts(/|$)")
_MLFLOW_API_PREFIX = re.compile(r"^/api/[23]\.0/mlflow/")
_REGISTRY_DISCOVERY = re.compile(
    r"^/registrymanagement/v1\.0/registries/(?P<name>[^/]+)/discovery$", re.IGNORECASE
)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- tag limits -----------------------------------------------------------------------------------

# Azure ML's published service limits (MicrosoftDocs/azure-ai-docs, articles/machine-learning/
# resource-limits-capacity.md, "Service limits in Azure Machine Learning"), in characters:
# (number of tags, length of a tag key, length of a tag value).
RUN_TAG_LIMITS = (50, 100, 1000)  # "Runs"
EXPERIMENT_TAG_LIMITS = (50, 250, 1000)  # "Experiments"
# The page gives no tag figures for models (only 1,500 files per version); where the service is
# silent the box is strict: registered models and versions (workspace and registry) get the
# runs' figures, the strictest published.
MODEL_TAG_LIMITS = RUN_TAG_LIMITS
LIMITS_URL = "https://aka.ms/azure-machine-learning-limits"


def tag_limit_problem(tags: Iterable[tuple[Any, Any]], limits: tuple[int, int, int],
                      existing: Iterable[str] = ()) -> str | None:
    """Why Azure ML refuses these tags (added to the `existing` keys), if it does.

    The wording is the service's own for an over-limit field, as users met it for metrics and
    parameters (mlflow/mlflow#11462, Azure/azure-sdk-for-python#35685: "A field of the entity is
    over the size limit. FieldName=Parameters, Limit=200, Size=210. See
    https://aka.ms/azure-machine-learning-limits ..."); the field names for tags are not
    published, `Tags`, `Tags.Key`, `Tags.Value` follow that pattern."""
    count, key_length, value_length = limits
    pairs = [(str(k), "" if v is None else str(v)) for k, v in tags]
    for field_name, limit, size in (
        [("Tags", count, len(set(existing) | {k for k, _ in pairs}))]
        + [("Tags.Key", key_length, len(k)) for k, _ in pairs]
        + [("Tags.Value", value_length, len(v)) for _, v in pairs]
    ):
        if size > limit:
            return (f"A field of the entity is over the size limit. FieldName={field_name}, "
                    f"Limit={limit}, Size={size}. See {LIMITS_URL} for service limits "
                    "documentation.")
    return None


def registry_tag_problem(properties: dict[str, Any]) -> str | None:
    """Why a registry model version PUT's `properties.tags` (a {key: value} object in
    azure-rest-api-specs' ModelVersion) is refused, if it is. A PUT carries the version's whole
    tag set, so nothing already stored counts."""
    tags = properties.get("tags") or {}
    if not isinstance(tags, dict):
        return "properties.tags must be an object of string values."
    return tag_limit_problem(tags.items(), MODEL_TAG_LIMITS)


# MLflow REST writes that carry tags (mlflow/protos/service.proto, model_registry.proto): a new
# entity's `tags` as [{key, value}], or one `key` and `value`; and the limits that apply.
_MLFLOW_TAG_WRITES = {
    "experiments/create": EXPERIMENT_TAG_LIMITS,
    "experiments/set-experiment-tag": EXPERIMENT_TAG_LIMITS,
    "runs/create": RUN_TAG_LIMITS,
    "runs/set-tag": RUN_TAG_LIMITS,
    "runs/log-batch": RUN_TAG_LIMITS,
    "registered-models/create": MODEL_TAG_LIMITS,
    "registered-models/set-tag": MODEL_TAG_LIMITS,
    "model-versions/create": MODEL_TAG_LIMITS,
    "model-versions/set-tag": MODEL_TAG_LIMITS,
}
# Writes that add to an existing entity: where to read the tags it has (GET path, the body
# fields that name it, the key of the entity in the answer).
_MLFLOW_TAG_OWNERS = {
    "experiments/set-experiment-tag": ("experiments/get", ("experiment_id",), "experiment"),
    "runs/set-tag": ("runs/get", ("run_id", "run_uuid"), "run"),
    "runs/log-batch": ("runs/get", ("run_id",), "run"),
    "registered-models/set-tag": ("registered-models/get", ("name",), "registered_model"),
    "model-versions/set-tag": ("model-versions/get", ("name", "version"), "model_version"),
}


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


class _Unauthenticated(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- the box --------------------------------------------------------------------------------------


class AzureMLBox:
    """Azure ML on loopback: token endpoint, ARM workspace routes, MLflow REST API, artifact
    service, blob storage (Azurite) and a proxy that keeps every other name off the network.

    Typical use (see tests/test_azureml_box.py)::

        box = AzureMLBox(tmp_dir).start()
        ws = box.workspace("sub-id", "rg", "ws")          # starts its `mlflow server`
        env = box.env()                                    # for a client process / monkeypatch
        ...
        box.stop()
    """

    def __init__(
        self,
        root: Path,
        *,
        tenant_id: str | None = None,
        location: str = "eastus",
        azurite: bool = True,
        azurite_node_dir: Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.location = location
        self._want_azurite = azurite
        self._azurite_node_dir = azurite_node_dir
        self.ca: TestCA | None = None
        self.azurite: Azurite | None = None
        self.identity_header = secrets.token_urlsafe(24)
        self._signing_key = secrets.token_bytes(32)
        self.identity = Identity("amlpromote-test-mi", str(uuid.uuid4()), str(uuid.uuid4()))
        self.identities: dict[str, Identity] = {self.identity.client_id: self.identity}
        self._resources: dict[tuple[str, str, str, str], AzureMLResource] = {}
        self._resources_lock = threading.Lock()
        # (workspace ARM id, run id) -> (experiment id, experiment name), see _run_experiment.
        self._run_experiments: dict[tuple[str, str], tuple[str, str]] = {}
        self._faults: list[Fault] = []
        self._faults_lock = threading.Lock()
        self._gates: list[Gate] = []
        self._log: list[RequestRecord] = []
        self._log_lock = threading.Lock()
        self.blocked_egress: list[str] = []
        # Terminate TLS for blob hosts in the proxy and record each blob request (route "blob"),
        # even without a blob fault; off by default, since the raw tunnel is faster.
        self.inspect_blobs = False
        self._blob_cert: Any = None
        self._server: _TLSServer | None = None
        self._proxy: _ProxyServer | None = None
        self._threads: list[threading.Thread] = []
        self._blob_service: Any = None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("AzureMLBox not started")
        return int(self._server.server_address[1])

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.netloc}"

    @property
    def proxy_url(self) -> str:
        if self._proxy is None:
            raise RuntimeError("AzureMLBox not started")
        return f"http://127.0.0.1:{self._proxy.server_address[1]}"

    @property
    def ca_bundle(self) -> Path:
        if self.ca is None:
            raise RuntimeError("AzureMLBox not started")
        return self.ca.bundle_path

    @property
    def token_endpoint(self) -> str:
        return f"{self.url}{TOKEN_PATH}"

    def start(self) -> AzureMLBox:
        if self._server is not None:
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        self.ca = TestCA(self.root / "ca")
        server_cert = self.ca.issue_server_cert(
            "azureml-box",
            dns_names=("localhost", f"*{AML_HOST_SUFFIX}"),
            ip_addresses=("127.0.0.1",),
        )
        try:
            if self._want_azurite:
                blob_cert = self.ca.issue_server_cert(
                    "azurite",
                    dns_names=("localhost", f"*{BLOB_HOST_SUFFIX}"),
                    ip_addresses=("127.0.0.1",),
                )
                self._blob_cert = blob_cert
                self.azurite = Azurite(
                    self.root / "azurite",
                    blob_cert,
                    self.ca.bundle_path,
                    node_dir=self._azurite_node_dir or DEFAULT_NODE_DIR,
                ).start()
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(server_cert.chain_path, server_cert.key_path)
            self._server = _TLSServer(("127.0.0.1", 0), _Handler, self, context)
            self._proxy = _ProxyServer(("127.0.0.1", 0), _ProxyHandler, self)
            for name, srv in (("azureml-box", self._server), ("azureml-box-proxy", self._proxy)):
                thread = threading.Thread(
                    target=srv.serve_forever, kwargs={"poll_interval": 0.2}, name=name,
                    daemon=True,
                )
                thread.start()
                self._threads.append(thread)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for srv in (self._proxy, self._server):
            if srv is not None:
                srv.shutdown()
                srv.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        self._proxy = None
        self._server = None
        with self._resources_lock:
            resources = list(self._resources.values())
        for resource in resources:
            if resource.owns_backend and resource.backend is not None:
                resource.backend.stop()
        if self.azurite is not None:
            self.azurite.stop()
            self.azurite = None
        self._blob_service = None

    def __enter__(self) -> AzureMLBox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what a client process needs ------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """Environment variables a client needs, all documented by the libraries that read them.

        AZUREML_DEV_URL_MFE: azure-ai-ml's ARM base URL override.
        AZUREML_CURRENT_CLOUD: the cloud azure-ai-ml and azureml-mlflow take endpoints, scopes
            and the storage suffix from (AzureCloud: management.azure.com, core.windows.net).
        REQUESTS_CA_BUNDLE / SSL_CERT_FILE / CURL_CA_BUNDLE: trust the test CA (requests,
            urllib/ssl, curl-based tools).
        IDENTITY_ENDPOINT / IDENTITY_HEADER: the managed identity (App Service) flow of
            azure-identity / MSAL.
        HTTPS_PROXY / HTTP_PROXY / NO_PROXY (both cases): blob storage and hard-wired Azure ML
            host names reach the box through its proxy; loopback goes direct.
        """
        proxy = self.proxy_url
        no_proxy = "127.0.0.1,localhost"
        return {
            "AZUREML_DEV_URL_MFE": self.url,
            "AZUREML_CURRENT_CLOUD": "AzureCloud",
            "REQUESTS_CA_BUNDLE": str(self.ca_bundle),
            "SSL_CERT_FILE": str(self.ca_bundle),
            "CURL_CA_BUNDLE": str(self.ca_bundle),
            "IDENTITY_ENDPOINT": self.token_endpoint,
            "IDENTITY_HEADER": self.identity_header,
            "HTTPS_PROXY": proxy,
            "HTTP_PROXY": proxy,
            "https_proxy": proxy,
            "http_proxy": proxy,
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
        }

    # Variables that would make a client authenticate or connect somewhere else than the box:
    # other credential sources in DefaultAzureCredential's chain, other managed identity
    # flavours (which MSAL/azure-identity check before or instead of IDENTITY_ENDPOINT), and
    # cloud/endpoint overrides.
    ENV_TO_REMOVE: tuple[str, ...] = (
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_CLIENT_CERTIFICATE_PATH",
        "AZURE_CLIENT_CERTIFICATE_PASSWORD",
        "AZURE_TENANT_ID",
        "AZURE_USERNAME",
        "AZURE_PASSWORD",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_AUTHORITY_HOST",
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        "AZURE_TOKEN_CREDENTIALS",
        "AZURE_REGIONAL_AUTHORITY_NAME",
        "IDENTITY_SERVER_THUMBPRINT",
        "IMDS_ENDPOINT",
        "MSI_ENDPOINT",
        "MSI_SECRET",
        "ARM_CLOUD_METADATA_URL",
        "AZUREML_DEV_URL_MLFLOW",
        "REGISTRY_DISCOVERY_ENDPOINT_URL",
        "REGISTRY_DISCOVERY_ENDPOINT_REGION",
        "MLFLOW_TRACKING_TOKEN",
        "MLFLOW_TRACKING_INSECURE_TLS",
        "MLFLOW_TRACKING_SERVER_CERT_PATH",
    )

    def client_env(self, base: dict[str, str]) -> dict[str, str]:
        """`base` (e.g. os.environ) without ENV_TO_REMOVE and with `env()` applied."""
        env = {k: v for k, v in base.items() if k not in self.ENV_TO_REMOVE}
        env.update(self.env())
        return env

    # -- resources ------------------------------------------------------------------------------

    def workspace(
        self,
        subscription_id: str,
        resource_group: str,
        name: str,
        *,
        location: str | None = None,
        allowed: bool | Iterable[str] = True,
        backend: MlflowServer | None = None,
        start_backend: bool = True,
        artifact_uri_form: str = "long",
    ) -> AzureMLResource:
        """Register a workspace; unless `backend` is given, start its own `mlflow server`.

        `allowed`: True (any identity), False (403 for everyone), or object ids / names.
        `start_backend=False` for a workspace that only needs ARM answers (no MLflow calls).
        The returned resource's `logged_models` (default False: 404 like Azure ML) can be
        switched on to forward MLflow 3 LoggedModel calls to the backend.
        `artifact_uri_form` (also settable on the resource): how its runs and model versions
        name their files, see ARTIFACT_URI_FORMS.
        """
        if artifact_uri_form not in ARTIFACT_URI_FORMS:
            raise ValueError(f"artifact_uri_form must be one of {ARTIFACT_URI_FORMS}")
        resource = self._register(
            "workspaces", subscription_id, resource_group, name, location, allowed, backend,
            start_backend,
        )
        resource.artifact_uri_form = artifact_uri_form
        return resource

    def registry(
        self,
        subscription_id: str,
        resource_group: str,
        name: str,
        *,
        location: str | None = None,
        allowed: bool | Iterable[str] = True,
        backend: MlflowServer | None = None,
        start_backend: bool = True,
    ) -> AzureMLResource:
        """Register an Azure ML registry (MLflow REST API + ARM GET + registry discovery)."""
        return self._register(
            "registries", subscription_id, resource_group, name, location, allowed, backend,
            start_backend,
        )

    def _register(
        self,
        kind: str,
        subscription_id: str,
        resource_group: str,
        name: str,
        location: str | None,
        allowed: bool | Iterable[str],
        backend: MlflowServer | None,
        start_backend: bool,
    ) -> AzureMLResource:
        key = (kind, subscription_id.lower(), resource_group.lower(), name.lower())
        with self._resources_lock:
            if key in self._resources:
                raise ValueError(f"{kind} {name!r} already registered in {resource_group!r}")
        owns = False
        if backend is None and start_backend:
            backend = MlflowServer(self.root / "mlflow" / f"{kind}-{subscription_id}-"
                                   f"{resource_group}-{name}")
            backend.start()
            owns = True
        resource = AzureMLResource(
            box=self,
            kind=kind,
            subscription_id=subscription_id,
            resource_group=resource_group,
            name=name,
            location=location or self.location,
            allowed=allowed if isinstance(allowed, bool) else frozenset(allowed),
            backend=backend,
            owns_backend=owns,
        )
        if self.azurite is not None:
            self._blob_service_client().create_container(resource.blob_container)
        with self._resources_lock:
            self._resources[key] = resource
        return resource

    def resources(self) -> list[AzureMLResource]:
        with self._resources_lock:
            return list(self._resources.values())

    def _find(self, kind: str, sub: str, rg: str, name: str) -> AzureMLResource | None:
        with self._resources_lock:
            return self._resources.get((kind.lower(), sub.lower(), rg.lower(), name.lower()))

    def _find_registry_by_name(self, name: str) -> AzureMLResource | None:
        with self._resources_lock:
            for (kind, _, _, rname), res in self._resources.items():
                if kind == "registries" and rname == name.lower():
                    return res
        return None

    def _known_scope(self, sub: str, rg: str | None) -> tuple[bool, bool]:
        with self._resources_lock:
            keys = list(self._resources)
        sub_known = any(k[1] == sub.lower() for k in keys)
        rg_known = rg is not None and any(
            k[1] == sub.lower() and k[2] == rg.lower() for k in keys
        )
        return sub_known, rg_known

    # -- identities and tokens ------------------------------------------------------------------

    def add_identity(self, name: str, tenant_id: str | None = None) -> Identity:
        """Another (user-assigned) identity; clients select it with its client id.

        `tenant_id`: an identity of another tenant: the token endpoint still issues its tokens,
        and every service answers them with 401 InvalidAuthenticationTokenTenant.
        """
        identity = Identity(name, str(uuid.uuid4()), str(uuid.uuid4()), tenant_id)
        self.identities[identity.client_id] = identity
        return identity

    def issue_token(
        self,
        resource: str = "https://management.azure.com",
        identity: Identity | None = None,
        lifetime: float = 3600,
    ) -> str:
        """A signed JWT as the token endpoint would return it (HS256 with a per-box key)."""
        who = identity or self.identity
        tenant = who.tenant_id or self.tenant_id
        now = int(time.time())
        claims = {
            "aud": resource,
            "iss": f"https://sts.windows.net/{tenant}/",
            "iat": now,
            "nbf": now - 60,
            "exp": now + int(lifetime),
            "appid": who.client_id,
            "oid": who.object_id,
            "sub": who.object_id,
            "tid": tenant,
            "idtyp": "app",
            "xms_mirid": (
                f"/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/box"
                f"/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{who.name}"
            ),
        }
        header = {"alg": "HS256", "typ": "JWT"}
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        signature = hmac.new(self._signing_key, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64url(signature)}"

    def _verify_token(self, authorization: str | None) -> Identity:
        if not authorization:
            raise _Unauthenticated(
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _Unauthenticated(
                "InvalidAuthenticationToken",
                "Authentication failed. The 'Authorization' header is provided in an invalid "
                "format.",
            )
        try:
            header_b64, claims_b64, signature_b64 = token.split(".")
            expected = hmac.new(
                self._signing_key, f"{header_b64}.{claims_b64}".encode(), hashlib.sha256
            ).digest()
            if not hmac.compare_digest(expected, _b64url_decode(signature_b64)):
                raise ValueError("bad signature")
            claims = json.loads(_b64url_decode(claims_b64))
        except (ValueError, TypeError) as exc:
            raise _Unauthenticated(
                "InvalidAuthenticationToken", "The access token is invalid."
            ) from exc
        if claims.get("exp", 0) < time.time():
            raise _Unauthenticated(
                "ExpiredAuthenticationToken",
                "The access token expiry UTC time is earlier than current UTC time.",
            )
        if claims.get("tid") != self.tenant_id:
            # ARM's wording for a token of another directory than the subscription's.
            raise _Unauthenticated(
                "InvalidAuthenticationTokenTenant",
                f"The access token is from the wrong issuer '{claims.get('iss')}'. It must match "
                f"the tenant 'https://sts.windows.net/{self.tenant_id}/' associated with this "
                "subscription. Please use the authority (URL) "
                f"'https://login.windows.net/{self.tenant_id}' to get the token.",
            )
        if claims.get("aud") not in ACCEPTED_AUDIENCES:
            raise _Unauthenticated(
                "InvalidAuthenticationTokenAudience",
                "The access token has been obtained for wrong audience or resource "
                f"'{claims.get('aud')}'.",
            )
        for identity in self.identities.values():
            if identity.object_id == claims.get("oid"):
                return identity
        raise _Unauthenticated("InvalidAuthenticationToken", "The access token is invalid.")

    # -- faults ---------------------------------------------------------------------------------

    def inject_fault(
        self,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        delay: float = 0.0,
        route: str | None = None,
        method: str | None = None,
        path: str | None = None,
        times: int | None = 1,
        after: int = 0,
        drop: bool = False,
        corrupt: int | None = None,
        before: Callable[[], None] | None = None,
    ) -> Fault:
        """Answer matching requests with `status` (after `delay` seconds), or just slow them
        down (`status=None`), for the next `times` matches (None: until cleared).

        route: "token", "arm", "discovery", "mlflow", "artifact", "registry-discovery", "blob"
            (blob storage requests: while a "blob" fault is registered, the proxy terminates
            TLS for blob hosts and forwards each request to Azurite itself, recording it);
        path: a regular expression searched in the request path (for blobs, the blob path);
        after: let the first `after` matching requests through before the fault applies;
        drop: hang up without an answer (for blobs, midway through the request body).
        before: call this when a matching request has arrived and before it is served (not for
            "blob"): what another client does while the request is on its way, with no timing
            to guess. An exception in it is a box bug (500).
        429/503 get a `Retry-After` header when `retry_after` is given.
        corrupt (route "blob"): let a request that commits a blob's content (Put Blob, Put Block
            List) through; once Azurite has answered it with success, and before that answer
            reaches the client, rewrite the stored blob in Azurite with the byte at this offset
            (negative: from the end) inverted. Only commits count towards `times`/`after`.
            Azure Storage never does this on its own: it is strongly consistent, and a read
            after a successful write returns what was written ("Manage concurrency in Blob
            Storage", learn.microsoft.com/azure/storage/blobs/concurrency-manage). It models
            what that page allows for: another writer with access to the blob (last writer
            wins by default), or storage-side damage, between the upload and the read-back.
            Opt-in: only a test that injects it sees altered blobs.
        """
        if corrupt is not None and route != "blob":
            raise ValueError("corrupt applies to blob storage (route='blob') only")
        if before is not None and route == "blob":
            raise ValueError("before applies to the box's own services, not blob storage")
        fault = Fault(
            status=status,
            retry_after=retry_after,
            delay=delay,
            route=route,
            method=method,
            path=re.compile(path) if path is not None else None,
            times=times,
            after=after,
            drop=drop,
            corrupt=corrupt,
            before=before,
        )
        with self._faults_lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._faults_lock:
            self._faults.clear()
            gates, self._gates = self._gates, []
        for gate in gates:  # nothing stays held for a test that is over
            with gate.condition:
                gate.released = True
                gate.condition.notify_all()

    def _take_fault(self, route: str, method: str, path: str,
                    commit: bool = False) -> Fault | None:
        with self._faults_lock:
            for fault in self._faults:
                if fault.matches(route, method, path, commit):
                    if fault.passed < fault.after:
                        fault.passed += 1
                        continue
                    fault.hits += 1
                    return fault
        return None

    def hold(self, *, route: str | None = None, method: str | None = None,
             path: str | None = None, count: int = 2, timeout: float = 60.0) -> Gate:
        """Hold matching requests (of the box's own routes, not blobs) until `count` of them
        arrived, then let them all go at once; later matches pass untouched. A test forces a
        race with it: two clients that each checked "is it there yet?" and both go on to write.
        After `timeout` seconds the held requests are let go anyway and `timed_out` is set, so
        a client that never came fails the test instead of hanging it. Cleared with the faults.
        """
        gate = Gate(route=route, method=method,
                    path=re.compile(path) if path is not None else None, count=count,
                    timeout=timeout)
        with self._faults_lock:
            self._gates.append(gate)
        return gate

    def _wait_at_gates(self, route: str, method: str, path: str) -> bool:
        """Block while a gate holds this request; whether one did."""
        with self._faults_lock:
            gates = [g for g in self._gates if not g.released and g.matches(route, method, path)]
        held = False
        for gate in gates:
            with gate.condition:
                if gate.released:
                    continue
                held = True
                gate.arrived += 1
                if gate.arrived >= gate.count:
                    gate.released = True
                    gate.condition.notify_all()
                    continue
                if not gate.condition.wait_for(gate.is_released, timeout=gate.timeout):
                    gate.timed_out = gate.released = True
                    gate.condition.notify_all()
        return held

    def _inspects_blobs(self) -> bool:
        with self._faults_lock:
            return self.inspect_blobs or any(f.route == "blob" for f in self._faults)

    # -- request log ----------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        with self._log_lock:
            return list(self._log)

    def clear_requests(self) -> None:
        with self._log_lock:
            self._log.clear()

    def requests_for(self, route: str) -> list[RequestRecord]:
        return [r for r in self.requests if r.route == route]

    def _record(self, record: RequestRecord) -> None:
        with self._log_lock:
            self._log.append(record)
            if len(self._log) > _LOG_LIMIT:
                del self._log[: len(self._log) - _LOG_LIMIT]

    # -- blob storage ---------------------------------------------------------------------------

    def _blob_service_client(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        if self.azurite is None:
            raise RuntimeError("this box was started without Azurite")
        if self._blob_service is None:
            # Direct to Azurite's loopback port with the CA pinned, so neither the test
            # process's proxy variables nor its CA variables matter here.
            self._blob_service = BlobServiceClient.from_connection_string(
                self.azurite.connection_string, connection_verify=str(self.ca_bundle)
            )
        return self._blob_service

    def blob_names(self, resource: AzureMLResource, prefix: str | None = None) -> list[str]:
        """Blobs stored for a workspace (as Azurite has them), for assertions."""
        container = self._blob_service_client().get_container_client(resource.blob_container)
        return [b.name for b in container.list_blobs(name_starts_with=prefix)]

    def read_blob(self, resource: AzureMLResource, name: str) -> bytes:
        container = self._blob_service_client().get_container_client(resource.blob_container)
        data: bytes = container.download_blob(name).readall()
        return data

    def _corrupt_blob(self, container: str, name: str, offset: int) -> None:
        """Rewrite a stored blob with one byte inverted (the "corrupt" blob fault): same size,
        same content headers and metadata, other bytes. The stored MD5 is left for Azurite to
        compute again, as Put Blob does for content it is not given a hash of."""
        blob = self._blob_service_client().get_blob_client(container, name)
        data = bytearray(blob.download_blob().readall())
        if not -len(data) <= offset < len(data):
            raise ValueError(f"blob {container}/{name} has {len(data)} bytes; no byte {offset}")
        data[offset] ^= 0xFF
        properties = blob.get_blob_properties()
        settings = properties.content_settings
        settings.content_md5 = None
        blob.upload_blob(bytes(data), overwrite=True, content_settings=settings,
                         metadata=properties.metadata)

    def _sas_url(self, container: str, blob_name: str, *, write: bool) -> str:
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        now = _now()
        permission = (
            BlobSasPermissions(read=True, create=True, write=True)
            if write
            else BlobSasPermissions(read=True)
        )
        sas = generate_blob_sas(
            account_name=ACCOUNT_NAME,
            container_name=container,
            blob_name=blob_name,
            account_key=ACCOUNT_KEY,
            permission=permission,
            start=now - timedelta(minutes=5),
            expiry=now + timedelta(hours=1),
            protocol="https",
        )
        # Production-style host: azureml-mlflow only downloads from `https://*.blob.<suffix>/`.
        return (
            f"https://{ACCOUNT_NAME}{BLOB_HOST_SUFFIX}/{container}/{quote(blob_name)}?{sas}"
        )

    # -- proxy ----------------------------------------------------------------------------------

    def _tunnel_destination(self, host: str, port: int) -> tuple[str, int] | None:
        if port != 443:
            return None
        if host.endswith(BLOB_HOST_SUFFIX) and self.azurite is not None:
            return ("127.0.0.1", self.azurite.port)
        if host.endswith(AML_HOST_SUFFIX):
            return ("127.0.0.1", self.port)
        return None

    # -- dispatch -------------------------------------------------------------------------------

    def _route(self, req: _Request) -> tuple[str, Callable[[_Request, re.Match[str] | None],
                                                       _Response], re.Match[str] | None]:
        path = req.path
        if path.rstrip("/").lower() == TOKEN_PATH:
            return "token", self._handle_token, None
        if path.rstrip("/").lower() == DISCOVERY_PATH:
            return "discovery", self._handle_discovery, None
        if m := _MLFLOW.match(path):
            return "mlflow", self._handle_mlflow, m
        if m := _ARTIFACT.match(path):
            return "artifact", self._handle_artifact, m
        if m := _HISTORY.match(path):
            return "artifact", self._handle_run_artifact, m
        if path.lower().startswith(_MFE_PREFIX):
            path = path[len(_MFE_PREFIX):]
        if m := _ARM_PENDING_UPLOAD.match(path):
            return "arm", self._handle_registry_pending_upload, m
        if m := _ARM_DATA_REFERENCE.match(path):
            return "arm", self._handle_registry_data_reference, m
        if m := _ARM_OPERATION.match(path):
            return "arm", self._handle_arm_operation, m
        if m := _ARM_MODEL_VERSIONS.match(path):
            return "arm", self._handle_registry_model_versions, m
        if m := _ARM_MODEL_CONTAINERS.match(path):
            return "arm", self._handle_registry_model_containers, m
        if m := _ARM_MODEL_VERSION.match(path):
            return "arm", self._handle_arm_model_version, m
        if m := _ARM_RESOURCE.match(path):
            return "arm", self._handle_arm_resource, m
        if m := _ARM_LIST.match(path):
            return "arm", self._handle_arm_list, m
        if m := _REGISTRY_DISCOVERY.match(path):
            return "registry-discovery", self._handle_registry_discovery, m
        return "unknown", self._handle_unknown, None

    def _dispatch(self, req: _Request) -> tuple[_Response, str, str | None, str | None]:
        """-> (response, route, identity name, fault description)."""
        route, handler, match = self._route(req)
        held = self._wait_at_gates(route, req.method, req.path)
        fault = self._take_fault(route, req.method, req.path)
        fault_text = "held" if held else None
        if fault is not None:
            if fault.before is not None:
                fault.before()
            if fault.delay:
                time.sleep(fault.delay)
            if fault.drop:
                return _Response(0, drop=True), route, None, "drop"
            if fault.status is not None:
                fault_text = f"{fault.status}" + (
                    f" retry-after={fault.retry_after:g}" if fault.retry_after is not None else ""
                )
                return self._fault_response(route, fault), route, None, fault_text
            fault_text = f"delay={fault.delay:g}"
        self._current_identity.name = None
        response = handler(req, match)
        return response, route, self._current_identity.name, fault_text

    _current_identity = threading.local()

    def _fault_response(self, route: str, fault: Fault) -> _Response:
        assert fault.status is not None
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = f"{fault.retry_after:g}"
        code = {429: "TooManyRequests", 503: "ServiceUnavailable"}.get(
            fault.status, "InjectedFault"
        )
        message = f"Injected fault: HTTP {fault.status}."
        if route == "token":
            # The App Service identity endpoint's own error shape.
            return _Response.json(fault.status, {"statusCode": fault.status, "message": message},
                                  headers)
        if route == "arm":
            return _Response.json(fault.status, {"error": {"code": code, "message": message}},
                                  headers)
        return self._aml_error(fault.status, code, message, headers=headers)

    # -- error shapes ---------------------------------------------------------------------------

    @staticmethod
    def _arm_error(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> _Response:
        return _Response.json(status, {"error": {"code": code, "message": message}}, headers)

    def _aml_error(
        self,
        status: int,
        code: str,
        message: str,
        inner: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> _Response:
        # Azure ML data-plane services answer with ErrorResponse (RootError + correlation).
        request_id = str(uuid.uuid4())
        payload = {
            "error": {
                "code": "UserError" if status < 500 else "ServiceError",
                "severity": None,
                "message": message,
                "messageFormat": None,
                "messageParameters": {},
                "referenceCode": None,
                "detailsUri": None,
                "target": None,
                "details": [],
                "innerError": {"code": code, "innerError": {"code": inner} if inner else None},
                "additionalInfo": None,
            },
            "correlation": {"operation": request_id, "request": request_id[:16]},
            "environment": self.location,
            "location": self.location,
            "time": _iso(_now()),
            "componentName": "azureml-box",
        }
        return _Response.json(status, payload, headers)

    def _unauthenticated(self, route: str, exc: _Unauthenticated) -> _Response:
        challenge = (
            f'Bearer authorization_uri="https://login.windows.net/{self.tenant_id}", '
            f'error="invalid_token", error_description="{exc.message}"'
        )
        headers = {"WWW-Authenticate": challenge}
        if route == "arm":
            return self._arm_error(401, exc.code, exc.message, headers)
        return self._aml_error(401, exc.code, exc.message, headers=headers)

    # -- common checks --------------------------------------------------------------------------

    def _authorize(
        self, req: _Request, route: str, kind: str, sub: str, rg: str, name: str, action: str
    ) -> AzureMLResource | _Response:
        """401 without a valid token, 404 for unknown resources, 403 when not allowed."""
        try:
            identity = self._verify_token(req.headers.get("Authorization"))
        except _Unauthenticated as exc:
            return self._unauthenticated(route, exc)
        self._current_identity.name = identity.name
        resource = self._find(kind, sub, rg, name)
        singular = kind[:-1] if kind != "registries" else "registry"
        if resource is None:
            if route != "arm":
                return self._aml_error(
                    404, "NotFound", f"{singular.capitalize()} {name} not found.",
                    inner="WorkspaceNotFound" if kind == "workspaces" else "RegistryNotFound",
                )
            sub_known, rg_known = self._known_scope(sub, rg)
            if not sub_known:
                return self._arm_error(404, "SubscriptionNotFound",
                                       f"The subscription '{sub}' could not be found.")
            if not rg_known:
                return self._arm_error(404, "ResourceGroupNotFound",
                                       f"Resource group '{rg}' could not be found.")
            return self._arm_error(
                404,
                "ResourceNotFound",
                f"The Resource '{PROVIDER}/{kind}/{name}' under resource group '{rg}' was not "
                "found. For more details please go to https://aka.ms/ARMResourceNotFoundFix",
            )
        if not resource.may_use(identity):
            message = (
                f"The client '{identity.object_id}' with object id '{identity.object_id}' does "
                f"not have authorization to perform action '{PROVIDER}/{kind}/{action}' over "
                f"scope '{resource.arm_id}' or the scope is invalid. If access was recently "
                "granted, please refresh your credentials."
            )
            if route == "arm":
                return self._arm_error(403, "AuthorizationFailed", message)
            return self._aml_error(403, "AuthorizationFailed", message, inner="Forbidden")
        return resource

    # -- handlers: token ------------------------------------------------------------------------

    def _handle_token(self, req: _Request, _: re.Match[str] | None) -> _Response:
        if req.method != "GET":
            return _Response.json(405, {"statusCode": 405, "message": "Method not allowed"})
        if not hmac.compare_digest(
            req.headers.get("X-IDENTITY-HEADER", ""), self.identity_header
        ):
            return _Response.json(
                401, {"statusCode": 401, "message": "Missing or invalid X-IDENTITY-HEADER"}
            )
        resource = req.query.get("resource")
        if not resource:
            return _Response.json(400, {"statusCode": 400, "message": "resource is required"})
        client_id = req.query.get("client_id")
        if client_id is not None:
            identity = self.identities.get(client_id)
            if identity is None:
                return _Response.json(
                    400, {"statusCode": 400, "message": f"Unknown client_id {client_id}"}
                )
        else:
            identity = self.identity
        self._current_identity.name = identity.name
        lifetime = 3600
        return _Response.json(
            200,
            {
                "access_token": self.issue_token(resource, identity, lifetime),
                "expires_on": str(int(time.time()) + lifetime),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": identity.client_id,
            },
        )

    # -- handlers: ARM --------------------------------------------------------------------------

    def _require_api_version(self, req: _Request) -> _Response | None:
        if "api-version" not in req.query:
            return self._arm_error(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        return None

    def _handle_arm_resource(self, req: _Request, m: re.Match[str] | None) -> _Response:
        assert m is not None
        if (bad := self._require_api_version(req)) is not None:
            return bad
        kind = m["kind"].lower()
        if req.method != "GET":
            # Creating/updating workspaces is not emulated: tests register them directly.
            return self._arm_error(
                405, "MethodNotAllowed", f"{req.method} on {kind} is not emulated by the box."
            )
        found = self._authorize(req, "arm", kind, m["sub"], m["rg"], m["name"], "read")
        if isinstance(found, _Response):
            return found
        body = self._workspace_json(found) if kind == "workspaces" else self._registry_json(found)
        return _Response.json(200, body)

    def _handle_arm_list(self, req: _Request, m: re.Match[str] | None) -> _Response:
        assert m is not None
        if (bad := self._require_api_version(req)) is not None:
            return bad
        try:
            identity = self._verify_token(req.headers.get("Authorization"))
        except _Unauthenticated as exc:
            return self._unauthenticated("arm", exc)
        self._current_identity.name = identity.name
        kind = m["kind"].lower()
        sub_known, rg_known = self._known_scope(m["sub"], m["rg"])
        if not sub_known:
            return self._arm_error(404, "SubscriptionNotFound",
                                   f"The subscription '{m['sub']}' could not be found.")
        if not rg_known:
            return self._arm_error(404, "ResourceGroupNotFound",
                                   f"Resource group '{m['rg']}' could not be found.")
        items = [
            r for r in self.resources()
            if r.kind == kind
            and r.subscription_id.lower() == m["sub"].lower()
            and r.resource_group.lower() == m["rg"].lower()
            and r.may_use(identity)
        ]
        render = self._workspace_json if kind == "workspaces" else self._registry_json
        return _Response.json(200, {"value": [render(r) for r in items]})

    def _system_data(self, resource: AzureMLResource) -> dict[str, Any]:
        created = _iso(resource.created)
        return {
            "createdAt": created,
            "createdBy": "amlpromote-tests",
            "createdByType": "Application",
            "lastModifiedAt": created,
            "lastModifiedBy": "amlpromote-tests",
            "lastModifiedByType": "Application",
        }

    def _workspace_json(self, ws: AzureMLResource) -> dict[str, Any]:
        # Shape: azure-rest-api-specs machinelearningservices 2024-10-01-preview
        # examples/Workspace/get.json, trimmed to what a plain (kind=Default) workspace returns.
        rg_scope = f"/subscriptions/{ws.subscription_id}/resourceGroups/{ws.resource_group}"
        short = ws.resource_id.replace("-", "")[:12]
        return {
            "id": ws.arm_id,
            "name": ws.name,
            "type": f"{PROVIDER}/workspaces",
            "location": ws.location,
            "kind": "Default",
            "tags": {},
            "etag": None,
            "identity": {
                "type": "SystemAssigned",
                "principalId": str(uuid.uuid5(uuid.NAMESPACE_URL, ws.arm_id)),
                "tenantId": self.tenant_id,
            },
            "sku": {"name": "Basic", "tier": "Basic"},
            "systemData": self._system_data(ws),
            "properties": {
                "workspaceId": ws.resource_id,
                "friendlyName": ws.name,
                "description": "",
                "storageAccount": (
                    f"{rg_scope}/providers/Microsoft.Storage/storageAccounts/st{short}"
                ),
                "keyVault": f"{rg_scope}/providers/Microsoft.KeyVault/vaults/kv{short}",
                "applicationInsights": (
                    f"{rg_scope}/providers/Microsoft.Insights/components/ai{short}"
                ),
                "containerRegistry": None,
                "discoveryUrl": f"{self.url}{DISCOVERY_PATH}",
                "mlFlowTrackingUri": ws.mlflow_uri_v1,
                "provisioningState": "Succeeded",
                "creationTime": _iso(ws.created),
                "hbiWorkspace": False,
                "storageHbiWorkspace": False,
                "allowPublicAccessWhenBehindVnet": False,
                "publicNetworkAccess": "Enabled",
                "privateLinkCount": 0,
                "privateEndpointConnections": [],
                "sharedPrivateLinkResources": [],
                "v1LegacyMode": False,
                "enableDataIsolation": False,
                "tenantId": self.tenant_id,
                "systemDatastoresAuthMode": "AccessKey",
            },
        }

    def _registry_json(self, reg: AzureMLResource) -> dict[str, Any]:
        return {
            "id": reg.arm_id,
            "name": reg.name,
            "type": f"{PROVIDER}/registries",
            "location": reg.location,
            "kind": None,
            "tags": {},
            "identity": {"type": "SystemAssigned", "principalId": str(uuid.uuid5(
                uuid.NAMESPACE_URL, reg.arm_id)), "tenantId": self.tenant_id},
            "sku": {"name": "P3", "tier": "Standard"},
            "systemData": self._system_data(reg),
            "properties": {
                "discoveryUrl": f"{self.url}{DISCOVERY_PATH}",
                "intellectualPropertyPublisher": None,
                "managedResourceGroup": {
                    "resourceId": f"/subscriptions/{reg.subscription_id}/resourceGroups/"
                    f"azureml-rg-{reg.name}_{reg.resource_id}"
                },
                "mlFlowRegistryUri": reg.mlflow_uri_v1,
                "publicNetworkAccess": "Enabled",
                "regionDetails": [
                    {"location": reg.location, "storageAccountDetails": [], "acrDetails": []}
                ],
                "registryPrivateEndpointConnections": [],
            },
        }

    def _handle_discovery(self, req: _Request, _: re.Match[str] | None) -> _Response:
        # Anonymous in the real service too: it only tells clients which hosts to call.
        base = f"https://{req.host}" if req.host.endswith(AML_HOST_SUFFIX) else self.url
        services = (
            "api", "catalog", "experimentation", "gallery", "history", "hyperdrive",
            "labeling", "modelmanagement", "pipelines", "studio",
        )
        return _Response.json(200, {name: base for name in services})

    def _handle_registry_discovery(self, req: _Request, m: re.Match[str] | None) -> _Response:
        assert m is not None
        try:
            identity = self._verify_token(req.headers.get("Authorization"))
        except _Unauthenticated as exc:
            return self._unauthenticated("registry-discovery", exc)
        self._current_identity.name = identity.name
        reg = self._find_registry_by_name(m["name"])
        if reg is None:
            return self._aml_error(404, "NotFound", f"Registry {m['name']} not found.",
                                   inner="RegistryNotFound")
        if not reg.may_use(identity):
            return self._aml_error(403, "AuthorizationFailed",
                                   f"No access to registry {reg.name}.", inner="Forbidden")
        return _Response.json(
            200,
            {
                "registryName": reg.name,
                "tenantId": self.tenant_id,
                "primaryRegion": reg.location,
                "regions": [reg.location],
                "subscriptionId": reg.subscription_id,
                "resourceGroup": reg.resource_group,
                "workspaceName": None,
                "primaryRegionResourceProviderUri": f"{self.url}/",
            },
        )

    # -- handlers: MLflow -----------------------------------------------------------------------

    def _handle_mlflow(self, req: _Request, m: re.Match[str] | None) -> _Response:
        assert m is not None
        kind = m["kind"].lower()
        action = "models/write" if req.method != "GET" else "models/read"
        found = self._authorize(req, "mlflow", kind, m["sub"], m["rg"], m["name"], action)
        if isinstance(found, _Response):
            return found
        if found.backend is None:
            return self._aml_error(
                503, "ServiceUnavailable", f"{found.name} has no MLflow backend in this box."
            )
        # The raw (still percent-encoded) suffix keeps the request byte-identical.
        suffix = req.raw_path[m.start("rest"):]
        api_path = m["rest"]
        if _LOGGED_MODELS.match(api_path) and not found.logged_models:
            return _Response(404)  # what Azure ML answers today: 404, empty body
        if _MLFLOW_ARTIFACTS_API.match(api_path):
            # Azure ML does not proxy artifacts through its MLflow API; the backend's
            # `--serve-artifacts` endpoints must stay unreachable through the box.
            return _Response(404)
        if (refused := self._refuse_over_tag_limits(found.backend, req, api_path)) is not None:
            return refused
        response = self._forward(found.backend, req, suffix)
        if kind == "workspaces":
            response = self._publish_artifact_uris(found, response, api_path)
        return response

    def _refuse_over_tag_limits(self, backend: MlflowServer, req: _Request, api_path: str) \
            -> _Response | None:
        """Azure ML's answer to an MLflow write whose tags break its limits (RUN_TAG_LIMITS and
        the rest, above), before the backend sees it; None when the write may go on. The limits
        count the tags the entity already has: one more on a run that holds 50 is refused."""
        endpoint = _MLFLOW_API_PREFIX.sub("", api_path)
        limits = _MLFLOW_TAG_WRITES.get(endpoint)
        if req.method != "POST" or limits is None:
            return None
        try:
            body = json.loads(req.body or b"{}")
        except ValueError:
            return None  # malformed: the backend answers it as MLflow does
        if not isinstance(body, dict):
            return None
        if isinstance(body.get("tags"), list):
            pairs = [(t.get("key"), t.get("value")) for t in body["tags"] if isinstance(t, dict)]
        elif "key" in body:
            pairs = [(body.get("key"), body.get("value"))]
        else:
            return None
        existing: list[str] = []
        if reader := _MLFLOW_TAG_OWNERS.get(endpoint):
            path, params, entity = reader
            query = {k: str(body[k]) for k in params if body.get(k) is not None}
            found = self._backend_get(backend, f"/api/2.0/mlflow/{path}", query)
            node = (found or {}).get(entity) or {}
            tags = (node.get("data") or {}).get("tags") if entity == "run" else node.get("tags")
            existing = [str(t.get("key")) for t in tags or [] if isinstance(t, dict)]
        problem = tag_limit_problem(pairs, limits, existing)
        return None if problem is None else self._mlflow_validation_error(problem)

    def _mlflow_validation_error(self, message: str) -> _Response:
        """Azure ML's MLflow API refusing a request it validated: 400 with the service's error
        document (PascalCase) and MLflow's `error_code`, as users quote it (mlflow/mlflow#11462,
        Azure/azure-sdk-for-python#35685). It has no `message` key, so MLflow's RestException
        shows it as "INVALID_PARAMETER_VALUE: Response: {...}"."""
        request_id = uuid.uuid4().hex
        payload = {
            "Error": {"Code": "ValidationError", "Severity": None, "Message": message,
                      "MessageFormat": None, "MessageParameters": None, "ReferenceCode": None,
                      "DetailsUri": None, "Target": None, "Details": [], "InnerError": None,
                      "DebugInfo": None, "AdditionalInfo": None},
            "Correlation": {"operation": request_id, "request": request_id[:16]},
            "Environment": self.location,
            "Location": self.location,
            "Time": _iso(_now()),
            "ComponentName": "mlflow",
            "statusCode": 400,
            "error_code": "INVALID_PARAMETER_VALUE",
        }
        return _Response.json(400, payload)

    @staticmethod
    def _forward(backend: MlflowServer, req: _Request, suffix: str) -> _Response:
        target = suffix + (f"?{req.raw_query}" if req.raw_query else "")
        headers = {
            name: req.headers[name]
            for name in ("Content-Type", "Accept", "User-Agent")
            if req.headers.get(name)
        }
        conn = http.client.HTTPConnection(backend.host, backend.port, timeout=120)
        try:
            conn.request(req.method, target, body=req.body or None, headers=headers)
            upstream = conn.getresponse()
            body = upstream.read()
            keep = ("Content-Type", "Content-Disposition")
            out = {k: v for k in keep if (v := upstream.getheader(k))}
            return _Response(upstream.status, body, out)
        finally:
            conn.close()

    def _public_artifact_uri(self, ws: AzureMLResource, value: str,
                             names: dict[str, str] | None = None) -> str:
        """`mlflow-artifacts:/E/R/artifacts/p` (backend) -> the workspace's run artifact URI.

        Real workspaces report `azureml://<region>.api.azureml.ms/mlflow/v2.0/subscriptions/
        .../workspaces/W/experiments/E/runs/R/artifacts`; azureml-mlflow maps that form to the
        run artifact ("history") service, which this box serves from Azurite. Inside a job
        they report the short form instead (see ARTIFACT_URI_FORMS), with the experiment's name.
        """
        base = f"azureml://{self.netloc}/mlflow/v2.0{ws.arm_id}/experiments"
        if m := _BACKEND_RUN_ARTIFACTS.match(value):
            if ws.artifact_uri_form != "long":
                name = self._experiment_name(ws, m["exp"], names if names is not None else {})
                return f"azureml://experiments/{name}/runs/{m['run']}/artifacts{m['rest'] or ''}"
            return f"{base}/{m['exp']}/runs/{m['run']}/artifacts{m['rest'] or ''}"
        if m := _BACKEND_EXPERIMENT.match(value):
            return f"{base}/{m['exp']}"
        return value

    def _experiment_name(self, ws: AzureMLResource, experiment_id: str,
                         names: dict[str, str]) -> str:
        if experiment_id not in names:
            assert ws.backend is not None
            found = self._backend_get(ws.backend, "/api/2.0/mlflow/experiments/get",
                                      {"experiment_id": experiment_id})
            names[experiment_id] = found["experiment"]["name"] if found else experiment_id
        return names[experiment_id]

    def _version_artifact_uri(self, ws: AzureMLResource, value: str) -> str:
        """A model version's run-artifact location in the workspace's datastore form (when its
        `artifact_uri_form` is one): only this workspace's own runs are renamed."""
        if ws.artifact_uri_form not in ("datastore", "datastore-short"):
            return value
        own = (f"azureml://{self.netloc}/mlflow/v2.0{ws.arm_id}/experiments/".lower(),
               "azureml://experiments/", "mlflow-artifacts:/")
        m = _SOURCE_RUN_ARTIFACTS.search(value) or _BACKEND_RUN_ARTIFACTS.match(value)
        if m is None or not value.lower().startswith(own):
            return value
        path = f"ExperimentRun/dcid.{m['run']}{m['rest'] or ''}"
        if ws.artifact_uri_form == "datastore-short":
            return f"azureml://datastores/{ARTIFACT_DATASTORE}/paths/{path}"
        return (f"azureml://subscriptions/{ws.subscription_id}/resourcegroups/"
                f"{ws.resource_group}/workspaces/{ws.name}/datastores/{ARTIFACT_DATASTORE}"
                f"/paths/{path}")

    def _publish_artifact_uris(self, ws: AzureMLResource, response: _Response,
                               api_path: str = "") -> _Response:
        versions = bool(_VERSION_APIS.match(api_path)) \
            and ws.artifact_uri_form in ("datastore", "datastore-short")
        if "json" not in response.headers.get("Content-Type", "") or not (
                versions or b"mlflow-artifacts:/" in response.body):
            return response
        names: dict[str, str] = {}

        def walk(node: Any, key: str = "") -> Any:
            if isinstance(node, dict):
                return {k: walk(v, k) for k, v in node.items()}
            if isinstance(node, list):
                return [walk(v) for v in node]
            if versions and isinstance(node, str) and key in (
                    "source", "storage_location", "artifact_uri") and (
                    renamed := self._version_artifact_uri(ws, node)) != node:
                return renamed
            if isinstance(node, str) and node.startswith("mlflow-artifacts:/"):
                return self._public_artifact_uri(ws, node, names)
            return node

        body = json.dumps(walk(json.loads(response.body))).encode()
        return _Response(response.status, body, dict(response.headers))

    # -- handlers: artifact service -------------------------------------------------------------

    def _artifact_json(self, art: _Artifact) -> dict[str, Any]:
        artifact_id = f"{art.origin}/{art.container}/{art.path}"
        return {
            "artifactId": artifact_id,
            "origin": art.origin,
            "container": art.container,
            "path": art.path,
            "etag": art.etag,
            "createdTime": _iso(art.created),
            "dataPath": {
                "dataStoreName": ARTIFACT_DATASTORE,
                "relativePath": art.blob_name,
                "sqlDataPath": None,
            },
            "tags": {},
        }

    def _content_json(self, ws: AzureMLResource, art: _Artifact, *, write: bool) -> dict[str, Any]:
        return {
            "contentUri": self._sas_url(ws.blob_container, art.blob_name, write=write),
            "origin": art.origin,
            "container": art.container,
            "path": art.path,
            "tags": {},
        }

    def _handle_artifact(self, req: _Request, m: re.Match[str] | None) -> _Response:
        assert m is not None
        action = "experiments/runs/write" if req.method != "GET" else "experiments/runs/read"
        found = self._authorize(req, "artifact", "workspaces", m["sub"], m["rg"], m["name"],
                                action)
        if isinstance(found, _Response):
            return found
        if self.azurite is None:
            return self._aml_error(503, "ServiceUnavailable", "No blob storage in this box.")
        parts = [unquote(p) for p in m["rest"].split("/")]
        if len(parts) < 2 or not all(parts[:2]):
            return self._aml_error(404, "NotFound", f"{req.method} {req.path} is not emulated.")
        return self._artifact_operation(found, parts[0], parts[1], parts[2:], req)

    def _artifact_operation(
        self, ws: AzureMLResource, origin: str, container: str, op: list[str], req: _Request
    ) -> _Response:
        # Both services share these operations under their container prefix:
        # .../batch/metadata             POST create empty artifacts -> write SAS URIs
        # ...                            GET  list (paged: continuationToken / nextLink)
        # .../path?path=                 GET  list under a path (paged)
        # .../contentinfo?path=          GET  read SAS URI of one artifact
        # .../metadata?path=             GET  metadata of one artifact
        # .../prefix/contentinfo?path=   GET  read SAS URIs under a prefix (paged)
        method = req.method
        if op == ["batch", "metadata"] and method == "POST":
            return self._artifacts_create(ws, origin, container, req)
        if op in ([], [""]) and method == "GET":
            return self._artifacts_list(ws, origin, container, req)
        if op == ["path"] and method == "GET":
            return self._artifacts_list(ws, origin, container, req)
        if op == ["contentinfo"] and method == "GET":
            return self._artifact_lookup(ws, origin, container, req, content=True)
        if op == ["metadata"] and method == "GET":
            return self._artifact_lookup(ws, origin, container, req, content=False)
        if op == ["prefix", "contentinfo"] and method == "GET":
            return self._artifacts_list(ws, origin, container, req, content=True)
        return self._aml_error(404, "NotFound", f"{method} {req.path} is not emulated.")

    def _handle_run_artifact(self, req: _Request, m: re.Match[str] | None) -> _Response:
        assert m is not None
        action = "experiments/runs/write" if req.method != "GET" else "experiments/runs/read"
        found = self._authorize(req, "artifact", "workspaces", m["sub"], m["rg"], m["name"],
                                action)
        if isinstance(found, _Response):
            return found
        if self.azurite is None:
            return self._aml_error(503, "ServiceUnavailable", "No blob storage in this box.")
        run_id = unquote(m["run"])
        # Strict where the service is silent: the run must exist in the experiment the path
        # names (RunArtifactsOperations has both routes: experiments/{experimentName} and
        # experimentids/{experimentId}); a wrong experiment is the run-not-found the history
        # service answers for an unknown run (azureml-mlflow raises it as RunNotFound).
        experiment = self._run_experiment(found, run_id)
        named = unquote(m["experiment"])
        # `experimentids/ID` names the experiment by id only. `experiments/X` takes its name,
        # and also the id: azureml-mlflow (get_run_info, RunArtifactsClient) puts whatever the
        # run's artifact URI holds in that segment, and the long form carries the id.
        by_id = m["by"].lower() == "experimentids"
        if experiment is None or named not in (experiment[:1] if by_id else experiment):
            return self._aml_error(404, "NotFound",
                                   f"Run {run_id} not found in experiment {named}.",
                                   inner="RunNotFound")
        op = [unquote(p) for p in (m["rest"] or "").strip("/").split("/") if p]
        # Where real workspaces keep run artifacts: ExperimentRun/dcid.<run id>/<path>.
        return self._artifact_operation(found, "ExperimentRun", f"dcid.{run_id}", op, req)

    # -- handlers: model assets ------------------------------------------------------------------

    def _handle_arm_model_version(self, req: _Request, m: re.Match[str] | None) -> _Response:
        """A registered version as an Azure ML model asset. Like Azure ML, a version whose files
        hold an MLmodel at their root is an MLflow model (`mlflow_model`, with the flavors from
        MLmodel, deployable without code); any other is a `custom_model`."""
        assert m is not None
        if (bad := self._require_api_version(req)) is not None:
            return bad
        kind = m["kind"].lower()
        if kind == "registries":
            return self._registry_model_version(req, m)
        if req.method != "GET":
            return self._arm_error(405, "MethodNotAllowed",
                                   f"{req.method} on {kind} models is not emulated by the box.")
        found = self._authorize(req, "arm", kind, m["sub"], m["rg"], m["name"], "models/read")
        if isinstance(found, _Response):
            return found
        name, version = unquote(m["model"]), unquote(m["version"])
        mv = None
        if found.backend is not None:
            mv = self._backend_get(found.backend, "/api/2.0/mlflow/model-versions/get",
                                   {"name": name, "version": version})
        if mv is None:
            return self._arm_error(404, "ResourceNotFound",
                                   f"Model container {name} version {version} not found.")
        return _Response.json(200, self._model_version_json(found, mv["model_version"]))

    def _model_version_json(self, ws: AzureMLResource, mv: dict[str, Any]) -> dict[str, Any]:
        source = str(mv.get("source") or "")
        origin = container = prefix = None
        job = None
        if rm := _SOURCE_RUN_ARTIFACTS.search(source):
            origin, container, job = "ExperimentRun", f"dcid.{rm['run']}", rm["run"]
            prefix = (rm["rest"] or "").strip("/")
        elif lm := _SOURCE_LOCAL_UPLOAD.match(source):
            origin, container = "LocalUpload", lm["container"]
            prefix = (lm["rest"] or "").strip("/")
        mlmodel = None
        if origin is not None and container is not None:
            with ws.lock:
                store = ws.artifacts.get((origin, container), {})
                mlmodel = store.get(f"{prefix}/MLmodel" if prefix else "MLmodel")
        flavors: dict[str, Any] = {}
        if mlmodel is not None:
            import yaml

            document = yaml.safe_load(self.read_blob(ws, mlmodel.blob_name)) or {}
            for flavor, data in (document.get("flavors") or {}).items():
                flavors[flavor] = {"data": {
                    k: v if isinstance(v, str) else json.dumps(v)
                    for k, v in (data or {}).items()}}
        model_uri = (
            f"azureml://subscriptions/{ws.subscription_id}/resourcegroups/{ws.resource_group}"
            f"/workspaces/{ws.name}/datastores/{ARTIFACT_DATASTORE}/paths/"
            f"{origin}/{container}/{prefix}" if origin else source
        )
        created = datetime.fromtimestamp(int(mv.get("creation_timestamp") or 0) / 1000,
                                         tz=timezone.utc)
        return {
            "id": f"{ws.arm_id}/models/{mv['name']}/versions/{mv['version']}",
            "name": str(mv["version"]),
            "type": f"{PROVIDER}/workspaces/models/versions",
            "systemData": {"createdAt": _iso(created), "createdBy": "amlpromote-tests",
                           "createdByType": "Application", "lastModifiedAt": _iso(created)},
            "properties": {
                "description": mv.get("description") or None,
                "tags": {t["key"]: t.get("value", "") for t in mv.get("tags") or []},
                "properties": {},
                "isArchived": False,
                "isAnonymous": False,
                "flavors": flavors,
                "modelType": "mlflow_model" if mlmodel is not None else "custom_model",
                "modelUri": model_uri,
                "jobName": job,
                "stage": "Development",
            },
        }

    @staticmethod
    def _backend_get(backend: MlflowServer, path: str, query: dict[str, str]) \
            -> dict[str, Any] | None:
        conn = http.client.HTTPConnection(backend.host, backend.port, timeout=30)
        try:
            conn.request("GET", f"{path}?{urlencode(query)}")
            response = conn.getresponse()
            body = response.read()
            return json.loads(body) if response.status == 200 else None
        finally:
            conn.close()

    def _run_experiment(self, ws: AzureMLResource, run_id: str) -> tuple[str, str] | None:
        """(experiment id, experiment name) of a run in the workspace's backend, or None.
        Cached: a run never changes experiment, and every file request asks."""
        cached = self._run_experiments.get((ws.arm_id, run_id))
        if cached is not None:
            return cached
        if ws.backend is None:
            return None
        run = self._backend_get(ws.backend, "/api/2.0/mlflow/runs/get", {"run_id": run_id})
        if run is None:
            return None
        exp_id = str(run["run"]["info"]["experiment_id"])
        exp = self._backend_get(ws.backend, "/api/2.0/mlflow/experiments/get",
                                {"experiment_id": exp_id})
        if exp is None:
            return None
        found = (exp_id, str(exp["experiment"]["name"]))
        self._run_experiments[(ws.arm_id, run_id)] = found
        return found

    def _run_exists(self, ws: AzureMLResource, run_id: str) -> bool:
        if ws.backend is None:
            return False
        conn = http.client.HTTPConnection(ws.backend.host, ws.backend.port, timeout=30)
        try:
            conn.request("GET", f"/api/2.0/mlflow/runs/get?{urlencode({'run_id': run_id})}")
            response = conn.getresponse()
            response.read()
            return response.status == 200
        finally:
            conn.close()

    def _artifacts_create(
        self, ws: AzureMLResource, origin: str, container: str, req: _Request
    ) -> _Response:
        try:
            paths = [p["path"] for p in json.loads(req.body or b"{}").get("paths", [])]
        except (ValueError, TypeError, KeyError, AttributeError):
            return self._aml_error(
                400, "BadRequest", 'Body must be {"paths": [{"path": ...}]}.'
            )
        artifacts: dict[str, Any] = {}
        contents: dict[str, Any] = {}
        with ws.lock:
            store = ws.artifacts.setdefault((origin, container), {})
            for path in paths:
                clean = path.strip("/")
                if not clean or ".." in clean.split("/"):
                    return self._aml_error(400, "BadRequest", f"Invalid artifact path {path!r}.")
                # Re-creating an existing path hands out a fresh write URI (overwrite), which
                # is what a retried upload needs.
                art = store.get(clean) or _Artifact(
                    origin=origin,
                    container=container,
                    path=clean,
                    blob_name=f"{origin}/{container}/{clean}",
                    created=_now(),
                    etag=uuid.uuid4().hex,
                )
                store[clean] = art
                artifacts[path] = self._artifact_json(art)
                contents[path] = self._content_json(ws, art, write=True)
        return _Response.json(
            200, {"artifacts": artifacts, "artifactContentInformation": contents, "errors": {}}
        )

    def _artifacts_list(
        self,
        ws: AzureMLResource,
        origin: str,
        container: str,
        req: _Request,
        *,
        content: bool = False,
    ) -> _Response:
        prefix = (req.query.get("path") or "").strip("/")
        with ws.lock:
            # A container nothing was written to lists as empty (a fresh run has no files).
            store = ws.artifacts.get((origin, container), {})
            items = sorted(
                (a for a in store.values()
                 if not prefix or a.path == prefix or a.path.startswith(prefix + "/")),
                key=lambda a: a.path,
            )
        start = int(req.query.get("continuationToken") or 0)
        size = int(req.query.get("pageSize") or _LIST_PAGE_SIZE)
        page = items[start:start + size]
        token = str(start + size) if start + size < len(items) else None
        next_link = None
        if token is not None:
            query = {k: v for k, v in req.query.items() if k != "continuationToken"}
            query["continuationToken"] = token
            next_link = f"https://{req.host}{req.raw_path}?{urlencode(query)}"
        render: Callable[[_Artifact], dict[str, Any]] = (
            (lambda a: self._content_json(ws, a, write=False)) if content else self._artifact_json
        )
        return _Response.json(
            200,
            {"value": [render(a) for a in page], "continuationToken": token, "nextLink": next_link},
        )

    def _artifact_lookup(
        self, ws: AzureMLResource, origin: str, container: str, req: _Request, *, content: bool
    ) -> _Response:
        path = (req.query.get("path") or "").strip("/")
        with ws.lock:
            art = ws.artifacts.get((origin, container), {}).get(path)
        if art is None:
            return self._aml_error(
                404, "NotFound", f"Artifact {origin}/{container}/{path} not found.",
                inner="ArtifactNotFound",
            )
        if content:
            return _Response.json(200, self._content_json(ws, art, write=False))
        return _Response.json(200, self._artifact_json(art))

    # -- handlers: registry model versions (ARM) ------------------------------------------------

    def _registry_scope(self, req: _Request, m: re.Match[str], action: str) \
            -> AzureMLResource | _Response:
        if (bad := self._require_api_version(req)) is not None:
            return bad
        if m["kind"].lower() != "registries":
            return self._arm_error(405, "MethodNotAllowed",
                                   f"{req.method} {req.path} is emulated for registries only.")
        return self._authorize(req, "arm", "registries", m["sub"], m["rg"], m["name"], action)

    def _registry_model_version(self, req: _Request, m: re.Match[str]) -> _Response:
        """GET, PUT (a long-running create: 201 + Azure-AsyncOperation) and DELETE (a
        long-running delete: 202 + Location) of one registry model version. Like Azure ML: a
        version's files must be in place when it is created (an `mlflow_model` needs MLmodel at
        the root of `modelUri`), in the pending upload handed out for that very version, and an
        existing version's asset path cannot change (409)."""
        action = {"GET": "read", "PUT": "write", "DELETE": "delete"}.get(req.method)
        if action is None:
            return self._arm_error(405, "MethodNotAllowed", f"{req.method} is not allowed.")
        found = self._registry_scope(req, m, f"models/versions/{action}")
        if isinstance(found, _Response):
            return found
        key = (unquote(m["model"]), unquote(m["version"]))
        if req.method == "GET":
            with found.lock:
                record = found.model_versions.get(key)
            if record is None:
                return self._arm_error(404, "ResourceNotFound",
                                       f"Model {key[0]} version {key[1]} not found in registry "
                                       f"{found.name}.")
            return _Response.json(200, self._registry_version_json(found, record))
        if req.method == "DELETE":
            return self._registry_delete(req, found, key)
        try:
            body = json.loads(req.body or b"{}")
            properties = dict(body["properties"])
        except (ValueError, TypeError, KeyError):
            return self._arm_error(400, "UserError", "Body must be {\"properties\": {...}}.")
        problem = registry_tag_problem(properties) or self._check_model_uri(found, key, properties)
        if problem is not None:
            return self._arm_error(400, "UserError", problem)
        with found.lock:
            existing = found.model_versions.get(key)
            if existing is not None:
                # The asset path is where the registry keeps the files, or what the creating
                # PUT named (a client repeating its PUT names its pending upload again).
                if properties.get("modelUri") not in (existing.properties.get("modelUri"),
                                                      existing.submitted_uri):
                    return self._arm_error(409, "UserError", "Asset paths cannot be updated.")
                for field_name in ("description", "tags", "properties", "stage", "isArchived"):
                    if field_name in properties:
                        existing.properties[field_name] = properties[field_name]
                return _Response.json(200, self._registry_version_json(found, existing))
            submitted = str(properties.get("modelUri") or "")
            record = _RegistryVersion(key[0], key[1], properties, _now(),
                                      time.monotonic() + REGISTRY_LRO_SECONDS, uuid.uuid4().hex,
                                      submitted_uri=submitted)
            found.model_versions[key] = record
        if found.copy_on_register:
            # Azure ML does not promise that a registered version keeps its files where the
            # client staged them: azure-ai-ml reads a registry version's files from its
            # `path` as GET answers it (ModelOperations.download, get_storage_details_for_
            # registry_assets), never from the pending upload. Strict: the registry copies them
            # into its own storage and `modelUri` names the copy.
            record.properties["modelUri"] = self._copy_into_registry(found, key, submitted)
        base = f"https://{req.host}" if req.host.endswith(AML_HOST_SUFFIX) else self.url
        status_url = base + (
            f"/subscriptions/{found.subscription_id}/providers/{PROVIDER}/locations/"
            f"{found.location}/mfeOperationsStatus/{record.operation}?api-version="
            f"{req.query['api-version']}")
        return _Response.json(201, self._registry_version_json(found, record),
                              {"Azure-AsyncOperation": status_url,
                               "x-ms-async-operation-timeout": "PT1H"})

    def _check_model_uri(self, reg: AzureMLResource, key: tuple[str, str],
                         properties: dict[str, Any]) -> str | None:
        """Why a new version's `modelUri` is not acceptable, if it is not (an existing
        version's PUT is judged against its asset path instead).

        A pending upload is per version: the route is `.../models/{name}/versions/{version}/
        startPendingUpload` (azure-rest-api-specs, RegistryModelVersions_
        CreateOrGetStartPendingUpload), and azure-ai-ml asks one for the version it then creates
        (`_check_and_upload_path` -> `get_sas_uri_for_registry_asset` with that name and
        version). Whether the service accepts another version's container is not documented;
        strict: it does not (400, not a conflict)."""
        with reg.lock:
            if key in reg.model_versions:
                return None
            handed_out = {u.container: u for u in reg.pending_uploads.values()}
        uri = str(properties.get("modelUri") or "")
        parts = urlsplit(uri)
        segments = [unquote(p) for p in parts.path.split("/") if p]
        if not parts.netloc.endswith(BLOB_HOST_SUFFIX) or not segments \
                or segments[0] not in handed_out:
            return (f"modelUri {uri!r} is not a location this registry handed out "
                    "(startPendingUpload).")
        upload = handed_out[segments[0]]
        if (upload.name, upload.version) != key:
            return (f"modelUri {uri!r} is the pending upload of model {upload.name} version "
                    f"{upload.version}; model {key[0]} version {key[1]} must be uploaded to "
                    "its own (startPendingUpload of that version).")
        folder = "/".join(segments[1:])
        names = self.container_blob_names(segments[0], f"{folder}/" if folder else None)
        if not names:
            return f"No files found at modelUri {uri!r}."
        model_type = properties.get("modelType") or "custom_model"
        if model_type == "mlflow_model" and f"{folder}/MLmodel".lstrip("/") not in names:
            return "An mlflow_model needs an MLmodel file at the root of its modelUri."
        return None

    def _registry_version_json(self, reg: AzureMLResource, record: _RegistryVersion) \
            -> dict[str, Any]:
        created = _iso(record.created)
        properties = {
            "description": None, "tags": {}, "properties": {}, "isArchived": False,
            "isAnonymous": False, "flavors": None, "modelType": "custom_model",
            "modelUri": None, "jobName": None, "stage": None,
            **record.properties,
            "provisioningState": record.state,
        }
        return {
            # Registry assets are identified by their asset id, not an ARM path (azure-ai-ml's
            # AMLVersionedArmId accepts nothing else for a registry version).
            "id": f"azureml://registries/{reg.name}/models/{record.name}/versions/"
                  f"{record.version}",
            "name": record.version,
            "type": f"{PROVIDER}/registries/models/versions",
            "systemData": {"createdAt": created, "createdBy": "amlpromote-tests",
                           "createdByType": "Application", "lastModifiedAt": created},
            "properties": properties,
        }

    def _handle_registry_model_versions(self, req: _Request, m: re.Match[str] | None) \
            -> _Response:
        """List one model's versions, paged (`$skip` in `nextLink`); 404 for a model that has
        no version. `listViewType` (RegistryModelVersions_List; ListViewType: ActiveOnly,
        ArchivedOnly, All) picks archived or active versions; without it only active ones are
        listed, as for every Azure ML asset list (azure-ai-ml's `models.list` sends ActiveOnly
        unless asked for archived ones)."""
        assert m is not None
        if req.method != "GET":
            return self._arm_error(405, "MethodNotAllowed", f"{req.method} is not allowed.")
        found = self._registry_scope(req, m, "models/versions/read")
        if isinstance(found, _Response):
            return found
        name = unquote(m["model"])
        views = {"activeonly": (False,), "archivedonly": (True,), "all": (False, True)}
        view = views.get(str(req.query.get("listViewType") or "ActiveOnly").lower())
        if view is None:
            return self._arm_error(400, "UserError",
                                   f"listViewType {req.query['listViewType']!r} is not one of "
                                   "ActiveOnly, ArchivedOnly, All.")
        with found.lock:
            every = [r for (n, _), r in found.model_versions.items() if n == name]
        if not every:
            return self._arm_error(404, "ResourceNotFound",
                                   f"Model container {name} not found in registry {found.name}.")
        records = [r for r in every if bool(r.properties.get("isArchived")) in view]
        records.sort(key=lambda r: (0, int(r.version)) if r.version.isdigit() else (1, 0))
        start = int(req.query.get("$skip") or 0)
        size = int(req.query.get("$top") or _LIST_PAGE_SIZE)
        page = records[start:start + size]
        next_link = None
        if start + size < len(records):
            query = {k: v for k, v in req.query.items() if k != "$skip"}
            query["$skip"] = str(start + size)
            next_link = f"{self.url}{req.raw_path}?{urlencode(query)}"
        return _Response.json(200, {"value": [self._registry_version_json(found, r)
                                              for r in page], "nextLink": next_link})

    def _handle_registry_model_containers(self, req: _Request, m: re.Match[str] | None) \
            -> _Response:
        """List a registry's models (one container per model with a version), paged by
        `$skip` in `nextLink` like the versions list; `$top` sets the page size."""
        assert m is not None
        if req.method != "GET":
            return self._arm_error(405, "MethodNotAllowed", f"{req.method} is not allowed.")
        found = self._registry_scope(req, m, "models/read")
        if isinstance(found, _Response):
            return found
        with found.lock:
            by_name: dict[str, list[_RegistryVersion]] = {}
            for (name, _), record in found.model_versions.items():
                by_name.setdefault(name, []).append(record)
        names = sorted(by_name)
        start = int(req.query.get("$skip") or 0)
        size = int(req.query.get("$top") or _LIST_PAGE_SIZE)
        next_link = None
        if start + size < len(names):
            query = {k: v for k, v in req.query.items() if k != "$skip"}
            query["$skip"] = str(start + size)
            next_link = f"{self.url}{req.raw_path}?{urlencode(query)}"
        value = []
        for name in names[start:start + size]:
            numbers = [int(r.version) for r in by_name[name] if r.version.isdigit()]
            created = _iso(min(r.created for r in by_name[name]))
            value.append({
                "id": f"{found.arm_id}/models/{name}",
                "name": name,
                "type": f"{PROVIDER}/registries/models",
                "systemData": {"createdAt": created, "createdBy": "amlpromote-tests",
                               "createdByType": "Application", "lastModifiedAt": created},
                "properties": {"description": None, "tags": {}, "properties": {},
                               "isArchived": False,
                               "latestVersion": str(max(numbers)) if numbers else None,
                               "nextVersion": str(max(numbers, default=0) + 1),
                               "provisioningState": "Succeeded"},
            })
        return _Response.json(200, {"value": value, "nextLink": next_link})

    def _handle_arm_operation(self, req: _Request, m: re.Match[str] | None) -> _Response:
        assert m is not None
        try:
            identity = self._verify_token(req.headers.get("Authorization"))
        except _Unauthenticated as exc:
            return self._unauthenticated("arm", exc)
        self._current_identity.name = identity.name
        if m["monitor"].lower() == "mfeoperationresults":
            return self._registry_deletion_result(req, m)
        for reg in self.resources():
            with reg.lock:
                record = next((r for r in reg.model_versions.values()
                               if r.operation == m["op"]), None)
            if record is not None and reg.subscription_id.lower() == m["sub"].lower():
                done = record.state == "Succeeded"
                return _Response.json(200, {
                    "id": req.path, "name": m["op"],
                    "status": "Succeeded" if done else "InProgress",
                    "startTime": _iso(record.created),
                    **({"endTime": _iso(_now())} if done else {}),
                })
        return self._arm_error(404, "ResourceNotFound", f"Operation {m['op']} not found.")

    def _handle_registry_pending_upload(self, req: _Request, m: re.Match[str] | None) \
            -> _Response:
        """A temporary blob container and a SAS to write it (createOrGet: the same
        `pendingUploadId` gets the same container again)."""
        assert m is not None
        if req.method != "POST":
            return self._arm_error(405, "MethodNotAllowed", f"{req.method} is not allowed.")
        found = self._registry_scope(req, m, "models/versions/write")
        if isinstance(found, _Response):
            return found
        if self.azurite is None:
            return self._arm_error(503, "ServiceUnavailable", "No blob storage in this box.")
        try:
            body = json.loads(req.body or b"{}")
        except ValueError:
            return self._arm_error(400, "UserError", "Body must be JSON.")
        kind = body.get("pendingUploadType") or "TemporaryBlobReference"
        if kind != "TemporaryBlobReference":
            return self._arm_error(400, "UserError", f"pendingUploadType {kind!r} is not "
                                                     "supported.")
        upload_id = str(body.get("pendingUploadId") or uuid.uuid4())
        key = (unquote(m["model"]), unquote(m["version"]))
        with found.lock:
            upload = found.pending_uploads.get(upload_id)
            if upload is not None and (upload.name, upload.version) != key:
                return self._arm_error(400, "UserError",
                                       f"Pending upload {upload_id} belongs to model "
                                       f"{upload.name} version {upload.version}.")
            if upload is None:
                upload = _PendingUpload(f"pending-{uuid.uuid4().hex}", *key)
                found.pending_uploads[upload_id] = upload
                self._blob_service_client().create_container(upload.container)
            container = upload.container
        blob_uri = f"https://{ACCOUNT_NAME}{BLOB_HOST_SUFFIX}/{container}"
        return _Response.json(200, {
            "blobReferenceForConsumption": {
                "blobUri": blob_uri,
                "storageAccountArmId": self._storage_arm_id(found),
                "credential": {"credentialType": "SAS",
                               "sasUri": f"{blob_uri}?{self._container_sas(container, True)}"},
            },
            "pendingUploadId": upload_id,
            "pendingUploadType": "TemporaryBlobReference",
        })

    def _handle_registry_data_reference(self, req: _Request, m: re.Match[str] | None) \
            -> _Response:
        """A read SAS for the files of a registered version (`blobUri` = its modelUri), or,
        with `data_reference_credential = "NoCredentials"`, no credential at all.

        NoCredentials is the spec's own example answer of RegistryDataReferences_
        GetBlobReferenceSAS; its credential type is `AnonymousAccessCredential` ("Access
        credential with no credentials", azure-ai-ml's generated arm_ml_service models), and
        azure-ai-ml then reads `blobUri`'s container with no credential at all
        (ModelOperations.download: `get_storage_client(credential=None, ...)`, which lists and
        downloads). So the container allows anonymous read and list; nothing else does, and
        the answer carries no `sasUri`."""
        assert m is not None
        if req.method != "POST":
            return self._arm_error(405, "MethodNotAllowed", f"{req.method} is not allowed.")
        found = self._registry_scope(req, m, "models/versions/read")
        if isinstance(found, _Response):
            return found
        try:
            blob_uri = str(json.loads(req.body or b"{}").get("blobUri") or "")
        except (ValueError, AttributeError):
            return self._arm_error(400, "UserError", "Body must be JSON.")
        key = (unquote(m["model"]), unquote(m["version"]))
        with found.lock:
            record = found.model_versions.get(key)
        if record is None:
            return self._arm_error(404, "ResourceNotFound",
                                   f"Model {key[0]} version {key[1]} not found.")
        model_uri = str(record.properties.get("modelUri") or "")
        if blob_uri.rstrip("/") != model_uri.rstrip("/"):
            return self._arm_error(400, "UserError", "blobUri is not the asset's location.")
        container = unquote(urlsplit(model_uri).path.split("/")[1])
        if found.data_reference_credential == "NoCredentials":
            self._blob_service_client().get_container_client(container) \
                .set_container_access_policy(signed_identifiers={}, public_access="container")
            credential: dict[str, str] = {"credentialType": "NoCredentials"}
        else:
            credential = {"credentialType": "SAS",
                          "sasUri": f"{model_uri}?{self._container_sas(container, False)}"}
        return _Response.json(200, {
            "blobReferenceForConsumption": {
                "blobUri": model_uri,
                "storageAccountArmId": self._storage_arm_id(found),
                "credential": credential,
            },
        })

    @staticmethod
    def _storage_arm_id(reg: AzureMLResource) -> str:
        return (f"/subscriptions/{reg.subscription_id}/resourceGroups/azureml-rg-{reg.name}"
                f"/providers/Microsoft.Storage/storageAccounts/{ACCOUNT_NAME}")

    def _container_sas(self, container: str, write: bool) -> str:
        """A container SAS: to write a pending upload, or to read a version's files.

        What a pending upload's SAS allows is not documented (PendingUploadResponseDto says
        only "SAS"); azure-ai-ml uploads with it and reads blob properties and sets metadata
        (`_check_and_upload_path` -> `upload_artifact`, BlobStorageClient), never lists.
        Strict: read, create, write and add, no list and no delete (Azurite enforces a SAS's
        permissions). A data reference is for consumption, and azure-ai-ml lists with it
        (`download_artifact_from_storage_url`): read and list."""
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        now = _now()
        permission = ContainerSasPermissions(read=True, list=not write, write=write,
                                             create=write, add=write)
        return str(generate_container_sas(
            account_name=ACCOUNT_NAME, container_name=container, account_key=ACCOUNT_KEY,
            permission=permission, start=now - timedelta(minutes=5),
            expiry=now + timedelta(hours=1), protocol="https"))

    def _registry_delete(self, req: _Request, reg: AzureMLResource,
                         key: tuple[str, str]) -> _Response:
        """DELETE of a registry model version: 202 + Location (+ x-ms-async-operation-timeout),
        as the spec's RegistryModelVersions_Delete example answers (200 and 204 are allowed
        too; the strictest is the long-running one). The Location URL answers 202 while the
        deletion runs, then 204 (ARM's async-operations contract for DELETE). With
        `delete_outcome = "Failed"` the operation fails: the version stays and the Location URL
        answers the error document with a 4xx status, as ARM does for a failed operation
        (azure-core's LocationPolling treats any status but 200/201/202/204 as a failure)."""
        with reg.lock:
            if key not in reg.model_versions:
                return _Response(204)
            operation = uuid.uuid4().hex
            reg.deletions[operation] = _RegistryDeletion(
                key[0], key[1], time.monotonic() + REGISTRY_LRO_SECONDS, reg.delete_outcome)
            if reg.delete_outcome != "Failed":
                del reg.model_versions[key]
        return _Response(202, headers={"Location": self._operation_url(req, reg, operation,
                                                                       "mfeOperationResults"),
                                       "x-ms-async-operation-timeout": "PT1H"})

    def _operation_url(self, req: _Request, reg: AzureMLResource, operation: str,
                       monitor: str) -> str:
        base = f"https://{req.host}" if req.host.endswith(AML_HOST_SUFFIX) else self.url
        return base + (f"/subscriptions/{reg.subscription_id}/providers/{PROVIDER}/locations/"
                       f"{reg.location}/{monitor}/{operation}?api-version="
                       f"{req.query['api-version']}")

    def _registry_deletion_result(self, req: _Request, m: re.Match[str]) -> _Response:
        for reg in self.resources():
            with reg.lock:
                deletion = reg.deletions.get(m["op"])
            if deletion is None or reg.subscription_id.lower() != m["sub"].lower():
                continue
            if time.monotonic() < deletion.ready_at:
                return _Response(202, headers={"Location": self._operation_url(
                    req, reg, m["op"], "mfeOperationResults")})
            if deletion.outcome == "Failed":
                return self._arm_error(
                    400, "UserError",
                    f"Deleting model {deletion.name} version {deletion.version} failed: the "
                    "registry could not remove the version's replicas.")
            return _Response(204)
        return self._arm_error(404, "ResourceNotFound", f"Operation {m['op']} not found.")

    def _copy_into_registry(self, reg: AzureMLResource, key: tuple[str, str],
                            model_uri: str) -> str:
        """Copy a version's staged files into the registry's own container; the copy's URL."""
        files = self.model_uri_files(model_uri)
        folder = f"models/{key[0]}/versions/{key[1]}"
        client = self._blob_service_client().get_container_client(reg.blob_container)
        for rel, data in files.items():
            client.upload_blob(f"{folder}/{rel}", data, overwrite=True)
        return (f"https://{ACCOUNT_NAME}{BLOB_HOST_SUFFIX}/{reg.blob_container}/"
                f"{quote(folder)}")

    # -- registry state, for assertions and for what other clients do ---------------------------

    def add_registry_version(self, registry: AzureMLResource, name: str, version: str,
                             files: dict[str, bytes], *, tags: dict[str, str] | None = None,
                             archived: bool = False) -> dict[str, Any]:
        """A version registered (already Succeeded) by another client: its files in a pending
        upload of its own, as if that client had staged them there."""
        container = f"pending-{uuid.uuid4().hex}"
        with registry.lock:
            registry.pending_uploads[uuid.uuid4().hex] = _PendingUpload(container, name, version)
        client = self._blob_service_client().create_container(container)
        for rel, data in files.items():
            client.upload_blob(f"model/{rel}", data)
        model_uri = f"https://{ACCOUNT_NAME}{BLOB_HOST_SUFFIX}/{container}/model"
        record = _RegistryVersion(
            name, version, {"modelType": "mlflow_model", "modelUri": model_uri,
                            "tags": dict(tags or {}), "isArchived": archived},
            _now(), 0.0, uuid.uuid4().hex, submitted_uri=model_uri)
        with registry.lock:
            if (name, version) in registry.model_versions:
                raise ValueError(f"{name} version {version} exists")
            registry.model_versions[(name, version)] = record
        return self._registry_version_json(registry, record)

    def set_registry_version_archived(self, registry: AzureMLResource, name: str, version: str,
                                      archived: bool = True) -> None:
        """Archive (or restore) a version, as `az ml model archive --registry-name` does."""
        with registry.lock:
            registry.model_versions[(name, version)].properties["isArchived"] = archived

    def registry_versions(self, registry: AzureMLResource, name: str) -> list[dict[str, Any]]:
        """A registry model's versions as GET answers them, by version number."""
        with registry.lock:
            records = [r for (n, _), r in registry.model_versions.items() if n == name]
        records.sort(key=lambda r: int(r.version) if r.version.isdigit() else 0)
        return [self._registry_version_json(registry, r) for r in records]

    def container_blob_names(self, container: str, prefix: str | None = None) -> list[str]:
        client = self._blob_service_client().get_container_client(container)
        try:
            return [b.name for b in client.list_blobs(name_starts_with=prefix)]
        except Exception:  # a container that does not exist holds nothing
            return []

    def model_uri_files(self, model_uri: str) -> dict[str, bytes]:
        """Every file under a registry version's `modelUri` (relative path -> bytes)."""
        segments = [unquote(p) for p in urlsplit(model_uri).path.split("/") if p]
        container, folder = segments[0], "/".join(segments[1:])
        prefix = f"{folder}/" if folder else ""
        client = self._blob_service_client().get_container_client(container)
        return {name[len(prefix):]: client.download_blob(name).readall()
                for name in self.container_blob_names(container, prefix or None)}

    def _handle_unknown(self, req: _Request, _: re.Match[str] | None) -> _Response:
        return self._aml_error(404, "NotFound", f"No route for {req.method} {req.path}.")


# -- HTTP plumbing --------------------------------------------------------------------------------


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        box: AzureMLBox,
        context: ssl.SSLContext,
    ) -> None:
        super().__init__(address, handler)
        self.box = box
        self.ssl_context = context

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, in the request's own thread, so a slow or broken client
        # cannot stall the accept loop.
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        self.RequestHandlerClass(tls, client_address, self)  # type: ignore[arg-type]

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-response (timeouts in fault tests) are expected; stay quiet.
        pass


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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the Azure SDK pipelines expect
    server: _TLSServer
    timeout = 120

    def log_message(self, format: str, *args: Any) -> None:
        pass  # every request lands in AzureMLBox.requests instead

    def _serve(self) -> None:
        started = time.time()
        split = urlsplit(self.path)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = _read_chunked(self.rfile)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        req = _Request(
            method=self.command,
            raw_path=split.path,
            path=unquote(split.path),
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            raw_query=split.query,
            headers=self.headers,
            body=body,
            host=(self.headers.get("Host") or "").split(":")[0].lower(),
        )
        box = self.server.box
        try:
            response, route, identity, fault = box._dispatch(req)
        except Exception as exc:  # the box must answer, not hang the client
            response = box._aml_error(500, "InternalServerError", f"azureml-box bug: {exc!r}")
            route, identity, fault = "error", None, None
        request_id = str(uuid.uuid4())
        headers = {
            "x-ms-request-id": request_id,
            "x-ms-correlation-request-id": request_id,
            **response.headers,
        }
        # Recorded before the response goes out: a client that gets its answer must find its
        # request in the log already (tests assert on the log right after the call returns).
        box._record(
            RequestRecord(
                method=req.method,
                path=req.path,
                query={
                    k: ("<redacted>" if k.lower() in _SECRET_QUERY_KEYS else v)
                    for k, v in req.query.items()
                },
                route=route,
                status=response.status,
                identity=identity,
                fault=fault,
                started=started,
                duration=time.time() - started,
                host=req.host,
            )
        )
        if response.drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(response.status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve


class _ProxyServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], handler: type[socketserver.BaseRequestHandler],
        box: AzureMLBox,
    ) -> None:
        super().__init__(address, handler)
        self.box = box

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class _ProxyHandler(socketserver.StreamRequestHandler):
    """Just enough of an HTTP proxy: CONNECT tunnels to the box's own services, 403 otherwise."""

    server: _ProxyServer
    rbufsize = 0  # unbuffered: no TLS bytes may be swallowed while reading the CONNECT header
    timeout = 120

    def handle(self) -> None:
        box = self.server.box
        started = time.time()
        request_line = self.rfile.readline(65537).decode("latin-1").strip()
        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
            pass
        parts = request_line.split()
        if len(parts) != 3:
            return
        method, target = parts[0].upper(), parts[1]
        if method == "CONNECT":
            host, _, port_text = target.rpartition(":")
            destination = box._tunnel_destination(host.lower(), int(port_text or 0))
        else:
            host, destination = urlsplit(target).hostname or target, None
        status = 200 if destination is not None else 403

        def record() -> None:
            box._record(RequestRecord(
                method=method, path=target, query={}, route="proxy", status=status,
                identity=None, fault=None, started=started, duration=time.time() - started,
                host=host,
            ))

        if destination is None:
            box.blocked_egress.append(target)
            record()
            message = f"azureml-box proxy: {target} is not part of the box; refused.\r\n"
            self.wfile.write(
                f"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                f"Content-Length: {len(message)}\r\n\r\n{message}".encode()
            )
            return
        record()
        if host.lower().endswith(BLOB_HOST_SUFFIX) and box._inspects_blobs():
            self.wfile.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            _BlobInspector(box, self.connection, destination).serve()
            return
        with contextlib.closing(socket.create_connection(destination, timeout=10)) as upstream:
            self.wfile.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            _pipe(self.connection, upstream)


_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                         "te", "trailer", "upgrade", "expect", "content-length"})


class _BlobInspector:
    """Blob storage seen through the proxy: TLS is terminated here (the test CA's certificate for
    `*.blob.core.windows.net`), each request is checked against the "blob" faults, recorded
    (without its SAS signature) and forwarded to Azurite, one at a time per connection."""

    def __init__(self, box: AzureMLBox, client: socket.socket,
                 destination: tuple[str, int]) -> None:
        self.box = box
        self.client = client
        self.destination = destination

    def serve(self) -> None:
        box = self.box
        assert box._blob_cert is not None and box.ca is not None
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_context.load_cert_chain(box._blob_cert.chain_path, box._blob_cert.key_path)
        upstream_context = ssl.create_default_context(cafile=str(box.ca.bundle_path))
        try:
            tls = server_context.wrap_socket(self.client, server_side=True)
        except (ssl.SSLError, OSError):
            return
        upstream = http.client.HTTPSConnection(*self.destination, context=upstream_context,
                                               timeout=120)
        reader = tls.makefile("rb")
        try:
            while self._one(tls, reader, upstream):
                pass
        except (OSError, ssl.SSLError, http.client.HTTPException, ValueError):
            pass
        finally:
            upstream.close()
            with contextlib.suppress(OSError):
                reader.close()
                tls.close()

    def _one(self, tls: ssl.SSLSocket, reader: Any, upstream: http.client.HTTPSConnection) \
            -> bool:
        box = self.box
        request_line = reader.readline(65537).decode("latin-1").strip()
        if not request_line:
            return False
        method, target, _ = request_line.split(" ", 2)
        headers: list[tuple[str, str]] = []
        while (line := reader.readline(65537)) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip(), value.strip()))
        lowered = {k.lower(): v for k, v in headers}
        started = time.time()
        split = urlsplit(target)
        path = unquote(split.path)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        # Put Blob (no comp, no restype) and Put Block List (comp=blocklist) set a blob's content.
        commit = method == "PUT" and "restype" not in query \
            and query.get("comp", "blocklist") == "blocklist"
        fault = box._take_fault("blob", method, path, commit)
        if lowered.get("expect", "").lower() == "100-continue" and not (fault and fault.drop):
            tls.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        length = int(lowered.get("content-length") or 0)
        if fault is not None and fault.drop:
            # A connection lost midway through the upload: half the body, then nothing.
            reader.read(length // 2)
            self._record(method, split, 0, started, "drop", lowered.get("host", ""))
            with contextlib.suppress(OSError):
                tls.shutdown(socket.SHUT_RDWR)
            return False
        if lowered.get("transfer-encoding", "").lower() == "chunked":
            body = _read_chunked(reader)
        else:
            body = reader.read(length) if length else b""
        fault_text = None
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            fault_text = f"delay={fault.delay:g}"
            if fault.status is not None:
                fault_text = f"{fault.status}" + (
                    f" retry-after={fault.retry_after:g}" if fault.retry_after is not None else ""
                )
                code = {429: "ServerBusy", 503: "ServerBusy", 500: "InternalError"}.get(
                    fault.status, "InjectedFault")
                payload = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
                           f"<Message>Injected fault: HTTP {fault.status}.</Message></Error>")
                extra = {"x-ms-error-code": code, "Content-Type": "application/xml"}
                if fault.retry_after is not None:
                    extra["Retry-After"] = f"{fault.retry_after:g}"
                self._send(tls, fault.status, list(extra.items()), payload.encode(), method)
                self._record(method, split, fault.status, started, fault_text,
                             lowered.get("host", ""))
                return True
        forwarded = {k: v for k, v in headers if k.lower() not in _HOP_BY_HOP}
        upstream.request(method, target, body=body, headers=forwarded)
        response = upstream.getresponse()
        data = response.read()
        if fault is not None and fault.corrupt is not None and 200 <= response.status < 300:
            # The stored blob changes before the client hears that its write succeeded, so
            # whatever the client does next sees the altered bytes (no race with the test).
            container, _, blob_name = path.lstrip("/").partition("/")
            box._corrupt_blob(container, blob_name, fault.corrupt)
            fault_text = f"corrupt={fault.corrupt}"
        out = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
        self._send(tls, response.status, out, data, method,
                   length=response.getheader("Content-Length"))
        self._record(method, split, response.status, started, fault_text,
                     lowered.get("host", ""))
        return True

    @staticmethod
    def _send(tls: ssl.SSLSocket, status: int, headers: list[tuple[str, str]], body: bytes,
              method: str, length: str | None = None) -> None:
        reason = http.client.responses.get(status, "Status")
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines += [f"{k}: {v}" for k, v in headers]
        # A HEAD answer announces the blob's length without a body.
        size = length if method == "HEAD" and length is not None else str(len(body))
        lines.append(f"Content-Length: {size}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        tls.sendall(head + (b"" if method == "HEAD" else body))

    def _record(self, method: str, split: Any, status: int, started: float,
                fault: str | None, host: str) -> None:
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        self.box._record(RequestRecord(
            method=method, path=unquote(split.path),
            query={k: ("<redacted>" if k.lower() in _SECRET_QUERY_KEYS else v)
                   for k, v in query.items()},
            route="blob", status=status, identity=None, fault=fault, started=started,
            duration=time.time() - started, host=host.split(":")[0].lower(),
        ))


def _pipe(a: socket.socket, b: socket.socket, idle_timeout: float = 120.0) -> None:
    sockets = [a, b]
    while True:
        readable, _, _ = select.select(sockets, [], [], idle_timeout)
        if not readable:
            return
        for sock in readable:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            other = b if sock is a else a
            try:
                other.sendall(data)
            except OSError:
                return


__all__ = [
    "AzureMLBox",
    "AzureMLResource",
    "Fault",
    "Identity",
    "RequestRecord",
]
