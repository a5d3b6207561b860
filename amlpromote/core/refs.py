"""Model references as users type them: name, name/3, name@alias, name/latest, name/Production,
and `models:/` URIs of the same forms."""

from __future__ import annotations

from dataclasses import dataclass

from amlpromote.core.errors import BadInput

STAGES = {"none": "None", "staging": "Staging", "production": "Production",
          "archived": "Archived"}


@dataclass(frozen=True)
class ModelRef:
    """A reference to one registered model version, not yet resolved against a registry."""

    name: str
    version: str | None = None  # an explicit version number
    alias: str | None = None
    stage: str | None = None  # a legacy stage (canonical capitalisation)
    latest: bool = False  # `name` alone or `name/latest`

    def __str__(self) -> str:
        if self.version:
            return f"{self.name}/{self.version}"
        if self.alias:
            return f"{self.name}@{self.alias}"
        if self.stage:
            return f"{self.name}/{self.stage}"
        return f"{self.name}/latest"


_HINT = ("write NAME, NAME/VERSION, NAME@ALIAS, NAME/latest, NAME/Production or "
         "models:/NAME/VERSION")


def parse_model_ref(text: str) -> ModelRef:
    """Parse a model reference; raises BadInput with the accepted forms on anything else."""
    raw = text.strip()
    body = raw
    if body.startswith("models:"):
        body = body[len("models:"):].lstrip("/")
        if body.startswith("m-") and "/" not in body and "@" not in body:
            raise BadInput(f"'{raw}' names a logged model, not a registered model version",
                           hint="register it first, then " + _HINT)
    if body.startswith(("runs:", "file:", "dbfs:", "s3:", "wasbs:", "abfss:", "https:")):
        raise BadInput(f"'{raw}' names artifacts, not a registered model version",
                       hint="register it first (mlflow.register_model), then " + _HINT)
    if not body:
        raise BadInput(f"empty model reference '{raw}'", hint=_HINT)
    if "@" in body:
        name, alias = body.rsplit("@", 1)
        if not name or not alias or "/" in alias:
            raise BadInput(f"malformed model reference '{raw}'", hint=_HINT)
        return ModelRef(name=name, alias=alias)
    if "/" in body:
        name, last = body.rsplit("/", 1)
        # "heart//1" or "/heart/1": an empty part is a typo, never a model name.
        if not name or not last or "" in name.split("/"):
            raise BadInput(f"malformed model reference '{raw}'", hint=_HINT)
        if last.isdigit():
            if int(last) < 1:
                raise BadInput(f"version must be 1 or more in '{raw}'", hint=_HINT)
            return ModelRef(name=name, version=str(int(last)))
        if last.lower() == "latest":
            return ModelRef(name=name, latest=True)
        if last.lower() in STAGES:
            return ModelRef(name=name, stage=STAGES[last.lower()])
        raise BadInput(f"'{last}' in '{raw}' is not a version number, 'latest' or a stage",
                       hint=_HINT)
    return ModelRef(name=body, latest=True)
