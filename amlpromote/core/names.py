r"""The name a promoted model gets in the target when the user does not choose one.

Azure ML is the strictest registry we write to, and its APIs disagree: the model data-plane API
(azure-ai-ml 1.35, `model_dataplane` client) takes `^(?![-_.])[a-zA-Z0-9-_.]{1,255}(?<!\.)$`, while
the ARM asset API answers "Resource name can only contain alphanumeric characters, dashes, and
underscores, with a limit of 255 characters" (MicrosoftDocs/azure-docs#83465). We keep to what
both accept: letters, digits, `-` and `_`, starting with a letter or digit, at most 255
characters. Such a name is valid in every MLflow registry too.

Unity Catalog names are `catalog.schema.model`: the periods must go. The rule, in one sentence
(README "Model names"): a source name that is already a valid Azure ML name is kept; otherwise
each period becomes a hyphen (`main.fraud.scorer` -> `main-fraud-scorer`), and if that is still
not valid (other characters, a leading `-`/`_`, more than 255 characters) every other invalid
character also becomes a hyphen, the name is cut to 246 characters and `-` plus the first 8 hex
digits of the sha256 of the original name is appended, so names that lose characters stay
distinct.
`--target-name` overrides the rule.
"""

from __future__ import annotations

import hashlib
import re

AZUREML_NAME_MAX = 255
_VALID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,254}")
_INVALID_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
_SUFFIX_DIGITS = 8


def is_valid_target_name(name: str) -> bool:
    """Whether `name` is accepted as a model name by Azure ML (and so by MLflow registries)."""
    return _VALID.fullmatch(name) is not None


def target_model_name(source_name: str) -> str:
    """Map a source model name to one valid in Azure ML and MLflow registries (deterministic).

    Names that are already valid are returned unchanged; Unity Catalog three-part names lose
    their periods; anything else is made valid and keeps a short hash of the original so two
    different source names never map to the same target name through the lossy step.
    """
    if is_valid_target_name(source_name):
        return source_name
    dotted = source_name.replace(".", "-")
    if is_valid_target_name(dotted):
        return dotted
    digest = hashlib.sha256(source_name.encode("utf-8")).hexdigest()[:_SUFFIX_DIGITS]
    cleaned = _INVALID_CHARS.sub("-", dotted).lstrip("-_")
    stem = cleaned[: AZUREML_NAME_MAX - _SUFFIX_DIGITS - 1].rstrip("-")
    return f"{stem}-{digest}" if stem else f"model-{digest}"


def needs_plain_name(source_scheme: str, target_scheme: str) -> bool:
    """Whether the default target name goes through `target_model_name`.

    Always for Azure ML targets (they refuse periods and most punctuation) and for Unity Catalog
    sources (so one UC model gets the same name in every target). A copy between MLflow
    registries of a workspace-registry name keeps the name exactly, as it always has.
    """
    return target_scheme == "azureml" or source_scheme == "databricks-uc"


def default_target_name(source_name: str, source_scheme: str, target_scheme: str) -> str:
    """The target name when `--target-name` is not given."""
    if needs_plain_name(source_scheme, target_scheme):
        return target_model_name(source_name)
    return source_name
