"""MLflow client settings shared by tracking and by fetching models: the default store, bounded requests."""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["DEFAULT_URI", "bound_requests", "sqlite_file"]

#: where runs go when neither tracking.uri nor MLFLOW_TRACKING_URI names a store
DEFAULT_URI = "sqlite:///mlflow.db"


def bound_requests(timeout: float = 10.0, retries: int = 2, *, override: bool = True) -> None:
    """Bound every MLflow HTTP request: ``timeout`` seconds, ``retries`` repeats (``override=False``:
    only where the user has not set MLflow's variables).

    MLflow reads these variables per request; its defaults (120 s, 7 retries with backoff) let a
    stalled server hold a run for many minutes.
    """
    values = {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(float(timeout)))),
              "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(int(retries)), "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    for name, value in values.items():
        if override:
            os.environ[name] = value
        else:
            os.environ.setdefault(name, value)


def sqlite_file(uri: str) -> Path | None:
    """The database file a ``sqlite:///PATH`` tracking URI names (None: another kind of store, or memory).

    MLflow creates a missing file on first use, so a command that only reads from a store checks this first:
    a mistyped or missing store must not leave a new empty ``mlflow.db`` behind."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = uri[len(prefix):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)
