"""MLflow's REST API, spoken directly to a plain `http(s)://` MLflow server.

`import mlflow` alone costs about 2 s, more than the rest of a 1 GiB server-to-server copy's fixed
cost; the copy itself needs a dozen small REST calls. `MlflowRestClient` makes those calls with
`requests` and never imports mlflow. Its methods mirror the part of `mlflow.MlflowClient` that
`registry.py` and `mlflow_target.py` call (same names, arguments, and attributes on what they
return), and its failures carry what `translate_mlflow_error` reads from an `MlflowException`
(message, error code, HTTP status), so users see the same messages and exit codes with either
client.

It follows MLflow's own rules (mlflow.utils.rest_utils): credentials and TLS as in
`HttpEndpoint`, GET parameters in the query string and other bodies as JSON, tags as lists of
{key, value}, and the retry settings MLFLOW_HTTP_REQUEST_MAX_RETRIES / _BACKOFF_FACTOR /
_BACKOFF_JITTER / _TIMEOUT with urllib3's schedule (immediate first retry, then factor * 2^n plus
jitter; Retry-After honoured on 413/429/503).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from amlpromote import __version__
from amlpromote.core.errors import BadInput
from amlpromote.core.retry import parse_retry_after
from amlpromote.core.storage.artifacts import HttpEndpoint, HttpSession

API = "/api/2.0/mlflow"
_log = logging.getLogger(__name__)

# What MLflow retries (mlflow.utils.request_utils._TRANSIENT_FAILURE_RESPONSE_CODES).
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Where urllib3 honours Retry-After (Retry.RETRY_AFTER_STATUS_CODES).
_RETRY_AFTER_STATUS = frozenset({413, 429, 503})
# urllib3's cap on one backoff pause. Retry-After is clamped to it as well (urllib3 would sleep
# as long as the server asks), and the pauses of one call to _MAX_TOTAL_SLEEP: a CI step must
# end in bounded time whatever a proxy answers.
_MAX_SLEEP = 120.0
_MAX_TOTAL_SLEEP = 300.0
# MLflow's own limits on the settings (_MLFLOW_HTTP_REQUEST_MAX_RETRIES_LIMIT and
# _MLFLOW_HTTP_REQUEST_MAX_BACKOFF_FACTOR_LIMIT); values above them fail there too.
_MAX_RETRIES_LIMIT = 10
_BACKOFF_FACTOR_LIMIT = 120
# How MLflow waits for a version the server registers asynchronously.
_AWAIT_CREATION_SECONDS = 300
_AWAIT_INTERVAL = 1.0

# mlflow.exceptions.ERROR_CODE_TO_HTTP_STATUS, and the reverse for a non-JSON error answer.
_STATUS_OF_CODE = {
    "INTERNAL_ERROR": 500, "INVALID_STATE": 500, "DATA_LOSS": 500, "NOT_IMPLEMENTED": 501,
    "TEMPORARILY_UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504, "REQUEST_LIMIT_EXCEEDED": 429,
    "CANCELLED": 499, "RESOURCE_EXHAUSTED": 429, "ABORTED": 409, "RESOURCE_CONFLICT": 409,
    "ALREADY_EXISTS": 409, "NOT_FOUND": 404, "ENDPOINT_NOT_FOUND": 404,
    "RESOURCE_DOES_NOT_EXIST": 404, "PERMISSION_DENIED": 403, "CUSTOMER_UNAUTHORIZED": 401,
    "UNAUTHENTICATED": 401, "BAD_REQUEST": 400, "RESOURCE_ALREADY_EXISTS": 400,
    "INVALID_PARAMETER_VALUE": 400,
}
_CODE_OF_STATUS = {
    400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
    404: "ENDPOINT_NOT_FOUND", 409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED", 501: "NOT_IMPLEMENTED", 503: "TEMPORARILY_UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# LoggedModel status names in the API (mlflow.protos.service_pb2.LoggedModelStatus).
_LOGGED_MODEL_STATUS = {
    "UNSPECIFIED": "LOGGED_MODEL_STATUS_UNSPECIFIED", "PENDING": "LOGGED_MODEL_PENDING",
    "READY": "LOGGED_MODEL_READY", "FAILED": "LOGGED_MODEL_UPLOAD_FAILED",
}
_LOGGED_MODEL_STATUS_NAME = {v: k for k, v in _LOGGED_MODEL_STATUS.items()}


def rest_client_applies(scheme: str) -> bool:
    """Whether a registry with this URI scheme can be reached by `MlflowRestClient`.

    Only plain MLflow servers; and not when the user configured MLflow features this client
    does not reproduce: an auth plugin (MLFLOW_TRACKING_AUTH), AWS SigV4 signing, or the
    `~/.mlflow/credentials` file.
    """
    if scheme not in ("http", "https"):
        return False
    if os.environ.get("MLFLOW_TRACKING_AUTH"):
        return False
    if os.environ.get("MLFLOW_TRACKING_AWS_SIGV4", "").strip().lower() in ("true", "1"):
        return False
    return not os.path.exists(os.path.expanduser("~/.mlflow/credentials"))


class RestError(Exception):
    """A failed REST call, with what `translate_mlflow_error` reads from an MlflowException."""

    def __init__(self, message: str, error_code: str = "INTERNAL_ERROR",
                 status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code
        self.status = status

    def get_http_status_code(self) -> int:
        if self.status is not None:
            return self.status
        return _STATUS_OF_CODE.get(self.error_code, 500)


@dataclass(frozen=True)
class RetrySettings:
    """MLflow's HTTP retry settings, read from the environment like MLflow reads them (the
    defaults are MLflow's; `configure_mlflow_environment` normally sets shorter ones)."""

    max_retries: int = 7
    backoff_factor: int = 2
    backoff_jitter: float = 1.0
    timeout: int = 120
    respect_retry_after: bool = True

    @classmethod
    def from_env(cls) -> RetrySettings:
        def number(key: str, kind: type[int] | type[float], default: float) -> Any:
            raw = os.environ.get(key)
            if raw is None or raw == "":
                return kind(default)
            try:
                return kind(raw)
            except ValueError:
                noun = "a whole number" if kind is int else "a number"
                raise BadInput(f"{key}={raw!r} is not {noun}",
                               hint=f"set {key} to {noun} or unset it") from None

        settings = cls(
            max_retries=number("MLFLOW_HTTP_REQUEST_MAX_RETRIES", int, cls.max_retries),
            backoff_factor=number("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", int,
                                  cls.backoff_factor),
            backoff_jitter=number("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", float,
                                  cls.backoff_jitter),
            timeout=number("MLFLOW_HTTP_REQUEST_TIMEOUT", int, cls.timeout),
            respect_retry_after=os.environ.get("MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER", "true")
            .strip().lower() not in ("false", "0"),
        )
        if not 0 <= settings.max_retries <= _MAX_RETRIES_LIMIT:
            raise BadInput(f"MLFLOW_HTTP_REQUEST_MAX_RETRIES={settings.max_retries} is outside "
                           f"0-{_MAX_RETRIES_LIMIT}, which MLflow allows",
                           hint=f"set MLFLOW_HTTP_REQUEST_MAX_RETRIES to 0-{_MAX_RETRIES_LIMIT}")
        if not 0 <= settings.backoff_factor <= _BACKOFF_FACTOR_LIMIT:
            raise BadInput(f"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR={settings.backoff_factor} is "
                           f"outside 0-{_BACKOFF_FACTOR_LIMIT}, which MLflow allows",
                           hint="set MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR to 0-"
                                f"{_BACKOFF_FACTOR_LIMIT} (seconds)")
        return settings

    def backoff(self, failures: int) -> float:
        """urllib3's pause before the next attempt after `failures` consecutive failures."""
        if failures <= 1:
            return 0.0
        pause = self.backoff_factor * (2 ** (failures - 1))
        if self.backoff_jitter:
            pause += random.random() * self.backoff_jitter
        return max(0.0, min(_MAX_SLEEP, pause))


# --- what the calls return: the attributes our code reads from MLflow's entities -------------


def _tags(items: Any) -> dict[str, str]:
    return {str(t["key"]): str(t.get("value", "")) for t in items or [] if "key" in t}


def _tag_list(tags: dict[str, Any] | None) -> list[dict[str, str]]:
    return [{"key": str(k), "value": str(v)} for k, v in (tags or {}).items()]


def _int(value: Any) -> int | None:
    # The API sends int64 fields as numbers, but proto3 JSON allows strings.
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


@dataclass
class ModelVersion:
    name: str
    version: str
    source: str
    run_id: str | None = None
    model_id: str | None = None
    description: str = ""  # proto3 JSON leaves empty strings out; MLflow reads them as ""
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    creation_timestamp: int | None = None
    last_updated_timestamp: int | None = None
    status: str = "READY"
    status_message: str | None = None
    current_stage: str | None = None
    run_link: str | None = None

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ModelVersion:
        return cls(
            name=str(doc.get("name", "")), version=str(doc.get("version", "")),
            source=str(doc.get("source", "")), run_id=doc.get("run_id") or None,
            model_id=doc.get("model_id") or None, description=doc.get("description", ""),
            tags=_tags(doc.get("tags")), aliases=[str(a) for a in doc.get("aliases") or []],
            creation_timestamp=_int(doc.get("creation_timestamp")),
            last_updated_timestamp=_int(doc.get("last_updated_timestamp")),
            status=str(doc.get("status") or "READY"), status_message=doc.get("status_message"),
            current_stage=doc.get("current_stage"), run_link=doc.get("run_link"))


@dataclass
class RegisteredModel:
    name: str
    description: str = ""  # proto3 JSON leaves empty strings out; MLflow reads them as ""
    tags: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> version, as in MLflow
    creation_timestamp: int | None = None

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RegisteredModel:
        return cls(
            name=str(doc.get("name", "")), description=doc.get("description", ""),
            tags=_tags(doc.get("tags")),
            aliases={str(a["alias"]): str(a.get("version", ""))
                     for a in doc.get("aliases") or [] if "alias" in a},
            creation_timestamp=_int(doc.get("creation_timestamp")))


@dataclass
class Experiment:
    experiment_id: str
    name: str
    artifact_location: str | None = None
    lifecycle_stage: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Experiment:
        return cls(experiment_id=str(doc.get("experiment_id", "")),
                   name=str(doc.get("name", "")),
                   artifact_location=doc.get("artifact_location"),
                   lifecycle_stage=doc.get("lifecycle_stage"), tags=_tags(doc.get("tags")))


@dataclass
class RunInfo:
    run_id: str
    experiment_id: str
    artifact_uri: str
    status: str | None = None
    run_name: str | None = None
    lifecycle_stage: str | None = None


@dataclass
class RunData:
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Run:
    info: RunInfo
    data: RunData

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Run:
        info = doc.get("info") or {}
        return cls(
            RunInfo(run_id=str(info.get("run_id") or info.get("run_uuid") or ""),
                    experiment_id=str(info.get("experiment_id", "")),
                    artifact_uri=str(info.get("artifact_uri", "")), status=info.get("status"),
                    run_name=info.get("run_name"), lifecycle_stage=info.get("lifecycle_stage")),
            RunData(tags=_tags((doc.get("data") or {}).get("tags"))))


@dataclass
class LoggedModel:
    model_id: str
    experiment_id: str
    name: str
    artifact_location: str
    status: str  # PENDING | READY | FAILED | UNSPECIFIED, as MLflow's LoggedModelStatus
    source_run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LoggedModel:
        info = doc.get("info") or {}
        status = str(info.get("status") or "LOGGED_MODEL_STATUS_UNSPECIFIED")
        return cls(model_id=str(info.get("model_id", "")),
                   experiment_id=str(info.get("experiment_id", "")),
                   name=str(info.get("name", "")),
                   artifact_location=str(info.get("artifact_uri", "")),
                   status=_LOGGED_MODEL_STATUS_NAME.get(status, status),
                   source_run_id=info.get("source_run_id") or None,
                   tags=_tags(info.get("tags")))


class Page(list[Any]):
    """One page of search results; `token` asks for the next (None on the last page)."""

    def __init__(self, items: list[Any], token: str | None) -> None:
        super().__init__(items)
        self.token = token or None


# --- the client --------------------------------------------------------------------------------


class _ApiSession(HttpSession):
    """The artifact transfer's session (auth, TLS, pool), answering with raw responses: REST
    errors are told apart by their JSON body, which HttpSession's status mapping drops."""

    def send(self, method: str, url: str, **kwargs: Any) -> Any:
        return self.raw(method, url, **kwargs)


class MlflowRestClient:
    """The subset of `mlflow.MlflowClient` that amlpromote uses, for one MLflow server."""

    def __init__(self, tracking_uri: str, *,
                 auth_header: Callable[[], str] | None = None, pool_size: int = 4) -> None:
        """`auth_header`, when given, is the whole authorization of every call (a service that
        takes short-lived bearer tokens, e.g. Azure ML): its value is sent as `Authorization`,
        asked for anew on each call so a token can be refreshed, and the MLFLOW_TRACKING_*
        credentials and TLS settings, which belong to the user's MLflow server, are not used.
        `pool_size`: connections kept open, at least the threads that share this client."""
        if auth_header is None:
            self.endpoint = HttpEndpoint.for_tracking_uri(tracking_uri)
        else:
            self.endpoint = HttpEndpoint(HttpEndpoint.for_tracking_uri(tracking_uri).base_url,
                                         None, {}, True, None)
        self._auth_header = auth_header
        self.settings = RetrySettings.from_env()
        self._http = _ApiSession(self.endpoint, pool_size=pool_size)
        self._headers = {"User-Agent": f"amlpromote/{__version__}"}
        workspace = os.environ.get("MLFLOW_WORKSPACE", "").strip()
        if workspace:
            # MLflow sends the active workspace with every call outside /mlflow/workspaces.
            self._headers["X-MLFLOW-WORKSPACE"] = workspace

    # -- transport ------------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One API call with MLflow's retries; the JSON answer, or RestError."""
        import requests

        url = self.endpoint.base_url + path
        payload = {k: v for k, v in (body or {}).items() if v is not None}
        kwargs: dict[str, Any] = {"params": payload} if method == "GET" else {"json": payload}
        failures = 0
        slept = 0.0
        while True:
            headers = self._headers
            if self._auth_header is not None:
                headers = {**headers, "Authorization": self._auth_header()}
            try:
                response = self._http.send(method, url, headers=headers,
                                           timeout=self.settings.timeout, **kwargs)
            except requests.exceptions.SSLError as exc:
                # A certificate problem does not heal on a retry.
                raise RestError(f"API request to {url} failed with exception {exc}") from exc
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                # An answer cut mid-body is retried only for reads: the server acted on a
                # write already (MLflow does not retry those either).
                cut = isinstance(exc, requests.exceptions.ChunkedEncodingError)
                failures += 1
                pause = self._pause(failures, None, slept) if not cut or method == "GET" \
                    else None
                if pause is None:
                    message = (f"API request to {url} failed with timeout exception {exc}"
                               if isinstance(exc, requests.exceptions.Timeout)
                               else f"API request to {url} failed with exception {exc}")
                    raise RestError(message) from exc
                self._wait(method, path, pause, exc.__class__.__name__)
                slept += pause
                continue
            except requests.exceptions.RequestException as exc:
                raise RestError(f"API request to {url} failed with exception {exc}") from exc
            status = response.status_code
            if status in _RETRY_STATUS:
                failures += 1
                retry_after = None
                if self.settings.respect_retry_after and status in _RETRY_AFTER_STATUS:
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                pause = self._pause(failures, retry_after, slept)
                if pause is None:
                    response.close()
                    # MLflow's words (urllib3's MaxRetryError), so the same error type follows.
                    raise RestError(f"API request to {url} failed: Max retries exceeded "
                                    f"(too many {status} error responses)",
                                    _CODE_OF_STATUS.get(status, "INTERNAL_ERROR"), status)
                response.close()
                self._wait(method, path, pause, f"HTTP {status}")
                slept += pause
                continue
            return _answer(response, path)

    def _pause(self, failures: int, retry_after: float | None, slept: float) -> float | None:
        """The pause before another attempt, or None when the retries are used up."""
        if failures > self.settings.max_retries:
            return None
        pause = self.settings.backoff(failures) if retry_after is None \
            else min(max(retry_after, 0.0), _MAX_SLEEP)
        if slept + pause > _MAX_TOTAL_SLEEP:
            return None
        return pause

    def _wait(self, method: str, path: str, pause: float, reason: str) -> None:
        _log.info("retrying %s %s in %.1f s (%s)", method, path, pause, reason)
        time.sleep(pause)

    # -- model registry -------------------------------------------------------------------------

    def get_registered_model(self, name: str) -> RegisteredModel:
        doc = self._call("GET", f"{API}/registered-models/get", {"name": name})
        return RegisteredModel.from_json(doc.get("registered_model") or {})

    def create_registered_model(self, name: str, tags: dict[str, Any] | None = None,
                                description: str | None = None) -> RegisteredModel:
        doc = self._call("POST", f"{API}/registered-models/create",
                         {"name": name, "tags": _tag_list(tags), "description": description})
        return RegisteredModel.from_json(doc.get("registered_model") or {})

    def search_registered_models(self, filter_string: str | None = None,
                                 max_results: int = 100, order_by: list[str] | None = None,
                                 page_token: str | None = None) -> Page:
        doc = self._call("GET", f"{API}/registered-models/search",
                         {"filter": filter_string, "max_results": max_results,
                          "order_by": order_by, "page_token": page_token})
        return Page([RegisteredModel.from_json(m) for m in doc.get("registered_models") or []],
                    doc.get("next_page_token"))

    def get_model_version(self, name: str, version: str | int) -> ModelVersion:
        doc = self._call("GET", f"{API}/model-versions/get",
                         {"name": name, "version": str(version)})
        return ModelVersion.from_json(doc.get("model_version") or {})

    def get_model_version_by_alias(self, name: str, alias: str) -> ModelVersion:
        doc = self._call("GET", f"{API}/registered-models/alias", {"name": name, "alias": alias})
        return ModelVersion.from_json(doc.get("model_version") or {})

    def search_model_versions(self, filter_string: str | None = None,
                              max_results: int = 10_000, order_by: list[str] | None = None,
                              page_token: str | None = None) -> Page:
        doc = self._call("GET", f"{API}/model-versions/search",
                         {"filter": filter_string, "max_results": max_results,
                          "order_by": order_by, "page_token": page_token})
        return Page([ModelVersion.from_json(v) for v in doc.get("model_versions") or []],
                    doc.get("next_page_token"))

    def create_model_version(self, name: str, source: str, run_id: str | None = None,
                             tags: dict[str, Any] | None = None, run_link: str | None = None,
                             description: str | None = None,
                             await_creation_for: int = _AWAIT_CREATION_SECONDS,
                             model_id: str | None = None) -> ModelVersion:
        doc = self._call("POST", f"{API}/model-versions/create",
                         {"name": name, "source": source, "run_id": run_id,
                          "run_link": run_link, "tags": _tag_list(tags),
                          "description": description, "model_id": model_id})
        mv = ModelVersion.from_json(doc.get("model_version") or {})
        return self._await_creation(mv, await_creation_for) if await_creation_for else mv

    def _await_creation(self, mv: ModelVersion, seconds: float) -> ModelVersion:
        # A registry may register asynchronously (status PENDING_REGISTRATION); MlflowClient
        # waits for READY, and so does this.
        deadline = time.monotonic() + seconds
        while mv.status == "PENDING_REGISTRATION":
            if time.monotonic() > deadline:
                raise RestError(f"Exceeded max wait time for model name: {mv.name} version: "
                                f"{mv.version} to become READY. Status: {mv.status} Wait Time: "
                                f"{seconds}")
            time.sleep(_AWAIT_INTERVAL)
            mv = self.get_model_version(mv.name, mv.version)
        if mv.status != "READY":
            raise RestError(f"Model version creation failed for model name: {mv.name} version: "
                            f"{mv.version} with status: {mv.status} and message: "
                            f"{mv.status_message}")
        return mv

    def get_model_version_download_uri(self, name: str, version: str | int) -> str:
        doc = self._call("GET", f"{API}/model-versions/get-download-uri",
                         {"name": name, "version": str(version)})
        return str(doc.get("artifact_uri", ""))

    def set_registered_model_alias(self, name: str, alias: str, version: str | int) -> None:
        self._call("POST", f"{API}/registered-models/alias",
                   {"name": name, "alias": alias, "version": str(version)})

    def delete_model_version(self, name: str, version: str | int) -> None:
        self._call("DELETE", f"{API}/model-versions/delete",
                   {"name": name, "version": str(version)})

    # -- tracking -------------------------------------------------------------------------------

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        try:
            doc = self._call("GET", f"{API}/experiments/get-by-name", {"experiment_name": name})
        except RestError as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return Experiment.from_json(doc.get("experiment") or {})

    def create_experiment(self, name: str, artifact_location: str | None = None,
                          tags: dict[str, Any] | None = None) -> str:
        doc = self._call("POST", f"{API}/experiments/create",
                         {"name": name, "artifact_location": artifact_location,
                          "tags": _tag_list(tags)})
        return str(doc.get("experiment_id", ""))

    def create_run(self, experiment_id: str, start_time: int | None = None,
                   tags: dict[str, Any] | None = None, run_name: str | None = None) -> Run:
        tags = tags or {}
        doc = self._call("POST", f"{API}/runs/create",
                         {"experiment_id": str(experiment_id),
                          "user_id": tags.get("mlflow.user", "unknown"),
                          "start_time": start_time or int(time.time() * 1000),
                          "tags": _tag_list(tags), "run_name": run_name})
        return Run.from_json(doc.get("run") or {})

    def get_run(self, run_id: str) -> Run:
        doc = self._call("GET", f"{API}/runs/get", {"run_id": run_id})
        return Run.from_json(doc.get("run") or {})

    def set_terminated(self, run_id: str, status: str | None = None,
                       end_time: int | None = None) -> None:
        self._call("POST", f"{API}/runs/update",
                   {"run_id": run_id, "run_uuid": run_id, "status": status or "FINISHED",
                    "end_time": end_time or int(time.time() * 1000)})

    def create_logged_model(self, experiment_id: str, name: str | None = None,
                            source_run_id: str | None = None,
                            tags: dict[str, Any] | None = None,
                            params: dict[str, Any] | None = None,
                            model_type: str | None = None) -> LoggedModel:
        doc = self._call("POST", f"{API}/logged-models",
                         {"experiment_id": str(experiment_id), "name": name,
                          "source_run_id": source_run_id, "model_type": model_type,
                          "tags": _tag_list(tags), "params": _tag_list(params)})
        return LoggedModel.from_json(doc.get("model") or {})

    def get_logged_model(self, model_id: str) -> LoggedModel:
        doc = self._call("GET", f"{API}/logged-models/{quote(model_id, safe='')}")
        return LoggedModel.from_json(doc.get("model") or {})

    def finalize_logged_model(self, model_id: str, status: Any) -> LoggedModel:
        name = str(getattr(status, "value", status))
        if name not in ("READY", "FAILED"):
            raise RestError(f"Unknown model status: {name}", "INVALID_PARAMETER_VALUE")
        doc = self._call("PATCH", f"{API}/logged-models/{quote(model_id, safe='')}",
                         {"model_id": model_id, "status": _LOGGED_MODEL_STATUS[name]})
        return LoggedModel.from_json(doc.get("model") or {})

    # -- staging containers: heartbeat, search and removal (core/registries/mlflow_target.py,
    # README "Leftovers")

    def set_logged_model_tags(self, model_id: str, tags: dict[str, Any]) -> None:
        self._call("PATCH", f"{API}/logged-models/{quote(model_id, safe='')}/tags",
                   {"tags": _tag_list(tags)})

    def delete_logged_model(self, model_id: str) -> None:
        self._call("DELETE", f"{API}/logged-models/{quote(model_id, safe='')}")

    def search_logged_models(self, experiment_ids: list[str], filter_string: str | None = None,
                             max_results: int | None = None,
                             page_token: str | None = None) -> Page:
        doc = self._call("POST", f"{API}/logged-models/search",
                         {"experiment_ids": experiment_ids, "filter": filter_string,
                          "max_results": max_results, "page_token": page_token})
        return Page([LoggedModel.from_json(m) for m in doc.get("models") or []],
                    doc.get("next_page_token"))

    def set_tag(self, run_id: str, key: str, value: Any) -> None:
        self._call("POST", f"{API}/runs/set-tag",
                   {"run_id": run_id, "run_uuid": run_id, "key": key, "value": str(value)})

    def delete_run(self, run_id: str) -> None:
        self._call("POST", f"{API}/runs/delete", {"run_id": run_id})

    def search_runs(self, experiment_ids: list[str], filter_string: str = "",
                    max_results: int = 1000, page_token: str | None = None) -> Page:
        doc = self._call("POST", f"{API}/runs/search",
                         {"experiment_ids": experiment_ids, "filter": filter_string or None,
                          "max_results": max_results, "page_token": page_token})
        return Page([Run.from_json(r) for r in doc.get("runs") or []],
                    doc.get("next_page_token"))


# Endpoints every MLflow server has answered since the registry came (1.x): a server that
# answers one of them with anything but JSON is not an MLflow server (a plain web server, a
# proxy's page, a wrong path). Newer endpoints (aliases, logged models) are left out: an older
# MLflow server answers those with its web framework's HTML 404.
_CORE_PATHS = frozenset(f"{API}/{p}" for p in (
    "registered-models/get", "registered-models/search", "model-versions/get",
    "model-versions/search", "model-versions/get-download-uri", "experiments/get-by-name",
    "runs/get"))
# Answers that come from whatever stands in front of a server (a login page, a gateway).
_NOT_FROM_THE_SERVER = frozenset({401, 403, 407})
NOT_MLFLOW = "NOT_AN_MLFLOW_REGISTRY"


def _not_mlflow(response: Any, path: str) -> RestError | None:
    """The error for a non-JSON answer to a core endpoint, naming what answered."""
    if path not in _CORE_PATHS or response.status_code in _NOT_FROM_THE_SERVER:
        return None
    kind = (response.headers.get("Content-Type") or "no content type").split(";")[0].strip()
    return RestError(f"not an MLflow registry (HTTP {response.status_code}, {kind})", NOT_MLFLOW,
                     response.status_code)


def _answer(response: Any, path: str) -> dict[str, Any]:
    """The JSON document of a finished response; MLflow's errors for anything else."""
    status = response.status_code
    text = response.text
    if status != 200:
        document = _json_object(text)
        if document is None and (error := _not_mlflow(response, path)) is not None:
            raise error
        if document is not None:
            # MLflow's RestException: "<error_code>: <message>".
            code = str(document.get("error_code") or "INTERNAL_ERROR")
            if code.isdigit():
                code = _CODE_OF_STATUS.get(int(code), code)
            message = document.get("message", f"Response: {document}")
            raise RestError(f"{code}: {message}", code, status)
        raise RestError(f"API request to endpoint {path} failed with error code {status} != 200."
                        f" Response body: '{text}'", _CODE_OF_STATUS.get(status, "INTERNAL_ERROR"),
                        status)
    if not text.strip():
        return {}
    document = _json_object(text)
    if document is None and (error := _not_mlflow(response, path)) is not None:
        raise error
    if document is None:
        raise RestError("API request to endpoint was successful but the response body was not "
                        f"in a valid JSON format. Response body: '{text}'")
    return document


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        document = json.loads(text)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None
