"""The generated parts of docs/ match the code, and the summary.json schema matches what runs write.

* docs/configuration.md and docs/outputs.md hold exactly what ``tools/generate_docs.py`` writes today
  (regenerated here and compared), so a config key or a summary field cannot change without its page;
* every config key has a meaning, and every documented default, read back as TOML, is the default;
* the summary.json of real runs — several episodes with every control, the teacher chosen and
  ``"auto"``; a sweep on three classes; a run stopped by SIGTERM — validates against
  ``distill.outputs.summary_schema`` with unknown keys refused, so the schema cannot drift.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import time
import typing
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

from distill.cli import main
from distill.config import Config, validate_config
from distill.outputs.summary_schema import CompletedSummary, InterruptedSummary, summary_model

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = str(ROOT / "experiments" / "breast_cancer_gp.toml")
REGENERATE = "python tools/generate_docs.py"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_docs", ROOT / "tools" / "generate_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


GENERATOR = _load_generator()


# --------------------------------------------------------------------------- the generated pages


@pytest.mark.parametrize("name", ["configuration.md", "outputs.md"])
def test_the_generated_sections_are_up_to_date(name: str) -> None:
    path = ROOT / "docs" / name
    assert path in {s.path for s in GENERATOR.SECTIONS}
    assert path.read_text(encoding="utf-8") == GENERATOR.expected(path), (
        f"docs/{name} is out of date with the code: run `{REGENERATE}` and commit the result")


def test_a_changed_model_makes_the_page_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison above can fail: a description that changes changes the expected page."""
    path = ROOT / "docs" / "configuration.md"
    monkeypatch.setitem(GENERATOR.DESCRIPTIONS, "train.lr", "a changed meaning")
    assert path.read_text(encoding="utf-8") != GENERATOR.expected(path)
    assert path in GENERATOR.stale_files()


def test_every_key_has_a_meaning_and_every_meaning_a_key() -> None:
    tables = list(GENERATOR.config_tables(Config, Config()))
    keys = [row.key for t in tables for row in t.rows]
    assert {"seed", "few_shot.augment.count", "teacher.candidates[].estimator", "student.init.first.std",
            "train.early_stopping.patience", "tracking.retries"} <= set(keys)
    assert [row.key for t in tables for row in t.rows if not row.description] == []
    assert [row[0] for row in GENERATOR.student_rows() if not row[-1]] == []
    stale = sorted(set(GENERATOR.DESCRIPTIONS) - set(GENERATOR.config_keys()))
    assert stale == [], f"tools/config_keys.py describes keys the models do not have: {stale}"


def _set(tree: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


def _get(config: Any, dotted: str) -> Any:
    """The value at a dotted key; a table left unset (``student.init.first``) as its model's defaults."""
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        field = type(config).model_fields[part]
        config = getattr(config, part)
        if config is None and i < len(parts) - 1:
            model = next(a for a in typing.get_args(field.annotation) if isinstance(a, type) and issubclass(a, BaseModel))
            config = model.model_validate({})
    return config


def test_every_documented_default_reads_back_as_the_default() -> None:
    """Each default as the page prints it, parsed as TOML and validated alone, is the model's default."""
    defaults = Config()
    checked = 0
    for table in GENERATOR.config_tables(Config, defaults):
        for row in table.rows:
            if not row.default.startswith("`") or "[]" in row.key:
                continue  # unset, a nested table, or a field of a candidate table
            literal = row.default.strip("`")
            value = tomllib.loads(f"v = {literal}")["v"]
            config = validate_config(_set({"name": "defaults"}, row.key, value))
            expected = _get(defaults, row.key)
            got = _get(config, row.key)
            if isinstance(expected, list):
                expected = [getattr(e, "name", e) for e in expected]
                got = [getattr(g, "name", g) for g in got]
            assert got == expected, f"{row.key}: the page says {literal}, the default is {expected!r}"
            checked += 1
    assert checked >= 80


def test_toml_literals() -> None:
    assert GENERATOR.toml_literal(0.1) == "0.1"
    assert GENERATOR.toml_literal([0.0, 2]) == "[0.0, 2]"
    assert GENERATOR.toml_literal({"a.b": {"low": 0.0, "log": False}}) == '{ "a.b" = { low = 0.0, log = false } }'
    assert GENERATOR.number(2**31 - 1) == "2,147,483,647" and GENERATOR.number(1e9) == "1,000,000,000"


# --------------------------------------------------------------------------- real summaries


def _run(out: Path, *settings: str) -> dict[str, Any]:
    assert main(["run", EXPERIMENT, "-q", "--no-track", "--output", str(out), *settings]) == 0
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def episodes_summary(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two episodes, every control and the reference, validation rows, the teacher chosen by "auto"
    between two candidates, kl_weight and temperature "auto", a fresh soft-target cache."""
    tmp = tmp_path_factory.mktemp("summary")
    return _run(tmp / "run", "--episodes", "2", "--set", "train.epochs=20", "--set", "few_shot.validation=2",
                "--set", 'protocol.controls=["null_teacher", "hard_labels", "teacher_probs_only"]',
                "--set", 'teacher.kind="auto"', "--set", 'teacher.candidates=["gaussian_process", "logistic_regression"]',
                "--set", f'teacher.cache_dir="{tmp / "cache"}"')


@pytest.mark.slow
def test_a_real_summary_follows_the_schema(episodes_summary: dict[str, Any]) -> None:
    summary = summary_model(episodes_summary).model_validate(episodes_summary)
    assert isinstance(summary, CompletedSummary) and summary.status == "completed"
    assert summary.protocol.episodes == 2 and [e.episode for e in summary.episodes] == [0, 1]
    assert summary.data.classes == ["malignant", "benign"] and summary.data.label_mapping == {"malignant": 0, "benign": 1}
    assert summary.hard_labels is not None and summary.teacher_probs_only is not None
    assert set(summary.paired or {}) == {"student_minus_baseline", "student_minus_teacher",
                                         "student_minus_null_teacher", "student_minus_hard_labels",
                                         "student_minus_teacher_probs_only", "student_minus_logistic_regression"}
    assert summary.aggregate is not None and summary.aggregate["student"]["accuracy"].n == 2
    episode = summary.episodes[0]
    assert set(episode.fits) == {"student", "baseline", "null_teacher", "hard_labels", "teacher_probs_only"}
    diagnostics = episode.teacher_diagnostics
    assert diagnostics.selection.mode == "auto"
    assert [c.name for c in diagnostics.selection.candidates] == ["gaussian_process", "logistic_regression"]
    assert diagnostics.cache == "miss" and diagnostics.validation_accuracy is not None
    assert episode.kd_selection is not None and summary.kd_selection is not None
    assert summary.kd_selection.episodes == 2
    assert summary.soft_target_cache.misses == 2 and summary.mlflow_run_id is None


@pytest.mark.slow
def test_the_schema_refuses_what_a_run_does_not_write(episodes_summary: dict[str, Any]) -> None:
    """Strict both ways: a key the schema does not know, or a key it needs gone, fails validation."""
    for change in ({"unknown": 1}, {"episodes": [{**episodes_summary["episodes"][0], "extra": 1}]}):
        with pytest.raises(ValidationError):
            CompletedSummary.model_validate({**episodes_summary, **change})
    without_verdict = {k: v for k, v in episodes_summary.items() if k != "verdict"}
    with pytest.raises(ValidationError, match="verdict"):
        CompletedSummary.model_validate(without_verdict)
    fit = episodes_summary["episodes"][0]["fits"]["student"]
    with pytest.raises(ValidationError):
        CompletedSummary.model_validate({**episodes_summary, "episodes": [
            {**episodes_summary["episodes"][0], "fits": {"student": {**fit, "status": "unknown"}}}]})


@pytest.mark.slow
def test_a_real_sweep_on_three_classes_follows_the_schema(tmp_path: Path) -> None:
    """A sweep (per-value points, no top-level systems), one episode (no intervals), a one-vs-rest GP."""
    raw = _run(tmp_path / "run", "--episodes", "1", "--set", 'data.source="sklearn:iris"', "--set", "data.test_size=30",
               "--set", "few_shot.labelled=6", "--set", "train.epochs=10", "--set", "teacher.cache=false",
               "--set", "objective.kl_weight=[0.5, 1.0]", "--set", "objective.temperature=2.0")
    summary = summary_model(raw).model_validate(raw)
    assert isinstance(summary, CompletedSummary) and summary.sweep is not None and summary.verdict is None
    assert summary.sweep.key == "objective.kl_weight" and summary.sweep.values == [0.5, 1.0]
    assert [p.value for p in summary.sweep.points] == [0.5, 1.0] and {e.value for e in summary.episodes} == {0.5, 1.0}
    point = summary.sweep.points[0]
    assert point.aggregate is not None and point.aggregate["student"]["accuracy"].ci95 is None  # one episode
    diagnostics = summary.episodes[0].teacher_diagnostics
    assert diagnostics.cache is None and summary.kd_selection is None  # cache off; fixed KL settings
    extra = diagnostics.model_extra or {}
    assert isinstance(extra["kernel"], list) and len(extra["kernel"]) == 3  # one GP per class


@pytest.mark.slow
@pytest.mark.integration
def test_an_interrupted_summary_follows_the_schema(tmp_path: Path) -> None:
    out = tmp_path / "run"
    settings = ["--set", "train.epochs=400", "--set", "protocol.episodes=3", "--set", "train.checkpoint_interval=0",
                "--set", "teacher.cache=false", "--set", "objective.kl_weight=1.0", "--set", "objective.temperature=1.0"]
    process = subprocess.Popen([sys.executable, "-m", "distill", "run", EXPERIMENT, "-q", "--no-track", "--output",
                                str(out), *settings], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((out / "checkpoints").glob("fit-*.pt")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    raw = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    summary = summary_model(raw).model_validate(raw)
    assert isinstance(summary, InterruptedSummary) and summary.signal == "SIGTERM"
    assert summary.resume == f"python -m distill run --resume {out}" and summary.run_dir == str(out)
