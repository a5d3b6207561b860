"""`amlpromote models`: what a registry holds, and where its promoted versions came from.

Reading only. Nothing here writes to a registry: a local sqlite or file store that does not exist
is reported as missing (NotFound, exit 3), never created. MLflow registries of every kind are read
through `MlflowRegistry` (file, sqlite, MLflow servers, Databricks, Azure ML workspaces); an Azure
ML registry, which has no MLflow registry API, through Azure Resource Manager
(`AzureMlRegistryTarget`).

The provenance of a version is read back from the `amlpromote.*` tags copy-model wrote on it
(core/registries/lineage.py): the source it was copied from, the digest, when and by which tool
version, and the chain of earlier hops when that source was itself promoted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from amlpromote.core.errors import BadInput, NotFound
from amlpromote.core.refs import ModelRef
from amlpromote.core.registries import lineage
from amlpromote.core.registries.registry import MlflowRegistry, VersionInfo, entity_field
from amlpromote.core.storage.artifacts import ArtifactSource
from amlpromote.core.uris import RegistryUri, local_path, redact_text

# Registered models asked for per page (MLflow's own default page size).
PAGE_SIZE = 100
# Registries whose version search may leave tags out; a version found without any is read again.
_SEARCH_MAY_OMIT_TAGS = ("databricks", "databricks-uc", "azureml")


# -- what is returned -------------------------------------------------------------------------


@dataclass
class Provenance:
    """Where a promoted version came from, as its `amlpromote.*` tags say."""

    source_uri: str
    source_name: str
    source_version: str
    source_run_id: str | None
    source_model_id: str | None
    digest: str | None
    promoted_at: str | None
    tool_version: str | None
    files: int | None
    bytes: int | None
    chain: list[lineage.Hop]  # the hops before `source`, oldest first
    chain_dropped: int = 0  # older hops the registry's tag limits left out

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": {"uri": self.source_uri, "name": self.source_name,
                       "version": self.source_version, "run_id": self.source_run_id,
                       "model_id": self.source_model_id},
            "digest": self.digest,
            "promoted_at": self.promoted_at,
            "tool_version": self.tool_version,
            "files": self.files,
            "bytes": self.bytes,
            "chain": [h.as_dict() for h in self.chain],
            "chain_dropped": self.chain_dropped,
        }

    def origin(self) -> dict[str, str]:
        """The short form `models list` shows: the source version this one is a copy of."""
        return {"uri": self.source_uri, "name": self.source_name,
                "version": self.source_version}


@dataclass
class VersionEntry:
    """One version as `models show` lists it."""

    version: str
    created: str | None  # ISO 8601, UTC
    aliases: list[str] | None  # None: this kind of registry has no aliases
    stage: str | None
    status: str
    provenance: Provenance | None

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "created": self.created, "aliases": self.aliases,
                "stage": self.stage, "status": self.status,
                "provenance": self.provenance.as_dict() if self.provenance else None}


@dataclass
class ModelEntry:
    """One registered model as `models list` lists it."""

    name: str
    versions: int
    latest: str | None
    aliases: dict[str, str] | None  # alias -> version; None: no aliases in this kind
    promoted_from: dict[str, str] | None  # where the latest version was copied from

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "versions": self.versions, "latest": self.latest,
                "aliases": self.aliases, "promoted_from": self.promoted_from}


@dataclass
class ModelListing:
    registry: str
    side: str
    models: list[ModelEntry]
    truncated: bool = False  # --max left models out

    def as_dict(self) -> dict[str, Any]:
        return {"registry": self.registry, "side": self.side,
                "models": [m.as_dict() for m in self.models], "truncated": self.truncated}


@dataclass
class ModelDetail:
    registry: str
    side: str
    name: str
    description: str
    aliases: dict[str, str] | None
    versions: list[VersionEntry]

    def as_dict(self) -> dict[str, Any]:
        return {"registry": self.registry, "side": self.side, "name": self.name,
                "description": self.description, "aliases": self.aliases,
                "versions": [v.as_dict() for v in self.versions]}


@dataclass
class FileEntry:
    path: str
    size: int | None

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size}


@dataclass
class VersionDetail:
    """One version in full (`models show NAME/VERSION`)."""

    registry: str
    side: str
    name: str
    entry: VersionEntry
    description: str
    run_id: str | None
    source: str  # where the registry says the files are (credentials removed)
    tags: dict[str, str]  # the version's own tags, without amlpromote.*
    files: list[FileEntry] | None = None  # only with --files

    def as_dict(self) -> dict[str, Any]:
        return {"registry": self.registry, "side": self.side, "name": self.name,
                **self.entry.as_dict(), "description": self.description,
                "run_id": self.run_id, "source": self.source, "tags": self.tags,
                "files": [f.as_dict() for f in self.files] if self.files is not None else None}


# -- reading a registry -----------------------------------------------------------------------


class RegistryReader(Protocol):
    """What the commands read from one registry, whatever its kind."""

    display: str
    has_aliases: bool

    def models(self, limit: int | None) -> tuple[list[tuple[str, dict[str, str]]], bool]:
        """(name, aliases) of the registered models, every page (at most `limit`), and
        whether `limit` left some out."""
        ...

    def model(self, name: str) -> tuple[str, dict[str, str]] | None:
        """(description, aliases) of one model; None when it does not exist."""
        ...

    def versions(self, name: str) -> list[VersionInfo]: ...

    def resolve(self, ref: ModelRef) -> VersionInfo: ...

    def files(self, version: VersionInfo) -> list[FileEntry]: ...

    def source(self, version: VersionInfo) -> ArtifactSource:
        """The version's files, to read (deploy fetches them for a local endpoint)."""
        ...


class MlflowReader:
    """Any registry with MLflow's registry API, through `MlflowRegistry`."""

    def __init__(self, uri: RegistryUri, side: str) -> None:
        # Read-only on either side: a local or database store is opened so that nothing in it
        # can change (core/registries/stores.py).
        self.registry = MlflowRegistry(uri, role=side, read_only=True, reading=True)
        self.uri = uri
        self.display = self.registry.display
        # The Databricks workspace registry has no aliases (Unity Catalog has).
        self.has_aliases = uri.scheme != "databricks"

    def models(self, limit: int | None) -> tuple[list[tuple[str, dict[str, str]]], bool]:
        registry = self.registry
        found: list[tuple[str, dict[str, str]]] = []
        token = None
        while True:
            wanted = PAGE_SIZE if limit is None else max(1, min(PAGE_SIZE, limit - len(found)))
            page = registry.call("listing registered models",
                                 registry.client.search_registered_models,
                                 max_results=wanted, page_token=token)
            for rm in page:
                found.append((str(rm.name), _aliases_of(rm)))
            token = getattr(page, "token", None)
            if limit is not None and len(found) >= limit:
                return found[:limit], bool(token) or len(found) > limit
            if not token:
                return found, False

    def model(self, name: str) -> tuple[str, dict[str, str]] | None:
        rm = self.registry.registered_model(name)
        if rm is None:
            return None
        return str(getattr(rm, "description", "") or ""), _aliases_of(rm)

    def versions(self, name: str) -> list[VersionInfo]:
        versions = self.registry.list_versions(name)
        if self.uri.scheme in _SEARCH_MAY_OMIT_TAGS:
            versions = [self._with_tags(v) for v in versions]
        return versions

    def _with_tags(self, version: VersionInfo) -> VersionInfo:
        if version.tags:
            return version
        full = self.registry.get_version(version.name, version.version)
        full.extra.setdefault("stage", version.extra.get("stage"))
        return full

    def resolve(self, ref: ModelRef) -> VersionInfo:
        from amlpromote.core.registries.databricks import check_source_ref

        check_source_ref(self.uri, ref)
        version = self.registry.resolve(ref)
        if ref.version or ref.alias:
            return version
        # NAME/latest and NAME/Stage resolve through a search, which may leave tags out.
        return self.registry.get_version(version.name, version.version) \
            if self.uri.scheme in _SEARCH_MAY_OMIT_TAGS and not version.tags else version

    def source(self, version: VersionInfo) -> ArtifactSource:
        return self.registry.artifact_source(self.registry.artifact_uri(version))

    def files(self, version: VersionInfo) -> list[FileEntry]:
        from amlpromote.core.promote.promote import MLFLOW_LOAD_METADATA

        reader = self.source(version)
        # What copy-model would copy: MLflow's load metadata file is not part of the model.
        return [FileEntry(f.path, f.size) for f in sorted(reader.list_files(),
                                                          key=lambda f: f.path)
                if f.path != MLFLOW_LOAD_METADATA]


class AzureMlRegistryReader:
    """An Azure ML registry, read through Azure Resource Manager (it has no MLflow registry)."""

    has_aliases = False

    def __init__(self, uri: RegistryUri) -> None:
        from amlpromote.core.registries.azureml_registry import AzureMlRegistryTarget

        self.target = AzureMlRegistryTarget(uri)
        self.display = self.target.display

    def models(self, limit: int | None) -> tuple[list[tuple[str, dict[str, str]]], bool]:
        names, truncated = self.target.model_names(limit)
        return [(name, {}) for name in names], truncated

    def model(self, name: str) -> tuple[str, dict[str, str]] | None:
        # A registry's model exists while it has a version (its container comes with them).
        return ("", {}) if self.target.versions(name) else None

    def versions(self, name: str) -> list[VersionInfo]:
        return self.target.versions(name)

    def resolve(self, ref: ModelRef) -> VersionInfo:
        if ref.alias:
            raise BadInput(f"'{ref}': Azure ML registries have no aliases",
                           hint="name a version: NAME/VERSION or NAME/latest")
        if ref.stage:
            raise BadInput(f"'{ref}': Azure ML registry versions have no MLflow stages",
                           hint="name a version: NAME/VERSION or NAME/latest")
        if ref.version:
            found = self.target.version(ref.name, ref.version)
            if found is None:
                raise NotFound(f"model '{ref.name}' has no version {ref.version} in "
                               f"{self.display}")
            return found
        latest = _latest(self.target.versions(ref.name))
        if latest is None:
            raise NotFound(f"model '{ref.name}' has no versions in {self.display}")
        return latest

    def source(self, version: VersionInfo) -> ArtifactSource:
        return self.target.version_source(version)

    def files(self, version: VersionInfo) -> list[FileEntry]:
        reader = self.source(version)
        return [FileEntry(f.path, f.size) for f in sorted(reader.list_files(),
                                                          key=lambda f: f.path)]


def open_reader(uri: RegistryUri, side: str) -> RegistryReader:
    """A reader for `uri`; a local store that does not exist is NotFound, never created."""
    if uri.is_local:
        path = local_path(uri)
        exists = path.is_file() if uri.scheme == "sqlite" else path.is_dir()
        if not exists:
            kind = "sqlite database" if uri.scheme == "sqlite" else "file store folder"
            later = (" (the first copy-model into it creates it)" if side == "target"
                     else "")
            raise NotFound(f"the {side} registry {uri.display} does not exist: no {kind} at "
                           f"{path}",
                           hint="check the path" + later)
    if uri.scheme == "azureml":
        from amlpromote.core.azure.connection import AzureMlScope

        if AzureMlScope.parse(uri.uri).is_registry:
            return AzureMlRegistryReader(uri)
    reader = MlflowReader(uri, side)
    if not reader.registry.has_registry():
        # An empty database or folder: MLflow would create a registry in it on opening.
        raise NotFound(f"the {side} registry {uri.display} holds no MLflow registry yet",
                       hint="check the path" + (" (the first copy-model into it creates it)"
                                                if side == "target" else ""))
    return reader


# -- the two commands -------------------------------------------------------------------------


def list_models(uri: RegistryUri, side: str, limit: int | None = None) -> ModelListing:
    """Every registered model (all pages, at most `limit`) with its number of versions, latest
    version, aliases and, when the latest was promoted, where it came from."""
    reader = open_reader(uri, side)
    found, truncated = reader.models(limit)
    entries: list[ModelEntry] = []
    for name, aliases in sorted(found, key=lambda item: item[0]):
        versions = reader.versions(name)
        latest = _latest(versions)
        provenance = provenance_of(latest.tags) if latest else None
        entries.append(ModelEntry(
            name=name, versions=len(versions), latest=latest.version if latest else None,
            aliases=dict(sorted(aliases.items())) if reader.has_aliases else None,
            promoted_from=provenance.origin() if provenance else None))
    return ModelListing(reader.display, side, entries, truncated)


def show_model(uri: RegistryUri, side: str, name: str, again: str = "") -> ModelDetail:
    """Every version of one model, newest first, with its provenance. `again` is what repeats
    the user's choice of registry in a hint (e.g. `--from target --profile prod`)."""
    reader = open_reader(uri, side)
    model = reader.model(name)
    if model is None:
        raise _unknown_model(name, reader.display, side, again)
    description, aliases = model
    by_version = _aliases_by_version(aliases)
    versions = sorted(reader.versions(name), key=_number, reverse=True)
    return ModelDetail(
        reader.display, side, name, description,
        dict(sorted(aliases.items())) if reader.has_aliases else None,
        [_entry(v, by_version, reader.has_aliases) for v in versions])


def show_version(uri: RegistryUri, side: str, ref: ModelRef, files: bool = False,
                 again: str = "") -> VersionDetail:
    """One version in full: `NAME/VERSION`, `NAME@ALIAS`, `NAME/latest` or `NAME/Stage`;
    with `files`, its stored files (paths and sizes, nothing downloaded)."""
    reader = open_reader(uri, side)
    model = reader.model(ref.name)
    if model is None:
        raise _unknown_model(ref.name, reader.display, side, again)
    _, aliases = model
    try:
        version = reader.resolve(ref)
    except NotFound as exc:
        raise NotFound(exc.message, hint=_version_hint(reader, ref, aliases, side, again)) \
            from exc
    entry = _entry(version, _aliases_by_version(aliases), reader.has_aliases)
    return VersionDetail(
        reader.display, side, version.name, entry, version.description, version.run_id,
        redact_text(version.source),
        {k: v for k, v in sorted(version.tags.items()) if not k.startswith(lineage.PREFIX)},
        reader.files(version) if files else None)


# -- provenance -------------------------------------------------------------------------------


def provenance_of(tags: dict[str, str]) -> Provenance | None:
    """The provenance recorded in a version's tags; None for a version amlpromote did not make."""
    hops = lineage.earlier_hops(tags)
    if not hops:
        return None
    return Provenance(
        source_uri=tags[lineage.SOURCE_URI],
        source_name=tags.get(lineage.SOURCE_NAME, ""),
        source_version=tags.get(lineage.SOURCE_VERSION, ""),
        source_run_id=tags.get(lineage.SOURCE_RUN_ID),
        source_model_id=tags.get(lineage.SOURCE_MODEL_ID),
        digest=tags.get(lineage.DIGEST),
        promoted_at=tags.get(lineage.PROMOTED_AT),
        tool_version=tags.get(lineage.TOOL_VERSION),
        files=_int(tags.get(lineage.FILES)),
        bytes=_int(tags.get(lineage.BYTES)),
        chain=hops[:-1],  # the last hop is this version's own source
        chain_dropped=_int(tags.get(lineage.CHAIN_DROPPED)) or 0,
    )


# -- helpers of this module -------------------------------------------------------------------


def _aliases_of(rm: Any) -> dict[str, str]:
    """alias -> version of a registered model (MLflow's entity and the REST client's alike;
    none from a Unity Catalog search result, which leaves them out)."""
    aliases = entity_field(rm, "aliases")[0] or {}
    if isinstance(aliases, dict):
        return {str(k): str(v) for k, v in aliases.items()}
    # Some MLflow entities hand out alias objects rather than a mapping.
    return {str(getattr(a, "alias", "")): str(getattr(a, "version", "")) for a in aliases
            if getattr(a, "alias", None)}


def _aliases_by_version(aliases: dict[str, str]) -> dict[str, list[str]]:
    by_version: dict[str, list[str]] = {}
    for alias, version in sorted(aliases.items()):
        by_version.setdefault(version, []).append(alias)
    return by_version


def _entry(version: VersionInfo, by_version: dict[str, list[str]],
           has_aliases: bool) -> VersionEntry:
    return VersionEntry(
        version=version.version, created=_iso(version.creation_timestamp),
        aliases=sorted(by_version.get(version.version, [])) if has_aliases else None,
        stage=version.extra.get("stage") or None,
        # An Azure ML registry keeps archived versions (their numbers stay taken).
        status="Archived" if version.extra.get("archived") else version.status,
        provenance=provenance_of(version.tags))


def _number(version: VersionInfo) -> int:
    return int(version.version) if version.version.isdigit() else -1


def _latest(versions: list[VersionInfo]) -> VersionInfo | None:
    """The highest version that is not archived (Azure ML's "latest" label skips archived
    versions), else the highest."""
    active = [v for v in versions if not v.extra.get("archived")] or versions
    return max(active, key=_number) if active else None


def _iso(timestamp_ms: int | None) -> str | None:
    if timestamp_ms is None:
        return None
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC) \
        .strftime("%Y-%m-%dT%H:%M:%SZ")


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _command(words: str, again: str) -> str:
    return f"amlpromote models {words}" + (f" {again}" if again else "")


def _unknown_model(name: str, display: str, side: str, again: str) -> NotFound:
    return NotFound(f"model '{name}' does not exist in the {side} registry {display}",
                    hint="check the name; list the models: "
                         + _command("list", again or f"--from {side}"))


def _version_hint(reader: RegistryReader, ref: ModelRef, aliases: dict[str, str], side: str,
                  again: str) -> str:
    show = _command(f"show {ref.name}", again or f"--from {side}")
    if ref.alias:
        if aliases:
            return f"aliases of this model: {', '.join(sorted(aliases))}; all versions: {show}"
        return f"this model has no aliases; name a version instead (NAME/VERSION): {show}"
    known = sorted((v.version for v in reader.versions(ref.name)), key=lambda v: int(v)
                   if v.isdigit() else -1)
    listing = ", ".join(known[-10:]) or "none"
    return f"versions that exist: {listing}; all of them: {show}"
