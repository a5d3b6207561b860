"""Nothing is written that the user did not ask for (README "Source and target safety").

Sources written by a real older MLflow (tests/fixtures, made by MLflow 2.16.2 and 1.30.1 with
tests/fixtures/make_old_registries.py) are copied into the test's folder, their recorded
absolute paths relocated in the copy, and then hashed: every file's sha256 and every folder.
After a promotion or a dry run from them the hash must be the same (MLflow 3 would otherwise
upgrade the sqlite schema, insert a default experiment, create `.trash` and `models/`).

Targets are changed only as asked: an old schema only with --upgrade-target-schema; another
application's database, a folder that is not an MLflow store, a bare word and a web server that
is not MLflow are refused with exit 2 and nothing created. Broken stores fail in one line, fast.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from support import free_port
from support.cli import Run, cli
from support.old_registries import FIXTURES, relocate_sqlite

from amlpromote.core.registries.stores import (
    CURRENT,
    FOREIGN,
    INVALID,
    OLDER,
    inspect_file_store,
    inspect_sqlite,
    mlflow_head_revision,
)

MODEL = "fixture-model"
REVISION_1_30 = "97727af70f4d"
REVISION_2_16 = "4465047574b1"


# -- fixtures: old registries, relocated copies -------------------------------------------------


@dataclass(frozen=True)
class OldStore:
    """A relocated copy of one registry an older MLflow wrote."""

    mlflow_version: str
    kind: str  # sqlite | file
    root: Path  # the copied fixture folder (what must stay byte-identical)
    uri: str

    @property
    def ref(self) -> str:
        # MLflow 1.x has no aliases.
        return f"{MODEL}@champion" if self.mlflow_version != "1.30" else f"{MODEL}/2"

    @property
    def version(self) -> str:
        return "2"


def old_copy(tmp_path: Path, mlflow_version: str) -> Path:
    """The fixture of `mlflow_version`, copied and with its absolute paths pointing at the copy."""
    source = FIXTURES / f"mlflow-{mlflow_version}"
    dest = tmp_path / f"mlflow-{mlflow_version}"
    shutil.copytree(source, dest)
    recorded = (source / "ROOT").read_text().strip()
    relocate_sqlite(dest / "sqlite" / "registry.db", recorded, str(dest))
    for meta in (dest / "filestore").rglob("meta.yaml") if (dest / "filestore").exists() else []:
        meta.write_text(meta.read_text().replace(recorded, str(dest)))
    return dest


def old_store(tmp_path: Path, mlflow_version: str, kind: str) -> OldStore:
    root = old_copy(tmp_path, mlflow_version)
    if kind == "sqlite":
        return OldStore(mlflow_version, kind, root, f"sqlite:///{root / 'sqlite' / 'registry.db'}")
    return OldStore(mlflow_version, kind, root, (root / "filestore").as_uri())


def tree_state(folder: Path) -> dict[str, str]:
    """Every file's sha256 and every folder under `folder`: a new folder shows too."""
    state: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        key = path.relative_to(folder).as_posix()
        if path.is_symlink():
            state[key] = "link:" + os.readlink(path)
        elif path.is_dir():
            state[key] = "folder"
        else:
            state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def model_files(folder: Path) -> dict[str, str]:
    return {k: v for k, v in tree_state(folder).items() if v != "folder"}


def source_model_folder(store: OldStore, version: str) -> Path:
    """Where the old registry keeps the version's files, read with sqlite3 / from meta.yaml."""
    if store.kind == "sqlite":
        connection = sqlite3.connect(f"file:{store.root / 'sqlite' / 'registry.db'}?mode=ro",
                                     uri=True)
        try:
            (location,) = connection.execute(
                "SELECT source FROM model_versions WHERE name = ? AND version = ?",
                (MODEL, int(version))).fetchone()
        finally:
            connection.close()
    else:
        meta = (store.root / "filestore" / "models" / MODEL / f"version-{version}" / "meta.yaml")
        location = next(line.split(": ", 1)[1] for line in meta.read_text().splitlines()
                        if line.startswith("source: "))
    assert location.startswith("file://"), location
    return Path(location.removeprefix("file://"))


def target_model_folder(db: Path, version: str) -> Path:
    """The files of a version in a sqlite target this MLflow wrote (read with sqlite3)."""
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        (source,) = connection.execute(
            "SELECT source FROM model_versions WHERE name = ? AND version = ?",
            (MODEL, int(version))).fetchone()
        if source.startswith("models:/m-"):
            (source,) = connection.execute(
                "SELECT artifact_location FROM logged_models WHERE model_id = ?",
                (source.removeprefix("models:/"),)).fetchone()
    finally:
        connection.close()
    return Path(source.removeprefix("file://"))


def sqlite_revision(db: Path) -> str:
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return str(connection.execute("SELECT version_num FROM alembic_version").fetchone()[0])
    finally:
        connection.close()


def assert_one_line_failure(run: Run, code: int, *names: str) -> None:
    assert run.code == code, f"exit {run.code}, wanted {code}: {run.both[-2000:]}"
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, run.stderr
    assert "Traceback" not in run.both, run.both
    for name in names:
        assert name in errors[0], (name, errors[0])
    assert any(line.startswith("hint: ") for line in run.stderr.splitlines()), run.stderr
    # MLflow's and alembic's log lines (INFO [alembic...], "SQLAlchemy engine could not be
    # created ... retried") never reach the user without --verbose.
    assert len(run.stderr.splitlines()) <= 4, run.stderr


# -- 1: inspection reads what the old MLflow wrote, without writing -----------------------------


def test_inspection_classifies_old_and_current_registries(tmp_path: Path) -> None:
    old = old_copy(tmp_path, "1.30")
    before = tree_state(old)
    state = inspect_sqlite(old / "sqlite" / "registry.db")
    assert (state.kind, state.revision) == (OLDER, REVISION_1_30)
    assert state.head == mlflow_head_revision() != REVISION_1_30
    newer = old_copy(tmp_path, "2.16")
    assert inspect_sqlite(newer / "sqlite" / "registry.db").revision == REVISION_2_16
    assert inspect_file_store(newer / "filestore").kind == CURRENT
    assert tree_state(old) == before

    other = tmp_path / "app.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE users (id INTEGER)")
    assert inspect_sqlite(other).kind == FOREIGN
    (tmp_path / "folder.db").mkdir()
    assert inspect_sqlite(tmp_path / "folder.db").kind == INVALID
    (tmp_path / "text.db").write_text("not a database\n")
    assert inspect_sqlite(tmp_path / "text.db").kind == INVALID


# -- 2: sources stay byte-identical ------------------------------------------------------------


SOURCES = [("2.16", "sqlite"), ("2.16", "file"), ("1.30", "sqlite")]


@pytest.mark.parametrize("dry_run", [False, True], ids=["copy", "dry-run"])
@pytest.mark.parametrize(("mlflow_version", "kind"), SOURCES,
                         ids=[f"{k}-{v}" for v, k in SOURCES])
def test_old_source_is_read_and_left_byte_identical(
    tmp_path: Path, mlflow_version: str, kind: str, dry_run: bool
) -> None:
    store = old_store(tmp_path, mlflow_version, kind)
    before = tree_state(store.root)
    expected = model_files(source_model_folder(store, store.version))
    target = tmp_path / "target" / "mlflow.db"

    run = cli("copy-model", store.ref, "--source", store.uri, "--target", str(target),
              *(["--dry-run"] if dry_run else []), "-o", "json")

    assert run.code == 0, run.both
    assert run.document["status"] == ("planned" if dry_run else "copied")
    assert run.document["source"]["version"] == store.version
    assert tree_state(store.root) == before, "the source registry was changed"
    if dry_run:
        assert not target.exists(), "a dry run created the target"
        return
    assert model_files(target_model_folder(target, run.document["target"]["version"])) == \
        expected


def test_relative_artifact_paths_are_read_beside_the_original_store(tmp_path: Path) -> None:
    """A snapshot lives in a temporary folder; relative paths still mean the store's folder."""
    store = old_store(tmp_path, "2.16", "sqlite")
    db = store.root / "sqlite" / "registry.db"
    prefix = (store.root / "sqlite").as_uri() + "/"
    relocate_sqlite(db, prefix, "")
    expected = model_files(store.root / "sqlite" / source_model_folder_relative(db))
    before = tree_state(store.root)

    run = cli("copy-model", store.ref, "--source", store.uri,
              "--target", str(tmp_path / "target.db"), "-o", "json")

    assert run.code == 0, run.both
    assert tree_state(store.root) == before
    copied = target_model_folder(tmp_path / "target.db", run.document["target"]["version"])
    assert model_files(copied) == expected


def source_model_folder_relative(db: Path) -> str:
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        (source,) = connection.execute(
            "SELECT source FROM model_versions WHERE name = ? AND version = 2",
            (MODEL,)).fetchone()
    finally:
        connection.close()
    assert not source.startswith(("file:", "/")), source
    return str(source)


def test_current_sqlite_source_is_opened_read_only(tmp_path: Path) -> None:
    """A source at this MLflow's schema is read through a read-only connection: nothing, not
    even a journal or a `file:` folder in the working directory, is written."""
    store = old_store(tmp_path, "2.16", "sqlite")
    first = cli("copy-model", store.ref, "--source", store.uri,
                "--target", str(tmp_path / "current.db"))
    assert first.code == 0, first.both
    current = tmp_path / "current.db"
    folder_before = tree_state(tmp_path)
    cwd_before = sorted(os.listdir("."))

    run = cli("copy-model", f"{MODEL}/1", "--source", str(current),
              "--target", str(tmp_path / "second.db"), "-o", "json")

    assert run.code == 0, run.both
    assert "snapshot" not in run.stderr
    after = tree_state(tmp_path)
    assert {k: v for k, v in after.items() if k in folder_before} == folder_before
    assert sorted(os.listdir(".")) == cwd_before


# -- 3: targets change only as asked ----------------------------------------------------------


def test_old_schema_target_is_refused_unless_the_upgrade_is_asked_for(tmp_path: Path) -> None:
    source = old_store(tmp_path, "2.16", "file")
    target_root = old_copy(tmp_path / "t", "1.30")
    target = target_root / "sqlite" / "registry.db"
    before = tree_state(target_root)

    for extra in ([], ["--dry-run"]):
        refused = cli("copy-model", source.ref, "--source", source.uri, "--target", str(target),
                      *extra)
        assert_one_line_failure(refused, 2, REVISION_1_30)
        assert "--upgrade-target-schema" in refused.stderr
        assert tree_state(target_root) == before

    # Human output: the notes (what would be, what was upgraded) go to stderr.
    planned = cli("copy-model", source.ref, "--source", source.uri, "--target", str(target),
                  "--dry-run", "--upgrade-target-schema")
    assert planned.code == 0, planned.both
    assert planned.stdout.startswith("plan: copy"), planned.stdout
    assert f"revision {REVISION_1_30}) would be upgraded" in planned.stderr
    assert tree_state(target_root) == before

    upgraded = cli("copy-model", source.ref, "--source", source.uri, "--target", str(target),
                   "--upgrade-target-schema")
    assert upgraded.code == 0, upgraded.both
    assert f"from revision {REVISION_1_30} to {mlflow_head_revision()}" in upgraded.stderr
    assert sqlite_revision(target) == mlflow_head_revision()
    # The old registry's own two versions are still there; the copy is the third.
    assert f"-> {MODEL}/3 in" in upgraded.stdout, upgraded.stdout


@pytest.fixture
def other_app_db(tmp_path: Path) -> Path:
    db = tmp_path / "crm" / "customers.db"
    db.parent.mkdir()
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        connection.execute("INSERT INTO customers (name) VALUES ('Ada')")
    return db


@pytest.mark.parametrize("dry_run", [False, True], ids=["copy", "dry-run"])
@pytest.mark.parametrize("case", ["other-app-sqlite", "non-mlflow-folder", "bare-word"])
def test_what_is_not_an_mlflow_registry_is_refused_and_left_alone(
    tmp_path: Path, other_app_db: Path, case: str, dry_run: bool
) -> None:
    source = old_store(tmp_path, "2.16", "file")
    documents = tmp_path / "documents"
    documents.mkdir()
    (documents / "report.txt").write_text("quarterly numbers\n")
    (documents / "photos").mkdir()
    target, named = {
        "other-app-sqlite": (str(other_app_db), "customers"),
        "non-mlflow-folder": (documents.as_uri(), "report.txt"),
        "bare-word": ("prodd", "prodd"),
    }[case]
    watched = tmp_path
    before = tree_state(watched)
    cwd_before = sorted(os.listdir("."))

    run = cli("copy-model", source.ref, "--source", source.uri, "--target", target,
              *(["--dry-run"] if dry_run else []))

    assert_one_line_failure(run, 2, named)
    assert tree_state(watched) == before
    assert sorted(os.listdir(".")) == cwd_before
    if case == "bare-word":
        assert "--profile prodd" in run.stderr and "./prodd" in run.stderr


def test_bare_word_source_is_refused_too(tmp_path: Path) -> None:
    run = cli("copy-model", f"{MODEL}/1", "--source", "mlruns", "--target",
              str(tmp_path / "t.db"))
    assert_one_line_failure(run, 2, "'mlruns'")
    dotted = cli("copy-model", f"{MODEL}/1", "--source", "./mlruns", "--target",
                 str(tmp_path / "t.db"))
    # A path it is, and it does not exist.
    assert_one_line_failure(dotted, 3, "mlruns")


def test_new_registry_is_reported(tmp_path: Path) -> None:
    source = old_store(tmp_path, "2.16", "file")
    target = tmp_path / "new" / "registry.db"
    run = cli("copy-model", source.ref, "--source", source.uri, "--target", str(target))
    assert run.code == 0, run.both
    assert f"created a new registry at sqlite:///{target}" in run.stderr
    again = cli("copy-model", source.ref, "--source", source.uri, "--target", str(target))
    assert again.code == 0, again.both
    assert "created a new registry" not in again.stderr


def test_configure_check_reads_both_sides_without_changing_them(tmp_path: Path) -> None:
    source = old_store(tmp_path, "1.30", "sqlite")
    target_root = old_copy(tmp_path / "t", "2.16")
    before = (tree_state(source.root), tree_state(target_root))
    run = cli("configure", "--check", "--source", source.uri,
              "--target", str(target_root / "sqlite" / "registry.db"), "-o", "json")
    assert (tree_state(source.root), tree_state(target_root)) == before
    checks = {c["side"]: c for c in run.document["checks"]}
    assert checks["source"]["status"] == "ok", checks
    assert checks["source"]["models"] == [MODEL]
    assert "snapshot" in (checks["source"]["note"] or "")
    assert checks["target"]["status"] == "failed"
    assert checks["target"]["exit_code"] == 2
    assert "--upgrade-target-schema" in checks["target"]["hint"]
    assert run.code == 2


# -- 4: broken stores fail in one line, fast -----------------------------------------------------


def _python_m(*args: str, cwd: Path, prefix: list[str] | None = None) -> Run:
    env = {**os.environ, "AMLPROMOTE_DATA_DIR": str(cwd / "data"),
           "AMLPROMOTE_CONFIG": str(cwd / "config.toml"), "TMPDIR": str(cwd / "tmp")}
    (cwd / "tmp").mkdir(exist_ok=True)
    started = time.monotonic()
    proc = subprocess.run([*(prefix or []), sys.executable, "-m", "amlpromote", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def _without_file_permission_override() -> list[str]:
    """As root, a prefix that keeps root but drops the capabilities that ignore file modes."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("root without setpriv: a read-only file is writable")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]


@pytest.mark.parametrize("case", ["readonly-sqlite-target", "folder-db-source",
                                  "folder-db-target", "garbage-db-source", "garbage-db-target"])
def test_broken_store_fails_in_one_line_within_seconds(tmp_path: Path, case: str) -> None:
    source = old_store(tmp_path, "2.16", "file")
    work = tmp_path / "work"
    work.mkdir()
    prefix: list[str] = []
    broken = work / "x.db"
    if case.startswith("folder"):
        broken.mkdir()
    elif case.startswith("garbage"):
        broken.write_text("this is a text file, not a database\n")
    else:
        # A real MLflow registry the user may read but not write.
        made = cli("copy-model", source.ref, "--source", source.uri, "--target", str(broken))
        assert made.code == 0, made.both
        broken.chmod(0o444)
        prefix = _without_file_permission_override()
    before = tree_state(work)
    if case.endswith("source"):
        args = ("copy-model", f"{MODEL}/1", "--source", str(broken),
                "--target", str(tmp_path / "out.db"))
    else:
        args = ("copy-model", source.ref, "--source", source.uri, "--target", str(broken))

    run = _python_m(*args, cwd=work, prefix=prefix)

    expected = {"readonly-sqlite-target": (1, "read-only"), "folder-db-source": (2, "folder"),
                "folder-db-target": (2, "folder"), "garbage-db-source": (2, "not a sqlite"),
                "garbage-db-target": (2, "not a sqlite")}[case]
    assert_one_line_failure(run, expected[0], expected[1], str(broken))
    # MLflow retried a folder named x.db for 108 s (its engine's connect loop); the message
    # above is the store inspection's own, written before MLflow opens the store, so that loop
    # never ran. (Bounded by what ran, not by wall time.)
    assert {k: v for k, v in tree_state(work).items() if not k.startswith("tmp")} == \
        {k: v for k, v in before.items() if not k.startswith("tmp")}
    assert not (tmp_path / "out.db").exists()


def test_snapshot_is_removed_when_the_process_ends(tmp_path: Path) -> None:
    store = old_store(tmp_path, "1.30", "sqlite")
    run = _python_m("copy-model", store.ref, "--source", store.uri, "--target",
                    str(tmp_path / "out.db"), cwd=tmp_path)
    assert run.code == 0, run.both
    assert "reading a snapshot" in run.stderr
    assert list((tmp_path / "tmp").iterdir()) == [], "the snapshot was left behind"


# -- 5: a web server that is not MLflow -----------------------------------------------------------


class _QuietHandler(SimpleHTTPRequestHandler):
    """Python's own static file server: HTML pages, and an HTML 404 for anything else. Each
    request is counted in `served` (BaseHTTPRequestHandler logs every request it answers)."""

    served: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: object) -> None:
        self.served.append(self.requestline)


@pytest.fixture
def plain_web_server(tmp_path: Path) -> Iterator[str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<html><body>Welcome to our intranet</body></html>\n")
    _QuietHandler.served.clear()
    handler = partial(_QuietHandler, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize("side", ["source", "target"])
def test_web_server_that_is_not_mlflow_is_named_as_such(
    tmp_path: Path, plain_web_server: str, side: str
) -> None:
    store = old_store(tmp_path, "2.16", "file")
    if side == "source":
        args = ("--source", plain_web_server, "--target", str(tmp_path / "t.db"))
    else:
        args = ("--source", store.uri, "--target", plain_web_server)
    run = cli("copy-model", store.ref, *args)
    assert_one_line_failure(run, 2, "not an MLflow registry (HTTP 404, text/html)")
    assert "<html" not in run.both.lower() and "<!doctype" not in run.both.lower()
    assert not (tmp_path / "t.db").exists()
    # Bounded by attempts, not wall time: the first 404 page ends it, no retries of it.
    assert 1 <= len(_QuietHandler.served) <= 2, _QuietHandler.served


# -- 6: database stores (a real PostgreSQL server, when the machine has one) --------------------


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str

    def uri(self, database: str) -> str:
        # The user comes from PGUSER (libpq), so the URI carries no user info.
        return f"postgresql://{self.host}:{self.port}/{database}"

    def create(self, database: str) -> str:
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=self.user,
                             dbname="postgres", autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{database}"')
        return self.uri(database)

    def state(self, database: str) -> tuple[list[str], str | None]:
        """The database's tables and alembic revision (what an upgrade would change)."""
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=self.user,
                             dbname=database) as connection:
            tables = sorted(row[0] for row in connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
            revision = None
            if "alembic_version" in tables:
                row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
                revision = row[0] if row else None
        return tables, revision


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server of this machine's, in a temporary folder, on a loopback port."""
    pytest.importorskip("psycopg")
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("no PostgreSQL server on this machine (initdb, pg_ctl)")
    # Not under pytest's temporary folders (mode 0700): PostgreSQL refuses to run as root, so as
    # root it runs as nobody, who must reach its folder.
    folder = Path(tempfile.mkdtemp(prefix="amlpromote-test-postgres-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        folder.chmod(0o755)
        os.chown(folder, 65534, 65534)
    data, port = folder / "data", free_port()
    try:
        init = subprocess.run([*prefix, initdb, "-D", str(data), "-U", "mlflow",
                               "--auth=trust", "-E", "UTF8"], capture_output=True, text=True,
                              timeout=120, check=False)
        if init.returncode != 0:
            pytest.skip(f"initdb failed: {init.stderr[-300:]}")
        start = subprocess.run([*prefix, pg_ctl, "-D", str(data), "-l", str(folder / "log"),
                                "-w", "-o", f"-k {folder} -p {port} -h 127.0.0.1", "start"],
                               capture_output=True, text=True, timeout=120, check=False)
        assert start.returncode == 0, start.stdout + start.stderr
        try:
            yield Postgres("127.0.0.1", port, "mlflow")
        finally:
            # pg_ctl stops the server this fixture started (the PID in its own data folder).
            subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"],
                           capture_output=True, timeout=120, check=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg_env(postgres: Postgres, monkeypatch: pytest.MonkeyPatch) -> Postgres:
    monkeypatch.setenv("PGUSER", postgres.user)
    return postgres


def _database_at_revision(uri: str, revision: str) -> None:
    """A database at an older schema revision, as MLflow's own migration scripts define it
    (the tables MLflow 2.16 wrote are MLflow's initial tables upgraded to that revision)."""
    import sqlalchemy
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    engine = sqlalchemy.create_engine(uri)
    try:
        InitialBase.metadata.create_all(engine)
        config = _get_alembic_config(uri)
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def test_old_postgres_source_is_refused_unchanged(tmp_path: Path, pg_env: Postgres) -> None:
    uri = pg_env.create("old_source")
    _database_at_revision(uri, REVISION_2_16)
    before = pg_env.state("old_source")
    run = cli("copy-model", f"{MODEL}/1", "--source", uri, "--target", str(tmp_path / "t.db"))
    assert_one_line_failure(run, 2, REVISION_2_16)
    assert "mlflow db upgrade" in run.stderr and "http://" in run.stderr
    assert pg_env.state("old_source") == before == (before[0], REVISION_2_16)
    assert not (tmp_path / "t.db").exists()


def test_postgres_targets_change_only_as_asked(tmp_path: Path, pg_env: Postgres) -> None:
    source = old_store(tmp_path, "2.16", "file")
    old = pg_env.create("old_target")
    _database_at_revision(old, REVISION_2_16)
    before = pg_env.state("old_target")
    for extra in ([], ["--dry-run"]):
        refused = cli("copy-model", source.ref, "--source", source.uri, "--target", old, *extra)
        assert_one_line_failure(refused, 2, REVISION_2_16)
        assert "--upgrade-target-schema" in refused.stderr
        assert pg_env.state("old_target") == before

    planned = cli("copy-model", source.ref, "--source", source.uri, "--target", old,
                  "--dry-run", "--upgrade-target-schema")
    assert planned.code == 0, planned.both
    assert pg_env.state("old_target") == before

    upgraded = cli("copy-model", source.ref, "--source", source.uri, "--target", old,
                   "--upgrade-target-schema")
    assert upgraded.code == 0, upgraded.both
    assert f"from revision {REVISION_2_16}" in upgraded.stderr
    assert pg_env.state("old_target")[1] == mlflow_head_revision()

    pg_env.create("crm")
    import psycopg

    with psycopg.connect(host=pg_env.host, port=pg_env.port, user=pg_env.user,
                         dbname="crm") as connection:
        connection.execute("CREATE TABLE invoices (id INTEGER)")
    foreign = cli("copy-model", source.ref, "--source", source.uri, "--target", pg_env.uri("crm"))
    assert_one_line_failure(foreign, 2, "invoices")
    assert pg_env.state("crm") == (["invoices"], None)

    empty = pg_env.create("fresh")
    planned_new = cli("copy-model", source.ref, "--source", source.uri, "--target", empty,
                      "--dry-run")
    assert planned_new.code == 0, planned_new.both
    assert pg_env.state("fresh") == ([], None), "a dry run created the registry"
    created = cli("copy-model", source.ref, "--source", source.uri, "--target", empty,
                  "--alias", "staging")
    assert created.code == 0, created.both
    assert "created a new registry at postgresql://" in created.stderr
    assert pg_env.state("fresh")[1] == mlflow_head_revision()

    # A registry at this MLflow's schema is read as it is, by version and by alias.
    after = pg_env.state("fresh")
    for ref in (f"{MODEL}/1", f"{MODEL}@staging"):
        back = cli("copy-model", ref, "--source", empty, "--target",
                   str(tmp_path / "back.db"), "-o", "json")
        assert back.code == 0, back.both
        assert back.document["source"]["version"] == "1"
    assert pg_env.state("fresh") == after


def test_a_write_through_a_source_fails_loudly(tmp_path: Path, pg_env: Postgres) -> None:
    """Sources at this MLflow's schema are opened read-only: should MLflow ever write while
    reading them, the write fails instead of changing the registry."""
    from amlpromote.core.errors import AmlPromoteError
    from amlpromote.core.registries.registry import MlflowRegistry
    from amlpromote.core.uris import parse_registry_uri

    store = old_store(tmp_path, "2.16", "file")
    made = cli("copy-model", store.ref, "--source", store.uri, "--target",
               str(tmp_path / "current.db"))
    assert made.code == 0, made.both
    database = pg_env.create("written_once")
    made = cli("copy-model", store.ref, "--source", store.uri, "--target", database)
    assert made.code == 0, made.both

    for uri in (f"sqlite:///{tmp_path / 'current.db'}", database):
        source = MlflowRegistry(parse_registry_uri(uri, "source"))
        assert source.get_version(MODEL, "1").version == "1"
        with pytest.raises(AmlPromoteError, match=r"(?i)read-?only"):
            source.call("writing", source.client.create_registered_model, "not-allowed")
        target = MlflowRegistry(parse_registry_uri(uri, "target"), role="target")
        assert target.registered_model("not-allowed") is None
