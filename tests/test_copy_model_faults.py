"""copy-model under bad input, network faults, hostile sources and secrets (README: exit codes,
"Promotion semantics" Faults/Safety, "Tokens ... never appear in any output").

Every failing case checks the whole CLI contract: the documented exit code, one `error:` line that
names the problem and one `hint:` line on stderr, no traceback, and nothing registered in the
target. Faults are injected by real loopback proxies in front of real `mlflow server`s.

Most cases run in-process through Typer's CliRunner (fast); the secret-redaction and permission
cases run `python -m amlpromote` as a real process, because `main()` installs the redacting
stdout/stderr wrappers (CliRunner does not call it) and file permissions need another user.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from support import FreshStores, free_port
from support.cli import Run, cli
from support.flaky_proxy import FlakyProxy
from support.mlflow_server import MlflowServer
from support.models import register_heart_model, register_raw_model

from amlpromote.core.errors import BadInput
from amlpromote.core.storage.artifacts import LocalSink, safe_relative_path

SECRET = "s3cr3t-token"
# The same secret as it travels in an HTTP Basic header; it must not leak in that form either.
SECRET_BASIC = base64.b64encode(f"user:{SECRET}".encode()).decode()
ARTIFACT_DOWNLOAD = r"^GET /api/2\.0/mlflow-artifacts/artifacts/"
BIG_FILE_DOWNLOAD = ARTIFACT_DOWNLOAD + r".*/weights/part-\d\.bin$"
ARTIFACT_UPLOAD = r"^PUT /api/2\.0/mlflow-artifacts/artifacts/"
LISTING_PATH = "/api/2.0/mlflow-artifacts/artifacts"
# Keep failing runs short: one MLflow retry without backoff, two transfer retries.
FAST_FAIL_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    "AMLPROMOTE_RETRIES": "2",
}


# -- source models (registered once per module on the shared server) --------------------------


@dataclass(frozen=True)
class SourceModels:
    server: MlflowServer
    heart: str  # version 1, alias "champion": a real sklearn model
    heart_files: dict[str, bytes]
    raw: str  # version 1: two files and no MLmodel, i.e. not an MLflow model
    big: str  # version 1: an MLmodel plus ~9 MiB of binary files
    big_files: dict[str, bytes]


@pytest.fixture(scope="module")
def models(
    mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SourceModels]:
    stem = f"faults-{uuid.uuid4().hex[:8]}"
    rng = random.Random(20240611)
    big_files = {
        "MLmodel": b"artifact_path: model\nflavors: {}\n",
        "conda.yaml": b"name: big\ndependencies: []\n",
        # Sizes that are not multiples of the 1 MiB transfer chunk, so a short read shows.
        "weights/part-0.bin": rng.randbytes(6 * 1024 * 1024 + 17),
        "weights/part-1.bin": rng.randbytes(3 * 1024 * 1024 + 1),
    }
    with pytest.MonkeyPatch.context() as mp:
        # Module fixtures run before the per-test isolation; keep any stray ./mlruns out of
        # the repository.
        mp.chdir(tmp_path_factory.mktemp("models-cwd"))
        heart = f"{stem}-heart"
        register_heart_model(mlflow_server.url, name=heart, alias="champion")
        raw = f"{stem}-raw"
        register_raw_model(
            mlflow_server.url, raw, {"weights.bin": b"\x00" * 64, "notes/readme.txt": b"hi"}
        )
        big = f"{stem}-big"
        register_raw_model(mlflow_server.url, big, big_files)
    yield SourceModels(
        server=mlflow_server,
        heart=heart,
        heart_files=stored_files(mlflow_server.url, heart, "1", mlflow_server),
        raw=raw,
        big=big,
        big_files=big_files,
    )


# -- reading registries independently of the product ---------------------------------------


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _local_folder(location: str, server: MlflowServer | None) -> Path:
    parts = urlsplit(location)
    if parts.scheme == "mlflow-artifacts":
        # A proxied server stores mlflow-artifacts:/X at <artifacts-destination>/X.
        assert server is not None, f"{location} needs the server that stores it"
        return server.artifacts_dir / unquote(parts.path).lstrip("/")
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    raise AssertionError(f"unexpected artifact location {location}")


def stored_files(
    registry_uri: str, name: str, version: str, server: MlflowServer | None = None
) -> dict[str, bytes]:
    """The files a version stores, read from disk (not through amlpromote), by relative path."""
    client = _client(registry_uri)
    mv = client.get_model_version(name, version)
    model_id = getattr(mv, "model_id", None)
    if not model_id and mv.source.startswith("models:/m-"):
        model_id = mv.source.removeprefix("models:/").split("/", 1)[0]
    location = client.get_logged_model(model_id).artifact_location if model_id else mv.source
    folder = _local_folder(location, server)
    assert folder.is_dir(), f"{name}/{version}: no artifact folder at {folder}"
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def digest_of(files: Mapping[str, bytes]) -> str:
    """README's content digest: sha256 over `<sha256>  <path>` lines, sorted by path."""
    manifest = "".join(f"{hashlib.sha256(files[p]).hexdigest()}  {p}\n" for p in sorted(files))
    return "sha256:" + hashlib.sha256(manifest.encode()).hexdigest()


def _sqlite_path(uri: str) -> Path:
    return Path(uri.removeprefix("sqlite:///"))


def registered(uri: str, name: str | None = None) -> list[str]:
    """`name/version` of every version in the registry (of `name` only, if given)."""
    if uri.startswith("sqlite:") and not _sqlite_path(uri).exists():
        return []  # do not let the check itself create the database
    client = _client(uri)
    found = [
        f"{m.name}/-" for m in client.search_registered_models() if name is None or m.name == name
    ]
    query = f"name='{name}'" if name else ""
    found += [f"{v.name}/{v.version}" for v in client.search_model_versions(query)]
    return found


def assert_nothing_registered(uri: str, name: str | None = None) -> None:
    assert registered(uri, name) == [], f"a failed run registered something in {uri}"


# -- running the CLI --------------------------------------------------------------------------


def cli_process(
    *args: str,
    env: Mapping[str, str] | None = None,
    prefix: Sequence[str] = (),
    cwd: Path | None = None,
    timeout: float = 120,
) -> Run:
    """Run `python -m amlpromote` as a real process (redacting streams installed by main())."""
    started = time.monotonic()
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "amlpromote", *args],
        env={**os.environ, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def assert_clean_failure(run: Run, code: int, *needles: str, json_mode: bool = False) -> str:
    """The failure contract; returns the `error:` line."""
    assert run.code == code, f"exit {run.code}, expected {code}\n{run.both}"
    assert "Traceback" not in run.both, run.both
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    hints = [line for line in run.stderr.splitlines() if line.startswith("hint: ")]
    assert len(errors) == 1, run.stderr
    assert len(hints) == 1 and len(hints[0]) > len("hint: "), run.stderr
    assert "internal error" not in errors[0], errors[0]
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not named in {errors[0]!r}"
    if not json_mode:
        assert run.stdout == "", "a failure printed a result on stdout"
    return errors[0]


def assert_json_error(run: Run, code: int, kind: str | set[str]) -> dict[str, Any]:
    """`--output json` on failure: stdout is exactly one error document."""
    document = json.loads(run.stdout)  # raises on a second document or any stray text
    assert set(document) == {"status", "error", "hint", "exit_code", "kind"}, document
    assert document["status"] == "failed"
    assert document["exit_code"] == code == run.code
    assert document["kind"] in ({kind} if isinstance(kind, str) else kind), document
    assert document["error"] and document["hint"]
    # The message and hint also go to stderr, for a human reading the CI log.
    assert f"error: {document['error']}" in run.stderr
    assert f"hint: {document['hint']}" in run.stderr
    return document


# -- 1 + 2: bad input, in human and json modes --------------------------------------------------


@dataclass(frozen=True)
class BadCase:
    ref: str
    source: str | None  # None: the shared server
    target: str | None  # None: a fresh sqlite registry
    code: int
    kind: str
    needles: tuple[str, ...]  # what the error line must name
    hint: str = ""  # what the hint must contain


def _bad_case(case: str, models: SourceModels, tmp_path: Path) -> BadCase:
    heart = models.heart
    missing_db = tmp_path / "nowhere" / "mlflow.db"
    common: dict[str, Any] = {"ref": f"{heart}/1", "source": None, "target": None}
    cases = {
        "unknown-model": BadCase(
            **{**common, "ref": f"{heart}-missing/1"},
            code=3,
            kind="not-found",
            needles=(f"'{heart}-missing'", "does not exist"),
        ),
        "unknown-version": BadCase(
            **{**common, "ref": f"{heart}/99"},
            code=3,
            kind="not-found",
            needles=(f"'{heart}'", "version 99"),
            hint="versions that exist: 1",
        ),
        "unknown-alias": BadCase(
            **{**common, "ref": f"{heart}@nope"},
            code=3,
            kind="not-found",
            needles=("alias 'nope'",),
            hint="champion",
        ),
        "malformed-ref": BadCase(
            **{**common, "ref": f"{heart}/v1"},
            code=2,
            kind="bad-input",
            needles=(f"{heart}/v1",),
            hint="NAME/VERSION",
        ),
        "bad-source-scheme": BadCase(
            **{**common, "source": "ftp://example.com/registry"},
            code=2,
            kind="bad-input",
            needles=("source", "'ftp'"),
        ),
        "bad-target-scheme": BadCase(
            **{**common, "target": "s3://bucket/registry"},
            code=2,
            kind="bad-input",
            needles=("target", "'s3'"),
        ),
        "missing-sqlite-source": BadCase(
            **{**common, "source": f"sqlite:///{missing_db}"},
            code=3,
            kind="not-found",
            needles=(str(missing_db),),
        ),
        "no-mlmodel": BadCase(
            **{**common, "ref": f"{models.raw}/1"},
            code=2,
            kind="bad-input",
            needles=("MLmodel", "not an MLflow model"),
        ),
    }
    return cases[case]


@pytest.mark.parametrize("mode", ["human", "json"])
@pytest.mark.parametrize(
    "case",
    [
        "unknown-model",
        "unknown-version",
        "unknown-alias",
        "malformed-ref",
        "bad-source-scheme",
        "bad-target-scheme",
        "missing-sqlite-source",
        "no-mlmodel",
    ],
)
def test_bad_input_fails_cleanly(
    case: str, mode: str, models: SourceModels, fresh_stores: FreshStores, tmp_path: Path
) -> None:
    bad = _bad_case(case, models, tmp_path)
    target = bad.target or fresh_stores["sqlite"]
    args = ["copy-model", bad.ref, "--source", bad.source or models.server.url, "--target", target]
    if mode == "json":
        args += ["--output", "json"]
    run = cli(*args)

    assert_clean_failure(run, bad.code, *bad.needles, json_mode=mode == "json")
    hint = next(line for line in run.stderr.splitlines() if line.startswith("hint: "))
    assert bad.hint in hint
    if mode == "json":
        document = assert_json_error(run, bad.code, bad.kind)
        assert bad.hint in document["hint"]
    if bad.target is None:
        assert_nothing_registered(target)
    # A missing sqlite source must not be created as a side effect (MLflow would do that).
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("mode", ["human", "json"])
def test_unreachable_registry_fails_within_bounded_time(
    mode: str, fresh_stores: FreshStores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bounded by attempts: a server that drops every connection is tried as often as
    MLFLOW_HTTP_REQUEST_MAX_RETRIES says (1 retry here), whatever the machine's speed."""
    from support.refuser import ResettingPort

    for key, value in FAST_FAIL_ENV.items():
        monkeypatch.setenv(key, value)
    with ResettingPort() as dead:
        server = f"http://127.0.0.1:{dead.port}"
        args = ["copy-model", "heart/1", "--source", server, "--target", fresh_stores["sqlite"]]
        run = cli(*args, *(["-o", "json"] if mode == "json" else []))
        attempts = dead.connections

    assert_clean_failure(run, 1, server, "cannot reach", json_mode=mode == "json")
    if mode == "json":
        assert_json_error(run, 1, "unreachable")
    # One call, tried once and retried once; no second call after it failed.
    assert attempts == 2, f"{attempts} connections with one retry"
    assert_nothing_registered(fresh_stores["sqlite"])


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        # README points users at these to tune retries; MLflow parses the first two as ints.
        ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0.5"),
        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "many"),
        ("AMLPROMOTE_RETRIES", "lots"),
    ],
)
def test_malformed_retry_setting_is_bad_input(
    variable: str, value: str, models: SourceModels, fresh_stores: FreshStores
) -> None:
    run = cli(
        "copy-model",
        f"{models.heart}/1",
        "--source",
        models.server.url,
        "--target",
        fresh_stores["sqlite"],
        "-o",
        "json",
        env={variable: value},
    )
    assert_clean_failure(run, 2, variable, repr(value), json_mode=True)
    assert_json_error(run, 2, "bad-input")
    assert_nothing_registered(fresh_stores["sqlite"])


# -- 1: a target folder the user cannot write --------------------------------------------------


def _as_unprivileged_user(probe_dir: Path) -> list[str]:
    """A command prefix that runs a process as a user who cannot write `probe_dir`.

    As root, drop to `nobody`. The venv's interpreter lives under /root (mode 0700), so nobody
    could not load its standard library; the ambient CAP_DAC_READ_SEARCH lets it read and search
    any folder, but grants no write access, which is all this test is about.
    """
    if os.geteuid() != 0:
        prefix: list[str] = []
    elif shutil.which("setpriv"):
        prefix = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=+dac_read_search",
            "--ambient-caps=+dac_read_search",
        ]
    else:
        pytest.skip("running as root without setpriv: cannot test a permission-denied target")
    probe = (
        "import sys, amlpromote.cli.app, mlflow, sqlite3\n"
        "try:\n    open(sys.argv[1], 'w')\nexcept PermissionError:\n    print('denied')\n"
    )
    check = subprocess.run(
        [*prefix, sys.executable, "-c", probe, str(probe_dir / "probe")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check.returncode != 0:
        pytest.skip(f"cannot run the venv's python as an unprivileged user: {check.stderr[-300:]}")
    if check.stdout.strip() != "denied":
        pytest.skip("this user can write a mode 0555 folder (root without setpriv?)")
    return prefix


@pytest.mark.parametrize(
    "layout",
    [
        "sqlite-in-readonly-folder",
        "file-store-in-readonly-folder",
        "sqlite-in-missing-subfolder-of-readonly-folder",
    ],
)
def test_unwritable_target_folder_fails_cleanly(
    layout: str, models: SourceModels, tmp_path: Path
) -> None:
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    home = tmp_path / "nobody-home"
    home.mkdir()
    readonly.chmod(0o555)
    try:
        prefix = _as_unprivileged_user(readonly)
        if prefix:
            os.chown(home, 65534, 65534)
        target = {
            "sqlite-in-readonly-folder": f"sqlite:///{readonly / 'mlflow.db'}",
            "file-store-in-readonly-folder": (readonly / "mlruns").as_uri(),
            "sqlite-in-missing-subfolder-of-readonly-folder": (
                f"sqlite:///{readonly / 'sub' / 'mlflow.db'}"
            ),
        }[layout]
        env = {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local" / "share"),
            "XDG_CACHE_HOME": str(home / ".cache"),
        }
        run = cli_process(
            "copy-model",
            f"{models.heart}/1",
            "--source",
            models.server.url,
            "--target",
            target,
            env=env,
            prefix=prefix,
            cwd=home,
        )
        assert_clean_failure(run, 1, str(readonly))
        assert "permission" in run.stderr.lower(), "neither error nor hint names the cause"
        assert list(readonly.iterdir()) == [], "the failed run wrote into the read-only folder"
    finally:
        readonly.chmod(0o755)


# -- 3: a flaky source or target ---------------------------------------------------------------


def _copy_json(source: str, ref: str, target: str, *extra: str) -> dict[str, Any]:
    run = cli("copy-model", ref, "--source", source, "--target", target, "-o", "json", *extra)
    assert run.code == 0, run.both
    assert "Traceback" not in run.both
    document: dict[str, Any] = json.loads(run.stdout)
    return document


def _assert_faithful_copy(
    document: dict[str, Any],
    files: dict[str, bytes],
    target_uri: str,
    target_server: MlflowServer | None = None,
) -> None:
    """Status copied, the digest of the known source bytes, and exactly those bytes stored."""
    assert document["status"] == "copied", document
    expected = digest_of(files)
    assert document["source"]["digest"] == expected
    assert document["files"] == len(files)
    assert document["bytes"] == sum(len(b) for b in files.values())
    name, version = document["target"]["name"], document["target"]["version"]
    assert stored_files(target_uri, name, version, target_server) == files
    tags = _client(target_uri).get_model_version(name, version).tags
    assert tags["amlpromote.digest"] == expected


def test_source_answering_503_every_third_request(
    models: SourceModels,
    flaky_proxy_factory: Callable[..., FlakyProxy],
    fresh_stores: FreshStores,
) -> None:
    proxy = flaky_proxy_factory(models.server.url, fail_every_n=3)
    document = _copy_json(proxy.url, f"{models.heart}@champion", fresh_stores["sqlite"])

    _assert_faithful_copy(document, models.heart_files, fresh_stores["sqlite"])
    failed = [r for r in proxy.records if r.outcome == "failed"]
    # Both MLflow's registry retries and our artifact retries were exercised.
    assert any("/api/2.0/mlflow/" in r.path for r in failed), failed
    assert any("/mlflow-artifacts/" in r.path for r in failed), failed
    assert proxy.counters.failed >= 3


@pytest.mark.parametrize(
    "fault",
    [
        # Connections closed with no response, on every kind of request.
        "drop-every-4th-request",
        # Responses cut mid-body: the multi-MB downloads arrive short and must be restarted.
        "cut-every-2nd-big-download-mid-body",
    ],
)
def test_source_dropping_connections(
    fault: str,
    models: SourceModels,
    flaky_proxy_factory: Callable[..., FlakyProxy],
    fresh_stores: FreshStores,
) -> None:
    if fault == "drop-every-4th-request":
        proxy = flaky_proxy_factory(models.server.url, drop_every_n=4)
    else:
        # Only the two big files match, so one of them is always the one cut.
        proxy = flaky_proxy_factory(
            models.server.url, drop_every_n=2, drop_mode="mid_body", match=BIG_FILE_DOWNLOAD
        )
    document = _copy_json(proxy.url, f"{models.big}/1", fresh_stores["sqlite"])

    _assert_faithful_copy(document, models.big_files, fresh_stores["sqlite"])
    if fault == "drop-every-4th-request":
        assert proxy.counters.dropped >= 2, proxy.counters
    else:
        assert proxy.counters.truncated >= 1, proxy.counters


@pytest.mark.parametrize("fault", ["503-every-3rd-request", "drop-every-2nd-upload"])
def test_target_behind_flaky_proxy(
    fault: str,
    models: SourceModels,
    mlflow_server_b: MlflowServer,
    flaky_proxy_factory: Callable[..., FlakyProxy],
    unique_model_name: str,
) -> None:
    if fault == "503-every-3rd-request":
        proxy = flaky_proxy_factory(mlflow_server_b.url, fail_every_n=3, retry_after=0)
    else:
        proxy = flaky_proxy_factory(mlflow_server_b.url, drop_every_n=2, match=ARTIFACT_UPLOAD)
    document = _copy_json(
        models.server.url,
        f"{models.big}/1",
        proxy.url,
        "--target-name",
        unique_model_name,
        "--verify",
    )

    assert document["verified"] is True
    _assert_faithful_copy(document, models.big_files, mlflow_server_b.url, mlflow_server_b)
    assert registered(mlflow_server_b.url, unique_model_name) == [
        f"{unique_model_name}/-",
        f"{unique_model_name}/1",
    ]
    faults = [r for r in proxy.records if r.outcome in ("failed", "dropped")]
    assert any(r.method == "PUT" for r in faults), "no upload was hit by a fault"


def test_lost_response_to_the_register_call_leaves_a_consistent_target(
    models: SourceModels,
    mlflow_server_b: MlflowServer,
    flaky_proxy_factory: Callable[..., FlakyProxy],
    unique_model_name: str,
) -> None:
    # The target registers the version, then the connection breaks mid-response: the client
    # cannot know whether it worked (MLflow does not retry a response cut mid-body).
    proxy = flaky_proxy_factory(
        mlflow_server_b.url,
        drop_every_n=1,
        max_faults=1,
        drop_mode="mid_body",
        match=r"^POST /api/2\.0/mlflow/model-versions/create",
    )
    run = cli(
        "copy-model",
        f"{models.heart}/1",
        "--source",
        models.server.url,
        "--target",
        proxy.url,
        "--target-name",
        unique_model_name,
        "-o",
        "json",
    )
    assert proxy.counters.truncated == 1, proxy.counters
    versions = _client(mlflow_server_b.url).search_model_versions(f"name='{unique_model_name}'")
    # Either outcome is consistent: it found the version it registered (success), or it
    # failed and nothing is registered. Never a failed run with a version left behind.
    if run.code == 0:
        assert json.loads(run.stdout)["status"] == "copied"
        assert len(versions) == 1
    else:
        assert_clean_failure(run, 1, json_mode=True)
        assert versions == [], "the run failed, yet a version is registered"
    client = _client(mlflow_server_b.url)
    for mv in versions:
        logged = client.get_logged_model(mv.source.removeprefix("models:/"))
        assert str(logged.status).endswith("READY"), f"version {mv.version} is {logged.status}"


def _model_file_count(uri: str, name: str, version: str) -> int:
    """How many files the model version holds, as MLflow downloads them."""
    import tempfile

    import mlflow.artifacts

    with tempfile.TemporaryDirectory() as folder:
        where = _client(uri).get_model_version_download_uri(name, version)
        mlflow.artifacts.download_artifacts(artifact_uri=where, dst_path=folder,
                                            tracking_uri=uri)
        return sum(1 for f in Path(folder).rglob("*") if f.is_file())


@pytest.mark.parametrize("where", ["source-registry", "source-downloads", "target-uploads"])
def test_persistent_failure_gives_up_cleanly_in_bounded_time(
    where: str,
    models: SourceModels,
    mlflow_server_b: MlflowServer,
    flaky_proxy_factory: Callable[..., FlakyProxy],
    unique_model_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in FAST_FAIL_ENV.items():
        monkeypatch.setenv(key, value)
    source, target = models.server.url, mlflow_server_b.url
    if where == "source-registry":
        proxy = flaky_proxy_factory(models.server.url, always_fail=True)
        source = proxy.url
    elif where == "source-downloads":
        proxy = flaky_proxy_factory(models.server.url, always_fail=True, match=ARTIFACT_DOWNLOAD)
        source = proxy.url
    else:
        proxy = flaky_proxy_factory(mlflow_server_b.url, always_fail=True, match=ARTIFACT_UPLOAD)
        target = proxy.url
    run = cli(
        "copy-model",
        f"{models.heart}/1",
        "--source",
        source,
        "--target",
        target,
        "--target-name",
        unique_model_name,
        "-o",
        "json",
    )

    assert_clean_failure(run, 1, json_mode=True)
    assert_json_error(run, 1, {"failed", "unreachable"})
    # Bounded by attempts, not wall time: the source registry's call is tried once and retried
    # once (MLFLOW_HTTP_REQUEST_MAX_RETRIES=1); a file transfer at most 1 + AMLPROMOTE_RETRIES
    # times per file.
    if where == "source-registry":
        assert proxy.counters.failed == 2, proxy.counters
    else:
        files = _model_file_count(models.server.url, models.heart, "1")
        assert proxy.counters.failed <= 3 * files, (files, proxy.counters)
    assert_nothing_registered(mlflow_server_b.url, unique_model_name)
    # It did retry (MLflow: 1 retry; a file transfer: AMLPROMOTE_RETRIES=2), and then stopped.
    assert proxy.counters.failed >= (2 if where == "source-registry" else 3), proxy.counters


# -- small loopback HTTP servers: a hostile listing rewriter, an auth gateway -------------------


class _Loopback(ThreadingHTTPServer):
    """A small test HTTP server; its handler reads its settings from these attributes."""

    daemon_threads = True
    upstream: tuple[str, int] = ("127.0.0.1", 0)
    entry: dict[str, Any] | None = None
    rewritten: int = 0
    answer: tuple[int, bytes, dict[str, str]] = (500, b"", {})
    authorization: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


LoopbackFactory = Callable[..., _Loopback]


@pytest.fixture
def loopback_factory() -> Iterator[LoopbackFactory]:
    """`loopback_factory(HandlerClass, **attributes)` -> a started `_Loopback`, shut at the end."""
    servers: list[_Loopback] = []

    def start(handler: type[BaseHTTPRequestHandler], **attributes: Any) -> _Loopback:
        server = _Loopback(("127.0.0.1", 0), handler)
        for key, value in attributes.items():
            setattr(server, key, value)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class _ListingRewriterHandler(BaseHTTPRequestHandler):
    """Forwards every request; adds a hostile entry to each artifact-listing response."""

    protocol_version = "HTTP/1.1"
    server: _Loopback

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in ("host", "connection", "keep-alive", "content-length")
        }
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            status, reason, response_headers = (
                response.status,
                response.reason,
                response.getheaders(),
            )
        finally:
            upstream.close()
        if self.command == "GET" and urlsplit(self.path).path == LISTING_PATH and status == 200:
            listing = json.loads(data or b"{}")
            listing.setdefault("files", []).append(self.server.entry)
            data = json.dumps(listing).encode()
            self.server.rewritten += 1
        self.send_response_only(status, reason)
        for name, value in response_headers:
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward


# -- 4: hostile listings ----------------------------------------------------------------------


@pytest.mark.parametrize("hostile", ["../../escape.txt", "/ABSOLUTE/evil.txt"])
def test_listing_that_escapes_the_model_folder_is_refused(
    hostile: str,
    models: SourceModels,
    loopback_factory: LoopbackFactory,
    fresh_stores: FreshStores,
    tmp_path: Path,
) -> None:
    # An absolute path inside tmp_path rather than /etc: as root, a regression would otherwise
    # write into the real /etc.
    path = hostile.replace("/ABSOLUTE", str(tmp_path / "outside"))
    proxy = loopback_factory(
        _ListingRewriterHandler,
        upstream=(models.server.host, models.server.port),
        entry={"path": path, "is_dir": False, "file_size": 3},
    )
    run = cli(
        "copy-model",
        f"{models.heart}/1",
        "--source",
        proxy.url,
        "--target",
        fresh_stores["sqlite"],
    )

    assert proxy.rewritten >= 1, "the hostile listing was never served"
    assert_clean_failure(run, 2, repr(path), "escapes")
    assert_nothing_registered(fresh_stores["sqlite"])
    written = [p for p in tmp_path.rglob("*") if p.name in ("escape.txt", "evil.txt")]
    assert written == [], "a file from the hostile listing was written"
    # The whole listing is checked before the transfer starts: not one file was staged.
    target_folder = _sqlite_path(fresh_stores["sqlite"]).parent
    staged = [p for p in target_folder.rglob("*") if p.is_file() and p.suffix != ".db"]
    assert staged == [], "files were copied before the hostile path was refused"


@pytest.mark.parametrize(
    "path",
    [
        "..",
        "../escape.txt",
        "../../escape.txt",
        "model/../../escape.txt",
        "/etc/evil",
        "//server/share/evil",
        "C:/evil",
        "C:\\evil",
        "..\\..\\evil",
        "",
        "a\x00b",
        ".",
    ],
)
def test_safe_relative_path_refuses_escapes(path: str) -> None:
    with pytest.raises(BadInput) as caught:
        safe_relative_path(path)
    assert caught.value.exit_code == 2 and caught.value.hint


@pytest.mark.parametrize(
    ("path", "normal"),
    [("MLmodel", "MLmodel"), ("a/./b.bin", "a/b.bin"), ("sub\\x.txt", "sub/x.txt")],
)
def test_safe_relative_path_normalises_safe_paths(path: str, normal: str) -> None:
    assert safe_relative_path(path) == normal


def test_local_sink_refuses_escapes_and_symlinks_out(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    sink = LocalSink(root)
    hostile = ["../escape.txt", str(outside / "abs.txt"), "C:/evil.txt", "link/evil.txt"]
    for path in hostile:
        with pytest.raises(BadInput):
            sink.write(path, 3, iter([b"bad"]))
    assert list(outside.iterdir()) == [], "the sink wrote outside its root"
    assert not (tmp_path / "escape.txt").exists()
    # And it still writes what is safe.
    sink.write("dir/./ok.bin", 2, iter([b"ok"]))
    assert (root / "dir" / "ok.bin").read_bytes() == b"ok"


# -- 5: credentials never shown -----------------------------------------------------------------


def _assert_no_secret(text: str, secret: str = SECRET) -> None:
    assert secret not in text, "a secret appeared in the output"
    assert SECRET_BASIC not in text, "the Basic credential appeared in the output"


def _files_under(*roots: Path) -> Iterator[Path]:
    for root in roots:
        if root.exists():
            yield from (p for p in root.rglob("*") if p.is_file())


def test_credentials_in_source_uri_are_never_shown_or_stored(
    models: SourceModels, fresh_stores: FreshStores, isolated_environment: Path
) -> None:
    server = models.server
    secret_uri = server.url.replace("http://", f"http://user:{SECRET}@")
    target = fresh_stores["sqlite"]
    base = ["copy-model", f"{models.heart}/1", "--source", secret_uri, "--target", target]

    verbose = cli_process(*base, "--verbose")  # copies, with debug notes and library logs
    as_json = cli_process(*base, "-o", "json")  # unchanged
    forced = cli_process(*base, "--force")  # a second version, human output
    for run in (verbose, as_json, forced):
        assert run.code == 0, run.both
        _assert_no_secret(run.both)
    assert verbose.stderr.startswith("debug: "), "--verbose did not take effect"
    document = json.loads(as_json.stdout)
    assert document["status"] == "unchanged"
    assert document["source"]["uri"] == server.url
    assert forced.stdout.startswith("copied ")

    client = _client(target)
    versions = client.search_model_versions(f"name='{models.heart}'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    for mv in versions:
        assert mv.tags["amlpromote.source.uri"] == server.url
        _assert_no_secret(json.dumps(mv.tags) + (mv.description or ""))
    _assert_no_secret(json.dumps(client.get_registered_model(models.heart).tags))
    # Nothing anywhere in the target store (database, artifacts) or the user's config/data.
    target_folder = _sqlite_path(target).parent
    for path in _files_under(target_folder, isolated_environment):
        blob = path.read_bytes()
        assert SECRET.encode() not in blob and SECRET_BASIC.encode() not in blob, path


@pytest.mark.parametrize("mode", ["human", "json"])
def test_credentials_in_unreachable_uri_are_redacted_even_in_tracebacks(mode: str) -> None:
    closed = f"127.0.0.1:{free_port()}"
    run = cli_process(
        "copy-model",
        "heart/1",
        "--source",
        f"http://user:{SECRET}@{closed}",
        "--target",
        "sqlite:///target.db",
        "--verbose",
        *(["-o", "json"] if mode == "json" else []),
        env=FAST_FAIL_ENV,
    )

    assert run.code == 1, run.both
    _assert_no_secret(run.both)
    assert "Traceback" in run.stderr, "--verbose shows the traceback of a failure"
    assert f"http://{closed}" in run.stderr  # redaction keeps the useful part of the URI
    if mode == "json":
        assert_json_error(run, 1, "unreachable")


def test_configure_refuses_a_uri_with_credentials(tmp_path: Path) -> None:
    config = tmp_path / "conf" / "config.toml"
    run = cli_process(
        "configure",
        "--source",
        f"https://user:{SECRET}@mlflow.example.com",
        "--verbose",
        env={"AMLPROMOTE_CONFIG": str(config)},
    )
    assert run.code == 2, run.both
    _assert_no_secret(run.both)
    assert not config.exists() or SECRET not in config.read_text()


# An opaque token: no redaction pattern matches it, so it must simply never be printed.
TRACKING_TOKEN = "tok-Zq8v2Lx7Rw4Np1Kd"


def test_tracking_token_never_shown_at_verbose(
    models: SourceModels, fresh_stores: FreshStores
) -> None:
    run = cli_process(
        "copy-model",
        f"{models.heart}/1",
        "--source",
        models.server.url,
        "--target",
        fresh_stores["sqlite"],
        "--verbose",
        env={"MLFLOW_TRACKING_TOKEN": TRACKING_TOKEN},
    )
    assert run.code == 0, run.both
    assert run.stderr.startswith("debug: ")
    _assert_no_secret(run.both, TRACKING_TOKEN)


class _RefusingHandler(BaseHTTPRequestHandler):
    """Answers every request with the server's `answer`, like an auth gateway refusing it."""

    protocol_version = "HTTP/1.1"
    server: _Loopback

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _refuse(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.server.authorization.append(self.headers.get("Authorization", ""))
        status, body, headers = self.server.answer
        self.send_response_only(status)
        for name, value in {"Content-Type": "text/plain", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _refuse


# What `mlflow server --app-name basic-auth` answers (mlflow.server.auth) for a bad credential
# (401) and for a user without permission (403).
MLFLOW_AUTH_REFUSALS = {
    "401-not-authenticated": (
        401,
        b"You are not authenticated. Please see "
        b"https://www.mlflow.org/docs/latest/auth/index.html#authenticating-to-mlflow "
        b"on how to authenticate.",
        {"WWW-Authenticate": 'Basic realm="mlflow"'},
    ),
    "403-permission-denied": (403, b"Permission denied", {}),
}


@pytest.mark.parametrize("refusal", sorted(MLFLOW_AUTH_REFUSALS))
@pytest.mark.parametrize("mode", ["human", "json"])
def test_refused_tracking_token_is_exit_4_and_never_shown(
    mode: str, refusal: str, loopback_factory: LoopbackFactory, fresh_stores: FreshStores
) -> None:
    gateway = loopback_factory(
        _RefusingHandler, answer=MLFLOW_AUTH_REFUSALS[refusal], authorization=[]
    )
    run = cli_process(
        "copy-model",
        "heart/1",
        "--source",
        gateway.url,
        "--target",
        fresh_stores["sqlite"],
        *(["-o", "json"] if mode == "json" else []),
        env={"MLFLOW_TRACKING_TOKEN": TRACKING_TOKEN, "AMLPROMOTE_DEBUG": "1"},
    )

    assert run.code == 4, run.both
    # The token was really in play, and still never printed.
    assert f"Bearer {TRACKING_TOKEN}" in gateway.authorization
    _assert_no_secret(run.both, TRACKING_TOKEN)
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "refused the credentials" in errors[0], run.stderr
    if mode == "json":
        assert_json_error(run, 4, "auth")
    assert_nothing_registered(fresh_stores["sqlite"])
