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
from amlpromote.core.errors import AmlPromoteError, BadInput, OperationFailed
from amlpromote.core.refs import ModelRef
from amlpromote.core.registries import lineage
from amlpromote.core.registries.databricks import check_source_ref
from amlpromote.core.registries.mlflow_target import make_target
from amlpromote.core.registries.registry import MlflowRegistry, VersionInfo
from amlpromote.core.registries.target import PromotionTarget, StagedUpload
from amlpromote.core.storage.artifacts import ArtifactFile
from amlpromote.core.storage.transfer import (
    ArtifactManifest,
    TransferProgress,
    copy_files,
    hash_files,
)
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
    # --upgrade-target-schema: let MLflow upgrade a target written by an older MLflow.
    upgrade_target_schema: bool = False


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
    # What a dry run would do (README "JSON output"); None unless the status is `planned`.
    plan: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "source": self.source, "target": self.target,
                "files": self.files, "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "verified": self.verified, "plan": self.plan}


def check_promotion_inputs(aliases: list[str], target_name: str | None, target_scheme: str,
                           target_is_azure_registry: bool = False,
                           copy_aliases: bool = False) -> None:
    """Refuse, before any registry is read or written, what the target would refuse later
    (an invalid alias would otherwise fail after the version is registered)."""
    from amlpromote.core.names import ALIAS_RULE, alias_problem, target_name_problem

    if (aliases or copy_aliases) and target_is_azure_registry:
        raise BadInput("Azure ML registries have no aliases: --alias and --copy-aliases "
                       "cannot be used with an Azure ML registry target",
                       hint="drop --alias/--copy-aliases and refer to the version by its "
                            "number, or promote into an Azure ML workspace")
    for alias in aliases:
        problem = alias_problem(alias)
        if problem:
            raise BadInput(f"--alias: {problem}", hint=f"an alias takes {ALIAS_RULE}")
    if target_name is not None:
        problem = target_name_problem(target_name, target_scheme)
        if problem:
            raise BadInput(f"--target-name: {problem}",
                           hint="choose another name, or leave --target-name out to keep the "
                                "source's name")


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
    # A source is read-only; a dry run opens the target read-only too (core/registries/stores.py).
    source = MlflowRegistry(request.source, log=log)
    target = make_target(request.target, dry_run=request.dry_run,
                         upgrade_schema=request.upgrade_target_schema, log=log)
    check_promotion_inputs(request.aliases, request.target_name, request.target.scheme,
                           target_is_azure_registry=not target.supports_aliases,
                           copy_aliases=request.copy_aliases)
    if request.target.is_local:
        # A local target that must not be written is refused before the source is read.
        target.inspect()

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
                "aliases": aliases,
                "created_registry": bool(getattr(target, "created_registry", False))}

    def finish(status: str, manifest: ArtifactManifest | None, tv: str | None,
               aliases: list[str], verified: bool | None,
               digest: str | None = None) -> PromoteResult:
        digest = manifest.digest if manifest else digest
        return PromoteResult(status, source_doc(digest), target_doc(tv, aliases),
                             manifest.files if manifest else len(files),
                             manifest.bytes if manifest else listed_bytes,
                             time.monotonic() - started, verified, digest)

    def planned(existing: VersionInfo | None, digest: str | None) -> PromoteResult:
        # A dry run reads but never writes: no staging, no version, no alias (README).
        wanted = _wanted_aliases(request, version)
        result = finish("planned", manifest, existing.version if existing else None, wanted,
                        None, digest)
        result.plan = {"copy": existing is None,
                       "existing_version": existing.version if existing else None,
                       "set_aliases": wanted}
        return result

    if not request.dry_run:
        target.prepare()
    manifest: ArtifactManifest | None = None
    listing = lineage.listing_digest(files)
    candidates = [] if request.force else target.find_promoted(target_name, {lineage.KEY: key})
    # A re-run decides "unchanged" from the version's identity and its listing (paths, sizes,
    # what the store tells of each file) against what the earlier promotion recorded, without
    # reading a byte (README "Idempotent"); --verify reads every byte on both sides instead.
    same_listing = [] if request.verify or listing is None else \
        [c for c in candidates if c.tags.get(lineage.LISTING) == listing]
    if same_listing:
        existing = same_listing[0]
        recorded = existing.tags.get(lineage.DIGEST)
        log(f"{existing.name} version {existing.version} holds this source version with the "
            "same file listing; nothing to read")
        if request.dry_run:
            return planned(existing, recorded)
        # A killed run of this promotion may have left staged files; an unchanged re-run is
        # "the next run" too.
        _sweep(target, None, key, log)
        aliases = _aliases_on_existing(target, request, version, existing, log)
        return finish("unchanged", None, existing.version, aliases, None, recorded)
    if candidates:
        log(f"{len(candidates)} earlier promotion(s) of this source version found; "
            "reading the source to compare digests")
        manifest = hash_files(reader, files, progress, request.workers, log)
        same = [c for c in candidates if c.tags.get(lineage.DIGEST) == manifest.digest]
        if same:
            existing = same[0]
            if request.dry_run:
                return planned(existing, manifest.digest)
            verified = _verify(target, existing, manifest, progress, request, log) \
                if request.verify else None
            _sweep(target, None, key, log)
            aliases = _aliases_on_existing(target, request, version, existing, log)
            return finish("unchanged", manifest, existing.version, aliases, verified)
    if request.dry_run:
        return planned(None, None)

    staged = target.begin(f"{target_name}-v{version.version}", {lineage.KEY: key},
                          name=target_name)
    # From here on every exit removes what this run staged unless a version uses it (README
    # "Leftovers"), and an interrupt (Ctrl-C, SIGTERM) says what was and was not done.
    watch = _Staging(target, staged, target_name, log)
    try:
        watch.sweep(key)
        log(f"staging {len(files)} files in {target.display}")
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
            source_tags=version.tags, tool_version=__version__, limits=target.tag_limits,
            listing=listing),
            target.tag_limits)
        watch.registering = True
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
    except KeyboardInterrupt as exc:
        raise watch.interrupted_before_registered(exc) from None
    except AmlPromoteError as exc:
        left = watch.abort()
        if left:
            # The user should know what the failed run leaves behind (README "Leftovers").
            exc.hint = f"{exc.hint}; {left}" if exc.hint else left
        raise
    except BaseException:
        watch.abort()
        raise
    status = "copied"
    watch.registered(created)
    try:
        if created.extra.get("existing"):
            # A concurrent run registered this same promotion first (a registry target takes
            # it instead of adding a second version); what this run staged is not used.
            log(f"version {created.version} holds the same promotion, registered by another "
                "run")
            status = "unchanged"
            watch.superseded()
        else:
            log(f"registered {target_name} version {created.version}")
        winner = created
        if not request.force and status == "copied":
            watch.said = (f"{target_name} version {created.version} was registered in "
                          f"{target.display}, but whether another run registered the same "
                          "promotion first was not checked")
            twins = target.find_promoted(target_name, {lineage.KEY: key,
                                                       lineage.DIGEST: manifest.digest})
            if twins and int(twins[0].version) < int(created.version):
                # A concurrent run registered the same source first; keep one version.
                winner = twins[0]
                log(f"version {winner.version} holds the same promotion; removing "
                    f"{created.version}")
                watch.said = (f"{target_name} version {created.version} duplicates version "
                              f"{winner.version} (registered by another run) and removing it "
                              "was interrupted: it may still be listed")
                try:
                    target.delete_version(target_name, created.version)
                except AmlPromoteError as exc:
                    exc.message = (f"{target_name} version {created.version} duplicates "
                                   f"version {winner.version} (registered by another run) and "
                                   f"removing it failed: {exc.message}")
                    exc.args = (exc.message,)
                    raise
                status = "unchanged"
                watch.superseded(winner)
            else:
                watch.registered(created)
        watch.aliases = _wanted_aliases(request, version)
        aliases = _apply_aliases(target, request, version, winner, log,
                                 fresh=winner is created and status == "copied")
    except KeyboardInterrupt as exc:
        raise watch.interrupted_after_registered(exc) from None
    finally:
        watch.stop()
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
    staged_files = reader.list_files()
    listed = {f.path: f.size for f in staged_files}
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
        check = hash_files(reader, staged_files, progress, request.workers, log)
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


# -- staging: cleanup, leftovers and interrupts (README "Leftovers", "Interrupts") -------------

# What an interrupted run may spend in all on asking the registry whether it registered and
# removing its staging, before it reports and exits: with the transfer's own stop
# (transfer.STOP_GRACE) the process ends within 2 s of the signal, whatever the registry does.
INTERRUPT_CLEANUP_SECONDS = 1.5


class _Staging:
    """One run's staging container from `begin` to the end of the promotion: renews its
    heartbeat, removes earlier runs' leftovers, removes it when no version uses it, and knows
    what was done so far, so that an interrupt's message is true."""

    def __init__(self, target: PromotionTarget, staged: StagedUpload, name: str,
                 log: Log) -> None:
        from amlpromote.core.registries.staging import Heartbeat

        self.target = target
        self.staged = staged
        self.name = name
        self.log = log
        self.registering = False  # target.register was called: a version may exist
        self.said = ""  # what was done, once a version is registered
        self.aliases: list[str] = []  # the aliases being set, once that started
        self._heartbeat = Heartbeat(lambda tags: target.renew(staged, tags)).start()

    def stop(self) -> None:
        self._heartbeat.stop()

    def sweep(self, key: str) -> None:
        _sweep(self.target, self.staged, key, self.log)

    def abort(self) -> str | None:
        """Remove the staging; what stays behind, as a sentence, or None."""
        self.stop()
        return self.target.abort(self.staged)

    def registered(self, version: VersionInfo) -> None:
        self.said = (f"{self.name} version {version.version} was registered in "
                     f"{self.target.display}")

    def superseded(self, winner: VersionInfo | None = None) -> None:
        """Another run's version holds this promotion: this run's staging is not used."""
        if winner is not None:
            self.said = (f"version {winner.version} of {self.name} holds this promotion "
                         "(registered by another run); this run's duplicate was removed")
        self.abort()

    def interrupted_before_registered(self, exc: KeyboardInterrupt) -> AmlPromoteError:
        from amlpromote.core.errors import Interrupted, interrupt_signal

        signum = interrupt_signal(exc)
        self.stop()
        deadline = time.monotonic() + INTERRUPT_CLEANUP_SECONDS
        if self.registering:
            # The registry may have acted on the register call before the signal landed.
            answered, found = _bounded(INTERRUPT_CLEANUP_SECONDS / 2,
                                       lambda: self.target.registered_from(self.staged,
                                                                           self.name))
            if not answered:
                return Interrupted(
                    f"whether {self.name} was registered in {self.target.display} is not known "
                    "(the registry did not answer in time)",
                    hint="run the same command again: it finds a version that was registered "
                         "and completes the promotion", signum=signum)
            if found is not None:
                return Interrupted(
                    f"{self.name} version {found.version} was registered in "
                    f"{self.target.display}; the check for a duplicate registered by another "
                    "run, and the aliases, were not done",
                    hint="run the same command again to finish", signum=signum)
        finished, left = _bounded(max(deadline - time.monotonic(), 0.0),
                                  lambda: self.target.abort(self.staged))
        files = left or "the staged files were removed" if finished else \
            "removing the staged files did not finish (the next run of this promotion does it)"
        return Interrupted(f"nothing was registered in {self.target.display}; {files}",
                           hint="run the same command again to promote", signum=signum)

    def interrupted_after_registered(self, exc: KeyboardInterrupt) -> AmlPromoteError:
        from amlpromote.core.errors import Interrupted, interrupt_signal

        self.stop()
        said = self.said
        if self.aliases:
            said += f"; the aliases ({', '.join(self.aliases)}) may not all be set"
        return Interrupted(said, hint="run the same command again: it finds this promotion "
                                      "and does what is left", signum=interrupt_signal(exc))


def _bounded(seconds: float, work: Callable[[], Any]) -> tuple[bool, Any]:
    """Run `work` in a daemon thread for at most `seconds`: (finished without error, result).
    An interrupted run must exit in bounded time even when the registry hangs; a daemon thread
    still running is abandoned (the process ends without waiting for it)."""
    import threading

    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:  # reported as "not finished"
            box["error"] = exc

    thread = threading.Thread(target=run, name="amlpromote-cleanup", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive() or "error" in box:
        return False, None
    return True, box.get("result")


def _sweep(target: PromotionTarget, staged: StagedUpload | None, key: str, log: Log) -> None:
    """Remove what earlier runs of this promotion staged and left (their owner is gone; README
    "Leftovers"); a failure here never fails the run."""
    try:
        removed = target.sweep(staged, key)
    except AmlPromoteError as exc:
        log(f"could not look for leftovers of earlier runs: {exc}")
        return
    if removed:
        log(f"removed {len(removed)} staging container(s) left by earlier runs of this "
            "promotion")


def _aliases_on_existing(target: PromotionTarget, request: PromoteRequest, version: VersionInfo,
                         existing: VersionInfo, log: Log) -> list[str]:
    """`_apply_aliases` on a version an earlier run registered: an interrupt here says so."""
    try:
        return _apply_aliases(target, request, version, existing, log)
    except KeyboardInterrupt as exc:
        from amlpromote.core.errors import Interrupted, interrupt_signal

        wanted = ", ".join(_wanted_aliases(request, version))
        raise Interrupted(
            f"nothing new was registered ({existing.name} version {existing.version} already "
            f"holds this promotion); the aliases ({wanted}) may not all be set",
            hint="run the same command again to set them", signum=interrupt_signal(exc)) \
            from None
