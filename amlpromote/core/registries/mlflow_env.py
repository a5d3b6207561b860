"""How amlpromote uses MLflow's process-wide state, and what MLflow's failures mean to us.

Both the plain MLflow registry (registry.py) and the Databricks one (databricks.py) call MLflow's
client; the settings they rely on, the lock around MLflow's global tracking URI and the mapping
of an MlflowException to our error types live here so neither imports the other for them.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from amlpromote.core.errors import (
    AmlPromoteError,
    AuthFailed,
    BadInput,
    NotFound,
    OperationFailed,
    Unreachable,
    UnusableRegistry,
)
from amlpromote.core.uris import redact_text

# MLflow's retry settings and how MLflow parses each (mlflow.environment_variables).
_MLFLOW_NUMERIC_SETTINGS: dict[str, type[int] | type[float]] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": int,
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": int,
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": float,
    "MLFLOW_HTTP_REQUEST_TIMEOUT": int,
}
_GLOBALS_LOCK = threading.RLock()


def configure_mlflow_environment() -> None:
    """Process-wide MLflow settings the tool relies on; a user's own values win.

    MLflow retries a failing REST call for minutes by default; a CI step wants a bounded wait.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "4")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0.5")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
    # MLflow parses these lazily, deep inside a request, and a malformed value (a user who
    # writes BACKOFF_FACTOR=0.5) would surface as an internal error; name the setting instead.
    for key, kind in _MLFLOW_NUMERIC_SETTINGS.items():
        value = os.environ[key]
        try:
            kind(value)
        except ValueError:
            noun = "a whole number" if kind is int else "a number"
            raise BadInput(f"{key}={value!r} is not {noun}",
                           hint=f"set {key} to {noun} or unset it") from None
    # No telemetry from a tool that runs in CI; nothing but the registries is contacted.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")



@contextmanager
def mlflow_globals(uri: str) -> Iterator[None]:
    """Point MLflow's global tracking/registry URI at `uri` for one call, then restore them."""
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils

    with _GLOBALS_LOCK:
        saved_tracking = getattr(tracking_utils, "_tracking_uri", None)
        saved_registry = getattr(registry_utils, "_registry_uri", None)
        saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        try:
            setattr(tracking_utils, "_tracking_uri", uri)  # noqa: B010 - private module state
            setattr(registry_utils, "_registry_uri", uri)  # noqa: B010
            os.environ["MLFLOW_TRACKING_URI"] = uri
            os.environ["MLFLOW_REGISTRY_URI"] = uri
            yield
        finally:
            setattr(tracking_utils, "_tracking_uri", saved_tracking)  # noqa: B010
            setattr(registry_utils, "_registry_uri", saved_registry)  # noqa: B010
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

def translate_mlflow_error(exc: Exception, what: str, registry: str) -> AmlPromoteError:
    """Map an MlflowException or a network error to our error types, with secrets removed."""
    message = redact_text(str(getattr(exc, "message", None) or exc)).strip()
    first_line = message.splitlines()[0] if message else exc.__class__.__name__
    if len(first_line) > 300:
        first_line = first_line[:300] + "..."
    code = str(getattr(exc, "error_code", "") or "")
    status = None
    try:
        status = exc.get_http_status_code()  # type: ignore[attr-defined]
    except Exception:
        status = None
    lowered = message.lower()
    html = _MLFLOW_HTML_ANSWER.search(message)
    if html is not None and html["status"] in ("401", "403", "407"):
        html = None  # a login page in front of a server: the credentials' error below
    if html is not None:
        # MLflow's own client met a web page where the API should be.
        first_line = f"not an MLflow registry (HTTP {html['status']}, text/html)"
    if code == "NOT_AN_MLFLOW_REGISTRY" or html is not None:
        # Something answered, but not MLflow (core/registries/mlflow_rest.py): a wrong host, port
        # or path.
        return UnusableRegistry(f"{what}: {registry} is {first_line}",
                                hint="give the address an mlflow server answers at (its "
                                     "--host and --port, e.g. http://HOST:5000), without the "
                                     "UI's path")
    azure = _azure_ml_error(message)
    if azure is not None:
        # Azure ML answers with its own error document, which MLflow reports as an
        # INTERNAL_ERROR carrying the body; the code inside says what happened.
        azure_code, azure_text = azure
        if azure_code in ("WorkspaceNotFound", "RegistryNotFound"):
            return NotFound(f"{what}: {registry} does not exist ({azure_code})",
                            hint="check the subscription, resource group and name in the URI")
        if azure_code in ("AuthorizationFailed", "Forbidden"):
            return AuthFailed(f"{what}: {registry} refused access ({azure_code}: {azure_text})",
                              hint="ask for a role on the workspace that allows this (e.g. "
                                   "AzureML Data Scientist), or choose another identity with "
                                   "--credential")
        return AuthFailed(f"{what}: {registry} refused the Azure token ({azure_code}: "
                          f"{azure_text})",
                          hint="check the identity and its tenant (AZURE_TENANT_ID), or choose "
                               "another identity with --credential")
    if code in ("UNAUTHENTICATED", "PERMISSION_DENIED") or status in (401, 403) or \
            ("401" in first_line and "unauthorized" in lowered):
        return AuthFailed(f"{what}: {registry} refused the credentials ({first_line})",
                          hint="check the token or user for this registry "
                               "(MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_USERNAME/PASSWORD, "
                               "~/.databrickscfg)")
    if code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
        return NotFound(f"{what}: {first_line}", hint=f"check the name in {registry}")
    if "certificate verify failed" in lowered or "sslerror" in lowered:
        # requests wraps it in "Max retries exceeded": a retry or the network is not the cure.
        return Unreachable(f"{what}: the TLS certificate of {registry} was not accepted",
                           hint="set MLFLOW_TRACKING_SERVER_CERT_PATH (or REQUESTS_CA_BUNDLE) "
                                "to the CA bundle that signed the server's certificate, or "
                                "MLFLOW_TRACKING_INSECURE_TLS=true to skip the check")
    if ("max retries exceeded" in lowered or "connection refused" in lowered
            or "failed to establish" in lowered or "name or service not known" in lowered
            or "connectionerror" in lowered or "timed out" in lowered
            or "connection aborted" in lowered or "connection reset" in lowered):
        return Unreachable(f"{what}: cannot reach {registry}",
                           hint="check the URI, the network, and that the server is running")
    if code == "INVALID_PARAMETER_VALUE":
        return BadInput(f"{what}: {first_line}", hint=f"check the input against {registry}")
    if "sqlite" in lowered and ("unable to open" in lowered or "readonly" in lowered
                                or "read-only" in lowered):
        reason = next((r for r in ("attempt to write a readonly database",
                                   "unable to open database file") if r in lowered), "read-only")
        return OperationFailed(f"{what}: cannot write the sqlite database of {registry} "
                               f"({reason})",
                               hint="check the folder's permissions or choose another target")
    return OperationFailed(f"{what}: {first_line}",
                           hint=f"run again with --verbose for details about {registry}")


# mlflow.utils.rest_utils' words for a non-JSON error answer, on an endpoint every MLflow
# server has (core/registries/mlflow_rest.py _CORE_PATHS), with an HTML body.
_MLFLOW_HTML_ANSWER = re.compile(
    r"endpoint /api/2\.0/mlflow/(?:registered-models/(?:get|search)|model-versions/"
    r"(?:get|search|get-download-uri)|experiments/get-by-name|runs/get) failed with error code "
    r"(?P<status>\d+) != 200\. Response body: '\s*<", re.IGNORECASE)
_AZURE_ML_CODES = re.compile(
    r"""['"]code['"]\s*:\s*['"](?P<code>AuthorizationFailed|Forbidden|AuthenticationFailed|"""
    r"""InvalidAuthenticationToken\w*|ExpiredAuthenticationToken|WorkspaceNotFound|"""
    r"""RegistryNotFound)['"]""")
_AZURE_ML_MESSAGE = re.compile(r"""['"]message['"]\s*:\s*(?P<q>['"])(?P<text>.*?)(?P=q)""")


def _azure_ml_error(message: str) -> tuple[str, str] | None:
    """(code, message) of an Azure ML error document inside an MLflow error, if there is one."""
    found = _AZURE_ML_CODES.search(message)
    if found is None:
        return None
    text = _AZURE_ML_MESSAGE.search(message)
    detail = text["text"] if text else ""
    return found["code"], detail[:200] + ("..." if len(detail) > 200 else "")

