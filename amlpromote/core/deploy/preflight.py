"""Checks on a model version's own files, before any endpoint or deployment is created.

Azure ML's MLflow no-code deployments fail late: the container installs the model's environment
and loads it only after the VM is provisioned, so a missing flavor, a broken `conda.yaml` or a
Python version the images cannot run surfaces after 20 minutes as a `ResourceNotReady`. Every
check here reads a few small files (MLmodel, the environment files, the input example) and
reports each problem as one line plus what to change.

The files are read through `ModelFiles`, so the same checks run on a local folder
(`LocalModelFiles`) and on a registry version (the caller adapts its reader).
"""

from __future__ import annotations

import difflib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from amlpromote.core.errors import BadInput

MLMODEL = "MLmodel"
# Files above this are not "small": preflight never needs one (MLmodel, YAML, JSON examples).
MAX_READ_BYTES = 16 * 1024 * 1024

# The Python versions Azure ML's MLflow images can run a model's environment with. Sources:
# - Azure ML builds a no-code deployment's environment from the model's Conda dependencies and
#   adds the inference server to it ("Packages and dependencies",
#   MicrosoftDocs/azure-ai-docs articles/machine-learning/how-to-deploy-mlflow-models.md), so
#   the model's own `python=` is the interpreter that must run azureml-inference-server-http;
# - azureml-inference-server-http declares python_requires=">=3.9" with classifiers 3.9-3.12
#   (microsoft/azureml-inference-server setup.py); its changelog (PyPI) dropped 3.7 in 1.0.0
#   and 3.8 in 1.4.0, added 3.11 in 1.2.0 and 3.12 in 1.3.0;
# - the current curated image is `mlflow-py312-inference` (Azure/azureml-assets
#   assets/inference/environments/mlflow-py312-inference, conda `python=3.12`).
# Nothing newer than 3.12 is published as supported, so 3.13+ is refused too (conservative).
SUPPORTED_PYTHON = ((3, 9), (3, 12))

# Managed online endpoints accept only these VM sizes: the "Managed online endpoints SKU list",
# https://learn.microsoft.com/azure/machine-learning/reference-managed-online-endpoints-vm-sku-list
# (MicrosoftDocs/azure-ai-docs articles/machine-learning/reference-managed-online-endpoints-vm-
# sku-list.md). Azure ML matches them case-insensitively; they are stored upper-case as listed.
MANAGED_ONLINE_SKUS: frozenset[str] = frozenset(
    [f"STANDARD_D{n}AS_V4" for n in (2, 4, 8, 16, 32, 48, 64, 96)]
    + [f"STANDARD_D{n}A_V4" for n in (2, 4, 8, 16, 32, 48, 64, 96)]
    + [f"STANDARD_DS{n}_V2" for n in (1, 2, 3, 4, 5)]
    + [f"STANDARD_E{n}S_V3" for n in (2, 4, 8, 16, 32, 48, 64)]
    + [f"STANDARD_F{n}S_V2" for n in (2, 4, 8, 16, 32, 48, 64, 72)]
    + [f"STANDARD_FX{n}MDS" for n in (4, 12, 24, 36, 48)]
    + [f"STANDARD_L{n}AS_V3" for n in (8, 16, 32, 48, 64, 80)]
    + [f"STANDARD_L{n}S_V2" for n in (8, 16, 32, 48, 64, 80)]
    + [f"STANDARD_L{n}S_V3" for n in (8, 16, 32, 48, 64, 80)]
    + [f"STANDARD_NC{n}ADS_A100_V4" for n in (24, 48, 96)]
    + [f"STANDARD_NC{n}AS_T4_V3" for n in (4, 8, 16, 64)]
    + [f"STANDARD_NC{n}S_V2" for n in (6, 12, 24)]
    + [f"STANDARD_NC{n}S_V3" for n in (6, 12, 24)]
    + ["STANDARD_NC40ADS_H100_V5", "STANDARD_NC80ADIS_H100_V5"]
    + ["STANDARD_ND96AMSR_A100_V4", "STANDARD_ND96ASR_V4", "STANDARD_ND40RS_V2"]
    + ["STANDARD_ND96IS_H100_V5", "STANDARD_ND96ISR_H100_V5"]
    + [f"STANDARD_NV{n}ADS_A10_V5" for n in (6, 12, 18, 36, 72)]
    + ["STANDARD_NV36ADMS_A10_V5"]
)

SKIP_HINT = "--skip-preflight skips these checks"


class ModelFiles(Protocol):
    """Read access to one model version's files (paths relative to the folder with MLmodel)."""

    def names(self) -> list[str]:
        """Every file's POSIX relative path."""
        ...

    def read(self, path: str) -> bytes:
        """One small file's bytes (MLmodel, environment files, examples)."""
        ...


class LocalModelFiles:
    """A model folder on this machine."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix()
                      for p in self.root.rglob("*") if p.is_file())

    def read(self, path: str) -> bytes:
        pure = PurePosixPath(path)
        # MLmodel entries are written by whoever logged the model: never follow one outside.
        if pure.is_absolute() or ".." in pure.parts:
            raise BadInput(f"{path}: path is outside the model folder")
        target = self.root.joinpath(*pure.parts)
        if target.stat().st_size > MAX_READ_BYTES:
            raise BadInput(f"{path}: {target.stat().st_size} bytes, too big to read as a "
                           "small model file")
        return target.read_bytes()

    def __repr__(self) -> str:
        return f"LocalModelFiles({str(self.root)!r})"


@dataclass
class Problem:
    """One reason the deployment would fail: a one-line message and what to change."""

    check: str  # mlmodel | flavor | environment | python | files | example | instance-type
    message: str
    fix: str

    def as_dict(self) -> dict[str, str]:
        return {"check": self.check, "message": self.message, "fix": self.fix}


@dataclass
class PreflightReport:
    problems: list[Problem] = field(default_factory=list)
    flavors: list[str] = field(default_factory=list)
    mlflow_version: str | None = None
    python_version: str | None = None
    # Where python_version came from (conda.yaml, python_env.yaml or MLmodel).
    python_version_source: str | None = None
    # The Conda file Azure ML builds the environment from (else the virtualenv file).
    env_file: str | None = None
    python_env_file: str | None = None
    loader: str | None = None
    has_input_example: bool = False
    input_example: str | None = None
    has_signature: bool = False
    # requirements.txt lines (else the pip list of the Conda file), for later mismatch warnings.
    requirements: list[str] = field(default_factory=list)
    # Worth saying, not worth refusing the deploy for.
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> None:
        """BadInput (exit 2) with the first problem's message and all of them in the hint."""
        if not self.problems:
            return
        first = self.problems[0]
        if len(self.problems) == 1:
            hint = f"{first.fix}; {SKIP_HINT}"
        else:
            listed = "; ".join(f"({i}) {p.message}: {p.fix}"
                               for i, p in enumerate(self.problems, start=1))
            hint = f"{len(self.problems)} problems: {listed}; {SKIP_HINT}"
        raise BadInput(f"preflight: {first.message}", hint)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": [p.as_dict() for p in self.problems],
            "flavors": self.flavors,
            "mlflow_version": self.mlflow_version,
            "python_version": self.python_version,
            "python_version_source": self.python_version_source,
            "env_file": self.env_file,
            "python_env_file": self.python_env_file,
            "loader": self.loader,
            "has_input_example": self.has_input_example,
            "input_example": self.input_example,
            "has_signature": self.has_signature,
            "requirements": self.requirements,
            "warnings": self.warnings,
        }


def preflight(files: ModelFiles, *, platform: str, instance_type: str | None,
              smoke_input_given: bool) -> PreflightReport:
    """Check a version's files for what would make its deployment fail; never raises for them.

    `platform` is "azureml" or "local". The instance type and the Python range are Azure ML's,
    so they are checked for "azureml" only; local endpoints load the model in this process's
    environment (local/server.py), so a different Python there is a warning.
    """
    report = PreflightReport()
    names = set(files.names())
    _check_model(files, names, report, platform=platform, smoke_input_given=smoke_input_given)
    if platform == "azureml" and instance_type is not None:
        problem = instance_type_problem(instance_type)
        if problem:
            report.problems.append(problem)
    return report


def instance_type_problem(instance_type: str) -> Problem | None:
    """A Problem when Azure ML managed online endpoints do not offer `instance_type`."""
    wanted = instance_type.strip().upper()
    if wanted in MANAGED_ONLINE_SKUS:
        return None
    close = difflib.get_close_matches(wanted, sorted(MANAGED_ONLINE_SKUS), n=1, cutoff=0.6)
    if close:
        fix = f"did you mean {sku_display(close[0])}? --instance-type {sku_display(close[0])}"
    else:
        fix = ("pick one from the managed online endpoints SKU list, e.g. --instance-type "
               "Standard_DS3_v2 (https://learn.microsoft.com/azure/machine-learning/"
               "reference-managed-online-endpoints-vm-sku-list)")
    return Problem("instance-type",
                   f"instance type {instance_type!r} is not offered for managed online endpoints",
                   fix)


def sku_display(sku: str) -> str:
    """STANDARD_DS3_V2 as users write it: Standard_DS3_v2."""
    head, _, rest = sku.partition("_")
    rest = re.sub(r"_V(\d+)$", r"_v\1", rest)
    return f"{head.capitalize()}_{rest}"


def read_mlmodel(files: ModelFiles) -> dict[str, Any]:
    """The parsed MLmodel; BadInput when it is missing or is not a YAML mapping."""
    import yaml

    try:
        text = files.read(MLMODEL)
    except (FileNotFoundError, KeyError) as exc:
        raise BadInput("the model has no MLmodel file",
                       "register a folder saved by mlflow (mlflow.<flavor>.log_model)") from exc
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BadInput(f"MLmodel is not valid YAML ({_yaml_where(exc)})",
                       "re-save the model with mlflow") from exc
    if not isinstance(parsed, dict):
        raise BadInput("MLmodel is not a YAML mapping", "re-save the model with mlflow")
    return parsed


def python_function_env(pyfunc: dict[str, Any]) -> tuple[str | None, str | None]:
    """(conda file, virtualenv file) named by a python_function flavor, MLflow 1.x or 2.x+."""
    env = pyfunc.get("env")
    if isinstance(env, str):  # MLflow 1.x: `env: conda.yaml`
        return env, None
    if isinstance(env, dict):  # MLflow 2.x+: `env: {conda: conda.yaml, virtualenv: ...}`
        conda, virtualenv = env.get("conda"), env.get("virtualenv")
        return (conda if isinstance(conda, str) else None,
                virtualenv if isinstance(virtualenv, str) else None)
    return None, None


def example_files(mlmodel: dict[str, Any], names: set[str]) -> list[str]:
    """The saved input example files present, best first (serving form, then the raw one)."""
    info = mlmodel.get("saved_input_example_info")
    candidates: list[str] = []
    if isinstance(info, dict):
        for key in ("serving_input_path", "artifact_path"):
            value = info.get(key)
            if isinstance(value, str):
                candidates.append(value)
    # MLflow's fixed file names, for MLmodel files that lost the info block.
    candidates += ["serving_input_example.json", "input_example.json"]
    seen: list[str] = []
    for name in candidates:
        if name in names and name not in seen:
            seen.append(name)
    return seen


def has_signature_inputs(mlmodel: dict[str, Any]) -> bool:
    signature = mlmodel.get("signature")
    return isinstance(signature, dict) and bool(signature.get("inputs"))


def _check_model(files: ModelFiles, names: set[str], report: PreflightReport, *,
                 platform: str, smoke_input_given: bool) -> None:
    problems = report.problems
    if MLMODEL not in names:
        nested = sorted(n for n in names if PurePosixPath(n).name == MLMODEL)
        where = f" (there is one at {nested[0]}: the version's files start one folder too high)" \
            if nested else ""
        problems.append(Problem(
            "mlmodel", f"the model has no MLmodel file at its top{where}",
            "register the folder that mlflow saved (the one holding MLmodel), e.g. with "
            "mlflow.<flavor>.log_model"))
        return
    try:
        mlmodel = read_mlmodel(files)
    except BadInput as exc:
        problems.append(Problem("mlmodel", exc.message, exc.hint or "re-save the model"))
        return

    flavors = mlmodel.get("flavors")
    report.flavors = sorted(flavors) if isinstance(flavors, dict) else []
    version = mlmodel.get("mlflow_version")
    report.mlflow_version = str(version) if version is not None else None
    report.has_signature = has_signature_inputs(mlmodel)
    found = example_files(mlmodel, names)
    report.has_input_example = bool(found)
    report.input_example = found[0] if found else None
    report.requirements = _requirements(files, names)

    pyfunc = flavors.get("python_function") if isinstance(flavors, dict) else None
    if not isinstance(pyfunc, dict):
        others = ", ".join(report.flavors) or "none"
        problems.append(Problem(
            "flavor", f"MLmodel has no python_function flavor (flavors: {others}); MLflow "
            "deployments load models through it",
            "log the model with a flavor that adds python_function (most mlflow.<flavor> "
            "modules do), or wrap it with mlflow.pyfunc.log_model(python_model=...)"))
    else:
        loader = pyfunc.get("loader_module")
        report.loader = str(loader) if loader else None
        _check_environment(files, names, pyfunc, report, platform=platform)
        _check_referenced_files(names, pyfunc, problems)

    if not report.has_input_example and not report.has_signature and not smoke_input_given:
        info = mlmodel.get("saved_input_example_info")
        lost = info.get("artifact_path") if isinstance(info, dict) else None
        detail = f" (MLmodel names {lost}, which is missing)" if lost else ""
        problems.append(Problem(
            "example", f"the model has no input example and no signature to build the "
            f"smoke-test request from{detail}",
            "pass --smoke-input FILE (a request JSON, CSV or parquet file), or log the model "
            "with input_example=... or signature=..."))


def _check_environment(files: ModelFiles, names: set[str], pyfunc: dict[str, Any],
                       report: PreflightReport, *, platform: str) -> None:
    problems = report.problems
    conda_name, venv_name = python_function_env(pyfunc)
    report.env_file = conda_name or venv_name
    report.python_env_file = venv_name
    if conda_name is None and venv_name is None:
        problems.append(Problem(
            "environment", "the python_function flavor names no environment file (env:)",
            "re-log the model with mlflow, which writes conda.yaml and python_env.yaml"))
        return
    if conda_name is None and platform == "azureml":
        # Azure ML builds the deployment's environment from the Conda dependencies only
        # (how-to-deploy-mlflow-models.md, "Packages and dependencies").
        problems.append(Problem(
            "environment", f"the model has no Conda environment file (only {venv_name}); "
            "Azure ML builds MLflow deployments from conda.yaml",
            "re-log the model with mlflow >= 2, which writes conda.yaml beside python_env.yaml"))

    conda_python: str | None = None
    if conda_name is not None:
        conda = _load_env_file(files, names, conda_name, problems)
        if conda is not None:
            conda_python = _check_conda(conda_name, conda, problems)
            if not report.requirements:
                report.requirements = _conda_pip(conda)
    venv_python: str | None = None
    if venv_name is not None:
        venv = _load_env_file(files, names, venv_name, problems)
        if venv is not None:
            venv_python = _check_python_env(venv_name, venv, problems)

    # Azure ML installs from the Conda file, so its Python wins; MLflow 1.x also recorded the
    # interpreter in the flavor itself.
    for value, source in ((conda_python, conda_name), (venv_python, venv_name),
                          (pyfunc.get("python_version"), MLMODEL)):
        if value:
            report.python_version, report.python_version_source = str(value), source
            break
    if not report.python_version:
        return
    if platform == "azureml":
        problem = python_version_problem(report.python_version, report.python_version_source)
        if problem:
            problems.append(problem)
        return
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    wanted = re.match(r"\s*(\d+\.\d+)", report.python_version)
    if wanted and wanted.group(1) != here:
        report.warnings.append(
            f"the model was saved for Python {wanted.group(1)} ({report.python_version_source}); "
            f"local endpoints load it with this Python {here}, where its pickles may not load")


def python_version_problem(version: str, source: str | None) -> Problem | None:
    """A Problem when `version` (3.11.7, 3.8, 3.10.*) is outside SUPPORTED_PYTHON."""
    match = re.match(r"\s*(\d+)\.(\d+)", version)
    if not match:
        return Problem("python", f"the model's Python version {version!r} ({source}) is not "
                       "a version number", "set python= to a version such as 3.11")
    found = (int(match.group(1)), int(match.group(2)))
    low, high = SUPPORTED_PYTHON
    if low <= found <= high:
        return None
    supported = f"{low[0]}.{low[1]}-{high[0]}.{high[1]}"
    return Problem(
        "python", f"the model's environment asks for Python {found[0]}.{found[1]} ({source}); "
        f"Azure ML's MLflow images run Python {supported}",
        f"re-log the model from a Python {supported} environment, or change python= in "
        f"{source} to one of those versions")


def _load_env_file(files: ModelFiles, names: set[str], name: str,
                   problems: list[Problem]) -> dict[str, Any] | None:
    import yaml

    if name not in names:
        problems.append(Problem("environment", f"MLmodel names {name}, which is missing",
                                "re-log the model so its environment files are saved with it"))
        return None
    try:
        parsed = yaml.safe_load(files.read(name))
    except yaml.YAMLError as exc:
        problems.append(Problem("environment", f"{name} is not valid YAML ({_yaml_where(exc)})",
                                f"fix {name} or re-log the model"))
        return None
    if not isinstance(parsed, dict):
        problems.append(Problem("environment", f"{name} is not a YAML mapping",
                                f"fix {name} or re-log the model"))
        return None
    return parsed


def _check_conda(name: str, conda: dict[str, Any], problems: list[Problem]) -> str | None:
    """Check a Conda file's shape; return the Python version it pins, if any."""
    dependencies = conda.get("dependencies")
    if not isinstance(dependencies, list):
        problems.append(Problem("environment", f"{name} has no dependencies list",
                                f"give {name} a `dependencies:` list (python=3.x, pip, ...)"))
        return None
    python: str | None = None
    for entry in dependencies:
        if isinstance(entry, str):
            match = re.match(r"\s*python(?![-\w])\s*(?:==|=|>=|~=|<=)?\s*(\d[\w.*]*)", entry)
            if match:
                python = match.group(1)
        elif isinstance(entry, dict):
            pip = entry.get("pip")
            if "pip" in entry and not isinstance(pip, list):
                problems.append(Problem("environment", f"{name}: the pip entry is not a list",
                                        f"write pip requirements in {name} as `- pip: [...]`"))
        else:
            problems.append(Problem("environment", f"{name}: dependency {entry!r} is neither a "
                                    "package spec nor a pip list", f"fix {name}"))
    return python


def _check_python_env(name: str, env: dict[str, Any], problems: list[Problem]) -> str | None:
    missing = [key for key in ("python", "build_dependencies", "dependencies") if key not in env]
    if missing:
        problems.append(Problem("environment", f"{name} lacks {', '.join(missing)}",
                                f"re-log the model, or give {name} python, build_dependencies "
                                "and dependencies"))
    for key in ("build_dependencies", "dependencies"):
        if key in env and env[key] is not None and not isinstance(env[key], list):
            problems.append(Problem("environment", f"{name}: {key} is not a list", f"fix {name}"))
    python = env.get("python")
    return str(python) if python is not None else None


def _check_referenced_files(names: set[str], pyfunc: dict[str, Any],
                            problems: list[Problem]) -> None:
    # The loader opens these at start-up; a missing one fails only after provisioning.
    # MLflow 2.x+ writes model_path, 1.x wrote data, pyfunc models write python_model.
    for key in ("model_path", "data", "python_model"):
        value = pyfunc.get(key)
        if not isinstance(value, str) or not value:
            continue
        prefix = value.rstrip("/") + "/"
        if value not in names and not any(n.startswith(prefix) for n in names):
            problems.append(Problem("files", f"python_function {key} {value} is not among the "
                                    "model's files", "re-log the model; its files are incomplete"))


def _requirements(files: ModelFiles, names: set[str]) -> list[str]:
    if "requirements.txt" in names:
        try:
            text = files.read("requirements.txt").decode("utf-8", errors="replace")
        except OSError:
            return []
        return [line.split("#", 1)[0].strip() for line in text.splitlines()
                if line.split("#", 1)[0].strip() and not line.lstrip().startswith("-")]
    return []


def _conda_pip(conda: dict[str, Any]) -> list[str]:
    for entry in conda.get("dependencies") or []:
        if isinstance(entry, dict) and isinstance(entry.get("pip"), list):
            return [str(r).strip() for r in entry["pip"]
                    if isinstance(r, str) and r.strip() and not r.lstrip().startswith("-")]
    return []


def _yaml_where(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "parse error"
    if mark is not None:
        return f"line {mark.line + 1}: {problem}"
    return str(problem)


def loads_json(files: ModelFiles, name: str) -> Any:
    """A JSON file of the version, BadInput naming the file when it is not JSON."""
    try:
        return json.loads(files.read(name))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"{name} is not valid JSON ({exc})",
                       "re-log the model's input example, or pass --smoke-input FILE") from exc
