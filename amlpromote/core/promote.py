"""copy-model: resolve -> plan -> transfer -> register -> verify.

Guarantees (README "Promotion semantics"): the target's files are the source's bytes; a re-run
with the same source version and digest does nothing; a version is registered only after all
files are written and checked; two concurrent runs end with one version (the lowest-numbered
version of the same source and digest wins and the other run deletes its own; an Azure ML
registry target takes the winner's version instead of registering its own).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from amlpromote import __version__
from amlpromote.core import lineage
from amlpromote.core.artifacts import ArtifactFile
from amlpromote.core.databricks import check_source_ref
from amlpromote.core.errors import AmlPromoteError, BadInput, OperationFailed
from amlpromote.core.refs import ModelRef
from amlpromote.core.registry import MlflowRegistry, VersionInfo
from amlpromote.core.target import PromotionTarget, StagedUpload, make_target
from amlpromote.core.transfer import ArtifactManifest, TransferProgress, copy_files, hash_files
from amlpromote.core.uris import RegistryUri

Log = Callable[[str], None]
# MLflow writes this file INTO a local store's version folder whenever the version is loaded
# through `models:/NAME/VERSION`. It is MLflow's metadata about the registry it was read from,
# not part of the model (README: "not the extra metadata MLflow adds on a models:/ download");
# counting it would make a re-run after a load copy again, and --verify fail after a load.
MLFLOW_LOAD_METADATA = "registered_model_meta"


@dataclass
class PromoteRequest:
    ref: ModelRef
    source: RegistryUri
    target: RegistryUri
    target_name: str | None = None
    aliases: list[str] = field(default_factory=list)
    copy_aliases: bool = False
    dry_run: bool = False
    verify: bool = False
    force: bool = False
    workers: int | None = None


@dataclass
class PromoteResult:
    status: str  # copied | unchanged | planned
    source: dict[str, Any]
    target: dict[str, Any]
    files: int
    bytes: int
    seconds: float
    verified: bool | None = None
    digest: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "source": self.source, "target": self.target,
                "files": self.files, "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "verified": self.verified}


def default_target_name(source_name: str, source_scheme: str = "",
                        target_scheme: str = "") -> str:
    """The target name without --target-name (README "Model names"; see core/names.py)."""
    from amlpromote.core.names import default_target_name as mapped

    return mapped(source_name, source_scheme, target_scheme)


def _quiet(_: str) -> None:
    pass


def promote_version(request: PromoteRequest, progress: TransferProgress | None = None,
                    log: Log = _quiet) -> PromoteResult:
    """Copy one model version from the source registry to the target registry."""
    started = time.monotonic()
    source = MlflowRegistry(request.source)
    target = make_target(request.target)
    if (request.aliases or request.copy_aliases) and not target.supports_aliases:
        # Refused before anything is read or written: the promotion could not be completed.
        raise BadInput("Azure ML registries have no aliases: --alias and --copy-aliases "
                       "cannot be used with an Azure ML registry target",
                       hint="drop --alias/--copy-aliases and refer to the version by its "
                            "number, or promote into an Azure ML workspace")

    source.require_existing()
    check_source_ref(request.source, request.ref)
    version = source.resolve(request.ref)
    if request.copy_aliases and not (request.ref.version or request.ref.alias):
        # NAME, NAME/latest and NAME/Production resolve through a version search, and the
        # sqlalchemy and REST stores list versions without their aliases.
        version.aliases = source.get_version(version.name, version.version).aliases
    log(f"resolved {request.ref} to {version.name} version {version.version} "
        f"in {source.display}")
    artifact_uri = source.artifact_uri(version)
    reader = source.artifact_source(artifact_uri)
    files = _model_files(reader.list_files())
    if not any(f.path == "MLmodel" for f in files):
        raise BadInput(
            f"{version.name} version {version.version} has no MLmodel file at the root of its "
            f"artifacts ({len(files)} files) — it is not an MLflow model",
            hint="register the folder that holds MLmodel (the model itself), then copy again")
    target.check_files(len(files))
    listed_bytes = sum(f.size or 0 for f in files)
    target_name = request.target_name or default_target_name(
        version.name, request.source.scheme, request.target.scheme)
    key = lineage.source_key(source.identity, version.name, version.version)

    def source_doc(digest: str | None) -> dict[str, Any]:
        return {"uri": request.source.display, "name": version.name,
                "version": version.version, "digest": digest}

    def target_doc(v: str | None, aliases: list[str]) -> dict[str, Any]:
        return {"uri": request.target.display, "name": target_name, "version": v,
                "aliases": aliases}

    def finish(status: str, manifest: ArtifactManifest | None, tv: str | None,
               aliases: list[str], verified: bool | None) -> PromoteResult:
        digest = manifest.digest if manifest else None
        return PromoteResult(status, source_doc(digest), target_doc(tv, aliases),
                             manifest.files if manifest else len(files),
                             manifest.bytes if manifest else listed_bytes,
                             time.monotonic() - started, verified, digest)

    if not request.dry_run:
        target.prepare()
    manifest: ArtifactManifest | None = None
    candidates = [] if request.force else target.find_promoted(target_name, {lineage.KEY: key})
    if candidates:
        log(f"{len(candidates)} earlier promotion(s) of this source version found; "
            "reading the source to compare digests")
        manifest = hash_files(reader, files, progress, request.workers, log)
        same = [c for c in candidates if c.tags.get(lineage.DIGEST) == manifest.digest]
        if same:
            existing = same[0]
            verified = _verify(target, existing, manifest, progress, request, log) \
                if request.verify and not request.dry_run else None
            aliases = _apply_aliases(target, request, version, existing, log)
            return finish("unchanged", manifest, existing.version, aliases, verified)
    if request.dry_run:
        return finish("planned", manifest, None, _wanted_aliases(request, version), None)

    staged = target.begin(f"{target_name}-v{version.version}", {lineage.KEY: key},
                          name=target_name)
    log(f"staging {len(files)} files in {target.display}")
    try:
        manifest = copy_files(reader, staged.sink, files, progress, request.workers, log)
        _check_staged(target, staged, manifest, request, progress, log)
        rm = source.registered_model(version.name)
        target.ensure_model(target_name, getattr(rm, "description", None),
                            lineage.version_tags(dict(getattr(rm, "tags", None) or {}), {},
                                                 target.tag_limits))
        tags = lineage.version_tags(version.tags, lineage.provenance_tags(
            source_uri=request.source.display, source_identity=source.identity,
            name=version.name, version=version.version, run_id=version.run_id,
            model_id=version.model_id or _logged_model_id(version.source),
            digest=manifest.digest, files=manifest.files, total_bytes=manifest.bytes,
            source_tags=version.tags, tool_version=__version__, limits=target.tag_limits),
            target.tag_limits)
        try:
            created = target.register(staged, target_name, version.description, tags,
                                      force=request.force)
        except AmlPromoteError:
            # The registry may have registered the version and lost only its answer; then the
            # promotion succeeded and the staged files are in use.
            found = target.registered_from(staged, target_name)
            if found is None:
                raise
            created = found
    except BaseException:
        target.abort(staged)
        raise
    status = "copied"
    if created.extra.get("existing"):
        # A concurrent run registered this same promotion first (a registry target takes it
        # instead of adding a second version).
        log(f"version {created.version} holds the same promotion, registered by another run")
        status = "unchanged"
    else:
        log(f"registered {target_name} version {created.version}")
    winner = created
    if not request.force and status == "copied":
        twins = target.find_promoted(target_name, {lineage.KEY: key,
                                                   lineage.DIGEST: manifest.digest})
        if twins and int(twins[0].version) < int(created.version):
            # A concurrent run registered the same source first; keep one version.
            winner = twins[0]
            log(f"version {winner.version} holds the same promotion; removing "
                f"{created.version}")
            target.delete_version(target_name, created.version)
            status = "unchanged"
    aliases = _apply_aliases(target, request, version, winner, log,
                             fresh=winner is created and status == "copied")
    return finish(status, manifest, winner.version, aliases, True if request.verify else None)


def _model_files(files: list[ArtifactFile]) -> list[ArtifactFile]:
    return [f for f in files if f.path != MLFLOW_LOAD_METADATA]


def _logged_model_id(source: str) -> str | None:
    """The LoggedModel behind a version whose source is `models:/m-<id>`: the sqlalchemy and
    REST stores leave the version's own `model_id` empty for those."""
    if source.startswith("models:/m-"):
        return source[len("models:/"):].split("/", 1)[0]
    return None


def _wanted_aliases(request: PromoteRequest, version: VersionInfo) -> list[str]:
    wanted = list(request.aliases)
    if request.copy_aliases:
        wanted += version.aliases
    return sorted(set(wanted))


def _apply_aliases(target: PromotionTarget, request: PromoteRequest, version: VersionInfo,
                   dest: VersionInfo, log: Log, fresh: bool = False) -> list[str]:
    """Point the wanted aliases at `dest`; returns all of its aliases. A version this run just
    created has no aliases but those set here, which spares reading it back."""
    wanted = _wanted_aliases(request, version)
    for alias in wanted:
        log(f"alias {alias} -> {dest.name} version {dest.version}")
        target.set_alias(dest.name, alias, dest.version)
    if fresh and not wanted:
        return []
    return target.version_aliases(dest.name, dest.version)


def _check_staged(target: PromotionTarget, staged: StagedUpload, manifest: ArtifactManifest,
                  request: PromoteRequest, progress: TransferProgress | None, log: Log) -> None:
    """Before registering: the staged listing must match what was written (paths and sizes);
    with --verify, every staged byte is read back and hashed."""
    reader = target.staged_source(staged)
    listed = {f.path: f.size for f in reader.list_files()}
    expected = {e.path: e.size for e in manifest.entries}
    if listed != expected:
        missing = sorted(set(expected) - set(listed))
        odd = sorted(p for p in expected if p in listed and listed[p] != expected[p])
        raise OperationFailed(
            f"the target does not hold what was written (missing: {missing[:3]}, "
            f"size differs: {odd[:3]})",
            hint="the target storage lost data; nothing was registered — run again")
    if request.verify:
        log("verifying: reading the staged files back")
        check = hash_files(reader, [f for f in reader.list_files()], progress, request.workers,
                           log)
        if check.digest != manifest.digest:
            raise OperationFailed(
                f"verification failed: target digest {check.digest} != source {manifest.digest}",
                hint="the target storage altered the files; nothing was registered")


def _verify(target: PromotionTarget, existing: VersionInfo, manifest: ArtifactManifest,
            progress: TransferProgress | None, request: PromoteRequest, log: Log) -> bool:
    log(f"verifying {existing.name} version {existing.version} in the target")
    reader = target.version_source(existing)
    check = hash_files(reader, _model_files(reader.list_files()), progress, request.workers, log)
    if check.digest != manifest.digest:
        raise OperationFailed(
            f"verification failed: {existing.name} version {existing.version} has digest "
            f"{check.digest}, the source has {manifest.digest}",
            hint="the target's files were changed; copy again with --force")
    return True
