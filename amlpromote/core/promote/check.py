"""`configure --check`: can we reach each side, and does it let us in?

Each side is checked the way a promotion would use it: the target's Azure ML coordinates are
resolved to the workspace's MLflow URI with the chosen credential, then one page of registered
models is listed. Nothing is created: a local store that does not exist yet is reported as such.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from amlpromote.core.errors import AmlPromoteError
from amlpromote.core.settings import TargetChoice
from amlpromote.core.uris import RegistryUri, parse_registry_uri

PAGE = 10


@dataclass
class SideCheck:
    """The outcome for one side (source or target)."""

    side: str
    registry: str
    status: str = "ok"  # ok | missing | failed
    models: list[str] = field(default_factory=list)
    note: str | None = None
    error: str | None = None
    hint: str | None = None
    exit_code: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"side": self.side, "registry": self.registry, "status": self.status,
                "models": self.models, "note": self.note, "error": self.error,
                "hint": self.hint, "exit_code": self.exit_code,
                "seconds": round(self.seconds, 3)}


def check_source(uri_text: str | None) -> SideCheck:
    if not uri_text:
        return SideCheck("source", "(not set)", status="failed", error="no source registry set",
                         hint="amlpromote configure --source URI", exit_code=2)
    try:
        uri = parse_registry_uri(uri_text, "source")
    except AmlPromoteError as exc:
        return _failed(SideCheck("source", uri_text), exc)
    return _list_models(SideCheck("source", uri.display), uri, must_exist=True)


def check_target(choice: TargetChoice) -> SideCheck:
    result = SideCheck("target", choice.display)
    started = time.monotonic()
    try:
        uri = choice.registry_uri()
    except AmlPromoteError as exc:
        result.seconds = time.monotonic() - started
        return _failed(result, exc)
    if choice.kind != "uri":
        result.note = f"MLflow URI {uri.display}; credential {choice.credential}"
    return _list_models(result, uri, must_exist=False, started=started)


def _list_models(result: SideCheck, uri: RegistryUri, must_exist: bool,
                 started: float | None = None) -> SideCheck:
    from amlpromote.core.registries.registry import MlflowRegistry

    started = time.monotonic() if started is None else started
    notes: list[str] = []
    try:
        # Read-only on both sides: a check changes nothing, and refuses (before MLflow opens
        # it) a target copy-model would refuse: another application's data, an old schema.
        registry = MlflowRegistry(uri, role=result.side, read_only=True, log=notes.append)
        if must_exist:
            registry.require_existing()  # NotFound with the hint; refuses what is not MLflow
        if not registry.has_registry():
            result.status = "missing"
            result.note = "does not exist yet; the first copy-model creates it"
            return result
        page = registry.call("listing registered models", registry.client.search_registered_models,
                             max_results=PAGE)
        result.models = [m.name for m in page]
        if notes:
            result.note = "; ".join([result.note, *notes] if result.note else notes)
    except AmlPromoteError as exc:
        _failed(result, exc)
    finally:
        result.seconds = time.monotonic() - started
    return result


def _failed(result: SideCheck, exc: AmlPromoteError) -> SideCheck:
    result.status = "failed"
    result.error = exc.message
    result.hint = exc.hint
    result.exit_code = exc.exit_code
    return result
