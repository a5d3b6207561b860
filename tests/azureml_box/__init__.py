"""Azure ML in a box: a loopback, TLS emulator of the Azure ML services amlpromote talks to.

See server.py for what is emulated and why; tests/test_azureml_box.py shows it working with the
real azure-identity, azure-ai-ml, azureml-mlflow and mlflow clients. Test modules load the pytest
fixtures with `pytest_plugins = ["azureml_box.fixtures"]` and import shared names from
`azureml_box.testing`.
"""

from .azurite import Azurite, AzuriteError, ensure_azurite
from .ca import ServerCert, TestCA
from .server import AzureMLBox, AzureMLResource, Fault, Identity, RequestRecord

__all__ = [
    "AzureMLBox",
    "AzureMLResource",
    "Azurite",
    "AzuriteError",
    "Fault",
    "Identity",
    "RequestRecord",
    "ServerCert",
    "TestCA",
    "ensure_azurite",
]
