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


# MLflow's own alias rule (mlflow.utils.validation: `_REGISTERED_MODEL_ALIAS_REGEX`,
# `MAX_REGISTERED_MODEL_ALIAS_LENGTH`, `_validate_model_alias_name_reserved`), checked here so a
# bad `--alias` fails before anything is copied instead of after the version is registered.
_ALIAS = re.compile(r"[\w-]+")
_ALIAS_VERSION_LIKE = re.compile(r"[vV]\d+")
ALIAS_MAX = 255
ALIAS_RULE = "letters, digits, '_' and '-', at most 255 characters, not 'latest' nor v<number>"


def alias_problem(alias: str) -> str | None:
    """Why `alias` cannot be set on a model version, or None when MLflow accepts it."""
    if not alias:
        return "an alias cannot be empty"
    if _ALIAS.fullmatch(alias) is None:
        return f"'{alias}' has characters an alias cannot have"
    if len(alias) > ALIAS_MAX:
        return f"the alias '{alias[:20]}...' is longer than {ALIAS_MAX} characters"
    if alias.lower() == "latest":
        return "'latest' is reserved (NAME/latest always means the newest version)"
    if _ALIAS_VERSION_LIKE.fullmatch(alias):
        return f"'{alias}' is reserved (v<number> names a version)"
    return None


def target_name_problem(name: str, target_scheme: str) -> str | None:
    """Why `name` cannot be a model name in a target of this scheme, or None when it can.

    Azure ML: the rule above. Other MLflow registries: MLflow's `_validate_model_name` (not
    blank, no '/' or ':', and the name must not change when read as a path).
    """
    import posixpath

    if target_scheme == "azureml":
        if is_valid_target_name(name):
            return None
        return (f"'{name}' is not a valid Azure ML model name (letters, digits, '-' and '_', "
                f"starting with a letter or digit, at most {AZUREML_NAME_MAX} characters)")
    if not name.strip():
        return "the model name cannot be blank"
    if "/" in name or ":" in name:
        return f"'{name}' is not a valid MLflow model name: it cannot contain '/' or ':'"
    normal = posixpath.normpath(name)
    if normal != name or normal == "." or normal.startswith(".."):
        return f"'{name}' is not a valid MLflow model name: it reads as the path '{normal}'"
    return None
