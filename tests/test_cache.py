"""The soft-target cache: reused only for the same teacher, data draw and teacher inputs."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing import assert_array_equal

from distill import students
from distill.cli import main
from distill.data.sources import load_dataset
from distill.experiment.cache import SoftTargetCache

SYSTEMS = ("teacher", "student", "baseline")

GP_TOML = """\
name = "cache_small"
seed = 3
[data]
source = "sklearn:iris"
test_size = 30
[few_shot]
per_class = 5
[teacher]
restarts = 0
[student]
hidden = [8]
[train]
epochs = 5
"""


def run(toml: Path, out: Path, cache: Path, *overrides: str) -> dict:
    """``distill run`` in-process with the cache in ``cache``; returns summary.json."""
    args = ["run", str(toml), "-o", str(out), "-q", "--no-track", "--set", f'teacher.cache_dir="{cache}"']
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 0
    return json.loads((out / "summary.json").read_text())


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="module")
def gp_runs(tmp_path_factory: pytest.TempPathFactory):
    """The same small GP-teacher run twice with one cache folder."""
    tmp = tmp_path_factory.mktemp("gp_cache")
    toml = tmp / "exp.toml"
    toml.write_text(GP_TOML)
    cache = tmp / "cache"
    first = run(toml, tmp / "out1", cache)
    after_first = entries(cache)
    second = run(toml, tmp / "out2", cache)
    return tmp, toml, cache, first, second, after_first


def test_the_first_run_misses_and_the_second_hits(gp_runs) -> None:
    _, _, cache, first, second, after_first = gp_runs
    assert first["soft_target_cache"] == {"dir": str(cache), "hits": 0, "misses": 1}
    assert second["soft_target_cache"] == {"dir": str(cache), "hits": 1, "misses": 0}
    assert len(after_first) == 2 and entries(cache) == after_first  # the hit wrote nothing new
    one, two = first["episodes"][0], second["episodes"][0]
    assert one["teacher_diagnostics"]["cache"] == "miss"
    assert two["teacher_diagnostics"]["cache"] == "hit"
    assert two["timings"]["teacher_fit_s"] == 0
    assert one["timings"]["teacher_fit_s"] > 0
    # The cached diagnostics are the fitted teacher's.
    strip = lambda d: {k: v for k, v in d.items() if k != "cache"}
    assert strip(two["teacher_diagnostics"]) == strip(one["teacher_diagnostics"])
    assert two["teacher_diagnostics"]["estimator"] == "GaussianProcessClassifier"


def test_a_hit_gives_identical_numbers(gp_runs) -> None:
    _, _, _, first, second, _ = gp_runs
    for system in SYSTEMS:
        assert second[system] == first[system]
        assert second["episodes"][0][system] == first["episodes"][0][system]


def test_the_student_is_trained_on_the_same_soft_targets(gp_runs) -> None:
    tmp, _, _, _, _, _ = gp_runs
    one = torch.load(tmp / "out1" / "student.pt", weights_only=True)["state_dict"]
    two = torch.load(tmp / "out2" / "student.pt", weights_only=True)["state_dict"]
    assert one.keys() == two.keys()
    for key in one:
        assert torch.equal(one[key], two[key])


@pytest.mark.parametrize(
    "change",
    [
        ['teacher.kernel="1.0 * RBF(1.0)"'],  # another teacher
        ["teacher.restarts=1"],  # the same kernel, other optimizer starts
        ['few_shot.transfer="pool"'],  # the same teacher asked about more rows
        ["seed=4"],  # another draw (and another teacher seed)
        ["few_shot.per_class=6"],  # other labelled rows: the teacher is fitted on other rows
        ['data.scale="standard"'],  # the GP reads scaled rows: other inputs
    ],
    ids=lambda c: c[0].split("=")[0],
)
def test_any_change_the_outputs_depend_on_is_a_miss(gp_runs, change: list[str], tmp_path: Path) -> None:
    _, toml, cache, _, _, _ = gp_runs
    mine = tmp_path / "cache"
    shutil.copytree(cache, mine)
    summary = run(toml, tmp_path / "out", mine, *change)
    assert summary["soft_target_cache"]["hits"] == 0
    assert summary["soft_target_cache"]["misses"] == 1
    assert summary["episodes"][0]["teacher_diagnostics"]["cache"] == "miss"
    assert len(entries(mine)) == 4  # the old entry kept, the new one added


def test_knobs_the_teacher_does_not_depend_on_still_hit(gp_runs, tmp_path: Path) -> None:
    _, toml, cache, first, _, _ = gp_runs
    mine = tmp_path / "cache"
    shutil.copytree(cache, mine)
    summary = run(toml, tmp_path / "out", mine, "objective.temperature=2.0", "train.epochs=3", "teacher.validation=0.2")
    assert summary["soft_target_cache"] == {"dir": str(mine), "hits": 1, "misses": 0}
    assert summary["teacher"] == first["teacher"]


def test_episodes_each_have_their_own_entry(gp_runs, tmp_path: Path) -> None:
    _, toml, _, _, _, _ = gp_runs
    cache = tmp_path / "cache"
    first = run(toml, tmp_path / "out1", cache, "protocol.episodes=2")
    assert first["soft_target_cache"]["misses"] == 2 and first["soft_target_cache"]["hits"] == 0
    second = run(toml, tmp_path / "out2", cache, "protocol.episodes=2")
    assert second["soft_target_cache"]["hits"] == 2 and second["soft_target_cache"]["misses"] == 0
    assert [e["teacher"] for e in second["episodes"]] == [e["teacher"] for e in first["episodes"]]


def test_cache_false_writes_nothing(gp_runs, tmp_path: Path) -> None:
    _, toml, _, first, _, _ = gp_runs
    cache = tmp_path / "cache"
    summary = run(toml, tmp_path / "out", cache, "teacher.cache=false")
    assert summary["soft_target_cache"] == {"dir": None, "hits": 0, "misses": 0}
    assert not cache.exists()
    assert "cache" not in summary["episodes"][0]["teacher_diagnostics"]
    assert summary["teacher"] == first["teacher"]  # the same teacher, only not cached


def test_the_default_cache_folder_is_relative_to_the_working_folder(gp_runs, tmp_path: Path, monkeypatch) -> None:
    _, toml, _, _, _, _ = gp_runs
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(toml), "-o", "out", "-q", "--no-track"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["soft_target_cache"]["dir"] == ".distill-cache"
    assert len(entries(tmp_path / ".distill-cache")) == 2


# ---------------------------------------------------------------------------------- network teacher

NETWORK_TOML = """\
name = "cache_network"
seed = 1
[data]
source = "sklearn:iris"
test_size = 30
[few_shot]
per_class = 5
transfer = "pool"
[teacher]
kind = "network"
checkpoint = "{checkpoint}"
arch = "mlp"
params = {{ hidden = [8] }}
[student]
hidden = [8]
[train]
epochs = 5
"""


def _iris_network(path: Path, seed: int, steps: int) -> None:
    iris = load_dataset("sklearn:iris")
    torch.manual_seed(seed)
    model = students.build("mlp", (4,), 3, hidden=[8])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    x, y = torch.as_tensor(iris.x, dtype=torch.float32), torch.as_tensor(iris.y)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    torch.save(model.state_dict(), path)


def test_a_network_teacher_is_cached_until_its_file_changes(tmp_path: Path) -> None:
    checkpoint = tmp_path / "teacher.pt"
    _iris_network(checkpoint, seed=0, steps=40)
    toml = tmp_path / "exp.toml"
    toml.write_text(NETWORK_TOML.format(checkpoint=checkpoint))
    cache = tmp_path / "cache"
    first = run(toml, tmp_path / "out1", cache)
    second = run(toml, tmp_path / "out2", cache)
    assert first["soft_target_cache"]["misses"] == 1 and first["soft_target_cache"]["hits"] == 0
    assert second["soft_target_cache"]["hits"] == 1 and second["soft_target_cache"]["misses"] == 0
    assert second["episodes"][0]["teacher_diagnostics"]["cache"] == "hit"
    for system in SYSTEMS:
        assert second[system] == first[system]
    # Retrained: other weights in the same file (same name, same size).
    size = checkpoint.stat().st_size
    _iris_network(checkpoint, seed=7, steps=5)
    assert checkpoint.stat().st_size == size
    third = run(toml, tmp_path / "out3", cache)
    assert third["soft_target_cache"]["misses"] == 1 and third["soft_target_cache"]["hits"] == 0
    assert third["episodes"][0]["teacher_diagnostics"]["cache"] == "miss"
    assert third["teacher"] != first["teacher"]
    # And the retrained network is cached in turn.
    fourth = run(toml, tmp_path / "out4", cache)
    assert fourth["soft_target_cache"]["hits"] == 1
    assert fourth["teacher"] == third["teacher"]


def test_a_network_teacher_reading_scaled_features_misses_when_the_scaling_changes(tmp_path: Path) -> None:
    checkpoint = tmp_path / "teacher.pt"
    _iris_network(checkpoint, seed=0, steps=40)
    toml = tmp_path / "exp.toml"
    toml.write_text(NETWORK_TOML.format(checkpoint=checkpoint).replace('arch = "mlp"', 'arch = "mlp"\ninput = "scaled"'))
    cache = tmp_path / "cache"
    run(toml, tmp_path / "out1", cache)
    summary = run(toml, tmp_path / "out2", cache, 'data.scale="standard"')
    assert summary["soft_target_cache"]["misses"] == 1 and summary["soft_target_cache"]["hits"] == 0
    summary = run(toml, tmp_path / "out3", cache, 'teacher.input="raw"')
    assert summary["soft_target_cache"]["misses"] == 1 and summary["soft_target_cache"]["hits"] == 0


# ---------------------------------------------------------------------------------- SoftTargetCache


@pytest.fixture
def distill_log(caplog: pytest.LogCaptureFixture):
    """The "distill" logger does not propagate once the CLI has set it up: listen to it directly."""
    logger = logging.getLogger("distill")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger="distill")
    yield caplog
    logger.removeHandler(caplog.handler)


def test_put_then_get_round_trips_exactly(tmp_path: Path) -> None:
    cache = SoftTargetCache(tmp_path / "c")
    key = cache.key("teacher", "rows")
    logits = np.random.default_rng(0).normal(size=(17, 3)) * 1e3
    logits[0, 0] = np.nextafter(1.0, 2.0)  # the last bit survives
    diagnostics = {"estimator": "GP", "kernel": ["1**2 * RBF(1)", "2"], "lml": [-3.25, -1.0], "warnings": [], "seed": None}
    cache.put(key, logits, diagnostics)
    got = cache.get(key)
    assert got is not None
    back, meta = got
    assert back.dtype == np.float64 and back.shape == (17, 3)
    assert_array_equal(back, logits)
    assert meta == diagnostics
    assert cache.stats() == {"dir": str(tmp_path / "c"), "hits": 1, "misses": 0}


def test_float32_logits_are_stored_as_float64(tmp_path: Path) -> None:
    cache = SoftTargetCache(tmp_path)
    logits = np.linspace(-3, 3, 12, dtype=np.float32).reshape(4, 3)
    cache.put("k", logits, {})
    back, _ = cache.get("k")
    assert back.dtype == np.float64
    assert_array_equal(back, logits.astype(np.float64))


def test_a_missing_entry_is_a_counted_miss(tmp_path: Path) -> None:
    cache = SoftTargetCache(tmp_path / "nowhere")
    assert cache.get(cache.key("x")) is None
    assert cache.stats() == {"dir": str(tmp_path / "nowhere"), "hits": 0, "misses": 1}
    assert not (tmp_path / "nowhere").exists()  # reading creates nothing


def test_entries_are_an_npz_and_a_json_readable_without_pickle(tmp_path: Path) -> None:
    cache = SoftTargetCache(tmp_path)
    key = cache.key("a", "b")
    assert len(key) == 64 and key != cache.key("a", "c") and key != cache.key("ab")
    logits = np.arange(6, dtype=np.float64).reshape(2, 3)
    cache.put(key, logits, {"estimator": "network", "test_accuracy": float("nan")})
    assert entries(tmp_path) == [f"{key}.json", f"{key}.npz"]  # no temporary files left
    with np.load(tmp_path / f"{key}.npz", allow_pickle=False) as archive:
        assert list(archive.keys()) == ["logits"]
        assert_array_equal(archive["logits"], logits)
    meta = json.loads((tmp_path / f"{key}.json").read_text(encoding="utf-8"))
    assert meta == {"estimator": "network", "test_accuracy": None}  # plain JSON: NaN is null


def _corrupt(folder: Path, key: str, how: str) -> None:
    npz, meta = folder / f"{key}.npz", folder / f"{key}.json"
    raw = npz.read_bytes()
    if how == "truncated npz":
        npz.write_bytes(raw[: len(raw) // 2])
    elif how == "empty npz":
        npz.write_bytes(b"")
    elif how == "garbage npz":
        npz.write_bytes(b"not an npz at all")
    elif how == "pickled npz":
        with open(npz, "wb") as handle:
            np.savez(handle, logits=np.array([{"a": 1}], dtype=object))
    elif how == "npz without logits":
        with open(npz, "wb") as handle:
            np.savez(handle, other=np.zeros(3))
    elif how == "bad json":
        meta.write_text("{not json", encoding="utf-8")
    elif how == "binary json":
        meta.write_bytes(b"\xff\xfe\x00")
    elif how == "json missing":
        meta.unlink()
    elif how == "npz is a folder":
        npz.unlink()
        npz.mkdir()
    elif how == "logits of other rows":  # a planted or stale entry: the right key, the wrong shape
        with open(npz, "wb") as handle:
            np.savez(handle, logits=np.ones((5, 3)))
    elif how == "non-finite logits":
        with open(npz, "wb") as handle:
            np.savez(handle, logits=np.full((2, 3), np.nan))
    elif how == "integer logits":
        with open(npz, "wb") as handle:
            np.savez(handle, logits=np.ones((2, 3), dtype=np.int64))
    elif how == "json list":
        meta.write_text("[1, 2]", encoding="utf-8")


CORRUPTIONS = ["truncated npz", "empty npz", "garbage npz", "pickled npz", "npz without logits", "bad json",
               "binary json", "npz is a folder", "logits of other rows", "non-finite logits", "integer logits",
               "json list"]


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_an_unreadable_entry_is_a_miss_with_a_warning(tmp_path: Path, how: str, distill_log) -> None:
    cache = SoftTargetCache(tmp_path)
    cache.put("k", np.ones((2, 3)), {"a": 1})
    _corrupt(tmp_path, "k", how)
    assert cache.get("k", shape=(2, 3)) is None
    assert cache.stats()["misses"] == 1 and cache.stats()["hits"] == 0
    if how != "npz is a folder":
        assert any("unreadable" in r.getMessage() for r in distill_log.records)
    # Writing it again repairs it.
    if how == "npz is a folder":
        (tmp_path / "k.npz").rmdir()
    cache.put("k", np.ones((2, 3)), {"a": 1})
    got = cache.get("k")
    assert got is not None and got[1] == {"a": 1}


def test_a_half_written_entry_is_a_miss(tmp_path: Path) -> None:
    cache = SoftTargetCache(tmp_path)
    cache.put("k", np.ones((2, 3)), {})
    _corrupt(tmp_path, "k", "json missing")
    assert cache.get("k") is None


def test_a_corrupt_entry_makes_a_run_recompute_not_crash(gp_runs, tmp_path: Path) -> None:
    _, toml, cache, first, _, _ = gp_runs
    mine = tmp_path / "cache"
    shutil.copytree(cache, mine)
    key = next(p.stem for p in mine.glob("*.npz"))
    _corrupt(mine, key, "truncated npz")
    summary = run(toml, tmp_path / "out", mine)
    assert summary["soft_target_cache"]["misses"] == 1 and summary["soft_target_cache"]["hits"] == 0
    assert summary["teacher"] == first["teacher"]
    again = run(toml, tmp_path / "out2", mine)  # rewritten: a hit now
    assert again["soft_target_cache"]["hits"] == 1


def test_a_folder_that_cannot_be_written_is_a_warning(tmp_path: Path, distill_log) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cache = SoftTargetCache(blocker / "cache")  # mkdir fails whoever runs the test, root included
    cache.put("k", np.ones((2, 3)), {})
    assert any("cannot write the soft-target cache" in r.getMessage() for r in distill_log.records)
    assert cache.get("k") is None


def test_a_run_with_an_unwritable_cache_folder_still_completes(gp_runs, tmp_path: Path, capsys) -> None:
    _, toml, _, first, _, _ = gp_runs
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    summary = run(toml, tmp_path / "out", blocker / "cache")
    assert summary["status"] == "completed"
    assert summary["soft_target_cache"]["misses"] == 1
    assert summary["teacher"] == first["teacher"]
    assert "cannot write the soft-target cache" in capsys.readouterr().err


def test_an_inactive_cache_does_nothing(tmp_path: Path) -> None:
    cache = SoftTargetCache(None)
    cache.put("k", np.ones((2, 3)), {})
    assert cache.get("k") is None
    assert cache.stats() == {"dir": None, "hits": 0, "misses": 0}
