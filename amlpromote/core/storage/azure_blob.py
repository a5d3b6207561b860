"""Model files in an Azure ML workspace: its artifact services and their blob storage.

Azure ML keeps a run's artifacts (and LocalUpload folders) in the workspace's blob storage, behind
two services that speak the same protocol (what azureml-mlflow's RunArtifactsClient and
LocalArtifactClient call):

- `POST .../batch/metadata` with `{"paths": [{"path": P}, ...]}` creates empty artifacts and
  answers `artifactContentInformation[P].contentUri`: a write SAS URL of the blob;
- `GET .../prefix/contentinfo?path=P` lists the artifacts under P with read SAS URLs (paged by
  `continuationToken` / `nextLink`); `GET .../contentinfo?path=P` gives one.

Run artifacts live under `/history/v1.0/<workspace scope>/experiments/E/runs/R/artifacts`,
LocalUpload folders under `/artifact/v2.0/<workspace scope>/artifacts/<origin>/<container>`, both
on the host of the workspace's MLflow URI, with the workspace credential's bearer token.

An Azure ML registry has no artifact service: it hands out a SAS URL of a whole blob container
(`ContainerFolder`), written blob by blob and read with List Blobs where its SAS allows
(core/registries/azureml_registry.py checks a pending upload blob by blob instead). Both kinds
of target upload through the same `BlockUploader`.

Uploads stream from the source into fixed-size blocks: each file larger than one block goes up
as Put Block requests, several at once, each retried on its own (honouring Retry-After on
429/503), then one Put Block List commits them; smaller files are one Put Blob. Memory is bounded
by a pool of block buffers shared by every file of a transfer. SAS URLs carry a signature: no
message built here contains a URL's query, and everything passes `redact_text` besides.
"""

from __future__ import annotations

import base64
import posixpath
import queue
import re
import threading
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from amlpromote.core.azure.connection import AzureMlConnection, AzureMlScope, connection_of
from amlpromote.core.errors import (
    AuthFailed,
    BadInput,
    NotFound,
    OperationFailed,
    Unreachable,
)
from amlpromote.core.retry import (
    RETRYABLE_STATUS,
    RetryPolicy,
    TransientError,
    call_with_retry,
    parse_retry_after,
)
from amlpromote.core.storage.artifacts import (
    ArtifactFile,
    Chunks,
    StreamingBody,
    response_chunks,
    response_detail,
    safe_relative_path,
)
from amlpromote.core.uris import redact_text

# 8 MiB blocks: large enough that per-request overhead is small on a fast link, small enough that
# a retried block costs little. A file up to one block is a single Put Blob.
BLOCK_SIZE = 8 * 1024 * 1024
# Blocks of one file in flight at once, and block buffers of one whole transfer (every file's
# filling buffer plus those in flight): the upload's memory stays under BUFFERS * BLOCK_SIZE.
BLOCKS_IN_FLIGHT = 4
BUFFERS = 6
# Artifacts created per batch/metadata call: azureml-mlflow's default (AZUREML_ARTIFACT_BATCH_SIZE).
CREATE_BATCH = 50
STORAGE_VERSION = "2021-12-02"  # Put Block / Put Block List / Put Blob as used here
_LIST_PAGE_LIMIT = 10_000
# The `azureml://` forms of a workspace's files, matched on the URI's path (after the "host").
# Run artifacts, as azureml-mlflow 1.60 reads them (azureml/mlflow/_store/artifact/utils.py,
# `get_run_info`): the workspace form `azureml://HOST/mlflow/v2.0/subscriptions/S/resourceGroups/
# RG/providers/Microsoft.MachineLearningServices/workspaces/W/experiments/E/runs/R[/artifacts/P]`
# (`_ARTIFACT_URI_REGEX`; mlflow/mlflow#9495 shows it with an experiment id), and the short form
# that runs inside Azure ML jobs report, `azureml://experiments/NAME/runs/R/artifacts[/P]`
# (`_ARTIFACT_URI_EXP_RUN_REGEX`; mlflow/mlflow#7806, microsoft/MLOps#74). The plugin's own
# patterns are unanchored (a trailing `/foo` after the run id is silently ignored); these are not.
_RUN_ARTIFACTS = re.compile(
    r"^/mlflow/v[12]\.0/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
    r"Microsoft\.MachineLearningServices/workspaces/(?P<ws>[^/]+)/experiments/(?P<exp>[^/]+)"
    r"/runs/(?P<run>[^/]+)(?:/artifacts(?P<rest>/.*)?)?$", re.IGNORECASE)
_SHORT_RUN_ARTIFACTS = re.compile(  # host "experiments"
    r"^/(?P<exp>[^/]+)/runs/(?P<run>[^/]+)(?:/artifacts(?P<rest>/.*)?)?$")
# `azureml://artifacts/ORIGIN/CONTAINER[/P]`: what azureml-mlflow's LocalArtifactClient names.
_ASSET_ARTIFACTS = re.compile(r"^/(?P<origin>[^/]+)/(?P<container>[^/]+)(?P<rest>/.*)?$")
# Datastore paths, as azure-ai-ml 1.35 parses them (azure/ai/ml/constants/_common.py):
# `azureml://datastores/DS/paths/P` (SHORT_URI_REGEX_FORMAT), `azureml://datastores/DS/
# ExperimentRun/...` (OUTPUT_URI_REGEX_FORMAT), `azureml://subscriptions/S/resourcegroups/RG/
# workspaces/W/datastores/DS/paths/P` (LONG_URI_REGEX_FORMAT, what a model asset's path shows),
# and a job's outputs `azureml://jobs/JOB/outputs/OUTPUT/paths/P` (JOB_URI_REGEX_FORMAT).
_DATASTORE_SHORT = re.compile(r"^/(?P<ds>[^/]+)/paths/(?P<path>.+)$")  # host "datastores"
_DATASTORE_OUTPUT = re.compile(r"^/(?P<ds>[^/]+)/(?P<path>ExperimentRun/.+)$")  # likewise
_DATASTORE_LONG = re.compile(  # host "subscriptions"
    r"^/(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/]+)/workspaces/(?P<ws>[^/]+)"
    r"/datastores/(?P<ds>[^/]+)/paths/(?P<path>.+)$", re.IGNORECASE)
_JOB_OUTPUT = re.compile(r"^/(?P<job>[^/]+)/outputs/(?P<output>[^/]+)/paths/(?P<path>.*)$")
# The workspace's artifact store is the datastore behind both artifact services: run artifacts
# at ExperimentRun/dcid.<run id>/ (azureml-core's RUN_ORIGIN, and the blobs' names in the
# workspace's `azureml` container, Azure/azureml-examples#1123), uploads at LocalUpload/<id>/.
_ARTIFACT_DATASTORE = "workspaceartifactstore"
_STORE_PATH = re.compile(
    r"^(?P<origin>ExperimentRun|LocalUpload)/(?P<container>[^/]+)(?P<rest>/.*)?$")
# A job's default output: "artifacts is the reserved keyword to refer to the output that
# represents the default artifact location", `azureml://jobs/R/outputs/artifacts/paths/P` being
# `runs:/R/P` (MicrosoftDocs/azure-docs, machine-learning/how-to-manage-models.md).
_JOB_ARTIFACTS_OUTPUT = "artifacts"


@dataclass(frozen=True)
class ArtifactFolder:
    """A folder in one artifact container: the service endpoint and the folder's path in it."""

    base_url: str  # .../runs/R/artifacts or .../artifacts/<origin>/<container>
    root: str  # path of the folder inside the container ("" for the whole container)
    label: str  # for messages

    def path_of(self, rel: str) -> str:
        return posixpath.join(self.root, safe_relative_path(rel)) if self.root \
            else safe_relative_path(rel)


def artifact_folder(connection: AzureMlConnection, uri: str) -> ArtifactFolder:
    """Where an `azureml://` artifact URI's files are, for this workspace.

    Accepted: run artifacts (`azureml://HOST/mlflow/v2.0/.../workspaces/W/experiments/E/runs/R/
    artifacts/P`, `azureml://experiments/E/runs/R/artifacts/P`), artifact service folders
    (`azureml://artifacts/ORIGIN/CONTAINER/P`), the workspace artifact store's run and upload
    folders as datastore paths (`azureml://datastores/workspaceartifactstore/paths/ExperimentRun/
    dcid.R/P`, the same with `subscriptions/S/resourcegroups/RG/workspaces/W/` in front) and a
    job's default output (`azureml://jobs/R/outputs/artifacts/paths/P`). Forms without a
    workspace are this connection's workspace's; a form naming another workspace is refused
    (BadInput) rather than read from this one, which is what azureml-mlflow would do: it
    resolves every artifact URI against the tracking store's workspace."""
    scope = connection.scope
    parts = urlsplit(uri)
    if scope.is_registry:
        raise OperationFailed(f"reading or writing files of an Azure ML registry ({scope.name}) "
                              "is not supported",
                              hint="promote into an Azure ML workspace (--workspace)")
    host = parts.netloc.lower()
    if host == "artifacts":
        # azureml://artifacts/<origin>/<container>/<path>: a LocalUpload-style asset folder.
        match = _ASSET_ARTIFACTS.match(parts.path)
        if match is None:
            raise _unrecognised(uri)
        return _asset_folder(scope, match["origin"], match["container"], match["rest"])
    if host == "experiments":
        match = _SHORT_RUN_ARTIFACTS.match(parts.path)
        if match is None:
            raise _unrecognised(uri)
        return _run_folder(scope, match["exp"], match["run"], match["rest"])
    if host in ("datastores", "subscriptions"):
        found = (_DATASTORE_SHORT.match(parts.path) or _DATASTORE_OUTPUT.match(parts.path)
                 if host == "datastores" else _DATASTORE_LONG.match(parts.path))
        if found is None:
            raise _unrecognised(uri)
        if host == "subscriptions":
            _check_same_workspace(scope, uri, found["sub"], found["rg"], found["ws"])
        return _datastore_folder(scope, uri, found["ds"], found["path"])
    if host == "jobs":
        job = _JOB_OUTPUT.match(parts.path)
        if job is None:
            raise _unrecognised(uri)
        if job["output"].lower() != _JOB_ARTIFACTS_OUTPUT:
            # Named outputs live in a datastore (workspaceblobstore by default), not with the run.
            raise _unreadable_datastore(scope, uri, f"output '{job['output']}' of job "
                                                    f"{job['job']}")
        return _asset_folder(scope, "ExperimentRun", f"dcid.{job['job']}", "/" + job["path"])
    match = _RUN_ARTIFACTS.match(parts.path)
    if match is None:
        raise _unrecognised(uri)
    _check_same_workspace(scope, uri, match["sub"], match["rg"], match["ws"])
    return _run_folder(scope, match["exp"], match["run"], match["rest"])


def _run_folder(scope: AzureMlScope, experiment: str, run: str, rest: str | None) \
        -> ArtifactFolder:
    # The run history service, as azureml-mlflow's RunArtifactsClient calls it.
    base = (f"{scope.host_url}/history/v1.0{scope.arm_id}/experiments/{quote(experiment)}"
            f"/runs/{quote(run)}/artifacts")
    return ArtifactFolder(base, (rest or "").strip("/"), f"run {run}")


def _asset_folder(scope: AzureMlScope, origin: str, container: str, rest: str | None) \
        -> ArtifactFolder:
    # The artifact service, as azureml-mlflow's LocalArtifactClient calls it.
    base = (f"{scope.host_url}/artifact/v2.0{scope.arm_id}/artifacts/"
            f"{quote(origin)}/{quote(container)}")
    label = f"run {container[len('dcid.'):]}" if origin == "ExperimentRun" \
        and container.startswith("dcid.") else f"{origin}/{container}"
    return ArtifactFolder(base, (rest or "").strip("/"), label)


def _datastore_folder(scope: AzureMlScope, uri: str, datastore: str, path: str) \
        -> ArtifactFolder:
    """A datastore path, when it is one the artifact services serve.

    azureml-mlflow has no datastore support: it takes `azureml://datastores/DS/paths/P` for an
    artifact service folder with origin DS and container "paths", which does not exist. azure-ai-ml
    reads datastores straight from their storage account, with the datastore's secrets
    (`datastores/DS/listSecrets`) or the caller's own storage role; amlpromote reads a workspace's
    files only through its artifact services, with the workspace credential. Those serve the
    workspace artifact store's run and upload folders, so those paths are read through them;
    any other datastore path is refused with what to do instead."""
    store_path = _STORE_PATH.match(path.strip("/")) \
        if datastore.lower() == _ARTIFACT_DATASTORE else None
    if store_path is None or (store_path["origin"] == "ExperimentRun"
                              and not store_path["container"].startswith("dcid.")):
        raise _unreadable_datastore(scope, uri, f"datastore '{datastore}'")
    return _asset_folder(scope, store_path["origin"], store_path["container"], store_path["rest"])


def _check_same_workspace(scope: AzureMlScope, uri: str, subscription: str, resource_group: str,
                          workspace: str) -> None:
    # ARM names are case-insensitive. Azure ML "doesn't support cross-workspace operations"
    # (learn.microsoft.com, how-to-manage-models-mlflow): another workspace's files are not this
    # one's, and reading the same path here would copy the wrong model or none.
    named = (subscription.lower(), resource_group.lower(), workspace.lower())
    if named != (scope.subscription.lower(), scope.resource_group.lower(), scope.name.lower()):
        raise BadInput(f"{redact_text(uri)} is in Azure ML workspace '{workspace}' (resource "
                       f"group '{resource_group}', subscription {subscription}), not in "
                       f"{scope.display}",
                       hint="promote from the workspace that holds the files: --source its "
                            "MLflow URI (azureml://.../workspaces/NAME)")


def _unrecognised(uri: str) -> OperationFailed:
    return OperationFailed(f"unrecognised Azure ML artifact URI {redact_text(uri)}",
                           hint="report this with the model version's source; amlpromote reads "
                                "run artifacts, artifact service folders and the workspace "
                                "artifact store's paths")


def _unreadable_datastore(scope: AzureMlScope, uri: str, where: str) -> BadInput:
    return BadInput(f"the files of {redact_text(uri)} are in {where} of {scope.display}, which "
                    "amlpromote cannot read: it reads a workspace's files through its artifact "
                    "services, not from a datastore's storage account",
                    hint="register the model in the workspace from its run (runs:/RUN_ID/PATH) "
                         "or from a local folder (az ml model download, then mlflow "
                         "register_model), and promote that version")


def artifact_source(client: Any, uri: str) -> AzureArtifactSource:
    connection = connection_of(client)
    return AzureArtifactSource(ArtifactService(connection), artifact_folder(connection, uri))


def artifact_sink(client: Any, uri: str) -> AzureArtifactSink:
    connection = connection_of(client)
    return AzureArtifactSink(ArtifactService(connection), artifact_folder(connection, uri))


# -- HTTP -----------------------------------------------------------------------------------------


def _blob_name(url: str) -> str:
    """A SAS URL without its query (the signature), for messages."""
    parts = urlsplit(url)
    return redact_text(f"{parts.netloc}{parts.path}")


class ArtifactService:
    """Requests to the artifact services and to blob storage, with one error mapping."""

    def __init__(self, connection: AzureMlConnection, pool_size: int = 32) -> None:
        import requests
        from requests.adapters import HTTPAdapter

        self.connection = connection
        self.policy = RetryPolicy.from_env()
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)

    def request(self, method: str, url: str, what: str, *, authorize: bool = False,
                checked: bool = True, **kwargs: Any) -> Any:
        """One request; raises TransientError for what is worth another attempt.

        `checked=False` hands back any HTTP answer for the caller to judge (Azure Resource
        Manager's error documents are mapped in core/registries/azureml_registry.py); transport
        failures are still TransientError."""
        import requests

        headers = dict(kwargs.pop("headers", None) or {})
        if authorize:
            headers["Authorization"] = self.connection.authorization()
        else:
            headers.setdefault("x-ms-version", STORAGE_VERSION)
        kwargs.setdefault("timeout", (10, 300))
        # requests' exceptions spell out the URL, signature included: they are not chained, so
        # not even a --verbose traceback shows them.
        try:
            response = self._session.request(method, url, headers=headers, **kwargs)
        except requests.exceptions.SSLError as exc:
            if "certificate" in str(exc).lower():
                raise OperationFailed(f"{what}: {urlsplit(url).netloc} presented a certificate "
                                      "that is not trusted",
                                      hint="set REQUESTS_CA_BUNDLE to the CA bundle that signs "
                                           "this service's certificate") from None
            # A connection cut midway through TLS (EOF in violation of the protocol).
            raise TransientError(f"{what}: connection to {urlsplit(url).netloc} failed "
                                 "(SSLError)") from None
        except requests.exceptions.ProxyError:
            # Also what a connection lost midway through a proxy tunnel looks like.
            raise TransientError(f"{what}: connection to {urlsplit(url).netloc} through the "
                                 "proxy failed (ProxyError)") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                requests.exceptions.ChunkedEncodingError) as exc:
            raise TransientError(f"{what}: connection to {urlsplit(url).netloc} failed "
                                 f"({exc.__class__.__name__})") from None
        if checked:
            self._check(response, what, authorize)
        return response

    def call(self, method: str, url: str, what: str, **kwargs: Any) -> Any:
        """`request`, retried within the policy's bounds."""
        def attempt() -> Any:
            return self.request(method, url, what, **kwargs)

        try:
            return call_with_retry(attempt, self.policy)
        except TransientError as exc:
            raise Unreachable(f"{exc}; gave up after retries",
                              hint="Azure ML or its storage keeps failing; run again later — "
                                   "nothing was registered") from exc

    def _check(self, response: Any, what: str, authorized: bool) -> None:
        status = response.status_code
        if status < 400:
            return
        code = response.headers.get("x-ms-error-code", "")
        detail = response_detail(response)
        response.close()
        if status in RETRYABLE_STATUS:
            raise TransientError(f"{what}: HTTP {status} {code}".strip(),
                                 retry_after=parse_retry_after(response.headers.get("Retry-After")))
        scope = self.connection.scope
        noun = "registry" if scope.is_registry else "workspace"
        if status in (401, 403) and authorized:
            raise AuthFailed(f"{what}: {scope.display} refused "
                             f"{self.connection.credential.description} (HTTP {status})",
                             hint=f"check the identity's role on the {noun} (e.g. AzureML Data "
                                  "Scientist) and its tenant, or choose another --credential")
        if status in (401, 403):
            raise AuthFailed(f"{what}: blob storage refused the signed URL (HTTP {status}"
                             f"{' ' + code if code else ''})",
                             hint=f"the {noun}'s signed URL expired or its storage refuses "
                                  "access; run again, and check the storage account's network "
                                  "rules")
        if status == 404:
            raise NotFound(f"{what}: HTTP 404 {code}".strip(),
                           hint=f"the files are not in {scope.display}")
        raise OperationFailed(f"{what}: HTTP {status} {code} {detail}".strip(),
                              hint="run again with --verbose; if it persists, check the "
                                   f"{noun}'s storage")

    # -- the artifact service protocol ----------------------------------------------------------

    def create(self, folder: ArtifactFolder, paths: list[str]) -> dict[str, str]:
        """Create empty artifacts; returns each path's write SAS URL."""
        body = {"paths": [{"path": p} for p in paths]}
        response = self.call("POST", f"{folder.base_url}/batch/metadata",
                             f"preparing the upload of {len(paths)} file(s) to {folder.label}",
                             authorize=True, json=body)
        payload = response.json()
        errors = payload.get("errors") or {}
        if errors:
            first = next(iter(errors.values()))
            error = first.get("error", first) if isinstance(first, dict) else {}
            raise OperationFailed(f"Azure ML refused to create artifacts in {folder.label}: "
                                  f"{error.get('code', '')} {error.get('message', '')}".strip(),
                                  hint="check the paths and the run's state")
        contents = payload.get("artifactContentInformation") or {}
        missing = [p for p in paths if not (contents.get(p) or {}).get("contentUri")]
        if missing:
            raise OperationFailed(f"Azure ML gave no upload URL for {missing[0]}",
                                  hint="run again; report it if it persists")
        return {p: str(contents[p]["contentUri"]) for p in paths}

    def list_content(self, folder: ArtifactFolder) -> dict[str, str]:
        """Every artifact under the folder (relative path -> read SAS URL), all pages."""
        url: str | None = f"{folder.base_url}/prefix/contentinfo"
        params: dict[str, str] | None = {"path": folder.root} if folder.root else None
        found: dict[str, str] = {}
        for _ in range(_LIST_PAGE_LIMIT):
            if url is None:
                break
            payload = self.call("GET", url, f"listing the files of {folder.label}",
                                authorize=True, params=params).json()
            for item in payload.get("value") or []:
                path = str(item.get("path") or "").strip("/")
                if folder.root:
                    if not path.startswith(folder.root + "/"):
                        continue
                    path = path[len(folder.root) + 1:]
                if path and item.get("contentUri"):
                    found[safe_relative_path(path)] = str(item["contentUri"])
            token = payload.get("continuationToken")
            next_link = payload.get("nextLink")
            if next_link:
                url, params = str(next_link), None
            elif token:
                params = {**({"path": folder.root} if folder.root else {}),
                          "continuationToken": str(token)}
            else:
                url = None
        return found

    def content_uri(self, folder: ArtifactFolder, rel: str) -> str:
        payload = self.call("GET", f"{folder.base_url}/contentinfo",
                            f"locating {rel} in {folder.label}", authorize=True,
                            params={"path": folder.path_of(rel)}).json()
        uri = payload.get("contentUri")
        if not uri:
            raise NotFound(f"{rel} is not in {folder.label}", hint="list the model's files")
        return str(uri)


# -- reading --------------------------------------------------------------------------------------


class AzureArtifactSource:
    """A model folder in an Azure ML workspace, read straight from blob storage."""

    def __init__(self, service: ArtifactService, folder: ArtifactFolder) -> None:
        self.service = service
        self.folder = folder
        self.description = f"{service.connection.scope.display}, {folder.label}"
        self._urls: dict[str, str] = {}

    def list_files(self) -> list[ArtifactFile]:
        urls = self.service.list_content(self.folder)
        self._urls = urls

        # The listing has no sizes; the blobs' own headers have them.
        def size(item: tuple[str, str]) -> ArtifactFile:
            rel, url = item
            response = self.service.call("HEAD", url, f"reading the size of {rel}")
            response.close()
            length = response.headers.get("Content-Length")
            # A blob's ETag changes with every write: a re-run's listing compares it.
            etag = response.headers.get("ETag")
            return ArtifactFile(rel, int(length) if length is not None else None,
                                f"etag:{etag}" if etag else None)

        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="amlpromote-head") as pool:
            files = list(pool.map(size, sorted(urls.items())))
        return files

    @contextmanager
    def open(self, path: str) -> Iterator[Chunks]:
        rel = safe_relative_path(path)
        url = self._urls.get(rel) or self.service.content_uri(self.folder, rel)
        response = self.service.request("GET", url, f"downloading {rel}", stream=True)
        try:
            yield response_chunks(response, rel)
        finally:
            response.close()


# -- writing --------------------------------------------------------------------------------------


class _BufferPool:
    """At most `count` block buffers, handed out and returned; `take` waits for a free one."""

    def __init__(self, count: int, size: int) -> None:
        self.size = size
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._left = threading.Semaphore(count)

    def take(self) -> bytearray:
        self._left.acquire()
        try:
            return self._free.get_nowait()
        except queue.Empty:
            return bytearray(self.size)

    def give(self, buffer: bytearray) -> None:
        self._free.put(buffer)
        self._left.release()


class _ViewBody:
    """A request body over a memoryview, handed to the socket in one piece (no copy)."""

    def __init__(self, view: memoryview) -> None:
        self._view: memoryview | None = view
        self.len = len(view)

    def read(self, size: int = -1) -> memoryview | bytes:
        view, self._view = self._view, None
        return view if view is not None else b""


class BlockUploader:
    """Uploads one stream to one blob write URL: a Put Blob for a file up to one block, else
    parallel Put Blocks and a Put Block List. Shared by every file of one transfer, so its
    buffer pool bounds the transfer's memory."""

    def __init__(self, service: ArtifactService, block_size: int = BLOCK_SIZE,
                 buffers: int = BUFFERS, blocks_in_flight: int = BLOCKS_IN_FLIGHT) -> None:
        self.service = service
        self.block_size = block_size
        self.blocks_in_flight = blocks_in_flight
        self._pool = _BufferPool(buffers, block_size)

    def upload(self, url: str, rel: str, size: int | None, chunks: Chunks) -> None:
        if size is not None and size <= self.block_size:
            self._put_blob(url, rel, size, chunks)
        else:
            self._put_blocks(url, rel, chunks)

    def _put_blob(self, url: str, rel: str, size: int, chunks: Chunks) -> None:
        # One request streamed from the source; a failure is retried by the transfer, which
        # reads the file again.
        response = self.service.request(
            "PUT", url, f"uploading {rel}", data=StreamingBody(chunks, size),
            headers={"x-ms-blob-type": "BlockBlob", "Content-Length": str(size)})
        response.close()

    def _put_blocks(self, url: str, rel: str, chunks: Chunks) -> None:
        ids: list[str] = []
        pending: list[tuple[Future[None], bytearray]] = []
        pool = self._pool
        executor = ThreadPoolExecutor(max_workers=self.blocks_in_flight,
                                      thread_name_prefix="amlpromote-block")
        buffer: bytearray | None = None
        try:
            buffer = pool.take()
            filled = 0
            for chunk in chunks:
                view = memoryview(chunk).cast("B")
                while len(view):
                    step = min(len(view), pool.size - filled)
                    buffer[filled:filled + step] = view[:step]
                    filled += step
                    view = view[step:]
                    if filled == pool.size:
                        self._submit(executor, pending, ids, url, rel, buffer, filled)
                        buffer, filled = None, 0
                        _raise_first_failure(pending)
                        buffer = pool.take()
            if filled or not ids:
                self._submit(executor, pending, ids, url, rel, buffer, filled)
            else:
                pool.give(buffer)
            buffer = None
            wait([f for f, _ in pending], return_when=FIRST_EXCEPTION)
            _raise_first_failure(pending)
        except BaseException:
            for future, _ in pending:
                future.cancel()
            wait([f for f, _ in pending])
            raise
        finally:
            if buffer is not None:
                pool.give(buffer)
            # Buffers of blocks that never ran go back too; ran ones returned their own.
            for future, block in pending:
                if future.cancelled():
                    pool.give(block)
            executor.shutdown(wait=True)
        self._commit(url, rel, ids)

    def _submit(self, executor: ThreadPoolExecutor,
                pending: list[tuple[Future[None], bytearray]], ids: list[str], url: str,
                rel: str, buffer: bytearray, length: int) -> None:
        # Fixed-length ids: Azure requires every block id of a blob to have the same length.
        block_id = base64.b64encode(f"amlpromote-{len(ids):08d}".encode()).decode()
        ids.append(block_id)
        future = executor.submit(self._put_block, url, rel, block_id, len(ids), buffer, length)
        pending.append((future, buffer))

    def _put_block(self, url: str, rel: str, block_id: str, number: int, buffer: bytearray,
                   length: int) -> None:
        try:
            def attempt() -> None:
                response = self.service.request(
                    "PUT", _with_query(url, f"comp=block&blockid={quote(block_id)}"),
                    f"uploading block {number} of {rel}",
                    data=_ViewBody(memoryview(buffer)[:length]),
                    headers={"Content-Length": str(length)})
                response.close()

            try:
                call_with_retry(attempt, self.service.policy)
            except TransientError as exc:
                raise Unreachable(f"{exc}; gave up after retries",
                                  hint="the target's storage keeps failing; run again later "
                                       "— nothing was registered") from exc
        finally:
            self._pool.give(buffer)

    def _commit(self, url: str, rel: str, ids: list[str]) -> None:
        body = ('<?xml version="1.0" encoding="utf-8"?><BlockList>'
                + "".join(f"<Latest>{block_id}</Latest>" for block_id in ids)
                + "</BlockList>").encode()
        response = self.service.call("PUT", _with_query(url, "comp=blocklist"),
                                     f"committing {rel}",
                                     data=body, headers={"Content-Type": "application/xml"})
        response.close()


class AzureArtifactSink:
    """Writes files into an Azure ML artifact folder (a run's, for staging a version)."""

    def __init__(self, service: ArtifactService, folder: ArtifactFolder,
                 block_size: int = BLOCK_SIZE, buffers: int = BUFFERS,
                 blocks_in_flight: int = BLOCKS_IN_FLIGHT) -> None:
        self.service = service
        self.folder = folder
        self.description = f"{service.connection.scope.display}, {folder.label}"
        self.uploader = BlockUploader(service, block_size, buffers, blocks_in_flight)
        self._lock = threading.Lock()
        self._batch_of: dict[str, int] = {}  # expected path -> its batch, until first written
        self._batches: list[list[str]] = []
        self._batch_locks: list[threading.Lock] = []
        self._batch_urls: dict[int, dict[str, str]] = {}

    @property
    def block_size(self) -> int:
        return self.uploader.block_size

    def expect(self, paths: list[str]) -> None:
        """The files about to be written, in the order they will start.

        The artifact service creates up to `CREATE_BATCH` artifacts per call; asking for a
        batch's URLs when its first file starts, instead of one call per file, saves a round
        trip (and a token check and SAS signing on the service) for every other file."""
        fulls = [self.folder.path_of(safe_relative_path(p)) for p in paths]
        with self._lock:
            self._batches = [fulls[i:i + CREATE_BATCH] for i in range(0, len(fulls), CREATE_BATCH)]
            self._batch_locks = [threading.Lock() for _ in self._batches]
            self._batch_of = {full: i for i, batch in enumerate(self._batches) for full in batch}
            self._batch_urls = {}

    def _write_url(self, full: str) -> str:
        with self._lock:
            index = self._batch_of.pop(full, None)
        if index is None:
            # Unexpected, or written before: asking again for a path that exists hands out a
            # fresh URL and overwrites, which is what a retried file needs.
            return self.service.create(self.folder, [full])[full]
        with self._batch_locks[index]:
            urls = self._batch_urls.get(index)
            if urls is None:
                urls = self.service.create(self.folder, self._batches[index])
                self._batch_urls[index] = urls
        return urls[full]

    def write(self, path: str, size: int | None, chunks: Chunks) -> None:
        rel = safe_relative_path(path)
        url = self._write_url(self.folder.path_of(rel))
        self.uploader.upload(url, rel, size, chunks)


# -- a blob container reached through its SAS URL (Azure ML registries) ---------------------------


@dataclass(frozen=True)
class ContainerFolder:
    """A folder in one blob container, with the container's SAS (never shown)."""

    container_url: str  # https://ACCOUNT.blob.../CONTAINER, no query
    # The SAS query string, without "?"; a secret. "" where the container is readable
    # without one (a registry's `NoCredentials` data reference,
    # core/registries/azureml_registry.py).
    sas: str = field(repr=False)
    prefix: str = ""  # the folder inside the container ("" for the whole container)

    @classmethod
    def from_sas_url(cls, sas_url: str, folder: str = "") -> ContainerFolder:
        """`https://A.blob.../C[/path]?SAS` -> the container C and the folder path/folder."""
        parts = urlsplit(sas_url)
        segments = [s for s in parts.path.split("/") if s]
        if parts.scheme != "https" or not segments or not parts.query:
            raise OperationFailed(f"Azure ML handed out an unusable storage URL "
                                  f"({_blob_name(sas_url)})",
                                  hint="run again; report it if it persists")
        container_url = f"{parts.scheme}://{parts.netloc}/{segments[0]}"
        inner = "/".join(unquote(s) for s in segments[1:])
        prefix = "/".join(p for p in (inner, folder.strip("/")) if p)
        return cls(container_url, parts.query, prefix)

    @property
    def folder_url(self) -> str:
        """The folder's blob URL without the SAS (what a model version's modelUri names)."""
        return f"{self.container_url}/{quote(self.prefix)}" if self.prefix \
            else self.container_url

    @property
    def label(self) -> str:
        return _blob_name(self.folder_url)

    def blob_url(self, rel: str) -> str:
        name = f"{self.prefix}/{rel}" if self.prefix else rel
        return f"{self.container_url}/{quote(name)}" + (f"?{self.sas}" if self.sas else "")

    def list_url(self, marker: str | None) -> str:
        query = "restype=container&comp=list"
        if self.prefix:
            query += f"&prefix={quote(self.prefix + '/', safe='')}"
        if marker:
            query += f"&marker={quote(marker, safe='')}"
        return f"{self.container_url}?{self.sas + '&' if self.sas else ''}{query}"


class ContainerSource:
    """A model folder in a blob container, listed with List Blobs (sizes included)."""

    def __init__(self, service: ArtifactService, folder: ContainerFolder) -> None:
        self.service = service
        self.folder = folder
        self.description = f"{service.connection.scope.display}, {folder.label}"

    def list_files(self) -> list[ArtifactFile]:
        import xml.etree.ElementTree as ElementTree

        files: list[ArtifactFile] = []
        marker: str | None = None
        skip = len(self.folder.prefix) + 1 if self.folder.prefix else 0
        for _ in range(_LIST_PAGE_LIMIT):
            response = self.service.call("GET", self.folder.list_url(marker),
                                         f"listing the files of {self.folder.label}")
            root = ElementTree.fromstring(response.content)
            for blob in root.iter("Blob"):
                name = blob.findtext("Name") or ""
                length = blob.findtext("Properties/Content-Length")
                if name[skip:]:
                    files.append(ArtifactFile(safe_relative_path(name[skip:]),
                                              int(length) if length else None))
            marker = root.findtext("NextMarker") or None
            if marker is None:
                break
        return sorted(files, key=lambda f: f.path)

    @contextmanager
    def open(self, path: str) -> Iterator[Chunks]:
        rel = safe_relative_path(path)
        response = self.service.request("GET", self.folder.blob_url(rel), f"downloading {rel}",
                                        stream=True)
        try:
            yield response_chunks(response, rel)
        finally:
            response.close()


class ContainerSink:
    """Writes files into a folder of a blob container (a registry's pending upload)."""

    def __init__(self, service: ArtifactService, folder: ContainerFolder,
                 uploader: BlockUploader | None = None) -> None:
        self.service = service
        self.folder = folder
        self.description = f"{service.connection.scope.display}, {folder.label}"
        self.uploader = uploader or BlockUploader(service)

    def write(self, path: str, size: int | None, chunks: Chunks) -> None:
        rel = safe_relative_path(path)
        # Writing a blob again replaces it: what a retried file needs.
        self.uploader.upload(self.folder.blob_url(rel), rel, size, chunks)

    def remove(self) -> None:
        """Delete the folder's blobs (an aborted upload), one Delete Blob each.

        The SAS a registry's startPendingUpload hands out is for uploading: azure-ai-ml only
        creates and lists blobs with it, and the permissions it carries are not documented
        (azure-rest-api-specs, PendingUploadResponseDto, says only "SAS"). When storage refuses
        the delete (403, AuthorizationPermissionMismatch) nothing more can be done from here:
        the container is a temporary one that no version references, and it is the service's
        to expire. AuthFailed then says so to the caller."""
        for file in ContainerSource(self.service, self.folder).list_files():
            response = self.service.request("DELETE", self.folder.blob_url(file.path),
                                            f"removing the staged {file.path}")
            response.close()


def _with_query(url: str, extra: str) -> str:
    return f"{url}{'&' if urlsplit(url).query else '?'}{extra}"


def _raise_first_failure(pending: list[tuple[Future[None], bytearray]]) -> None:
    for future, _ in pending:
        if future.done() and not future.cancelled():
            exc = future.exception()
            if exc is not None:
                raise exc
