"""copy-model into an Azure ML registry: model versions through Azure Resource Manager.

A registry has no runs or experiments, so the workspace path (stage in a run, register the run's
folder through MLflow) does not apply. The registry's own contract (azure-rest-api-specs
machinelearningservices, RegistryModelVersions and RegistryDataReferences; the same calls
azure-ai-ml makes for `MLClient(registry_name=...).models.create_or_update`) is used instead:

1. `GET .../registries/R/models/N/versions?listViewType=All` lists the versions, archived ones
   included (the default view hides them, and their numbers are taken all the same); an
   earlier promotion is an active version with its `amlpromote.source.key` tag (promote.py
   compares the digest). An archived one does not count: its owner retired it.
2. `POST .../versions/V/startPendingUpload` hands out a SAS URL of a temporary blob container,
   for version V only; the files go into one folder of it through the parallel block uploader
   (core/storage/azure_blob.py), hashed in the same pass. That SAS is for uploading: it is not known
   to allow listing, so the staged files are checked blob by blob (Get Blob Properties of each
   file the upload wrote: present, and of the size written), never listed.
3. `PUT .../versions/V` with `modelType: mlflow_model`, `modelUri` = that folder, the description
   and the provenance tags registers the version, only after every file was written and checked.
   The PUT is a long-running operation (201 + `Azure-AsyncOperation`), followed to its end.
   V is the next integer after the highest existing version; a run that loses V to a concurrent
   run (409: an existing version's asset path cannot change) takes the winner when it holds the
   same promotion (same source key and digest), else the next number, for which it asks a new
   pending upload and copies the staged files into it (the files pass through this process;
   their digest must come out the same). The registry may keep the files elsewhere than where
   they were staged (`modelUri` then names its copy), so a run knows its own version by the
   `amlpromote.run` tag it puts on it, never by `modelUri`.
4. `POST .../registries/R/datareferences/N/versions/V` gives a read SAS of a version's files,
   for --verify; or `NoCredentials`, when the files are readable without one (anonymous access,
   what azure-ai-ml then does too).
5. `DELETE .../versions/V` (a duplicate of a concurrent run's version) may be a long-running
   operation (202 + `Location`), followed to its end; a failed one says the version stays.

Azure ML registries have no aliases; promote.py refuses --alias/--copy-aliases up front. Every
request carries the registry credential's bearer token, and only to the Azure Resource Manager
host; SAS URLs never appear in messages.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from amlpromote.core.azure.connection import AzureMlConnection, AzureMlScope, make_credential
from amlpromote.core.errors import (
    AmlPromoteError,
    BadInput,
    NotFound,
    OperationFailed,
    Unreachable,
)
from amlpromote.core.registries import lineage
from amlpromote.core.registries.lineage import AZURE_ML_TAG_LIMITS, TagLimits
from amlpromote.core.registries.registry import VersionInfo
from amlpromote.core.registries.target import AZURE_ML_MAX_FILES, StagedUpload
from amlpromote.core.retry import (
    RETRYABLE_STATUS,
    TransientError,
    call_with_retry,
    parse_retry_after,
)
from amlpromote.core.storage.artifacts import ArtifactFile, Chunks, safe_relative_path
from amlpromote.core.storage.azure_blob import (
    ArtifactService,
    BlockUploader,
    ContainerFolder,
    ContainerSink,
    ContainerSource,
)
from amlpromote.core.uris import RegistryUri, redact_text

# The API version azure-ai-ml 1.35's management client sends for these operations.
API_VERSION = "2025-12-01"
# Version numbers tried before giving up when concurrent runs keep taking the next one.
MAX_NUMBER_ATTEMPTS = 5
# How long a registration (a long-running operation) may take before we stop waiting.
LRO_TIMEOUT = 600.0
_PAGE_LIMIT = 1000
_MLMODEL_LIMIT = 1 << 20  # MLmodel is a small YAML document; more is not an MLmodel


@dataclass
class RegistryStagedUpload(StagedUpload):
    """Files in a folder of a pending upload's container (`source` is the folder's URL)."""

    folder: ContainerFolder | None = None
    version: str = ""  # the version the pending upload was handed out for
    # This run's mark on the version it registers (the `amlpromote.run` tag).
    run_mark: str = ""
    # Pending uploads this run staged into before it had to move to another version number.
    earlier: list[_PendingUploadSink] = field(default_factory=list)


class _PendingUploadSink(ContainerSink):
    """A pending upload's folder that remembers what it holds: each file written, with the
    number of bytes that went up. Its SAS need not allow listing (module docstring)."""

    def __init__(self, service: ArtifactService, folder: ContainerFolder,
                 uploader: BlockUploader | None = None) -> None:
        super().__init__(service, folder, uploader)
        self.written: dict[str, int] = {}
        self._lock = threading.Lock()

    def write(self, path: str, size: int | None, chunks: Chunks) -> None:
        rel = safe_relative_path(path)
        sent = 0

        def counted() -> Iterator[memoryview | bytes]:
            nonlocal sent
            for chunk in chunks:
                sent += len(chunk)
                yield chunk

        with self._lock:
            self.written.pop(rel, None)  # a retried file counts once it went up again
        super().write(rel, size, counted())
        with self._lock:
            self.written[rel] = sent

    def remove(self) -> None:
        """Delete the blobs this upload wrote (no listing needed); raises what storage says,
        e.g. AuthFailed when the SAS may not delete."""
        for rel in sorted(self.written):
            response = self.service.request("DELETE", self.folder.blob_url(rel),
                                            f"removing the staged {rel}")
            response.close()


class _StagedFiles:
    """The files a pending upload's sink wrote, as storage has them now: each one's Get Blob
    Properties (HEAD, per-blob read access) gives its size; a blob that is gone is left out of
    the listing, so promote.py's check names it missing, and a short one shows its size."""

    def __init__(self, service: ArtifactService, sink: _PendingUploadSink) -> None:
        self.service = service
        self.folder = sink.folder
        self.written = sink.written
        self._reader = ContainerSource(service, sink.folder)
        self.description = self._reader.description

    def list_files(self) -> list[ArtifactFile]:
        from concurrent.futures import ThreadPoolExecutor

        from amlpromote.core.storage.transfer import default_workers

        def head(rel: str) -> ArtifactFile | None:
            try:
                response = self.service.call("HEAD", self.folder.blob_url(rel),
                                             f"checking the staged {rel}")
            except NotFound:
                return None
            length = response.headers.get("Content-Length")
            response.close()
            return ArtifactFile(rel, int(length) if length is not None else None)

        # One round trip per file (up to 1,500): in parallel, as the upload was, so the check
        # costs a few round trips of wall time rather than one per file.
        # Not a `with` block: on Ctrl-C the pool is left without waiting for requests in flight
        # (cli/interrupts.py ends the process in bounded time).
        pool = ThreadPoolExecutor(max_workers=default_workers(),
                                  thread_name_prefix="amlpromote-check")
        try:
            found = list(pool.map(head, sorted(self.written)))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return [f for f in found if f is not None]

    def open(self, path: str) -> AbstractContextManager[Chunks]:
        return self._reader.open(path)


class AzureMlRegistryTarget:
    """An Azure ML registry that receives promoted versions (same interface as MlflowTarget)."""

    supports_aliases = False

    def __init__(self, uri: RegistryUri) -> None:
        self.uri = uri
        self.scope = AzureMlScope.parse(uri.uri)
        self.connection = AzureMlConnection(self.scope,
                                            make_credential(getattr(uri, "credential", None)))
        self.service = ArtifactService(self.connection)
        self._uploader: BlockUploader | None = None
        self._registry_seen = False

    @property
    def display(self) -> str:
        return self.uri.display

    @property
    def is_azureml(self) -> bool:
        return True

    @property
    def tag_limits(self) -> TagLimits:
        # One place is kept for the `amlpromote.run` tag that `register` adds.
        limit = AZURE_ML_TAG_LIMITS.max_tags
        return replace(AZURE_ML_TAG_LIMITS, max_tags=limit - 1 if limit else None)

    @property
    def arm_base(self) -> str:
        """Azure Resource Manager's base URL, as azure-ai-ml finds it (AZUREML_DEV_URL_MFE,
        else the cloud's resource manager endpoint)."""
        from azure.ai.ml._azure_environments import (
            _get_base_url_from_metadata,
            _get_default_cloud_name,
        )

        return str(_get_base_url_from_metadata(_get_default_cloud_name(),
                                               is_local_mfe=True)).rstrip("/")

    def _url(self, path: str) -> str:
        return f"{self.arm_base}{self.scope.arm_id}{path}?api-version={API_VERSION}"

    def _version_path(self, name: str, version: str) -> str:
        return f"/models/{quote(name, safe='')}/versions/{quote(version, safe='')}"

    # -- checks ---------------------------------------------------------------------------------

    def check_files(self, count: int) -> None:
        if count > AZURE_ML_MAX_FILES:
            raise BadInput(f"the model has {count} files; an Azure ML model version holds at "
                           f"most {AZURE_ML_MAX_FILES}",
                           hint="package the model's files into fewer (e.g. an archive inside "
                                "the model folder), or promote into another registry")

    def prepare(self) -> None:
        self._require_registry()

    def _require_registry(self) -> None:
        """The registry exists and this identity may read it (404 -> exit 3, 401/403 -> 4)."""
        if self._registry_seen:
            return
        what = f"opening {self.scope.display}"
        response = self._arm("GET", self._url(""), what)
        if response.status_code != 200:
            raise self._failure(response, what, registry=True)
        response.close()
        self._registry_seen = True

    # -- reading --------------------------------------------------------------------------------

    def find_promoted(self, name: str, tags: dict[str, str]) -> list[VersionInfo]:
        """Active versions with these tags. An archived version is not "already promoted":
        archiving is how a registry's owner retires a version (hidden from listings, kept for
        reproducibility), so answering "unchanged" with it would hand back what was retired.
        A re-run registers a new active version instead; the archived one stays as it is."""
        self._require_registry()
        found = [v for v in self._versions(name) if not v.extra.get("archived")
                 and all(v.tags.get(k) == value for k, value in tags.items())]
        return sorted(found, key=lambda v: int(v.version))

    def _versions(self, name: str) -> list[VersionInfo]:
        """Every version of `name` with an integer number (ours all are), archived ones too
        (`extra["archived"]`): their numbers are taken; [] for a new model."""
        what = f"listing versions of {name} in {self.scope.display}"
        # listViewType (RegistryModelVersions_List): the default view lists active versions
        # only, which would hand out an archived version's number again.
        url: str | None = self._url(f"/models/{quote(name, safe='')}/versions") \
            + "&listViewType=All"
        versions: list[VersionInfo] = []
        for _ in range(_PAGE_LIMIT):
            if url is None:
                break
            response = self._arm("GET", url, what)
            if response.status_code == 404:
                response.close()
                return []  # the registry exists (checked first): no version of this model yet
            if response.status_code != 200:
                raise self._failure(response, what)
            body = response.json()
            versions += [_version_info(name, item) for item in body.get("value") or []]
            url = body.get("nextLink") or None
            if url is not None:
                self._same_host(url, what)
        return [v for v in versions if v.version.isdigit()]

    def _get_version(self, name: str, version: str) -> VersionInfo | None:
        what = f"reading {name} version {version} in {self.scope.display}"
        response = self._arm("GET", self._url(self._version_path(name, version)), what)
        if response.status_code == 404:
            response.close()
            return None
        if response.status_code != 200:
            raise self._failure(response, what)
        return _version_info(name, response.json())

    # -- listing (`amlpromote models`, core/promote/inventory.py) -----------------------------

    def model_names(self, limit: int | None = None) -> tuple[list[str], bool]:
        """The registry's model names (RegistryModelContainers, every page, at most `limit`)
        and whether `limit` left some out."""
        self._require_registry()
        what = f"listing the models of {self.scope.display}"
        url: str | None = self._url("/models")
        names: list[str] = []
        for _ in range(_PAGE_LIMIT):
            if url is None:
                break
            response = self._arm("GET", url, what)
            if response.status_code != 200:
                raise self._failure(response, what)
            body = response.json()
            names += [str(item["name"]) for item in body.get("value") or [] if item.get("name")]
            url = body.get("nextLink") or None
            if url is not None:
                self._same_host(url, what)
            if limit is not None and len(names) >= limit:
                return names[:limit], len(names) > limit or url is not None
        return names, False

    def versions(self, name: str) -> list[VersionInfo]:
        """Every version of `name`, archived ones too, by number ([] when the model has
        none)."""
        self._require_registry()
        return sorted(self._versions(name), key=lambda v: int(v.version))

    def version(self, name: str, version: str) -> VersionInfo | None:
        self._require_registry()
        return self._get_version(name, version)

    def version_source(self, version: VersionInfo) -> ContainerSource:
        """The files of a registered version, read with a SAS from RegistryDataReferences, or
        without any credential when it answers `NoCredentials`."""
        what = f"locating the files of {version.name} version {version.version}"
        asset_id = (f"azureml://registries/{self.scope.name}/models/{version.name}/versions/"
                    f"{version.version}")
        response = self._arm(
            "POST", self._url(f"/datareferences/{quote(version.name, safe='')}/versions/"
                              f"{quote(version.version, safe='')}"),
            what, json={"assetId": asset_id, "blobUri": version.source})
        if response.status_code != 200:
            raise self._failure(response, what)
        body = response.json()
        if _credential_type(body) == "nocredentials":
            return ContainerSource(self.service, _anonymous_folder(body, what))
        return ContainerSource(self.service, ContainerFolder.from_sas_url(_sas_uri(body, what)))

    # -- writing --------------------------------------------------------------------------------

    def begin(self, label: str, tags: dict[str, str], name: str | None = None) \
            -> RegistryStagedUpload:
        """A pending upload's container; the files go into its folder `label`."""
        if not name:
            raise OperationFailed("an Azure ML registry upload needs the model name",
                                  hint="report this; it is a bug in amlpromote")
        self._require_registry()
        number = _next_version(self._versions(name))
        sink = self._pending_upload(name, number, label)
        return RegistryStagedUpload(sink, sink.folder.folder_url, sink.folder.folder_url,
                                    folder=sink.folder, version=number,
                                    run_mark=uuid.uuid4().hex)

    def _pending_upload(self, name: str, number: str, label: str) -> _PendingUploadSink:
        """A pending upload for version `number` of `name`, and a sink into its folder."""
        what = f"preparing the upload of {name} version {number} to {self.scope.display}"
        response = self._arm("POST", self._url(self._version_path(name, number)
                                               + "/startPendingUpload"),
                             what, json={"pendingUploadType": "TemporaryBlobReference"})
        if response.status_code != 200:
            raise self._failure(response, what)
        folder = ContainerFolder.from_sas_url(_sas_uri(response.json(), what), label)
        if self._uploader is None:
            self._uploader = BlockUploader(self.service)
        return _PendingUploadSink(self.service, folder, self._uploader)

    def staged_source(self, staged: StagedUpload) -> _StagedFiles:
        return _StagedFiles(self.service, _sink_of(staged))

    def _restage(self, staged: RegistryStagedUpload, name: str, number: str,
                 digest: str | None) -> None:
        """Move the staged files into a pending upload of version `number` (each pending
        upload is for one version). They are read back from where they were staged and written
        again, hashed on the way: the new folder must hold the same digest."""
        from amlpromote.core.storage.transfer import copy_files

        old = _sink_of(staged)
        reader = _StagedFiles(self.service, old)
        label = old.folder.prefix.rsplit("/", 1)[-1]
        sink = self._pending_upload(name, number, label)
        manifest = copy_files(reader, sink, reader.list_files())
        if digest is not None and manifest.digest != digest:
            raise OperationFailed(f"the files staged for {name} changed in the registry's "
                                  f"temporary storage (digest {manifest.digest}, staged "
                                  f"{digest})",
                                  hint="nothing was registered; run again")
        staged.earlier.append(old)
        staged.sink = sink
        staged.folder = sink.folder
        staged.artifact_uri = staged.source = sink.folder.folder_url
        staged.version = number

    def abort(self, staged: StagedUpload) -> str | None:
        """Delete the files uploaded into the pending uploads' temporary containers, where
        their SAS allows it (it may not: what it allows is not documented); no version
        references them, and Azure ML expires them on its own. Best effort: the error that
        made the run abort matters more."""
        sinks = [*getattr(staged, "earlier", []), staged.sink]
        left = False
        for sink in sinks:
            try:
                sink.remove()
            except Exception:
                left = True
        if left:
            return ("the staged files stay in the registry's temporary upload container until "
                    "Azure ML expires it (its upload URL cannot delete)")
        return None

    def renew(self, staged: StagedUpload, tags: dict[str, str]) -> None:
        """A pending upload has no tags to renew."""

    def inspect(self) -> bool:
        """A registry is there or the first call says it is not (NotFound)."""
        return True

    def sweep(self, staged: StagedUpload | None, key: str) -> list[str]:
        """Nothing to find: each startPendingUpload hands out a fresh temporary container, and
        a registry lists neither them nor who asked for them (README "Leftovers")."""
        return []

    def ensure_model(self, name: str, description: str | None, tags: dict[str, str]) -> None:
        """A registry creates the model (its container) with its first version's PUT."""

    def register(self, staged: StagedUpload, name: str, description: str,
                 tags: dict[str, str], force: bool = False) -> VersionInfo:
        """PUT the version under the next free number (archived versions hold theirs), from a
        pending upload of that number. Unless `force`, an active version of the same promotion
        that a concurrent run registered meanwhile is taken instead (`extra["existing"]`): a
        registry keeps its versions, so no duplicate is made to be deleted."""
        if not isinstance(staged, RegistryStagedUpload):
            raise TypeError("not a staged upload of an Azure ML registry")
        mark = staged.run_mark
        tags = {**tags, lineage.RUN: mark}
        properties = {
            "modelType": "mlflow_model",
            "description": description or None,
            "tags": tags,
            "properties": {},
            "flavors": self._flavors(staged),
            "isAnonymous": False,
            "isArchived": False,
        }

        def same_promotion(v: VersionInfo) -> bool:
            return not v.extra.get("archived") and \
                all(v.tags.get(k) == tags.get(k) for k in (lineage.KEY, lineage.DIGEST))

        for _ in range(MAX_NUMBER_ATTEMPTS):
            existing = self._versions(name)
            mine = [v for v in existing if v.tags.get(lineage.RUN) == mark]
            if mine:
                return mine[0]  # an earlier attempt's PUT was carried out; its answer was lost
            twins = [v for v in existing if same_promotion(v)]
            if twins and not force:
                first = min(twins, key=lambda v: int(v.version))
                first.extra["existing"] = True
                return first
            number = _next_version(existing)
            if number != staged.version:
                self._restage(staged, name, number, tags.get(lineage.DIGEST))
            what = f"registering {name} version {number} in {self.scope.display}"
            response = self._arm("PUT", self._url(self._version_path(name, number)), what,
                                 json={"properties": {**properties,
                                                      "modelUri": staged.source}})
            if response.status_code in (200, 201, 202):
                self._wait(response, what)
                created = self._get_version(name, number)
                # Known by the mark, not by modelUri: the registry may have moved the files.
                if created is None or created.tags.get(lineage.RUN) != mark:
                    raise OperationFailed(f"{what}: the version is not there after its "
                                          "registration ended",
                                          hint="run again; a re-run finds what was registered")
                return created
            if not _is_conflict(response):
                raise self._failure(response, what)
            response.close()
            taken = self._get_version(name, number)
            if taken is not None and taken.tags.get(lineage.RUN) == mark:
                return taken  # this run's own PUT, repeated after its answer was lost
            # A concurrent run took this number first; when it promoted the same source with
            # the same files, its version is this promotion.
            if taken is not None and same_promotion(taken) and not force:
                taken.extra["existing"] = True
                return taken
        raise OperationFailed(f"registering {name} in {self.scope.display}: other runs took "
                              f"{MAX_NUMBER_ATTEMPTS} version numbers in a row",
                              hint="nothing was registered; run again")

    def registered_from(self, staged: StagedUpload, name: str) -> VersionInfo | None:
        """The version this run registered, if any, known by its `amlpromote.run` tag."""
        mark = getattr(staged, "run_mark", "")
        mine = [v for v in self._versions(name) if mark and v.tags.get(lineage.RUN) == mark]
        return min(mine, key=lambda v: int(v.version)) if mine else None

    def delete_version(self, name: str, version: str) -> None:
        """Delete a version, following the deletion (202 + Location) to its end."""
        what = f"deleting {name} version {version} in {self.scope.display}"
        response = self._arm("DELETE", self._url(self._version_path(name, version)), what)
        if response.status_code not in (200, 202, 204):
            raise self._failure(response, what)
        self._wait(response, what,
                   hint=f"version {version} of {name} may still be in the registry: archive "
                        f"it (az ml model archive --name {name} --version {version} "
                        f"--registry-name {self.scope.name}) or delete it in Azure ML studio")

    def set_alias(self, name: str, alias: str, version: str) -> None:
        raise BadInput(f"Azure ML registries have no aliases (alias {alias})",
                       hint="drop --alias/--copy-aliases for a registry target")

    def version_aliases(self, name: str, version: str) -> list[str]:
        return []

    def _flavors(self, staged: StagedUpload) -> dict[str, Any]:
        """The MLflow flavors of the staged MLmodel, as Azure ML records an mlflow_model."""
        import yaml

        data = bytearray()
        with self.staged_source(staged).open("MLmodel") as chunks:
            for chunk in chunks:
                data += chunk
                if len(data) > _MLMODEL_LIMIT:
                    raise BadInput("the model's MLmodel file is larger than 1 MiB",
                                   hint="check that MLmodel is an MLflow model description")
        try:
            document = yaml.safe_load(bytes(data)) or {}
        except yaml.YAMLError as exc:
            raise BadInput(f"the model's MLmodel file is not valid YAML ({exc.__class__.__name__})",
                           hint="check the source model's MLmodel file") from None
        flavors = document.get("flavors") if isinstance(document, dict) else None
        if not isinstance(flavors, dict):
            return {}
        return {str(flavor): {"data": {str(k): v if isinstance(v, str) else json.dumps(v)
                                       for k, v in content.items()}}
                for flavor, content in flavors.items() if isinstance(content, dict)}

    # -- Azure Resource Manager -----------------------------------------------------------------

    def _same_host(self, url: str, what: str) -> None:
        # The bearer token goes to Azure Resource Manager only, whatever a response links to.
        if urlsplit(url).netloc.lower() != urlsplit(self.arm_base).netloc.lower():
            raise OperationFailed(f"{what}: Azure answered with a link to another host "
                                  f"({urlsplit(url).netloc})",
                                  hint="check AZUREML_DEV_URL_MFE and the proxy settings")

    def _arm(self, method: str, url: str, what: str, **kwargs: Any) -> Any:
        """One ARM request, retried on 429/5xx per Retry-After; any other answer is returned."""
        def attempt() -> Any:
            response = self.service.request(method, url, what, authorize=True, checked=False,
                                            timeout=(10, 120), **kwargs)
            if response.status_code in RETRYABLE_STATUS:
                response.close()
                raise TransientError(
                    f"{what}: HTTP {response.status_code}",
                    retry_after=parse_retry_after(response.headers.get("Retry-After")))
            return response

        try:
            return call_with_retry(attempt, self.service.policy)
        except TransientError as exc:
            raise Unreachable(f"{exc}; gave up after retries",
                              hint="Azure ML keeps throttling or failing; run again later — "
                                   "nothing was registered") from exc

    def _wait(self, response: Any, what: str,
              hint: str = "nothing was registered; run again with --verbose") -> None:
        """Follow a long-running operation (Azure-AsyncOperation, else Location) to its end;
        `hint` says what a failed operation left behind."""
        status_url = response.headers.get("Azure-AsyncOperation")
        location = response.headers.get("Location") if response.status_code == 202 else None
        delay = parse_retry_after(response.headers.get("Retry-After")) or 0.5
        response.close()
        url = status_url or location
        if url is None:
            return
        self._same_host(url, what)
        deadline = time.monotonic() + LRO_TIMEOUT
        while True:
            time.sleep(min(delay, 10.0))
            poll = self._arm("GET", url, f"{what} (waiting for Azure ML)")
            if status_url is None:
                # Location: 202 while it runs, 200/204 once done; any other answer is the
                # failed operation's error (ARM's async-operations contract; azure-core's
                # LocationPolling reads it the same way).
                if poll.status_code in (200, 201, 204):
                    poll.close()
                    return
                if poll.status_code in (401, 403, 404):
                    raise self._failure(poll, what)
                if poll.status_code != 202:
                    raise OperationFailed(f"{what}: Azure ML reports the operation failed "
                                          f"(HTTP {poll.status_code}{_error_detail(poll)})",
                                          hint=hint)
            else:
                if poll.status_code != 200:
                    raise self._failure(poll, what)
                body = poll.json()
                state = str(body.get("status") or "").lower()
                if state == "succeeded":
                    return
                if state in ("failed", "canceled", "cancelled"):
                    error = body.get("error") or {}
                    detail = redact_text(f"{error.get('code', '')}: {error.get('message', '')}")
                    raise OperationFailed(f"{what}: Azure ML reports the operation {state} "
                                          f"({detail.strip(': ')[:300]})", hint=hint)
            if time.monotonic() > deadline:
                raise Unreachable(f"{what}: Azure ML did not finish within "
                                  f"{LRO_TIMEOUT:.0f} s",
                                  hint="run again later; a re-run finds a version that was "
                                       "registered meanwhile")
            delay = parse_retry_after(poll.headers.get("Retry-After")) or min(delay * 2, 5.0)

    def _failure(self, response: Any, what: str, *, registry: bool = False) -> AmlPromoteError:
        """An ARM error answer as our error (401/403 -> exit 4, 404 -> 3), naming who tried.
        `registry`: the answer is about the registry itself (a 404 means it does not exist)."""
        from amlpromote.core.azure.arm import http_failure

        credential = self.connection.credential
        try:
            failure = http_failure(_ArmAnswer(response), credential.description,
                                    credential.kind, self.scope.display,
                                    {"subscription": self.scope.subscription,
                                     "resource_group": self.scope.resource_group})
        finally:
            response.close()
        if registry:
            return failure
        if response.status_code == 404:
            return NotFound(f"{what}: not found",
                            hint="check the model name and version in the registry")
        return type(failure)(f"{what}: {failure.message}", hint=failure.hint)


class _ArmAnswer:
    """A requests response, shaped like the azure-core error `azure._http_failure` reads."""

    def __init__(self, response: Any) -> None:
        self.response = response
        self.status_code = response.status_code
        self.error = None
        self.message = f"HTTP {response.status_code}"


def _is_conflict(response: Any) -> bool:
    """Whether a PUT lost its version number to another registration."""
    if response.status_code == 409:
        return True
    if response.status_code != 400:
        return False
    try:
        message = str((response.json().get("error") or {}).get("message") or "").lower()
    except ValueError:
        return False
    return "cannot be updated" in message or "already exists" in message


def _next_version(versions: list[VersionInfo]) -> str:
    return str(max((int(v.version) for v in versions), default=0) + 1)


def _sink_of(staged: StagedUpload) -> _PendingUploadSink:
    if not isinstance(staged.sink, _PendingUploadSink):
        raise TypeError("not a staged upload of an Azure ML registry")
    return staged.sink


def _error_detail(response: Any) -> str:
    """`: code: message` of an ARM error document (redacted, shortened), else ""."""
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    finally:
        response.close()
    detail = redact_text(f"{error.get('code', '')}: {error.get('message', '')}").strip(": ")
    return f", {detail[:300]}" if detail else ""


def _credential_type(body: Any) -> str:
    try:
        return str(body["blobReferenceForConsumption"]["credential"]["credentialType"]).lower()
    except (KeyError, TypeError):
        return ""


def _anonymous_folder(body: Any, what: str) -> ContainerFolder:
    """The folder `blobUri` names, read with no credential (a `NoCredentials` answer: azure-ai-ml
    then reads it anonymously too, `ModelOperations.download`). No token goes to storage."""
    uri = str((body.get("blobReferenceForConsumption") or {}).get("blobUri") or "")
    parts = urlsplit(uri)
    segments = [s for s in parts.path.split("/") if s]
    if parts.scheme != "https" or not segments:
        raise OperationFailed(f"{what}: Azure ML gave no usable storage URL",
                              hint="run again; report it if it persists")
    return ContainerFolder(f"https://{parts.netloc}/{segments[0]}", "",
                           "/".join(unquote(s) for s in segments[1:]))


def _sas_uri(body: Any, what: str) -> str:
    try:
        sas = body["blobReferenceForConsumption"]["credential"]["sasUri"]
    except (KeyError, TypeError):
        sas = None
    if not sas:
        raise OperationFailed(f"{what}: Azure ML gave no storage URL",
                              hint="run again; report it if it persists")
    return str(sas)


def _version_info(name: str, item: dict[str, Any]) -> VersionInfo:
    properties = item.get("properties") or {}
    created = (item.get("systemData") or {}).get("createdAt")
    timestamp = None
    if created:
        try:
            timestamp = int(datetime.fromisoformat(str(created).replace("Z", "+00:00"))
                            .timestamp() * 1000)
        except ValueError:
            timestamp = None
    info = VersionInfo(
        name=name, version=str(item.get("name") or ""), run_id=None, model_id=None,
        source=str(properties.get("modelUri") or ""),
        description=str(properties.get("description") or ""),
        tags={str(k): str(v) for k, v in (properties.get("tags") or {}).items()},
        aliases=[], creation_timestamp=timestamp,
        status=str(properties.get("provisioningState") or "Succeeded"))
    info.extra["model_type"] = properties.get("modelType")
    info.extra["archived"] = bool(properties.get("isArchived"))
    return info
