"""Issue 13, points 1 and 2: nothing in a config, a checkpoint or an exported program runs code.

Every case goes through the real CLI and must end with exit 2, one ``error:`` line naming the key or
file, no traceback, nothing written, and the attack's side effect (a marker file) absent.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from distill import students
from distill.cli import main
from distill.registry import UnsafeImportError, has_methods, import_class
from tests.adversarial.evil_files import pt2_with_pickled_sample_inputs, pt2_with_pickled_weight

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = str(ROOT / "experiments" / "breast_cancer_gp.toml")
FAST = ["--set", "train.epochs=2", "--set", "teacher.cache=false", "--set", "protocol.episodes=1"]

#: Import paths that are not the kind of class a key promises: functions, builtins, modules,
#: classes of another kind, a method, a metaclass trap.
NOT_A_CLASSIFIER = [
    "os:system", "os:popen", "subprocess:Popen", "subprocess:run", "builtins:eval", "builtins:exec",
    "builtins:__import__", "shutil:rmtree", "os:path", "pathlib:Path", "builtins:type", "builtins:object",
    "sklearn.linear_model:LogisticRegression.fit", "tests.adversarial.hostile_module:NotAClassifier",
    "tests.adversarial.hostile_module:TrapClassifier", "torch.nn:Linear",
]
NOT_A_MODULE_CLASS = [
    "os:system", "subprocess:Popen", "builtins:eval", "builtins:exec", "shutil:rmtree", "os:path",
    "pathlib:Path", "builtins:type", "torch.nn:functional", "torch.nn.functional:relu",
    "sklearn.linear_model:LogisticRegression", "tests.adversarial.hostile_module:Net.forward",
    "tests.adversarial.hostile_module:NotAClassifier",
]


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOSTILE_MARKER", str(tmp_path / "IMPORTED"))
    return tmp_path


def _one_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def _nothing_ran(folder: Path) -> None:
    assert not list(folder.glob("PWNED*")), "the smuggled code ran"
    assert not (folder / "out").exists() and not (folder / "runs").exists()
    assert not list(folder.rglob("summary.json"))


@pytest.mark.parametrize("verb", ["check", "run"])
@pytest.mark.parametrize("target", NOT_A_CLASSIFIER)
def test_teacher_estimator_names_only_a_classifier_class(
    target: str, verb: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [verb, EXPERIMENT, *FAST, "--set", 'teacher.kind="sklearn"', "--set", f'teacher.estimator="{target}"',
            "--set", f'teacher.params={{command = "touch {workdir / "PWNED"}"}}']
    if verb == "run":
        argv += ["-o", str(workdir / "out"), "--no-track", "-q"]
    assert main(argv) == 2
    line = _one_error(capsys, "teacher.estimator", target)
    assert "refused" in line or "not accepted" in line  # a real classifier refuses the unknown 'command'
    _nothing_ran(workdir)
    assert not Path(str(workdir / "IMPORTED") + ".getattr").exists()  # no metaclass hook was consulted


@pytest.mark.parametrize("target", NOT_A_MODULE_CLASS)
def test_student_arch_names_only_a_module_class(target: str, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["check", EXPERIMENT, *FAST, "--set", f'student.arch="{target}"',
            "--set", f'student.command="touch {workdir / "PWNED"}"']
    assert main(argv) == 2
    _one_error(capsys, "student.arch", target)
    _nothing_ran(workdir)


@pytest.mark.parametrize("target", NOT_A_CLASSIFIER)
def test_teacher_kind_names_only_a_teacher_class(target: str, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``teacher.kind`` and a candidate's ``kind`` as import paths: a distill Teacher subclass or nothing."""
    pwned = f'{{command = "touch {workdir / "PWNED"}"}}'
    for key in ("teacher.kind", "teacher.candidates"):
        value = f'"{target}"' if key == "teacher.kind" else f'[{{kind = "{target}", params = {pwned}}}]'
        extra = [] if key == "teacher.kind" else ["--set", 'teacher.kind="auto"']
        argv = ["check", EXPERIMENT, *FAST, *extra, "--set", f"{key}={value}", "--set", f"teacher.params={pwned}"]
        assert main(argv) == 2
        line = _one_error(capsys, "teacher.kind" if key == "teacher.kind" else "teacher.candidates[0].kind", target)
        assert "refused (nothing was called)" in line
    _nothing_ran(workdir)
    assert not Path(str(workdir / "IMPORTED") + ".getattr").exists()  # no metaclass hook was consulted


@pytest.mark.parametrize("target", ["os:system", "subprocess:Popen", "builtins:eval"])
def test_teacher_arch_names_only_a_module_class(target: str, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = workdir / "weights.pt"
    torch.save(students.build("mlp", (4,), 3, hidden=[8]).state_dict(), weights)
    toml = workdir / "exp.toml"
    toml.write_text('name = "net"\n[data]\nsource = "sklearn:iris"\ntest_size = 30\n[few_shot]\nper_class = 2\n'
                    f'[teacher]\nkind = "network"\ncheckpoint = "{weights}"\narch = "{target}"\n'
                    f'params = {{ command = "touch {workdir / "PWNED"}" }}\n')
    assert main(["check", str(toml)]) == 2
    _one_error(capsys, "teacher.arch", target)
    _nothing_ran(workdir)


def test_the_classes_a_key_promises_are_still_accepted(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The positive side: a real classifier and a user's own nn.Module run (the check refuses no honest class)."""
    assert main(["check", EXPERIMENT, "--set", 'teacher.kind="sklearn"',
                 "--set", 'teacher.estimator="sklearn.linear_model:LogisticRegression"']) == 0
    for estimator, params in (("sklearn.svm:SVC", "{probability = true}"),
                              ("sklearn.linear_model:SGDClassifier", '{loss = "log_loss"}'),
                              ("sklearn.ensemble:RandomForestClassifier", "{}")):
        # SVC's and SGDClassifier's predict_proba are descriptors (available_if): still classifiers.
        assert main(["check", EXPERIMENT, "--set", 'teacher.kind="sklearn"', "--set", f'teacher.estimator="{estimator}"',
                     "--set", f"teacher.params={params}"]) == 0, estimator
    assert main(["check", EXPERIMENT, "--set", 'student.arch="tests.adversarial.hostile_module:Net"']) == 0
    assert "ok: config and data are valid" in capsys.readouterr().out


def test_import_class_reads_attributes_without_running_them() -> None:
    """Unit level: the check uses no descriptor, property or metaclass hook, and names key and path."""
    from tests.adversarial import hostile_module

    assert has_methods(hostile_module.NotAClassifier, "fit") and not has_methods(hostile_module.NotAClassifier, "predict_proba")
    assert not has_methods(hostile_module.TrapClassifier, "fit")
    with pytest.raises(UnsafeImportError, match=r"^teacher\.estimator 'os:system' is a function"):
        import_class("os:system", "teacher.estimator", "a classifier", lambda c: True)
    with pytest.raises(UnsafeImportError, match="is a module"):
        import_class("os:path", "student.arch", "an nn.Module subclass", lambda c: True)
    assert import_class("torch.nn:Linear", "student.arch", "x", lambda c: issubclass(c, torch.nn.Module)) is torch.nn.Linear


# --------------------------------------------------------------------------- point 2: checkpoints


def _iris_network_toml(folder: Path, checkpoint: Path, extra: str = "") -> Path:
    toml = folder / "exp.toml"
    toml.write_text('name = "net"\n[data]\nsource = "sklearn:iris"\ntest_size = 30\n[few_shot]\nper_class = 2\n'
                    f'[teacher]\nkind = "network"\ncheckpoint = "{checkpoint}"\n{extra}[train]\nepochs = 2\n')
    return toml


@pytest.mark.parametrize("make", [pt2_with_pickled_sample_inputs, pt2_with_pickled_weight])
@pytest.mark.parametrize("verb", ["check", "run"])
def test_an_exported_program_that_holds_a_pickle_is_refused(
    make, verb: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """torch.export.load would retry such a member with weights_only=False and run it (shown below)."""
    marker = workdir / "PWNED-pt2"
    evil = make(workdir, marker)
    toml = _iris_network_toml(workdir, evil)
    argv = [verb, str(toml)] + (["-o", str(workdir / "out"), "--no-track", "-q"] if verb == "run" else [])
    assert main(argv) == 2
    line = _one_error(capsys, str(evil), "refused")
    assert "weights_only" in line or "pickle" in line
    _nothing_ran(workdir)
    # The attack is real: torch's own loader runs it.
    try:
        torch.export.load(str(evil))
    except Exception:  # noqa: BLE001 - the program is damaged after the payload ran; what matters is the marker
        pass
    assert marker.exists(), "the hostile file did not exercise the unsafe fallback: the test proves nothing"


def test_an_honest_exported_program_still_loads(workdir: Path) -> None:
    from distill.safeload import load_export_program
    from tests.adversarial.evil_files import exported_program

    program = load_export_program(exported_program(workdir / "ok.pt2"))
    assert tuple(program.module()(torch.ones(2, 4)).shape) == (2, 3)


def test_the_guard_leaves_other_threads_and_safe_loads_alone(workdir: Path) -> None:
    import pickle
    import threading

    from distill.safeload import UnsafeFileError, no_unpickling

    torch.save({"w": torch.ones(2)}, workdir / "w.pt")
    seen: list[object] = []
    with no_unpickling():
        assert torch.equal(torch.load(workdir / "w.pt")["w"], torch.ones(2))  # forced weights_only=True
        with pytest.raises(UnsafeFileError):
            pickle.loads(pickle.dumps(1))
        with pytest.raises(UnsafeFileError):
            torch.load(workdir / "w.pt", weights_only=False)
        other = threading.Thread(target=lambda: seen.append(pickle.loads(pickle.dumps([1, 2]))))
        other.start()
        other.join()
    assert seen == [[1, 2]]
    assert pickle.loads(pickle.dumps("after")) == "after"


def _student_checkpoint(folder: Path, arch: str) -> Path:
    """A real student.pt from a tiny run, then its arch field rewritten (as a hostile file would)."""
    out = folder / "trained"
    assert main(["run", EXPERIMENT, *FAST, "-o", str(out), "--no-track", "-q"]) == 0
    payload = torch.load(out / "student.pt", weights_only=True)
    payload.update(arch=arch, kwargs={"hidden": 8})
    payload["state_dict"] = students.build("tests.adversarial.hostile_module:Net", (30,), 2, hidden=8).state_dict() \
        if arch.startswith("tests.") else payload["state_dict"]
    path = folder / "hostile_student.pt"
    torch.save(payload, path)
    return path


@pytest.mark.slow
def test_a_checkpoint_cannot_choose_a_module_to_import(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``arch`` inside student.pt is an import path: predict refuses it unless the user names it with --arch."""
    monkeypatch.delenv("HOSTILE_MARKER")
    target = "tests.adversarial.hostile_module:Net"
    ckpt = _student_checkpoint(workdir, target)
    sys.modules.pop("tests.adversarial.hostile_module", None)
    data = workdir / "rows.csv"
    from sklearn.datasets import load_breast_cancer

    load_breast_cancer(as_frame=True).frame.head(5).to_csv(data, index=False)
    capsys.readouterr()
    monkeypatch.setenv("HOSTILE_MARKER", str(workdir / "IMPORTED"))
    predictions = workdir / "p.csv"
    assert main(["predict", str(ckpt), str(data), "-o", str(predictions)]) == 2
    _one_error(capsys, target, "--arch")
    assert not (workdir / "IMPORTED").exists() and "tests.adversarial.hostile_module" not in sys.modules
    assert not predictions.exists()

    # Named by the user, the same file is accepted.
    assert main(["predict", str(ckpt), str(data), "-o", str(predictions), "--arch", target]) == 0
    assert (workdir / "IMPORTED").exists() and predictions.is_file()


@pytest.mark.slow
def test_a_network_teacher_checkpoint_cannot_choose_a_module_to_import(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HOSTILE_MARKER")
    target = "tests.adversarial.hostile_module:Net"
    ckpt = _student_checkpoint(workdir, target)
    sys.modules.pop("tests.adversarial.hostile_module", None)
    capsys.readouterr()
    monkeypatch.setenv("HOSTILE_MARKER", str(workdir / "IMPORTED"))
    toml = workdir / "net.toml"
    toml.write_text('name = "net"\n[data]\nsource = "sklearn:breast_cancer"\ntest_size = 100\n[few_shot]\n'
                    f'per_class = 2\n[teacher]\nkind = "network"\ncheckpoint = "{ckpt}"\n')
    assert main(["check", str(toml)]) == 2
    _one_error(capsys, target, "teacher.arch")
    assert not (workdir / "IMPORTED").exists() and "tests.adversarial.hostile_module" not in sys.modules

    toml.write_text(toml.read_text() + f'arch = "{target}"\n')
    assert main(["check", str(toml)]) == 0
    assert (workdir / "IMPORTED").exists()


@pytest.mark.parametrize("field, value, needle", [
    ("arch", 7, "'arch'"), ("kwargs", [1], "'kwargs'"), ("in_shape", [10**12, 10**12], "in_shape"),
    ("in_shape", [-1], "in_shape"), ("num_classes", "2", "num_classes"), ("classes", ["only"], "classes"),
    ("scaler", {"shift": [0.0]}, "scaler"), ("state_dict", {"w": 1}, "state_dict"),
])
def test_a_damaged_student_checkpoint_is_one_line(
    field: str, value: object, needle: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fields of the file are untrusted input: each wrong type is named, never a KeyError/TypeError traceback."""
    from distill.students.checkpoint import CHECKPOINT_FORMAT

    payload = {"format": CHECKPOINT_FORMAT, "arch": "mlp", "kwargs": {"hidden": [4]}, "in_shape": [2],
               "num_classes": 2, "num_outputs": 1, "classes": ["a", "b"], "feature_names": ["x", "y"],
               "scaler": {"shift": [0.0, 0.0], "scale": [1.0, 1.0]},
               "state_dict": students.build("mlp", (2,), 2, hidden=[4]).state_dict()}
    payload[field] = value
    torch.save(payload, workdir / "s.pt")
    (workdir / "rows.csv").write_text("x,y\n1,2\n")
    assert main(["predict", str(workdir / "s.pt"), str(workdir / "rows.csv")]) == 2
    _one_error(capsys, "s.pt", needle)
