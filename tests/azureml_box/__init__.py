"""Azure ML in a box: a loopback, TLS emulator of the Azure ML services amlpromote talks to: one
loopback HTTPS server that answers what azure-identity, azure-ai-ml and azureml-mlflow call, plus
a loopback HTTP(S) proxy that stands in for DNS.

What real clients send it was measured by logging every request (mlflow 3.15, azureml-mlflow
1.62, azure-ai-ml 1.35, azure-identity 1.27). Each module's docstring says what it emulates and
from which sources:

- box.py: AzureMLBox, the class tests use: lifecycle, the routing table, injected faults applied
  to a request; how the service layers below combine.
- core.py: BoxCore, what every service shares: workspaces and registries, the client
  environment, faults and gates, the request log, backend clients, error documents.
- model.py: shared data (Identity, Fault, Gate, RequestRecord, AzureMLResource, one request and
  response) and the route patterns.
- token.py: the managed identity token endpoint, token issue and verification, authorization.
- blobs.py: blob storage (Azurite) under production host names: SAS minting, blob faults and
  inspection through the proxy.
- artifacts.py: the artifact service (LocalUpload) and the run history service.
- registry.py: registry model versions through ARM: pending uploads, data references,
  long-running operations.
- arm.py: ARM workspaces and registries, their lists, discovery, workspace model assets.
- mlflow_api.py: the workspace / registry MLflow REST API, forwarded to a real `mlflow server`.
- endpoints.py: ARM managed online endpoints and deployments: long-running operations, 409
  while one runs, keys and tokens, getLogs, provisioning that starts a model server.
- frontdoor.py: the scoring URIs (`*.inference.ml.azure.com`): key or token, routing by
  traffic, mirror or the `azureml-model-deployment` header, the 424 mapping, 413.
- serving.py, mlflow_score.py, inference_env.py: each deployment's model server, Microsoft's
  real azureml-inference-server-http with an MLflow scoring script of ours, in a venv of its
  own.
- limits.py: Azure ML's published tag limits.
- transport.py: the TLS server and request handler, the proxy and its CONNECT tunnels (and why
  a proxy).
- server.py: the former single module, re-exporting the names others imported from it.
- azurite.py (Azurite, the blob emulator), ca.py (the test CA), testing.py and fixtures.py (what
  test modules use).

tests/test_azureml_box.py shows it working with the real azure-identity, azure-ai-ml,
azureml-mlflow and mlflow clients. Test modules load the pytest fixtures with
`pytest_plugins = ["azureml_box.fixtures"]` and import shared names from `azureml_box.testing`.
"""

from .azurite import Azurite, AzuriteError, ensure_azurite
from .box import AzureMLBox
from .ca import ServerCert, TestCA
from .model import AzureMLResource, Fault, Gate, Identity, RequestRecord

__all__ = [
    "AzureMLBox",
    "AzureMLResource",
    "Azurite",
    "AzuriteError",
    "Fault",
    "Gate",
    "Identity",
    "RequestRecord",
    "ServerCert",
    "TestCA",
    "ensure_azurite",
]
