"""The command line: ``python -m distill run|check|tune|teacher train|predict|list``.

Exit codes: 0 done; 2 bad input (one line per problem, naming the key or file); 1 an
internal error (a bug: the traceback is printed); 130 / 143 interrupted by SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from distill.errors import UserError
from distill.interrupts import Interrupted

__all__ = ["main", "build_parser"]

log = logging.getLogger("distill")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse's default code)
        self.exit(2, f"error: {message} (see 'python -m distill {self.prog.split()[-1]} --help')\n")


def _add_config_args(p: argparse.ArgumentParser, optional: bool = False) -> None:
    p.add_argument("experiment", nargs="?" if optional else None, help="experiment TOML file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key; VALUE is a TOML literal (repeatable): --set student.hidden=[32,16]",
    )
    p.add_argument("--seed", type=int, help="override the experiment's seed")
    p.add_argument("--episodes", type=int, help="override protocol.episodes (independent few-shot draws)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (overrides train.device)")


def _add_output_args(p: argparse.ArgumentParser, output_help: str, what: str) -> None:
    """--output, --no-track and --quiet, shared by the verbs that write results."""
    p.add_argument("--output", "-o", help=output_help)
    p.add_argument("--no-track", action="store_true", help=f"do not record the {what} to MLflow")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar and only warnings on stderr")


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of verbs and flags."""
    parser = _Parser(prog="distill", description="Knowledge distillation for the low-data regime.")
    from distill import __version__

    parser.add_argument("--version", action="version", version=f"distill {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser, metavar="VERB")

    run = verbs.add_parser("run", help="fit teacher, distilled student and baseline; write a run directory")
    _add_config_args(run, optional=True)
    run.add_argument("--no-plots", action="store_true",
                     help="draw no PNG plots (outputs.plots = false); the results are the same")
    run.add_argument("--resume", metavar="RUN_DIR",
                     help="continue an interrupted or killed run from its checkpoints (no experiment file)")
    _add_output_args(run, "run directory, a new or empty folder (default runs/<timestamp>-<name>/); an existing run "
                          "continues only with --resume", "run")

    check = verbs.add_parser("check", help="validate the config and data and print what would run")
    _add_config_args(check)
    check.add_argument("--no-track", action="store_true",
                       help="do not check the MLflow store (as 'run --no-track' would not use it)")

    tune = verbs.add_parser("tune", help="search tune.space with Optuna on validation rows, then compare on test rows")
    _add_config_args(tune)
    tune.add_argument("--trials", type=int, help="trials this process adds to the study (default tune.trials); "
                                                 "0: add none, compare the existing study's best on the test rows")
    tune.add_argument("--no-compare", action="store_true",
                      help="search only: skip the closing test comparison (for one of many workers; compare "
                           "once at the end with --trials 0)")
    tune.add_argument("--timeout", type=float, help="stop adding trials after this many seconds")
    tune.add_argument("--study", help="study name (default tune.study, else the experiment name)")
    tune.add_argument("--storage", help="journal file or RDB URL (default tune.storage, else optuna-journal.log)")
    tune.add_argument("--jobs", type=int, default=1, help="parallel trials in this process (threads)")
    tune.add_argument("--workers", type=int,
                      help="start this many local worker processes on the same study and storage, --trials split "
                           "between them and the cores shared (train.threads each: cores // N unless set); "
                           "waits for them, forwarding Ctrl-C / SIGTERM, then compares the best once; run dirs "
                           "OUTPUT/worker-<i> and OUTPUT/study")
    _add_output_args(tune, "run directory, a new or empty folder (default runs/<timestamp>-<name>-tune/)", "study")

    teacher = verbs.add_parser("teacher", help="teacher actions: train")
    teacher_verbs = teacher.add_subparsers(dest="teacher_verb", required=True, parser_class=_Parser, metavar="ACTION")
    teacher_train = teacher_verbs.add_parser("train", help="train a network teacher (teacher.arch) on all labelled rows")
    _add_config_args(teacher_train)
    _add_output_args(teacher_train, "checkpoint path, a new file: an existing one is never overwritten "
                                    "(default teacher.checkpoint)", "training")

    predict = verbs.add_parser("predict", help="predict classes for a CSV with a trained student")
    predict.add_argument("source", help="run directory, student.pt, or MLflow model URI (models:/..., runs:/.../student)")
    predict.add_argument("data", help="CSV with the feature columns the student was trained on")
    predict.add_argument("--output", "-o", help="CSV file to write, a new one unless --force (default: standard output)")
    predict.add_argument("--force", action="store_true", help="replace the --output file if it exists")
    predict.add_argument("--arch", action="append", default=[], metavar="MODULE:CLASS",
                         help="trust this import path as the student's architecture (a checkpoint that names an "
                              "import path is refused unless you name it too; registered names need nothing)")
    predict.add_argument("--tracking-uri", help="MLflow tracking URI for model URIs (default MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")

    verbs.add_parser("list", help="list registered datasets, teachers, students and losses")
    return parser


def _overrides(args: argparse.Namespace) -> list[str]:
    items = list(args.overrides)
    if args.seed is not None:
        items.append(f"seed={args.seed}")
    if args.episodes is not None:
        items.append(f"protocol.episodes={args.episodes}")
    if args.device is not None:
        items.append(f'train.device="{args.device}"')
    if getattr(args, "no_plots", False):
        items.append("outputs.plots=false")
    return items


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (tests and notebooks replace it)."""

    @property
    def stream(self):  # noqa: D401
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _setup_logging(quiet: bool) -> None:
    log.setLevel(logging.DEBUG)
    log.propagate = False
    handler = next((h for h in log.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    handler.setLevel(logging.WARNING if quiet else logging.INFO)


def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False) and sys.stdout.isatty()


def _cmd_run(args: argparse.Namespace) -> int:
    import distill

    if args.resume is not None:
        if args.experiment is not None or _overrides(args) or args.output is not None:
            raise UserError("--resume RUN_DIR takes no experiment file, --set, --seed, --episodes, --device or "
                            "--output: the run continues with its own config.toml")
        distill.resume(args.resume, progress=_progress(args), track=not args.no_track, on_complete=_print_result)
    else:
        if args.experiment is None:
            raise UserError("run needs an experiment file (or --resume RUN_DIR)")
        config = distill.load_config(args.experiment, _overrides(args))
        distill.run(config, output=args.output, progress=_progress(args), track=not args.no_track,
                    on_complete=_print_result)
    return 0


def _print_result(result: Any) -> None:
    """The result as soon as ``summary.json`` is written: before the plots are drawn."""
    print(result.table())
    print(f"run directory: {result.run_dir}")
    if result.mlflow_run_id:
        print(f"MLflow run: {result.mlflow_run_id} (model {result.summary.get('mlflow_model_uri')})")
        _print_ui_url(result.summary.get("mlflow_ui_url"), result.summary.get("config", {}))
    sys.stdout.flush()


def _print_ui_url(url: str | None, config: dict[str, Any]) -> None:
    """Where to look at the run: its page on the model-training view (MLflow 3.17's UI opens GenAI pages by
    default); for a local store, with the command that serves it."""
    if not url:
        return
    from distill.mlflow_env import DEFAULT_URI

    # the order of distill.outputs.tracking.resolve_tracking_uri, on the summary's config (a plain dict)
    uri = (config.get("tracking") or {}).get("uri") or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith(("http://", "https://")):
        print(f"MLflow UI: {url}")
    else:
        print(f"MLflow UI: {url} (serve it with: mlflow ui --backend-store-uri {uri})")


def _cmd_check(args: argparse.Namespace) -> int:
    import distill

    config = distill.load_config(args.experiment, _overrides(args))
    print(distill.check(config, track=not args.no_track))
    print("ok: config and data are valid")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    import distill

    config = distill.load_config(args.experiment, _overrides(args))
    if args.workers is not None:
        from distill.experiment.workers import plan_workers, run_workers

        plan, shares = plan_workers(config, args, args.workers)
        code = run_workers(plan, shares)
        if code != 0:
            return code
        print(f"{len(shares)} worker(s) finished {sum(shares)} trial(s) in study '{plan.study}' ({plan.storage})")
        if args.no_compare:
            return 0
        # the workers only searched: the study's best is compared with the untuned config once, here
        result = distill.tune(config, trials=0, study=plan.study, storage=plan.storage, seed=args.seed,
                              output=plan.output / "study" if plan.output is not None else None,
                              track=not args.no_track, progress=_progress(args))
    else:
        result = distill.tune(config, trials=args.trials, timeout=args.timeout, study=args.study,
                              storage=args.storage, jobs=args.jobs, seed=args.seed, output=args.output,
                              track=not args.no_track, progress=_progress(args), compare=not args.no_compare)
    print(result.table())
    print(f"run directory: {result.run_dir}")
    _print_ui_url(result.summary.get("mlflow_ui_url"), result.summary.get("config", {}))
    return 0


def _cmd_teacher(args: argparse.Namespace) -> int:
    import distill

    config = distill.load_config(args.experiment, _overrides(args))
    result = distill.train_teacher(config, output=args.output, progress=_progress(args), track=not args.no_track)
    summary, test = result.summary, result.test
    print(f"teacher {summary['arch']}: test accuracy {test['accuracy']:.4f}, macro-F1 {test['f1_macro']:.4f}, "
          f"ECE {test['ece']:.4f} on {summary['rows']['heldout_test']} held-out rows")
    print(f"checkpoint: {result.checkpoint}")
    if summary.get("mlflow_run_id"):
        print(f"MLflow run: {summary['mlflow_run_id']}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import distill

    result = distill.predict(args.source, args.data, trusted_archs=args.arch, tracking_uri=args.tracking_uri,
                             output=args.output, force=args.force)
    if args.output is None:
        result.to_csv(sys.stdout, index=False, float_format="%.6g")
    else:
        print(f"{len(result)} predictions written to {args.output}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    import distill

    names = distill.registered()
    print("datasets: " + ", ".join(names["datasets"]))
    print("teachers: " + ", ".join(names["teachers"]) + ", auto, ensemble, or module:Class (a Teacher subclass)")
    print("students: " + ", ".join(names["students"]) + ", or module:Class")
    print("losses:   " + ", ".join(names["losses"]) + " (objective.hard; auto = bce for two classes, else ce)")
    if names["broken"]:
        print("broken plugins (not usable until fixed):")
        for line in names["broken"]:
            print(f"  {line}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m distill``; returns the exit code."""
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "quiet", False))
    try:
        verbs = {"run": _cmd_run, "check": _cmd_check, "tune": _cmd_tune, "teacher": _cmd_teacher,
                 "predict": _cmd_predict, "list": _cmd_list}
        return verbs[args.verb](args)
    except UserError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        resume = getattr(exc, "resume", None)
        print(f"interrupted ({exc.signal_name}) {exc.where}" + (f"; resume with: {resume}" if resume else ""),
              file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
