"""``student.init``: the weight initialisation of a student, applied after its constructor.

Applied to every ``nn.Linear`` and ``nn.Conv*`` layer in module order (``model.modules()``); the
``first`` override to the first of them. Draws come from torch's global generator, which
``distill.experiment.students.build_student`` seeds from the experiment seed before the constructor runs, so
a seed gives the same weights every time, and student, baseline and every control start alike.
fan_in / fan_out are PyTorch's (``in_features`` / ``out_features``; for a convolution times the
kernel's size, with ``in_channels / groups``).

Schemes (W a layer's weight):

- ``torch``: the constructor's own draw, untouched (``nn.Linear``: Kaiming-uniform with a = √5,
  i.e. U(−1/√fan_in, 1/√fan_in); bias U(−1/√fan_in, 1/√fan_in)).
- ``glorot_uniform`` (Glorot & Bengio 2010, "Understanding the difficulty of training deep
  feedforward neural networks"): W ~ U(−a, a), a = √(6 / (fan_in + fan_out)); Var W = a²/3
  = 2 / (fan_in + fan_out). Bias zeros.
- ``he_normal`` (He et al. 2015, "Delving deep into rectifiers", fan_in mode): W ~ N(0, 2 / fan_in),
  the paper's Gaussian (not Keras's truncated variant). Bias zeros.
- ``normal``: W ~ N(mean, std²). Bias zeros.
- ``truncated_normal``: W ~ N(mean, std²) conditioned on |W − mean| ≤ 2 std (TensorFlow's
  ``truncated_normal``; ``torch.nn.init.trunc_normal_`` with a = mean − 2 std, b = mean + 2 std);
  its variance is std² · (1 − 2·2φ(2) / (2Φ(2) − 1)) ≈ 0.774 std². Bias zeros.

``std = "1/sqrt(fan_in)"`` uses the layer's own 1/√fan_in. ``bias``: ``scheme`` (as above),
``zeros``, ``normal`` (N(0, bias_std²)), ``truncated_normal`` (the same cut at ±2 bias_std) or
``torch`` (the constructor's draw, untouched); ``bias_std`` may be ``"1/sqrt(fan_in)"`` too.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from distill.config import STD_FAN_IN, InitConfig, LayerInitConfig

__all__ = ["init_layers", "apply_init", "layer_std", "describe_init"]

_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


def init_layers(model: nn.Module) -> list[nn.Module]:
    """The layers ``student.init`` applies to: every ``nn.Linear`` / ``nn.Conv*`` in module order."""
    return [m for m in model.modules() if isinstance(m, _LAYERS)]


def layer_std(std: float | str, weight: torch.Tensor) -> float:
    """``std`` (``spec.std`` or ``spec.bias_std``) as a number for this layer's weight (``"1/sqrt(fan_in)"`` resolved)."""
    if std == STD_FAN_IN:
        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
        return 1.0 / math.sqrt(fan_in)
    return float(std)


def _init_layer(layer: nn.Module, spec: LayerInitConfig) -> None:
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)  # an nn.Linear's or nn.Conv's (``init_layers``)
    if spec.scheme == "glorot_uniform":
        nn.init.xavier_uniform_(weight)
    elif spec.scheme == "he_normal":
        nn.init.kaiming_normal_(weight, a=0.0, mode="fan_in", nonlinearity="relu")
    elif spec.scheme == "normal":
        nn.init.normal_(weight, float(spec.mean), layer_std(spec.std, weight))
    elif spec.scheme == "truncated_normal":
        mean, std = float(spec.mean), layer_std(spec.std, weight)
        nn.init.trunc_normal_(weight, mean, std, a=mean - 2 * std, b=mean + 2 * std)
    bias = getattr(layer, "bias", None)
    if bias is None:
        return
    rule = spec.bias_rule
    if rule == "zeros":
        nn.init.zeros_(bias)
    elif rule == "normal":
        nn.init.normal_(bias, 0.0, layer_std(spec.bias_std, weight))
    elif rule == "truncated_normal":
        std = layer_std(spec.bias_std, weight)
        nn.init.trunc_normal_(bias, 0.0, std, a=-2 * std, b=2 * std)


def apply_init(model: nn.Module, spec: InitConfig, arch: str = "student") -> nn.Module:
    """Redraw ``model``'s layers as ``spec`` says (in place; returns ``model``). ``torch`` draws nothing,
    so the constructor's weights stay bit-identical. A model without such layers is a ValueError."""
    if spec.is_torch:
        return model
    layers = init_layers(model)
    if not layers:
        raise ValueError(f"student.init: student '{arch}' has no nn.Linear or nn.Conv layer to initialise; "
                         "use init = \"torch\"")
    with torch.no_grad():
        for i, layer in enumerate(layers):
            if isinstance(layer.weight, nn.parameter.UninitializedParameter):
                raise ValueError(f"student.init: student '{arch}' has a lazy layer ({type(layer).__name__}) whose "
                                 "weights do not exist before the first forward pass; use init = \"torch\"")
            _init_layer(layer, spec.first if i == 0 and spec.first is not None else spec)
    return model


def _describe_layer(spec: LayerInitConfig) -> str:
    text: str = spec.scheme
    if spec.scheme in ("normal", "truncated_normal"):
        text += f"(mean {spec.mean}, std {spec.std})"
    default = "torch" if spec.scheme == "torch" else "zeros"
    if spec.bias_rule != default:
        text += f", bias {spec.bias_rule}" + (f"(std {spec.bias_std})" if "normal" in spec.bias_rule else "")
    return text


def describe_init(spec: InitConfig) -> str:
    """One line for the run's plan: ``he_normal`` or ``normal(mean 0.0, std 1.0), bias normal(std 1.0);
    first layer truncated_normal(mean 0.0, std 1/sqrt(fan_in))``."""
    text = _describe_layer(spec)
    if spec.first is not None:
        text += f"; first layer {_describe_layer(spec.first)}"
    return text
