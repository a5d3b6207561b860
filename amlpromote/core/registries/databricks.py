"""Databricks as a source: the workspace model registry and Unity Catalog.

Registry URIs: `databricks` (DATABRICKS_HOST/DATABRICKS_TOKEN, else the DEFAULT profile of
~/.databrickscfg), `databricks://PROFILE`, and the Unity Catalog forms `databricks-uc` and
`databricks-uc://PROFILE` (model names `catalog.schema.model`).

MLflow talks to Databricks through databricks-sdk, and a few of their behaviours shape this
module (each is pinned by a "contract" test in tests/test_databricks_box.py):

- databricks-sdk lets DATABRICKS_* variables override a named profile's values, so
  `databricks://prod` with DATABRICKS_HOST set would send prod's token to another host. While a
  registry that names a profile is called, those variables are taken out of the environment
  (`DatabricksRegistry.contained`) and put back afterwards.
- A persistent 429/503 makes databricks-sdk retry for MLFLOW_DATABRICKS_ENDPOINT_HTTP_RETRY_TIMEOUT
  seconds (default 500) and then raise a bare TimeoutError. We default it to 60 s (a user's value
  wins) and turn the TimeoutError into a one-line "throttled/unavailable" error.
- The version's download URI (`dbfs:/databricks/mlflow-registry/...`) read through MLflow's DBFS
  repository is not byte-exact (an empty file comes back as `{}`). Files are read the way
  `models:/` downloads read them: the registry's `list-artifacts` and signed download URLs
  (`DatabricksModelsArtifactRepository`'s two developer-stable endpoints), streamed straight into
  the transfer, so no file is staged on disk.
- The workspace registry has no aliases; Unity Catalog has no stages.

`import mlflow` and `import databricks.sdk` cost about 3.5 s and 240 MB together. When a
workspace-registry URI authenticates with a personal access token and nothing else (a profile
with only host and token, or DATABRICKS_HOST/DATABRICKS_TOKEN), the registry is called over REST
with `requests` (`DatabricksRestClient`, a bearer-token `MlflowRestClient`) and neither is
imported. Any other kind of authentication (OAuth, azure-cli, client secrets, a setting we do not
know) keeps the MlflowClient route, which supports them all.
"""

from __future__ import annotations

import configparser
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from amlpromote.core.errors import (
    AmlPromoteError,
    AuthFailed,
    BadInput,
    NotFound,
    OperationFailed,
    Unreachable,
)
from amlpromote.core.refs import ModelRef
from amlpromote.core.registries.mlflow_rest import MlflowRestClient, RestError
from amlpromote.core.retry import (
    RETRYABLE_STATUS,
    RetryPolicy,
    TransientError,
    call_with_retry,
    parse_retry_after,
)
from amlpromote.core.storage.artifacts import (
    ArtifactFile,
    ArtifactSource,
    Chunks,
    RepositorySource,
    response_chunks,
    safe_relative_path,
)
from amlpromote.core.storage.transfer import default_workers
from amlpromote.core.uris import RegistryUri, redact_text

SCHEMES = ("databricks", "databricks-uc")
RETRY_TIMEOUT_ENV = "MLFLOW_DATABRICKS_ENDPOINT_HTTP_RETRY_TIMEOUT"
# Long enough to ride out a burst of throttling, short enough for a CI step to fail promptly.
DEFAULT_RETRY_TIMEOUT_SECONDS = 60
# How long the reachability probe may take before a workspace counts as unreachable.
PROBE_TIMEOUT_SECONDS = 10.0
CONFIG_FILE_ENV = "DATABRICKS_CONFIG_FILE"
# Endpoints of the workspace registry that `models:/` downloads use (mlflow marks both paths
# @developer_stable in databricks_models_artifact_repo.py).
LIST_ARTIFACTS = "/api/2.0/mlflow/model-versions/list-artifacts"
SIGNED_DOWNLOAD_URI = "/api/2.0/mlflow/model-versions/get-signed-download-uri"

# databricks-sdk settings that are not about *which* workspace or *who*: they may stay set
# while a named profile is used.
_NEUTRAL_SDK_SETTINGS = frozenset({
    "config_file", "databricks_cli_path", "debug_truncate_bytes", "debug_headers", "rate_limit",
    "disable_async_token_refresh", "disable_experimental_files_api_client",
    "disable_oauth_refresh_token",
})
# Taking variables out of os.environ is process-wide; one registry call at a time does it.
_ENV_LOCK = threading.RLock()

# What a config-file profile may hold for the REST route: a personal access token and its host.
# The legacy databricks-cli also writes jobs-api-version, which only concerns the Jobs API. Any
# other key (auth_type other than pat, client_id, azure_*, insecure, ...) means databricks-sdk
# would authenticate or connect in a way this route does not reproduce.
_PAT_PROFILE_KEYS = frozenset({"host", "token", "auth_type", "jobs-api-version"})
# The variables the REST route reads for the bare `databricks` URI, and those (databricks-sdk's
# neutral settings) it may ignore; any other DATABRICKS_*, ARM_* or GOOGLE_CREDENTIALS variable
# selects credentials, a workspace detail, or a notebook context (DATABRICKS_RUNTIME_VERSION).
_PAT_ENV = frozenset({"DATABRICKS_HOST", "DATABRICKS_TOKEN", "DATABRICKS_AUTH_TYPE",
                      "DATABRICKS_CONFIG_PROFILE", CONFIG_FILE_ENV})
_NEUTRAL_ENV = frozenset(name.upper() if name.startswith("databricks_")
                         else "DATABRICKS_" + name.upper() for name in _NEUTRAL_SDK_SETTINGS)
_SDK_ENV_PREFIXES = ("DATABRICKS_", "ARM_", "GOOGLE_CREDENTIALS")
# databricks-sdk's pause between retries when the answer has no Retry-After: one second more
# per attempt, at most this many.
_MAX_BACKOFF_SECONDS = 10.0
# How a workspace words a personal access token it does not accept (wrong, expired or revoked).
# It answers HTTP 403, not 401: `{"error_code": 403, "message": "Invalid access token."}` with
# `X-Databricks-Reason-Phrase: Invalid access token.` (captured in public issue
# databricks/databricks-sdk-go#873), or on older workspaces a Jetty HTML page "HTTP ERROR 403 ...
# Reason: Invalid access token." (DataThirstLtd/databricks.vsts.tools#26). Only the words survive
# every route: our REST client maps the numeric code to PERMISSION_DENIED, and mlflow turns the
# SDK's error into an HTTP 500 (FORBIDDEN for the HTML page). Told apart from a valid token
# without permission on the model (403 PERMISSION_DENIED), whose fix is another one.
_TOKEN_REFUSAL_WORDS = ("invalid access token",)
INVALID_ACCESS_TOKEN = "Invalid access token."


def _is_token_refusal(text: str) -> bool:
    lowered = text.lower()
    return any(words in lowered for words in _TOKEN_REFUSAL_WORDS)


class _UnknownErrorCodeToVerbose(logging.Filter):
    """mlflow warns "Received error code not recognized by MLflow: FORBIDDEN, ..." when an
    older workspace refuses a token with its HTML page; the AuthFailed error already says what
    happened, so that line is shown with --verbose only (mlflow's logger at INFO), not as a
    second, misleading line beside the error."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and str(record.msg).startswith(
                "Received error code not recognized by MLflow"):
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger("mlflow").isEnabledFor(logging.INFO)
        return True


def _quiet_unknown_error_codes() -> None:
    logger = logging.getLogger("mlflow.exceptions")
    if not any(isinstance(f, _UnknownErrorCodeToVerbose) for f in logger.filters):
        logger.addFilter(_UnknownErrorCodeToVerbose())


def is_databricks(scheme: str) -> bool:
    return scheme in SCHEMES


def configure_databricks_environment() -> int:
    """Bound databricks-sdk's retrying of 429/503 (a user's own value wins); the seconds.

    Must run before the first Databricks call: mlflow caches the SDK client, and the timeout
    with it, the first time it talks to a workspace.
    """
    value = os.environ.setdefault(RETRY_TIMEOUT_ENV, str(DEFAULT_RETRY_TIMEOUT_SECONDS))
    try:
        seconds = int(value)
        if seconds <= 0:
            raise ValueError(value)
    except ValueError:
        raise BadInput(f"{RETRY_TIMEOUT_ENV}={value!r} is not a positive whole number of seconds",
                       hint=f"set {RETRY_TIMEOUT_ENV} to e.g. {DEFAULT_RETRY_TIMEOUT_SECONDS}, "
                            "or unset it") from None
    return seconds


def _identity_env_names() -> list[str]:
    """The variables with which databricks-sdk chooses the workspace or the credentials."""
    from databricks.sdk.config import Config

    return sorted(attr.env for attr in Config.attributes()
                  if attr.env and attr.name not in _NEUTRAL_SDK_SETTINGS)


def config_file_path() -> Path:
    """~/.databrickscfg, or the file DATABRICKS_CONFIG_FILE names (as databricks-sdk reads it)."""
    return Path(os.environ.get(CONFIG_FILE_ENV) or "~/.databrickscfg").expanduser()


def _config_sections() -> dict[str, dict[str, str]] | None:
    """The profiles of the config file as written (None if there is none or it is unreadable).

    A sentinel default section keeps [DEFAULT] an ordinary profile, as the Databricks CLI and
    SDK treat it, instead of configparser's inherited defaults.
    """
    path = config_file_path()
    parser = configparser.ConfigParser(default_section="\0none", interpolation=None)
    try:
        if not parser.read(path):
            return None
    except (configparser.Error, OSError, UnicodeDecodeError):
        return None
    return {name: dict(parser[name]) for name in parser.sections()}


@dataclass(frozen=True)
class DatabricksRegistry:
    """One Databricks registry URI: which profile, which workspace, and how to call it."""

    uri: str
    scheme: str
    profile: str | None  # None: DATABRICKS_* variables, then the DEFAULT profile

    @classmethod
    def of(cls, uri: RegistryUri) -> DatabricksRegistry:
        netloc = urlsplit(uri.uri).netloc if "://" in uri.uri else ""
        return cls(uri.uri, uri.scheme, unquote(netloc) or None)

    @property
    def unity_catalog(self) -> bool:
        return self.scheme == "databricks-uc"

    @property
    def tracking_uri(self) -> str:
        """The workspace URI for MLflow's tracking side (Unity Catalog keeps runs there too)."""
        return f"databricks://{self.profile}" if self.profile else "databricks"

    @property
    def registry_uri(self) -> str:
        base = "databricks-uc" if self.unity_catalog else "databricks"
        return f"{base}://{self.profile}" if self.profile else base

    # -- which workspace --------------------------------------------------------------------

    def host(self) -> str | None:
        """The workspace URL this registry resolves to, for messages (never a credential)."""
        sections = _config_sections() or {}
        if self.profile:
            return sections.get(self.profile, {}).get("host")
        env_profile = os.environ.get("DATABRICKS_CONFIG_PROFILE")
        if os.environ.get("DATABRICKS_HOST"):
            return os.environ["DATABRICKS_HOST"]
        return sections.get(env_profile or "DEFAULT", {}).get("host")

    def describe(self) -> str:
        """E.g. "Databricks workspace https://adb-1.azuredatabricks.net (profile prod)"."""
        host = self.host() or "(host unknown)"
        if self.profile:
            where = f"profile {self.profile}"
        elif os.environ.get("DATABRICKS_HOST"):
            where = "DATABRICKS_HOST"
        else:
            where = f"profile {os.environ.get('DATABRICKS_CONFIG_PROFILE') or 'DEFAULT'}"
        return f"Databricks workspace {redact_text(host)} ({where})"

    def credentials_hint(self) -> str:
        """What a user fixes when the workspace refuses the credentials."""
        config = _display_path(config_file_path())
        if self.profile:
            return (f"check the token in {config} profile {self.profile} (create a new personal "
                    f"access token in the workspace, or run `databricks auth login --profile "
                    f"{self.profile}`)")
        return (f"check DATABRICKS_TOKEN (and DATABRICKS_HOST), or the DEFAULT profile in "
                f"{config}; create a new personal access token in the workspace")

    def require_configured(self) -> None:
        """Fail early, with the fix, when no workspace is configured for this URI.

        Without this mlflow logs a warning about the SDK, falls back to its legacy reader and
        ends in a message that names neither the file nor the profile.
        """
        if self.profile and ":" in self.profile:
            return  # databricks://scope:prefix: secret-scope credentials, inside Databricks only
        sections = _config_sections()
        config = _display_path(config_file_path())
        if self.profile:
            if sections is None or self.profile not in sections:
                known = ", ".join(sorted(sections)) if sections else "none"
                raise NotFound(f"no profile '{self.profile}' in {config} (registry {self.uri})",
                               hint=f"add it with `databricks configure --profile "
                                    f"{self.profile}` (host and token); profiles there: {known}")
            return
        env_profile = os.environ.get("DATABRICKS_CONFIG_PROFILE")
        if os.environ.get("DATABRICKS_HOST") or os.environ.get("DATABRICKS_RUNTIME_VERSION"):
            return  # the environment names the workspace, or we run inside one (notebook auth)
        wanted = env_profile or "DEFAULT"
        if sections is None or wanted not in sections:
            raise BadInput(f"no Databricks workspace configured for '{self.uri}'",
                           hint=f"set DATABRICKS_HOST and DATABRICKS_TOKEN, add a [{wanted}] "
                                f"profile to {config}, or name one: {self.scheme}://PROFILE")

    def personal_access_token(self) -> tuple[str, str] | None:
        """(host, token) when this workspace-registry URI authenticates with a personal access
        token and nothing else, resolved as databricks-sdk would; None for anything else.

        A named profile is read alone (its DATABRICKS_* overrides are contained away). The bare
        URI takes DATABRICKS_HOST/DATABRICKS_TOKEN; the config file's profile
        (DATABRICKS_CONFIG_PROFILE, else DEFAULT) fills in only when the environment names no
        host or token, or names a profile, and the environment wins over the file. The token is
        never part of a message.
        """
        if self.unity_catalog:
            return None
        if self.profile:
            if ":" in self.profile:
                return None  # secret-scope credentials, resolved by mlflow inside Databricks
            fields = (_config_sections() or {}).get(self.profile)
            if fields is None:
                return None
        else:
            env = {key: value for key, value in os.environ.items()
                   if key.startswith(_SDK_ENV_PREFIXES) and value}  # the SDK skips empty ones
            if set(env) - _PAT_ENV - _NEUTRAL_ENV:
                return None
            fields = {name: env[key] for name, key in (("host", "DATABRICKS_HOST"),
                                                       ("token", "DATABRICKS_TOKEN"),
                                                       ("auth_type", "DATABRICKS_AUTH_TYPE"))
                      if key in env}
            env_profile = env.get("DATABRICKS_CONFIG_PROFILE")
            if env_profile or not fields.keys() & {"host", "token"}:
                sections = _config_sections()
                # [__settings__] default_profile picks another default: not ours to reproduce.
                if sections is None or "__settings__" in sections:
                    return None
                section = sections.get(env_profile or "DEFAULT")
                if section is None:
                    return None
                fields = {**section, **fields}
        if not fields.keys() <= _PAT_PROFILE_KEYS:
            return None
        if (fields.get("auth_type") or "pat").strip() != "pat":
            return None
        host = (fields.get("host") or "").strip().rstrip("/")
        token = (fields.get("token") or "").strip()
        if not host or not token:
            return None
        return (host if "://" in host else "https://" + host), token

    def rest_client(self) -> DatabricksRestClient | None:
        """A REST client for this registry when it uses a personal access token, else None."""
        credentials = self.personal_access_token()
        if credentials is None:
            return None
        return DatabricksRestClient(*credentials, retry_seconds=configure_databricks_environment())

    # -- calling it -------------------------------------------------------------------------

    @contextmanager
    def contained(self) -> Iterator[None]:
        """Run one call against this registry with only its own profile in effect.

        For a named profile the DATABRICKS_* (and ARM_*) variables that would override the
        profile's host or credentials are removed for the duration of the call and restored
        after. Callers that also need `mlflow_globals` enter it *before* this (one lock order).
        """
        configure_databricks_environment()
        with _ENV_LOCK:
            saved: dict[str, str] = {}
            if self.profile:
                for key in _identity_env_names():
                    if key in os.environ and key != CONFIG_FILE_ENV:
                        saved[key] = os.environ.pop(key)
            try:
                yield
            finally:
                os.environ.update(saved)

    def translate(self, exc: BaseException, what: str) -> AmlPromoteError | None:
        """The Databricks-specific reading of a failure; None when the generic one fits."""
        if isinstance(exc, AmlPromoteError):
            return None
        if isinstance(exc, TimeoutError):
            return self.throttled(what)
        code = str(getattr(exc, "error_code", "") or "")
        try:
            status = exc.get_http_status_code()  # type: ignore[attr-defined]
        except Exception:
            status = None
        message = str(getattr(exc, "message", None) or exc)
        if _is_token_refusal(message):
            # What the workspace sent was a 403, whatever status the library reports.
            return self.refused(what, 401 if status == 401 else 403, message)
        if code == "UNAUTHENTICATED" or status == 401:
            return self.refused(what, 401)
        if code == "PERMISSION_DENIED" or status == 403:
            return self.refused(what, 403, message)
        if isinstance(exc, RestError) and status in (429, 503):
            # DatabricksRestClient gives up on 429/503 only once the retry window is spent.
            return self.throttled(what)
        if isinstance(exc, RestError) and _dropped_connection(exc):
            # DatabricksRestClient retried the dropped connection for the whole window.
            seconds = os.environ.get(RETRY_TIMEOUT_ENV, str(DEFAULT_RETRY_TIMEOUT_SECONDS))
            return Unreachable(f"{what}: cannot reach {self.describe()}: the connection was "
                               f"dropped on every try for {seconds} s",
                               hint="check the host in the profile (or DATABRICKS_HOST), the "
                                    f"proxy and the network; to wait longer set "
                                    f"{RETRY_TIMEOUT_ENV} (seconds)")
        if "Reading Databricks credential configuration failed" in message:
            return BadInput(f"{what}: no usable credentials for {self.describe()}",
                            hint=self.credentials_hint())
        return None

    def refused(self, what: str, status: int, detail: str = "") -> AuthFailed:
        """The workspace's 401/403; `detail` (its error text, never shown) tells a refused
        token from a valid token without permission. Neither message repeats the answer's
        body: an older workspace's is an HTML page."""
        if status == 403 and not _is_token_refusal(detail):
            return AuthFailed(f"{what}: {self.describe()} refused access (HTTP 403)",
                              hint="the token's user may not read this model; ask for CAN READ "
                                   "on it, or " + self.credentials_hint())
        return AuthFailed(f"{what}: {self.describe()} refused the token (HTTP {status}): it is "
                          "expired, revoked or wrong", hint=self.credentials_hint())

    def throttled(self, what: str) -> OperationFailed:
        seconds = os.environ.get(RETRY_TIMEOUT_ENV, str(DEFAULT_RETRY_TIMEOUT_SECONDS))
        return OperationFailed(
            f"{what}: {self.describe()} stayed throttled/unavailable (HTTP 429/503, or no answer) "
            f"for {seconds} s of retries",
            hint=f"try again later; to wait longer set {RETRY_TIMEOUT_ENV} (seconds)")

    def check_ref(self, ref: ModelRef) -> None:
        """Refuse, before any call, a reference this kind of registry cannot have."""
        if self.unity_catalog:
            parts = ref.name.split(".")
            if len(parts) != 3 or not all(p.strip() for p in parts):
                raise BadInput(f"'{ref.name}' is not a Unity Catalog model name",
                               hint="write catalog.schema.model, e.g. main.fraud.scorer/3 or "
                                    "main.fraud.scorer@champion")
            if ref.stage:
                raise BadInput(f"'{ref}': Unity Catalog models have no stages",
                               hint="name a version (NAME/VERSION) or an alias (NAME@ALIAS)")
        elif ref.alias:
            raise BadInput(f"'{ref}': the Databricks workspace model registry has no aliases",
                           hint="name a version (NAME/VERSION), NAME/latest or a stage "
                                "(NAME/Production); aliases exist in Unity Catalog "
                                "(databricks-uc://PROFILE)")

    # -- files ------------------------------------------------------------------------------

    def artifact_uri(self, name: str, version: str) -> str:
        """A `models:/` URI for the version, carrying the profile (no global URI needed)."""
        if self.unity_catalog:
            # mlflow puts no profile into UC model URIs; the repository gets the registry URI.
            return f"models:/{name}/{version}"
        # mlflow's add_databricks_profile_info_to_artifact_uri writes the same, without the
        # import: `models://PROFILE@databricks/...`, or `models://databricks/...`.
        where = f"{self.profile}@databricks" if self.profile else "databricks"
        return f"models://{where}/{name}/{version}"

    def artifact_source(self, uri: str, rest: DatabricksRestClient | None = None) \
            -> ArtifactSource:
        """The files of a `models:` URI; a workspace registry's through `rest` when the
        registry is reached over REST (the registry calls' own client and session)."""
        name, version = _name_and_version(uri)
        if self.unity_catalog:
            return UnityCatalogVersionSource(self, uri, name, version)
        return WorkspaceVersionSource(self, name, version, rest)

    def repository(self, uri: str) -> Any:
        """MLflow's artifact repository for `uri`, bound to this registry's URIs."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        with self.calling(f"opening {uri}"):
            return get_artifact_repository(uri, tracking_uri=self.tracking_uri,
                                           registry_uri=self.registry_uri)

    @contextmanager
    def calling(self, what: str, contain: bool = True) -> Iterator[None]:
        """An MLflow call outside `MlflowRegistry.call`: global URIs, containment, errors.

        `contain=False` only translates errors, for calls that read no environment (see
        `WorkspaceVersionSource._api`).
        """
        from amlpromote.core.registries.mlflow_env import mlflow_globals, translate_mlflow_error

        try:
            if contain:
                # The UC repository builds `MlflowClient(registry_uri=...)` on the *global*
                # tracking URI; point it at this workspace rather than at ./mlflow.db.
                with mlflow_globals(self.tracking_uri), self.contained():
                    yield
            else:
                yield
        except AmlPromoteError:
            raise
        except Exception as exc:
            mapped = self.translate(exc, what)
            if mapped is not None:
                raise mapped from exc
            if _is_library_error(exc):
                raise translate_mlflow_error(exc, what, self.uri) from exc
            raise

    def client(self, rest: bool = False) -> DatabricksClient:
        """The registry's client: `DatabricksRestClient` when `rest` (the caller checked
        `personal_access_token`), else MLflow's `MlflowClient` through databricks-sdk."""
        self.require_configured()
        configure_databricks_environment()
        self.require_reachable()
        if rest:
            client = self.rest_client()
            if client is None:
                raise BadInput(f"the credentials of {self.describe()} changed while amlpromote "
                               "ran", hint="run again")
            # It reads no environment after this point: nothing to contain.
            return DatabricksClient(self, client, contain=False)
        from mlflow import MlflowClient

        _quiet_unknown_error_codes()
        return DatabricksClient(self, MlflowClient(tracking_uri=self.tracking_uri,
                                                   registry_uri=self.registry_uri))

    def require_reachable(self, timeout: float = PROBE_TIMEOUT_SECONDS) -> None:
        """Fail fast when the workspace cannot be reached at all.

        databricks-sdk retries a refused or timed-out connection for the whole retry window,
        and MLflow retries the SDK call again on top, so a wrong host or a down network would
        hang a CI step for minutes per call. One TCP connect (through the proxy the
        environment names, if any, which then does the reaching) tells us in seconds.
        """
        import socket
        import urllib.request

        host = self.host()
        if not host:
            return  # the SDK resolves it some other way (e.g. a config-file-less auth type)
        parts = urlsplit(host if "://" in host else "https://" + host)
        if not parts.hostname:
            return
        scheme = parts.scheme or "https"
        proxy = urllib.request.getproxies().get(scheme)
        if proxy and not urllib.request.proxy_bypass(parts.hostname):
            return  # reached through a proxy: the connection attempt is the proxy's to make
        port = parts.port or (443 if scheme == "https" else 80)
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
        except OSError as exc:
            raise Unreachable(f"cannot reach {self.describe()}: {exc.strerror or exc}",
                              hint="check the host in the profile (or DATABRICKS_HOST) and the "
                                   "network") from None


def _dropped_connection(exc: BaseException) -> bool:
    """Whether a REST failure was the connection itself (reset, refused, timed out)."""
    import requests

    return isinstance(exc.__cause__, (requests.exceptions.ConnectionError,
                                      requests.exceptions.Timeout,
                                      requests.exceptions.ChunkedEncodingError))


def _display_path(path: Path) -> str:
    try:
        return "~/" + path.relative_to(Path.home()).as_posix()
    except ValueError:
        return str(path)


def _is_library_error(exc: BaseException) -> bool:
    root = exc.__class__.__module__.split(".")[0]
    return isinstance(exc, OSError) or root in ("mlflow", "databricks", "requests", "urllib3")


def _name_and_version(uri: str) -> tuple[str, str]:
    """(name, version) of `models:/NAME/VERSION` or `models://PROFILE@databricks/NAME/VERSION`."""
    parts = urlsplit(uri)
    name, _, version = unquote(parts.path).strip("/").rpartition("/")
    if parts.scheme != "models" or not name or not version.isdigit():
        raise OperationFailed(f"not a model version URI: {redact_text(uri)}",
                              hint="this is a bug in amlpromote; run with --verbose and report it")
    return name, version


class DatabricksRestClient(MlflowRestClient):
    """`MlflowRestClient` for a workspace reached with a personal access token.

    It retries the way databricks-sdk does on the MlflowClient route: 429/503 (and dropped
    connections) after Retry-After, else a pause one second longer per attempt, until
    MLFLOW_DATABRICKS_ENDPOINT_HTTP_RETRY_TIMEOUT seconds have passed since the call's first
    failure; `DatabricksRegistry.translate` then says "throttled". `get_json` makes the
    registry's artifact calls (list-artifacts, signed URLs) with the same session.
    """

    def __init__(self, host: str, token: str, *, retry_seconds: float) -> None:
        bearer = f"Bearer {token}"
        # Every transfer worker asks for its signed URLs through this client: a pool smaller
        # than the workers would make urllib3 warn "Connection pool is full" on stderr.
        super().__init__(host, auth_header=lambda: bearer,
                         pool_size=max(16, default_workers()))
        self.retry_seconds = retry_seconds
        # Transfer workers share the client; each call's retry window is its own.
        self._calls = threading.local()

    def __repr__(self) -> str:
        return f"DatabricksRestClient({self.endpoint.base_url!r})"  # never the token

    def _pause(self, failures: int, retry_after: float | None, slept: float) -> float | None:
        now = time.monotonic()
        if failures == 1:
            self._calls.first_failure = now
        first = getattr(self._calls, "first_failure", now)
        pause = max(retry_after, 0.0) if retry_after is not None \
            else min(float(failures), _MAX_BACKOFF_SECONDS)
        if now - first + pause > self.retry_seconds:
            return None
        return pause

    def get_json(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        """GET one workspace API path (e.g. LIST_ARTIFACTS); the JSON answer, or RestError."""
        return self._call("GET", path, dict(params))


class DatabricksClient:
    """A client for one Databricks registry whose Databricks-specific failures (401/403,
    throttling, the SDK's TimeoutError) get Databricks messages; an `MlflowClient`'s calls are
    also contained (`DatabricksRegistry.contained`).

    `MlflowRegistry.call` still wraps each call (global URIs, generic error mapping)."""

    def __init__(self, registry: DatabricksRegistry, client: Any, *, contain: bool = True) -> None:
        self._registry = registry
        self._client = client
        self._contain = contain

    @property
    def rest(self) -> DatabricksRestClient | None:
        """The REST client behind this one, if the registry is reached over REST."""
        return self._client if isinstance(self._client, DatabricksRestClient) else None

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute
        registry = self._registry
        contain = self._contain

        def contained_call(*args: Any, **kwargs: Any) -> Any:
            with registry.contained() if contain else nullcontext():
                try:
                    return attribute(*args, **kwargs)
                except Exception as exc:
                    mapped = registry.translate(exc, name.replace("_", " "))
                    if mapped is not None:
                        raise mapped from exc
                    raise

        return contained_call


class WorkspaceVersionSource:
    """The files of one workspace-registry version, listed by the registry and streamed from
    the signed URLs it hands out (byte-exact, nothing staged on disk)."""

    def __init__(self, registry: DatabricksRegistry, name: str, version: str,
                 rest: DatabricksRestClient | None = None) -> None:
        self.registry = registry
        self.name = name
        self.version = version
        self.description = f"{registry.describe()} model {name} version {version}"
        self._lock = threading.Lock()
        self._session: Any = None
        self._creds: Any = None
        self._warm = False
        self._rest = rest

    def _not_found_hint(self) -> str:
        return (f"check the model name and version: amlpromote models show {self.name} "
                f"--from source --source {self.registry.uri}")

    def _api(self, endpoint: str, params: dict[str, str], what: str) -> dict[str, Any]:
        if self._rest is not None:
            return self._rest_api(self._rest, endpoint, params, what)
        return self._mlflow_api(endpoint, params, what)

    def _rest_api(self, rest: DatabricksRestClient, endpoint: str, params: dict[str, str],
                  what: str) -> dict[str, Any]:
        try:
            return rest.get_json(endpoint, params)
        except RestError as exc:
            mapped = self.registry.translate(exc, what)
            if mapped is not None:
                raise mapped from exc
            if exc.get_http_status_code() == 404:
                detail = (redact_text(exc.message).strip().splitlines() or ["HTTP 404"])[0]
                raise NotFound(f"{what}: {detail[:300]}", hint=self._not_found_hint()) from exc
            from amlpromote.core.registries.mlflow_env import translate_mlflow_error

            raise translate_mlflow_error(exc, what, self.registry.uri) from exc

    def _mlflow_api(self, endpoint: str, params: dict[str, str], what: str) -> dict[str, Any]:
        from mlflow.utils.databricks_utils import get_databricks_host_creds
        from mlflow.utils.rest_utils import http_request

        # Resolving credentials builds a databricks-sdk client from the environment and probes
        # the workspace's host metadata: once per source, not once per file. mlflow then caches
        # the SDK client for those credentials, so after the first successful call no call
        # reads the environment and the signed-URL requests of parallel workers need not queue
        # behind the containment lock.
        with self._lock:
            if self._creds is None:
                with self.registry.calling(what):
                    self._creds = get_databricks_host_creds(self.registry.tracking_uri)
            creds, warm = self._creds, self._warm
        with self.registry.calling(what, contain=not warm):
            response = http_request(creds, endpoint, "GET", params=params)
        status = int(response.status_code)
        self._warm = True
        if status == 200:
            document: dict[str, Any] = response.json() if response.content else {}
            return document
        detail = _error_detail(response)
        if _is_token_refusal(detail) or (status == 403 and _is_token_refusal(_body_text(response))):
            # mlflow hands the SDK's refusal back as an HTTP 500; without the SDK the raw 403
            # (JSON or an HTML page) arrives.
            raise self.registry.refused(what, 401 if status == 401 else 403, INVALID_ACCESS_TOKEN)
        if status in (401, 403):
            raise self.registry.refused(what, status, detail)
        if status == 404:
            raise NotFound(f"{what}: {detail or 'HTTP 404'}", hint=self._not_found_hint())
        if status in RETRYABLE_STATUS:
            raise TransientError(f"{what}: HTTP {status}",
                                 retry_after=parse_retry_after(response.headers.get("Retry-After")))
        raise OperationFailed(f"{what}: HTTP {status} {detail}".strip(),
                              hint="run again with --verbose for details about "
                                   f"{self.registry.uri}")

    def list_files(self) -> list[ArtifactFile]:
        policy = RetryPolicy.from_env()
        files: list[ArtifactFile] = []
        pending = [""]
        seen = {""}
        while pending:
            folder = pending.pop()
            token: str | None = None
            while True:
                params = {"name": self.name, "version": self.version, "path": folder}
                if token:
                    params["page_token"] = token
                what = f"listing the files of {self.name} version {self.version}"

                def fetch(params: dict[str, str] = params, what: str = what) -> dict[str, Any]:
                    return self._api(LIST_ARTIFACTS, params, what)

                page = call_with_retry(fetch, policy)
                entries = page.get("files") or []
                for entry in entries:
                    rel = safe_relative_path(str(entry["path"]))
                    if entry.get("is_dir"):
                        # A listing that names a folder twice (or itself) must not loop forever.
                        if rel not in seen:
                            seen.add(rel)
                            pending.append(rel)
                    elif rel != folder:
                        size = entry.get("file_size")
                        files.append(ArtifactFile(rel, int(size) if size is not None else None))
                token = page.get("next_page_token")
                if not entries or not token:
                    break
        return sorted(files, key=lambda f: f.path)

    def _http(self) -> Any:
        with self._lock:
            if self._session is None:
                import requests
                from requests.adapters import HTTPAdapter

                session = requests.Session()
                adapter = HTTPAdapter(pool_connections=16, pool_maxsize=16, max_retries=0)
                session.mount("https://", adapter)
                session.mount("http://", adapter)
                self._session = session
            return self._session

    @contextmanager
    def open(self, path: str) -> Iterator[Chunks]:
        import requests

        rel = safe_relative_path(path)
        # A fresh signed URL per attempt: a retried file never meets an expired one.
        signed = self._api(SIGNED_DOWNLOAD_URI,
                           {"name": self.name, "version": self.version, "path": rel},
                           f"asking for a download URL of {rel}")
        url = signed.get("signed_uri")
        if not url:
            raise OperationFailed(f"{self.registry.describe()} gave no download URL for {rel}",
                                  hint="run again; if it persists, check the model version")
        headers = {str(h["name"]): str(h["value"]) for h in signed.get("headers") or []
                   if "name" in h and "value" in h}
        # The URL carries a signature: it never appears in a message, only the file's path.
        try:
            response = self._http().get(url, headers=headers, stream=True, timeout=(10, 300))
        except requests.exceptions.SSLError as exc:
            raise OperationFailed(f"TLS failure downloading {rel} from its signed URL",
                                  hint="set REQUESTS_CA_BUNDLE to a bundle that trusts the "
                                       "storage's certificate") from exc
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise TransientError(f"downloading {rel}: connection failed "
                                 f"({exc.__class__.__name__})") from exc
        try:
            status = response.status_code
            if status in RETRYABLE_STATUS:
                raise TransientError(f"downloading {rel}: HTTP {status}",
                                     retry_after=parse_retry_after(
                                         response.headers.get("Retry-After")))
            if status in (401, 403):
                # Storage refuses an expired or clock-skewed signature: ask for a new URL.
                raise TransientError(f"downloading {rel}: the signed URL was refused "
                                     f"(HTTP {status})")
            if status == 404:
                raise NotFound(f"{rel} of {self.name} version {self.version} is missing from "
                               "the workspace's storage",
                               hint="the version's files were deleted; nothing can be copied")
            if status >= 400:
                raise OperationFailed(f"downloading {rel}: HTTP {status}",
                                      hint="see the storage's error; run again with --verbose")
            yield response_chunks(response, rel)
        finally:
            response.close()


def _body_text(response: Any) -> str:
    try:
        return str(response.text or "")
    except Exception:
        return ""


def _error_detail(response: Any) -> str:
    try:
        document = response.json()
        text = str(document.get("message") or document.get("error_code") or "")
    except Exception:
        text = ""
    return redact_text(text).strip().replace("\n", " ")[:300]


class UnityCatalogVersionSource(RepositorySource):
    """The files of one Unity Catalog version, through MLflow's UC artifact repository (which
    fetches temporary storage credentials); each file lands in a temporary folder first."""

    def __init__(self, registry: DatabricksRegistry, uri: str, name: str, version: str) -> None:
        super().__init__(uri, registry.repository, calling=registry.calling)
        self.description = f"{registry.describe()} Unity Catalog model {name} version {version}"


def check_source_ref(source: RegistryUri, ref: ModelRef) -> None:
    """Refuse a reference the source registry cannot have (no-op for non-Databricks sources)."""
    if is_databricks(source.scheme):
        DatabricksRegistry.of(source).check_ref(ref)
