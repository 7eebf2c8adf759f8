"""Shared test set-up: no test records to the repository's own MLflow store by accident."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

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


@pytest.fixture(scope="session")
def _mlflow_tables(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file holding MLflow's tables (every migration applied) and no experiment; made once.

    Making a new store's tables runs MLflow's Alembic migrations: seconds, in every test that records
    to a store of its own. Such a test copies this file instead (``fresh_mlflow_store``); MLflow finds
    the tables made and, as in a new store, creates the Default experiment where the opener's artifact
    root is. Tests about making a store (the creation race, a full disk, the local fallback) do not.
    """
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables

    path = tmp_path_factory.mktemp("mlflow_tables") / "tables.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    try:
        _initialize_tables(engine)
    finally:
        engine.dispose()
    return path


@pytest.fixture
def fresh_mlflow_store(_mlflow_tables: Path) -> Callable[[Path], str]:
    """``make(path)``: an empty MLflow SQLite store at ``path`` (a copy of ``_mlflow_tables``); its URI."""
    def make(path: Path) -> str:
        shutil.copyfile(_mlflow_tables, path)
        return f"sqlite:///{path}"

    return make


def system_runs(client: Any, parent_id: str) -> dict[str, Any]:
    """The child runs ``distill run`` makes under ``parent_id``, one per system, by run name (every child it has
    must be a system run, each name once)."""
    experiment_id = client.get_run(parent_id).info.experiment_id
    children = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
                                  max_results=1000)
    assert all("distill.system" in c.data.tags for c in children), [c.info.run_name for c in children]
    names = [c.info.run_name for c in children]
    assert len(set(names)) == len(names), names
    return {c.info.run_name: c for c in children}


def metric_points(client: Any, run_id: str, name: str) -> list[tuple[int, float]]:
    """``(step, value)`` of one metric's history, by step."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))


def free_port() -> int:
    """A loopback port nothing listens on (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A real ``mlflow server`` on a free loopback port, with SQLite backend and proxied artifacts.

    One per session (it takes seconds to start): tests/test_tracking.py and tests/test_concurrency.py
    share it, each in experiments of its own names.
    """
    tmp = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{tmp}/backend.db",
        "--serve-artifacts", "--artifacts-destination", str(tmp / "artifacts"),
        "--workers", "1",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # nothing from conftest or other runs
    # No job runner: by default the server starts it and seven Huey consumers (GenAI scoring and trace
    # jobs, nothing distill calls), eight more processes importing MLflow (some 25 CPU-seconds on a 2-core
    # machine, then polling for the rest of the session). Tracking, artifacts and models are unchanged.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    stdout, stderr = open(tmp / "server.out", "wb"), open(tmp / "server.err", "wb")
    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=stdout, stderr=stderr, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"

    def stop() -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)  # the server's own session: it and its uvicorn/job-runner children
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=15)
        stdout.close()
        stderr.close()

    _wait_until_healthy(proc, uri, tmp, stop)
    try:
        yield uri
    finally:
        stop()


#: How long a starting MLflow server may take to answer /health. Generous: a dead server fails at once (its
#: process is checked at every poll), so only a slow start on a loaded machine waits this long (60 s once failed
#: three tests on a busy 2-core machine while the server was about to answer).
SERVER_READY_S = 300


def _wait_until_healthy(proc: subprocess.Popen, uri: str, tmp: Path, stop: Any) -> None:
    """Poll ``uri``/health until it answers 200; fail with the server's stderr if it exits or takes too long."""
    deadline = time.monotonic() + SERVER_READY_S
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop()
            why = "exited" if proc.poll() is not None else f"did not answer within {SERVER_READY_S} s"
            pytest.fail(f"mlflow server {why} on {uri}/health:\n{(tmp / 'server.err').read_text()[-4000:]}")
        time.sleep(0.3)


# --------------------------------------------------------------------------- PostgreSQL

#: set by `eval "$(scripts/dev-services start)"` (and by .ci/run, which starts and stops the cluster)
POSTGRES_ENV = "DISTILL_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The URL of the throwaway PostgreSQL cluster ``scripts/dev-services`` started (its ``postgres``
    database). Without one the test is skipped with one line, except in CI, where it must run."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        reason = f'no PostgreSQL: start one with eval "$(scripts/dev-services start)" ({POSTGRES_ENV} is unset)'
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the PostgreSQL tests: {reason}")
        pytest.skip(reason)
    try:
        import psycopg
    except ImportError:  # pragma: no cover - a test extra
        pytest.fail("psycopg is missing: pip install -e '.[test]'")
    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        pytest.fail(f"{POSTGRES_ENV}={url} does not answer: {str(exc).strip().splitlines()[0]}")
    return url


@pytest.fixture
def postgres_database(postgres_server: str, request: pytest.FixtureRequest):
    """A fresh, empty database on the test cluster for one test (dropped afterwards): its URL."""
    with _throwaway_database(postgres_server) as url:
        yield url


# --------------------------------------------------------------------------- MLflow server on PostgreSQL


@contextmanager
def _throwaway_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the test cluster for as long as the block runs (then dropped): its URL."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = psycopg.connect(server_url, connect_timeout=5, autocommit=True)
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield server_url.rsplit("/", 1)[0] + "/" + name
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                        "pg_backend_pid()", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        admin.close()


class MlflowServer(NamedTuple):
    """A started ``mlflow server``: its URI, the folder its proxied artifacts land in, its backend store URI."""

    uri: str
    artifacts: Path
    backend: str


@pytest.fixture(scope="module")
def mlflow_postgres_server(postgres_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real ``mlflow server`` on a free loopback port with a PostgreSQL backend store (one database for
    the module) and proxied artifacts (``--serve-artifacts``: clients upload through the server and never
    see the destination folder). Started and stopped as ``mlflow_server`` is, by its process group id.
    """
    tmp = tmp_path_factory.mktemp("mlflow_postgres_server")
    artifacts = tmp / "artifacts"
    with _throwaway_database(postgres_server) as backend:
        port = free_port()
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", backend,
            "--serve-artifacts", "--artifacts-destination", str(artifacts),
            "--workers", "1",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # see mlflow_server: no job runner processes
        stdout, stderr = open(tmp / "server.out", "wb"), open(tmp / "server.err", "wb")
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=stdout, stderr=stderr, start_new_session=True)
        uri = f"http://127.0.0.1:{port}"

        def stop() -> None:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    proc.wait(timeout=15)
            stdout.close()
            stderr.close()

        _wait_until_healthy(proc, uri, tmp, stop)  # a new PostgreSQL store runs every MLflow migration first
        try:
            yield MlflowServer(uri, artifacts, backend)
        finally:
            stop()  # before the database is dropped: the server holds connections to it
