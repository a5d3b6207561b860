"""The REST fast path: plain MLflow servers are reached without importing mlflow (issue 2).

Everything runs against real `mlflow server`s: the product's `MlflowRestClient` must see what
MLflow's own `MlflowClient` sees, fail with the same errors, retry like MLflow, send the user's
credentials without ever printing them, and keep the MLflow 2 fallback (no LoggedModel API)
working. Faults come from the `flaky_proxy` fixture and a small forwarding gateway.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from support.cli import run_cli_reporting_imports as run_cli
from support.flaky_proxy import FlakyProxy
from support.mlflow_server import MlflowServer
from support.models import register_heart_model

from amlpromote.core.errors import NotFound, Unreachable
from amlpromote.core.registries.mlflow_env import translate_mlflow_error
from amlpromote.core.registries.mlflow_rest import MlflowRestClient, RestError
from amlpromote.core.registries.registry import MlflowRegistry, VersionInfo
from amlpromote.core.uris import parse_registry_uri

# An opaque token: no redaction pattern matches it, so it must simply never be printed.
TOKEN = "tok-Rest9Vq2Wm5Xz8Lp"
# What a Flask-based MLflow 2 server answers for a route it does not have (the LoggedModel API).
FLASK_404 = (
    b'<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n'
    b"<p>The requested URL was not found on the server.</p>\n"
)
LOGGED_MODELS = "/api/2.0/mlflow/logged-models"


@dataclass(frozen=True)
class Source:
    server: MlflowServer
    name: str
    version: str


@pytest.fixture(scope="module")
def source(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Source:
    """A real sklearn model version (alias champion) on the shared server."""
    name = f"rest-heart-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("rest-cwd"))
        version = register_heart_model(mlflow_server.url, name=name, alias="champion")
    return Source(mlflow_server, name, version)


def mlflow_client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# -- a forwarding gateway: checks a bearer token, records requests, can play MLflow 2 -----------


class _Gateway(ThreadingHTTPServer):
    daemon_threads = True
    upstream: tuple[str, int] = ("127.0.0.1", 0)
    token: str | None = None  # the bearer token it demands; None lets everything through
    mlflow2: bool = False  # answer the LoggedModel API like an MLflow 2 server (HTML 404)
    seen: list[tuple[str, str, str]]  # method, path, Authorization header

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _GatewayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Gateway

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response_only(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        authorization = self.headers.get("Authorization", "")
        path = urlsplit(self.path).path
        self.server.seen.append((self.command, path, authorization))
        if self.server.token is not None and authorization != f"Bearer {self.server.token}":
            self._reply(401, b"You are not authenticated.", "text/plain")
            return
        if self.server.mlflow2 and path.startswith(LOGGED_MODELS):
            self._reply(404, FLASK_404, "text/html; charset=utf-8")
            return
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in ("host", "connection", "keep-alive", "content-length")
        }
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=120)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            answer_headers = response.getheaders()
            status = response.status
        finally:
            upstream.close()
        self.send_response_only(status)
        for name, value in answer_headers:
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


@pytest.fixture
def gateway_factory() -> Iterator[Callable[..., _Gateway]]:
    """`gateway_factory(server, token=..., mlflow2=...)` -> a started gateway to `server`."""
    gateways: list[_Gateway] = []

    def start(server: MlflowServer, **attributes: Any) -> _Gateway:
        gateway = _Gateway(("127.0.0.1", 0), _GatewayHandler)
        gateway.upstream = (server.host, server.port)
        gateway.seen = []
        for key, value in attributes.items():
            setattr(gateway, key, value)
        threading.Thread(target=gateway.serve_forever, daemon=True).start()
        gateways.append(gateway)
        return gateway

    yield start
    for gateway in gateways:
        gateway.shutdown()
        gateway.server_close()


# -- 1: a server-to-server copy never imports mlflow -------------------------------------------


def test_server_to_server_copy_never_imports_mlflow(
    source: Source, mlflow_server_b: MlflowServer, unique_model_name: str
) -> None:
    args = ["copy-model", f"{source.name}@champion", "--source", source.server.url,
            "--target", mlflow_server_b.url, "--target-name", unique_model_name,
            "--verify", "-o", "json"]  # fmt: skip
    first = run_cli(*args)
    again = run_cli(*args)

    for run, status in ((first, "copied"), (again, "unchanged")):
        assert run.code == 0, run.stdout + run.stderr
        assert json.loads(run.stdout)["status"] == status
        assert run.imported["mlflow"] is False, run.stderr
    document = json.loads(first.stdout)
    assert document["verified"] is True
    # What MLflow itself reads back from the target: a version of a READY LoggedModel.
    client = mlflow_client(mlflow_server_b.url)
    mv = client.get_model_version(unique_model_name, document["target"]["version"])
    assert mv.tags["amlpromote.digest"] == document["source"]["digest"]
    assert mv.source.startswith("models:/m-")
    logged = client.get_logged_model(mv.source.removeprefix("models:/"))
    assert str(logged.status).endswith("READY")


def test_rest_client_is_chosen_only_for_plain_servers(
    mlflow_server: MlflowServer, fresh_stores: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    server = MlflowRegistry(parse_registry_uri(mlflow_server.url))
    assert isinstance(server.client, MlflowRestClient)
    sqlite = MlflowRegistry(parse_registry_uri(fresh_stores["sqlite"]), role="target")
    assert isinstance(sqlite.client, MlflowClient)
    # An MLflow auth plugin only MLflow's client can load: keep MLflow's client for it.
    monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "some_auth_plugin")
    plugin = MlflowRegistry(parse_registry_uri(mlflow_server.url))
    assert not plugin.uses_rest
    assert isinstance(plugin.client, MlflowClient)


# -- 2: the REST client sees what MlflowClient sees ---------------------------------------------


def test_reads_match_mlflow_client(source: Source) -> None:
    uri = source.server.url
    rest, reference = MlflowRestClient(uri), mlflow_client(uri)
    name, version = source.name, source.version

    assert VersionInfo.from_mlflow(rest.get_model_version(name, version)) == \
        VersionInfo.from_mlflow(reference.get_model_version(name, version))
    assert VersionInfo.from_mlflow(rest.get_model_version_by_alias(name, "champion")) == \
        VersionInfo.from_mlflow(reference.get_model_version_by_alias(name, "champion"))
    assert [VersionInfo.from_mlflow(v) for v in rest.search_model_versions(f"name='{name}'")] == \
        [VersionInfo.from_mlflow(v) for v in reference.search_model_versions(f"name='{name}'")]
    rm, expected_rm = rest.get_registered_model(name), reference.get_registered_model(name)
    assert (rm.name, rm.description, rm.tags, rm.aliases) == \
        (expected_rm.name, expected_rm.description, expected_rm.tags, expected_rm.aliases)
    assert rm.aliases == {"champion": version}

    download = rest.get_model_version_download_uri(name, version)
    assert download == reference.get_model_version_download_uri(name, version)
    mv = reference.get_model_version(name, version)
    model_id = mv.model_id or mv.source.removeprefix("models:/")
    logged, expected_logged = rest.get_logged_model(model_id), reference.get_logged_model(model_id)
    assert logged.artifact_location == expected_logged.artifact_location
    assert logged.artifact_location.startswith("mlflow-artifacts:/")
    assert logged.status == str(expected_logged.status) == "READY"
    run = rest.get_run(mv.run_id)
    assert run.info.artifact_uri == reference.get_run(mv.run_id).info.artifact_uri
    # The registry's artifact lookup resolves models:/m-... through the logged model.
    registry = MlflowRegistry(parse_registry_uri(uri))
    assert registry.artifact_uri(registry.get_version(name, version)) == \
        expected_logged.artifact_location

    assert rest.get_experiment_by_name(f"no-such-experiment-{uuid.uuid4().hex}") is None


def test_errors_translate_like_mlflow_errors(source: Source) -> None:
    from mlflow.exceptions import MlflowException

    uri = source.server.url
    missing = f"{source.name}-missing"
    calls: list[tuple[str, Callable[[Any], Any]]] = [
        ("model", lambda c: c.get_registered_model(missing)),
        ("version", lambda c: c.get_model_version(source.name, "999")),
        ("alias", lambda c: c.get_model_version_by_alias(source.name, "nope")),
    ]
    for label, call in calls:
        with pytest.raises(RestError) as ours:
            call(MlflowRestClient(uri))
        with pytest.raises(MlflowException) as theirs:
            call(mlflow_client(uri))
        mine = translate_mlflow_error(ours.value, f"reading {label}", uri)
        reference = translate_mlflow_error(theirs.value, f"reading {label}", uri)
        assert (type(mine), mine.message, mine.hint, mine.exit_code) == \
            (type(reference), reference.message, reference.hint, reference.exit_code), label
    # Through the registry, a missing model is NotFound (exit 3) naming what is missing.
    registry = MlflowRegistry(parse_registry_uri(uri))
    with pytest.raises(NotFound) as caught:
        registry.get_version(missing, "1")
    assert f"'{missing}' does not exist" in caught.value.message
    assert caught.value.exit_code == 3


def test_version_search_pages(mlflow_server: MlflowServer, unique_model_name: str) -> None:
    reference = mlflow_client(mlflow_server.url)
    reference.create_registered_model(unique_model_name)
    # Sources inside a run's artifact root: newer servers refuse any other source.
    experiment = reference.get_experiment_by_name("Default")
    run = reference.create_run(experiment.experiment_id if experiment else "0")
    for index in range(5):
        reference.create_model_version(
            unique_model_name, f"{run.info.artifact_uri}/pages/{index}",
            run_id=run.info.run_id, tags={"index": str(index)},
        )
    rest = MlflowRestClient(mlflow_server.url)

    pages: list[list[str]] = []
    token = None
    while True:
        page = rest.search_model_versions(f"name='{unique_model_name}'", max_results=2,
                                          page_token=token)  # fmt: skip
        pages.append([v.version for v in page])
        token = page.token
        if not token:
            break
    assert [len(p) for p in pages] == [2, 2, 1]
    assert sorted(v for p in pages for v in p) == ["1", "2", "3", "4", "5"]
    # The registry lists every version, with its tags.
    registry = MlflowRegistry(parse_registry_uri(mlflow_server.url))
    listed = registry.list_versions(unique_model_name, filter_tags={"index": "3"})
    assert [(v.version, v.source) for v in listed] == [("4", f"{run.info.artifact_uri}/pages/3")]


# -- 3: retries -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["503-retry-after", "429-retry-after", "dropped-connection"])
def test_transient_faults_are_retried(
    fault: str, source: Source, flaky_proxy: FlakyProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No backoff of our own: any pause measured below is the server's Retry-After.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")
    match = r"^GET /api/2\.0/mlflow/registered-models/get"
    if fault == "dropped-connection":
        flaky_proxy.configure(drop_every_n=1, max_faults=2, match=match)
    else:
        flaky_proxy.configure(fail_every_n=1, max_faults=2, fail_status=int(fault[:3]),
                              retry_after=1, match=match)  # fmt: skip
    client = MlflowRestClient(flaky_proxy.url)

    started = time.monotonic()
    model = client.get_registered_model(source.name)
    elapsed = time.monotonic() - started

    assert model.name == source.name
    assert flaky_proxy.counters.faults_injected == 2, flaky_proxy.counters
    # Two faults, two retries (counted above); a lower bound on time is safe on a loaded
    # machine, an upper one is not, so the dropped connections' zero backoff is not timed.
    if fault != "dropped-connection":
        assert elapsed >= 2.0, f"Retry-After: 1 was not honoured ({elapsed:.2f}s for 2 retries)"


def test_retries_are_bounded(
    source: Source, flaky_proxy: FlakyProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")
    flaky_proxy.configure(always_fail=True, retry_after=0)
    registry = MlflowRegistry(parse_registry_uri(flaky_proxy.url))

    with pytest.raises(Unreachable) as caught:
        registry.get_version(source.name, source.version)
    assert flaky_proxy.counters.failed == 3  # the first attempt and MLFLOW_..._MAX_RETRIES=2
    assert "cannot reach" in caught.value.message


def test_retry_after_is_clamped() -> None:
    # A proxy asking for an hour must not stall a CI step for an hour.
    client = MlflowRestClient("http://127.0.0.1:9")
    assert client._pause(1, 3600.0, 0.0) == 120.0
    assert client._pause(1, 30.0, 290.0) is None  # over the budget for one call's pauses


# -- 4: credentials --------------------------------------------------------------------------


def test_tracking_token_is_sent_and_never_shown(
    source: Source,
    mlflow_server_b: MlflowServer,
    gateway_factory: Callable[..., _Gateway],
    unique_model_name: str,
) -> None:
    source_gateway = gateway_factory(source.server, token=TOKEN)
    target_gateway = gateway_factory(mlflow_server_b, token=TOKEN)
    run = run_cli("copy-model", f"{source.name}/{source.version}",
                  "--source", source_gateway.url, "--target", target_gateway.url,
                  "--target-name", unique_model_name, "--verbose",
                  env={"MLFLOW_TRACKING_TOKEN": TOKEN})  # fmt: skip

    assert run.code == 0, run.stdout + run.stderr
    assert run.stderr.startswith("debug: ")
    assert TOKEN not in run.stdout + run.stderr
    assert run.imported["mlflow"] is False
    # Every request on both sides, REST calls and artifact transfers alike, carried the token.
    for gateway in (source_gateway, target_gateway):
        assert gateway.seen, "the gateway saw no request"
        assert {auth for _, _, auth in gateway.seen} == {f"Bearer {TOKEN}"}
        paths = {path for _, path, _ in gateway.seen}
        assert any(p.startswith("/api/2.0/mlflow/") for p in paths), paths
        assert any(p.startswith("/api/2.0/mlflow-artifacts/") for p in paths), paths


# -- 5: a server without the LoggedModel API (MLflow 2) ----------------------------------------


def test_mlflow2_target_falls_back_to_a_run(
    source: Source,
    mlflow_server_b: MlflowServer,
    gateway_factory: Callable[..., _Gateway],
    unique_model_name: str,
    tmp_path: Path,
) -> None:
    target = gateway_factory(mlflow_server_b, mlflow2=True)
    args = ["copy-model", f"{source.name}/{source.version}", "--source", source.server.url,
            "--target", target.url, "--target-name", unique_model_name, "-o", "json"]  # fmt: skip
    first = run_cli(*args)
    again = run_cli(*args)

    assert first.code == 0, first.stdout + first.stderr
    assert json.loads(first.stdout)["status"] == "copied"
    assert again.code == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)["status"] == "unchanged"
    assert ("POST", LOGGED_MODELS, "") in target.seen, "the LoggedModel API was never tried"
    client = mlflow_client(mlflow_server_b.url)
    mv = client.get_model_version(unique_model_name, "1")
    # Registered from a finished run, not from a LoggedModel.
    assert mv.run_id and not mv.source.startswith("models:/")
    assert client.get_run(mv.run_id).info.status == "FINISHED"
    # The files are the source's bytes.
    from mlflow.artifacts import download_artifacts

    original = Path(download_artifacts(
        artifact_uri=mlflow_client(source.server.url).get_logged_model(
            _model_id(source)).artifact_location,
        dst_path=str(tmp_path / "source"), tracking_uri=source.server.url))  # fmt: skip
    copied = Path(download_artifacts(artifact_uri=mv.source, dst_path=str(tmp_path / "target"),
                                     tracking_uri=mlflow_server_b.url))  # fmt: skip
    assert _tree(copied) == _tree(original)
    assert "MLmodel" in _tree(copied)


def _model_id(source: Source) -> str:
    mv = mlflow_client(source.server.url).get_model_version(source.name, source.version)
    return str(mv.model_id or mv.source.removeprefix("models:/"))


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip
