"""Provenance tags written on a promoted version, all under the `amlpromote.` namespace.

They record where the version came from (credential-free URI, name, version, run, digest), when
and by which tool version, and the chain of earlier hops when the source was itself promoted.
The `source.key` tag identifies a source version across runs; together with the digest it is
what makes a re-run find its earlier result instead of copying again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone

PREFIX = "amlpromote."
KEY = PREFIX + "source.key"
DIGEST = PREFIX + "digest"
SOURCE_URI = PREFIX + "source.uri"
SOURCE_NAME = PREFIX + "source.name"
SOURCE_VERSION = PREFIX + "source.version"
SOURCE_RUN_ID = PREFIX + "source.run_id"
SOURCE_MODEL_ID = PREFIX + "source.model_id"
PROMOTED_AT = PREFIX + "promoted_at"
TOOL_VERSION = PREFIX + "tool_version"
FILES = PREFIX + "files"
BYTES = PREFIX + "bytes"
CHAIN = PREFIX + "chain"

# Registries cap tag values (Azure ML and Databricks near 5000 characters); the chain keeps its
# newest hops within this budget.
CHAIN_BUDGET = 4000


def source_key(registry_identity: str, name: str, version: str) -> str:
    """A stable identifier of one source version, independent of credentials and spelling."""
    text = f"{registry_identity}\n{name}\n{version}"
    return hashlib.sha256(text.encode()).hexdigest()[:40]


@dataclass(frozen=True)
class Hop:
    uri: str
    name: str
    version: str
    digest: str | None
    at: str | None

    def as_dict(self) -> dict[str, str | None]:
        return {"uri": self.uri, "name": self.name, "version": self.version,
                "digest": self.digest, "at": self.at}


def earlier_hops(source_tags: dict[str, str]) -> list[Hop]:
    """The chain that led to the source version, oldest first (empty if it was never promoted)."""
    if SOURCE_URI not in source_tags:
        return []
    hops: list[Hop] = []
    try:
        for item in json.loads(source_tags.get(CHAIN, "[]")):
            hops.append(Hop(str(item.get("uri")), str(item.get("name")),
                            str(item.get("version")), item.get("digest"), item.get("at")))
    except (ValueError, AttributeError, TypeError):
        hops = []
    hops.append(Hop(source_tags[SOURCE_URI], source_tags.get(SOURCE_NAME, ""),
                    source_tags.get(SOURCE_VERSION, ""), source_tags.get(DIGEST),
                    source_tags.get(PROMOTED_AT)))
    return hops


def chain_value(hops: list[Hop]) -> str:
    kept = list(hops)
    while kept:
        value = json.dumps([h.as_dict() for h in kept], separators=(",", ":"))
        if len(value) <= CHAIN_BUDGET:
            return value
        kept = kept[1:]
    return "[]"


def provenance_tags(*, source_uri: str, source_identity: str, name: str, version: str,
                    run_id: str | None, model_id: str | None, digest: str, files: int,
                    total_bytes: int, source_tags: dict[str, str], tool_version: str,
                    now: datetime | None = None) -> dict[str, str]:
    """The full tag set for a new target version (`source_uri` must be credential-free)."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    tags = {
        KEY: source_key(source_identity, name, version),
        DIGEST: digest,
        SOURCE_URI: source_uri,
        SOURCE_NAME: name,
        SOURCE_VERSION: version,
        PROMOTED_AT: stamp,
        TOOL_VERSION: tool_version,
        FILES: str(files),
        BYTES: str(total_bytes),
    }
    if run_id:
        tags[SOURCE_RUN_ID] = run_id
    if model_id:
        tags[SOURCE_MODEL_ID] = model_id
    hops = earlier_hops(source_tags)
    if hops:
        tags[CHAIN] = chain_value(hops)
    return tags


def carried_tags(source_tags: dict[str, str]) -> dict[str, str]:
    """The source version's own tags, without its provenance (that moves into the chain)."""
    return {k: v for k, v in source_tags.items() if not k.startswith(PREFIX)}
