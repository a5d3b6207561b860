"""Azure Resource Manager calls made through azure-ai-ml: its failures as our errors, and the
azureml-mlflow cache that azure-ai-ml writes as a side effect, put back as it was.

`arm_errors` is the one place where azure-core's exceptions (network, 401/403/404, throttling,
azure-ai-ml's client-side validation) become `AmlPromoteError`s naming the resource and the
identity; `http_failure` does the same for one HTTP answer from ARM read by our own code.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from amlpromote.core.azure.credentials import (
    credential_hint,
    identity_description,
    token_failure,
)
from amlpromote.core.errors import (
    AmlPromoteError,
    AuthFailed,
    BadInput,
    NotFound,
    OperationFailed,
    Unreachable,
)
from amlpromote.core.uris import redact_text

_CACHE_LOCK = threading.RLock()


@contextmanager
def arm_errors(credential: Any, where: str, **coordinates: str | None) -> Iterator[None]:
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
            raise AuthFailed(f"{who} could not get an Azure token: {token_failure(exc)}",
                             hint=credential_hint(kind)) from None
        raise http_failure(exc, who, kind, where, coordinates) from None
    except HttpResponseError as exc:
        raise http_failure(exc, who, kind, where, coordinates) from None
    except Exception as exc:
        # azure-ai-ml validates names client-side (ValidationException) before any request.
        if exc.__class__.__name__ == "ValidationException":
            raise BadInput(f"{where}: {redact_text(str(exc)).splitlines()[0][:300]}",
                           hint="check the subscription id, resource group and name") from None
        raise


def azure_error(exc: Any) -> tuple[str, str]:
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


def http_failure(exc: Any, who: str, kind: str | None, where: str,
                  coordinates: dict[str, str | None]) -> AmlPromoteError:
    status = getattr(exc, "status_code", None)
    code, message = azure_error(exc)
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


def service_context_cache() -> dict[str, Any]:
    from azureml.mlflow._internal.service_context_loader import _AzureMLServiceContextLoader

    cache: dict[str, Any] = _AzureMLServiceContextLoader._tracking_uri_to_service_context
    return cache


@contextmanager
def service_contexts_restored() -> Iterator[None]:
    """Undo what azure-ai-ml's `workspaces.get()` leaves in azureml-mlflow's global cache."""
    try:
        cache = service_context_cache()
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
