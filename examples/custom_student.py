"""A student network of your own, registered by name and used from the config: ``student.arch = "tiny"``.

``distill.register_student(name)`` registers an ``nn.Module`` class. Its constructor takes
``in_features`` (or ``in_shape`` for images) and ``num_outputs`` (one logit for two classes, else one
per class), which distill fills in from the data, plus keyword arguments of its own, which come from the
config's ``[student]`` table. The same student then serves every episode, the baseline and any control,
all from the same seeded initial weights. Here: wine (13 features, 3 classes), 5 labelled rows per
class, a logistic-regression teacher. Runs in a few seconds and leaves nothing behind:

    python examples/custom_student.py

To use a registered student from a TOML file and the command line, see docs/extending.md.
"""

# %% A student: a residual block between two linear maps, with its own `width` and `dropout` arguments.
import tempfile
from pathlib import Path

import torch
from sklearn.datasets import load_wine
from torch import nn

import distill


class Tiny(nn.Module):
    """Linear -> (x + GELU(Linear(x))) -> Linear: a small MLP with one skip connection."""

    def __init__(self, in_features: int, num_outputs: int, width: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        self.inp = nn.Linear(in_features, width)
        self.block = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Dropout(dropout))
        self.out = nn.Linear(width, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.out(h + self.block(h))


# Registering a name twice is an error: guard it, so running this cell again in one process works.
if "tiny" not in distill.registered()["students"]:
    distill.register_student("tiny")(Tiny)
print("registered students:", distill.registered()["students"])

# %% Use it by name; width and dropout are its own arguments.
X, y = load_wine(return_X_y=True)
config = {
    "name": "wine_tiny",
    "seed": 0,
    "data": {"scale": "standard"},
    "few_shot": {"per_class": 5},
    "protocol": {"episodes": 4},
    "teacher": {"kind": "sklearn", "estimator": "sklearn.linear_model:LogisticRegression",
                "params": {"max_iter": 1000}, "cache": False},  # cache off: write nothing outside the run
    "student": {"arch": "tiny", "width": 16, "dropout": 0.0},
    "objective": {"kl_weight": 1.0, "temperature": 2.0},  # fixed for speed; the default is "auto"
    "train": {"epochs": 60},
}
with tempfile.TemporaryDirectory(prefix="distill-example-") as tmp:
    result = distill.run(config, data=(X, y), track=False, output=Path(tmp) / "run", progress=False)
    checkpoint = torch.load(result.run_dir / "student.pt", weights_only=True)  # weights only: no code runs
print(result.table())

# %% The trained student is your class, inside distill's input scaling and softmax.
print(result.student.student)
print("checkpoint architecture:", checkpoint["arch"], checkpoint["kwargs"])
print("predicted classes for 5 rows:", result.predict(X[:5]).tolist(), "true:", y[:5].tolist())

# %% A name that is not registered is a one-line error naming the key, before anything is trained.
try:
    distill.check({**config, "student": {"arch": "tiny2"}}, data=(X, y), track=False)
except distill.ConfigError as error:
    print("refused:", error.problems[0])
