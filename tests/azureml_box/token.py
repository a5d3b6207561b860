"""Managed identity and Azure AD tokens in the box, and who may call what.

- azure-identity, managed identity "App Service" flow (chosen because IDENTITY_ENDPOINT and
  IDENTITY_HEADER are set, before any IMDS probing):
  `GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=https://management.azure.com`
  with `X-IDENTITY-HEADER: {IDENTITY_HEADER}`.
- Tokens carry the identity's tenant; a token of another tenant gets 401
  InvalidAuthenticationTokenTenant everywhere (`add_identity(name, tenant_id=...)`).
- Every service checks the token, then the resource, then the identity's access
  (`_authorize`: 401, 404, 403 in that order, each in the service's own error shape).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid

from .core import BoxCore
from .model import PROVIDER, AzureMLResource, Identity, _Request, _Response

# Audiences our services accept (ARM's; Azure ML data planes accept ARM tokens too).
ACCEPTED_AUDIENCES = frozenset(
    {
        "https://management.azure.com",
        "https://management.azure.com/",
        "https://management.core.windows.net/",
        "https://ml.azure.com",
        "https://ml.azure.com/",
    }
)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class _Unauthenticated(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TokenService(BoxCore):
    """The token endpoint, token issue and verification, and the checks every service makes."""

    # -- identities and tokens ------------------------------------------------------------------

    def add_identity(self, name: str, tenant_id: str | None = None) -> Identity:
        """Another (user-assigned) identity; clients select it with its client id.

        `tenant_id`: an identity of another tenant: the token endpoint still issues its tokens,
        and every service answers them with 401 InvalidAuthenticationTokenTenant.
        """
        identity = Identity(name, str(uuid.uuid4()), str(uuid.uuid4()), tenant_id)
        self.identities[identity.client_id] = identity
        return identity

    def issue_token(
        self,
        resource: str = "https://management.azure.com",
        identity: Identity | None = None,
        lifetime: float = 3600,
    ) -> str:
        """A signed JWT as the token endpoint would return it (HS256 with a per-box key)."""
        who = identity or self.identity
        tenant = who.tenant_id or self.tenant_id
        now = int(time.time())
        claims = {
            "aud": resource,
            "iss": f"https://sts.windows.net/{tenant}/",
            "iat": now,
            "nbf": now - 60,
            "exp": now + int(lifetime),
            "appid": who.client_id,
            "oid": who.object_id,
            "sub": who.object_id,
            "tid": tenant,
            "idtyp": "app",
            "xms_mirid": (
                f"/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/box"
                f"/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{who.name}"
            ),
        }
        header = {"alg": "HS256", "typ": "JWT"}
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        signature = hmac.new(self._signing_key, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64url(signature)}"

    def _verify_token(self, authorization: str | None) -> Identity:
        if not authorization:
            raise _Unauthenticated(
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _Unauthenticated(
                "InvalidAuthenticationToken",
                "Authentication failed. The 'Authorization' header is provided in an invalid "
                "format.",
            )
        try:
            header_b64, claims_b64, signature_b64 = token.split(".")
            expected = hmac.new(
                self._signing_key, f"{header_b64}.{claims_b64}".encode(), hashlib.sha256
            ).digest()
            if not hmac.compare_digest(expected, _b64url_decode(signature_b64)):
                raise ValueError("bad signature")
            claims = json.loads(_b64url_decode(claims_b64))
        except (ValueError, TypeError) as exc:
            raise _Unauthenticated(
                "InvalidAuthenticationToken", "The access token is invalid."
            ) from exc
        if claims.get("exp", 0) < time.time():
            raise _Unauthenticated(
                "ExpiredAuthenticationToken",
                "The access token expiry UTC time is earlier than current UTC time.",
            )
        if claims.get("tid") != self.tenant_id:
            # ARM's wording for a token of another directory than the subscription's.
            raise _Unauthenticated(
                "InvalidAuthenticationTokenTenant",
                f"The access token is from the wrong issuer '{claims.get('iss')}'. It must match "
                f"the tenant 'https://sts.windows.net/{self.tenant_id}/' associated with this "
                "subscription. Please use the authority (URL) "
                f"'https://login.windows.net/{self.tenant_id}' to get the token.",
            )
        if claims.get("aud") not in ACCEPTED_AUDIENCES:
            raise _Unauthenticated(
                "InvalidAuthenticationTokenAudience",
                "The access token has been obtained for wrong audience or resource "
                f"'{claims.get('aud')}'.",
            )
        for identity in self.identities.values():
            if identity.object_id == claims.get("oid"):
                return identity
        raise _Unauthenticated("InvalidAuthenticationToken", "The access token is invalid.")

    def _unauthenticated(self, route: str, exc: _Unauthenticated) -> _Response:
        challenge = (
            f'Bearer authorization_uri="https://login.windows.net/{self.tenant_id}", '
            f'error="invalid_token", error_description="{exc.message}"'
        )
        headers = {"WWW-Authenticate": challenge}
        if route == "arm":
            return self._arm_error(401, exc.code, exc.message, headers)
        return self._aml_error(401, exc.code, exc.message, headers=headers)

    # -- common checks --------------------------------------------------------------------------

    def _authorize(
        self, req: _Request, route: str, kind: str, sub: str, rg: str, name: str, action: str
    ) -> AzureMLResource | _Response:
        """401 without a valid token, 404 for unknown resources, 403 when not allowed."""
        try:
            identity = self._verify_token(req.headers.get("Authorization"))
        except _Unauthenticated as exc:
            return self._unauthenticated(route, exc)
        self._current_identity.name = identity.name
        resource = self._find(kind, sub, rg, name)
        singular = kind[:-1] if kind != "registries" else "registry"
        if resource is None:
            if route != "arm":
                return self._aml_error(
                    404, "NotFound", f"{singular.capitalize()} {name} not found.",
                    inner="WorkspaceNotFound" if kind == "workspaces" else "RegistryNotFound",
                )
            sub_known, rg_known = self._known_scope(sub, rg)
            if not sub_known:
                return self._arm_error(404, "SubscriptionNotFound",
                                       f"The subscription '{sub}' could not be found.")
            if not rg_known:
                return self._arm_error(404, "ResourceGroupNotFound",
                                       f"Resource group '{rg}' could not be found.")
            return self._arm_error(
                404,
                "ResourceNotFound",
                f"The Resource '{PROVIDER}/{kind}/{name}' under resource group '{rg}' was not "
                "found. For more details please go to https://aka.ms/ARMResourceNotFoundFix",
            )
        if not resource.may_use(identity):
            message = (
                f"The client '{identity.object_id}' with object id '{identity.object_id}' does "
                f"not have authorization to perform action '{PROVIDER}/{kind}/{action}' over "
                f"scope '{resource.arm_id}' or the scope is invalid. If access was recently "
                "granted, please refresh your credentials."
            )
            if route == "arm":
                return self._arm_error(403, "AuthorizationFailed", message)
            return self._aml_error(403, "AuthorizationFailed", message, inner="Forbidden")
        return resource

    # -- handlers: token ------------------------------------------------------------------------

    def _handle_token(self, req: _Request, _: re.Match[str] | None) -> _Response:
        if req.method != "GET":
            return _Response.json(405, {"statusCode": 405, "message": "Method not allowed"})
        if not hmac.compare_digest(
            req.headers.get("X-IDENTITY-HEADER", ""), self.identity_header
        ):
            return _Response.json(
                401, {"statusCode": 401, "message": "Missing or invalid X-IDENTITY-HEADER"}
            )
        resource = req.query.get("resource")
        if not resource:
            return _Response.json(400, {"statusCode": 400, "message": "resource is required"})
        client_id = req.query.get("client_id")
        if client_id is not None:
            identity = self.identities.get(client_id)
            if identity is None:
                return _Response.json(
                    400, {"statusCode": 400, "message": f"Unknown client_id {client_id}"}
                )
        else:
            identity = self.identity
        self._current_identity.name = identity.name
        lifetime = 3600
        return _Response.json(
            200,
            {
                "access_token": self.issue_token(resource, identity, lifetime),
                "expires_on": str(int(time.time()) + lifetime),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": identity.client_id,
            },
        )
