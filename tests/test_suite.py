"""benchmarks/suite.py on its tiny setting (``--quick``): the tables and the JSON agree with each other
and with the paired arithmetic, and every system the issue names is there."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _suite():
    spec = importlib.util.spec_from_file_location("suite", ROOT / "benchmarks" / "suite.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_quick_suite_writes_consistent_tables_and_json(tmp_path: Path) -> None:
    suite = _suite()
    out = tmp_path / "suite"
    assert suite.main(["--quick", "--out", str(out)]) == 0
    document = json.loads(Path(f"{out}.json").read_text())
    markdown = Path(f"{out}.md").read_text()
    assert [(r["source"], r["per_class"], r["episodes"]) for r in document["results"]] == [("sklearn:iris", 1, 3)]
    result = document["results"][0]
    aggregate, paired = result["aggregate"], result["paired"]
    systems = ["teacher", "student", "baseline", "null_teacher", "hard_labels", "teacher_probs_only",
               "logistic_regression"]
    assert set(systems) <= set(aggregate)
    for system in systems:
        for metric in suite.METRICS:
            stat = aggregate[system][metric]
            assert stat["n"] == 3 and 0.0 <= stat["mean"] <= 1.0
            # The table shows the JSON's figure, rounded.
            assert f"{stat['mean']:.3f}" in markdown.split(f"| {system} |")[1].split("\n")[0]
        if system != "student":
            for metric in suite.METRICS:
                # The paired mean is the difference of the two means when no episode is undefined.
                expected = aggregate["student"][metric]["mean"] - aggregate[system][metric]["mean"]
                assert math.isclose(paired[f"student_minus_{system}"][metric]["mean"], expected, abs_tol=1e-12)
    assert result["verdict"] in markdown
    assert document["protocol"]["config"]["protocol"]["controls"] == ["null_teacher", "hard_labels",
                                                                     "teacher_probs_only"]
