"""Shared test set-up: no test records to the repository's own MLflow store by accident."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_mlflow_store(tmp_path_factory: pytest.TempPathFactory):
    """Point MLFLOW_TRACKING_URI at a throwaway SQLite file for the whole session."""
    mp = pytest.MonkeyPatch()
    store = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    yield
    mp.undo()
