"""An Azure ML workspace's (or registry's) MLflow REST API, as an `MlflowRestClient`.

Azure ML serves MLflow's REST API under `/mlflow/v2.0/<resource id>` with a bearer token for
Resource Manager's scope (core/azure/connection.py signs in and keeps the token fresh); a
workspace is then read and written like any MLflow server (registry.py), its artifacts through
Azure ML's artifact service (core/storage/azure_blob.py, which finds the connection again with
`connection_of`).
"""

from __future__ import annotations

from typing import Any

from amlpromote.core.azure.connection import AzureMlConnection, AzureMlScope, make_credential
from amlpromote.core.registries.mlflow_rest import MlflowRestClient
from amlpromote.core.uris import RegistryUri


class AzureMlRestClient(MlflowRestClient):
    """An MlflowRestClient on a workspace's or registry's MLflow API, with `connection`'s
    token."""

    def __init__(self, connection: AzureMlConnection) -> None:
        scope = connection.scope
        super().__init__(f"{scope.host_url}/mlflow/v2.0{scope.arm_id}",
                         auth_header=connection.authorization)
        self.connection = connection


def rest_client(uri: RegistryUri) -> Any:
    """An `MlflowRestClient` for an Azure ML workspace or registry, signed in with
    `uri.credential` (the base URL and token scope are those of azureml-mlflow's stores, see its
    `AzureMLRestStore.get_host_credentials`)."""
    scope = AzureMlScope.parse(uri.uri)
    connection = AzureMlConnection(scope, make_credential(getattr(uri, "credential", None)))
    return AzureMlRestClient(connection)
