"""The scoring front door of managed online endpoints in the box.

A scoring URI is `https://{endpoint}.{region}.inference.ml.azure.com/score` (endpoints.py). The
proxy tunnels `*.inference.ml.azure.com:443` to the box's TLS server (its certificate names
`*.{region}.inference.ml.azure.com` for every Azure region), which sends requests with such a
Host here (box.AzureMLBox._route, route name "scoring"). What the front door does, after the
managed online endpoint troubleshooting guide's table of scoring status codes
(learn.microsoft.com/azure/machine-learning/how-to-troubleshoot-online-endpoints, "HTTP status
codes"):

- authentication by the endpoint's `authMode`: `Authorization: Bearer <primary or secondary key>`
  (Key), a token from the endpoint's `token` action (AMLToken) or an Entra ID token of an
  identity that may use the workspace (AADToken); anything else 401;
- a body over 1.5 MB: 413;
- the deployment: the one the `azureml-model-deployment` header names (404 when the endpoint has
  none of that name), otherwise one picked by the endpoint's `traffic` percentages (smooth
  weighted round robin, so shares are exact); no deployment with traffic: 404;
- `mirrorTraffic`: that share of the requests routed by traffic is also sent to the mirror
  deployment, whose answer is dropped;
- the request body goes to the deployment's model server (`POST /score`); an answer other than
  200 becomes 424 with `ms-azureml-model-error-statuscode` / `ms-azureml-model-error-reason`
  and the server's body; no answer within `requestSettings.requestTimeout` (default 5 s): 408.

Answers name the deployment that served in the `azureml-model-deployment` header.
"""

from __future__ import annotations

import hmac
import http.client
import json
import re
import threading
import time
from typing import Any

from .endpoints import EndpointService, OnlineDeployment, OnlineEndpoint
from .model import INFERENCE_HOST_SUFFIX, _Request, _Response
from .token import _Unauthenticated

# "413 Payload too large: Your payload size is larger than 1.5 megabytes" (troubleshooting guide).
MAX_SCORING_PAYLOAD = 1_572_864
# request_timeout_ms defaults to 5000 (managed online deployment YAML reference, RequestSettings).
DEFAULT_REQUEST_TIMEOUT = 5.0
DEPLOYMENT_HEADER = "azureml-model-deployment"
# What the front door puts in ms-azureml-model-error-reason for a model's non-200 (_model_error).
MODEL_ERROR_REASON = "model_error"
# Headers of the container's answer the front door does not pass on (RFC 9110 hop-by-hop and
# framing; the front door sends its own Server, Date and Content-Length).
_NOT_PASSED = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length",
                         "content-type", "server", "date", "te", "trailer", "upgrade",
                         "proxy-authenticate", "proxy-connection"})
_DURATION = re.compile(r"^P(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
                       r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$", re.IGNORECASE)


def _seconds(duration: Any, default: float) -> float:
    match = _DURATION.match(str(duration or ""))
    if not duration or match is None:
        return default
    return (float(match["h"] or 0) * 3600 + float(match["m"] or 0) * 60
            + float(match["s"] or 0)) or default


class ScoringFrontDoor(EndpointService):
    """Scoring requests to managed online endpoints, routed to their deployments' servers."""

    def _handle_scoring(self, req: _Request, _: re.Match[str] | None) -> _Response:
        labels = req.host.removesuffix(INFERENCE_HOST_SUFFIX).split(".")
        endpoint = None
        if len(labels) == 2:
            with self._endpoints_lock:
                endpoint = next(
                    (e for e in self._endpoints.values()
                     if e.name.lower() == labels[0] and e.location == labels[1]
                     and e.provisioning_state != "Deleting"), None)
        if endpoint is None:
            return self._scoring_error(404, f"No endpoint answers at {req.host}.")
        if req.path.rstrip("/") != "/score" or req.method != "POST":
            return self._scoring_error(404, f"{req.method} {req.path} is not a scoring route.")
        if not self._scoring_authorized(endpoint, req.headers.get("Authorization")):
            return self._scoring_error(401, "Unauthorized: the key or token is missing, wrong "
                                            "or expired.")
        if len(req.body) > MAX_SCORING_PAYLOAD:
            return self._scoring_error(413, "Payload too large: the body is larger than 1.5 MB.")
        named = (req.headers.get(DEPLOYMENT_HEADER) or "").strip().lower()
        with self._endpoints_lock:
            if named:
                deployment = endpoint.deployments.get(named)
                if deployment is None or deployment.provisioning_state == "Deleting":
                    return self._scoring_error(
                        404, f"Deployment {named} not found in endpoint {endpoint.name}.")
                mirrors: list[OnlineDeployment] = []
            else:
                chosen = self._pick_deployment(endpoint)
                if chosen is None:
                    # Troubleshooting guide: 404 "The endpoint doesn't have any valid
                    # deployment with positive weight."
                    return self._scoring_error(
                        404, "No valid deployments to route to. Please check that the endpoint "
                             "has at least one deployment with positive weight values or use a "
                             "deployment specific header to route.")
                deployment = chosen
                mirrors = self._pick_mirrors(endpoint)
            deployment.scored += 1
        for mirror in mirrors:
            threading.Thread(target=self._mirror, args=(mirror, req), daemon=True,
                             name=f"azureml-box-mirror-{mirror.name}").start()
        response = self._forward_to_model(deployment, req)
        response.headers[DEPLOYMENT_HEADER] = deployment.name
        return response

    @staticmethod
    def _scoring_error(status: int, message: str) -> _Response:
        # No public capture shows the Content-Type of the front door's own refusals; the box
        # answers them with the bare `application/json` the inference server's JSON answers
        # carry (the strictest choice a client can rely on: no charset parameter assumed).
        return _Response(status, json.dumps({"message": message}).encode(),
                         {"Content-Type": "application/json"})

    def _scoring_authorized(self, endpoint: OnlineEndpoint, authorization: str | None) -> bool:
        scheme, _, credential = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not credential:
            return False
        if endpoint.auth_mode == "Key":
            return any(hmac.compare_digest(credential, key)
                       for key in (endpoint.primary_key, endpoint.secondary_key))
        if endpoint.auth_mode == "AMLToken":
            with self._endpoints_lock:
                expiry = endpoint.tokens.get(credential)
            return expiry is not None and expiry > time.time()
        try:
            identity = self._verify_token(authorization)
        except _Unauthenticated:
            return False
        return endpoint.workspace.may_use(identity)

    @staticmethod
    def _pick_deployment(endpoint: OnlineEndpoint) -> OnlineDeployment | None:
        """Smooth weighted round robin over the deployments with live traffic."""
        weights = {k: v for k, v in endpoint.traffic.items()
                   if v > 0 and k in endpoint.deployments
                   and endpoint.deployments[k].provisioning_state != "Deleting"}
        if not weights:
            return None
        total = sum(weights.values())
        for key, weight in weights.items():
            endpoint.route_credit[key] = endpoint.route_credit.get(key, 0.0) + weight
        chosen = max(weights, key=lambda k: endpoint.route_credit[k])
        endpoint.route_credit[chosen] -= total
        return endpoint.deployments[chosen]

    @staticmethod
    def _pick_mirrors(endpoint: OnlineEndpoint) -> list[OnlineDeployment]:
        """The mirror deployments this request is copied to: each gets its percentage of the
        requests, evenly spread."""
        chosen = []
        for key, percent in endpoint.mirror_traffic.items():
            deployment = endpoint.deployments.get(key)
            if percent <= 0 or deployment is None:
                continue
            credit = endpoint.mirror_credit.get(key, 0.0) + percent
            if credit >= 100:
                credit -= 100
                chosen.append(deployment)
            endpoint.mirror_credit[key] = credit
        return chosen

    def _mirror(self, deployment: OnlineDeployment, req: _Request) -> None:
        self._forward_to_model(deployment, req)
        with self._endpoints_lock:
            deployment.mirrored += 1

    def _forward_to_model(self, deployment: OnlineDeployment, req: _Request) -> _Response:
        container = deployment.container
        if container is None:
            # Only when the box runs without model servers (`serve_deployments=False`) or the
            # server is gone: what the service answers when its container does not answer.
            return self._model_error(503, b"", "text/plain")
        timeout = _seconds((deployment.properties.get("requestSettings") or {})
                           .get("requestTimeout"), DEFAULT_REQUEST_TIMEOUT)
        headers = {"Content-Type": req.headers.get("Content-Type") or "application/json"}
        conn = http.client.HTTPConnection("127.0.0.1", container.port, timeout=timeout)
        try:
            conn.request("POST", "/score", body=req.body, headers=headers)
            upstream = conn.getresponse()
            body = upstream.read()
        except TimeoutError:
            # "408 Request timeout: The model execution took longer than the timeout supplied
            # in request_timeout_ms" (troubleshooting guide).
            return self._scoring_error(408, "Request timeout: the model did not answer within "
                                            f"{timeout:g} s.")
        except OSError:
            return self._model_error(502, b"", "text/plain")
        finally:
            conn.close()
        # The front door is a proxy: the container's own headers reach the client, as a captured
        # answer of a managed online endpoint shows ("server: azureml-frontdoor ...
        # x-ms-run-function-failed: False, x-ms-run-fn-exec-ms: 12.925, x-ms-server-version:
        # azmlinfsrv/1.4.0, x-ms-request-id ..., azureml-model-deployment: default"); only
        # hop-by-hop and framing headers are the front door's own.
        passed = {name: value for name, value in upstream.getheaders()
                  if name.lower() not in _NOT_PASSED}
        passed["Content-Type"] = upstream.getheader("Content-Type") or "application/json"
        if upstream.status != 200:
            return self._model_error(upstream.status, body, passed["Content-Type"], passed)
        return _Response(200, body, passed)

    @staticmethod
    def _model_error(status: int, body: bytes, content_type: str,
                     passed: dict[str, str] | None = None) -> _Response:
        """"424 Model Error: If your model container returns a non-200 response, Azure returns a
        424. Check response headers ms-azureml-model-error-statuscode and
        ms-azureml-model-error-reason" (troubleshooting guide); the container's body passes.

        The reason is the constant `model_error`, not the status phrase: Azure ML's inference
        envoy filter sets it so for any non-200 from the model (its Lua `rewriteStatusNon200`,
        a public copy found through the code search; `too_many_pending_request` and
        `model_not_ready` are its own refusals), and a captured Azure ML answer shows
        "server: envoy ... ms-azureml-model-error-reason: model_error,
        ms-azureml-model-error-statuscode: 404"."""
        return _Response(424, body, {
            **(passed or {}),
            "Content-Type": content_type,
            "ms-azureml-model-error-statuscode": str(status),
            "ms-azureml-model-error-reason": MODEL_ERROR_REASON,
        })
