"""Azure ML's published tag limits, as the box applies them: tags over the limits are refused
before the backend sees them, MLflow writes with Azure ML's 400 ValidationError document
(mlflow_api.py), registry version PUTs with ARM's 400 UserError (registry.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# Azure ML's published service limits (MicrosoftDocs/azure-ai-docs, articles/machine-learning/
# resource-limits-capacity.md, "Service limits in Azure Machine Learning"), in characters:
# (number of tags, length of a tag key, length of a tag value).
RUN_TAG_LIMITS = (50, 100, 1000)  # "Runs"
EXPERIMENT_TAG_LIMITS = (50, 250, 1000)  # "Experiments"
# The page gives no tag figures for models (only 1,500 files per version); where the service is
# silent the box is strict: registered models and versions (workspace and registry) get the
# runs' figures, the strictest published.
MODEL_TAG_LIMITS = RUN_TAG_LIMITS
LIMITS_URL = "https://aka.ms/azure-machine-learning-limits"


def tag_limit_problem(tags: Iterable[tuple[Any, Any]], limits: tuple[int, int, int],
                      existing: Iterable[str] = ()) -> str | None:
    """Why Azure ML refuses these tags (added to the `existing` keys), if it does.

    The wording is the service's own for an over-limit field, as users met it for metrics and
    parameters (mlflow/mlflow#11462, Azure/azure-sdk-for-python#35685: "A field of the entity is
    over the size limit. FieldName=Parameters, Limit=200, Size=210. See
    https://aka.ms/azure-machine-learning-limits ..."); the field names for tags are not
    published, `Tags`, `Tags.Key`, `Tags.Value` follow that pattern."""
    count, key_length, value_length = limits
    pairs = [(str(k), "" if v is None else str(v)) for k, v in tags]
    for field_name, limit, size in (
        [("Tags", count, len(set(existing) | {k for k, _ in pairs}))]
        + [("Tags.Key", key_length, len(k)) for k, _ in pairs]
        + [("Tags.Value", value_length, len(v)) for _, v in pairs]
    ):
        if size > limit:
            return (f"A field of the entity is over the size limit. FieldName={field_name}, "
                    f"Limit={limit}, Size={size}. See {LIMITS_URL} for service limits "
                    "documentation.")
    return None


def registry_tag_problem(properties: dict[str, Any]) -> str | None:
    """Why a registry model version PUT's `properties.tags` (a {key: value} object in
    azure-rest-api-specs' ModelVersion) is refused, if it is. A PUT carries the version's whole
    tag set, so nothing already stored counts."""
    tags = properties.get("tags") or {}
    if not isinstance(tags, dict):
        return "properties.tags must be an object of string values."
    return tag_limit_problem(tags.items(), MODEL_TAG_LIMITS)


# MLflow REST writes that carry tags (mlflow/protos/service.proto, model_registry.proto): a new
# entity's `tags` as [{key, value}], or one `key` and `value`; and the limits that apply.
_MLFLOW_TAG_WRITES = {
    "experiments/create": EXPERIMENT_TAG_LIMITS,
    "experiments/set-experiment-tag": EXPERIMENT_TAG_LIMITS,
    "runs/create": RUN_TAG_LIMITS,
    "runs/set-tag": RUN_TAG_LIMITS,
    "runs/log-batch": RUN_TAG_LIMITS,
    "registered-models/create": MODEL_TAG_LIMITS,
    "registered-models/set-tag": MODEL_TAG_LIMITS,
    "model-versions/create": MODEL_TAG_LIMITS,
    "model-versions/set-tag": MODEL_TAG_LIMITS,
}
# Writes that add to an existing entity: where to read the tags it has (GET path, the body
# fields that name it, the key of the entity in the answer).
_MLFLOW_TAG_OWNERS = {
    "experiments/set-experiment-tag": ("experiments/get", ("experiment_id",), "experiment"),
    "runs/set-tag": ("runs/get", ("run_id", "run_uuid"), "run"),
    "runs/log-batch": ("runs/get", ("run_id",), "run"),
    "registered-models/set-tag": ("registered-models/get", ("name",), "registered_model"),
    "model-versions/set-tag": ("model-versions/get", ("name", "version"), "model_version"),
}
