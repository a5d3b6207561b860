"""One Azure ML workspace or registry and the credential chosen for it.

Azure ML's MLflow API (workspaces and registries alike) is MLflow's REST API under
`/mlflow/v2.0/<resource id>`, taking a bearer token for Resource Manager's scope.
`rest_client` (core/registries/azureml_workspace.py) calls it through `MlflowRestClient` with
the chosen credential's token; `AzureMlConnection` here supplies that token. Going through
azureml-mlflow instead would cost an mlflow import (~2.5 s, ~200 MB) and would sign in with that
library's own chain, which ends in an interactive browser and a device-code prompt that a CI job
must never meet.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from amlpromote.core.azure.credentials import NamedCredential, make_credential
from amlpromote.core.errors import BadInput
from amlpromote.core.uris import redact_text

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken

__all__ = ["PROVIDER", "AzureMlConnection", "AzureMlScope", "NamedCredential",
           "connection_of", "make_credential"]

PROVIDER = "Microsoft.MachineLearningServices"
_SCOPE_PATH = re.compile(
    r"^/mlflow/v(?P<api>[12])\.0/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
    rf"/providers/{re.escape(PROVIDER)}/(?P<kind>workspaces|registries)/(?P<name>[^/]+)/?$",
    re.IGNORECASE,
)


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
