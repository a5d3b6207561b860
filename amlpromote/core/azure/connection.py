"""Azure: credentials, Azure ML workspace/registry discovery, and MLflow clients bound to them.

The user names how to sign in (`--credential default|cli|managed-identity|environment|
device-code`); every Azure call of one registry then uses that one credential: Azure Resource
Manager (azure-ai-ml's `MLClient`, which turns a workspace's coordinates into its MLflow tracking
URI), the Azure ML MLflow REST API and the artifact services (core/storage/azure_blob.py).

Azure ML's MLflow API (workspaces and registries alike) is MLflow's REST API under
`/mlflow/v2.0/<resource id>`, taking a bearer token for Resource Manager's scope.
`rest_client` (core/registries/azureml_workspace.py) calls it through `MlflowRestClient` with
the chosen credential's token; `AzureMlConnection` here supplies that token. Going through
azureml-mlflow instead would cost an mlflow import (~2.5 s, ~200 MB) and would sign in with that
library's own chain, which ends in an interactive browser and a device-code prompt that a CI job
must never meet.

azure-ai-ml registers the workspace URI in azureml-mlflow's global cache of "service contexts" as
a side effect of `workspaces.get()`; discovery puts the cache back as it found it, so other code
in the process sees what it would have seen without us.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from amlpromote.core.errors import (
    AmlPromoteError,
    AuthFailed,
    BadInput,
    NotFound,
    OperationFailed,
    Unreachable,
)
from amlpromote.core.uris import redact_text

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken, TokenCredential

CREDENTIAL_KINDS = ("default", "cli", "managed-identity", "environment", "device-code")
PROVIDER = "Microsoft.MachineLearningServices"
_SCOPE_PATH = re.compile(
    r"^/mlflow/v(?P<api>[12])\.0/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
    rf"/providers/{re.escape(PROVIDER)}/(?P<kind>workspaces|registries)/(?P<name>[^/]+)/?$",
    re.IGNORECASE,
)
_CACHE_LOCK = threading.RLock()


# -- credentials ----------------------------------------------------------------------------------


def identity_description(credential_kind: str | None) -> str:
    """Who is signing in, in words a user recognises (never a secret)."""
    kind = credential_kind or "default"
    client_id = os.environ.get("AZURE_CLIENT_ID")
    if kind == "managed-identity":
        which = f"user-assigned, client id {client_id}" if client_id else "system-assigned"
        if os.environ.get("IDENTITY_ENDPOINT"):
            where = "App Service/Container Apps endpoint"
        elif os.environ.get("MSI_ENDPOINT"):
            where = "Cloud Shell/legacy endpoint"
        else:
            where = "instance metadata service"
        return f"the managed identity ({which}, {where})"
    if kind == "cli":
        return "the Azure CLI sign-in (az login)"
    if kind == "environment":
        who = f"client id {client_id}" if client_id else "AZURE_CLIENT_ID not set"
        return f"the service principal from AZURE_TENANT_ID/AZURE_CLIENT_ID/... ({who})"
    if kind == "device-code":
        return "the device-code sign-in"
    return ("DefaultAzureCredential (environment service principal, workload identity, managed "
            "identity, Azure CLI, ...; never a browser)")


def credential_hint(credential_kind: str | None) -> str:
    """What to do when the credential got no token."""
    kind = credential_kind or "default"
    if kind == "managed-identity":
        return ("run where a managed identity is assigned (Azure VM, App Service, Container Apps, "
                "AKS); for a user-assigned identity set AZURE_CLIENT_ID; elsewhere choose "
                "--credential environment or cli")
    if kind == "cli":
        return "run az login (and az account set --subscription ...), or choose --credential " \
               "environment in CI"
    if kind == "environment":
        return ("set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (or "
                "AZURE_CLIENT_CERTIFICATE_PATH) for a service principal, or choose "
                "--credential cli")
    if kind == "device-code":
        return "complete the sign-in at the address shown, or choose --credential cli"
    return ("run az login, set AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET, or choose "
            "--credential managed-identity on an Azure host")


class NamedCredential:
    """A TokenCredential that knows which kind it is, and fails as AuthFailed.

    azure-identity raises `ClientAuthenticationError` with the whole chain's story; MLflow and
    azure-core pass such errors on untouched, so this is the one place they become a one-line
    message naming the identity and a hint, wherever the token was asked for.
    """

    def __init__(self, inner: TokenCredential, kind: str) -> None:
        self.inner = inner
        self.kind = kind

    @property
    def description(self) -> str:
        return identity_description(self.kind)

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        with self._translated():
            return self.inner.get_token(*scopes, **kwargs)

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        inner: Any = self.inner
        with self._translated():
            if hasattr(inner, "get_token_info"):
                return inner.get_token_info(*scopes, options=options)
            from azure.core.credentials import AccessTokenInfo

            token = inner.get_token(*scopes)
            return AccessTokenInfo(token.token, token.expires_on)

    @contextmanager
    def _translated(self) -> Iterator[None]:
        from azure.core.exceptions import ClientAuthenticationError

        try:
            yield
        except ClientAuthenticationError as exc:
            raise AuthFailed(f"{self.description} could not get an Azure token: "
                             f"{_token_failure(exc)}",
                             hint=credential_hint(self.kind)) from None

    def close(self) -> None:
        close: Callable[[], None] | None = getattr(self.inner, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> NamedCredential:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_UNAVAILABLE = ("unavailable", "not found", "not installed", "could not be found", "requires",
                "not configured", "no accounts", "not available")


def _token_failure(exc: Exception) -> str:
    """The informative part of azure-identity's (often multi-line) failure, on one line."""
    text = redact_text(str(getattr(exc, "message", None) or exc))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return exc.__class__.__name__
    # A chain lists every credential; the ones that were really tried say why they failed.
    tried = [line for line in lines[1:]
             if re.match(r"^[A-Za-z_]+Credential: ", line)
             and not any(word in line.lower() for word in _UNAVAILABLE)]
    if not tried:
        tried = [line for line in lines[1:] if line.startswith("ManagedIdentityCredential: ")]
    summary = "; ".join(tried[:2]) or lines[0]
    summary = re.sub(r"\s*Visit https://aka\.ms/\S+.*$", "", summary)
    return summary[:300] + ("..." if len(summary) > 300 else "")


def make_credential(kind: str | None) -> NamedCredential:
    """The azure-identity credential for `kind` (None: default); never an interactive browser."""
    kind = (kind or "default").strip().lower()
    if kind not in CREDENTIAL_KINDS:
        raise BadInput(f"unknown credential '{kind}'",
                       hint="choose one of: " + ", ".join(CREDENTIAL_KINDS))
    import azure.identity as identity

    inner: TokenCredential
    if kind == "default":
        # No browser and no broker window: a CI job would hang on them.
        inner = identity.DefaultAzureCredential(exclude_interactive_browser_credential=True,
                                                exclude_broker_credential=True)
    elif kind == "cli":
        inner = identity.AzureCliCredential()
    elif kind == "managed-identity":
        inner = identity.ManagedIdentityCredential(
            client_id=os.environ.get("AZURE_CLIENT_ID") or None)
    elif kind == "environment":
        inner = identity.EnvironmentCredential()
    else:
        if not (sys.stdin.isatty() and sys.stderr.isatty()):
            raise BadInput("--credential device-code needs an interactive terminal",
                           hint="in CI or cron choose --credential environment (a service "
                                "principal) or managed-identity")
        inner = identity.DeviceCodeCredential(prompt_callback=_device_code_prompt)
    return NamedCredential(inner, kind)


def _device_code_prompt(verification_uri: str, user_code: str, expires_on: Any) -> None:
    # stderr: stdout carries the command's result (and must stay one JSON document).
    print(f"To sign in, open {verification_uri} and enter the code {user_code}",
          file=sys.stderr, flush=True)


# -- Azure Resource Manager: coordinates -> MLflow tracking URI ----------------------------------


def workspace_tracking_uri(subscription: str, resource_group: str, workspace: str,
                           credential: NamedCredential | TokenCredential) -> str:
    """The workspace's MLflow tracking URI, as `MLClient(...).workspaces.get(ws)` reports it."""
    from azure.ai.ml import MLClient

    where = (f"Azure ML workspace '{workspace}' (resource group '{resource_group}', "
             f"subscription {subscription})")
    with _arm_errors(credential, where, subscription=subscription,
                     resource_group=resource_group, workspace=workspace), \
            _service_contexts_restored():
        client = MLClient(credential, subscription, resource_group, workspace)
        found = client.workspaces.get(workspace)
    uri = getattr(found, "mlflow_tracking_uri", None)
    if not uri:
        raise OperationFailed(f"{where} reports no MLflow tracking URI",
                              hint="check the workspace in the Azure portal; it may still be "
                                   "provisioning")
    return str(uri)


def registry_tracking_uri(registry: str, credential: NamedCredential | TokenCredential, *,
                          subscription: str | None = None,
                          resource_group: str | None = None) -> str:
    """The MLflow URI of an Azure ML registry (shared across workspaces).

    Without subscription and resource group, azure-ai-ml finds them through the registry
    discovery service, as `MLClient(credential, registry_name=...)` always does.
    """
    from azure.ai.ml import MLClient

    where = f"Azure ML registry '{registry}'"
    with _arm_errors(credential, where, subscription=subscription,
                     resource_group=resource_group, registry=registry), \
            _service_contexts_restored():
        client = MLClient(credential, subscription_id=subscription,
                          resource_group_name=resource_group, registry_name=registry)
        found = client.registries.get(registry)
    uri = getattr(found, "mlflow_registry_uri", None)
    if not uri:
        raise OperationFailed(f"{where} reports no MLflow registry URI",
                              hint="check the registry in the Azure portal")
    # ARM reports the MLflow 1 API path; azureml-mlflow serves MLflow 2/3 clients under v2.0
    # (what it does to workspace URIs in get_mlflow_tracking_uri_v2).
    return str(uri).replace("/mlflow/v1.0/", "/mlflow/v2.0/")


@contextmanager
def _arm_errors(credential: Any, where: str, **coordinates: str | None) -> Iterator[None]:
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ServiceRequestError,
        ServiceResponseError,
    )

    kind = getattr(credential, "kind", None)
    who = identity_description(kind)
    try:
        yield
    except AmlPromoteError:
        raise
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise Unreachable(f"cannot reach Azure Resource Manager for {where} "
                          f"({exc.__class__.__name__})",
                          hint="check the network, the proxy settings and AZUREML_CURRENT_CLOUD") \
            from None
    except ClientAuthenticationError as exc:
        status = getattr(exc, "status_code", None)
        if status is None:  # raised by a credential that is not a NamedCredential
            raise AuthFailed(f"{who} could not get an Azure token: {_token_failure(exc)}",
                             hint=credential_hint(kind)) from None
        raise _http_failure(exc, who, kind, where, coordinates) from None
    except HttpResponseError as exc:
        raise _http_failure(exc, who, kind, where, coordinates) from None
    except Exception as exc:
        # azure-ai-ml validates names client-side (ValidationException) before any request.
        if exc.__class__.__name__ == "ValidationException":
            raise BadInput(f"{where}: {redact_text(str(exc)).splitlines()[0][:300]}",
                           hint="check the subscription id, resource group and name") from None
        raise


def _azure_error(exc: Any) -> tuple[str, str]:
    """(code, message) of an Azure error response, as far as it can be read."""
    code = ""
    message = ""
    error = getattr(exc, "error", None)
    if error is not None:
        code = str(getattr(error, "code", "") or "")
        message = str(getattr(error, "message", "") or "")
    response = getattr(exc, "response", None)
    if (not code or not message) and response is not None:
        try:
            body = response.json()
            inner = body.get("error", body) if isinstance(body, dict) else {}
            code = code or str(inner.get("code") or "")
            message = message or str(inner.get("message") or "")
            nested = (inner.get("innerError") or {}).get("code") if isinstance(inner, dict) \
                else None
            if code in ("UserError", "ServiceError") and nested:
                code = str(nested)
        except Exception:
            pass
    if not message:
        message = str(getattr(exc, "message", None) or exc).splitlines()[0]
    message = redact_text(message).strip()
    return code, message[:300] + ("..." if len(message) > 300 else "")


def _http_failure(exc: Any, who: str, kind: str | None, where: str,
                  coordinates: dict[str, str | None]) -> AmlPromoteError:
    status = getattr(exc, "status_code", None)
    code, message = _azure_error(exc)
    detail = f"{code}: {message}" if code else message
    if status == 401:
        hint = credential_hint(kind)
        if code == "InvalidAuthenticationTokenTenant":
            hint = ("the identity belongs to another Microsoft Entra tenant than the "
                    "subscription: set AZURE_TENANT_ID to the subscription's tenant, or use an "
                    "identity of that tenant")
        return AuthFailed(f"Azure refused the token of {who} for {where} ({detail})", hint=hint)
    if status == 403:
        return AuthFailed(f"{who} may not use {where} ({code or 'Forbidden'})",
                          hint="ask for a role on it (e.g. AzureML Data Scientist) for this "
                               "identity, or choose another identity with --credential")
    if status == 404:
        subscription = coordinates.get("subscription")
        resource_group = coordinates.get("resource_group")
        if code == "SubscriptionNotFound":
            text = f"subscription {subscription} not found (or not visible to {who})"
        elif code == "ResourceGroupNotFound":
            text = f"resource group '{resource_group}' not found in subscription {subscription}"
        else:
            text = f"{where} not found"
        return NotFound(text, hint="check the names (az ml workspace list -g RESOURCE_GROUP / "
                                   "az ml registry list) and the subscription")
    if status in (429, 500, 502, 503, 504):
        return Unreachable(f"Azure Resource Manager kept failing for {where} (HTTP {status})",
                           hint="Azure is throttling or unavailable; run again later")
    return OperationFailed(f"Azure Resource Manager refused {where}: HTTP {status} {detail}",
                           hint="run again with --verbose for details")


def _service_context_cache() -> dict[str, Any]:
    from azureml.mlflow._internal.service_context_loader import _AzureMLServiceContextLoader

    cache: dict[str, Any] = _AzureMLServiceContextLoader._tracking_uri_to_service_context
    return cache


@contextmanager
def _service_contexts_restored() -> Iterator[None]:
    """Undo what azure-ai-ml's `workspaces.get()` leaves in azureml-mlflow's global cache."""
    try:
        cache = _service_context_cache()
    except ImportError:  # azureml-mlflow not installed: nothing is cached anywhere
        yield
        return
    with _CACHE_LOCK:
        saved = dict(cache)
    try:
        yield
    finally:
        with _CACHE_LOCK:
            for key in list(cache):
                if key not in saved:
                    del cache[key]
            cache.update(saved)


# -- one Azure ML workspace or registry ------------------------------------------------------------


@dataclass(frozen=True)
class AzureMlScope:
    """Where an `azureml://` MLflow URI points: host, subscription, resource group, resource."""

    host: str  # netloc, e.g. eastus.api.azureml.ms
    subscription: str
    resource_group: str
    kind: str  # "workspaces" | "registries"
    name: str

    @classmethod
    def parse(cls, uri: str) -> AzureMlScope:
        parts = urlsplit(uri)
        match = _SCOPE_PATH.match(parts.path)
        if parts.scheme != "azureml" or not parts.netloc or match is None:
            raise BadInput(
                f"{redact_text(uri)} is not an Azure ML MLflow URI",
                hint="use the workspace's MLflow tracking URI (azureml://REGION.api.azureml.ms/"
                     "mlflow/v2.0/subscriptions/.../workspaces/WS), or --workspace with "
                     "--resource-group and --subscription")
        return cls(parts.netloc, match["sub"], match["rg"], match["kind"].lower(), match["name"])

    @property
    def is_registry(self) -> bool:
        return self.kind == "registries"

    @property
    def arm_id(self) -> str:
        return (f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
                f"/providers/{PROVIDER}/{self.kind}/{self.name}")

    @property
    def host_url(self) -> str:
        return f"https://{self.host}"

    @property
    def mlflow_uri(self) -> str:
        return f"azureml://{self.host}/mlflow/v2.0{self.arm_id}"

    @property
    def display(self) -> str:
        noun = "registry" if self.is_registry else "workspace"
        where = f"resource group '{self.resource_group}'"
        return f"Azure ML {noun} '{self.name}' ({where}, subscription {self.subscription})"


# The token scope of Azure's built-in clouds (their Resource Manager endpoint + "/.default"), as
# azureml-mlflow's cloud table has them. Knowing them here spares importing azureml-mlflow (and a
# metadata request to management.azure.com when AZUREML_CURRENT_CLOUD is unset) on the REST path.
_KNOWN_CLOUD_SCOPES = {
    "AzureCloud": "https://management.azure.com/.default",
    "AzureChinaCloud": "https://management.chinacloudapi.cn/.default",
    "AzureUSGovernment": "https://management.usgovcloudapi.net/.default",
}
# A cached token is used until this close to its expiry (azure-core's BearerTokenCredentialPolicy
# refreshes 300 s early too), so a call never carries a token that expires in flight.
_TOKEN_REFRESH_MARGIN = 300.0


class AzureMlConnection:
    """One workspace or registry and the credential chosen for it."""

    def __init__(self, scope: AzureMlScope, credential: NamedCredential) -> None:
        self.scope = scope
        self.credential = credential
        self._token: AccessToken | None = None
        self._token_lock = threading.Lock()

    @functools.cached_property
    def cloud(self) -> Any:
        """azureml-mlflow's cloud (AZUREML_CURRENT_CLOUD), for token scopes and storage suffix."""
        from azureml.mlflow._common._cloud.cloud import _get_cloud_or_default

        return _get_cloud_or_default()

    @functools.cached_property
    def token_scope(self) -> str:
        name = os.environ.get("AZUREML_CURRENT_CLOUD") or "AzureCloud"
        known = _KNOWN_CLOUD_SCOPES.get(name)
        if known is not None and not os.environ.get("ARM_CLOUD_METADATA_URL"):
            return known
        # Another cloud (or the user's own metadata): azureml-mlflow knows how to look it up.
        scope: str = self.cloud._get_default_scope()
        return scope

    def authorization(self) -> str:
        """A bearer header value for Azure ML's data-plane services (never logged).

        The token is kept until shortly before it expires: some credentials (the Azure CLI's
        runs `az` for every token) take a second or more per call, and a copy makes hundreds."""
        import time

        with self._token_lock:
            token = self._token
            if token is None or token.expires_on - time.time() < _TOKEN_REFRESH_MARGIN:
                token = self.credential.get_token(self.token_scope)
                self._token = token
        return "Bearer " + token.token


def connection_of(client: Any) -> AzureMlConnection:
    """The connection behind a client made by `rest_client`
    (core/registries/azureml_workspace.py)."""
    connection = getattr(client, "connection", None)
    if not isinstance(connection, AzureMlConnection):
        raise TypeError("not an Azure ML MLflow client")
    return connection
