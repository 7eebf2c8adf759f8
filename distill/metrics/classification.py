"""Classification metrics from torchmetrics: accuracy, macro-F1, AUROC and calibration error.

Every system (teacher, student, baseline) is scored the same way: its outputs are turned into
class probabilities ``[N, C]`` and the multiclass metrics are computed from them, so a binary
student with one logit and a teacher with two log-probabilities are directly comparable.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_calibration_error,
    multiclass_f1_score,
)

__all__ = ["METRICS", "probabilities", "classification_metrics", "ECE_BINS"]

#: The metrics every evaluation reports, in table order.
METRICS: tuple[str, ...] = ("accuracy", "f1_macro", "auroc", "ece")
#: Equal-width confidence bins of the expected calibration error (top-label, L1).
ECE_BINS = 15


def probabilities(logits: Tensor) -> Tensor:
    """Class probabilities ``[N, C]`` from one logit per row (binary) or C logits / log-probs."""
    if logits.ndim == 1 or logits.shape[-1] == 1:
        p = torch.sigmoid(logits.reshape(-1))
        return torch.stack([1.0 - p, p], dim=1)
    return torch.softmax(logits, dim=-1)


def classification_metrics(probs: Tensor, target: Tensor, num_classes: int) -> dict[str, Tensor]:
    """Accuracy, macro-F1, macro AUROC (over classes present with both outcomes) and ECE.

    Returns 0-dim tensors on the input's device, so callers read them all in one sync.
    AUROC is NaN when fewer than two classes are present in ``target``.
    """
    probs = probs.float()
    target = target.long()
    out = {
        "accuracy": multiclass_accuracy(probs, target, num_classes, average="micro", validate_args=False),
        "f1_macro": multiclass_f1_score(probs, target, num_classes, average="macro", validate_args=False),
        "ece": multiclass_calibration_error(probs, target, num_classes, n_bins=ECE_BINS, norm="l1", validate_args=False),
    }
    counts = torch.bincount(target, minlength=num_classes)
    scorable = (counts > 0) & (counts < target.numel())
    per_class = multiclass_auroc(probs, target, num_classes, average=None, validate_args=False)
    per_class = torch.where(scorable, per_class, torch.zeros_like(per_class))
    n = scorable.sum()
    out["auroc"] = torch.where(n >= 2, per_class.sum() / n.clamp(min=1), torch.full_like(per_class[0], float("nan")))
    if num_classes == 2:
        # With two classes both one-vs-rest AUROCs equal the binary AUROC; one present class suffices.
        out["auroc"] = torch.where(n >= 1, per_class[1], out["auroc"])
    return {k: out[k] for k in METRICS}
