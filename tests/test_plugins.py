"""User plugins: a teacher, a student and a hard loss from an installed package's entry points, used from a
TOML file; registration in code; and the config refusing what the registries do not know.

The plugin package is real: ``tests/fixtures/plugins/mydistillplugins.py`` is written into a folder with a
``mydistillplugins-0.1.dist-info`` (METADATA, entry_points.txt) beside it, and that folder is put on the
path, where ``importlib.metadata`` finds it as it finds any installed distribution. Nothing is mocked.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score

from distill.cli import main
from distill.config import set_dotted, to_toml, validate_config
from distill.errors import ConfigError
from distill.losses.hard import HARD_LOSSES, create_loss, register_loss
from distill.registry import PluginError
from distill.students import STUDENTS, build, register_student
from distill.teachers.base import TEACHERS, Teacher, create_teacher, list_teachers, register_teacher

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SOURCE = Path(__file__).parent / "fixtures" / "plugins" / "mydistillplugins.py"
REGISTRIES = (TEACHERS, STUDENTS, HARD_LOSSES)

ENTRY_POINTS = """\
[distill.teachers]
centroid = mydistillplugins:CentroidTeacher

[distill.students]
tiny = mydistillplugins:Tiny

[distill.losses.hard]
myloss = mydistillplugins:make_myloss
"""

#: A second distribution whose entry points are all broken, each in its own way.
BROKEN_ENTRY_POINTS = """\
[distill.teachers]
gone = nowhere_at_all_xyz:Thing
notateacher = mydistillplugins:NotATeacher

[distill.students]
mlp = mydistillplugins:Tiny

[distill.losses.hard]
badloss = mydistillplugins:Tiny
"""

#: The plugin experiment: tiny settings, a fixed KL term (no "auto" choice), no calibration, so that the
#: teacher's probabilities are exactly the softmax of its logits.
EXPERIMENT: dict[str, Any] = {
    "name": "plugins",
    "seed": 3,
    "few_shot": {"per_class": 5},
    "teacher": {"kind": "centroid", "calibration": "none", "params": {"sharpness": 2.0}},
    "student": {"arch": "tiny"},
    "objective": {"hard": "myloss", "kl_weight": 1.0, "temperature": 1.0},
    "train": {"epochs": 3},
}


def _distribution(site: Path, name: str, version: str, entry_points: str) -> None:
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(entry_points)


def write_site(site: Path, broken: bool = False) -> Path:
    """A folder laid out like site-packages with the plugin distribution (and, with ``broken``, a broken one)."""
    site.mkdir(parents=True)
    shutil.copy(PLUGIN_SOURCE, site / "mydistillplugins.py")
    _distribution(site, "mydistillplugins", "0.1", ENTRY_POINTS)
    if broken:
        _distribution(site, "brokendistillplugins", "0.2", BROKEN_ENTRY_POINTS)
    return site


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[Path]:
    """The plugin distribution on ``sys.path`` of this process; registries reread, and restored after."""
    yield from _installed(tmp_path, broken=False)


@pytest.fixture
def installed_broken(tmp_path: Path) -> Iterator[Path]:
    """As ``installed``, plus the distribution with broken entry points."""
    yield from _installed(tmp_path, broken=True)


def _installed(tmp_path: Path, broken: bool) -> Iterator[Path]:
    import importlib

    site = write_site(tmp_path / "site", broken=broken)
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    for registry in REGISTRIES:
        registry.refresh()
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("mydistillplugins", None)
        importlib.invalidate_caches()
        for registry in REGISTRIES:
            registry.refresh()


def _cli(cwd: Path, site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m distill ARGS`` in a fresh process whose path holds the plugin folder and this checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    return subprocess.run([sys.executable, "-m", "distill", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _ece(p: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Top-label expected calibration error, equal-width bins, L1 (Guo et al. 2017)."""
    confidence, correct = p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return total


def _reference_teacher_metrics(seed: int, sharpness: float) -> tuple[dict[str, float], dict[str, int]]:
    """The centroid teacher's test metrics computed here with numpy and scikit-learn.

    Only the rows of the draw come from distill (``prepare`` with a built-in teacher: the split depends on
    the data, ``few_shot`` and the seed, not on the teacher); the scaling (min-max on the labelled rows),
    the centroids, the softmax and the metrics are computed independently.
    """
    from sklearn.datasets import load_breast_cancer

    from distill.experiment.prepare import prepare

    prepared = prepare(validate_config({"seed": seed, "few_shot": {"per_class": 5}, "teacher": {"kind": "sklearn",
                        "estimator": "sklearn.linear_model:LogisticRegression"}}))
    split = prepared.split
    x, y = load_breast_cancer(return_X_y=True)
    lab, test = split.labelled, split.test
    lo, hi = x[lab].min(axis=0), x[lab].max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    scaled = (x - lo) / span
    centroids = np.stack([scaled[lab][y[lab] == c].mean(axis=0) for c in (0, 1)])
    logits = -sharpness * ((scaled[test][:, None, :] - centroids[None]) ** 2).sum(axis=2)
    p = _softmax(logits).astype(np.float32)  # distill scores float32 probabilities
    yt = y[test]
    metrics = {
        "accuracy": float(np.mean(p.argmax(axis=1) == yt)),
        "f1_macro": float(f1_score(yt, p.argmax(axis=1), average="macro")),
        "auroc": float(roc_auc_score(yt, p[:, 1])),
        "ece": _ece(p.astype(np.float64), yt),
    }
    sizes = {"test": int(test.size), "labelled": int(lab.size)}
    return metrics, sizes


# --------------------------------------------------------------------------- end to end, from a TOML file


@pytest.mark.integration
def test_plugin_teacher_student_and_loss_run_from_toml(installed: Path, tmp_path: Path) -> None:
    """(a) ``python -m distill run`` with teacher, student and loss from entry points: the teacher's test
    metrics equal an independent numpy computation of the same centroid teacher on the same draw. The same
    run in this process (its soft targets from the first run's cache) gives identical numbers."""
    path = _experiment(tmp_path, **{"teacher.cache_dir": str(tmp_path / "cache")})
    done = _cli(tmp_path, installed, "run", str(path), "--no-track", "--quiet", "-o", "run1")
    assert done.returncode == 0, done.stderr
    assert main(["run", str(path), "--no-track", "--quiet", "-o", str(tmp_path / "run2")]) == 0
    summaries = [json.loads((tmp_path / out / "summary.json").read_text()) for out in ("run1", "run2")]
    assert "soft-target cache" in (tmp_path / "run2" / "log.txt").read_text()
    assert "1 hit(s), 0 miss(es)" in (tmp_path / "run2" / "log.txt").read_text()
    first, second = summaries
    assert first["status"] == "completed"
    for system in ("teacher", "student", "baseline"):
        assert first[system] == second[system]  # a fixed seed: identical numbers, fitted or cached
    reference, sizes = _reference_teacher_metrics(seed=3, sharpness=2.0)
    assert first["data"]["split"]["test"] == sizes["test"] and first["data"]["split"]["labelled"] == sizes["labelled"]
    for metric, value in reference.items():
        assert first["teacher"][metric] == pytest.approx(value, abs=1e-6), metric
    log = (tmp_path / "run1" / "log.txt").read_text()
    assert "centroid: nearest centroid (sharpness 2.0), calibration none" in log
    assert "tiny() -> 2 output(s), 62 parameters" in log  # 30 features x 2 logits + 2 biases
    assert "myloss + 1.0 * T^2 * KL" in log


@pytest.mark.integration
def test_a_broken_plugin_never_breaks_an_import_and_is_listed(tmp_path: Path) -> None:
    """(d) ``distill list`` in a fresh process shows the plugin's names, and each broken entry point on one
    line naming it and its distribution (an import error, a wrong kind, a clash with a built-in)."""
    site = write_site(tmp_path / "site", broken=True)
    done = _cli(tmp_path, site, "list")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    (teachers,) = [line for line in lines if line.startswith("teachers:")]
    (students,) = [line for line in lines if line.startswith("students:")]
    (losses,) = [line for line in lines if line.startswith("losses:")]
    assert "centroid" in teachers and "gaussian_process" in teachers
    assert "tiny" in students
    assert "myloss" in losses and "badloss" not in losses
    broken = {line.split("'")[1]: line for line in lines if line.startswith("  ")}
    assert set(broken) == {"gone", "notateacher", "mlp", "badloss"}
    for line in broken.values():
        assert "brokendistillplugins 0.2" in line
    assert "gone = nowhere_at_all_xyz:Thing" in broken["gone"] and "No module named" in broken["gone"]
    assert "NotATeacher, which is not a distill Teacher subclass" in broken["notateacher"]
    assert "clashes with the built-in student 'mlp'" in broken["mlp"]
    assert "hard-loss factory arguments" in broken["badloss"]


# --------------------------------------------------------------------------- the config against the registries


def _experiment(tmp_path: Path, **overrides: Any) -> Path:
    """EXPERIMENT as a TOML file, with ``{"teacher.kind": value}``-style overrides."""
    tree = copy.deepcopy(EXPERIMENT)
    for key, value in overrides.items():
        set_dotted(tree, key, value)
    path = tmp_path / "x.toml"
    path.write_text(to_toml(tree))
    return path


def _one_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


def test_unknown_kind_exits_2_naming_the_key_and_every_registered_teacher(installed: Path, tmp_path: Path,
                                                                          capsys) -> None:
    """(b)"""
    path = _experiment(tmp_path, **{"teacher.kind": "centroidd"})
    assert main(["check", str(path), "--no-track"]) == 2
    line = _one_error(capsys)
    assert line.startswith("error: teacher.kind: unknown teacher 'centroidd'; registered: ")
    registered = line.split("registered: ")[1].split(";")[0].split(", ")
    assert registered == ["centroid", "gaussian_process", "network", "sklearn"]


def test_a_broken_entry_point_is_one_line_naming_it_and_its_distribution(installed_broken: Path, tmp_path: Path,
                                                                         capsys) -> None:
    """(c) and the other names: a broken entry point is an error only where its name is used."""
    assert main(["check", str(_experiment(tmp_path, **{"teacher.kind": "gone"})), "--no-track"]) == 2
    line = _one_error(capsys)
    assert line.startswith("error: teacher.kind: entry point 'gone = nowhere_at_all_xyz:Thing' (group "
                           "distill.teachers) of distribution brokendistillplugins 0.2 cannot be imported: "
                           "ModuleNotFoundError")
    assert main(["check", str(_experiment(tmp_path, **{"objective.hard": "badloss"})), "--no-track"]) == 2
    assert "error: objective.hard: entry point 'badloss = mydistillplugins:Tiny'" in _one_error(capsys)
    # the clash makes "mlp" ambiguous: refused where it is used, with the reason
    assert main(["check", str(_experiment(tmp_path, **{"student.arch": "mlp"})), "--no-track"]) == 2
    assert "clashes with the built-in student 'mlp'" in _one_error(capsys)
    # the healthy plugin of the other distribution still works
    assert main(["check", str(_experiment(tmp_path)), "--no-track"]) == 0


def test_check_prints_the_teachers_describe_line(installed: Path, tmp_path: Path, capsys) -> None:
    """(e) for the plugin teacher, and for each candidate of teacher.kind = "auto"."""
    assert main(["check", str(_experiment(tmp_path)), "--no-track"]) == 0
    out = capsys.readouterr().out
    assert "teacher     centroid: nearest centroid (sharpness 2.0), calibration none\n" in out
    auto = _experiment(tmp_path, **{"teacher.kind": "auto",
                                    "teacher.candidates": ["random_forest", {"kind": "centroid",
                                                                             "params": {"sharpness": 0.5}}]})
    assert main(["check", str(auto), "--no-track"]) == 0
    out = capsys.readouterr().out
    assert "teacher     auto of 2 candidate(s), calibration none\n" in out
    assert "random_forest: RandomForestClassifier (n_estimators=200)\n" in out
    assert "centroid: nearest centroid (sharpness 0.5)\n" in out


@pytest.mark.parametrize("path, what", [
    ("os:system", "is a function, not a distill Teacher subclass"),
    ("collections:OrderedDict", "is the class OrderedDict, which is not a distill Teacher subclass"),
    ("mydistillplugins:Tripwire", "is the class Tripwire, which is not a distill Teacher subclass"),
    ("mydistillplugins:tripwire_function", "is a function, not a distill Teacher subclass"),
])
def test_an_import_path_to_a_non_teacher_is_refused_before_anything_is_called(installed: Path, path: str, what: str,
                                                                             tmp_path: Path, capsys) -> None:
    """(f) for teacher.kind and a candidate's kind; the tripwires record any call."""
    assert main(["check", str(_experiment(tmp_path, **{"teacher.kind": path})), "--no-track"]) == 2
    assert _one_error(capsys) == f"error: teacher.kind: '{path}' {what}; refused (nothing was called)"
    with pytest.raises(ConfigError) as info:
        validate_config({"teacher": {"kind": "ensemble", "candidates": ["gaussian_process", {"kind": path}]}})
    assert info.value.problems == [f"teacher.candidates[1].kind: '{path}' {what}; refused (nothing was called)"]
    import mydistillplugins

    assert mydistillplugins.CALLS == []


def test_an_import_path_to_a_teacher_class_runs_like_a_registered_one(installed: Path, tmp_path: Path,
                                                                      capsys) -> None:
    path = _experiment(tmp_path, **{"teacher.kind": "mydistillplugins:CentroidTeacher"})
    assert main(["check", str(path), "--no-track"]) == 0
    assert "mydistillplugins:CentroidTeacher: nearest centroid (sharpness 2.0)" in capsys.readouterr().out


def test_teacher_params_the_class_does_not_take_are_named(installed: Path, tmp_path: Path, capsys) -> None:
    path = _experiment(tmp_path, **{"teacher.params": {"sharpness": 1.0, "bogus": 2}})
    assert main(["check", str(path), "--no-track"]) == 2
    assert _one_error(capsys) == ("error: teacher.params.bogus is not a parameter of teacher 'centroid' "
                                  "(CentroidTeacher); accepted: teacher.params.sharpness")


@pytest.mark.parametrize("raw, problem", [
    ({"objective": {"hard": "nope"}}, "objective.hard: unknown hard loss 'nope'; registered: "),
    ({"student": {"arch": "tinyy"}}, "student.arch: unknown student 'tinyy'; registered: cnn, mlp, "),
    ({"teacher": {"kind": "auto", "candidates": [{"kind": "network"}]}},
     "teacher.candidates[0].kind: 'network' arrives trained (learns = False); candidates are cross-fitted"),
])
def test_config_names_come_from_the_registries(installed: Path, raw: dict, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(raw)
    (line,) = info.value.problems
    assert line.startswith(problem)
    if "hard loss" in problem:
        assert line.split("registered: ")[1] == "bce, ce, focal, label_smoothing, myloss, sce; or 'auto'"
    if "student" in problem:  # the plugin's student among them (others may be registered in code by now)
        assert "tiny" in line.split("registered: ")[1].split("; ")[0].split(", ")
    assert validate_config({"teacher": {"kind": "centroid"}, "student": {"arch": "tiny"},
                            "objective": {"hard": "myloss"}}).teacher.kind == "centroid"


def test_without_the_plugin_its_names_are_unknown() -> None:
    """The fixtures leave nothing behind: outside them the plugin's names are refused like any other."""
    assert "centroid" not in list_teachers()
    with pytest.raises(ConfigError, match="teacher.kind: unknown teacher 'centroid'"):
        validate_config({"teacher": {"kind": "centroid"}})


# --------------------------------------------------------------------------- registration in code


class _MeanTeacher(Teacher):
    """Predicts the labelled rows' class frequencies everywhere; takes a seed and the input shape."""

    def __init__(self, num_classes: int, smoothing: float = 0.0, random_state: int = 0,
                 in_shape: tuple[int, ...] = ()) -> None:
        self.num_classes, self.smoothing, self.random_state, self.in_shape = num_classes, smoothing, random_state, in_shape

    def fit(self, x: np.ndarray, y: np.ndarray) -> "_MeanTeacher":
        counts = np.bincount(y, minlength=self.num_classes) + self.smoothing
        self.log_prior_ = np.log(counts / counts.sum())
        return self

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.tile(self.log_prior_, (len(x), 1))


class _Bare(Teacher):
    """Implements nothing and never calls ``super().__init__``: the hooks' defaults still hold."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes


@pytest.fixture
def code_registered() -> Iterator[None]:
    names = {TEACHERS: ["mean_prior", "bare"], STUDENTS: ["tiny_code"], HARD_LOSSES: ["myloss_code"]}
    yield
    for registry, entries in names.items():
        for name in entries:
            if name in registry._entries:
                registry.unregister(name)


def test_a_teacher_class_registered_in_code_is_built_from_teacher_params(code_registered) -> None:
    register_teacher("mean_prior", _MeanTeacher)
    teacher = create_teacher("mean_prior", num_classes=3, params={"smoothing": 1.0}, random_state=7,
                             in_shape=(4,), kernel="auto", estimator=None)
    assert isinstance(teacher, _MeanTeacher)
    assert (teacher.smoothing, teacher.random_state, teacher.in_shape) == (1.0, 7, (4,))
    y = np.array([0, 0, 1, 2, 2, 2])
    z = teacher.fit(np.zeros((6, 4)), y).logits(np.zeros((2, 4)))
    np.testing.assert_allclose(np.exp(z[0]), np.array([3, 2, 4]) / 9, rtol=1e-12)  # (counts + 1) / (6 + 3)
    with pytest.raises(ValueError, match=r"^teacher\.params\.depth is not a parameter of teacher 'mean_prior'"):
        create_teacher("mean_prior", num_classes=3, params={"depth": 2}, random_state=0)
    assert validate_config({"teacher": {"kind": "mean_prior"}}).teacher.kind == "mean_prior"


def test_the_teacher_hooks_default_without_super_init(code_registered) -> None:
    register_teacher("bare", _Bare)
    bare = create_teacher("bare", num_classes=2, params={})
    assert bare.learns is True and bare.input_space == "scaled"
    assert bare.fingerprint() is None and bare.heldout_rows("digest") is None and bare.check((3,)) is None
    assert bare.diagnostics() == {"warnings": []} and bare.describe() == "_Bare"
    with pytest.raises(NotImplementedError, match=r"_Bare must implement fit\(x, y\)"):
        bare.fit(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(NotImplementedError, match=r"_Bare must implement logits\(x\)"):
        bare.logits(np.zeros((2, 3)))


def test_register_refuses_the_wrong_kind_and_reserved_names(code_registered) -> None:
    with pytest.raises(ValueError, match="OrderedDict, which is not a distill Teacher subclass"):
        from collections import OrderedDict

        register_teacher("mean_prior", OrderedDict)
    for name in ("auto", "ensemble", "pkg:Thing"):
        with pytest.raises(ValueError, match="cannot name a teacher"):
            register_teacher(name, _MeanTeacher)
    with pytest.raises(ValueError, match="hard-loss factory arguments"):
        register_loss("myloss_code", lambda logits, target: None)
    assert "mean_prior" not in TEACHERS._entries and "myloss_code" not in HARD_LOSSES._entries
    with pytest.raises(ValueError, match="built in or installed"):
        TEACHERS.unregister("gaussian_process")


@pytest.mark.parametrize("entry, what", [
    (dict, "got the class dict, which is not an nn.Module subclass"),
    (np.ndarray, "got the class ndarray, which is not an nn.Module subclass"),
    (3, "got a value of type int"),
    ("mlp", "got a value of type str"),
])
def test_register_student_refuses_what_is_not_a_module_class_or_factory(code_registered, entry, what) -> None:
    """issue 16: ``register_student("y", dict)`` was accepted and failed only at ``check``; now one line at once."""
    with pytest.raises(ValueError) as info:
        register_student("tiny_code", entry)
    message = str(info.value)
    assert message == (f"register_student('tiny_code'): {what}; expected an nn.Module subclass or a factory "
                       "function returning an nn.Module")
    assert "\n" not in message and "tiny_code" not in STUDENTS._entries
    with pytest.raises(ValueError, match=r"^register_student\('tiny_code'\): got the class dict"):
        register_student("tiny_code")(dict)  # the decorator form checks too
    assert "tiny_code" not in STUDENTS._entries


def test_register_student_refuses_a_built_module_instance(code_registered) -> None:
    """An instance is callable (its forward), but it is not a factory: refused, naming its class."""
    with pytest.raises(ValueError) as info:
        register_student("tiny_code", _TinyStudent(2, 2))
    assert str(info.value) == ("register_student('tiny_code'): got an instance of _TinyStudent; register its class "
                               "(or a factory function returning an nn.Module), not a built model")
    assert "tiny_code" not in STUDENTS._entries


def test_register_student_accepts_a_module_class_and_a_factory_function(code_registered) -> None:
    def factory(in_features: int, num_outputs: int) -> torch.nn.Module:
        return _TinyStudent(in_features, num_outputs)

    register_student("tiny_code", factory)
    torch.manual_seed(0)
    model = build("tiny_code", (5,), 3)
    x = torch.arange(10, dtype=torch.float32).reshape(2, 5) / 10
    w, b = model.linear.weight.detach().double().numpy(), model.linear.bias.detach().double().numpy()
    np.testing.assert_allclose(model(x).detach().double().numpy(), x.double().numpy() @ w.T + b, rtol=0, atol=1e-6)
    STUDENTS.unregister("tiny_code")
    assert register_student("tiny_code")(_TinyStudent) is _TinyStudent and STUDENTS.get("tiny_code") is _TinyStudent


def test_a_loss_and_a_student_registered_in_code(code_registered) -> None:
    """``register_loss`` (as a decorator) gives objective.hard a name; the loss equals a float64 formula."""

    @register_loss("myloss_code")
    def make(num_classes: int, *, weight=None, pos_weight=None, reduction: str = "mean", **params) -> torch.nn.Module:
        return torch.nn.CrossEntropyLoss(reduction=reduction, label_smoothing=params.get("eps", 0.0))

    register_student("tiny_code", _TinyStudent)
    assert validate_config({"objective": {"hard": "myloss_code"}, "student": {"arch": "tiny_code"}})
    loss = create_loss("myloss_code", 3, reduction="none", eps=0.0)
    z = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 3.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    expected = [np.log(np.exp([2.0, -1.0, 0.5]).sum()) - 2.0, np.log(np.exp([0.0, 0.0, 3.0]).sum()) - 0.0]
    np.testing.assert_allclose(loss(z, y).numpy(), expected, rtol=1e-12)
    model = build("tiny_code", (5,), 3)
    assert model(torch.zeros(4, 5)).shape == (4, 3)


class _TinyStudent(torch.nn.Module):
    def __init__(self, in_features: int, num_outputs: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(in_features, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def test_plugin_entries_load_lazily_and_a_broken_one_only_where_used(installed_broken: Path) -> None:
    """Reading the registry imports no plugin module; a lookup imports the one it names."""
    assert "centroid" in list_teachers() and "mydistillplugins" not in sys.modules
    assert TEACHERS.get("centroid").__name__ == "CentroidTeacher" and "mydistillplugins" in sys.modules
    with pytest.raises(PluginError, match="brokendistillplugins 0.2 cannot be imported"):
        TEACHERS.get("gone")
    assert "gone" not in list_teachers() and "gone" in TEACHERS.broken()


def test_editing_a_plugin_teacher_invalidates_its_cached_soft_targets(installed: Path, tmp_path: Path) -> None:
    """The soft-target cache keys a teacher from outside distill by its code too: edit the plugin's
    module and the next run computes its soft targets again (same code: a hit)."""
    from distill.experiment.cache import SoftTargetCache
    from distill.experiment.prepare import prepare
    from distill.experiment.teach import teach

    def next_run() -> Any:  # a new process: prepared again, a cache object of its own on the same folder
        return teach(prepare(validate_config(EXPERIMENT)), cache=SoftTargetCache(tmp_path / "cache"))

    first = next_run()
    again = next_run()
    assert (first.diagnostics["cache"], again.diagnostics["cache"]) == ("miss", "hit")
    np.testing.assert_array_equal(first.test_logits, again.test_logits)
    module = installed / "mydistillplugins.py"
    module.write_text(module.read_text() + "\n# edited: the teacher's code changed\n")
    assert next_run().diagnostics["cache"] == "miss"
