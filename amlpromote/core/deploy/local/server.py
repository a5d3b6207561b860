"""The local online endpoint server: one process per endpoint, loopback only, with the contract
of an Azure ML managed online endpoint serving MLflow models (core/deploy/scoring.py).

    python -m amlpromote.core.deploy.local.server --state-dir DIR

DIR holds the key and admin-token files (made by platform.py); the server binds a free loopback
port, writes state.json (state.py) and serves:

- `POST /score`: Azure ML's scoring contract, key auth, routing by `azureml-model-deployment`
  or the traffic split, mirror traffic;
- `GET /` and `GET /health`: liveness, unauthenticated, with the endpoint's instance id;
- `/.amlpromote/...` on the admin port (state.json `admin_port`; admin token): load, replace and
  delete deployments, set traffic and mirror, read a deployment's logs, shut down.

With `--workers N` (platform.py asks for up to 2) the first process starts N-1 more that bind the
same scoring port (SO_REUSEPORT: the kernel spreads connections over them, so concurrent clients
are not serialised by one interpreter's GIL). Only the first owns state.json and the admin port;
it passes every admin change on to the others, merges their logs, and they exit when it dies.

Models load in-process with mlflow.pyfunc (the environment is this one, like `mlflow models
serve --env-manager local`). Only the standard library is imported at start; mlflow and pandas
are imported by a warm-up thread, so the first deployment does not wait for them from zero.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import hmac
import http.client
import http.server
import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

from amlpromote.core.deploy import scoring
from amlpromote.core.deploy.local import state as st

LOG_LINES = 1000  # per deployment, in memory; the whole history is in server.log
# Marks the lines of workers after the first in a deployment's merged log.
WORKER_TAG = [""]
FORWARDED_HEADER = "x-amlpromote-forwarded"  # an admin change passed on by the first worker


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# The width of `_now()`'s timestamps, which start every log line.
_STAMP_WIDTH = len("2026-01-01T00:00:00.000000Z")


class ServerLog:
    """Lines to server.log (this process's stdout) and to each deployment's recent lines."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def write(self, deployment: str, line: str) -> None:
        text = f"{_now()} [{deployment}] {line}\n"
        with self._lock:
            sys.stdout.write(text)
            sys.stdout.flush()


LOG = ServerLog()


class Deployment:
    """One deployment: its record (as in state.json), its loaded model and its recent log."""

    def __init__(self, name: str, record: st.DeploymentRecord, model: Any = None) -> None:
        self.name = name
        self.record = record
        self.model = model
        self.lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self.logged = 0  # lines ever logged (self.lines keeps the last LOG_LINES)

    def since(self, logged: int) -> list[str]:
        """The lines logged after the first `logged` (as many as are still kept)."""
        count = min(self.logged - logged, len(self.lines))
        return list(self.lines)[len(self.lines) - count:] if count > 0 else []

    @property
    def serving(self) -> bool:
        return self.model is not None

    def log(self, line: str) -> None:
        # Every line of a multi-line entry (a traceback) carries the entry's timestamp, so the
        # merge of the workers' logs (by timestamp, stable) keeps an entry's lines together
        # and in order.
        stamp = f"{_now()} {WORKER_TAG[0]}"
        for part in line.splitlines() or [""]:
            self.lines.append(stamp + part)
            self.logged += 1
        LOG.write(self.name, line)

    def predict(self, data: Any, params: dict[str, Any] | None) -> Any:
        if params:
            return self.model.predict(data, params=params)
        return self.model.predict(data)

    def model_failed(self, exc: BaseException) -> None:
        self.log("scoring failed: " + "".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip())


# -- loading -----------------------------------------------------------------------------------


def _requirement_pins(model_path: Path) -> dict[str, str]:
    """`name == version` pins of the model's requirements.txt (other lines carry no pin)."""
    pins: dict[str, str] = {}
    try:
        text = (model_path / "requirements.txt").read_text()
    except OSError:
        return pins
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if "==" not in line or line.startswith("-"):
            continue
        name, version = (part.strip() for part in line.split("==", 1))
        name = name.split("[", 1)[0]
        if name and version:
            pins[name] = version
    return pins


def _installed(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def requirement_warnings(model_path: Path) -> list[str]:
    """One line per requirements.txt pin that differs from what this environment has."""
    warnings = []
    for name, version in _requirement_pins(model_path).items():
        installed = _installed(name)
        if installed is None:
            warnings.append(f"the model pins {name}=={version}, which is not installed here")
        elif installed != version:
            warnings.append(f"the model pins {name}=={version}; this environment has "
                            f"{name}=={installed}")
    return warnings


def _module_package(module: str, pins: dict[str, str]) -> str:
    top = module.split(".", 1)[0]
    from importlib import metadata

    try:
        distributions = metadata.packages_distributions().get(top) or []
    except Exception:  # a broken installed distribution must not hide the real error
        distributions = []
    if distributions:
        return distributions[0]
    # Not installed, so no metadata: the pins may name it (scikit-learn for sklearn...).
    normal = top.replace("_", "-").lower()
    for name in pins:
        if name.replace("_", "-").lower() == normal:
            return name
    return top


def explain_load_failure(exc: BaseException, model_path: Path) -> str:
    """One line naming what is missing or mismatched, for the deployment's error."""
    pins = _requirement_pins(model_path)
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        package = _module_package(exc.name, pins)
        pinned = f" (requirements.txt pins {package}=={pins[package]})" if package in pins else ""
        return (f"the model needs package {package} (module {exc.name}), which is not installed "
                f"here{pinned}")
    mismatched = [
        f"{name}=={version} (installed: {_installed(name) or 'none'})"
        for name, version in pins.items() if _installed(name) != version
    ]
    pickle_like = isinstance(exc, ImportError | AttributeError | EOFError | TypeError
                             | ValueError) or "pickle" in type(exc).__module__
    if pickle_like and mismatched:
        return (f"the model's files could not be loaded with the packages installed here "
                f"({type(exc).__name__}: {first}); its requirements.txt pins "
                + ", ".join(mismatched))
    if isinstance(exc, ImportError):
        return f"a package the model imports failed to import here ({type(exc).__name__}: {first})"
    return f"the model could not be loaded ({type(exc).__name__}: {first})"


def load_model(path: Path) -> Any:
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(str(path))


def _warm_up() -> None:
    # The first deployment's load otherwise pays mlflow's and pandas' import (seconds).
    try:
        import mlflow.pyfunc  # noqa: F401
        import pandas  # noqa: F401
    except Exception as exc:  # reported again, with a message, by the load that needs them
        LOG.write("-", f"warm-up import failed: {type(exc).__name__}: {exc}")


# -- the endpoint ------------------------------------------------------------------------------


class Endpoint:
    """The endpoint as one worker process sees it. The first worker (the process platform.py
    started, whose pid is in state.json) owns state.json and the admin port, and passes every
    admin change on to the other workers (`peers`, their private admin ports)."""

    def __init__(self, folder: Path, port: int, admin_port: int, instance_id: str,
                 primary: bool, workers: int) -> None:
        self.folder = folder
        self.name = folder.name
        self.key = st.read_secret(folder, st.KEY_FILE).encode()
        self.admin_token = st.read_secret(folder, st.ADMIN_TOKEN_FILE).encode()
        self.instance_id = instance_id
        self.primary = primary
        self.peers: list[int] = []
        self.state = st.EndpointState(name=self.name, port=port, pid=os.getpid(),
                                      instance_id=instance_id, created=_now(),
                                      admin_port=admin_port, workers=workers)
        self.deployments: dict[str, Deployment] = {}
        self.lock = threading.Lock()  # admin changes; the scoring path reads snapshots
        # Deployments whose model is loading, and those of them deleted meanwhile (a deploy
        # that timed out and rolled back): a load that ends after its delete is discarded.
        self.loading: set[str] = set()
        self.cancelled: set[str] = set()
        # The deployment each load is making, shown (state Creating or Updating, its log) until
        # the load ends: a deploy interrupted meanwhile leaves the load running, and the next
        # command must see why the deployment is busy, as Azure ML's provisioning state shows.
        self.pending: dict[str, Deployment] = {}
        self._routes: tuple[list[str], list[int]] = ([], [])
        self.mirrors: list[tuple[str, int]] = []
        self.mirror_queue: queue.Queue[tuple[Deployment, str | None, bytes]] = queue.Queue(64)

    def save(self) -> None:
        if not self.primary:
            return
        self.state.deployments = {name: d.record for name, d in self.deployments.items()}
        self.state.deployments.update({name: d.record for name, d in self.pending.items()})
        st.write_state(self.folder, self.state)

    def forward(self, method: str, path: str, body: bytes,
                timeout: float = 600.0) -> list[tuple[int, dict[str, Any]]]:
        """The same admin request to every other worker, in parallel; their answers."""
        answers: list[tuple[int, dict[str, Any]]] = [(0, {})] * len(self.peers)

        def one(index: int, port: int) -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            try:
                connection.request(method, path, body=body, headers={
                    "Authorization": "Bearer " + self.admin_token.decode(),
                    "Content-Type": "application/json", FORWARDED_HEADER: "1"})
                response = connection.getresponse()
                answers[index] = (response.status, json.loads(response.read() or b"{}"))
            except (OSError, ValueError, http.client.HTTPException) as exc:
                answers[index] = (502, {"message": f"worker on port {port} did not answer: "
                                                   f"{type(exc).__name__}"})
            finally:
                connection.close()

        threads = [threading.Thread(target=one, args=(i, port), daemon=True)
                   for i, port in enumerate(self.peers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return answers

    def _reroute(self) -> None:
        traffic = {n: p for n, p in self.state.traffic.items()
                   if p > 0 and n in self.deployments and self.deployments[n].serving}
        self._routes = (list(traffic), list(traffic.values()))
        self.mirrors = [(n, p) for n, p in self.state.mirror.items()
                         if p > 0 and n in self.deployments and self.deployments[n].serving]

    # scoring ----------------------------------------------------------------------------------

    def authorized(self, header: str | None, secret: bytes) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].strip().encode(), secret)

    def route(self, named: str | None) -> Deployment | scoring.Answer:
        if named is not None:
            deployment = self.deployments.get(named)
            if deployment is None or not deployment.serving:
                return scoring.unknown_deployment(self.name, named)
            return deployment
        names, weights = self._routes
        if not names:
            return scoring.no_route()
        return self.deployments[random.choices(names, weights)[0] if len(names) > 1 else names[0]]

    def mirror(self, content_type: str | None, body: bytes) -> None:
        for name, percent in self.mirrors:
            if random.random() * 100 < percent:
                deployment = self.deployments.get(name)
                if deployment is not None:
                    try:
                        self.mirror_queue.put_nowait((deployment, content_type, body))
                    except queue.Full:  # mirrored copies are best effort, as on Azure
                        deployment.log("mirror copy dropped: mirror queue full")

    def mirror_worker(self) -> None:
        while True:
            deployment, content_type, body = self.mirror_queue.get()
            started = time.perf_counter()
            answer = scoring.container_answer(deployment.predict, content_type, body,
                                              deployment.model_failed)
            deployment.log(_request_line(answer, started) + " (mirror copy, answer discarded)")

    # admin ------------------------------------------------------------------------------------

    def claim(self, name: str) -> tuple[int, dict[str, Any]] | None:
        """Reserve `name` for a load, or the 409 that refuses it: one operation at a time on a
        deployment, as ARM answers 409 while one runs (two deploys to one endpoint: one wins,
        the other changes nothing), and never a model swapped under live traffic."""
        with self.lock:
            if name in self.loading:
                return 409, {"message": f"an operation is running on deployment {name!r} of "
                                        f"endpoint {self.name!r} (another deploy, or an "
                                        "interrupted one, is loading its model)"}
            # (A mirrored one may be: its answers are discarded.)
            if self.state.traffic.get(name, 0) > 0:
                return 409, {"message": f"deployment {name!r} of endpoint {self.name!r} takes "
                                        "traffic; it is not replaced in place"}
            self.loading.add(name)
            self.cancelled.discard(name)
        return None

    def add(self, name: str, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Load the model for `name`, which claim() reserved."""
        try:
            return self._load(name, request)
        finally:
            with self.lock:
                self.loading.discard(name)
                self.cancelled.discard(name)
                if self.pending.pop(name, None) is not None:
                    self.save()  # a load discarded after its delete

    def _cancelled(self, name: str) -> tuple[int, dict[str, Any]]:
        LOG.write(name, "model load ended after the deployment was deleted; discarded")
        return 409, {"message": f"deployment {name!r} was deleted while its model loaded"}

    def _load(self, name: str, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        path = Path(str(request.get("path") or ""))
        model_doc = {k: str(v) for k, v in (request.get("model") or {}).items()}
        deployment = Deployment(name, st.DeploymentRecord(
            model=model_doc, path=str(path), digest=request.get("digest"), state="Creating"))
        previous = self.deployments.get(name)
        if previous is not None:
            deployment.lines.extend(previous.lines)
        # A failed load answers this attempt's lines only: the earlier model's are not the
        # failure's (they stay in the deployment's log).
        attempt = deployment.logged
        deployment.log(f"loading model {model_doc.get('name')} version "
                       f"{model_doc.get('version')} from {path}")
        with self.lock:
            deployment.record.state = "Creating" if previous is None else "Updating"
            self.pending[name] = deployment
            self.save()
        warnings = requirement_warnings(path) if path.is_dir() else []
        for warning in warnings:
            deployment.log(f"WARNING: {warning}")
        started = time.perf_counter()
        try:
            if not path.is_dir():
                raise FileNotFoundError(f"no model folder at {path}")
            model = load_model(path)
        except Exception as exc:
            message = explain_load_failure(exc, path)
            answered = deployment.since(attempt)
            deployment.log("load failed: " + "".join(
                traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip())
            if not isinstance(exc, ModuleNotFoundError):
                # A missing module is all its traceback says (the ERROR line names it); any
                # other failure's traceback is where it happened, for the deploy's report.
                answered = deployment.since(attempt)
            deployment.log(f"ERROR: {message}")
            answered.append(deployment.lines[-1])
            with self.lock:
                self.pending.pop(name, None)
                if name in self.cancelled:
                    return self._cancelled(name)
                if previous is not None and previous.serving:
                    # A failed update leaves the deployment that served before serving.
                    previous.lines = deployment.lines
                    previous.log("the update failed; the previous model keeps serving")
                else:
                    deployment.record.state = "Failed"
                    deployment.record.error = message
                    self.deployments[name] = deployment
                    self._reroute()
                self.save()
            return 422, {"message": message, "logs": "\n".join(answered)}
        deployment.model = model
        deployment.record.state = "Succeeded"
        deployment.record.warnings = warnings
        deployment.log(f"model loaded in {time.perf_counter() - started:.1f}s; serving")
        with self.lock:
            self.pending.pop(name, None)
            if name in self.cancelled:
                return self._cancelled(name)
            self.deployments[name] = deployment
            self._reroute()
            self.save()
        return 200, {"deployment": name, "state": "Succeeded", "warnings": warnings}

    def delete(self, name: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            if self.state.traffic.get(name, 0) > 0 or self.state.mirror.get(name, 0) > 0:
                return 409, {"message": f"deployment {name!r} still has traffic; set its traffic "
                                        "to 0 before deleting it"}
            deleted = self.deployments.pop(name, None) is not None or name in self.loading
            if name in self.loading:
                self.cancelled.add(name)  # the load in progress is discarded when it ends
                self.pending.pop(name, None)
            self.state.traffic.pop(name, None)
            self.state.mirror.pop(name, None)
            self._reroute()
            self.save()
        if deleted:
            LOG.write(name, "deployment deleted")
        return 200, {"deleted": deleted}

    def set_traffic(self, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        traffic = {str(k): int(v) for k, v in (request.get("traffic") or {}).items()}
        mirror = {str(k): int(v) for k, v in (request.get("mirror") or {}).items()}
        with self.lock:
            for name, percent in {**traffic, **mirror}.items():
                deployment = self.deployments.get(name)
                if name in self.pending and percent > 0:
                    return 409, {"message": f"deployment {name!r} of endpoint {self.name!r} is "
                                            "still loading its model; it cannot take traffic "
                                            "yet"}
                if deployment is None:
                    return 400, {"message": f"no deployment {name!r} in endpoint {self.name!r}"}
                if percent > 0 and not deployment.serving:
                    return 400, {"message": f"deployment {name!r} failed to load; it cannot "
                                            "take traffic"}
            self.state.traffic = traffic
            self.state.mirror = mirror
            self._reroute()
            self.save()
        LOG.write("-", f"traffic {traffic} mirror {mirror}")
        return 200, {"traffic": traffic, "mirror": mirror}

    def logs(self, name: str, tail: int) -> tuple[int, dict[str, Any]]:
        deployment = self.pending.get(name) or self.deployments.get(name)
        if deployment is None:
            return 404, {"message": f"no deployment {name!r} in endpoint {self.name!r}"}
        lines = list(deployment.lines)[-tail:] if tail > 0 else []
        return 200, {"logs": "\n".join(lines)}


# -- HTTP --------------------------------------------------------------------------------------


def _request_line(container: scoring.Answer, started: float) -> str:
    """A scoring request's log line: the container's status, the whole time in this server,
    the model's own share of it (its predict call) and the answer's size."""
    line = f"POST /score {container.status} {(time.perf_counter() - started) * 1e3:.3f}ms"
    if container.model_seconds is not None:
        line += f" (model {container.model_seconds * 1e3:.3f}ms)"
    return f"{line} {len(container.body)} bytes"


class RequestHeaders:
    """A request's headers by case-insensitive name; the first of a repeated one is its value,
    as with http.server's email.message.Message."""

    def __init__(self) -> None:
        self._values: dict[str, str] = {}

    def add(self, name: str, value: str) -> None:
        self._values.setdefault(name.lower(), value)

    def get(self, name: str, default: Any = None) -> Any:
        return self._values.get(name.lower(), default)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse one connection
    server_version = "amlpromote-local-endpoint"
    sys_version = ""
    endpoint: Endpoint  # set on the class by serve()
    raw_requestline: bytes  # set by handle_one_request

    def setup(self) -> None:
        super().setup()
        # One write per answer and no Nagle delay on the small ones.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # The standard parse_request reads headers with the email package, which took a tenth of a
    # 1-row request's time in a profile; this reads them directly, with the same limits
    # (http.client's 100 headers and 64 KiB lines) and the parts of HTTP/1.1 a client of a
    # scoring endpoint uses (keep-alive, Connection: close, Expect: 100-continue).
    def parse_request(self) -> bool:
        self.command = ""
        self.request_version = version = "HTTP/0.9"
        self.close_connection = True
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if len(words) != 3 or words[2] not in ("HTTP/1.0", "HTTP/1.1"):
            self.request_version = "HTTP/1.1"  # so send_error answers with headers
            self.send_error(400, "Bad request line: expected METHOD PATH HTTP/1.1")
            return False
        self.command, self.path, version = words
        self.request_version = version
        if self.path.startswith("//"):  # as http.server does (gh-87389)
            self.path = "/" + self.path.lstrip("/")
        headers = RequestHeaders()
        for _ in range(101):
            line = self.rfile.readline(65537)
            if len(line) > 65536:
                self.send_error(431, "Line too long")
                return False
            if line in (b"\r\n", b"\n", b""):
                break
            name, colon, value = str(line, "iso-8859-1").partition(":")
            if not colon or not name or name != name.strip() or name[0] in " \t":
                # RFC 9112 5.1/5.2: no space before the colon, no obsolete line folding
                self.send_error(400, "Bad header line")
                return False
            headers.add(name, value.strip())
        else:
            self.send_error(431, "Too many headers")
            return False
        self.headers = headers  # type: ignore[assignment]
        length = headers.get("Content-Length", "0")
        if not (length.isascii() and length.isdigit()):
            self.send_error(400, "Bad Content-Length")
            return False
        connection = headers.get("Connection", "").lower()
        self.close_connection = connection == "close" or (
            version == "HTTP/1.0" and connection != "keep-alive")
        if (headers.get("Expect", "").lower() == "100-continue" and version == "HTTP/1.1"):
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def log_message(self, format: str, *args: Any) -> None:
        # http.server logs to stderr per request; our lines go to the deployment's log instead.
        pass

    def _send(self, answer: scoring.Answer, close: bool = False) -> None:
        lines = [f"HTTP/1.1 {answer.status} {http.HTTPStatus(answer.status).phrase}",
                 "Content-Type: application/json", f"Content-Length: {len(answer.body)}"]
        lines += [f"{k}: {v}" for k, v in answer.headers.items()]
        if close:
            lines.append("Connection: close")
            self.close_connection = True
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + answer.body)

    def _json(self, status: int, doc: dict[str, Any], close: bool = False) -> None:
        self._send(scoring.Answer(status, json.dumps(doc).encode()), close)

    def _body(self) -> bytes | None:
        """The request body; None when it is too large to read (the connection then closes)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return None
        length = int(self.headers.get("Content-Length") or 0)  # checked by parse_request
        if length > scoring.MAX_PAYLOAD_BYTES:
            return None
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path in ("/", "/health"):
            self._json(200, {"status": "Healthy", "server": st.SERVER_NAME,
                             "instance": self.endpoint.instance_id})
            return
        if path.startswith(st.ADMIN_PREFIX + "/"):
            self._admin("GET", path, query, b"")
            return
        self._json(404, {"message": f"no route {path}"})

    def do_DELETE(self) -> None:
        body = self._body()
        path, _, query = self.path.partition("?")
        if path.startswith(st.ADMIN_PREFIX + "/") and body is not None:
            self._admin("DELETE", path, query, body)
            return
        self._json(404, {"message": f"no route {path}"}, close=body is None)

    def do_PUT(self) -> None:
        self.do_POST()

    def do_POST(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/score":
            self._score()
            return
        body = self._body()
        if path.startswith(st.ADMIN_PREFIX + "/") and body is not None:
            self._admin(self.command, path, query, body)
            return
        self._json(404 if body is not None else 413, {"message": f"no route {path}"},
                   close=body is None)

    def _score(self) -> None:
        endpoint = self.endpoint
        started = time.perf_counter()
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            # Azure ML clients send a Content-Length; a chunked body is not read here.
            self._send(scoring.error_answer(411, "Length Required: send a Content-Length"),
                       close=True)
            return
        body = self._body()
        # The front door checks the key before anything else (401 also for an oversized body).
        if not endpoint.authorized(self.headers.get("Authorization"), endpoint.key):
            self._send(scoring.unauthorized(), close=body is None)
            return
        if body is None:
            self._send(scoring.payload_too_large(), close=True)
            return
        named = self.headers.get(scoring.DEPLOYMENT_HEADER)
        routed = endpoint.route(named or None)
        if isinstance(routed, scoring.Answer):
            self._send(routed)
            return
        content_type = self.headers.get("Content-Type")
        if not named and endpoint.mirrors:
            # Azure mirrors only what the traffic split routes, never a header-targeted request.
            endpoint.mirror(content_type, body)
        container = scoring.container_answer(routed.predict, content_type, body,
                                             routed.model_failed)
        answer = scoring.through_front_door(container, routed.name)
        answer.headers["x-request-id"] = self.headers.get("x-request-id") or uuid.uuid4().hex
        self._send(answer)
        routed.log(_request_line(container, started))

    def _admin(self, method: str, path: str, query: str, body: bytes) -> None:
        endpoint = self.endpoint
        if getattr(self.server, "role", "") != "admin":
            self._json(404, {"message": f"no route {path}"})
            return
        if not endpoint.authorized(self.headers.get("Authorization"), endpoint.admin_token):
            self._json(401, {"message": "admin token required"})
            return
        parts = [urllib.parse.unquote(p) for p in path[len(st.ADMIN_PREFIX) + 1:].split("/")]
        try:
            request = json.loads(body) if body else {}
            if not isinstance(request, dict):
                raise ValueError("expected a JSON object")
        except ValueError as exc:
            self._json(400, {"message": f"bad admin request: {exc}"})
            return
        fan_out = endpoint.primary and not self.headers.get(FORWARDED_HEADER)
        status, doc = 404, {"message": f"no admin route {method} {path}"}
        if parts == ["state"] and method == "GET":
            status, doc = 200, endpoint.state.as_json()
        elif len(parts) == 2 and parts[0] == "deployments" and method in ("POST", "PUT"):
            # Every worker loads the model at once; the first one's answer is the answer,
            # unless another worker failed where it did not.
            others: list[tuple[int, dict[str, Any]]] = []
            forwarding = threading.Thread(
                target=lambda: others.extend(endpoint.forward(method, self.path, body)))
            refused = endpoint.claim(parts[1])
            if refused is not None:
                status, doc = refused
            else:
                if fan_out:
                    forwarding.start()
                status, doc = endpoint.add(parts[1], request)
                if fan_out:
                    forwarding.join()
                    failed = [(s, d) for s, d in others if s != 200]
                    if status == 200 and failed:
                        status, doc = failed[0]
        elif len(parts) == 2 and parts[0] == "deployments" and method == "DELETE":
            status, doc = endpoint.delete(parts[1])
            if fan_out and status == 200:
                endpoint.forward(method, self.path, body)
        elif len(parts) == 3 and parts[0] == "deployments" and parts[2] == "logs":
            tail = int(urllib.parse.parse_qs(query).get("tail", ["50"])[0])
            status, doc = endpoint.logs(parts[1], tail)
            if fan_out and status == 200:
                # Lines start with their UTC timestamp: a stable sort on it alone merges the
                # workers' logs and keeps each entry's lines in their order.
                lines = str(doc["logs"]).splitlines()
                for _, other in endpoint.forward(method, self.path, body, timeout=10):
                    lines += str(other.get("logs") or "").splitlines()
                merged = sorted(lines, key=lambda text: text[:_STAMP_WIDTH])
                doc = {"logs": "\n".join(merged[-tail:] if tail > 0 else [])}
        elif parts == ["traffic"] and method in ("POST", "PUT"):
            status, doc = endpoint.set_traffic(request)
            if fan_out and status == 200:
                endpoint.forward(method, self.path, body)
        elif parts == ["shutdown"] and method == "POST":
            self._json(200, {"stopping": True}, close=True)
            threading.Thread(target=SHUTDOWN.set, daemon=True).start()
            return
        self._json(status, doc)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    # Every worker binds the scoring port: the kernel spreads connections over them.
    allow_reuse_port = True

    def __init__(self, address: tuple[str, int], role: str) -> None:
        self.role = role
        super().__init__(address, Handler)


SHUTDOWN = threading.Event()


def _serve_in_thread(server: Server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                              name=f"serve-{server.role}", daemon=True)
    thread.start()
    return thread


def _start_peers(folder: Path, port: int, instance_id: str, workers: int) -> list[int]:
    """Start the other workers (same process group, same log) and wait for their admin
    ports; a worker that does not come up is logged and left out."""
    files = [folder / f".worker-{n}.port" for n in range(1, workers)]
    for path in files:
        path.unlink(missing_ok=True)
        subprocess.Popen([sys.executable, "-m", "amlpromote.core.deploy.local.server",
                          "--state-dir", str(folder), "--join", str(port),
                          "--instance", instance_id, "--port-file", str(path)],
                         stdin=subprocess.DEVNULL)
    ports: list[int] = []
    deadline = time.monotonic() + 60
    for path in files:
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            ports.append(int(path.read_text()))
        except (OSError, ValueError):
            LOG.write("-", f"worker {path.name} did not start; serving with fewer workers")
    return ports


def _watch_parent(parent: int) -> None:
    # A worker must not outlive the first worker (kill -9 of it leaves no one to stop us).
    while not SHUTDOWN.wait(0.5):
        if os.getppid() != parent:
            SHUTDOWN.set()


def serve(folder: Path, workers: int = 1, join: int | None = None,
          instance_id: str | None = None, port_file: Path | None = None) -> None:
    """Serve the endpoint of `folder`: as its first worker (`join` None: binds a new port,
    starts `workers - 1` more), or as one more worker on the scoring port `join`."""
    primary = join is None
    scoring_server = Server(("127.0.0.1", join or 0), "scoring")
    admin_server = Server(("127.0.0.1", 0), "admin")
    port = scoring_server.server_address[1]
    endpoint = Endpoint(folder, port, admin_server.server_address[1],
                        instance_id or uuid.uuid4().hex, primary, workers)
    Handler.endpoint = endpoint
    threading.Thread(target=_warm_up, name="warm-up", daemon=True).start()
    threading.Thread(target=endpoint.mirror_worker, name="mirror", daemon=True).start()
    signal.signal(signal.SIGTERM, lambda signum, frame: SHUTDOWN.set())
    signal.signal(signal.SIGINT, lambda signum, frame: SHUTDOWN.set())
    threads = [_serve_in_thread(scoring_server), _serve_in_thread(admin_server)]
    if primary:
        endpoint.peers = _start_peers(folder, port, endpoint.instance_id, workers)
        endpoint.state.workers = 1 + len(endpoint.peers)
        endpoint.save()  # platform.py waits for this file: every worker is up by now
        LOG.write("-", f"endpoint {endpoint.name} serving on http://127.0.0.1:{port} with "
                       f"{endpoint.state.workers} worker(s) (pid {os.getpid()}, instance "
                       f"{endpoint.instance_id})")
    else:
        assert port_file is not None
        WORKER_TAG[0] = f"(worker {port_file.stem.rsplit('-', 1)[-1]}) "
        threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
        st.write_atomic(port_file, str(admin_server.server_address[1]).encode())
    try:
        while not SHUTDOWN.wait(0.5):
            if not all(thread.is_alive() for thread in threads):
                break
    finally:
        for server in (scoring_server, admin_server):
            server.shutdown()
            server.server_close()
        LOG.write("-", "stopped" if primary else "worker stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="amlpromote's local online endpoint server")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes sharing the scoring port (each loads every model)")
    # Internal: how the first worker starts the others.
    parser.add_argument("--join", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--instance", help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    serve(args.state_dir.resolve(), max(1, args.workers), args.join, args.instance,
          args.port_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
