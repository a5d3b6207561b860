"""What a promotion target is: the interface promote/ drives, and the data types it passes.

Two kinds implement it: `MlflowTarget` (core/registries/mlflow_target.py: any registry written
through MLflow's client) and `AzureMlRegistryTarget` (core/registries/azureml_registry.py: an Azure
ML registry, which has no MLflow registry to write through). `make_target` (mlflow_target.py)
picks one for a URI. This module imports neither, so both can import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from amlpromote.core.registries.lineage import TagLimits
from amlpromote.core.registries.registry import VersionInfo
from amlpromote.core.storage.artifacts import ArtifactSink, ArtifactSource


@dataclass
class StagedUpload:
    """Files being written for a version that is not registered yet."""

    sink: ArtifactSink
    artifact_uri: str
    source: str  # what create_model_version gets
    model_id: str | None = None
    run_id: str | None = None


# Azure ML's service limits: "Number of artifacts per model version: 1,500 artifacts (files)".
AZURE_ML_MAX_FILES = 1500


class PromotionTarget(Protocol):
    """What promote.py needs of a target: MlflowTarget, or an Azure ML registry
    (core/registries/azureml_registry.py), which has no MLflow registry to write through."""

    supports_aliases: bool

    @property
    def display(self) -> str: ...

    @property
    def tag_limits(self) -> TagLimits: ...

    def check_files(self, count: int) -> None: ...

    def inspect(self) -> bool: ...

    def prepare(self) -> None: ...

    def find_promoted(self, name: str, tags: dict[str, str]) -> list[VersionInfo]: ...

    def begin(self, label: str, tags: dict[str, str], name: str | None = None) \
        -> StagedUpload: ...

    def staged_source(self, staged: StagedUpload) -> ArtifactSource: ...

    def version_source(self, version: VersionInfo) -> ArtifactSource: ...

    def abort(self, staged: StagedUpload) -> str | None: ...

    def renew(self, staged: StagedUpload, tags: dict[str, str]) -> None: ...

    def sweep(self, staged: StagedUpload | None, key: str) -> list[str]: ...

    def ensure_model(self, name: str, description: str | None, tags: dict[str, str]) -> None: ...

    def register(self, staged: StagedUpload, name: str, description: str,
                 tags: dict[str, str], force: bool = False) -> VersionInfo: ...

    def registered_from(self, staged: StagedUpload, name: str) -> VersionInfo | None: ...

    def delete_version(self, name: str, version: str) -> None: ...

    def set_alias(self, name: str, alias: str, version: str) -> None: ...

    def version_aliases(self, name: str, version: str) -> list[str]: ...
