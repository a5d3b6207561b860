"""The box's former single module, kept so `azureml_box.server` imports go on working.

Azure ML in a box now lives in one module per service family (see the package docstring);
this module re-exports the names others imported from here.
"""

from .box import AzureMLBox
from .endpoints import PROVISIONING_SECONDS, EndpointOperation, OnlineDeployment, OnlineEndpoint
from .frontdoor import DEPLOYMENT_HEADER, MAX_SCORING_PAYLOAD
from .limits import (
    EXPERIMENT_TAG_LIMITS,
    LIMITS_URL,
    MODEL_TAG_LIMITS,
    RUN_TAG_LIMITS,
    registry_tag_problem,
    tag_limit_problem,
)
from .model import (
    AML_HOST_SUFFIX,
    ARTIFACT_DATASTORE,
    ARTIFACT_URI_FORMS,
    BLOB_HOST_SUFFIX,
    DISCOVERY_PATH,
    INFERENCE_HOST_SUFFIX,
    PROVIDER,
    TOKEN_PATH,
    AzureMLResource,
    Fault,
    Gate,
    Identity,
    RequestRecord,
)
from .registry import REGISTRY_LRO_SECONDS
from .token import ACCEPTED_AUDIENCES

__all__ = [
    "ACCEPTED_AUDIENCES",
    "AML_HOST_SUFFIX",
    "ARTIFACT_DATASTORE",
    "ARTIFACT_URI_FORMS",
    "BLOB_HOST_SUFFIX",
    "DEPLOYMENT_HEADER",
    "DISCOVERY_PATH",
    "EXPERIMENT_TAG_LIMITS",
    "INFERENCE_HOST_SUFFIX",
    "LIMITS_URL",
    "MAX_SCORING_PAYLOAD",
    "MODEL_TAG_LIMITS",
    "PROVIDER",
    "PROVISIONING_SECONDS",
    "REGISTRY_LRO_SECONDS",
    "RUN_TAG_LIMITS",
    "TOKEN_PATH",
    "AzureMLBox",
    "AzureMLResource",
    "EndpointOperation",
    "Fault",
    "Gate",
    "Identity",
    "OnlineDeployment",
    "OnlineEndpoint",
    "RequestRecord",
    "registry_tag_problem",
    "tag_limit_problem",
]
