"""Databricks in a box, driven by the real mlflow client (mlflow 3.15 + databricks-sdk).

Each test gets its own DatabricksBox (its own CA, port and request log) in front of the shared
`mlflow_server`; the heart model is registered into that server once per module. A real
`~/.databrickscfg` in the test's isolated HOME (also named by DATABRICKS_CONFIG_FILE, see
`databricks_env_isolated`), or DATABRICKS_HOST/DATABRICKS_TOKEN, plus REQUESTS_CA_BUNDLE, is all
the client gets: no mlflow or databricks-sdk internals are patched.

Tests named "contract" in their docstring pin down mlflow / databricks-sdk behaviour that
product code must work around; if one starts failing after an upgrade, the workaround may be
obsolete.

Every test in this module also runs under a socket guard that refuses (and reports) any
connection or DNS lookup for a non-loopback host.
"""

from __future__ import annotations

import hashlib
import re
import socket
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import pytest
from azureml_box.ca import TestCA
from databricks_box import DatabricksBox, is_loopback
from support.mlflow_server import MlflowServer
from support.models import (
    HEART_VERSION_DESCRIPTION,
    HEART_VERSION_TAGS,
    register_heart_model,
    register_raw_model,
)

if TYPE_CHECKING:
    import requests
    from mlflow import MlflowClient

PROFILE = "dbx-dev"
WELL_KNOWN = "/.well-known/databricks-config"
REGISTRY_DOWNLOAD_URI = re.compile(r"dbfs:/databricks/mlflow-registry/[0-9a-f]{32}/models/model")
# mlflow writes this beside a downloaded models:/ root; it is not one of the stored artifacts.
REGISTERED_MODEL_META = "registered_model_meta"


@dataclass(frozen=True)
class HeartVersion:
    name: str
    version: str
    manifest: dict[str, str]  # stored artifact path -> sha256, read from the server's disk


def _manifest(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def databricks_env_isolated(isolated_environment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No DATABRICKS_* from the developer, and the config file pinned to the isolated HOME.

    databricks-sdk lets DATABRICKS_* variables override a profile's values (see
    test_databricks_host_in_the_environment_overrides_the_profile), and mlflow's own legacy
    reader of ~/.databrickscfg resolved "~" once, at `import mlflow` (during collection, with the
    developer's real HOME; see test_mlflow_resolves_home_for_databrickscfg_at_import_time).
    DATABRICKS_CONFIG_FILE is read on every call by both, so it keeps them on this test's file.
    """
    import os

    for key in list(os.environ):
        if key.startswith("DATABRICKS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(isolated_environment / ".databrickscfg"))


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Refuse and record any connect() or DNS lookup for a host that is not loopback.

    Yields the list of hosts this process connected to (inet sockets only); the test fails at
    teardown if any was not loopback, even if the code under test swallowed the refusal.
    """
    contacted: list[str] = []
    refused: list[str] = []
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return  # unix sockets (e.g. a local resolver cache) are not network traffic
        host = str(address[0])
        contacted.append(host)
        if not is_loopback(host):
            refused.append(host)
            raise ConnectionRefusedError(f"test guard: refusing non-loopback connect to {host}")

    def connect(self: socket.socket, address: Any) -> None:
        check(self, address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(self, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and not is_loopback(str(name)):
            refused.append(str(name))
            raise socket.gaierror(f"test guard: refusing DNS lookup of {name}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield contacted
    assert not refused, f"non-loopback hosts were contacted: {sorted(set(refused))}"


@pytest.fixture(scope="module")
def heart(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> HeartVersion:
    """The heart classifier registered directly into the backing server (with alias champion)."""
    import mlflow

    name = f"dbx-heart-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as patch:
        # Module fixtures run before the per-test isolation; keep any stray files out of the repo.
        patch.chdir(tmp_path_factory.mktemp("dbx-heart-cwd"))
        version = register_heart_model(mlflow_server.tracking_uri, name=name, alias="champion")
        client = mlflow.MlflowClient(mlflow_server.tracking_uri, mlflow_server.tracking_uri)
        location = client.get_model_version_download_uri(name, version)
    assert location.startswith("mlflow-artifacts:/"), location
    stored = mlflow_server.artifacts_dir / urlsplit(location).path.lstrip("/")
    manifest = _manifest(stored)
    assert "MLmodel" in manifest
    return HeartVersion(name, version, manifest)


@pytest.fixture
def shared_ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "dbx-ca")


@pytest.fixture
def box_factory(
    mlflow_server: MlflowServer, tmp_path: Path, shared_ca: TestCA
) -> Iterator[Callable[..., DatabricksBox]]:
    """`box_factory(**DatabricksBox options)` -> a started box (all share one test CA)."""
    boxes: list[DatabricksBox] = []

    def start(**kwargs: Any) -> DatabricksBox:
        kwargs.setdefault("ca", shared_ca)
        box = DatabricksBox(tmp_path / f"dbx-{len(boxes)}", backend=mlflow_server, **kwargs)
        boxes.append(box)
        return box.start()

    try:
        yield start
    finally:
        for box in boxes:
            box.stop()


@pytest.fixture
def box(box_factory: Callable[..., DatabricksBox]) -> DatabricksBox:
    return box_factory()


def use_profile(
    box: DatabricksBox,
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    profile: str = PROFILE,
    token: str | None = None,
) -> str:
    """Write `[profile]` to the isolated HOME's ~/.databrickscfg, trust the CA; the URI."""
    box.write_databrickscfg(home, profile, token=token)
    for key, value in box.tls_env().items():
        monkeypatch.setenv(key, value)
    return f"databricks://{profile}"


@pytest.fixture
def profile_uri(
    box: DatabricksBox, isolated_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    return use_profile(box, isolated_environment, monkeypatch)


def client_for(uri: str) -> MlflowClient:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def download(uri: str, dst: Path, *, via: str) -> Path:
    """mlflow.artifacts.download_artifacts with tracking and registry URI both `via`."""
    import mlflow

    return Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(dst), tracking_uri=via, registry_uri=via
        )
    )


def http_session(box: DatabricksBox) -> requests.Session:
    import requests

    session = requests.Session()
    session.trust_env = False  # no developer proxy for loopback
    session.verify = str(box.ca_bundle)
    return session


# -- reading the registry -----------------------------------------------------------------------


def test_profile_client_reads_the_workspace_registry(
    box: DatabricksBox, heart: HeartVersion, profile_uri: str
) -> None:
    client = client_for(profile_uri)

    model = client.get_registered_model(heart.name)
    assert model.name == heart.name
    assert [v.version for v in model.latest_versions] == [heart.version]
    version = client.get_model_version(heart.name, heart.version)
    assert version.description == HEART_VERSION_DESCRIPTION
    assert version.tags == HEART_VERSION_TAGS
    assert version.status == "READY"
    found = client.search_registered_models(filter_string=f"name = '{heart.name}'")
    assert [m.name for m in found] == [heart.name]
    versions = client.search_model_versions(f"name = '{heart.name}'")
    assert [v.version for v in versions] == [heart.version]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stages are deprecated in mlflow 3, still served here
        latest = client.get_latest_versions(heart.name)
    assert [v.version for v in latest] == [heart.version]

    api = box.requests_to("/api/")
    assert api, "the client never reached the box"
    assert {r.status for r in api} == {200}
    assert {r.auth for r in api} == {"ok"}
    assert {r.bearer for r in api} == {DatabricksBox.fingerprint(box.token)}
    # databricks-sdk learns the workspace id from the well-known probe; mlflow forwards it.
    assert {r.headers.get("x-databricks-org-id") for r in api} == {box.workspace_id}
    assert box.requests_to(WELL_KNOWN), "databricks-sdk did not probe host metadata"


def test_aliases_are_refused_as_by_the_workspace_registry(
    box: DatabricksBox, heart: HeartVersion, profile_uri: str, tmp_path: Path
) -> None:
    from mlflow.exceptions import MlflowException

    client = client_for(profile_uri)
    # The backing server has alias "champion"; the workspace registry has no aliases at all.
    assert client.get_registered_model(heart.name).aliases == {}
    assert client.get_model_version(heart.name, heart.version).aliases == []
    with pytest.raises(MlflowException, match="unsupported for models in the Workspace Model"):
        client.get_model_version_by_alias(heart.name, "champion")
    with pytest.raises(MlflowException, match="unsupported for models in the Workspace Model"):
        download(f"models:/{heart.name}@champion", tmp_path / "alias", via=profile_uri)
    # mlflow refuses before sending anything.
    assert not box.requests_to("/api/2.0/mlflow/registered-models/alias")


def test_latest_and_exposed_aliases_resolve(
    box_factory: Callable[..., DatabricksBox],
    heart: HeartVersion,
    isolated_environment: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    # expose_aliases=True passes the backing server's aliases through (not what the real
    # workspace does): a client can then resolve an alias from the registered model itself.
    box = box_factory(expose_aliases=True)
    uri = use_profile(box, isolated_environment, monkeypatch)
    assert client_for(uri).get_registered_model(heart.name).aliases == {"champion": heart.version}

    repo = ModelsArtifactRepository(
        f"models:/{heart.name}/latest", tracking_uri=uri, registry_uri=uri
    )
    assert repo.model_version == heart.version
    assert box.requests_to("/api/2.0/mlflow/registered-models/get-latest-versions")


def test_stages_are_served_as_by_the_workspace_registry(
    box: DatabricksBox, mlflow_server: MlflowServer, profile_uri: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The workspace registry has legacy stages: versions (got and searched) carry
    `current_stage`, get-latest-versions answers per stage, and the registered model's
    `latest_versions` holds the latest of each stage."""
    name = f"dbx-box-stages-{uuid.uuid4().hex[:8]}"
    monkeypatch.chdir(tmp_path)
    for n in range(3):
        register_raw_model(mlflow_server.tracking_uri, name, {"MLmodel": f"n: {n}\n".encode()})
    backend = client_for(mlflow_server.tracking_uri)
    client = client_for(profile_uri)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stages are deprecated in mlflow 3, still served here
        backend.transition_model_version_stage(name, "1", "Production")
        backend.transition_model_version_stage(name, "2", "Staging")
        production = client.get_latest_versions(name, stages=["Production"])
        staging = client.get_latest_versions(name, stages=["Staging"])

    assert [(v.version, v.current_stage) for v in production] == [("1", "Production")]
    assert [(v.version, v.current_stage) for v in staging] == [("2", "Staging")]
    searched = client.search_model_versions(f"name = '{name}'")
    assert sorted((v.version, v.current_stage) for v in searched) == [
        ("1", "Production"), ("2", "Staging"), ("3", "None")]
    assert client.get_model_version(name, "2").current_stage == "Staging"
    latest = client.get_registered_model(name).latest_versions
    assert sorted((v.current_stage, v.version) for v in latest) == [
        ("None", "3"), ("Production", "1"), ("Staging", "2")]
    assert box.requests_to("/api/2.0/mlflow/registered-models/get-latest-versions")
    assert {r.status for r in box.requests_to("/api/2.0/mlflow/")} == {200}


# -- downloading a version ----------------------------------------------------------------------


def test_download_uri_is_a_registry_dbfs_path_read_through_the_dbfs_api(
    box: DatabricksBox, heart: HeartVersion, profile_uri: str, tmp_path: Path
) -> None:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.store.artifact.dbfs_artifact_repo import DbfsRestArtifactRepository
    from mlflow.tracking.artifact_utils import add_databricks_profile_info_to_artifact_uri

    client = client_for(profile_uri)
    uri = client.get_model_version_download_uri(heart.name, heart.version)
    assert REGISTRY_DOWNLOAD_URI.fullmatch(uri), uri
    assert client.get_model_version_download_uri(heart.name, heart.version) == uri  # stable

    # The bare dbfs:/ URI carries no credentials: mlflow would fall back to the *global*
    # tracking store for them. With the profile in the URI it needs no global state.
    located = add_databricks_profile_info_to_artifact_uri(uri, profile_uri)
    assert located == uri.replace("dbfs:/", f"dbfs://{PROFILE}@databricks/", 1)
    assert isinstance(get_artifact_repository(located), DbfsRestArtifactRepository)

    import mlflow

    out = Path(mlflow.artifacts.download_artifacts(artifact_uri=located, dst_path=str(tmp_path)))
    assert _manifest(out) == heart.manifest  # exactly the stored files, byte for byte

    paths = {r.path for r in box.requests if r.status == 200}
    assert {"/api/2.0/dbfs/get-status", "/api/2.0/dbfs/list"} <= paths
    dbfs_root = urlsplit(uri).path
    assert {f"/dbfs{dbfs_root}/{name}" for name in heart.manifest} <= paths


def test_models_uri_download_is_byte_identical_through_signed_urls(
    box: DatabricksBox, heart: HeartVersion, profile_uri: str, tmp_path: Path
) -> None:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.store.artifact.databricks_models_artifact_repo import (
        DatabricksModelsArtifactRepository,
    )
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    box.list_page_size = 3  # make the client follow next_page_token
    uri = f"models:/{heart.name}/{heart.version}"
    repo = get_artifact_repository(uri, tracking_uri=profile_uri, registry_uri=profile_uri)
    assert isinstance(repo, ModelsArtifactRepository)
    assert isinstance(repo.repo, DatabricksModelsArtifactRepository)

    got = _manifest(download(uri, tmp_path / "dl", via=profile_uri))
    assert got.pop(REGISTERED_MODEL_META)
    assert got == heart.manifest

    listings = box.requests_to("/api/2.0/mlflow/model-versions/list-artifacts")
    assert any("page_token" in r.query for r in listings)
    blobs = box.requests_to("/blob/")
    assert sorted(r.path.rsplit("/", 1)[-1] for r in blobs) == sorted(heart.manifest)
    assert all(r.status == 200 and "sig" in r.query for r in blobs)
    # The personal access token never travels to the (storage) host of a signed URL.
    assert {r.bearer for r in blobs} == {None}


def test_large_files_download_in_ranged_chunks(
    box: DatabricksBox,
    heart: HeartVersion,
    profile_uri: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Files above the chunk size are fetched by parallel subprocesses with Range headers.
    monkeypatch.setenv("MLFLOW_MULTIPART_DOWNLOAD_CHUNK_SIZE", "40000")
    got = _manifest(
        download(f"models:/{heart.name}/{heart.version}", tmp_path / "dl", via=profile_uri)
    )
    got.pop(REGISTERED_MODEL_META)
    assert got == heart.manifest

    ranged = [r for r in box.requests_to("/blob/") if "range" in r.headers]
    assert len(ranged) >= 2
    assert {r.status for r in ranged} == {206}


def test_nested_files_are_byte_identical_through_signed_urls_but_not_through_dbfs(
    box: DatabricksBox,
    mlflow_server: MlflowServer,
    profile_uri: str,
    tmp_path: Path,
    unique_model_name: str,
) -> None:
    """Subfolders, spaces, non-ASCII names, empty and blank files, listing pages of 2.

    Contract (mlflow 3.15 bug): reads through the download URI (DbfsRestArtifactRepository)
    pass each file body through `verify_rest_response`, which replaces a 200 body that is empty
    or whitespace-only (or "200 OK") with `{}`, and which holds the whole body in memory. Only
    the signed-URL path (`models:/`) is byte-exact. ('#' is left out of the names: mlflow's
    upload to an `mlflow server` cuts a file name at '#'.)
    """
    import os

    from mlflow.tracking.artifact_utils import add_databricks_profile_info_to_artifact_uri

    files = {
        "README.md": b"not an MLmodel, so mlflow adds no registered_model_meta\n",
        "data/weights.bin": os.urandom(70_000),
        "data/sub dir/na\u00efve name (1).txt": "caf\u00e9\n".encode(),
        "data/empty.txt": b"",
        "data/blank.txt": b"\n",
    }
    version = register_raw_model(mlflow_server.tracking_uri, unique_model_name, files)
    expected = {path: hashlib.sha256(content).hexdigest() for path, content in files.items()}
    box.list_page_size = 2

    via_models = download(f"models:/{unique_model_name}/{version}", tmp_path / "m", via=profile_uri)
    assert _manifest(via_models) == expected

    client = client_for(profile_uri)
    uri = client.get_model_version_download_uri(unique_model_name, version)
    assert uri.endswith("/models/model"), uri
    located = add_databricks_profile_info_to_artifact_uri(uri, profile_uri)
    via_dbfs = download(located, tmp_path / "d", via=profile_uri)
    rewritten = {"data/empty.txt", "data/blank.txt"}
    assert {p: (via_dbfs / p).read_bytes() for p in rewritten} == dict.fromkeys(rewritten, b"{}")
    got = {p: h for p, h in _manifest(via_dbfs).items() if p not in rewritten}
    assert got == {p: h for p, h in expected.items() if p not in rewritten}
    # The box served the true bytes; the rewrite happened in the client.
    empty_reads = [r for r in box.requests if r.path.endswith("/data/empty.txt")]
    assert empty_reads and {r.status for r in empty_reads} == {200}


def test_env_vars_and_the_bare_databricks_uri(
    box: DatabricksBox, heart: HeartVersion, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from mlflow.tracking.artifact_utils import add_databricks_profile_info_to_artifact_uri

    for key, value in box.env().items():
        monkeypatch.setenv(key, value)
    client = client_for("databricks")
    assert client.get_model_version(heart.name, heart.version).version == heart.version
    uri = client.get_model_version_download_uri(heart.name, heart.version)
    assert REGISTRY_DOWNLOAD_URI.fullmatch(uri), uri
    located = add_databricks_profile_info_to_artifact_uri(uri, "databricks")
    assert located == uri.replace("dbfs:/", "dbfs://databricks/", 1)

    got = _manifest(
        download(f"models:/{heart.name}/{heart.version}", tmp_path / "dl", via="databricks")
    )
    got.pop(REGISTERED_MODEL_META)
    assert got == heart.manifest
    assert {r.bearer for r in box.requests_to("/api/")} == {DatabricksBox.fingerprint(box.token)}


# -- authentication and faults ------------------------------------------------------------------


@pytest.mark.parametrize("how", ["profile", "env"])
def test_a_bad_token_is_a_403_invalid_access_token(
    box: DatabricksBox,
    heart: HeartVersion,
    how: str,
    isolated_environment: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Contract: a workspace refuses a wrong token with 403 and a numeric error_code (the box
    follows databricks/databricks-sdk-go#873); mlflow, through databricks-sdk, reads that as
    PERMISSION_DENIED, so only the words "Invalid access token" tell it from a token without
    permission (amlpromote.core.registries.databricks._TOKEN_REFUSAL_WORDS)."""
    from mlflow.exceptions import MlflowException

    bad = "dapi" + "0" * 32
    if how == "profile":
        uri = use_profile(box, isolated_environment, monkeypatch, token=bad)
    else:
        for key, value in box.env(token=bad).items():
            monkeypatch.setenv(key, value)
        uri = "databricks"

    with pytest.raises(MlflowException) as info:
        client_for(uri).get_registered_model(heart.name)
    assert info.value.error_code == "PERMISSION_DENIED"
    assert info.value.get_http_status_code() == 403
    assert "Invalid access token." in info.value.message
    assert bad not in str(info.value)  # databricks-sdk masks it in its debug string

    rejected = box.requests_to("/api/")
    assert rejected
    assert {(r.status, r.auth, r.bearer) for r in rejected} == {
        (403, "invalid", DatabricksBox.fingerprint(bad))
    }


def test_an_older_workspace_refuses_a_token_with_an_html_page(
    box_factory: Callable[..., DatabricksBox],
    heart: HeartVersion,
    isolated_environment: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Contract: the Jetty 403 page of older workspaces (DataThirstLtd/databricks.vsts.tools#26)
    reaches the user of MlflowClient as an INTERNAL_ERROR (HTTP 500) whose message still
    carries "Invalid access token" (databricks-sdk reads the page's <pre>)."""
    from mlflow.exceptions import MlflowException

    box = box_factory(token_refusal="html")
    uri = use_profile(box, isolated_environment, monkeypatch, token="dapi" + "5" * 32)

    with pytest.raises(MlflowException) as info:
        client_for(uri).get_registered_model(heart.name)
    assert info.value.error_code == "INTERNAL_ERROR"
    assert "Invalid access token." in info.value.message
    assert "<pre>" not in info.value.message
    assert {(r.status, r.auth) for r in box.requests_to("/api/")} == {(403, "invalid")}


def test_a_revoked_token_stops_reads_and_downloads(
    box: DatabricksBox, heart: HeartVersion, profile_uri: str, tmp_path: Path
) -> None:
    from mlflow.exceptions import MlflowException

    client = client_for(profile_uri)
    assert client.get_model_version(heart.name, heart.version).version == heart.version
    box.revoke_token()
    with pytest.raises(MlflowException) as info:
        client.get_model_version(heart.name, heart.version)
    assert info.value.error_code == "PERMISSION_DENIED"
    assert "Invalid access token." in info.value.message
    with pytest.raises(MlflowException, match="Invalid access token"):
        download(f"models:/{heart.name}/{heart.version}", tmp_path, via=profile_uri)
    assert box.token not in str(info.value)
    assert not box.requests_to("/blob/")


def test_throttling_and_unavailability_are_retried(
    box: DatabricksBox, heart: HeartVersion, profile_uri: str
) -> None:
    client = client_for(profile_uri)
    route = "/api/2.0/mlflow/model-versions/get"

    def statuses() -> list[int]:
        return [r.status for r in box.requests if r.path == route]

    box.inject_fault(429, retry_after=1, path_contains=route)
    started = time.monotonic()
    assert client.get_model_version(heart.name, heart.version).version == heart.version
    elapsed = time.monotonic() - started
    assert statuses() == [429, 200], box.requests
    assert elapsed >= 1.0, f"Retry-After: 1 not honoured ({elapsed:.2f} s)"

    box.clear_requests()
    box.inject_fault(503, path_contains=route)
    assert client.get_model_version(heart.name, heart.version).version == heart.version
    assert statuses() == [503, 200], box.requests


def test_persistent_unavailability_ends_in_a_bare_timeout_error(
    box: DatabricksBox, heart: HeartVersion, profile_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Contract: databricks-sdk retries 503/429 until MLFLOW_DATABRICKS_ENDPOINT_HTTP_RETRY_TIMEOUT
    (default 500 s) and then raises TimeoutError, which mlflow does not wrap in MlflowException.

    The variable is read when mlflow first builds (and lru-caches) the SDK client for a
    host/token/profile, so it must be set before the first call.
    """
    monkeypatch.setenv("MLFLOW_DATABRICKS_ENDPOINT_HTTP_RETRY_TIMEOUT", "2")
    box.inject_fault(503, count=1000, path_contains="/api/2.0/mlflow/model-versions/get")
    with pytest.raises(TimeoutError):
        client_for(profile_uri).get_model_version(heart.name, heart.version)
    # databricks-sdk's `retried` sleeps at least `attempt` seconds (1, 2, ...) between attempts
    # and stops at the deadline: within 2 s that is 1 + 1 retries, whatever the machine's load.
    attempts = box.requests_to("/api/2.0/mlflow/model-versions/get")
    assert 1 <= len(attempts) <= 2, [(r.path, r.status) for r in attempts]


def test_databricks_host_in_the_environment_overrides_the_profile(
    box_factory: Callable[..., DatabricksBox],
    heart: HeartVersion,
    isolated_environment: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Contract: databricks-sdk fills a profile's values only where the environment did not,
    so with DATABRICKS_HOST set, `databricks://PROFILE` sends the *profile's* token to the
    *environment's* host. Product code that names a profile must not leave DATABRICKS_* set."""
    from mlflow.exceptions import MlflowException

    profile_box = box_factory()
    other_box = box_factory()
    uri = use_profile(profile_box, isolated_environment, monkeypatch)
    monkeypatch.setenv("DATABRICKS_HOST", other_box.host)

    with pytest.raises(MlflowException):
        client_for(uri).get_model_version(heart.name, heart.version)
    assert not profile_box.requests_to("/api/")
    landed = other_box.requests_to("/api/")
    assert landed
    assert {r.bearer for r in landed} == {DatabricksBox.fingerprint(profile_box.token)}


def test_a_workspace_without_host_metadata_still_works(
    box_factory: Callable[..., DatabricksBox],
    heart: HeartVersion,
    isolated_environment: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    box = box_factory(host_metadata=False)
    uri = use_profile(box, isolated_environment, monkeypatch)
    assert client_for(uri).get_model_version(heart.name, heart.version).version == heart.version
    assert {r.status for r in box.requests_to(WELL_KNOWN)} == {404}
    api = box.requests_to("/api/")
    assert api and all("x-databricks-org-id" not in r.headers for r in api)


# -- the box's own HTTP surface -----------------------------------------------------------------


def test_signed_urls_check_signature_and_expiry_and_serve_ranges(
    box: DatabricksBox, heart: HeartVersion
) -> None:
    session = http_session(box)
    auth = {"Authorization": f"Bearer {box.token}"}
    endpoint = f"{box.host}/api/2.0/mlflow/model-versions/get-signed-download-uri"
    params = {"name": heart.name, "version": heart.version, "path": "MLmodel"}

    def signed_url() -> str:
        response = session.get(endpoint, params=params, headers=auth)
        assert response.status_code == 200, response.text
        document = response.json()
        assert document["headers"] == []
        return str(document["signed_uri"])

    url = signed_url()
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1"
    assert {"sv", "se", "sr", "sp", "sig"} <= set(parse_qs(parts.query))

    full = session.get(url)
    assert full.status_code == 200
    assert hashlib.sha256(full.content).hexdigest() == heart.manifest["MLmodel"]
    part = session.get(url, headers={"Range": "bytes=0-9"})
    assert part.status_code == 206
    assert part.content == full.content[:10]

    tampered = session.get(url.replace("sig=", "sig=AAAA", 1))
    assert tampered.status_code == 403
    assert b"<Code>AuthenticationFailed</Code>" in tampered.content
    # A bearer token is no substitute for a signature.
    unsigned = session.get(url.split("?", 1)[0], headers=auth)
    assert unsigned.status_code == 403

    box.signed_url_ttl = -60
    expired = session.get(signed_url())
    assert expired.status_code == 403
    assert b"time frame" in expired.content

    missing = session.get(endpoint, params={**params, "path": "no-such-file"}, headers=auth)
    assert missing.status_code == 404
    assert missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"


def test_api_errors_and_routes_have_the_databricks_shape(
    box: DatabricksBox, heart: HeartVersion
) -> None:
    session = http_session(box)
    auth = {"Authorization": f"Bearer {box.token}"}
    get_model = "/api/2.0/mlflow/registered-models/get"

    anonymous = session.get(f"{box.host}{get_model}", params={"name": heart.name})
    assert anonymous.status_code == 401
    assert anonymous.json()["error_code"] == "UNAUTHENTICATED"
    assert set(anonymous.json()) == {"error_code", "message"}

    # A wrong token: the capture of databricks/databricks-sdk-go#873, byte for byte in its body.
    wrong = {"Authorization": "Bearer dapi" + "6" * 32}
    refused = session.get(f"{box.host}{get_model}", params={"name": heart.name}, headers=wrong)
    assert refused.status_code == 403
    assert refused.json() == {"error_code": 403, "message": "Invalid access token."}
    assert refused.headers["X-Databricks-Reason-Phrase"] == "Invalid access token."
    assert refused.headers["Content-Type"].startswith("application/json")
    # An older workspace's form (DataThirstLtd/databricks.vsts.tools#26): Jetty's error page.
    box.token_refusal = "html"
    page = session.get(f"{box.host}{get_model}", params={"name": heart.name}, headers=wrong)
    assert page.status_code == 403
    assert page.headers["Content-Type"].startswith("text/html")
    text = re.sub(r"<[^>]+>", "", page.text)
    assert "HTTP ERROR 403" in text
    assert f"Problem accessing {get_model}. Reason:" in text
    assert "Invalid access token." in text
    box.token_refusal = "json"
    revoked = box.add_token()
    box.revoke_token(revoked)
    again = session.get(f"{box.host}{get_model}", params={"name": heart.name},
                        headers={"Authorization": f"Bearer {revoked}"})
    assert (again.status_code, again.json()["error_code"]) == (403, 403)
    with pytest.raises(ValueError, match="token_refusal"):
        DatabricksBox(box.root / "bad", backend=box.backend, token_refusal="xml")

    preview = session.get(
        f"{box.host}/api/2.0/preview/mlflow/registered-models/get",
        params={"name": heart.name},
        headers=auth,
    )
    assert preview.status_code == 200
    assert preview.json()["registered_model"]["name"] == heart.name
    assert "aliases" not in preview.json()["registered_model"]

    unknown = session.get(f"{box.host}/api/2.0/clusters/list", headers=auth)
    assert unknown.status_code == 404
    assert unknown.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    missing = session.get(f"{box.host}{get_model}", params={"name": "nope-x"}, headers=auth)
    assert missing.status_code == 404
    assert missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"

    well_known = session.get(f"{box.host}{WELL_KNOWN}")  # no token needed
    assert well_known.status_code == 200
    assert well_known.json()["workspace_id"] == box.workspace_id


# -- isolation ----------------------------------------------------------------------------------


def test_no_host_but_loopback_is_ever_contacted(
    box: DatabricksBox,
    heart: HeartVersion,
    profile_uri: str,
    tmp_path: Path,
    loopback_only: list[str],
) -> None:
    client = client_for(profile_uri)
    client.get_registered_model(heart.name)
    client.get_model_version_download_uri(heart.name, heart.version)
    mlmodel = download(f"models:/{heart.name}/{heart.version}/MLmodel", tmp_path, via=profile_uri)
    assert hashlib.sha256(mlmodel.read_bytes()).hexdigest() == heart.manifest["MLmodel"]

    assert box.requests and not box.non_loopback_requests()
    assert {r.host for r in box.requests} == {f"127.0.0.1:{box.port}"}
    assert loopback_only and all(is_loopback(host) for host in loopback_only)


def test_mlflow_resolves_home_for_databrickscfg_at_import_time(
    box: DatabricksBox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Contract (global state): mlflow's legacy config reader (used for host credentials and for
    the environment of its parallel-download subprocesses) expands "~" when mlflow is imported;
    databricks-sdk expands it on every call. Only DATABRICKS_CONFIG_FILE reaches both."""
    from databricks.sdk.config import Config
    from mlflow.legacy_databricks_cli.configure.provider import ProfileConfigProvider

    new_home = tmp_path / "later-home"
    new_home.mkdir()
    box.write_databrickscfg(new_home, PROFILE)
    monkeypatch.setenv("HOME", str(new_home))
    monkeypatch.delenv("DATABRICKS_CONFIG_FILE")
    for key, value in box.tls_env().items():
        monkeypatch.setenv(key, value)

    assert Config(profile=PROFILE).host == box.host
    legacy = ProfileConfigProvider(PROFILE).get_config()
    assert legacy is None or legacy.host != box.host

    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(new_home / ".databrickscfg"))
    legacy = ProfileConfigProvider(PROFILE).get_config()
    assert legacy is not None
    assert legacy.host == box.host


def test_models_uri_download_opens_the_default_tracking_store(
    box: DatabricksBox, heart: HeartVersion, profile_uri: str, tmp_path: Path
) -> None:
    """Contract (global state): DatabricksModelsArtifactRepository builds
    `MlflowClient(registry_uri=...)` without a tracking URI, and MlflowClient opens its tracking
    store eagerly, so the *default* store (sqlite:///mlflow.db in the working directory) is
    created even though both URIs were passed. Product code must run such downloads from a
    harmless working directory (or read through the download URI instead)."""
    assert not Path("mlflow.db").exists()
    download(f"models:/{heart.name}/{heart.version}/MLmodel", tmp_path, via=profile_uri)
    assert Path("mlflow.db").exists()
