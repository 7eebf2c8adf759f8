"""A small convolutional student in the LeNet-5 mould, for image data (8x8 digits, 28x28 MNIST, ...).

Rows reach students flat, ``[N, C*H*W]``; the network reshapes them to ``[N, C, H, W]`` itself
(4-D batches are accepted too).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, TypeGuard

import torch
from torch import nn

from distill.students import StudentArgumentError, register_student
from distill.students.mlp import ACTIVATIONS

__all__ = ["CNN", "PADDINGS"]

PADDINGS = ("same", "valid", "lenet")


def _is_pos_int(v: object) -> TypeGuard[int]:
    """A positive int (not a bool): a size, width or count."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _int_list(value: Any, key: str, *, allow_empty: bool) -> list[int]:
    """``value`` as a list of positive ints (a bare int is a one-item list), else a StudentArgumentError."""
    if _is_pos_int(value):
        return [value]
    if (
        isinstance(value, (list, tuple))
        and (allow_empty or len(value) > 0)
        and all(_is_pos_int(v) for v in value)
    ):
        return list(value)
    need = "a list of positive integers" if allow_empty else "a non-empty list of positive integers"
    raise StudentArgumentError(f"{key} must be {need}, got {value!r}", key=key)


@register_student("cnn")
class CNN(nn.Module):
    """LeNet-5 style convolutional network: conv blocks, then fully connected layers.

    Each conv block is ``Conv2d -> activation -> MaxPool2d(pool)``; the pool is skipped once the
    feature map is smaller than ``pool`` on a side, so 8x8 inputs work with the defaults
    (``1x8x8 -> 6@8x8 -> 6@4x4 -> 16@4x4 -> 16@2x2 -> 64 features``). The features are flattened
    and go through ``hidden`` Linear layers (activation, then dropout if any) and a last Linear
    layer to ``num_outputs``.

    Padding:
        * ``"same"`` (default): padding ``k // 2``, so an odd kernel keeps the spatial size (an
          even one grows it by 1). On 1x28x28 the defaults give ``16 * 7 * 7 = 784`` features.
        * ``"valid"``: no padding, each conv shrinks the map by ``k - 1``. The classic LeNet-5
          layout is ``padding="valid"`` on a 32x32 input.
        * ``"lenet"``: the first conv is ``"same"``, the rest ``"valid"``. With the defaults this
          is LeNet-5 on 28x28: ``6@28x28 -> pool 6@14x14 -> 16@10x10 -> pool 16@5x5 -> 400 -> 120
          -> 84 -> num_outputs`` (61,706 parameters for 10 classes).

    Args:
        in_shape: the image shape ``(C, H, W)``; tables ``(D,)`` are refused.
        num_outputs: 1 for a binary student (one logit), C for a multiclass one.
        channels: output channels of each conv block, e.g. ``[6, 16]``.
        kernel_sizes: square kernel size of each conv block (same length as ``channels``; a
            single int applies to every block).
        hidden: widths of the fully connected hidden layers, e.g. ``[120, 84]``; may be empty.
        activation: ``relu``, ``gelu``, ``tanh`` or ``sigmoid`` (convs and hidden layers).
        pool: max-pool window and stride after each conv; 1 turns pooling off.
        dropout: dropout probability after each hidden activation.
        padding: ``same``, ``valid`` or ``lenet`` (see above).

    Attributes:
        in_shape: the ``(C, H, W)`` the inputs are reshaped to.
        feature_shapes: ``(C, H, W)`` after each conv block (after its pool, if any).
        flat_features: width of the flattened conv features fed to the first Linear layer.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_outputs: int,
        channels: Sequence[int] = (6, 16),
        kernel_sizes: Sequence[int] | int = (5, 5),
        hidden: Sequence[int] = (120, 84),
        activation: Literal["relu", "gelu", "tanh", "sigmoid"] = "relu",
        pool: int = 2,
        dropout: float = 0.0,
        padding: Literal["same", "valid", "lenet"] = "same",
    ) -> None:
        super().__init__()
        shape = tuple(in_shape)
        if len(shape) != 3 or not all(_is_pos_int(d) for d in shape):
            raise StudentArgumentError(
                f"student 'cnn' needs image inputs (C, H, W); data.source gives rows of shape {shape!r}",
                key="student.arch",
            )
        chans = _int_list(channels, "student.channels", allow_empty=False)
        if _is_pos_int(kernel_sizes):
            kernels = [kernel_sizes] * len(chans)
        else:
            kernels = _int_list(kernel_sizes, "student.kernel_sizes", allow_empty=False)
        if len(kernels) != len(chans):
            raise StudentArgumentError(
                f"student.kernel_sizes must have one entry per conv block (student.channels has "
                f"{len(chans)}), got {kernel_sizes!r}",
                key="student.kernel_sizes",
            )
        widths = _int_list(hidden, "student.hidden", allow_empty=True)
        if not isinstance(activation, str) or activation not in ACTIVATIONS:
            raise StudentArgumentError(
                f"student.activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}",
                key="student.activation",
            )
        if not _is_pos_int(pool):
            raise StudentArgumentError(f"student.pool must be a positive integer, got {pool!r}", key="student.pool")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise StudentArgumentError(f"student.dropout must be in [0, 1), got {dropout!r}", key="student.dropout")
        if not isinstance(padding, str) or padding not in PADDINGS:
            raise StudentArgumentError(
                f"student.padding must be one of {', '.join(PADDINGS)}, got {padding!r}", key="student.padding"
            )

        c, h, w = shape
        self.in_shape: tuple[int, int, int] = (c, h, w)
        act = ACTIVATIONS[activation]
        blocks: list[nn.Module] = []
        feature_shapes: list[tuple[int, int, int]] = []
        for i, (out_c, k) in enumerate(zip(chans, kernels, strict=True)):
            same = padding == "same" or (padding == "lenet" and i == 0)
            pad = k // 2 if same else 0
            if k > h + 2 * pad or k > w + 2 * pad:
                where = f"{h}x{w} feature map" if i else f"{h}x{w} input"
                hint = "" if same else "; use smaller kernels or student.padding = 'same'"
                raise StudentArgumentError(
                    f"student.kernel_sizes[{i}] = {k} is larger than the {where} it meets "
                    f"(padding {padding!r}){hint}",
                    key="student.kernel_sizes",
                )
            blocks.append(nn.Conv2d(c, out_c, k, padding=pad))
            blocks.append(act())
            c, h, w = out_c, h + 2 * pad - k + 1, w + 2 * pad - k + 1
            if pool > 1 and min(h, w) >= pool:
                blocks.append(nn.MaxPool2d(pool))
                h, w = h // pool, w // pool
            feature_shapes.append((c, h, w))
        self.features = nn.Sequential(*blocks)
        self.feature_shapes = feature_shapes

        with torch.no_grad():
            dummy = self.features(torch.zeros(1, *shape))
        assert tuple(dummy.shape[1:]) == feature_shapes[-1], (dummy.shape, feature_shapes)
        self.flat_features = int(dummy[0].numel())

        layers: list[nn.Module] = [nn.Flatten(1)]
        width = self.flat_features
        for hw in widths:
            layers.append(nn.Linear(width, hw))
            layers.append(act())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hw
        layers.append(nn.Linear(width, num_outputs))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_outputs]`` for a batch ``[N, C*H*W]`` (or any ``[N, ...]`` of that size)."""
        if x.dim() < 1 or x[0].numel() != math.prod(self.in_shape):
            c, h, w = self.in_shape
            raise ValueError(
                f"CNN expects inputs of shape [N, {c * h * w}] or [N, {c}, {h}, {w}], got {list(x.shape)}"
            )
        return self.classifier(self.features(x.reshape(x.shape[0], *self.in_shape)))
