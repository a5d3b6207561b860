"""Signing in to Azure: the `--credential` kinds, the azure-identity credential for each (never
an interactive browser), and the words that say who is signing in and what to do when it fails.

`NamedCredential` turns azure-identity's multi-line chain failures into one `AuthFailed` line,
wherever a token is asked for (azure-ai-ml, azure-core pipelines, our own REST calls).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from amlpromote.core.config import CREDENTIAL_KINDS
from amlpromote.core.errors import AuthFailed, BadInput
from amlpromote.core.uris import redact_text

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken, TokenCredential

__all__ = ["CREDENTIAL_KINDS", "NamedCredential", "credential_hint", "identity_description",
           "make_credential"]


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
                             f"{token_failure(exc)}",
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


def token_failure(exc: Exception) -> str:
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
