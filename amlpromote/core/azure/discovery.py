"""Discovery: an Azure ML workspace's or registry's coordinates -> its MLflow URI, asked of Azure
Resource Manager through azure-ai-ml (`MLClient(...).workspaces.get` / `registries.get`).

azure-ai-ml registers the workspace URI in azureml-mlflow's global cache of "service contexts" as
a side effect of `workspaces.get()`; discovery puts the cache back as it found it
(`arm.service_contexts_restored`), so other code in the process sees what it would have seen
without us.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from amlpromote.core.azure.arm import arm_errors, service_contexts_restored
from amlpromote.core.errors import OperationFailed

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from amlpromote.core.azure.credentials import NamedCredential


def workspace_tracking_uri(subscription: str, resource_group: str, workspace: str,
                           credential: NamedCredential | TokenCredential) -> str:
    """The workspace's MLflow tracking URI, as `MLClient(...).workspaces.get(ws)` reports it."""
    from azure.ai.ml import MLClient

    where = (f"Azure ML workspace '{workspace}' (resource group '{resource_group}', "
             f"subscription {subscription})")
    with arm_errors(credential, where, subscription=subscription,
                     resource_group=resource_group, workspace=workspace), \
            service_contexts_restored():
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
    with arm_errors(credential, where, subscription=subscription,
                     resource_group=resource_group, registry=registry), \
            service_contexts_restored():
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
