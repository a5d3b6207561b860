"""Tests of the test infrastructure itself (tests/support and conftest fixtures)."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from support import FreshStores
from support.flaky_proxy import FlakyProxy
from support.mlflow_server import MlflowServer
from support.models import (
    HEART_VERSION_DESCRIPTION,
    HEART_VERSION_TAGS,
    register_heart_model,
    register_raw_model,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient


def _global_mlflow_state() -> tuple[str, str, str | None, str | None, str | None]:
    import mlflow

    return (
        mlflow.get_tracking_uri(),
        mlflow.get_registry_uri(),
        os.environ.get("MLFLOW_TRACKING_URI"),
        os.environ.get("MLFLOW_REGISTRY_URI"),
        os.environ.get("MLFLOW_ALLOW_FILE_STORE"),
    )


def _client(uri: str, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    import mlflow

    if uri.startswith("file:"):
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _request(
    url: str, method: str = "GET", path: str = "/health", body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    host_port = url.removeprefix("http://")
    conn = http.client.HTTPConnection(host_port, timeout=30)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


# -- mlflow server ------------------------------------------------------------------------------


def test_server_is_healthy_and_registers_with_proxied_artifacts(
    mlflow_server: MlflowServer, unique_model_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with urllib.request.urlopen(f"{mlflow_server.url}/health", timeout=5) as response:
        assert response.status == 200
    before = _global_mlflow_state()

    version = register_heart_model(mlflow_server.url, name=unique_model_name)

    assert _global_mlflow_state() == before
    client = _client(mlflow_server.url, monkeypatch)
    assert version == "1"
    download_uri = client.get_model_version_download_uri(unique_model_name, version)
    assert download_uri.startswith("mlflow-artifacts:/")
    model_version = client.get_model_version(unique_model_name, version)
    assert model_version.description == HEART_VERSION_DESCRIPTION
    assert HEART_VERSION_TAGS.items() <= model_version.tags.items()
    assert "champion" in model_version.aliases
    # Proxied artifacts live in the server's folder, reached only through the server.
    assert any(mlflow_server.artifacts_dir.rglob("MLmodel"))


def test_private_unproxied_server_gives_file_uris_and_stops_its_whole_group(
    mlflow_server_factory: Callable[..., MlflowServer],
    unique_model_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = mlflow_server_factory(serve_artifacts=False)
    pid = server.pid
    assert pid is not None

    version = register_raw_model(server.url, unique_model_name, {"weights.bin": b"\x00\x01"})
    client = _client(server.url, monkeypatch)
    download_uri = client.get_model_version_download_uri(unique_model_name, version)
    assert download_uri.startswith(server.artifacts_dir.as_uri())

    server.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert not server.is_running()


# -- flaky proxy --------------------------------------------------------------------------------


def test_proxy_forwards_then_injects_503_with_retry_after(flaky_proxy: FlakyProxy) -> None:
    status, _, body = _request(flaky_proxy.url)
    assert (status, body) == (200, b"OK")

    flaky_proxy.configure(fail_every_n=2, retry_after=3)
    statuses = [_request(flaky_proxy.url)[0] for _ in range(4)]
    assert statuses == [200, 503, 200, 503]
    status, headers, _ = _request(flaky_proxy.url, path="/health")  # 5th: passes
    assert status == 200

    flaky_proxy.configure(always_fail=True)
    status, headers, _ = _request(flaky_proxy.url)
    assert status == 503
    assert headers["Retry-After"] == "3"

    counters = flaky_proxy.counters
    assert counters.requests_seen == 7
    assert counters.failed == 3
    assert counters.faults_injected == 3


def test_proxy_fault_budget_and_match_filter(flaky_proxy: FlakyProxy) -> None:
    flaky_proxy.configure(always_fail=True, max_faults=2, match=r"^GET /health")
    assert [_request(flaky_proxy.url)[0] for _ in range(3)] == [503, 503, 200]
    # A non-matching request neither fails nor spends budget.
    flaky_proxy.configure(max_faults=None, match=r"^POST ")
    assert _request(flaky_proxy.url)[0] == 200
    assert flaky_proxy.counters.requests_matched == 3


@pytest.fixture
def large_payload(tmp_path: Path) -> Iterator[bytes]:
    # Not compressible and not repetitive, so truncation or reordering would show in the hash.
    yield os.urandom(24 * 1024 * 1024 + 7)


def test_proxy_streams_large_bodies_both_ways_and_chunked(
    flaky_proxy: FlakyProxy, large_payload: bytes, unique_model_name: str
) -> None:
    path = f"/api/2.0/mlflow-artifacts/artifacts/{unique_model_name}/big.bin"
    status, _, _ = _request(flaky_proxy.url, "PUT", path, large_payload)
    assert status == 200
    status, _, downloaded = _request(flaky_proxy.url, "GET", path)
    assert status == 200
    assert hashlib.sha256(downloaded).digest() == hashlib.sha256(large_payload).digest()

    # Chunked upload (no Content-Length), as clients streaming from a generator send it.
    conn = http.client.HTTPConnection(flaky_proxy.url.removeprefix("http://"), timeout=30)
    pieces = (large_payload[i : i + 3_000_000] for i in range(0, len(large_payload), 3_000_000))
    conn.request("PUT", path + ".chunked", body=pieces, encode_chunked=True)
    assert conn.getresponse().status == 200
    conn.close()
    status, _, downloaded = _request(flaky_proxy.url, "GET", path + ".chunked")
    assert hashlib.sha256(downloaded).digest() == hashlib.sha256(large_payload).digest()


def test_proxy_drops_connections_before_and_during_responses(
    flaky_proxy: FlakyProxy, unique_model_name: str
) -> None:
    path = f"/api/2.0/mlflow-artifacts/artifacts/{unique_model_name}/payload.bin"
    payload = os.urandom(3 * 1024 * 1024)
    assert _request(flaky_proxy.url, "PUT", path, payload)[0] == 200

    flaky_proxy.configure(drop_every_n=1, drop_mode="before_response")
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        _request(flaky_proxy.url, "GET", path)

    flaky_proxy.configure(drop_mode="mid_body")
    with pytest.raises(http.client.IncompleteRead):
        _request(flaky_proxy.url, "GET", path)

    flaky_proxy.heal()
    assert _request(flaky_proxy.url, "GET", path)[2] == payload
    counters = flaky_proxy.counters
    assert (counters.dropped, counters.truncated) == (1, 1)


def test_proxy_answers_502_when_upstream_is_down(
    flaky_proxy_factory: Callable[..., FlakyProxy],
) -> None:
    from support import free_port

    proxy = flaky_proxy_factory(f"http://127.0.0.1:{free_port()}")
    assert _request(proxy.url)[0] == 502
    assert proxy.counters.upstream_errors == 1


# -- models in local stores ---------------------------------------------------------------------


@pytest.mark.parametrize("store", ["file", "sqlite"])
def test_register_heart_model_in_local_store_keeps_global_state(
    fresh_stores: FreshStores, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = fresh_stores["file"] if store == "file" else fresh_stores["sqlite"]
    before = _global_mlflow_state()

    first = register_heart_model(uri)
    second = register_heart_model(uri, alias=None)

    assert _global_mlflow_state() == before
    # Nothing lands in the working directory (sqlite without a server defaults to ./mlruns).
    assert list(Path.cwd().iterdir()) == []
    assert (first, second) == ("1", "2")
    client = _client(uri, monkeypatch)
    # The file store answers version as an int, sqlite as a str.
    assert str(client.get_model_version_by_alias("uci-heart-classifier", "champion").version) == "1"
    download_uri = client.get_model_version_download_uri("uci-heart-classifier", "1")
    assert download_uri.startswith("file://")


def test_registered_heart_model_predicts(
    fresh_stores: FreshStores, heart_frame: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.pyfunc

    uri = fresh_stores["sqlite"]
    version = register_heart_model(uri)
    client = _client(uri, monkeypatch)
    download_uri = client.get_model_version_download_uri("uci-heart-classifier", version)
    model = mlflow.pyfunc.load_model(download_uri)
    predictions = model.predict(heart_frame)
    assert len(predictions) == 100
    assert set(predictions) <= {0, 1}


def test_register_raw_model_stores_exactly_the_given_files(
    fresh_stores: FreshStores, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import mlflow.artifacts

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(2 * 1024 * 1024))
    files: dict[str, bytes | os.PathLike[str]] = {
        "weights.bin": bytes(range(256)),
        "nested/dir/empty.txt": b"",
        "big.bin": big,
    }
    uri = fresh_stores["sqlite"]
    before = _global_mlflow_state()

    version = register_raw_model(uri, "raw", files, description="no MLmodel", tags={"k": "v"})

    assert _global_mlflow_state() == before
    client = _client(uri, monkeypatch)
    model_version = client.get_model_version("raw", version)
    assert (model_version.description, model_version.tags) == ("no MLmodel", {"k": "v"})
    download_uri = client.get_model_version_download_uri("raw", version)
    local = Path(mlflow.artifacts.download_artifacts(download_uri, dst_path=str(tmp_path / "dl")))
    found = {
        p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()
    }
    assert found == {
        "weights.bin": bytes(range(256)),
        "nested/dir/empty.txt": b"",
        "big.bin": big.read_bytes(),
    }
