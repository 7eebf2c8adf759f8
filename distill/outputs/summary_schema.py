"""The ``summary.json`` document as pydantic models: what ``distill.experiment.run.summarise`` writes.

The schema in docs/outputs.md is generated from these models (``tools/generate_docs.py``), and
tests/test_generated_docs.py validates the summary.json of real runs against them with unknown keys
refused, so the documented schema cannot drift from what a run writes. Read a summary with
``CompletedSummary.model_validate_json(text)`` (or ``InterruptedSummary`` when ``status`` is
``"interrupted"``). Teacher diagnostics keep their teacher's own facts as extra keys: a plugin
teacher reports what it likes there.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: every metric a run scores, in summary order
METRIC_NAMES = ("accuracy", "f1_macro", "auroc", "ece")


class _Strict(BaseModel):
    """A summary object whose keys are all known: an unknown key is a schema change."""

    model_config = ConfigDict(extra="forbid")


class Metrics(_Strict):
    """Test-row metrics of one system, from its class probabilities (``null`` where undefined)."""

    accuracy: Optional[float] = Field(description="share of test rows whose most probable class is the label")
    f1_macro: Optional[float] = Field(description="macro-averaged F1 over the classes")
    auroc: Optional[float] = Field(
        description="binary AUROC; macro one-vs-rest over the classes present with more than two classes; "
                    "`null` when undefined (a single class among the test rows)")
    ece: Optional[float] = Field(
        description="top-label expected calibration error, 15 equal-width bins; lower is better")


class Described(_Strict):
    """One metric of one system over the episodes."""

    mean: Optional[float] = Field(description="mean over the episodes where the metric is defined")
    std: Optional[float] = Field(description="standard deviation (ddof = 1); `null` with fewer than two episodes")
    ci95: Optional[list[float]] = Field(
        description="95% interval on the mean, `[low, high]` (`protocol.ci`: Student-t or BCa bootstrap); "
                    "`null` with fewer than two episodes")
    n: int = Field(description="episodes counted (those where the metric is defined)")


class PairedDifference(_Strict):
    """Student minus another system, per episode, on one metric."""

    mean: Optional[float] = Field(description="mean paired difference")
    ci95: Optional[list[float]] = Field(description="its 95% interval; `null` with fewer than two episodes")
    p_value: Optional[float] = Field(
        description="two-sided Wilcoxon signed-rank p; `1.0` when every difference is zero, `null` when fewer "
                    "than two differ")
    n: int = Field(description="episodes where both values are defined")


class Split(_Strict):
    """Row counts of one episode's draw."""

    test: int = Field(description="test rows (scored, never trained on)")
    labelled: int = Field(description="labelled rows (the hard term)")
    validation: int = Field(description="labelled validation rows (`few_shot.validation`)")
    pool: int = Field(description="unlabelled training rows")
    augmented: int = Field(description="generated rows (`few_shot.transfer = \"augmented\"`)")
    transfer: int = Field(description="rows the KL term sees (`few_shot.transfer`)")


class DataInfo(_Strict):
    """The dataset the run read."""

    source: str = Field(description="`data.source` as resolved (`sklearn:breast_cancer`, a file path, ...)")
    rows: int = Field(description="rows in the dataset")
    features: int = Field(description="features per row (flattened for images)")
    classes: list[str] = Field(description="class names; column `c` of every probability is class `classes[c]`")
    label_mapping: dict[str, int] = Field(description="class name -> class index")
    split: Split = Field(description="episode 0's split")


class ProtocolInfo(_Strict):
    """How the episodes were drawn and summarised."""

    episodes: int = Field(description="`protocol.episodes`")
    episode_seeds: str = Field(description="the seeds, e.g. `seed + episode: 0..9`")
    ci_method: str = Field(description="the interval method, in words")
    p_value: str = Field(description="the test behind `p_value`, in words")
    verdict_metric: str = Field(description="`protocol.metric`: what the verdict is about")


class FitSummary(_Strict):
    """How one trained system's fit ended."""

    status: Literal["completed", "diverged"] = Field(
        description="`diverged` when its training loss became non-finite (the fit stopped at the end of that "
                    "epoch, its weights restored to the best monitored or last finite epoch)")
    diverged_at: Optional[dict[str, int]] = Field(description="`{epoch, step}` where it diverged, else `null`")
    epochs_run: int = Field(description="epochs trained")
    best_epoch: Optional[int] = Field(description="the epoch whose weights were kept (`null`: no monitor)")
    monitor: Optional[str] = Field(description="the monitored metric (`null` without validation rows)")
    best_score: Optional[float] = Field(description="the monitored value at `best_epoch`")
    stop_reason: str = Field(description="why it stopped, e.g. `completed all epochs`")
    seconds: float = Field(description="wall time of the fit (a stacked fit's time, shared by its members)")


class CvScores(_Strict):
    """Out-of-fold scores of the teacher on the labelled rows (`null` without cross-validation)."""

    accuracy: Optional[float] = Field(description="cross-validated accuracy")
    log_loss: Optional[float] = Field(description="cross-validated log-loss (natural log)")
    ece: Optional[float] = Field(description="cross-validated expected calibration error")


class Calibration(_Strict):
    """The teacher's temperature calibration (`teacher.calibration`)."""

    method: Literal["temperature", "none"] = Field(description="`none` also when no cross-validation was possible")
    temperature: Union[float, list[float]] = Field(
        description="the fitted T_c (one per candidate for an ensemble); 1 when not calibrated")
    before: CvScores = Field(description="out-of-fold scores before calibration")
    after: CvScores = Field(description="the same after, each fold scored with the T_c fitted on the other folds")
    note: Optional[str] = Field(default=None, description="why it was not calibrated, when it was asked to be")


class CandidateScore(_Strict):
    """One candidate teacher's cross-validated scores."""

    name: str = Field(description="the candidate (`gaussian_process`, `logistic_regression`, ...)")
    cv_log_loss: Optional[float] = Field(description="calibrated out-of-fold log-loss: `auto` takes the lowest")
    cv_accuracy: Optional[float] = Field(description="calibrated out-of-fold accuracy")
    cv_ece: Optional[float] = Field(description="calibrated out-of-fold ECE")
    temperature: float = Field(description="its calibration temperature")


class TeacherSelection(_Strict):
    """Which teacher taught (`teacher.kind`)."""

    mode: Literal["single", "auto", "ensemble"] = Field(
        description="`single` (one teacher), `auto` (the best candidate), `ensemble` (their average)")
    chosen: str = Field(description="the candidate that taught, or `ensemble`")
    candidates: list[CandidateScore] = Field(description="every candidate's scores")


class TeacherDiagnostics(BaseModel):
    """Facts about one episode's teacher. Besides the keys below, the teacher's own facts: a GP's
    `estimator`, `initial_kernel`, `kernel` and `log_marginal_likelihood` (lists for a one-vs-rest GP over
    more than two classes), `multi_class`, `restarts`; an ensemble's `members`; a network's `format` and
    `source`; a plugin teacher's `diagnostics()`."""

    model_config = ConfigDict(extra="allow")

    calibration: Calibration = Field(description="the temperature calibration and its before / after scores")
    selection: TeacherSelection = Field(description="which teacher taught, and every candidate's scores")
    cv_folds: int = Field(description="folds of the labelled rows (0: no cross-validation possible)")
    warnings: list[str] = Field(
        description="signs of a degenerate teacher (a GP length-scale at its bound, near-uniform "
                    "probabilities, no cross-validation); shown to the user")
    cache: Optional[Literal["hit", "miss"]] = Field(
        default=None, description="the soft-target cache: `hit` (the teacher was not run) or `miss`; absent "
                                  "with `teacher.cache = false`")
    validation_accuracy: Optional[float] = Field(
        default=None, description="the teacher's accuracy on the validation rows; only with validation rows")
    selection_note: Optional[str] = Field(
        default=None, description="`teacher.kind = \"auto\"` without cross-validation: why the first candidate "
                                  "was used")


class CandidateResult(_Strict):
    """One `(kl_weight, temperature)` point of `objective.*= "auto"`, scored on the held-out folds."""

    kl_weight: float = Field(description="its KL weight")
    temperature: float = Field(description="its temperature")
    accuracy: Optional[float] = Field(description="held-out accuracy, pooled over the folds")
    log_loss: Optional[float] = Field(description="held-out log-loss, pooled over the folds")


class KdSelection(_Strict):
    """What `objective.kl_weight` / `temperature = "auto"` chose for one episode, and why."""

    kl_weight: float = Field(description="the chosen KL weight (0: the episode does not distil)")
    temperature: float = Field(description="the chosen temperature")
    reason: str = Field(description="`cross-validation`, or why there was none (a class with one labelled row)")
    folds: int = Field(description="folds of the labelled rows")
    gain: Optional[float] = Field(
        description="the best distilled candidate's held-out accuracy minus `kl_weight = 0`'s")
    gain_se: Optional[float] = Field(description="the standard error of that paired gain")
    scores: list[CandidateResult] = Field(description="every candidate's held-out scores")
    chose: list[str] = Field(
        default_factory=lambda: ["kl_weight", "temperature"],
        description="the knobs that were `\"auto\"` and chosen here; the others were fixed by the config or a sweep")


class ChosenSetting(_Strict):
    """One setting `"auto"` chose, and in how many episodes."""

    kl_weight: float = Field(description="KL weight")
    temperature: float = Field(description="temperature")
    episodes: int = Field(description="episodes that chose it")


class KdSelectionSummary(_Strict):
    """What `"auto"` chose over the run's episodes."""

    episodes: int = Field(description="episodes with a choice")
    kl_weight_chosen: int = Field(description="how many chose the KL weight (it was `\"auto\"` there)")
    kl_weight_zero: int = Field(description="of those, how many chose `kl_weight = 0` (no distillation)")
    fallback: int = Field(description="how many had no cross-validation")
    kl_weight_mean: float = Field(description="mean KL weight the episodes trained with (chosen or fixed)")
    chosen: list[ChosenSetting] = Field(description="each chosen setting and its count")


class _Systems(_Strict):
    """Per-system metrics: teacher, student, baseline, and each control and reference the config names."""

    teacher: Optional[Metrics] = Field(default=None, description="the teacher")
    student: Optional[Metrics] = Field(default=None, description="the distilled student")
    baseline: Optional[Metrics] = Field(
        default=None, description="the same student, same initial weights, rows and batches, `kl_weight = 0`")
    null_teacher: Optional[Metrics] = Field(
        default=None, description="control (`protocol.controls`): the student's objective with a teacher that "
                                  "knows nothing")
    hard_labels: Optional[Metrics] = Field(
        default=None, description="control: the teacher's argmax on the unlabelled transfer rows as hard labels")
    teacher_probs_only: Optional[Metrics] = Field(
        default=None, description="control: the KL term alone, no hard term")
    logistic_regression: Optional[Metrics] = Field(
        default=None, description="reference (`protocol.references`): `LogisticRegression()` on the same scaled "
                                  "labelled rows")


class _Aggregated(_Systems):
    """The systems' means plus their intervals, the paired differences and the verdict, over some episodes."""

    aggregate: Optional[dict[str, dict[str, Described]]] = Field(
        default=None, description="`<system>.<metric>`: mean, std, 95% interval and count over the episodes")
    paired: Optional[dict[str, dict[str, PairedDifference]]] = Field(
        default=None, description="`student_minus_<system>.<metric>` for the baseline, the teacher and each "
                                  "control and reference")
    verdict: Optional[str] = Field(
        default=None, description="one sentence: did distillation help at the 95% level on `protocol.metric` "
                                  "(the interval above 0 and p < 0.05), and, with the null teacher, was it knowledge")


class SweepPoint(_Aggregated):
    """One value of the swept key: its systems' means, aggregate, paired differences and verdict."""

    value: Any = Field(description="the swept value")


class Sweep(_Strict):
    """A sweep: one key over several values, on the same episodes."""

    key: str = Field(description="the swept dotted key")
    values: list[Any] = Field(description="its values, in order")
    points: list[SweepPoint] = Field(description="one per value")


class _EpisodeHeader(_Strict):
    """Which episode (and sweep value) a row is."""

    episode: int = Field(description="episode index `e`")
    seed: int = Field(description="its seed, `seed + e`")
    value: Any = Field(default=None, description="the swept value (sweeps only)")


class Episode(_Systems, _EpisodeHeader):
    """One episode (one per episode and value in a sweep), keys in the order the file has them: `teacher`,
    `student` and `baseline` always, each control and reference the config names."""

    teacher_diagnostics: TeacherDiagnostics = Field(description="facts about this episode's teacher")
    kd_selection: Optional[KdSelection] = Field(
        default=None, description="with `objective.* = \"auto\"`: what was chosen, every candidate's held-out "
                                  "scores")
    fits: dict[str, FitSummary] = Field(description="`<system>`: how the fit of the student, the baseline and "
                                                    "each control ended")
    split: Split = Field(description="this episode's row counts")
    timings: dict[str, float] = Field(
        description="seconds: `load_data_s`, `teacher_fit_s`, `soft_targets_s`, `<system>_fit_s`, ...")

    @model_validator(mode="after")
    def _scored(self) -> Episode:
        """Every episode scores the teacher, the student and the baseline."""
        if self.teacher is None or self.student is None or self.baseline is None:
            raise ValueError("an episode needs teacher, student and baseline metrics")
        return self


class Divergence(_Strict):
    """A fit whose training loss became non-finite."""

    episode: int = Field(description="its episode")
    system: str = Field(description="its system")
    epoch: int = Field(description="the epoch")
    step: int = Field(description="the 1-based step within that epoch")


class CacheStats(_Strict):
    """The soft-target cache over the run."""

    dir: Optional[str] = Field(description="`teacher.cache_dir`; `null` with the cache off")
    hits: int = Field(description="teacher outputs read from the cache")
    misses: int = Field(description="teacher outputs computed (and stored)")


class RunTimings(_Strict):
    """Wall times of the run."""

    total_s: float = Field(description="the whole run, seconds")
    per_episode_mean_s: float = Field(description="mean per episode, data loading excluded")


class Environment(_Strict):
    """Where the run ran."""

    python: str = Field(description="Python version")
    torch: str = Field(description="torch version")
    platform: str = Field(description="the platform string")


class _RunHeader(_Strict):
    """What every finished run's summary opens with: the run, its data and its protocol."""

    status: Literal["completed", "diverged"] = Field(
        description="`diverged` when some fit's training loss became non-finite (see `diverged`)")
    name: str = Field(description="the experiment name")
    distill_version: str = Field(description="the distill version that ran it")
    run_dir: str = Field(description="the run directory")
    seed: int = Field(description="the base seed")
    device: str = Field(description="the device the students trained on")
    data: DataInfo = Field(description="the dataset")
    metrics: list[str] = Field(description="the metric names, in order")
    protocol: ProtocolInfo = Field(description="how the episodes were drawn and summarised")


class CompletedSummary(_Aggregated, _RunHeader):
    """`summary.json` of a finished run, written last: a run directory without it did not finish. Keys in
    the order the file has them; "optional" keys are left out where they do not apply (the systems,
    `aggregate`, `paired` and `verdict` are there without a sweep, `sweep` with one)."""

    sweep: Optional[Sweep] = Field(
        default=None, description="only in a sweep, in place of the top-level systems, `aggregate`, `paired` "
                                  "and `verdict`")
    episodes: list[Episode] = Field(description="one per episode (per episode and value in a sweep)")
    kd_selection: Optional[KdSelectionSummary] = Field(
        default=None, description="with `objective.* = \"auto\"`: what was chosen over the episodes")
    diverged: Optional[list[Divergence]] = Field(
        default=None, description="with `status = \"diverged\"`: each fit that diverged")
    one_class: Optional[dict[str, list[int]]] = Field(
        default=None, description="per trained system (student, baseline, controls) that predicted one class for "
                                  "every test row: the episodes where it did (its accuracy there is that class's "
                                  "share, not learning); absent when none did")
    timings: RunTimings = Field(description="wall times")
    environment: Environment = Field(description="Python, torch and platform")
    mlflow_run_id: Optional[str] = Field(description="the MLflow run; `null` without tracking")
    mlflow_model_uri: Optional[str] = Field(
        default=None, description="the logged student model (`models:/m-...`); absent without tracking")
    mlflow_ui_url: Optional[str] = Field(
        default=None, description="the run's page in the MLflow UI, on its model-training view (a local store: "
                                  "as `mlflow ui --backend-store-uri URI` serves it); absent without tracking")
    config: dict[str, Any] = Field(
        description="the resolved config as a nested object (the keys of docs/configuration.md; a swept key "
                    "as its list)")
    soft_target_cache: CacheStats = Field(description="cache hits and misses")

    @model_validator(mode="after")
    def _systems_or_sweep(self) -> CompletedSummary:
        """A sweep reports per value; otherwise the run's own systems, aggregate, paired and verdict."""
        top = (self.teacher, self.student, self.baseline, self.aggregate, self.paired, self.verdict)
        if self.sweep is None and any(part is None for part in top):
            raise ValueError("a summary without a sweep needs teacher, student, baseline, aggregate, paired, verdict")
        if self.sweep is not None and any(part is not None for part in top):
            raise ValueError("a sweep's summary reports per value, under sweep.points")
        return self


class InterruptedSummary(_Strict):
    """`summary.json` of a run stopped by SIGINT / SIGTERM: resumable with the command it names. A summary
    whose `status` is `"interrupted"` follows this model; any other, `CompletedSummary`."""

    status: Literal["interrupted"] = Field(description="`interrupted`")
    signal: str = Field(description="`SIGINT` or `SIGTERM`")
    stopped: str = Field(description="where it stopped (episode, fit, epoch and step, or which result was written)")
    name: str = Field(description="the experiment name")
    run_dir: str = Field(description="the run directory")
    resume: str = Field(description="the command that continues it: `python -m distill run --resume RUN_DIR`")
    mlflow_run_id: Optional[str] = Field(description="the MLflow run, reopened on resume; `null` without tracking")
    seconds: float = Field(description="wall time until the stop")


def summary_model(document: dict[str, Any]) -> type[CompletedSummary] | type[InterruptedSummary]:
    """The model a summary document follows, by its ``status``."""
    return InterruptedSummary if document.get("status") == "interrupted" else CompletedSummary
