"""One MLflow registry, bound to its URI, with no global MLflow state.

Source and target are two `MlflowRegistry` objects, each with its own client. A plain MLflow
server (`http(s)://`), Azure ML (`azureml://`, with a bearer token) and a Databricks workspace
registry reached with a personal access token get `MlflowRestClient`, which speaks MLflow's REST
API without importing mlflow (that import alone costs ~2 s); every other registry gets an
`MlflowClient`. Where MLflow
itself reads the *global* tracking URI (the sqlalchemy and file registry stores resolve a
`models:/` source through a fresh `MlflowClient()`), the call runs inside `mlflow_globals`, which
points the globals at this registry for that call only and restores them under a lock.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amlpromote.core.errors import (
    AmlPromoteError,
    BadInput,
    NotFound,
)
from amlpromote.core.refs import ModelRef
from amlpromote.core.registries.mlflow_env import (
    configure_mlflow_environment,
    mlflow_globals,
    translate_mlflow_error,
)
from amlpromote.core.storage.artifacts import (
    ArtifactSink,
    ArtifactSource,
    HttpEndpoint,
    HttpSession,
    LocalSink,
    LocalSource,
    ProxiedSink,
    ProxiedSource,
    RepositorySink,
    RepositorySource,
    local_path_of,
    proxied_root,
)
from amlpromote.core.uris import SQLALCHEMY_SCHEMES, RegistryUri, local_path

if TYPE_CHECKING:
    from amlpromote.core.registries.stores import OpenedStore

EXPERIMENT_NAME = "amlpromote"
# Stores that are inspected before MLflow opens them (core/registries/stores.py).
_INSPECTED_SCHEMES = ("sqlite", "file", *SQLALCHEMY_SCHEMES)


def _ignore(_: str) -> None:
    pass


def entity_field(entity: Any, name: str) -> tuple[Any, bool]:
    """(value, known) of an MLflow entity's `tags` or `aliases`.

    Usually an attribute; but mlflow's Unity Catalog search results (`ModelVersionSearch`,
    `RegisteredModelSearch`) make both methods, which raise: the search did not return them,
    the entity itself has them (`known` is then False and the value None).
    """
    value = getattr(entity, name, None)
    if callable(value):
        try:
            value = value()
        except Exception:
            return None, False
    return value, True


@dataclass
class VersionInfo:
    """What we need to know about one registered model version."""

    name: str
    version: str
    run_id: str | None
    model_id: str | None
    source: str
    description: str
    tags: dict[str, str]
    aliases: list[str]
    creation_timestamp: int | None
    status: str = "READY"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mlflow(cls, mv: Any) -> VersionInfo:
        tags, tags_known = entity_field(mv, "tags")
        aliases, aliases_known = entity_field(mv, "aliases")
        # The legacy stage (None in registries without stages), as `models show` reports it.
        extra: dict[str, Any] = {"stage": getattr(mv, "current_stage", None)}
        if not (tags_known and aliases_known):
            extra["partial"] = True  # a search result without them: read the version for them
        return cls(
            name=mv.name,
            version=str(mv.version),
            run_id=mv.run_id or None,
            model_id=getattr(mv, "model_id", None) or None,
            source=mv.source or "",
            description=mv.description or "",
            tags=dict(tags or {}),
            aliases=list(aliases or []),
            creation_timestamp=mv.creation_timestamp,
            status=str(getattr(mv, "status", "READY") or "READY"),
            extra=extra,
        )



class MlflowRegistry:
    """A model registry reached through MLflow's client, bound to one URI.

    `role` is "source" or "target". A local or database store is inspected before MLflow opens
    it (core/registries/stores.py): a source, and any registry with `read_only` (a dry run,
    `configure --check`), is opened so that nothing in it can change; a target that is not an MLflow
    registry, or was written by an older MLflow without `upgrade_schema`, is refused. `log`
    receives the notes the user should see (a snapshot read, a new registry, an upgrade).
    `reading` marks a command that never writes the registry (models, deploy, score): an older
    target is then read from a snapshot, as a source is.
    """

    def __init__(self, uri: RegistryUri, *, role: str = "source", read_only: bool | None = None,
                 upgrade_schema: bool = False, reading: bool = False,
                 log: Callable[[str], None] | None = None) -> None:
        self.uri = uri
        self.reading = reading
        self.role = role
        self.read_only = role == "source" if read_only is None else read_only
        self.upgrade_schema = upgrade_schema
        self.log = log or _ignore
        self._store: OpenedStore | None = None
        configure_mlflow_environment()
        if uri.scheme == "file":
            # MLflow 3 refuses file stores unless this is set; a user who names one means it.
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"

    @property
    def store(self) -> OpenedStore:
        """How MLflow opens this registry; inspected once, before MLflow touches it."""
        if self._store is None:
            from amlpromote.core.registries.stores import open_store

            opened = open_store(self.uri, self.role, read_only=self.read_only,
                                upgrade_schema=self.upgrade_schema, reading=self.reading)
            if opened.temporary is not None:
                # The snapshot or view lives as long as this registry (MLflow caches engines
                # per URI, so the file may stay open until the process ends).
                weakref.finalize(self, opened.cleanup)
            for note in opened.notes:
                self.log(note)
            self._store = opened
        return self._store

    @property
    def mlflow_uri(self) -> str:
        """The URI MLflow is given: `uri`, or its read-only, snapshot or view spelling."""
        if self.uri.scheme in _INSPECTED_SCHEMES:
            return self.store.mlflow_uri or self.uri.uri
        return self.uri.uri

    def has_registry(self) -> bool:
        """Whether there is a registry to read yet (a new target is created on first write)."""
        if self.uri.scheme in _INSPECTED_SCHEMES:
            return self.store.mlflow_uri is not None
        return True

    def version_arg(self, version: str) -> str | int:
        """A version number as MLflow's store for this registry takes it.

        MLflow's sqlalchemy registry store compares the (integer) version column with the value
        it is given; psycopg 3, SQLAlchemy 2.1's driver for postgresql://, binds a string as
        text and PostgreSQL refuses `integer = character varying`.
        """
        if self.uri.scheme in SQLALCHEMY_SCHEMES and version.isdigit():
            return int(version)
        return version

    @property
    def created_registry(self) -> bool:
        """Whether opening this registry created it (a new target at a new path)."""
        return self._store is not None and self._store.created

    @property
    def display(self) -> str:
        return self.uri.display

    @property
    def identity(self) -> str:
        """Who this registry is, for provenance and re-run detection.

        A Databricks URI names a profile, and profile names are personal: two engineers (or a
        renamed profile) reaching one workspace must find each other's promotions, so the
        identity is the workspace host the profile resolves to.
        """
        if self.uri.scheme in ("databricks", "databricks-uc"):
            from urllib.parse import urlsplit

            from amlpromote.core.registries.databricks import DatabricksRegistry

            host = DatabricksRegistry.of(self.uri).host()
            if host:
                netloc = urlsplit(host if "://" in host else "https://" + host).netloc
                return f"{self.uri.scheme}://{netloc.lower()}"
        return self.uri.identity

    def require_existing(self) -> None:
        """A source must exist and be an MLflow store: MLflow would silently create an empty
        local store instead, or change what is there."""
        if self.uri.scheme in ("sqlite", "file"):
            path = local_path(self.uri)
            if not path.exists():
                kind = "sqlite database" if self.uri.scheme == "sqlite" else "file store folder"
                from amlpromote.core.registries.stores import SQLITE_PATH_HINT

                hint = SQLITE_PATH_HINT if self.uri.scheme == "sqlite" else \
                    "check the path: the folder that holds the store's mlruns content " \
                    "(meta.yaml files, models/)"
                raise NotFound(f"no {kind} at {path} (source {self.display})", hint=hint)
        if self.uri.scheme in _INSPECTED_SCHEMES:
            self.store  # noqa: B018 - inspects, and refuses what is not an MLflow store

    @cached_property
    def uses_rest(self) -> bool:
        """Whether this registry is reached through `MlflowRestClient` (no mlflow import)."""
        if self.uri.scheme == "azureml":
            # Azure ML's MLflow API takes a bearer token and none of MLflow's own settings.
            return True
        if self.uri.scheme == "databricks":
            # A workspace registry with a personal access token (no other auth type).
            from amlpromote.core.registries.databricks import DatabricksRegistry

            return DatabricksRegistry.of(self.uri).personal_access_token() is not None
        from amlpromote.core.registries.mlflow_rest import rest_client_applies

        return rest_client_applies(self.uri.scheme)

    @cached_property
    def client(self) -> Any:
        if self.uri.scheme in ("databricks", "databricks-uc"):
            from amlpromote.core.registries.databricks import DatabricksRegistry

            return DatabricksRegistry.of(self.uri).client(rest=self.uses_rest)
        if self.uri.scheme == "azureml":
            # azureml-mlflow's own credential chain ends in a browser prompt; this client
            # signs in with the credential chosen for this registry (core/azure/connection.py).
            from amlpromote.core.registries.azureml_workspace import rest_client

            return rest_client(self.uri)
        if self.uses_rest:
            from amlpromote.core.registries.mlflow_rest import MlflowRestClient

            return MlflowRestClient(self.uri.uri)
        if self.uri.scheme == "sqlite":
            folder = local_path(self.uri).parent
            if not folder.is_dir():
                raise NotFound(f"the folder of the sqlite registry {self.display} does not exist",
                               hint="create the folder, or check the path")
        if not self.has_registry():
            raise AssertionError(f"{self.display} would be created by opening it; "
                                 "check has_registry() first")
        uri = self.mlflow_uri  # inspects the store before MLflow is imported or opens it
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=uri, registry_uri=uri)

    def call(self, what: str, operation: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one client call, translating failures into our error types."""
        if self.uses_rest:
            from amlpromote.core.registries.mlflow_rest import RestError

            try:
                return operation(*args, **kwargs)
            except RestError as exc:
                raise translate_mlflow_error(exc, what, self.display) from exc
        return self._call_mlflow(what, operation, *args, **kwargs)

    def _call_mlflow(self, what: str, operation: Any, *args: Any, **kwargs: Any) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            # The file and sqlalchemy stores resolve some reads through a fresh MlflowClient()
            # on the global URI (and would create ./mlflow.db); point it at this registry.
            with mlflow_globals(self.mlflow_uri):
                return operation(*args, **kwargs)
        except AmlPromoteError:
            raise
        except MlflowException as exc:
            raise translate_mlflow_error(exc, what, self.display) from exc
        except (OSError, ConnectionError) as exc:
            raise translate_mlflow_error(exc, what, self.display) from exc
        except Exception as exc:
            # sqlalchemy and requests raise their own types; map by message.
            if exc.__class__.__module__.split(".")[0] in ("sqlalchemy", "requests", "urllib3"):
                raise translate_mlflow_error(exc, what, self.display) from exc
            raise

    # --- reading ------------------------------------------------------------------------------

    def resolve(self, ref: ModelRef) -> VersionInfo:
        """Find the version a reference names; NotFound names what exists instead."""
        client = self.client
        what = f"looking up {ref}"
        if ref.version:
            mv = self._get_version(ref.name, ref.version, what)
        elif ref.alias:
            self._require_model(ref.name, what)
            try:
                mv = self.call(what, client.get_model_version_by_alias, ref.name, ref.alias)
            except (NotFound, BadInput) as exc:
                raise NotFound(f"model '{ref.name}' has no alias '{ref.alias}' in "
                               f"{self.display}",
                               hint=self._alias_hint(ref.name)) from exc
        else:
            self._require_model(ref.name, what)
            versions = self.list_versions(ref.name)
            if ref.stage:
                versions = [v for v in versions if v.extra.get("stage") == ref.stage]
            if not versions:
                where = f" in stage {ref.stage}" if ref.stage else ""
                raise NotFound(f"model '{ref.name}' has no versions{where} in {self.display}",
                               hint="register a version first, or name one that exists: "
                                    f"{self._command('show', ref.name)}")
            best = max(versions, key=lambda v: int(v.version))
            if best.extra.get("partial"):
                # Unity Catalog's search leaves tags and aliases out; they are copied too.
                return self.get_version(best.name, best.version)
            return best
        return VersionInfo.from_mlflow(mv)

    def _command(self, sub: str, name: str | None = None) -> str:
        """The `amlpromote models` command that reads this registry, for a hint: named by its
        URI (as the error names it), so it reads the same registry whatever options or profile
        chose it (`--from target` alone would read the profile's)."""
        import shlex

        words = ["amlpromote", "models", sub, *([name] if name else []),
                 f"--{self.role}", self.display]
        if self.uri.scheme == "azureml" and self.uri.credential not in (None, "default"):
            words += ["--credential", self.uri.credential]
        return shlex.join(words)

    def _alias_hint(self, name: str) -> str:
        rm = self.registered_model(name)
        aliases = sorted((getattr(rm, "aliases", None) or {}).keys())
        versions = self._command("show", name)
        if aliases:
            return f"aliases of this model: {', '.join(aliases)}; all versions: {versions}"
        return f"this model has no aliases; name a version instead (NAME/VERSION): {versions}"

    def _require_model(self, name: str, what: str) -> None:
        try:
            self.call(what, self.client.get_registered_model, name)
        except (NotFound, BadInput) as exc:
            raise NotFound(f"model '{name}' does not exist in {self.display}",
                           hint="check the name; list the models: "
                                + self._command("list")) from exc

    def _get_version(self, name: str, version: str, what: str) -> Any:
        try:
            return self.call(what, self.client.get_model_version, name,
                             self.version_arg(version))
        except (NotFound, BadInput) as exc:
            self._require_model(name, what)
            known = [v.version for v in self.list_versions(name)]
            listing = ", ".join(sorted(known, key=int)[-10:]) or "none"
            raise NotFound(f"model '{name}' has no version {version} in {self.display}",
                           hint=f"versions that exist: {listing}; all of them: "
                                + self._command("show", name)) from exc

    def list_versions(self, name: str, filter_tags: dict[str, str] | None = None) \
            -> list[VersionInfo]:
        """All versions of a model (every page), optionally only those with the given tags."""
        quoted = name.replace("'", "\\'")
        versions: list[VersionInfo] = []
        token = None
        while True:
            page = self.call(f"listing versions of {name}", self.client.search_model_versions,
                             f"name='{quoted}'", max_results=200, page_token=token)
            for mv in page:
                info = VersionInfo.from_mlflow(mv)
                info.extra["stage"] = getattr(mv, "current_stage", None)
                if filter_tags and any(info.tags.get(k) != v for k, v in filter_tags.items()):
                    continue
                versions.append(info)
            token = getattr(page, "token", None)
            if not token:
                return versions

    def get_version(self, name: str, version: str) -> VersionInfo:
        mv = self._get_version(name, version, f"reading {name}/{version}")
        return VersionInfo.from_mlflow(mv)

    def registered_model(self, name: str) -> Any | None:
        try:
            return self.call(f"reading model {name}", self.client.get_registered_model, name)
        except (NotFound, BadInput):
            return None

    def artifact_uri(self, version: VersionInfo) -> str:
        """Where the version's stored files are (not `models:/`, which adds metadata files)."""
        if self.uri.scheme in ("databricks", "databricks-uc"):
            # Databricks' download URI (dbfs:/) does not read back byte-exact; its models:/
            # route (signed URLs) does, and `artifact_source` reads it without the metadata.
            from amlpromote.core.registries.databricks import DatabricksRegistry

            return DatabricksRegistry.of(self.uri).artifact_uri(version.name, version.version)
        uri = self.call(f"locating the files of {version.name}/{version.version}",
                        self.client.get_model_version_download_uri, version.name,
                        self.version_arg(version.version))
        if uri.startswith("models:/m-") or uri.startswith("models:m-"):
            model_id = uri.split("m-", 1)[1].split("/", 1)[0]
            logged = self.call("reading the logged model", self.client.get_logged_model,
                               "m-" + model_id)
            uri = logged.artifact_location
        if uri.startswith("runs:/"):
            run_id, _, sub = uri[len("runs:/"):].partition("/")
            run = self.call("reading the source run", self.client.get_run, run_id)
            uri = run.info.artifact_uri.rstrip("/") + ("/" + sub if sub else "")
        return uri

    def artifact_source(self, uri: str) -> ArtifactSource:
        if self.uri.scheme in ("databricks", "databricks-uc") and uri.startswith("models:"):
            from amlpromote.core.registries.databricks import DatabricksRegistry

            # Over REST, the files are listed and signed through the registry's own client.
            rest = self.client.rest if self.uses_rest else None
            return DatabricksRegistry.of(self.uri).artifact_source(uri, rest)
        if self.uri.scheme == "azureml" and uri.startswith("azureml:"):
            # Straight from blob storage with this registry's credential (MLflow's artifact
            # repository for azureml:// reads the global tracking URI's credentials).
            from amlpromote.core.storage.azure_blob import artifact_source

            return artifact_source(self.client, uri)
        local = local_path_of(uri)
        if local is not None:
            return LocalSource(self._local_root(local))
        proxied = proxied_root(uri, self.uri.uri)
        if proxied is not None:
            base, root = proxied
            return ProxiedSource(HttpSession(HttpEndpoint.for_tracking_uri(base)), root)
        return RepositorySource(uri, self._repository)

    def artifact_sink(self, uri: str) -> ArtifactSink:
        if self.uri.scheme == "azureml" and uri.startswith("azureml:"):
            # Parallel block uploads into the workspace's storage (core/storage/azure_blob.py).
            from amlpromote.core.storage.azure_blob import artifact_sink

            return artifact_sink(self.client, uri)
        local = local_path_of(uri)
        if local is not None:
            return LocalSink(self._local_root(local))
        proxied = proxied_root(uri, self.uri.uri)
        if proxied is not None:
            base, root = proxied
            return ProxiedSink(HttpSession(HttpEndpoint.for_tracking_uri(base)), root)
        return RepositorySink(uri, self._repository)

    def _local_root(self, path: Path) -> Path:
        if not path.is_absolute() and self.uri.scheme in ("sqlite", "file"):
            # Relative artifact roots are relative to where the store was created; the best
            # anchor we have is the store's own folder.
            return (local_path(self.uri).parent / path).resolve()
        return path

    def _repository(self, uri: str) -> Any:
        if self.uri.scheme in ("databricks", "databricks-uc"):
            from amlpromote.core.registries.databricks import DatabricksRegistry

            return DatabricksRegistry.of(self.uri).repository(uri)
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        with mlflow_globals(self.mlflow_uri):
            return get_artifact_repository(uri)
