"""Your own arrays and a scikit-learn Gaussian-process teacher, through ``distill.run``.

Two interleaved half-moons (600 rows, 2 features) stand in for your data: with five labelled rows per
class a GP with an RBF kernel already draws a curved boundary, and the student sees its soft targets on
every unlabelled training row (``few_shot.transfer = "pool"``). Five episodes give a mean and a 95%
interval for teacher, distilled student and baseline (the same student without the teacher), and the
paired difference student - baseline. Runs in a few seconds on a laptop CPU and leaves nothing behind:

    python examples/own_arrays_gp_teacher.py
"""

# %% Your data: any [N, D] array of numbers and [N] labels (numbers or names).
import tempfile
from pathlib import Path

import numpy as np
from sklearn.datasets import make_moons
from sklearn.gaussian_process import GaussianProcessClassifier
from sklearn.gaussian_process.kernels import RBF, ConstantKernel

import distill

X, y = make_moons(n_samples=600, noise=0.2, random_state=0)
y = np.array(["upper", "lower"])[y]  # the two arcs by name: predictions come back as these names

# %% The experiment: the keys of an experiment TOML file, as a dict; everything left out is a default.
config = {
    "name": "moons_gp",
    "seed": 0,
    "data": {"scale": "standard", "test_size": 200},  # 200 test rows per episode, the rest for training
    "few_shot": {"per_class": 5, "transfer": "pool"},  # 5 labelled rows per class; KL on every training row
    "protocol": {"episodes": 5},  # 5 independent draws, seeds 0..4
    "student": {"arch": "mlp", "hidden": [32]},
    # fixed for speed; the default "auto" picks them per episode by cross-validation (and may choose 0)
    "objective": {"kl_weight": 1.0, "temperature": 2.0},
    "train": {"epochs": 100},
}
# An unfitted scikit-learn classifier: cloned and fit on each episode's (scaled) labelled rows.
teacher = GaussianProcessClassifier(ConstantKernel(1.0) * RBF(1.0), random_state=0)

# %% Run it: the run directory goes to a temporary folder, and nothing is recorded to MLflow.
with tempfile.TemporaryDirectory(prefix="distill-example-") as tmp:
    result = distill.run(config, data=(X, y), teacher=teacher, track=False, output=Path(tmp) / "run",
                         progress=False)
    print(result.table())
    print("run directory held:", sorted(p.name for p in result.run_dir.iterdir()))

# %% The numbers as attributes: means with 95% intervals, the paired difference, each episode.
student = result.aggregate["student"]["accuracy"]
gain = result.paired["student_minus_baseline"]["accuracy"]
print(f"student accuracy {student.mean:.3f}, 95% CI [{student.ci95[0]:.3f}, {student.ci95[1]:.3f}] over {student.n} "
      f"episodes")
print(f"student - baseline: {gain.mean:+.3f} [{gain.ci95[0]:+.3f}, {gain.ci95[1]:+.3f}], Wilcoxon p = {gain.p_value:.2g}")
for episode in result.episodes:
    m = episode.metrics
    print(f"  episode {episode.episode} (seed {episode.seed}): teacher {m['teacher']['accuracy']:.3f}  "
          f"student {m['student']['accuracy']:.3f}  baseline {m['baseline']['accuracy']:.3f}")

# %% The trained student (episode 0's): raw features in, probabilities and label names out.
new_rows = np.array([[0.0, 1.0], [1.0, -0.5], [0.5, 0.25]])
print("predictions:", result.predict(new_rows).tolist())
print("probabilities:", np.round(result.predict_proba(new_rows), 3).tolist(), "columns", result.student.classes)

# %% Reading it: the verdict is about student - baseline on the same draws. A teacher fit on the same ten
# rows rarely knows much more than they teach the student directly; where the difference's interval
# straddles 0, distillation neither helped nor hurt here. A teacher trained on more data can help: see
# pretrained_module_teacher.py.
print(result.verdict)
