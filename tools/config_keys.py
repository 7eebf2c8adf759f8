"""What each experiment-file key means, for the generated reference in docs/configuration.md.

Type, default, allowed values and limits come from the pydantic models in ``distill/config.py``; this is
only the prose. A key's ``Field(description=...)`` in the model, where there is one, takes precedence.
tests/test_generated_docs.py fails when a key of the models has no description here (or one here names
a key the models no longer have). ``mlp.*`` / ``cnn.*`` describe the built-in students' own arguments.
"""

from __future__ import annotations

DESCRIPTIONS: dict[str, str] = {
    # ------------------------------------------------------------------ top level
    "name": "experiment name: the run directory's name and the MLflow experiment's; letters, digits, `_`, `-`, "
            "`.`. Left out of a file, the file's name",
    "seed": "base seed of every draw and fit; episode `e` uses `seed + e`, which must stay within the limit too",
    # ------------------------------------------------------------------ data
    "data.source": "`sklearn:breast_cancer` · `sklearn:digits` (1×8×8 images) · `sklearn:iris` · `sklearn:wine` · "
                   "`csv:PATH` · `npz:PATH` (arrays `x`, `y`, optional `classes`) · `idx:DIR` (MNIST-style IDX files): "
                   "see [teachers.md](teachers.md#images-without-torchvision) for images",
    "data.label": "the label column of a CSV; non-numeric labels are mapped to `0..K-1` in sorted order (recorded "
                  "in `summary.json`)",
    "data.scale": "feature scaling, fitted on the labelled rows only",
    "data.test_size": "test rows: a count (an integer ≥ 1) or a fraction in (0, 1); stratified",
    # ------------------------------------------------------------------ few_shot
    "few_shot.labelled": "labelled rows in total (every class appears when there are at least as many rows as "
                         "classes); set this or `per_class`, not both",
    "few_shot.per_class": "labelled rows per class (k); 5 when neither this nor `labelled` is set",
    "few_shot.validation": "labelled validation rows, in the same unit as above (in total or per class), drawn from "
                           "what is left; needed by `tune` and by early stopping on `val_*`",
    "few_shot.transfer": "the rows the KL term sees: `labelled` (the labelled rows, as in the seed post), `pool` "
                         "(also every unlabelled training row) or `augmented` (the labelled rows plus generated "
                         "points): see [concepts.md](concepts.md#transfer-sets)",
    "few_shot.augment.count": "generated points (at most 2 GiB of them as float32 rows)",
    "few_shot.augment.jitter": "standard deviation of the Gaussian jitter around a random labelled row, in scaled "
                               "feature units (the points must stay within float32)",
    "few_shot.augment.mixup": "share of the points that are mixup points `λ·x_i + (1 − λ)·x_j` between two labelled "
                              "rows",
    "few_shot.augment.mixup_alpha": "mixup's `λ ~ Beta(mixup_alpha, mixup_alpha)`",
    # ------------------------------------------------------------------ protocol
    "protocol.episodes": "independent few-shot draws; episode `e` uses seed `seed + e`",
    "protocol.metric": "the metric the one-sentence verdict is about",
    "protocol.ci": "the 95% interval: `t` (Student-t on the mean) or `bootstrap` (BCa, 9,999 resamples)",
    "protocol.controls": "systems trained beside the student to tell knowledge from regularisation: "
                         "[concepts.md](concepts.md#controls-was-it-the-teachers-knowledge)",
    "protocol.null_teacher": "the null teacher's probabilities on every transfer row: `uniform` (1/K) or `prior` "
                             "(the labelled rows' class frequencies)",
    "protocol.references": "`logistic_regression`: scikit-learn's `LogisticRegression()` (default C) fitted on the "
                           "same scaled labelled rows, scored like the students",
    # ------------------------------------------------------------------ teacher
    "teacher.kind": "`gaussian_process` · `sklearn` (any classifier: `estimator`) · `network` (a trained network: "
                    "`checkpoint` or `uri`) · `auto` (the candidate with the best cross-validated log-loss on the "
                    "labelled rows) · `ensemble` (the average of the candidates' calibrated probabilities) · a "
                    "plugin's teacher (`distill list`) · `module:Class` naming a `Teacher` subclass "
                    "([extending.md](extending.md))",
    "teacher.calibration": "`temperature`: the teacher's log-probabilities divided by a T fitted by cross-fitting on "
                           "the labelled rows (Guo et al. 2017); `none`: its probabilities as they are",
    "teacher.candidates": "for `auto` / `ensemble`: names (`gaussian_process`, `logistic_regression` "
                          "(`max_iter = 10000`), `random_forest` (200 trees)) or tables with the keys below; "
                          "at most 32",
    "teacher.candidates[].kind": "`gaussian_process` · `sklearn` · any registered teacher that learns · "
                                 "`module:Class`",
    "teacher.candidates[].kernel": "as `teacher.kernel`",
    "teacher.candidates[].restarts": "as `teacher.restarts`",
    "teacher.candidates[].multi_class": "as `teacher.multi_class`",
    "teacher.candidates[].estimator": "as `teacher.estimator` (required for `kind = \"sklearn\"`)",
    "teacher.candidates[].params": "as `teacher.params`; `random_state` is the experiment seed wherever the "
                                   "estimator takes one",
    "teacher.kernel": "GP kernel expression over `RBF`, `Matern`, `RationalQuadratic`, `DotProduct`, `WhiteKernel`, "
                      "`ConstantKernel`/`C` and numbers with `+`, `*`, parentheses — parsed, never `eval`ed: "
                      "`1.0 * Matern(length_scale=2.0, nu=1.5) + WhiteKernel(0.1)`; every hyperparameter finite and "
                      "> 0, a length-scale list one value per feature. `auto` = `1.0 * RBF(median pairwise distance "
                      "of the labelled rows)`",
    "teacher.restarts": "the GP's `n_restarts_optimizer`",
    "teacher.multi_class": "`one_vs_one` works for two classes only (scikit-learn gives no probabilities for it "
                           "beyond two)",
    "teacher.estimator": "`kind = \"sklearn\"`: a classifier class by import path, e.g. "
                         "`sklearn.ensemble:RandomForestClassifier`; it must have `fit` and `predict_proba` (checked "
                         "before anything is called)",
    "teacher.params": "the estimator's kwargs (`sklearn`, checked by scikit-learn's own parameter rules without "
                      "fitting) or the architecture's (`network` with `arch`, and what `teacher train` trains)",
    "teacher.checkpoint": "`kind = \"network\"`: a distill checkpoint (`student.pt`, or what `teacher train` "
                          "writes), a plain state_dict (with `arch`), a `.pt2` program or a TorchScript archive: "
                          "[teachers.md](teachers.md)",
    "teacher.uri": "`kind = \"network\"`: an MLflow model URI of a distill-logged model (`models:/m-...`, "
                   "`runs:/<id>/student`)",
    "teacher.arch": "a state_dict's architecture (a registered name such as `cnn`, or `module:Class`), and what "
                    "`teacher train` trains",
    "teacher.input": "the features a network teacher reads: `raw`, or the run's `scaled` ones",
    "teacher.validation": "`teacher train`'s early-stopping validation fraction",
    "teacher.cache": "the soft-target cache: [teachers.md](teachers.md#the-soft-target-cache)",
    "teacher.cache_dir": "the cache's folder",
    "teacher.workers": "worker processes that fit later episodes' teachers while this process trains students "
                       "(scikit-learn teachers only: `gaussian_process`, `sklearn` with a scikit-learn estimator); "
                       "`0`: every fit in this process; `auto`: one per core but the training one when the fits left "
                       "would take 6 s or more here. The numbers never depend on it: [performance.md](performance.md#teacher-fits-in-worker-processes)",
    "teacher.given": "set by `distill.run(config, teacher=obj)`: what the Python object was. A config file cannot "
                     "rebuild an object, so a run with this key needs the teacher passed again",
    # ------------------------------------------------------------------ student
    "student.arch": "a registered student (`distill list`) or `module:Class` naming an `nn.Module` subclass (checked "
                    "before it is called) whose constructor takes `in_features` (or `in_shape`) and `num_outputs`; "
                    "every other key of `[student]` is passed to it (below for `mlp` and `cnn`)",
    "student.init": "the weight initialisation, drawn after the constructor from the experiment seed, so student, "
                    "baseline and every control start from the same weights; applied to every `nn.Linear` / "
                    "`nn.Conv*` in module order. A scheme name, or a table of the keys below. Not passed to the "
                    "constructor; a sweep takes scheme names or one of its keys (`student.init.std = [0.1, 1]`), "
                    "not tables",
    "student.init.scheme": "`torch` (PyTorch's own, untouched), `glorot_uniform` (U(±√(6/(fan_in+fan_out))), Glorot & "
                           "Bengio 2010), `he_normal` (N(0, 2/fan_in), He et al. 2015), `normal`, `truncated_normal` "
                           "(cut at mean ± 2 std, redrawn outside, as TensorFlow's)",
    "student.init.mean": "`normal` / `truncated_normal` only: the mean",
    "student.init.std": "`normal` / `truncated_normal` only: the standard deviation, a number > 0 or "
                        "`\"1/sqrt(fan_in)\"`",
    "student.init.bias": "`scheme`: PyTorch's own for `torch`, zeros otherwise · `zeros` · `normal` (N(0, bias_std²)) · "
                         "`truncated_normal` (the same, cut at ± 2 bias_std) · `torch`",
    "student.init.bias_std": "`bias = \"normal\"` / `\"truncated_normal\"` only: a number > 0 or `\"1/sqrt(fan_in)\"`",
    "student.init.first": "the same keys for the first layer only. The seed post's init: "
                          "`{ scheme = \"normal\", bias = \"normal\", first = { scheme = \"truncated_normal\", "
                          "std = \"1/sqrt(fan_in)\" } }`",
    "student.init.first.scheme": "as `student.init.scheme`",
    "student.init.first.mean": "as `student.init.mean`",
    "student.init.first.std": "as `student.init.std`",
    "student.init.first.bias": "as `student.init.bias`",
    "student.init.first.bias_std": "as `student.init.bias_std`",
    "mlp.hidden": "hidden layer widths, e.g. `[10, 10]` (an integer for one layer; empty: logistic regression)",
    "mlp.activation": "activation of the hidden layers",
    "mlp.dropout": "dropout probability after each hidden activation, in [0, 1) (a student with dropout trains "
                   "one fit at a time, not stacked)",
    "cnn.channels": "output channels of each conv block (`Conv2d -> activation -> MaxPool2d`)",
    "cnn.kernel_sizes": "square kernel size of each conv block (an integer for all of them)",
    "cnn.hidden": "widths of the fully connected hidden layers after the conv blocks (may be empty)",
    "cnn.activation": "activation of the conv blocks and hidden layers",
    "cnn.pool": "max-pool window and stride after each conv block (skipped once the map is smaller); 1: no "
                "pooling",
    "cnn.dropout": "dropout probability after each hidden activation, in [0, 1)",
    "cnn.padding": "`same` (padding k // 2) · `valid` (none) · `lenet` (the first conv `same`, the rest `valid`: "
                   "LeNet-5 on 28×28)",
    # ------------------------------------------------------------------ objective
    "objective.hard": "the hard term: `bce` (binary, one logit; takes `pos_weight`), `ce` (C logits; "
                      "`label_smoothing`), `focal` (Lin et al. 2017; `gamma`, `alpha`; one logit for binary), `sce` "
                      "(symmetric CE for noisy labels, Wang et al. 2019; `alpha`, `beta`, `clamp`), "
                      "`label_smoothing` (`smoothing`), or a plugin's loss (`distill list`); `auto` = `bce` for two "
                      "classes, else `ce`",
    "objective.hard_params": "the hard loss's own parameters (above); each within float32",
    "objective.class_weight": "per-class weights for CE-type and focal losses: a list (≥ 0, one per class, one > 0) "
                              "or `\"balanced\"` = n / (classes × count) over the labelled rows, as scikit-learn",
    "objective.pos_weight": "for one-logit BCE / focal: a number > 0, or `\"balanced\"` = negatives / positives",
    "objective.kl_weight": "the KL term's weight, ≥ 0, or `auto`: chosen per episode by cross-validation on its "
                           "labelled rows ([concepts.md](concepts.md#distil-only-where-it-helps))",
    "objective.temperature": "T > 0, or `auto` (as `kl_weight`)",
    "objective.direction": "`forward` = KL(teacher‖student) (Hinton et al. 2015), `reverse` = KL(student‖teacher)",
    "objective.auto.kl_weights": "the KL weights `auto` chooses from; 0 is always added; at most 32",
    "objective.auto.temperatures": "the temperatures `auto` chooses from (> 0); at most 32",
    "objective.auto.margin": "how many standard errors the best distilled candidate's held-out accuracy gain over "
                             "`kl_weight = 0` must exceed",
    "objective.l1": "penalty `l1·Σ|w|` over the student's weights (not biases)",
    "objective.l2": "penalty `l2·Σw²` over the student's weights (not biases)",
    "objective.metric_loss": "for a student with `embed(x)` (`mlp` has one): `triplet` (batch-hard triplets mined "
                             "among the batch's labelled rows) or `margin_ranking` (every valid anchor / positive / "
                             "negative triple) on the embeddings",
    "objective.metric_weight": "the metric loss's weight",
    "objective.metric_margin": "the metric loss's margin",
    # ------------------------------------------------------------------ train
    "train.optimizer": "the optimizer (the formulas of `torch.optim`)",
    "train.lr": "learning rate",
    "train.momentum": "SGD momentum",
    "train.weight_decay": "weight decay (coupled for `sgd` / `adam`, decoupled for `adamw`)",
    "train.epochs": "epochs per fit",
    "train.batch_size": "rows per batch",
    "train.replacement": "`true`: ⌈n / batch⌉ batches per epoch drawn with replacement (the seed post); `false`: "
                         "shuffled epochs",
    "train.scheduler": "`cosine` (over the epochs) or `step`",
    "train.step_size": "`step`: epochs between learning-rate decays",
    "train.gamma": "`step`: the decay factor",
    "train.grad_clip": "max gradient norm (unset: no clipping)",
    "train.restore_best": "restore the weights of the best monitored epoch at the end (needs a logged monitor)",
    "train.device": "`auto` (CUDA when present, else CPU — said in the log) · `cpu` · `cuda` · `cuda:N` · `mps`",
    "train.threads": "torch CPU threads; 0 = auto: 1 for small data (fewer than 5M feature values), where extra "
                     "threads only add overhead (and were 12x slower on a busy 2-core machine), else torch's "
                     "default",
    "train.detect_anomaly": "torch autograd anomaly detection, for debugging a diverging fit (slow)",
    "train.batched": "train the students of all episodes, sweep values, baselines and controls (and a tuning "
                     "trial's episodes) as one stacked model when they differ only in KL weight, temperature and "
                     "seed; falls back to one at a time otherwise (dropout, batch norm, a configured hard criterion "
                     "or metric loss) and says why in the log: [performance.md](performance.md)",
    "train.precision": "`bf16`: the forward pass under bfloat16 autocast, for CUDA (the loss stays float32)",
    "train.compile": "wrap the forward pass in `torch.compile` (seconds of compilation first)",
    "train.checkpoint_every": "write each fit's state to `RUN_DIR/checkpoints/` every N epochs (0: only on a "
                              "signal): [resume.md](resume.md)",
    "train.checkpoint_interval": "... and at most once per this many seconds (0: every N epochs exactly)",
    "train.early_stopping.monitor": "a logged per-epoch metric: `train_loss`, `train_hard_loss`, `train_kl_term`, `train_<metric>`, and with validation "
                                    "rows `val_loss`, `val_<metric>`",
    "train.early_stopping.mode": "`auto`: minimise losses and `ece`, maximise the rest",
    "train.early_stopping.patience": "epochs without improvement before stopping; 0: no early stopping. A "
                                     "non-finite monitored value also stops",
    "train.early_stopping.min_delta": "the least change that counts as an improvement",
    # ------------------------------------------------------------------ tune
    "tune.trials": "trials per `tune` command: [tuning.md](tuning.md)",
    "tune.timeout": "seconds for the search (unset: no limit)",
    "tune.metric": "the validation metric a trial is scored on",
    "tune.direction": "`auto`: minimise `loss` and `ece`, maximise the rest",
    "tune.storage": "Optuna storage: a journal file or an RDB URL; unset: `optuna-journal.log` in the working folder",
    "tune.study": "the study name; unset: the experiment name",
    "tune.sampler": "`tpe` or `random`, seeded with `--seed` (default: the config's seed)",
    "tune.pruner": "`median` (MedianPruner after 5 trials) · `hyperband` · `none`",
    "tune.space": "dotted config keys mapped to `{ low, high, log, step }` or `{ choices = [...] }`; any key a "
                  "sweep may take, scalars only",
    # ------------------------------------------------------------------ tracking
    "tracking.enabled": "record the run to MLflow ([tracking.md](tracking.md)); `--no-track` turns it off too",
    "tracking.uri": "the tracking URI; unset: `MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db`",
    "tracking.experiment": "the MLflow experiment; unset: the config's `name`",
    "tracking.fallback": "`local`: record to `sqlite:///mlflow.db` instead, with a warning, when the server fails "
                         "the preflight or the opening of the run",
    "tracking.timeout": "seconds one request to a tracking server may take",
    "tracking.retries": "how often a failed request is repeated",
    # ------------------------------------------------------------------ outputs
    "outputs.plots": "draw the PNG plots, after `summary.json` and the printed result; `run --no-plots` turns "
                     "them off ([outputs.md](outputs.md#the-run-directory))",
}
