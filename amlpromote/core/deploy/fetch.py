"""The registered version a deploy serves: found in whatever registry holds it, its small files
read for the preflight, and (for local endpoints) all its files in a cache keyed by digest.

The cache lives in `<data dir>/cache/models/<digest>/`. A version promoted by amlpromote carries
its digest as a tag, so a redeploy of it finds the folder without reading the registry's files;
any other version is downloaded once into a temporary folder beside the cache, its digest
computed while the bytes stream, and the folder renamed into place (a Ctrl-C leaves no
half-filled cache entry). `index.json` remembers which digest a (registry, name, version) had.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amlpromote.core import config as cfg
from amlpromote.core.deploy.local.state import write_atomic
from amlpromote.core.errors import AmlPromoteError, OperationFailed
from amlpromote.core.promote.inventory import RegistryReader, open_reader
from amlpromote.core.refs import ModelRef
from amlpromote.core.registries import lineage
from amlpromote.core.registries.registry import VersionInfo
from amlpromote.core.storage.artifacts import ArtifactFile, ArtifactSource, LocalSink
from amlpromote.core.storage.transfer import TransferProgress, copy_files
from amlpromote.core.uris import RegistryUri

# What a preflight reads whole; anything bigger is not a metadata file.
SMALL_FILE_LIMIT = 8 * 1024 * 1024


@dataclass
class LocatedVersion:
    """One version in its registry, with a reader for its files."""

    uri: RegistryUri
    reader: RegistryReader
    version: VersionInfo

    @property
    def name(self) -> str:
        return self.version.name

    @property
    def number(self) -> str:
        return self.version.version

    @property
    def digest(self) -> str | None:
        return (self.version.tags or {}).get(lineage.DIGEST) or None

    def cache_key(self) -> str:
        return f"{self.uri.identity}#{self.name}/{self.number}"


def locate(uri: RegistryUri, side: str, ref: ModelRef) -> LocatedVersion:
    """Resolve `ref` in the registry at `uri` (NotFound when it is not there)."""
    reader = open_reader(uri, side)
    return LocatedVersion(uri, reader, reader.resolve(ref))


class RegistryModelFiles:
    """A version's files as the preflight reads them (`preflight.ModelFiles`)."""

    def __init__(self, located: LocatedVersion) -> None:
        self.located = located
        self._source: ArtifactSource | None = None
        self._files: dict[str, ArtifactFile] | None = None

    @property
    def source(self) -> ArtifactSource:
        if self._source is None:
            self._source = self.located.reader.source(self.located.version)
        return self._source

    def listing(self) -> dict[str, ArtifactFile]:
        if self._files is None:
            self._files = {f.path: f for f in self.source.list_files()}
        return self._files

    def names(self) -> list[str]:
        return sorted(self.listing())

    def read(self, path: str) -> bytes:
        listed = self.listing().get(path)
        if listed is not None and listed.size is not None and listed.size > SMALL_FILE_LIMIT:
            raise OperationFailed(f"{path} of {self.located.name}/{self.located.number} is "
                                  f"{listed.size} bytes; a model's metadata file is smaller",
                                  hint="check the model's files with amlpromote models show "
                                       "NAME/VERSION --files")
        parts: list[bytes] = []
        with self.source.open(path) as chunks:
            for chunk in chunks:
                parts.append(bytes(chunk))
        return b"".join(parts)


def cache_root() -> Path:
    return cfg.data_dir() / "cache" / "models"


def _index_path() -> Path:
    return cache_root() / "index.json"


def _read_index() -> dict[str, str]:
    try:
        loaded: Any = json.loads(_index_path().read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}


def _remember(key: str, digest: str) -> None:
    index = _read_index()
    index[key] = digest
    write_atomic(_index_path(), json.dumps(index, indent=1, sort_keys=True).encode())


def _folder_of(digest: str) -> Path:
    return cache_root() / digest.replace("sha256:", "sha256-")


@dataclass
class FetchedVersion:
    path: Path
    digest: str
    downloaded: bool  # False: it was in the cache


def fetch(located: LocatedVersion, files: RegistryModelFiles,
          progress: TransferProgress | None = None) -> FetchedVersion:
    """All the version's files in the local cache; downloads only what is not there."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    known = located.digest or _read_index().get(located.cache_key())
    if known and (_folder_of(known) / "MLmodel").is_file():
        return FetchedVersion(_folder_of(known), known, downloaded=False)
    listing = [f for f in files.listing().values()
               # MLflow's load metadata is not part of the model (copy-model skips it too).
               if f.path != "registered_model_meta"]
    scratch = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
    try:
        manifest = copy_files(files.source, LocalSink(scratch), listing, progress)
        digest = manifest.digest
        final = _folder_of(digest)
        if (final / "MLmodel").is_file():
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            if final.exists():
                shutil.rmtree(final, ignore_errors=True)
            os.replace(scratch, final)
    except (AmlPromoteError, KeyboardInterrupt):
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    except OSError as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        raise OperationFailed(f"cannot write the model cache in {root}: {exc.strerror or exc}",
                              hint="check the folder's permissions and free space, or set "
                                   "AMLPROMOTE_DATA_DIR") from None
    if located.digest and located.digest != digest:
        raise OperationFailed(
            f"{located.name}/{located.number}: its files have digest {digest}, but its "
            f"{lineage.DIGEST} tag says {located.digest}",
            hint="the version's files changed after it was promoted; promote it again")
    _remember(located.cache_key(), digest)
    return FetchedVersion(final, digest, downloaded=True)
