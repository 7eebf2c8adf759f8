"""Issue #13, point 6: MLflow stores and Optuna storages that are broken, hostile or stalled.

- a corrupt SQLite store, one in a missing folder or that is a folder, a read-only one: exit 2 from
  ``check`` and ``run`` alike, one line naming the store, before anything is written;
- a full disk under the store (a file-size limit on the real process): one line, exit 2;
- a tracking server that answers ``/health`` and then stalls (a real loopback HTTP server): every
  request is bounded by ``tracking.timeout``, so the run fails in seconds with one line, or records
  locally with ``tracking.fallback = "local"``;
- an Optuna journal that is damaged, a SQLite storage in a missing folder: exit 2 naming
  ``tune.storage``; a study name with quotes and backslashes: found again as the same MLflow parent run.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from distill.cli import main
from distill.config import to_toml
from distill.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = str(ROOT / "experiments" / "breast_cancer_gp.toml")
# A fixed KL term: "auto" would cross-validate students before every run that gets as far as training,
# for what a broken store does not depend on.
FAST = ["--set", "train.epochs=2", "--set", "teacher.cache=false", "--set", 'train.device="cpu"', "--episodes", "1",
        "--set", "objective.kl_weight=1.0", "--set", "objective.temperature=1.0"]


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.delenv(name, raising=False)  # distill sets them for a server run; keep them per test


def _refused_by_check_and_run(overrides: list[str], needles: list[str], tmp_path: Path, capsys) -> None:
    lines = {}
    for verb in ("check", "run"):
        out = tmp_path / "out"
        argv = [verb, EXPERIMENT, *FAST, *[a for o in overrides for a in ("--set", o)]]
        if verb == "run":
            argv += ["-o", str(out), "-q"]
        code = main(argv)
        captured = capsys.readouterr()
        errors = _errors(captured.err)
        assert code == 2 and len(errors) == 1, (verb, code, captured.err)
        assert "Traceback" not in captured.err
        for needle in needles:
            assert needle in errors[0], (verb, needle, errors[0])
        if verb == "run":
            assert captured.err.strip() == errors[0]
        assert not out.exists()
        lines[verb] = errors[0]
    assert lines["check"] == lines["run"]


# --------------------------------------------------------------------------- local stores


def test_a_corrupt_sqlite_store_is_refused_before_anything_is_written(tmp_path: Path, capsys) -> None:
    store = tmp_path / "mlflow.db"
    store.write_bytes(b"this is not a database, just garbage bytes " * 100)
    before = store.read_bytes()
    _refused_by_check_and_run([f'tracking.uri="sqlite:///{store}"'], [str(store), "is not a SQLite database"],
                              tmp_path, capsys)
    assert store.read_bytes() == before  # the user's file is left as it was


@pytest.mark.slow
def test_a_truncated_sqlite_store_is_refused(tmp_path: Path, capsys, fresh_mlflow_store) -> None:
    """A real store cut in half: the header is right, the pages are gone."""
    store = tmp_path / "real.db"
    fresh_mlflow_store(store)  # MLflow's tables, made once a session; the run below records into them
    assert main(["run", EXPERIMENT, *FAST, "--set", f'tracking.uri="sqlite:///{store}"', "-q",
                 "-o", str(tmp_path / "first")]) == 0
    capsys.readouterr()
    raw = store.read_bytes()
    store.write_bytes(raw[: len(raw) // 3])
    code = main(["run", EXPERIMENT, *FAST, "--set", f'tracking.uri="sqlite:///{store}"', "-q",
                 "-o", str(tmp_path / "second")])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert "Traceback" not in captured.err
    assert _errors(captured.err)[-1].startswith("error: tracking: "), captured.err
    assert str(store) in _errors(captured.err)[-1]
    assert not (tmp_path / "second" / "summary.json").exists()


@pytest.mark.parametrize("where", ["missing folder", "a folder"])
def test_a_store_path_that_cannot_be_a_database_is_refused(where: str, tmp_path: Path, capsys) -> None:
    if where == "missing folder":
        store, needle = tmp_path / "nope" / "mlflow.db", "does not exist"
    else:
        store, needle = tmp_path / "adir", "is a folder"
        store.mkdir()
    _refused_by_check_and_run([f'tracking.uri="sqlite:///{store}"'], [needle], tmp_path, capsys)
    assert not (tmp_path / "nope").exists()


def _distill(command: list[str], cwd: Path, preexec=None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m distill`` in a real process (a fresh MLflow: no store cached by an earlier test)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLCONFIGDIR": str(cwd / ".mpl")}
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "distill", *command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=preexec)


@contextlib.contextmanager
def _tmpfs(folder: Path, options: str) -> Iterator[bool]:
    """A small tmpfs at ``folder`` when this process may mount one (root); yields whether it did."""
    folder.mkdir(exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], capture_output=True, check=True)


def _empty_store(path: Path) -> None:
    import sqlite3

    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE t (x)")
    connection.commit()
    connection.close()


def test_a_read_only_store_is_refused_before_anything_is_written(tmp_path: Path, capsys) -> None:
    """Root ignores file modes, so as root the store lies on a read-only mount; otherwise in a 0o555 folder."""
    folder = tmp_path / "readonly"
    with _tmpfs(folder, "size=1m") as mounted:
        store = folder / "mlflow.db"
        _empty_store(store)
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)
        else:
            store.chmod(0o444)
            folder.chmod(0o555)
        assert not os.access(folder, os.W_OK)
        try:
            _refused_by_check_and_run([f'tracking.uri="sqlite:///{store}"'], [str(store), "is read-only"],
                                      tmp_path, capsys)
        finally:
            if not mounted:
                folder.chmod(0o755)


@pytest.mark.integration
def test_a_full_disk_under_the_store_is_one_line(tmp_path: Path) -> None:
    """Creating the store's tables runs out of space: a 64 kB tmpfs (as root), else a 64 kB file-size limit
    on the process (a write past it fails with EFBIG, as on a full disk)."""
    folder = tmp_path / "full"
    with _tmpfs(folder, "size=64k") as mounted:
        store = folder / "mlflow.db"

        def limit() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

        done = _distill(["run", EXPERIMENT, *FAST, "--set", f'tracking.uri="sqlite:///{store}"', "-q",
                         "-o", str(tmp_path / "out")], cwd=tmp_path, preexec=None if mounted else limit)
    errors = _errors(done.stderr)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert errors and errors[-1].startswith("error: tracking: ") and str(store) in errors[-1], done.stderr
    assert not (tmp_path / "out" / "summary.json").exists()


# --------------------------------------------------------------------------- a server that stalls


class _StallingServer:
    """A loopback HTTP server: ``/health`` answers at once; ``answer`` paths get a canned JSON reply;
    every other request hangs until the test ends (as a wedged tracking server does)."""

    def __init__(self, answer: dict[str, dict] | None = None) -> None:
        release = self.release = threading.Event()
        canned = answer or {}
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def _reply(self) -> None:
                requests.append(self.path)
                path = self.path.split("?", 1)[0]
                if path == "/health" or path in canned:
                    body = b"OK" if path == "/health" else json.dumps(canned[path]).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                release.wait(60)

            do_GET = do_POST = do_PATCH = do_DELETE = _reply

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def stalling() -> Iterator[_StallingServer]:
    server = _StallingServer()
    yield server
    server.close()


@pytest.fixture()
def stalling_after_search() -> Iterator[_StallingServer]:
    """Answers /health and the preflight's experiment search, then stalls on the run's first real request."""
    server = _StallingServer({"/api/2.0/mlflow/experiments/search": {"experiments": []}})
    yield server
    server.close()


_SERVER = ["tracking.timeout=1", "tracking.retries=0"]


@pytest.mark.integration
def test_a_server_that_stalls_after_health_fails_in_seconds(stalling: _StallingServer, tmp_path: Path,
                                                           capsys) -> None:
    started = time.monotonic()
    _refused_by_check_and_run([f'tracking.uri="{stalling.uri}"', *_SERVER],
                              [f"tracking.uri {stalling.uri} does not answer within 1 s", "answers /health"],
                              tmp_path, capsys)
    assert time.monotonic() - started < 20
    assert "/health" in stalling.requests and len(stalling.requests) > 2  # /health, then an API call, per verb


def _finished_runs(store: Path) -> list[str]:
    """The status of each top-level run in ``store`` (a run's system runs are its children, not runs of their own)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    return [r.info.status for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
            if "mlflow.parentRunId" not in r.data.tags]


@pytest.mark.integration
def test_a_stalling_server_with_local_fallback_records_locally(stalling: _StallingServer, tmp_path: Path,
                                                               fresh_mlflow_store) -> None:
    # The fallback store's tables made beforehand (a copy; seconds of migrations in the process otherwise):
    # falling back into a store it must create is test_tracking's test_unreachable_server_with_local_fallback.
    fresh_mlflow_store(tmp_path / "mlflow.db")
    started = time.monotonic()
    done = _distill(["run", EXPERIMENT, *FAST, "--set", f'tracking.uri="{stalling.uri}"', "--set",
                     'tracking.fallback="local"', *[a for o in _SERVER for a in ("--set", o)], "-q",
                     "-o", str(tmp_path / "out")], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "recording to sqlite:///mlflow.db instead" in done.stderr
    assert (tmp_path / "out" / "summary.json").is_file()
    assert _finished_runs(tmp_path / "mlflow.db") == ["FINISHED"]
    assert time.monotonic() - started < 90


@pytest.mark.integration
def test_a_server_that_stalls_after_the_preflight_fails_in_seconds(
    stalling_after_search: _StallingServer, tmp_path: Path, capsys
) -> None:
    started = time.monotonic()
    code = main(["run", EXPERIMENT, *FAST, "--set", f'tracking.uri="{stalling_after_search.uri}"',
                 *[a for o in _SERVER for a in ("--set", o)], "-q", "-o", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert "Traceback" not in captured.err
    errors = _errors(captured.err)
    assert len(errors) == 1 and errors[0].startswith("error: tracking: "), captured.err
    assert stalling_after_search.uri in errors[0]
    assert not (tmp_path / "out").exists()  # refused before training: no run directory left behind
    assert time.monotonic() - started < 20


@pytest.mark.integration
def test_a_server_that_stalls_after_the_preflight_falls_back_when_asked(
    stalling_after_search: _StallingServer, tmp_path: Path, fresh_mlflow_store
) -> None:
    fresh_mlflow_store(tmp_path / "mlflow.db")  # the fallback store's tables, as in the test above
    done = _distill(["run", EXPERIMENT, *FAST, "--set", f'tracking.uri="{stalling_after_search.uri}"', "--set",
                     'tracking.fallback="local"', *[a for o in _SERVER for a in ("--set", o)], "-q",
                     "-o", str(tmp_path / "out")], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "cannot use experiment" in done.stderr and "recording to sqlite:///mlflow.db instead" in done.stderr
    assert _finished_runs(tmp_path / "mlflow.db") == ["FINISHED"]


@pytest.mark.integration
def test_a_network_teacher_from_a_stalling_server_is_refused_in_seconds(stalling: _StallingServer, tmp_path: Path,
                                                                        capsys) -> None:
    """``teacher.uri`` is fetched while the config is checked: bounded by ``tracking.timeout`` too."""
    started = time.monotonic()
    _refused_by_check_and_run(['teacher.kind="network"', 'teacher.uri="models:/teacher/1"', 'teacher.arch="mlp"',
                               f'tracking.uri="{stalling.uri}"', "tracking.enabled=false", *_SERVER],
                              ["models:/teacher/1"], tmp_path, capsys)
    assert time.monotonic() - started < 20


@pytest.mark.integration
def test_predict_from_a_stalling_server_is_bounded(stalling: _StallingServer, tmp_path: Path) -> None:
    """A stalled server ends ``predict`` in one bounded request with one line (not MLflow's 120 s x 7 retries).

    The bound is MLflow's own variable, which ``predict`` leaves to the user when set: 2 s here keeps the
    test short; the 10 s default it applies otherwise is pinned by the next test.
    """
    data = tmp_path / "rows.csv"
    data.write_text("a,b\n1,2\n")
    started = time.monotonic()
    bound = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "2", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}  # one request of 2 s
    done = subprocess.run([sys.executable, "-m", "distill", "predict", "models:/student/1", str(data),
                           "--tracking-uri", stalling.uri], cwd=tmp_path, capture_output=True, text=True, timeout=90,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **bound})
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert _errors(done.stderr) == [line for line in done.stderr.splitlines() if line.strip()], done.stderr
    assert "cannot fetch MLflow model 'models:/student/1'" in done.stderr
    assert 1.5 < elapsed < 30  # the user's 2 s bound, not MLflow's 120 s
    assert sum(path.startswith("/api/") for path in stalling.requests) == 1  # no retry after the bound


def test_predict_bounds_mlflow_requests_at_10_s_unless_the_user_set_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """``predict`` with no config: 10 s a request, 2 retries (MLflow's own default is 120 s x 7); a value the
    user exported wins. The server here refuses at once, so only the bound that was applied is checked."""
    from distill.errors import UserError
    from distill.students.checkpoint import resolve_checkpoint

    names = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")
    closed = f"http://127.0.0.1:{_closed_port()}"
    for name in names:
        monkeypatch.setenv(name, "0")  # recorded, so the test's values are undone afterwards
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a user's value: kept, and no retries to wait for
    with pytest.raises(UserError, match="cannot fetch MLflow model 'models:/student/1'"):
        resolve_checkpoint("models:/student/1", tracking_uri=closed)
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "10"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    with pytest.raises(UserError, match="cannot fetch MLflow model"):
        resolve_checkpoint("models:/student/1", tracking_uri=closed)
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3"


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released): a connection to it is refused at once."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- Optuna storages

TUNE = {
    "name": "adv_tune",
    "data": {"source": "sklearn:iris", "test_size": 30},
    "few_shot": {"per_class": 3, "validation": 2},
    "teacher": {"restarts": 0, "cache": False},
    "student": {"arch": "mlp", "hidden": [4]},
    "objective": {"kl_weight": 1.0, "temperature": 1.0},  # the untuned config, and trials' temperature: no "auto"
    "train": {"epochs": 2, "device": "cpu"},
    "tune": {"trials": 1, "space": {"objective.kl_weight": {"low": 0.0, "high": 1.0}}},
}


def _tune_toml(tmp_path: Path) -> Path:
    path = tmp_path / "tune.toml"
    path.write_text(to_toml(TUNE), encoding="utf-8")
    return path


#: journals damaged in each place Optuna's replay treats differently: before the last line (replay fails),
#: and the last line itself (replay skips it as a write in progress, and the next append glues onto it)
DAMAGED_JOURNALS = {
    "journal:middle": b'{"op_code": 0, "worker_id": "w"\n\x00\xffnot json\n',
    "journal:last line": b'{"op_code":0,"worker_id":"w","study_name":"s","directions":[1]}\ngarbage\n',
    "journal:cut off": b'{"op_code":0,"study_name":"x"',
    "journal:not a record": b'[1, 2]\n',
    "journal:blank last line": b'{"op_code":0,"worker_id":"w","study_name":"s","directions":[1]}\n\n',
}


@pytest.mark.parametrize("storage, needles", [
    *[(kind, ["tune.storage: journal file", "cannot be read", "damaged"]) for kind in DAMAGED_JOURNALS],
    ("sqlite:///{tmp}/nope/study.db", ["tune.storage sqlite:///", "folder", "does not exist"]),
    ("sqlite:///{tmp}/garbage.db", ["tune.storage sqlite:///", "file is not a database"]),
    ("nosuchdb://host/x", ["tune.storage nosuchdb://host/x", "cannot open the study storage"]),
])
def test_a_broken_study_storage_is_exit_2_before_anything_is_written(
    storage: str, needles: list[str], tmp_path: Path, capsys
) -> None:
    journal, damage = tmp_path / "journal.log", DAMAGED_JOURNALS.get(storage)
    if damage is not None:
        journal.write_bytes(damage)
        storage = str(journal)
    (tmp_path / "garbage.db").write_bytes(b"garbage " * 200)
    storage = storage.replace("{tmp}", str(tmp_path))
    code = main(["tune", str(_tune_toml(tmp_path)), "--storage", storage, "--no-track", "-q",
                 "-o", str(tmp_path / "out")])
    captured = capsys.readouterr()
    errors = _errors(captured.err)
    assert code == 2 and len(errors) == 1, captured.err
    assert captured.err.strip() == errors[0] and "Traceback" not in captured.err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    assert not (tmp_path / "out").exists() and not (tmp_path / "nope").exists()
    if damage is not None:  # the user's journal is left exactly as it was, and no lock is left beside it
        assert journal.read_bytes() == damage and sorted(p.name for p in tmp_path.iterdir()) == [
            "garbage.db", "journal.log", "tune.toml"]


@pytest.mark.slow
def test_a_study_name_with_quotes_finds_its_own_parent_run(tmp_path: Path, capsys, fresh_mlflow_store) -> None:
    """Quotes and backslashes never reach an MLflow filter string: a second tune adds to the same parent."""
    study = "it's a \"study\" \\ with ' quotes"
    store = fresh_mlflow_store(tmp_path / "mlflow.db")
    journal = str(tmp_path / "journal.log")
    for i in range(2):
        code = main(["tune", str(_tune_toml(tmp_path)), "--storage", journal, "--study", study, "-q",
                     "--set", f'tracking.uri="{store}"', "-o", str(tmp_path / f"out{i}")])
        captured = capsys.readouterr()
        assert code == 0, captured.err
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("distill.kind") == "tune"]
    assert len(parents) == 1, [r.data.tags for r in runs]
    assert parents[0].data.tags["distill.study"] == study
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 2  # one trial from each tune, under the one parent



@pytest.mark.parametrize("tail_ok", [True, False])
def test_a_journal_s_long_last_record_is_judged_whole(tmp_path: Path, tail_ok: bool) -> None:
    """A last line of 100 kB (a long study name) is one record, read whole: accepted when it is JSON."""
    from distill.experiment.tune import resolve_storage

    long_name = "s" * 100_000
    first = json.dumps({"op_code": 0, "worker_id": "w", "study_name": "short", "directions": [1]})
    last = (json.dumps({"op_code": 0, "worker_id": "w", "study_name": long_name, "directions": [1]})
            if tail_ok else "y" * 100_000)
    journal = tmp_path / "journal.log"
    journal.write_text(f"{first}\n{last}\n", encoding="utf-8")
    if tail_ok:
        storage = resolve_storage(str(journal))
        assert sorted(len(s.study_name) for s in storage.get_all_studies()) == [5, 100_000]
    else:
        with pytest.raises(ConfigError, match="its last line is not JSON: b'yyy"):
            resolve_storage(str(journal))
    assert journal.read_text(encoding="utf-8") == f"{first}\n{last}\n"


@pytest.mark.parametrize("uri", [None, "sqlite:///mlflow.db", "sqlite:///other/store.db", "sqlite:///{tmp}/abs.db"])
def test_predict_from_a_store_that_is_not_there_creates_none(uri: str | None, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """MLflow creates a missing SQLite store on first use: fetching a model from one must not leave an empty
    ``mlflow.db`` in the user's folder, but say in one line that there is no store there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "rows.csv").write_text("a,b\n1,2\n")
    args = ["predict", "models:/m-doesnotexist", "rows.csv"]
    if uri is not None:
        args += ["--tracking-uri", uri.replace("{tmp}", str(tmp_path))]
    code = main(args)
    errors = _errors(capsys.readouterr().err)
    assert code == 2 and len(errors) == 1, errors
    assert "cannot fetch MLflow model 'models:/m-doesnotexist': there is no tracking store at" in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.csv"]


def test_sqlite_file_names_the_database_of_a_sqlite_uri() -> None:
    from distill.mlflow_env import sqlite_file

    assert sqlite_file("sqlite:///mlflow.db") == Path("mlflow.db")
    assert sqlite_file("sqlite:////abs/dir/m.db") == Path("/abs/dir/m.db")
    assert sqlite_file("sqlite:///m.db?timeout=20") == Path("m.db")
    assert sqlite_file("sqlite:///:memory:") is None and sqlite_file("sqlite:///") is None
    assert sqlite_file("http://127.0.0.1:5000") is None and sqlite_file("postgresql://h/db") is None
