"""What a local or database MLflow store is, found out read-only before MLflow opens it.

MLflow changes a store when it opens one: its sqlalchemy stores run every pending schema
migration (an MLflow 2 database opened by MLflow 3 can no longer be read by MLflow 2) and insert
a default experiment; its file stores create `.trash`, `models/` and `0/`. A promotion must not
change a source at all, and must change a target only as the user asked. So a store is first
inspected here (sqlite through a read-only connection, other databases with SELECTs only, a
file store by listing it), classified, and then opened through the route that keeps that
promise:

- a sqlite source at MLflow's head revision: a read-only SQLAlchemy URL, so any write MLflow
  might attempt fails loudly instead of changing the file;
- a sqlite source at an older revision: a snapshot copied through sqlite's backup API into a
  temporary file, which MLflow may upgrade; removed afterwards;
- a file store source that lacks what MLflow creates on open: a temporary view of it (one
  symbolic link per top-level entry), where MLflow's folders land instead;
- other databases at an older revision: refused (there is no cheap snapshot of a server);
- a target: refused when it is not an MLflow store, or written by an older MLflow unless the
  user asked for the upgrade; opened read-only in a dry run.

This module imports sqlite3 and pathlib only at module level; SQLAlchemy and alembic (which come
with mlflow) inside the functions that need them.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

from amlpromote.core.errors import (
    BadInput,
    NotFound,
    OperationFailed,
    Unreachable,
    UnusableRegistry,
)
from amlpromote.core.uris import SQLALCHEMY_SCHEMES, RegistryUri, local_path, redact_text

SQLITE_HEADER = b"SQLite format 3\x00"
# What MLflow's file stores create in their root folder when they open it (tracking FileStore:
# `.trash`, and `0/` for a root that does not exist; registry FileStore: `models/`).
FILE_STORE_CREATES = (".trash", "models")
# Tables that only an MLflow tracking or registry database has, besides alembic's.
_MLFLOW_TABLES = frozenset({"experiments", "runs", "registered_models", "model_versions"})

# Store states.
MISSING = "missing"      # nothing there yet
EMPTY = "empty"          # an empty database or folder: MLflow would create a registry in it
CURRENT = "current"      # an MLflow store this MLflow reads as it is
OLDER = "older"          # an MLflow database at an older schema revision
NEWER = "newer"          # an MLflow database at a revision this MLflow does not know
FOREIGN = "foreign"      # another application's database or folder
INVALID = "invalid"      # not a database at all (a folder named x.db, a text file)


@dataclass(frozen=True)
class StoreState:
    """What inspection found; `detail` is a short phrase for messages."""

    kind: str
    detail: str = ""
    revision: str | None = None
    head: str | None = None
    has_default_experiment: bool = True


@dataclass
class OpenedStore:
    """How MLflow should open a store: `mlflow_uri` (None: there is nothing to read yet, and
    opening it would create or change it), plus what the user should be told."""

    mlflow_uri: str | None
    state: StoreState
    created: bool = False  # the open creates a new registry
    notes: list[str] = field(default_factory=list)
    temporary: Path | None = None  # a snapshot or view folder, removed by `cleanup`

    def cleanup(self) -> None:
        if self.temporary is not None:
            shutil.rmtree(self.temporary, ignore_errors=True)
            self.temporary = None


# --- MLflow's schema -------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _migrations() -> object:
    import mlflow.store
    from alembic.script import ScriptDirectory

    return ScriptDirectory(os.path.join(os.path.dirname(mlflow.store.__file__), "db_migrations"))


def mlflow_head_revision() -> str:
    """The schema revision the installed MLflow writes (its alembic head)."""
    heads = _migrations().get_heads()  # type: ignore[attr-defined]
    return str(heads[0])


def _is_known_revision(revision: str) -> bool:
    try:
        return _migrations().get_revision(revision) is not None  # type: ignore[attr-defined]
    except Exception:  # alembic's CommandError (or ResolutionError) for an unknown id
        return False


def _mlflow_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("mlflow", "mlflow-skinny"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "?"


def classify_tables(tables: set[str], revision: str | None,
                    has_default_experiment: bool = True) -> StoreState:
    """Classify a database by its table names and alembic revision."""
    if not tables:
        return StoreState(EMPTY, "an empty database")
    if "alembic_version" not in tables or not tables & _MLFLOW_TABLES:
        shown = ", ".join(sorted(tables)[:4]) + (", ..." if len(tables) > 4 else "")
        return StoreState(FOREIGN, f"another application's database (tables: {shown})")
    head = mlflow_head_revision()
    if revision == head:
        return StoreState(CURRENT, "an MLflow registry", revision, head, has_default_experiment)
    if revision and _is_known_revision(revision):
        return StoreState(OLDER, f"an MLflow registry at schema revision {revision}, older "
                                 f"than MLflow {_mlflow_version()}'s {head}", revision, head,
                          has_default_experiment)
    if revision is None:
        return StoreState(OLDER, "an MLflow registry with no schema revision recorded", None,
                          head, has_default_experiment)
    return StoreState(NEWER, f"an MLflow registry at schema revision {revision}, which MLflow "
                             f"{_mlflow_version()} does not know (written by a newer MLflow)",
                      revision, head, has_default_experiment)


# --- sqlite ----------------------------------------------------------------------------------


# What to check when a sqlite URI names no file: its slashes decide relative or absolute.
SQLITE_PATH_HINT = ("check the path; for a relative sqlite path write sqlite:///relative.db, "
                    "for an absolute one sqlite:////abs.db")


def _sqlite_file_uri(path: Path) -> str:
    """An RFC 3986 `file:` URI for sqlite3 (percent-encoded: paths may hold `?`, `#`, `%`)."""
    return "file:" + quote(str(path))


def sqlite_read_only_url(path: Path) -> str:
    """A SQLAlchemy URL that opens the sqlite file read-only.

    `sqlite+pysqlite` rather than `sqlite`: MLflow creates "parent folders" of a `sqlite:///`
    path before connecting, and for `sqlite:///file:/abs/x.db` those are `./file:/abs` in the
    working directory. SQLAlchemy percent-decodes the database part once, so the `file:` URI is
    encoded twice where it does.
    """
    from sqlalchemy.engine import make_url

    wanted = _sqlite_file_uri(path)
    for database in ("file:" + quote(quote(str(path))), wanted):
        url = f"sqlite+pysqlite:///{database}?mode=ro&uri=true"
        if make_url(url).database == wanted:
            return url
    raise OperationFailed(f"cannot open {path} read-only through SQLAlchemy",
                          hint="rename the path to plain letters, digits, '-', '_' and '/'")


def _connect_read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(_sqlite_file_uri(path) + "?mode=ro", uri=True)


def inspect_sqlite(path: Path) -> StoreState:
    """Classify a sqlite registry file without writing a byte (not even a journal)."""
    if path.is_dir():
        return StoreState(INVALID, "a folder, not a sqlite database file")
    if not path.exists():
        return StoreState(MISSING, "no file yet")
    try:
        with path.open("rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except PermissionError as exc:
        raise OperationFailed(f"no permission to read {path}",
                              hint="fix the file's permissions, or run as its owner") from exc
    except OSError as exc:
        raise OperationFailed(f"cannot read {path}: {exc.strerror or exc}",
                              hint="check the path") from exc
    if not header:
        return StoreState(EMPTY, "an empty file")
    if header != SQLITE_HEADER:
        return StoreState(INVALID, "not a sqlite database (no SQLite header)")
    try:
        connection = _connect_read_only(path)
        try:
            tables = {row[0] for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%'")}
            revision = None
            if "alembic_version" in tables:
                row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
                revision = str(row[0]) if row else None
            default = True
            if "experiments" in tables:
                default = connection.execute(
                    "SELECT 1 FROM experiments WHERE experiment_id = 0").fetchone() is not None
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        return StoreState(INVALID, f"not a readable sqlite database ({exc})")
    return classify_tables(tables, revision, default)


def sqlite_snapshot(path: Path) -> tuple[Path, Path]:
    """Copy the database through sqlite's backup API (a consistent copy, read-only on the
    original) into a new temporary folder; returns (folder, database file)."""
    folder = Path(tempfile.mkdtemp(prefix="amlpromote-snapshot-"))
    copy = folder / path.name
    try:
        source = _connect_read_only(path)
        target = sqlite3.connect(copy)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
    except (sqlite3.Error, OSError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise OperationFailed(f"cannot take a snapshot of {path}: {exc}",
                              hint="check the free space of the temporary folder "
                                   "(TMPDIR)") from exc
    return folder, copy


# --- file stores -----------------------------------------------------------------------------


def _looks_like_file_store(folder: Path, entries: list[str]) -> bool:
    if any(e in FILE_STORE_CREATES and (folder / e).is_dir() for e in entries):
        return True
    return any((folder / e / "meta.yaml").is_file() for e in entries)


def inspect_file_store(folder: Path) -> StoreState:
    """Classify a file store folder by listing it."""
    if not folder.exists():
        return StoreState(MISSING, "no folder yet")
    if not folder.is_dir():
        return StoreState(INVALID, "a file, not a file store folder")
    try:
        entries = sorted(os.listdir(folder))
    except PermissionError as exc:
        raise OperationFailed(f"no permission to read {folder}",
                              hint="fix the folder's permissions, or run as its owner") from exc
    if not entries:
        return StoreState(EMPTY, "an empty folder")
    if _looks_like_file_store(folder, entries):
        return StoreState(CURRENT, "an MLflow file store")
    shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
    return StoreState(FOREIGN, f"a folder that is not an MLflow file store (it holds {shown})")


def file_store_view(folder: Path) -> Path:
    """A temporary folder that shows the store's top-level entries through symbolic links:
    MLflow reads the store through it, and the folders it creates on open land in the view."""
    view = Path(tempfile.mkdtemp(prefix="amlpromote-view-"))
    try:
        for entry in os.listdir(folder):
            os.symlink(folder / entry, view / entry)
    except OSError as exc:
        shutil.rmtree(view, ignore_errors=True)
        raise OperationFailed(f"cannot read the file store {folder} without changing it "
                              f"({exc})",
                              hint=f"create the folders {', '.join(FILE_STORE_CREATES)} in it "
                                   "once (MLflow needs them), or serve it with mlflow server "
                                   "and use http://") from exc
    return view


# --- other databases -------------------------------------------------------------------------


def inspect_database(uri: RegistryUri) -> StoreState:
    """Classify a PostgreSQL/MySQL/SQL Server store with SELECTs only."""
    try:
        import sqlalchemy
    except ImportError as exc:  # pragma: no cover - mlflow depends on it
        raise BadInput("SQLAlchemy is not installed", hint="pip install sqlalchemy") from exc
    try:
        engine = sqlalchemy.create_engine(uri.uri)
    except (ImportError, ModuleNotFoundError) as exc:
        raise BadInput(f"the database driver for {uri.display} is not installed ({exc.name})",
                       hint=f"pip install {exc.name} into amlpromote's environment") from exc
    except Exception as exc:
        raise BadInput(f"cannot use the database URI {uri.display}: "
                       f"{redact_text(str(exc)).splitlines()[0]}",
                       hint="write DIALECT[+DRIVER]://USER@HOST[:PORT]/DATABASE") from exc
    try:
        with engine.connect() as connection:
            tables = set(sqlalchemy.inspect(connection).get_table_names())
            revision = None
            if "alembic_version" in tables:
                row = connection.execute(
                    sqlalchemy.text("SELECT version_num FROM alembic_version")).fetchone()
                revision = str(row[0]) if row else None
            default = True
            if "experiments" in tables:
                default = connection.execute(sqlalchemy.text(
                    "SELECT 1 FROM experiments WHERE experiment_id = 0")).fetchone() is not None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        text = redact_text(str(getattr(exc, "orig", None) or exc)).strip()
        raise Unreachable(f"cannot read the database {uri.display}: "
                          f"{(text.splitlines() or ['?'])[0][:300]}",
                          hint="check the host, the database name, the credentials and that "
                               "the server is running") from exc
    finally:
        engine.dispose()
    return classify_tables(tables, revision, default)


# --- choosing how to open ----------------------------------------------------------------------


def open_store(uri: RegistryUri, role: str, *, read_only: bool,
               upgrade_schema: bool = False, reading: bool = False) -> OpenedStore:
    """Inspect a local or database store and decide how MLflow opens it.

    `role` is "source" (never changed) or "target"; `read_only` is set for a source, a dry run
    and `configure --check`; `upgrade_schema` is the user's --upgrade-target-schema. `reading`
    is set by commands that only ever read the registry (models, deploy, score): a target
    written by an older MLflow is then read as a source is (a snapshot), since no write will
    ever need its schema upgraded. Raises UnusableRegistry for a store that must not be used,
    NotFound for a source that is not there.
    """
    if uri.scheme == "sqlite":
        return _open_sqlite(uri, role, read_only, upgrade_schema, reading)
    if uri.scheme == "file":
        return _open_file_store(uri, role, read_only)
    if uri.scheme in SQLALCHEMY_SCHEMES:
        return _open_database(uri, role, read_only, upgrade_schema, reading)
    return OpenedStore(uri.uri, StoreState(CURRENT))


def _refuse(uri: RegistryUri, role: str, state: StoreState, what: str) -> UnusableRegistry:
    if state.kind == INVALID:
        hint = f"name the {what} of an MLflow registry"
        if role == "target":
            hint += ", or a path that does not exist yet for a new one"
        return UnusableRegistry(f"the {role} {uri.display} is {state.detail}", hint=hint)
    if state.kind == FOREIGN:
        hint = "name the store MLflow writes to (its --backend-store-uri)"
        if role == "target":
            hint = ("amlpromote does not write into another application's data; name a new "
                    "path for a new registry")
        return UnusableRegistry(
            f"the {role} {uri.display} is not an MLflow registry: {state.detail}", hint=hint)
    if state.kind == EMPTY:
        return UnusableRegistry(
            f"the source {uri.display} is not an MLflow registry ({state.detail})",
            hint="name the store MLflow writes to (its --backend-store-uri)")
    if state.kind == NEWER:
        return UnusableRegistry(
            f"the {role} {uri.display} is {state.detail}",
            hint="upgrade MLflow in amlpromote's environment, or serve the registry with an "
                 "mlflow server of its own version and use http://")
    raise AssertionError(state.kind)


def _open_sqlite(uri: RegistryUri, role: str, read_only: bool, upgrade: bool,
                 reading: bool = False) -> OpenedStore:
    path = local_path(uri)
    state = inspect_sqlite(path)
    if state.kind == MISSING:
        if role == "source":
            raise NotFound(f"no sqlite database at {path} (source {uri.display})",
                           hint=SQLITE_PATH_HINT)
        return _new_registry(uri, state, read_only)
    if state.kind == EMPTY and role == "target":
        return _new_registry(uri, state, read_only)
    if state.kind in (INVALID, FOREIGN, EMPTY, NEWER):
        raise _refuse(uri, role, state, "database file")
    if state.kind == CURRENT:
        if read_only and not state.has_default_experiment:
            # MLflow would insert its default experiment on open; it may do so in a copy.
            return _snapshot(uri, path, state, None)
        if read_only:
            return OpenedStore(sqlite_read_only_url(path), state)
        if not os.access(path, os.W_OK):
            raise _read_only_target(uri, path)
        return OpenedStore(uri.uri, state)
    # OLDER
    if role == "source" or reading:
        return _snapshot(uri, path, state, f"the {role} {uri.display} was written by an older "
                                           f"MLflow (schema revision {state.revision}); reading "
                                           "a snapshot of it, the file itself is not changed")
    if not upgrade:
        raise _older_target(uri, state)
    if read_only:
        return _snapshot(uri, path, state, f"dry run: the target's schema (revision "
                                           f"{state.revision}) would be upgraded to "
                                           f"{state.head}; reading a snapshot of it")
    if not os.access(path, os.W_OK):
        raise _read_only_target(uri, path)
    return OpenedStore(uri.uri, state, notes=[_upgrade_note(uri, state)])


def _older_target(uri: RegistryUri, state: StoreState) -> UnusableRegistry:
    return UnusableRegistry(
        f"the target {uri.display} is {state.detail}",
        hint="MLflow would upgrade its schema, and older MLflow versions could no longer open "
             "it: back it up and pass --upgrade-target-schema if you mean that, or serve it "
             "with an mlflow server of its own version and use http://")


def _upgrade_note(uri: RegistryUri, state: StoreState) -> str:
    # Said before MLflow opens the store (the upgrade happens inside that open), so a failed
    # upgrade is followed by its error.
    return (f"upgrading the schema of the target {uri.display} from revision "
            f"{state.revision} to {state.head} (MLflow {_mlflow_version()})")


def _read_only_target(uri: RegistryUri, path: Path) -> OperationFailed:
    return OperationFailed(f"the target registry file {path} is read-only",
                           hint="fix the file's permissions or choose another target")


def _new_registry(uri: RegistryUri, state: StoreState, read_only: bool) -> OpenedStore:
    if read_only:
        return OpenedStore(None, state)
    # No note yet: the registry is made on the first write (MlflowTarget.prepare says so
    # then), so a run that fails before it neither leaves nor claims a new registry.
    return OpenedStore(uri.uri, state, created=True)


def _snapshot(uri: RegistryUri, path: Path, state: StoreState, note: str | None) -> OpenedStore:
    folder, copy = sqlite_snapshot(path)
    return OpenedStore("sqlite:///" + str(copy), state, notes=[note] if note else [],
                       temporary=folder)


def _open_file_store(uri: RegistryUri, role: str, read_only: bool) -> OpenedStore:
    folder = local_path(uri)
    state = inspect_file_store(folder)
    if state.kind == MISSING:
        if role == "source":
            raise NotFound(f"no file store folder at {folder} (source {uri.display})",
                           hint="check the path")
        return _new_registry(uri, state, read_only)
    if state.kind == EMPTY and role == "target":
        return _new_registry(uri, state, read_only)
    if state.kind in (INVALID, FOREIGN, EMPTY):
        raise _refuse(uri, role, state, "folder")
    if read_only and not all((folder / name).is_dir() for name in FILE_STORE_CREATES):
        view = file_store_view(folder)
        return OpenedStore(view.as_uri(), state, temporary=view)
    if not read_only and not os.access(folder, os.W_OK | os.X_OK):
        raise OperationFailed(f"no permission to write {folder} (target {uri.display})",
                              hint="fix the folder's permissions or choose another target")
    return OpenedStore(uri.uri, state)


_PSYCOPG_DRIVERS = ("postgresql", "postgresql+psycopg", "postgresql+psycopg2")


def _read_only_database_url(url_text: str) -> str:
    """For PostgreSQL through psycopg, the same URL with every transaction read-only, so any
    write MLflow might attempt fails loudly (as sqlite's mode=ro does); other databases and
    drivers as given (at the head revision MLflow writes nothing on opening them)."""
    from sqlalchemy.engine import make_url

    url = make_url(url_text)
    if url.drivername not in _PSYCOPG_DRIVERS:
        return url_text
    options = str(url.query.get("options") or "")
    read_only = "-c default_transaction_read_only=on"
    url = url.update_query_dict({"options": f"{options} {read_only}".strip()})
    return url.render_as_string(hide_password=False)


def _open_database(uri: RegistryUri, role: str, read_only: bool, upgrade: bool,
                   reading: bool = False) -> OpenedStore:
    state = inspect_database(uri)
    if state.kind == EMPTY and role == "target":
        return _new_registry(uri, state, read_only)
    if state.kind in (INVALID, FOREIGN, EMPTY, NEWER):
        raise _refuse(uri, role, state, "database")
    if state.kind == CURRENT:
        if read_only and not state.has_default_experiment:
            raise UnusableRegistry(
                f"the {role} {uri.display} has no default experiment (id 0), which MLflow "
                "would insert on opening it",
                hint="serve it with mlflow server and use http://")
        return OpenedStore(_read_only_database_url(uri.uri) if read_only else uri.uri, state)
    if role == "source" or reading:
        # A database cannot be snapshotted like a sqlite file: it is read at its own version.
        raise UnusableRegistry(
            f"the {role} {uri.display} is {state.detail}; opening it would upgrade its schema",
            hint=f"run 'mlflow db upgrade {uri.display}' if you mean to upgrade it, or serve it "
                 "with an mlflow server of its own version and use http://")
    if not upgrade:
        raise _older_target(uri, state)
    if read_only:
        return OpenedStore(None, state, notes=[
            f"dry run: the target's schema (revision {state.revision}) would be upgraded to "
            f"{state.head}; its versions were not read"])
    return OpenedStore(uri.uri, state, notes=[_upgrade_note(uri, state)])

