"""Your own pretrained network as the teacher: an ``nn.Module`` passed to ``distill.run``.

The scenario: you trained a model on a large labelled set, and now want a small student for a task
where only a few rows are labelled. Here scikit-learn's digits (8x8 images as 64 features) are split:
1,000 rows train a small torch network first (standing in for your pretrained model), and the other
797 rows are the few-shot task, with 5 labelled rows per class and the rest unlabelled or held out.
The network gives soft targets on every training row of the task (``few_shot.transfer = "pool"``),
and a null teacher (uniform probabilities, the same KL term) tells knowledge from regularisation.
Runs in about ten seconds on a laptop CPU and leaves nothing behind:

    python examples/pretrained_module_teacher.py
"""

# %% Data: 1,000 rows for the teacher, 797 for the few-shot task; the teacher never sees the task's rows.
import tempfile
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import distill

X, y = load_digits(return_X_y=True)  # X: [1797, 64] pixel intensities 0..16
X_teacher, X_task, y_teacher, y_task = train_test_split(X, y, train_size=1000, stratify=y, random_state=0)


# %% "Your pretrained model": any nn.Module whose outputs are logits, one per class in the order of the
# task's classes (here the sorted digits 0..9), on raw features. It scales its own input.
class DigitNet(nn.Module):
    """A one-hidden-layer network on raw 0..16 pixel values."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x / 16.0)


torch.manual_seed(0)
net = DigitNet()
optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
inputs, targets = torch.as_tensor(X_teacher, dtype=torch.float32), torch.as_tensor(y_teacher)
for _step in range(100):  # full-batch Adam: a second or so on a CPU
    optimizer.zero_grad()
    nn.functional.cross_entropy(net(inputs), targets).backward()
    optimizer.step()
with torch.no_grad():
    task_accuracy = (net(torch.as_tensor(X_task, dtype=torch.float32)).argmax(1).numpy() == y_task).mean()
print(f"pretrained network: accuracy {task_accuracy:.3f} on the 797 task rows it never saw")

# %% Distil it: the network is used as given (eval mode, no gradients; never trained by distill).
config = {
    "name": "digits_pretrained",
    "seed": 0,
    "data": {"scale": "minmax", "test_size": 300},  # the student's input scaling, fit on the labelled rows
    "few_shot": {"per_class": 5, "transfer": "pool"},  # 50 labelled rows; KL on every training row
    "protocol": {"episodes": 6, "controls": ["null_teacher"]},  # 6: the fewest for p < 0.05
    "student": {"arch": "mlp", "hidden": [32]},
    "objective": {"kl_weight": 1.0, "temperature": 2.0},  # fixed for speed; "auto" chooses per episode
    "train": {"epochs": 40, "batch_size": 64},
}
with tempfile.TemporaryDirectory(prefix="distill-example-") as tmp:
    result = distill.run(config, data=(X_task, y_task), teacher=net, track=False, output=Path(tmp) / "run",
                         progress=False)
print(result.table())

# %% What the teacher's knowledge was worth: student - baseline, and student - null teacher.
for comparison in ("student_minus_baseline", "student_minus_null_teacher"):
    d = result.paired[comparison]["accuracy"]
    print(f"{comparison}: accuracy {d.mean:+.3f} [{d.ci95[0]:+.3f}, {d.ci95[1]:+.3f}], Wilcoxon p = {d.p_value:.2g}")
print("the teacher on each episode's test rows:", [round(e.metrics["teacher"]["accuracy"], 3) for e in result.episodes])
print("the network is left as it was:", "training mode" if net.training else "eval mode")

# %% The distilled student is small: compare parameter counts.
student_parameters = sum(p.numel() for p in result.student.parameters())
teacher_parameters = sum(p.numel() for p in net.parameters())
print(f"student {student_parameters} parameters, teacher {teacher_parameters}")
print("student predictions for 10 task rows:", result.predict(X_task[:10]).tolist(), "true:", y_task[:10].tolist())
