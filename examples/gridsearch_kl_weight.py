"""Choose the distillation weight by cross-validation: ``DistilledClassifier`` in ``GridSearchCV``.

Breast cancer with 30 labelled rows: a Gaussian-process teacher is fit on them, and a small MLP
student learns from the labels and from the teacher's soft targets on 300 unlabelled rows. A
``kl_weight`` of 0 is the student without a teacher, so the search can decline to distil. Runs in
a few seconds on a laptop CPU:

    python examples/gridsearch_kl_weight.py
"""

# %% Data: 30 labelled rows, 300 unlabelled rows, the rest held out for the test.
import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.gaussian_process import GaussianProcessClassifier
from sklearn.gaussian_process.kernels import RBF, ConstantKernel
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split

from distill.estimator import DistilledClassifier

X, y = load_breast_cancer(return_X_y=True)
X_lab, X_rest, y_lab, y_rest = train_test_split(X, y, train_size=30, stratify=y, random_state=0)
X_unlabelled, X_test, y_test = X_rest[:300], X_rest[300:], y_rest[300:]

# %% The estimator: a GP teacher (cloned and fit inside), an MLP student, everything seeded.
student = DistilledClassifier(
    teacher=GaussianProcessClassifier(ConstantKernel(1.0) * RBF(1.0), random_state=0),
    student_params={"hidden": [16]},
    temperature=2.0,
    epochs=40,
    random_state=0,
)

# %% Grid search over kl_weight (0 = no teacher); X_unlabelled goes to every fit as it is
# (it has more rows than X, so scikit-learn does not split it with the folds).
search = GridSearchCV(student, {"kl_weight": [0.0, 0.5, 1.0, 2.0]},
                      cv=StratifiedKFold(3, shuffle=True, random_state=0))
search.fit(X_lab, y_lab, X_unlabelled=X_unlabelled)

# %% Results: the chosen weight, its cross-validated accuracy, and the refit student on the test rows.
for kl, mean, std in zip(search.cv_results_["param_kl_weight"], search.cv_results_["mean_test_score"],
                         search.cv_results_["std_test_score"], strict=True):
    print(f"kl_weight {kl:<4}: CV accuracy {mean:.3f} +- {std:.3f}")
print("best params:", search.best_params_)
print(f"test accuracy: {search.score(X_test, y_test):.3f} on {len(y_test)} rows "
      f"(majority class: {np.mean(y_test == np.bincount(y_lab).argmax()):.3f})")
