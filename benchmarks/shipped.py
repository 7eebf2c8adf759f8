"""The shipped experiments, each as its file says (10 or 20 episodes), in one table for the README.

Run by hand (about seven minutes on a busy 2-core CPU; ``digits_cnn_to_mlp`` first trains its CNN teacher
into a temporary folder)::

    python benchmarks/shipped.py                      # -> benchmarks/results/shipped.{md,json}
    python benchmarks/shipped.py --readme README.md   # and replace the README's table and main-job output

Per experiment: mean test accuracy of teacher, student, baseline, null teacher and the
logistic-regression reference; the paired student − baseline and student − null-teacher
differences with their 95% interval and Wilcoxon p; the baseline's distinct accuracy values over
the episodes (a student that does not train takes one); and the verdict.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EXPERIMENTS = ["breast_cancer_gp", "breast_cancer_gp_pool", "digits_gp", "digits_cnn_to_mlp", "seed_post"]
BEGIN, END = "<!-- shipped:begin -->", "<!-- shipped:end -->"


def _delta(stat: dict[str, Any]) -> str:
    ci, p = stat.get("ci95"), stat.get("p_value")
    text = f"{stat['mean']:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")
    return text + (f", p = {p:.2g}" if p is not None else "")


def rows_of(name: str, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per sweep value (one row without a sweep)."""
    points = summary["sweep"]["points"] if "sweep" in summary else [summary]
    key = summary["sweep"]["key"] if "sweep" in summary else None
    out = []
    for point in points:
        episodes = [r for r in summary["episodes"] if key is None or r.get("value") == point.get("value")]
        distinct = len({round(r["baseline"]["accuracy"], 9) for r in episodes})
        aggregate, paired = point["aggregate"], point["paired"]
        out.append({
            "experiment": name + (f" ({key} = {point['value']})" if key else ""),
            "episodes": len(episodes),
            **{s: aggregate[s]["accuracy"]["mean"] for s in ("teacher", "student", "baseline", "null_teacher",
                                                              "logistic_regression") if s in aggregate},
            "baseline_distinct": distinct,
            "student_minus_baseline": paired["student_minus_baseline"]["accuracy"],
            "student_minus_null_teacher": paired.get("student_minus_null_teacher", {}).get("accuracy"),
            "verdict": point["verdict"],
            "kl_weight_zero": _zero_share(episodes),
        })
    return out


def _zero_share(episodes: list[dict[str, Any]]) -> str:
    """``"7/10"``: episodes where ``kl_weight = "auto"`` chose not to distil; ``"–"`` for a fixed weight."""
    picks = [r["kd_selection"] for r in episodes
             if r.get("kd_selection") and "kl_weight" in r["kd_selection"].get("chose", ["kl_weight"])]
    return f"{sum(p['kl_weight'] == 0 for p in picks)}/{len(picks)}" if picks else "–"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| experiment | episodes | teacher | student | baseline (distinct values) | null teacher | logistic regression "
             "| student − baseline | student − null teacher | kl_weight 0 chosen |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        null = _delta(r["student_minus_null_teacher"]) if r["student_minus_null_teacher"] else "–"
        lines.append(
            f"| `{r['experiment']}` | {r['episodes']} | {r['teacher']:.3f} | {r['student']:.3f} | "
            f"{r['baseline']:.3f} ({r['baseline_distinct']}) | {r.get('null_teacher', float('nan')):.3f} | "
            f"{r.get('logistic_regression', float('nan')):.3f} | {_delta(r['student_minus_baseline'])} | {null} | "
            f"{r.get('kl_weight_zero', '–')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", nargs="+", default=EXPERIMENTS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "shipped")
    parser.add_argument("--readme", type=Path, help="replace the table between the shipped markers in this file")
    args = parser.parse_args(argv)

    from distill.config import load_config
    from distill.experiment.run import run_experiment
    from distill.experiment.teacher_training import train_teacher

    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="distill-shipped-") as tmp:
        folder = Path(tmp)
        for name in args.experiments:
            overrides = ["tracking.enabled=false", "teacher.cache=false"]
            if name == "digits_cnn_to_mlp":
                teacher = folder / "digits_cnn.pt"
                train_teacher(load_config(ROOT / "experiments" / "digits_teacher.toml", ["tracking.enabled=false"]),
                              output=teacher, track=False)
                overrides.append(f'teacher.checkpoint="{teacher}"')
            t0 = time.perf_counter()
            _, summary = run_experiment(load_config(ROOT / "experiments" / f"{name}.toml", overrides),
                                        output=folder / name, track=False)
            for row in rows_of(name, summary):
                row["seconds"] = round(time.perf_counter() - t0, 1)
                rows.append(row)
                print(f"{row['experiment']}: {row['verdict']}", flush=True)
    text = table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.md").write_text(text + "\n", encoding="utf-8")
    Path(f"{args.out}.json").write_text(json.dumps({"rows": rows, "total_s": round(time.perf_counter() - started, 1)},
                                                   indent=2) + "\n", encoding="utf-8")
    if args.readme is not None:
        replace_block(args.readme, BEGIN, END, text)
        replace_block(args.readme, "<!-- mainjob:begin -->", "<!-- mainjob:end -->", main_job_output())
    print(f"wrote {args.out}.md in {time.perf_counter() - started:.0f} s")
    return 0


def main_job_output() -> str:
    """The console output of the README's main job, as a user sees it (run directory line dropped)."""
    import subprocess

    with tempfile.TemporaryDirectory(prefix="distill-main-job-") as tmp:
        done = subprocess.run([sys.executable, "-m", "distill", "run", str(ROOT / "experiments" / "breast_cancer_gp.toml"),
                               "-q", "--no-track", "-o", str(Path(tmp) / "run")], cwd=tmp, capture_output=True,
                              text=True, check=True)
    lines = [line for line in done.stdout.splitlines() if not line.startswith("run directory:")]
    return "```console\n$ python -m distill run experiments/breast_cancer_gp.toml\n" + "\n".join(lines).rstrip() + "\n```"


def replace_block(path: Path, begin: str, end: str, text: str) -> None:
    """Put ``text`` between the ``begin`` and ``end`` markers of ``path`` (which must hold both)."""
    document = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(document):
        raise SystemExit(f"{path} has no {begin} ... {end} block")
    path.write_text(pattern.sub(lambda _: f"{begin}\n{text}\n{end}", document), encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
