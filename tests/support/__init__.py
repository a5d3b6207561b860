"""Shared test infrastructure: real MLflow servers, a fault-injecting proxy, a real model.

Everything here runs on loopback only; nothing reaches the internet.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TypedDict

REPO_ROOT = Path(__file__).resolve().parents[2]
HEART_DIR = REPO_ROOT / "examples" / "heart"
HEART_CSV = HEART_DIR / "heart.csv"
HEART_UNLABELED_CSV = HEART_DIR / "heart-unlabeled-0.csv"

# Environment that keeps MLflow (client and server) from phoning home. Telemetry decides at
# `import mlflow` time, so these must be in os.environ before the first import of mlflow.
NO_PHONE_HOME_ENV: dict[str, str] = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}


class FreshStores(TypedDict):
    """URIs of empty local registries, from the `fresh_stores` fixture."""

    file: str  # file:///.../mlruns (opening it needs MLFLOW_ALLOW_FILE_STORE=true)
    sqlite: str  # sqlite:////.../mlflow.db (artifacts beside it, see support.models)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the caller must tolerate a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def apply_no_phone_home_env() -> None:
    """Set NO_PHONE_HOME_ENV in this process (idempotent)."""
    for key, value in NO_PHONE_HOME_ENV.items():
        os.environ[key] = value


__all__ = [
    "HEART_CSV",
    "HEART_DIR",
    "HEART_UNLABELED_CSV",
    "NO_PHONE_HOME_ENV",
    "REPO_ROOT",
    "FreshStores",
    "apply_no_phone_home_env",
    "free_port",
]
