"""Everything MLflow, in one place. mlflow itself is imported lazily, only by the functions
that log, so kernels and training import without it."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DB = "mlflow.db"


def tracking_uri(uri: str | None = None) -> str:
    """The tracking URI radengine logs to: ``uri`` if given, else MLFLOW_TRACKING_URI, else
    MLflow 3's default SQLite store, ``mlflow.db`` in the working directory."""
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{Path.cwd() / DEFAULT_DB}"
