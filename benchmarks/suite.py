"""The public-data results suite: does distillation help, and is it the teacher's knowledge?

A fixed protocol, run on every dataset shipped inside scikit-learn (breast_cancer, digits, iris,
wine) and on any ``csv:PATH`` given on the command line:

- k = 1, 5 and 10 labelled rows per class, no labelled validation rows;
- transfer set: the unlabelled pool (every training row that is neither labelled nor test);
- teacher: ``teacher.kind = "auto"``: the scikit-learn candidate (GP with ``kernel = "auto"``,
  logistic regression, random forest) with the best cross-validated log-loss on the labelled rows,
  its probabilities calibrated by a temperature fitted on the same cross-fit (``--teacher`` picks
  another kind);
- student: an MLP with one hidden layer of 32 ReLU units, Adam (lr 0.01), 200 epochs, batches of
  32, standardised features, ``kl_weight = "auto"`` and ``temperature = "auto"`` (chosen per episode by
  cross-validation on its labelled rows; ``--set objective.kl_weight=1`` gives the old fixed setting);
- controls: the null teacher (uniform), hard labels (the teacher's argmax as pseudo-labels) and the
  teacher's probabilities alone; reference: LogisticRegression on the same labelled rows;
- 20 episodes (independent draws, seeds 0..19), 100 test rows (a third of the data when smaller).

For each dataset and k it writes a markdown table (mean and 95% interval per system, and the
paired differences student − X with their interval and Wilcoxon p) and one JSON file with every
figure. Run by hand (it takes minutes); CI runs it on a tiny setting (``--quick``)::

    python benchmarks/suite.py                                   # -> benchmarks/results/suite.{md,json}
    python benchmarks/suite.py csv:data/mine.csv --label target   # your own CSV too
    python benchmarks/suite.py --quick --out /tmp/suite            # 1 dataset, k = 1, 3 episodes
    python benchmarks/suite.py --external DIR --only-external      # every DIR/*.csv, not the sklearn four
    python benchmarks/suite.py --render benchmarks/results/suite.json --readme docs/results.md   # no runs
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATASETS = ["sklearn:breast_cancer", "sklearn:digits", "sklearn:iris", "sklearn:wine"]
PER_CLASS = [1, 5, 10]
CONTROLS = ["null_teacher", "hard_labels", "teacher_probs_only"]
REFERENCES = ["logistic_regression"]
METRICS = ["accuracy", "f1_macro", "auroc", "ece"]
PROTOCOL = (
    "Per dataset and k labelled rows per class: pool transfer, teacher chosen and calibrated by cross-validation "
    "on the labelled rows (teacher.kind auto), MLP student (32 ReLU units, Adam lr 0.01, batches of 32, "
    "standardised features, kl_weight and temperature auto), controls "
    "null_teacher (uniform), hard_labels and teacher_probs_only, reference LogisticRegression on the same "
    "labelled rows; mean [95% t-interval] over independent episodes; Δ = paired student − X with its "
    "interval and two-sided Wilcoxon p."
)


def suite_config(source: str, per_class: int, episodes: int, epochs: int, label: str = "label",
                 test_size: int | float = 100, teacher: str = "auto") -> dict[str, Any]:
    """The suite's experiment for one dataset and k, as a raw config dictionary."""
    return {
        "name": f"suite-{source.split(':', 1)[1].replace('/', '_')}-k{per_class}",
        "seed": 0,
        "data": {"source": source, "label": label, "scale": "standard", "test_size": test_size},
        "few_shot": {"per_class": per_class, "validation": 0, "transfer": "pool"},
        "protocol": {"episodes": episodes, "controls": CONTROLS, "null_teacher": "uniform",
                     "references": REFERENCES},
        "teacher": {"kind": teacher, "calibration": "temperature", "cache": False},
        "student": {"arch": "mlp", "hidden": [32], "activation": "relu"},
        "objective": {"kl_weight": "auto", "temperature": "auto"},
        "train": {"optimizer": "adam", "lr": 0.01, "epochs": epochs, "batch_size": 32},
        "tracking": {"enabled": False},
    }


def _test_size(source: str) -> int | float:
    """100 test rows, or a third of a small dataset (iris 150, wine 178 rows)."""
    from distill.data.sources import load_dataset

    rows = load_dataset(source).x.shape[0]
    return 100 if rows >= 300 else round(rows / 3)


def _override(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` overrides (TOML literals) applied to a raw config, as ``--set`` does for ``run``."""
    import copy

    import tomllib

    raw = copy.deepcopy(raw)
    for item in overrides:
        key, _, value = item.partition("=")
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = tomllib.loads(f"v = {value}")["v"]
    return raw


def run_one(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Run one experiment through the public run path; its summary."""
    from distill.config import validate_config
    from distill.experiment.run import run_experiment

    config = validate_config(raw)
    _, summary = run_experiment(config, output=folder / raw["name"], track=False)
    return summary


def _fmt(stat: dict[str, Any]) -> str:
    mean, ci = stat.get("mean"), stat.get("ci95")
    if mean is None:
        return "–"
    return f"{mean:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _fmt_delta(stat: dict[str, Any]) -> str:
    mean, ci, p = stat.get("mean"), stat.get("ci95"), stat.get("p_value")
    if mean is None:
        return "–"
    text = f"{mean:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")
    return text + (f", p = {p:.2g}" if p is not None else "")


def table(summary: dict[str, Any]) -> str:
    """One markdown table: systems with mean [95% CI] per metric, then paired student − X."""
    aggregate, paired = summary["aggregate"], summary["paired"]
    systems = [s for s in ["teacher", "student", "baseline", *CONTROLS, *REFERENCES] if s in aggregate]
    lines = ["| system | " + " | ".join(METRICS) + " |", "| --- |" + " --- |" * len(METRICS)]
    for system in systems:
        lines.append(f"| {system} | " + " | ".join(_fmt(aggregate[system][m]) for m in METRICS) + " |")
    for name in [p for p in paired if p.startswith("student_minus_")]:
        other = name[len("student_minus_"):]
        lines.append(f"| Δ student − {other} | " + " | ".join(_fmt_delta(paired[name][m]) for m in METRICS) + " |")
    return "\n".join(lines)


def significance(stat: dict[str, Any]) -> str:
    """``better`` / ``worse`` when the paired 95% interval lies entirely above / below 0, else ``–``."""
    ci = stat.get("ci95")
    if not ci:
        return "–"
    return "better" if ci[0] > 0 else "worse" if ci[1] < 0 else "–"


def dataset_name(source: str) -> str:
    """``breast_cancer`` for ``sklearn:breast_cancer``, ``pima`` for ``csv:/tmp/ext/pima.csv``."""
    name = source.split(":", 1)[1]
    return Path(name).stem if source.startswith("csv:") else name


def overview(results: list[dict[str, Any]]) -> str:
    """Accuracy only, one row per dataset and k: the README's view of the suite."""
    lines = ["| dataset | k | teacher | student | baseline | null teacher | logistic regression "
             "| student − baseline | | student − null teacher | kl_weight 0 chosen |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        a, p = r["aggregate"], r["paired"]
        means = " | ".join(f"{a[s]['accuracy']['mean']:.3f}" for s in
                           ("teacher", "student", "baseline", "null_teacher", "logistic_regression"))
        chosen = r.get("kd_selection")
        zero = f"{chosen['kl_weight_zero']}/{chosen['episodes']}" if chosen else "–"
        lines.append(f"| {dataset_name(r['source'])} | {r['per_class']} | {means} | "
                     f"{_fmt_delta(p['student_minus_baseline']['accuracy'])} | "
                     f"{significance(p['student_minus_baseline']['accuracy'])} | "
                     f"{_fmt_delta(p['student_minus_null_teacher']['accuracy'])} | {zero} |")
    return "\n".join(lines)


def teachers_chosen(summary: dict[str, Any]) -> dict[str, int]:
    """How often each candidate was the teacher (``teacher.kind = "auto"``), over the episodes."""
    counts: dict[str, int] = {}
    for row in summary["episodes"]:
        chosen = (row.get("teacher_diagnostics") or {}).get("selection", {}).get("chosen")
        if chosen is not None:
            counts[str(chosen)] = counts.get(str(chosen), 0) + 1
    return counts


def external_sources(folder: Path | None, only: bool = False) -> list[str]:
    """``csv:PATH`` for every CSV in ``folder`` (sorted by name), the datasets the tuning never saw.

    A missing or empty folder, or ``only`` without a folder, is a ValueError with a one-line reason.
    """
    if folder is None:
        if only:
            raise ValueError("--only-external needs --external DIR")
        return []
    if not folder.is_dir():
        raise ValueError(f"--external {folder}: not a folder; write it with "
                         f"python benchmarks/external_datasets.py --out {folder}")
    paths = sorted(folder.glob("*.csv"))
    if not paths:
        raise ValueError(f"--external {folder}: no .csv files; write them with "
                         f"python benchmarks/external_datasets.py --out {folder}")
    return [f"csv:{path}" for path in paths]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="*", help="extra csv:PATH datasets")
    parser.add_argument("--label", default="label", help="label column of the extra CSVs")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--per-class", type=int, nargs="+", default=PER_CLASS)
    parser.add_argument("--datasets", nargs="+", default=DATASETS)
    parser.add_argument("--quick", action="store_true", help="iris, k = 1, 3 episodes, 20 epochs (for CI)")
    parser.add_argument("--external", type=Path, metavar="DIR",
                        help="also run every DIR/*.csv (as written by benchmarks/external_datasets.py --out DIR)")
    parser.add_argument("--only-external", action="store_true",
                        help="with --external: run the external CSVs only, not --datasets")
    parser.add_argument("--teacher", default="auto", help="teacher.kind (auto, ensemble, gaussian_process)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the suite's config (a TOML literal), e.g. objective.kl_weight=1")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "suite",
                        help="writes OUT.md and OUT.json")
    parser.add_argument("--readme", type=Path, help="replace the overview between the suite markers in this file")
    parser.add_argument("--render", type=Path, help="no runs: put the overview of this suite JSON into --readme")
    parser.add_argument("--block", default="suite",
                        help="the README block to replace: between <!-- BLOCK:begin --> and <!-- BLOCK:end -->")
    args = parser.parse_args(argv)
    if args.render is not None:
        if args.readme is None:
            parser.error("--render needs --readme")
        from benchmarks.shipped import replace_block

        results = json.loads(args.render.read_text(encoding="utf-8"))["results"]
        replace_block(args.readme, f"<!-- {args.block}:begin -->", f"<!-- {args.block}:end -->", overview(results))
        return 0
    if args.quick:
        args.datasets, args.per_class, args.episodes, args.epochs = ["sklearn:iris"], [1], 3, 20
    try:
        external = external_sources(args.external, args.only_external)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sources = ([] if args.only_external else list(args.datasets)) + list(args.sources) + external

    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    sections = [f"# distill results suite\n\n{PROTOCOL}\n\nRegenerate: `python benchmarks/suite.py` "
                f"({args.episodes} episodes, {args.epochs} epochs).\n"]
    with tempfile.TemporaryDirectory(prefix="distill-suite-") as tmp:
        for source in sources:
            size = _test_size(source)
            for k in args.per_class:
                raw = suite_config(source, k, args.episodes, args.epochs, args.label, size, args.teacher)
                raw = _override(raw, args.overrides)
                t0 = time.perf_counter()
                summary = run_one(raw, Path(tmp))
                seconds = time.perf_counter() - t0
                results.append({"source": source, "per_class": k, "episodes": args.episodes, "seconds": seconds,
                                "verdict": summary["verdict"], "aggregate": summary["aggregate"],
                                "paired": summary["paired"], "kd_selection": summary.get("kd_selection"),
                                "teachers": teachers_chosen(summary)})
                chosen = summary.get("kd_selection")
                extra = ""
                if chosen:
                    from distill.experiment.kd_selection import selection_text

                    extra += f"\n{selection_text(chosen)}."
                if results[-1]["teachers"]:
                    extra += "\nTeacher chosen: " + ", ".join(f"{n} ({c})" for n, c in results[-1]["teachers"].items()) + "."
                sections.append(f"## {source}, k = {k} per class ({args.episodes} episodes, {seconds:.0f} s)\n\n"
                                f"{table(summary)}\n\n{summary['verdict']}{extra}\n")
                print(f"{source} k={k}: {summary['verdict']} ({seconds:.1f} s)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.md").write_text("\n".join(sections), encoding="utf-8")
    Path(f"{args.out}.json").write_text(json.dumps({
        "protocol": {"per_class": args.per_class, "episodes": args.episodes, "epochs": args.epochs,
                     "config": _override(suite_config("sklearn:SOURCE", 0, args.episodes, args.epochs,
                                                      teacher=args.teacher), args.overrides)},
        "environment": {"python": platform.python_version(), "platform": platform.platform(terse=True)},
        "total_s": round(time.perf_counter() - started, 1),
        "results": results,
    }, indent=2) + "\n", encoding="utf-8")
    if args.readme is not None:
        from benchmarks.shipped import replace_block

        replace_block(args.readme, f"<!-- {args.block}:begin -->", f"<!-- {args.block}:end -->", overview(results))
    print(f"wrote {args.out}.md and {args.out}.json in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
