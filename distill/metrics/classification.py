"""Classification metrics: accuracy, macro-F1, AUROC and calibration error, for one model or many at once.

Every system (teacher, student, baseline) is scored the same way: its outputs are turned into
class probabilities ``[N, C]`` and the multiclass metrics are computed from them, so a binary
student with one logit and a teacher with two log-probabilities are directly comparable.
``batch_classification_metrics`` scores probabilities ``[..., N, C]`` (every student of every epoch)
in a handful of vectorised torch ops with no host sync; ``classification_metrics`` is its one-model
case. Both follow torchmetrics' conventions, which the tests use as the reference (``tests/oracles.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["METRICS", "probabilities", "classification_metrics", "batch_classification_metrics", "ECE_BINS"]

#: The metrics every evaluation reports, in table order.
METRICS: tuple[str, ...] = ("accuracy", "f1_macro", "auroc", "ece")
#: Equal-width confidence bins of the expected calibration error (top-label, L1).
ECE_BINS = 15
#: Decimals the ECE is given to: it sums float32 confidences (about 7 significant digits), so 0.08607806,
#: not 0.08607806344827018, whose last digits an ulp of one probability moves
ECE_DECIMALS = 8


def probabilities(logits: Tensor) -> Tensor:
    """Class probabilities ``[N, C]`` from one logit per row (binary) or C logits / log-probs."""
    if logits.ndim == 1 or logits.shape[-1] == 1:
        p = torch.sigmoid(logits.reshape(-1))
        return torch.stack([1.0 - p, p], dim=1)
    return torch.softmax(logits, dim=-1)


def classification_metrics(probs: Tensor, target: Tensor, num_classes: int) -> dict[str, Tensor]:
    """Accuracy, macro-F1, macro AUROC (over classes present with both outcomes) and ECE of one model.

    Returns 0-dim tensors on the input's device, so callers read them all in one sync.
    AUROC is NaN when fewer than two classes are present in ``target``.
    """
    return batch_classification_metrics(probs, target, num_classes)


def _as_probabilities(probs: Tensor) -> Tensor:
    """Softmax the members ``[B, N, C]`` holding a value outside [0, 1], as torchmetrics does per call.

    Like torchmetrics' ``normalize_logits_if_needed``, the CPU path tests first (no device to wait
    for) so that real probabilities skip the softmax; elsewhere it is a sync-free ``torch.where``.
    """
    outside = ((probs < 0) | (probs > 1)).flatten(1).any(dim=1)
    if probs.device.type == "cpu" and not bool(outside.any()):
        return probs
    return torch.where(outside[:, None, None], torch.softmax(probs, dim=-1), probs)


def _exact_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (every one but MPS): counts' ratios such as 31/50 come out as the
    float64 0.62, not float32's 0.6200000047683716 in a table or an MLflow chart."""
    return torch.float32 if device.type == "mps" else torch.float64


def _f1_macro(pred: Tensor, target: Tensor, correct: Tensor, num_classes: int) -> Tensor:
    """Macro F1 ``[B]`` over the classes that are predicted or present (``tp + fp + fn > 0``); 0 if none."""
    dtype = _exact_dtype(pred.device)
    ones = torch.ones_like(pred, dtype=dtype)
    zeros = torch.zeros(pred.shape[0], num_classes, dtype=dtype, device=pred.device)
    tp = zeros.scatter_add(1, target, correct.to(dtype))
    predicted = zeros.scatter_add(1, pred, ones)
    actual = zeros.scatter_add(1, target, ones)
    denom = predicted + actual  # 2 tp + fp + fn, > 0 exactly when tp + fp + fn > 0
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(denom))
    counted = (denom > 0).sum(dim=1, keepdim=True)
    return (f1 / counted.clamp(min=1)).sum(dim=1)


def _ece(confidence: Tensor, hit: Tensor) -> Tensor:
    """Top-label L1 calibration error ``[B]`` from the top probabilities ``[B, N]`` and whether their class is right.

    ``bucketize(conf, linspace(0, 1, ECE_BINS + 1), right=True) - 1``: left-closed bins ``[lo, hi)`` on
    float32 edges, and a confidence of exactly 1.0 falls in an extra bin of its own.
    """
    edges = torch.linspace(0, 1, ECE_BINS + 1, dtype=confidence.dtype, device=confidence.device)
    bins = torch.bucketize(confidence, edges, right=True) - 1
    confidence = confidence.to(_exact_dtype(confidence.device))  # the sums in float64: the bins stay float32's
    zeros = torch.zeros(confidence.shape[0], ECE_BINS + 1, dtype=confidence.dtype, device=confidence.device)
    count = zeros.scatter_add(1, bins, torch.ones_like(confidence))
    conf_bin = torch.nan_to_num(zeros.scatter_add(1, bins, confidence) / count)
    acc_bin = torch.nan_to_num(zeros.scatter_add(1, bins, hit.to(confidence.dtype)) / count)
    prop = count / count.sum(dim=1, keepdim=True)
    # to ECE_DECIMALS: the float32 confidences carry no more, and the digits past them differ with how the
    # probabilities were computed (a vectorised block or its tail), not with the model
    return torch.round((torch.abs(acc_bin - conf_bin) * prop).sum(dim=1), decimals=ECE_DECIMALS)


def _tie_bounds(keys: Tensor) -> tuple[Tensor, Tensor]:
    """For rows of sorted ``keys [R, N]``: where each entry's run of equal keys starts and ends (exclusive)."""
    n = keys.shape[1]
    change = keys[:, 1:] != keys[:, :-1]
    starts = torch.nn.functional.pad(change, (1, 0), value=True)
    ends = torch.nn.functional.pad(change, (0, 1), value=True)
    pos = torch.arange(n, dtype=torch.int32, device=keys.device)
    left = torch.where(starts, pos, 0).cummax(dim=1).values
    right = torch.where(ends, pos + 1, n).flip(1).cummin(dim=1).values.flip(1)
    return left, right


def _auroc(probs: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Macro one-vs-rest AUROC ``[B]`` over the scorable classes, with the binary rule of ``metrics.py``.

    Each class's AUROC is the Mann-Whitney U with mid-ranks (a tie counts one half), which is exactly
    the trapezoidal area under torchmetrics' ROC curve. All ``B * C`` score columns are sorted by one
    flat int64 sort (a radix sort on CPU and GPU, faster than a batched row sort): column number in
    the high bits, the float's bit pattern in the low 31 bits, which orders values in [0, 1] like the
    floats do (the sign bit is dropped, so -0.0 ties with 0.0 and a NaN stays in its own column).
    In sorted order ``left + right + 1`` of an entry's run of ties is twice its 1-based mid-rank, so
    the rank sums stay exact integers.
    """
    b, n, c = probs.shape
    bits = probs.transpose(1, 2).reshape(b * c, n).view(torch.int32).long() & 0x7FFFFFFF
    columns = torch.arange(b * c, device=probs.device).unsqueeze(1)
    keys, order = torch.sort((bits | (columns << 31)).reshape(-1))
    classes = torch.arange(num_classes, device=probs.device)
    positive = target[:, None, :] == classes[None, :, None]  # [B, C, N]
    positive_sorted = positive.reshape(-1)[order].reshape(b * c, n)
    left, right = _tie_bounds(keys.reshape(b * c, n))
    rank2_sum = torch.where(positive_sorted, left + right + 1, 0).sum(dim=1, dtype=torch.int64).reshape(b, c)
    n_pos = positive.sum(dim=-1, dtype=torch.int64)
    n_neg = n - n_pos
    scorable = (n_pos > 0) & (n_neg > 0)
    u2 = rank2_sum - n_pos * (n_pos + 1)  # twice the Mann-Whitney U of the positives
    pairs2 = (2 * n_pos * n_neg).clamp(min=1)
    dtype = _exact_dtype(probs.device)
    per_class = torch.where(scorable, u2.to(dtype) / pairs2.to(dtype), 0.0)
    n_scorable = scorable.sum(dim=1)
    nan = torch.full_like(per_class[:, 0], float("nan"))
    auroc = torch.where(n_scorable >= 2, per_class.sum(dim=1) / n_scorable.clamp(min=1), nan)
    if num_classes == 2:
        # The binary AUROC is class 1's, one scorable class suffices.
        auroc = torch.where(n_scorable >= 1, per_class[:, 1], auroc)
    return auroc


@torch.no_grad()
def batch_classification_metrics(probs: Tensor, target: Tensor, num_classes: int) -> dict[str, Tensor]:
    """Accuracy, macro-F1, macro AUROC and ECE of every leading index of ``probs [..., N, C]``.

    ``target [..., N]`` holds labels in ``[0, num_classes)`` and broadcasts against ``probs.shape[:-1]``
    (e.g. one ``[N]`` target for ``[models, N, C]``). Returns float64 tensors (float32 on MPS) of shape ``probs.shape[:-2]``,
    keyed in ``METRICS`` order, where entry ``idx`` is the metrics of model ``idx`` alone
    (AUROC NaN when fewer than two classes are scorable, the binary case excepted). No host sync.
    """
    if probs.ndim < 2 or probs.shape[-1] != num_classes:
        raise ValueError(f"Expected probs of shape [..., N, {num_classes}], got {tuple(probs.shape)}")
    lead, (n, c) = probs.shape[:-2], probs.shape[-2:]
    probs = probs.float().reshape(-1, n, c)
    target = torch.broadcast_to(target.long(), (*lead, n)).reshape(-1, n)

    confidence, pred = probs.max(dim=-1)  # the first maximum on ties, like torchmetrics' argmax
    correct = pred == target
    normalized = _as_probabilities(probs)
    if normalized is not probs:  # the ECE and AUROC of torchmetrics see softmax(logits), accuracy and F1 not
        confidence, pred_top = normalized.max(dim=-1)
        hit = pred_top == target
    else:
        hit = correct
    exact = _exact_dtype(probs.device)
    out = {
        "accuracy": correct.sum(dim=1).to(exact) / max(n, 1),
        "f1_macro": _f1_macro(pred, target, correct, num_classes),
        "auroc": _auroc(normalized, target, num_classes),
        "ece": _ece(confidence, hit),
    }
    return {k: out[k].reshape(lead) for k in METRICS}
