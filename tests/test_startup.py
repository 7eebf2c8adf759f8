"""Fast answers (issue 19, point 1): what a command imports before it answers.

``--help``, ``list`` and a ``check`` that refuses a config must not import torch, torchmetrics, MLflow,
Optuna, matplotlib or scikit-learn's models: they would cost seconds before a one-line answer. Each
command runs in a fresh interpreter and reports ``sys.modules`` afterwards. The registries know their
built-in names from static tables; the tables are checked here against what the modules register.
Timings are measured by ``benchmarks/startup.py``, not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.toml"))
#: top-level packages (and scikit-learn's model packages) a fast answer must not import
HEAVY = ("torch", "torchmetrics", "mlflow", "optuna", "matplotlib", "pandas", "scipy", "sklearn")

_REPORT = """
import json, sys
from distill.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # --help
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def _imports(*args: str) -> tuple[int, set[str]]:
    """Run ``python -m distill ARGS`` in a fresh interpreter: its exit code and the heavy packages it imported."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", _REPORT, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    heavy = {m for m in report["modules"] if m.split(".")[0] in HEAVY}
    return report["code"], heavy


def _explicit_kernel(experiment: Path) -> bool:
    teacher = tomllib.loads(experiment.read_text()).get("teacher", {})
    return str(teacher.get("kernel", "auto")).strip() != "auto"


def test_help_and_list_import_nothing_heavy() -> None:
    assert _imports("--help") == (0, set())
    assert _imports("list") == (0, set())


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=lambda p: p.stem)
@pytest.mark.parametrize("bad", ["objective.kl_weight=-1", "objective.kl_wieght=1"], ids=["negative", "unknown-key"])
def test_a_refused_config_is_answered_before_any_heavy_import(experiment: Path, bad: str) -> None:
    """Every shipped experiment with a bad value or an unknown key: exit 2, nothing heavy imported. A config
    that writes its own GP kernel expression imports scikit-learn's kernels to check it (and only that)."""
    code, heavy = _imports("check", str(experiment), "--set", bad, "--no-track")
    assert code == 2
    if _explicit_kernel(experiment):
        assert "sklearn.gaussian_process.kernels" in heavy
        heavy = {m for m in heavy if m.split(".")[0] not in ("sklearn", "scipy", "pandas")}
    assert heavy == set()


def test_builtin_name_tables_are_what_the_modules_register() -> None:
    """BUILTIN_STUDENTS / BUILTIN_TEACHERS / BUILTIN_LOSSES name every built-in and the module that registers
    it, and BUILTIN_TEACHERS_TRAINED the teachers that arrive trained (``learns = False``)."""
    import importlib

    from distill.losses.registry import BUILTIN_LOSSES, HARD_LOSSES
    from distill.students import BUILTIN_STUDENTS, STUDENTS
    from distill.teachers.base import BUILTIN_TEACHERS, BUILTIN_TEACHERS_TRAINED, TEACHERS

    for registry, table in ((STUDENTS, BUILTIN_STUDENTS), (TEACHERS, BUILTIN_TEACHERS), (HARD_LOSSES, BUILTIN_LOSSES)):
        for module in set(table.values()):
            importlib.import_module(module)
        registered = {name: entry.__module__ for name, entry in registry._entries.items()
                      if entry.__module__.startswith("distill.")}
        assert registered == table
    trained = {name for name in BUILTIN_TEACHERS if getattr(TEACHERS.get(name), "learns", True) is False}
    assert trained == BUILTIN_TEACHERS_TRAINED


def test_a_builtin_name_is_taken_before_its_module_is_imported() -> None:
    """Registering ``mlp`` in code before distill.students.mlp is imported is refused, as after; the built-in
    still builds."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = """
import sys
import distill.students as s
assert "distill.students.mlp" not in sys.modules and "torch" not in sys.modules
try:
    s.register_student("mlp", lambda **kw: None)
except ValueError as exc:
    print(exc)
print(type(s.build("mlp", (3,), 2, hidden=[4])).__name__)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["student 'mlp' is already registered (built in)", "MLP"]


def test_the_library_s_config_and_result_types_import_nothing_heavy() -> None:
    """``import distill``, its config functions, result types and errors (what a notebook touches before it
    runs anything) load no torch, Optuna or MLflow; ``distill.run`` and the engine's names may."""
    names = ["load_config", "Config", "RunResult", "TuneResult", "TeacherResult", "Episode", "Estimate",
             "Difference", "SweepPoint", "UserError", "ConfigError", "DataError"]
    code = (f"import json, sys, distill\n[getattr(distill, n) for n in {names!r}]\n"
            "print(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    modules = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(names) <= set(__import__("distill").__all__)
    assert {m.split(".")[0] for m in modules} & {"torch", "optuna", "mlflow", "matplotlib"} == set()
