"""Provenance tags written on a promoted version, all under the `amlpromote.` namespace.

They record where the version came from (credential-free URI, name, version, run, digest), when
and by which tool version, and the chain of earlier hops when the source was itself promoted.
The `source.key` tag identifies a source version across runs; together with the digest it is
what makes a re-run find its earlier result instead of copying again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from amlpromote.core.storage.artifacts import ArtifactFile

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
# The source version's file listing when it was promoted (see `listing_digest`).
LISTING = PREFIX + "listing"
# One run's own mark on the version it registers, where the registry gives no other way to
# recognise it (an Azure ML registry may move the files, so `modelUri` is not the staged one).
RUN = PREFIX + "run"
# Set only when a registry's tag limits made us leave something out (see `TagLimits`).
CHAIN_DROPPED = PREFIX + "chain.dropped"  # how many of the oldest hops the chain leaves out
TAGS_DROPPED = PREFIX + "tags.dropped"  # the source's own tags that were not carried
TAGS_CUT = PREFIX + "tags.cut"  # provenance tags whose values were shortened

# MLflow registries cap tag values (Databricks near 5000 characters); the chain keeps its newest
# hops within this budget, or within a stricter registry's value limit.
CHAIN_BUDGET = 4000


@dataclass(frozen=True)
class TagLimits:
    """How many tags a registry takes on one version and how long keys and values may be."""

    max_tags: int | None = None
    max_key: int | None = None
    max_value: int | None = None


NO_LIMITS = TagLimits()
# Azure ML's service limits (learn.microsoft.com/azure/machine-learning/resource-limits-capacity,
# "Service limits in Azure Machine Learning"): runs take 50 tags with keys of up to 100 and
# values of up to 1,000 characters (experiments: 50 / 250 / 1,000). Model versions have no
# published figure of their own; they get the strictest of these. (Checked against the page on
# 2026-12-02; the Azure ML test emulator enforces the page's figures on its own, so a change
# here that the service would refuse fails the tests.)
AZURE_ML_TAG_LIMITS = TagLimits(max_tags=50, max_key=100, max_value=1000)


def listing_digest(files: Sequence[ArtifactFile]) -> str | None:
    """A digest of a version's file listing: each file's path, size and whatever the store
    reports of it without a read (`ArtifactFile.fingerprint`: a local file's modification time, a
    blob's Content-MD5), sorted by path. None when a size is unknown: such a listing cannot
    stand for the content, so a re-run reads the files instead."""
    if any(f.size is None for f in files):
        return None
    hasher = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        hasher.update(f"{f.size} {f.fingerprint or '-'} {f.path}\n".encode())
    return "sha256:" + hasher.hexdigest()


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


def chain_value(hops: list[Hop], budget: int = CHAIN_BUDGET) -> str:
    return fitted_chain(hops, budget)[0]


def fitted_chain(hops: list[Hop], budget: int) -> tuple[str, int]:
    """The chain's JSON with as many of the newest hops as fit `budget`, and how many were
    left out (always the oldest, so the same hops give the same value)."""
    kept = list(hops)
    while kept:
        value = json.dumps([h.as_dict() for h in kept], separators=(",", ":"))
        if len(value) <= budget:
            return value, len(hops) - len(kept)
        kept = kept[1:]
    return "[]", len(hops)


def provenance_tags(*, source_uri: str, source_identity: str, name: str, version: str,
                    run_id: str | None, model_id: str | None, digest: str, files: int,
                    total_bytes: int, source_tags: dict[str, str], tool_version: str,
                    now: datetime | None = None, limits: TagLimits = NO_LIMITS,
                    listing: str | None = None) -> dict[str, str]:
    """The full tag set for a new target version (`source_uri` must be credential-free)."""
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
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
    if listing:
        tags[LISTING] = listing
    if run_id:
        tags[SOURCE_RUN_ID] = run_id
    if model_id:
        tags[SOURCE_MODEL_ID] = model_id
    hops = earlier_hops(source_tags)
    if hops:
        budget = min(CHAIN_BUDGET, limits.max_value or CHAIN_BUDGET)
        tags[CHAIN], dropped = fitted_chain(hops, budget)
        if dropped:
            tags[CHAIN_DROPPED] = str(dropped)
    return tags


def carried_tags(source_tags: dict[str, str]) -> dict[str, str]:
    """The source version's own tags, without its provenance (that moves into the chain)."""
    return {k: v for k, v in source_tags.items() if not k.startswith(PREFIX)}


def version_tags(source_tags: dict[str, str], provenance: dict[str, str],
                 limits: TagLimits = NO_LIMITS) -> dict[str, str]:
    """The tags of a new target version: the source's own tags and the provenance, within the
    target's limits.

    Provenance always stays (a value over the limit is shortened, named in `tags.cut`). The
    source's own tags follow in key order while they fit; one with a key or value over the limit,
    or beyond the count, is left out and named in `tags.dropped`. Same input, same output.
    """
    tags = dict(provenance)
    cut: list[str] = []
    if limits.max_value is not None:
        for key, value in tags.items():
            if len(value) > limits.max_value:
                tags[key] = value[:limits.max_value - 3] + "..."
                cut.append(key)
    carried = carried_tags(source_tags)
    eligible = [k for k in sorted(carried)
                if (limits.max_key is None or len(k) <= limits.max_key)
                and (limits.max_value is None or len(carried[k]) <= limits.max_value)]
    dropped = [k for k in sorted(carried) if k not in eligible]
    if limits.max_tags is not None:
        notes = (1 if cut else 0) + (1 if dropped else 0)
        room = limits.max_tags - len(tags) - notes
        if len(eligible) > room:
            if not dropped:
                room -= 1  # the note saying so takes a place too
            dropped += eligible[max(room, 0):]
            eligible = eligible[:max(room, 0)]
    kept = {k: carried[k] for k in eligible}
    if cut:
        kept[TAGS_CUT] = _listing(sorted(cut), limits)
    if dropped:
        kept[TAGS_DROPPED] = _listing(sorted(dropped), limits)
    return {**kept, **tags}


def _listing(keys: list[str], limits: TagLimits) -> str:
    """`N: key, key, ...`, shortened to the value limit."""
    text = f"{len(keys)}: " + ", ".join(keys)
    if limits.max_value is not None and len(text) > limits.max_value:
        text = text[:limits.max_value - 3] + "..."
    return text
