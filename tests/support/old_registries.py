"""Registries written by an older MLflow (tests/fixtures/mlflow-*), copied for a test.

MLflow records absolute paths (artifact locations, version sources); each fixture folder's
`ROOT` names the folder it was written in, and a copy has those paths rewritten to point at
itself, so the copy is read exactly as a user's old registry would be.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def relocate_sqlite(db: Path, old: str, new: str) -> None:
    """Rewrite the absolute paths MLflow recorded in `db` from `old` to `new`."""
    connection = sqlite3.connect(db)
    try:
        columns = {
            "runs": ("artifact_uri",),
            "experiments": ("artifact_location",),
            "model_versions": ("source", "storage_location"),
        }
        for table, names in columns.items():
            present = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
            for column in names:
                if column in present:
                    connection.execute(
                        f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (old, new)
                    )
        connection.commit()
    finally:
        connection.close()
