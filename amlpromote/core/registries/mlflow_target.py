"""The target side of a promotion: stage files, then register them as a version.

An MLflow 3 registry takes a version whose source is a LoggedModel: we create one in the
target (status PENDING), stream the files into its artifact location, mark it READY and only then
register `models:/<model_id>`. A reader never sees a version whose files are incomplete. A run
that fails, is interrupted or loses a race removes what it staged (`abort`); what a killed run
left (a PENDING logged model, which no registry lists as a version) is removed by the next run
of the same promotion (`sweep`, core/registries/staging.py says when a container is provably
abandoned). Registries without LoggedModel support (MLflow 2 servers) get the same shape
through a run.

An Azure ML workspace stages through a run by design: it answers 404 on every LoggedModel
endpoint, and registering the run's artifact folder (which holds MLmodel) is what makes Azure ML
record the version as an MLflow model asset (type `mlflow_model`, deployable without code).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from amlpromote.core.errors import AmlPromoteError, BadInput, NotFound, OperationFailed
from amlpromote.core.registries import lineage, staging
from amlpromote.core.registries.lineage import AZURE_ML_TAG_LIMITS, NO_LIMITS, TagLimits
from amlpromote.core.registries.registry import EXPERIMENT_NAME, MlflowRegistry, VersionInfo
from amlpromote.core.registries.target import AZURE_ML_MAX_FILES, PromotionTarget, StagedUpload
from amlpromote.core.storage.artifacts import ArtifactSink, ArtifactSource
from amlpromote.core.uris import RegistryUri, local_path


def sqlite_artifact_root(uri: RegistryUri) -> Path:
    """A sqlite target without a server keeps artifacts beside its database file."""
    db = local_path(uri)
    return db.parent / f"{db.stem}-artifacts"


def make_target(uri: RegistryUri, *, dry_run: bool = False, upgrade_schema: bool = False,
                log: Callable[[str], None] | None = None) -> PromotionTarget:
    """The target for a registry URI: an Azure ML registry gets its own (no MLflow writes).

    `dry_run`: the registry is opened so that nothing in it can change; `upgrade_schema`: the
    user allows MLflow to upgrade a registry written by an older MLflow
    (core/registries/stores.py)."""
    if uri.scheme == "azureml":
        from amlpromote.core.azure.connection import AzureMlScope

        if AzureMlScope.parse(uri.uri).is_registry:
            from amlpromote.core.registries.azureml_registry import AzureMlRegistryTarget

            return AzureMlRegistryTarget(uri)
    return MlflowTarget(MlflowRegistry(uri, role="target", read_only=dry_run,
                                       upgrade_schema=upgrade_schema, log=log))


class MlflowTarget:
    """A registry that receives promoted versions through MLflow's client."""

    supports_aliases = True

    def __init__(self, registry: MlflowRegistry) -> None:
        self.registry = registry

    @property
    def created_registry(self) -> bool:
        """Whether this promotion created the registry (a new path given as the target)."""
        return self.registry.created_registry

    @property
    def display(self) -> str:
        return self.registry.display

    @property
    def is_azureml(self) -> bool:
        return self.registry.uri.scheme == "azureml"

    @property
    def tag_limits(self) -> TagLimits:
        """What the target accepts as tags on one version (lineage.version_tags fits them)."""
        return AZURE_ML_TAG_LIMITS if self.is_azureml else NO_LIMITS

    def check_files(self, count: int) -> None:
        """Refuse, before anything is written, a model the target cannot hold."""
        if self.is_azureml and count > AZURE_ML_MAX_FILES:
            raise BadInput(f"the model has {count} files; an Azure ML model version holds at "
                           f"most {AZURE_ML_MAX_FILES}",
                           hint="package the model's files into fewer (e.g. an archive inside "
                                "the model folder), or promote into another registry")

    def prepare(self) -> None:
        """Check early that the target can be written (folders exist and are writable) and is
        an MLflow registry it may write into (core/registries/stores.py), before anything is
        created."""
        uri = self.registry.uri
        if uri.scheme == "sqlite":
            db = local_path(uri)
            try:
                db.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OperationFailed(f"cannot create the target folder {db.parent}",
                                      hint="check the parent folder's permissions") from exc
            _require_writable(db.parent, self.display)
            root = sqlite_artifact_root(uri)
            if root.exists():
                _require_writable(root, self.display)
            self._open_sqlite(db)
        elif uri.scheme == "file":
            folder = local_path(uri)
            if folder.exists():
                self.registry.store  # noqa: B018 - refuses a folder that is not an MLflow store
                _require_writable(folder, self.display)
            else:
                try:
                    folder.mkdir(parents=True)
                except OSError as exc:
                    raise OperationFailed(f"cannot create the target folder {folder}",
                                          hint="check the parent folder's permissions") from exc
                self.registry.store  # noqa: B018 - an empty folder now: a new registry
        elif self.registry.store.created:
            # An empty database: MLflow creates its schema when a client first opens it.
            self.registry.call("creating the target registry",
                               lambda: self.registry.client.search_registered_models(
                                   max_results=1))
        if self.registry.created_registry:
            self.registry.log(f"created a new registry at {self.display}")

    def _open_sqlite(self, db: Path) -> None:
        """Open (and on first use create) the sqlite registry, one process at a time.

        MLflow creates a new database's schema when a client first opens it; two runs doing
        that at once (two CI jobs on a new registry) make the loser fail with "table ...
        already exists". Both stores of the client are opened under an exclusive lock on the
        database's folder, so the later run waits and finds the schema complete.
        """
        with _folder_lock(db.parent):
            # Inspected under the lock (core/registries/stores.py refuses another application's
            # database, a folder named x.db, an old schema): a run that is creating the schema is
            # never seen half-way, and of two runs creating it only the first says so.
            self.registry.store  # noqa: B018
            if self.registry.created_registry and not (db.is_file() and db.stat().st_size):
                self.registry.call("creating the target registry", _create_sqlite_schema, db)
            self.registry.call("opening the target registry",
                               lambda: self.registry.client.search_registered_models(
                                   max_results=1))

    def inspect(self) -> bool:
        """Whether there is a registry yet; a store that must not be written (another
        application's data, an old schema) is refused here, before the source is read."""
        uri = self.registry.uri
        folder = local_path(uri).parent if uri.scheme == "sqlite" else None
        if folder is not None and folder.is_dir() and os.access(folder, os.R_OK):
            with _folder_lock(folder):  # not while another run creates the schema
                return self.registry.has_registry()
        return self.registry.has_registry()

    def find_promoted(self, name: str, tags: dict[str, str]) -> list[VersionInfo]:
        if not self.inspect():
            # Nothing can have been promoted into a store that does not exist yet, and opening
            # it would create it (a dry run must change nothing). The store is inspected
            # first, so an old schema or another application's data is refused here too.
            return []
        if self.registry.registered_model(name) is None:
            return []
        return sorted(self.registry.list_versions(name, filter_tags=tags),
                      key=lambda v: int(v.version))

    def _experiment_id(self) -> str:
        client = self.registry.client
        experiment = self.registry.call("reading the target experiment",
                                        client.get_experiment_by_name, EXPERIMENT_NAME)
        if experiment is not None:
            return str(experiment.experiment_id)
        location = None
        if self.registry.uri.scheme == "sqlite":
            location = sqlite_artifact_root(self.registry.uri).as_uri()
        try:
            return str(self.registry.call("creating the target experiment",
                                          client.create_experiment, EXPERIMENT_NAME,
                                          artifact_location=location))
        except AmlPromoteError:
            # Another run created it meanwhile.
            experiment = self.registry.call("reading the target experiment",
                                            client.get_experiment_by_name, EXPERIMENT_NAME)
            if experiment is None:
                raise
            return str(experiment.experiment_id)

    def begin(self, label: str, tags: dict[str, str], name: str | None = None) -> StagedUpload:
        """Create the container the files go into (a LoggedModel, else a run), tagged with its
        owner and heartbeat (core/registries/staging.py) so a later run can tell a leftover from a
        live run's staging."""
        client = self.registry.client
        experiment_id = self._experiment_id()
        tags = {**tags, **staging.owner_tags(), **({staging.NAME: name} if name else {})}
        if self.is_azureml:
            return self._begin_with_run(experiment_id, label, tags)
        try:
            logged = self.registry.call("creating a logged model in the target",
                                        client.create_logged_model, experiment_id,
                                        name=label, tags=tags)
        except (NotFound, OperationFailed) as exc:
            if "ENDPOINT_NOT_FOUND" not in str(exc) and "404" not in str(exc) \
                    and not isinstance(exc, NotFound):
                raise
            return self._begin_with_run(experiment_id, label, tags)
        uri = logged.artifact_location
        return StagedUpload(self.registry.artifact_sink(uri), uri, f"models:/{logged.model_id}",
                            model_id=logged.model_id)

    def _begin_with_run(self, experiment_id: str, label: str, tags: dict[str, str]) \
            -> StagedUpload:
        client = self.registry.client
        run = self.registry.call("creating a run in the target", client.create_run,
                                 experiment_id, run_name=f"amlpromote-{label}", tags=tags)
        uri = run.info.artifact_uri.rstrip("/") + "/model"
        return StagedUpload(self.registry.artifact_sink(uri), uri, uri, run_id=run.info.run_id)

    def staged_source(self, staged: StagedUpload) -> Any:
        return self.registry.artifact_source(staged.artifact_uri)

    def version_source(self, version: VersionInfo) -> ArtifactSource:
        """The stored files of a registered version (for --verify)."""
        return self.registry.artifact_source(self.registry.artifact_uri(version))

    def abort(self, staged: StagedUpload) -> str | None:
        """Remove what was staged: mark the container failed (so a later run knows it is dead
        even if this one is killed midway), delete its files, then the container. Best effort:
        the error that made the run abort matters more; what is left is a later run's (sweep).
        Returns None when all is removed, else what remains, as a sentence for the user."""
        client = self.registry.client
        try:
            if staged.model_id:
                self.registry.call("marking the logged model failed",
                                   client.finalize_logged_model, staged.model_id, "FAILED")
            elif staged.run_id:
                self.registry.call("marking the run failed", client.set_terminated,
                                   staged.run_id, status="FAILED")
        except Exception:
            pass
        if self.is_azureml:
            return (f"the staged files stay in the workspace's storage, in the FAILED staging "
                    f"run {staged.run_id} (Azure ML cannot delete a run's files)")
        if self._remove(staged.artifact_uri, staged.model_id, staged.run_id, sink=staged.sink):
            return None
        return "removing the staged files failed; the next run of this promotion removes them"

    def _remove(self, artifact_uri: str, model_id: str | None, run_id: str | None,
                sink: ArtifactSink | None = None) -> bool:
        """Delete a staging container's files, then the container; whether both went."""
        if self.is_azureml:
            # Azure ML's run history has no call that deletes a run's artifacts: azureml-mlflow
            # 1.62's AzureMLflowArtifactRepository (azureml/mlflow/_store/artifact/
            # artifact_repo.py) implements log, list and download but not delete_artifacts, and
            # the write URLs of POST .../batch/metadata are for creating blobs (their delete
            # permission is not documented; no Azure ML client deletes with them). The FAILED
            # run stays as the record of where the files are, so nothing is deleted.
            return False
        client = self.registry.client
        try:
            remove = getattr(sink or self.registry.artifact_sink(artifact_uri), "remove", None)
            if remove is None:
                return False
            remove()
        except Exception:
            return False
        try:
            if model_id:
                self.registry.call("deleting the staged logged model", client.delete_logged_model,
                                   model_id)
            elif run_id:
                self.registry.call("deleting the staging run", client.delete_run, run_id)
        except Exception:
            return False
        return True

    def renew(self, staged: StagedUpload, tags: dict[str, str]) -> None:
        """Set tags on the staging container (the heartbeat)."""
        client = self.registry.client
        if staged.model_id:
            self.registry.call("renewing the staging heartbeat", client.set_logged_model_tags,
                               staged.model_id, tags)
        elif staged.run_id:
            for key, value in tags.items():
                self.registry.call("renewing the staging heartbeat", client.set_tag,
                                   staged.run_id, key, value)

    def sweep(self, staged: StagedUpload | None, key: str) -> list[str]:
        """Remove what earlier runs of the same promotion (same source key) staged and left:
        containers whose owner is provably gone (core/registries/staging.py) and that no version of
        the
        model they were staged for uses. Returns what was removed; never the run's own
        container (`staged`; None for a run that stages nothing, which then looks for both
        kinds) or a live run's, never a registered version's files."""
        if self.is_azureml:
            return []  # nothing of a staging run can be removed there (see `_remove`)
        client = self.registry.client
        experiment = self.registry.call("reading the target experiment",
                                        client.get_experiment_by_name, EXPERIMENT_NAME)
        if experiment is None:
            return []
        experiment_id = str(experiment.experiment_id)
        query = f"tags.`{lineage.KEY}` = '{key}'"
        found: list[tuple[str, str | None, str | None, dict[str, str]]] = []
        own_model = staged.model_id if staged else None
        own_run = staged.run_id if staged else None
        if staged is None or staged.model_id:
            try:
                models = self._pages(lambda token: client.search_logged_models(
                    [experiment_id], filter_string=query, page_token=token))
            except (NotFound, OperationFailed):
                if staged is not None:
                    raise
                models = []  # a registry without LoggedModels (an MLflow 2 server)
            for model in models:
                if model.model_id != own_model:
                    found.append((model.artifact_location, model.model_id, None,
                                  dict(model.tags or {})))
        if staged is None or (staged.run_id and not staged.model_id):
            for run in self._pages(lambda token: client.search_runs(
                    [experiment_id], filter_string=query.replace("`", "\""), page_token=token)):
                if run.info.run_id != own_run:
                    found.append((run.info.artifact_uri.rstrip("/") + "/model", None,
                                  run.info.run_id, dict(run.data.tags or {})))
        gone = [f for f in found if staging.owner_gone(f[3])]
        if not gone:
            return []
        used: dict[str, set[str]] = {}
        removed = []
        for uri, model_id, run_id, tags in gone:
            name = tags.get(staging.NAME)
            if not name:
                continue  # without the model's name, whether a version uses it is unknown
            if name not in used:
                versions = self.registry.list_versions(name) \
                    if self.registry.registered_model(name) is not None else []
                used[name] = {v.source for v in versions} | {v.run_id or "" for v in versions}
            if (model_id and f"models:/{model_id}" in used[name]) or \
                    (run_id and run_id in used[name]) or uri in used[name]:
                continue
            if self._remove(uri, model_id, run_id):
                removed.append(model_id or run_id or uri)
        return removed

    def _pages(self, search: Any) -> list[Any]:
        items: list[Any] = []
        token = None
        for _ in range(100):
            page = self.registry.call("listing staging containers", search, token)
            items += list(page)
            token = getattr(page, "token", None)
            if not token:
                break
        return items

    def ensure_model(self, name: str, description: str | None, tags: dict[str, str]) -> None:
        client = self.registry.client
        if self.registry.registered_model(name) is not None:
            return
        try:
            self.registry.call(f"creating model {name}", client.create_registered_model, name,
                               tags=tags or None, description=description or None)
        except AmlPromoteError:
            if self.registry.registered_model(name) is None:
                raise

    def register(self, staged: StagedUpload, name: str, description: str,
                 tags: dict[str, str], force: bool = False) -> VersionInfo:
        client = self.registry.client
        if staged.model_id:
            self.registry.call("finalizing the logged model", client.finalize_logged_model,
                               staged.model_id, "READY")
        elif staged.run_id:
            self.registry.call("closing the staging run", client.set_terminated, staged.run_id)
        # Local stores resolve the `models:/` source through MLflow's global URI; `call`
        # points it at this registry.
        mv = self.registry.call(
            f"registering {name}", client.create_model_version, name, staged.source,
            run_id=staged.run_id, tags=tags, description=description or None,
            model_id=staged.model_id)
        return VersionInfo.from_mlflow(mv)

    def registered_from(self, staged: StagedUpload, name: str) -> VersionInfo | None:
        """The version registered from `staged`, if any: a register call whose response was
        lost may still have created it."""
        if self.registry.registered_model(name) is None:
            return None
        mine = [v for v in self.registry.list_versions(name) if v.source == staged.source]
        return min(mine, key=lambda v: int(v.version)) if mine else None

    def delete_version(self, name: str, version: str) -> None:
        self.registry.call(f"deleting {name}/{version}", self.registry.client.delete_model_version,
                           name, self.registry.version_arg(version))

    def set_alias(self, name: str, alias: str, version: str) -> None:
        client = self.registry.client
        self.registry.call(f"setting alias {alias}", client.set_registered_model_alias,
                           name, alias, self.registry.version_arg(version))

    def version_aliases(self, name: str, version: str) -> list[str]:
        return sorted(self.registry.get_version(name, version).aliases)


def _create_sqlite_schema(db: Path) -> None:
    """Make a new sqlite registry's schema in a temporary file and rename it into place.

    MLflow's migrations take seconds and are not one transaction: interrupted midway, they
    would leave a half-migrated database that the next run must refuse as an old schema. A
    rename is atomic, so the registry either does not exist yet or is complete.
    """
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    # Creation happens only under the folder lock this caller holds: any earlier temporary
    # file is a killed run's.
    for stale in db.parent.glob(f".{db.name}.creating-*"):
        stale.unlink(missing_ok=True)
    temporary = db.with_name(f".{db.name}.creating-{os.getpid()}")
    try:
        store = SqlAlchemyStore(f"sqlite:///{temporary}")
        store.engine.dispose()
        os.replace(temporary, db)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock on a folder (POSIX flock; no lock elsewhere)."""
    if sys.platform == "win32":
        yield
        return
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _require_writable(folder: Path, display: str) -> None:
    import os

    if not os.access(folder, os.W_OK | os.X_OK):
        raise OperationFailed(f"no permission to write {folder} (target {display})",
                              hint="fix the folder's permissions or choose another target")
