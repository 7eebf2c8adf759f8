"""``student.init``: each scheme against its formula, the seed post's spec, config errors, and runs.

References are independent of ``distill.experiment.weight_init``: the closed-form moments (Glorot & Bengio
2010; He et al. 2015), scipy.stats.truncnorm for the truncated normal, and torch's own
``nn.init`` calls in a hand-written order for the seeded draw.
"""

from __future__ import annotations

import math
import textwrap
from typing import Any

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from distill import students
from distill.config import InitConfig, validate_config
from distill.errors import ConfigError
from distill.experiment.episodes import run_protocol
from distill.experiment.prepare import prepare
from distill.experiment.students import build_student
from distill.experiment.weight_init import apply_init, init_layers

FAN_IN, FAN_OUT = 1000, 2000  # one 2000 x 1000 layer: 2e6 weights, so the moments are tight


def _big(spec: Any, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(FAN_IN, FAN_OUT)
    apply_init(nn.Sequential(layer), InitConfig.model_validate(spec))
    return layer


def _moments(t: torch.Tensor) -> tuple[float, float]:
    x = t.detach().double().flatten()
    return float(x.mean()), float(x.var())


def _check(t: torch.Tensor, mean: float, var: float, rel: float = 0.01) -> None:
    """Sample mean within 5 standard errors and variance within ``rel`` of the theory."""
    m, v = _moments(t)
    assert abs(m - mean) < 5 * math.sqrt(var / t.numel()), (m, mean)
    assert v == pytest.approx(var, rel=rel), (v, var)


# --------------------------------------------------------------------------- formulas


def test_glorot_uniform_is_uniform_on_plus_minus_a_with_zero_bias() -> None:
    layer = _big("glorot_uniform")
    a = math.sqrt(6 / (FAN_IN + FAN_OUT))
    w = layer.weight.detach().double()
    assert w.abs().max() <= a and w.abs().max() > 0.999 * a  # the support is exactly [-a, a]
    _check(w, 0.0, a * a / 3)
    assert torch.equal(layer.bias, torch.zeros(FAN_OUT))


def test_he_normal_has_variance_two_over_fan_in_with_zero_bias() -> None:
    layer = _big("he_normal")
    _check(layer.weight, 0.0, 2 / FAN_IN)
    # Gaussian, not truncated: about 4.6% of the draws lie beyond 2 std (0.0455 for N(0, 1)).
    beyond = float((layer.weight.abs() > 2 * math.sqrt(2 / FAN_IN)).double().mean())
    assert beyond == pytest.approx(2 * scipy.stats.norm.sf(2), rel=0.02)
    assert torch.equal(layer.bias, torch.zeros(FAN_OUT))


def test_normal_has_its_mean_and_std() -> None:
    layer = _big({"scheme": "normal", "mean": 0.25, "std": 0.3})
    _check(layer.weight, 0.25, 0.09)
    assert torch.equal(layer.bias, torch.zeros(FAN_OUT))


def test_normal_std_may_be_one_over_sqrt_fan_in() -> None:
    layer = _big({"scheme": "normal", "std": "1/sqrt(fan_in)"})
    _check(layer.weight, 0.0, 1 / FAN_IN)


def test_truncated_normal_matches_scipy_and_its_bounds_hold_exactly() -> None:
    mean, std = 0.1, 0.5
    layer = _big({"scheme": "truncated_normal", "mean": mean, "std": std})
    ref = scipy.stats.truncnorm(-2, 2, loc=mean, scale=std)
    w = layer.weight.detach().double()
    assert float(w.min()) >= mean - 2 * std and float(w.max()) <= mean + 2 * std
    assert float(w.min()) < mean - 1.99 * std and float(w.max()) > mean + 1.99 * std  # cut at 2 std, not before
    _check(w, float(ref.mean()), float(ref.var()))
    assert float(ref.var()) == pytest.approx(0.7737 * std**2, rel=1e-3)  # the docstring's constant
    assert torch.equal(layer.bias, torch.zeros(FAN_OUT))


@pytest.mark.parametrize("scheme", ["glorot_uniform", "he_normal", "normal", "truncated_normal"])
def test_bias_choices(scheme: str) -> None:
    normal = _big({"scheme": scheme, "bias": "normal", "bias_std": 2.0})
    _check(normal.bias, 0.0, 4.0, rel=0.15)  # 2000 biases: the variance's standard error is about 3%
    torch.manual_seed(0)
    own = nn.Linear(FAN_IN, FAN_OUT).bias.detach().clone()  # the constructor's draw with the same seed
    kept = _big({"scheme": scheme, "bias": "torch"})
    assert torch.equal(kept.bias, own)
    cut = _big({"scheme": scheme, "bias": "truncated_normal", "bias_std": "1/sqrt(fan_in)"})
    std = 1 / math.sqrt(FAN_IN)
    assert float(cut.bias.detach().abs().max()) <= 2 * std
    _check(cut.bias, 0.0, float(scipy.stats.truncnorm(-2, 2, scale=std).var()), rel=0.15)


def test_torch_draws_nothing_and_leaves_the_weights_bit_identical() -> None:
    torch.manual_seed(7)
    model = students.build("mlp", (30,), 2, hidden=[16, 8])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    apply_init(model, InitConfig())
    apply_init(model, InitConfig.model_validate({"scheme": "torch", "bias": "torch"}))
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_torch_with_zero_bias_keeps_weights_and_zeroes_biases() -> None:
    torch.manual_seed(7)
    model = students.build("mlp", (30,), 2, hidden=[16, 8])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_init(model, InitConfig.model_validate({"scheme": "torch", "bias": "zeros"}))
    for k, v in model.state_dict().items():
        assert torch.equal(v, torch.zeros_like(v)) if k.endswith("bias") else torch.equal(v, before[k])


# --------------------------------------------------------------------------- the seed post's spec

SEED_POST = {"scheme": "normal", "std": 1.0, "bias": "normal",
             "first": {"scheme": "truncated_normal", "std": "1/sqrt(fan_in)"}}


def test_seed_post_spec_gives_the_right_per_layer_statistics() -> None:
    # Wide hidden layers so each layer's moments are measurable; the first takes 30 features as in the post.
    torch.manual_seed(0)
    model = students.build("mlp", (30,), 2, hidden=[2000, 1000])
    apply_init(model, InitConfig.model_validate(SEED_POST))
    first, *later = init_layers(model)
    assert isinstance(first, nn.Linear) and first.in_features == 30 and len(later) == 2
    std = 1 / math.sqrt(30)
    ref = scipy.stats.truncnorm(-2, 2, loc=0, scale=std)
    assert float(first.weight.detach().abs().max()) <= 2 * std
    _check(first.weight, 0.0, float(ref.var()), rel=0.02)  # 60,000 weights
    assert torch.equal(first.bias, torch.zeros_like(first.bias))  # the override's own bias: zeros (its scheme's)
    _check(later[0].weight, 0.0, 1.0)  # 2e6 weights from N(0, 1)
    _check(later[0].bias, 0.0, 1.0, rel=0.2)  # 1000 biases from N(0, 1)
    _check(later[1].weight, 0.0, 1.0, rel=0.2)  # the output layer: 1000 weights


def test_seed_post_spec_through_a_config_file_table() -> None:
    config = validate_config({"student": {"arch": "mlp", "hidden": [10], "init": SEED_POST}})
    assert config.student.kwargs == {"hidden": [10]}  # init is a field, never a constructor kwarg
    assert config.student.init.first is not None and config.student.init.first.scheme == "truncated_normal"


# --------------------------------------------------------------------------- any student

def test_cnn_convolutions_use_their_receptive_field_fan_in() -> None:
    torch.manual_seed(0)
    model = students.build("cnn", (1, 28, 28), 10, channels=[64, 128], kernel_sizes=[5, 5])
    apply_init(model, InitConfig.model_validate("he_normal"))
    layers = init_layers(model)
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 and layers[0] is convs[0]  # module order: the convolutions come first
    conv = convs[1]  # 128 x 64 x 5 x 5 = 204,800 weights, fan_in = 64 * 25
    _check(conv.weight, 0.0, 2 / (64 * 25), rel=0.02)
    assert torch.equal(conv.bias, torch.zeros_like(conv.bias))


USERNET = textwrap.dedent("""
    import torch
    from torch import nn

    class UserNet(nn.Module):
        def __init__(self, in_features, num_outputs):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(in_features))  # not a layer: left alone
            self.body = nn.Sequential(nn.Linear(in_features, 400), nn.Tanh())
            self.head = nn.Linear(400, num_outputs)

        def forward(self, x):
            return self.head(self.body(x * self.scale))

    class NoLayers(nn.Module):
        def __init__(self, in_features, num_outputs):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(in_features, num_outputs))

        def forward(self, x):
            return x @ self.w
""")


@pytest.fixture()
def user_module(tmp_path, monkeypatch) -> str:
    (tmp_path / "init_user_nets.py").write_text(USERNET)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "init_user_nets"


def test_a_users_module_gets_every_linear_in_module_order(user_module: str) -> None:
    torch.manual_seed(0)
    model = students.build(f"{user_module}:UserNet", (500,), 3)
    apply_init(model, InitConfig.model_validate({"scheme": "glorot_uniform", "first": "he_normal"}))
    assert torch.equal(model.scale, torch.ones(500))
    first, head = init_layers(model)
    assert first is model.body[0] and head is model.head
    _check(first.weight, 0.0, 2 / 500, rel=0.02)  # 200,000 weights: the first, He
    a = math.sqrt(6 / (400 + 3))
    assert float(head.weight.detach().abs().max()) <= a  # the rest, Glorot


def test_a_module_without_layers_is_one_line_naming_student_init(user_module: str) -> None:
    config = validate_config({"data": {"source": "sklearn:iris"}, "teacher": {"restarts": 0},
                              "student": {"arch": f"{user_module}:NoLayers", "init": "he_normal"}})
    with pytest.raises(ConfigError) as info:
        prepare(config)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("student.init: student 'init_user_nets:NoLayers' has no nn.Linear")


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(("init", "expected"), [
    ("bogus", "student.init.scheme must be 'torch', 'glorot_uniform', 'he_normal', 'normal' or 'truncated_normal', "
              "got 'bogus'"),
    (3, "student.init: must be a scheme name (torch, glorot_uniform, he_normal, normal, truncated_normal) or a table"
        " with key scheme, got 3"),
    ({"scheme": "normal", "sd": 1}, "unknown key 'student.init.sd'"),
    ({"scheme": "normal", "std": -1}, "student.init.std: must be a number > 0 or '1/sqrt(fan_in)', got -1"),
    ({"scheme": "normal", "std": "1/sqrt(fan_out)"}, "student.init.std: must be a number > 0 or '1/sqrt(fan_in)'"),
    ({"scheme": "he_normal", "std": 2}, "student.init.std: applies to scheme 'normal' or 'truncated_normal' only, "
                                        "not 'he_normal', got 2"),
    ({"scheme": "normal", "bias_std": 0.5}, "student.init.bias_std: applies to bias = 'normal' or 'truncated_normal' only, not bias = 'scheme', got 0.5"),
    ({"scheme": "normal", "bias": "uniform"}, "student.init.bias must be"),
    ({"scheme": "normal", "bias": "normal", "bias_std": 0},
     "student.init.bias_std: must be a number > 0 or '1/sqrt(fan_in)', got 0"),
    ({"scheme": "normal", "first": {"scheme": "glorot_uniform", "mean": 1}},
     "student.init.first.mean: applies to scheme"),
    ({"scheme": "normal", "first": {"first": "normal"}}, "unknown key 'student.init.first.first'"),
])
def test_config_errors_are_one_line_naming_the_key(init: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({"student": {"init": init}})
    assert len(info.value.problems) == 1, info.value.problems
    assert info.value.problems[0].startswith(expected), info.value.problems[0]


def test_init_sweeps_over_scheme_names() -> None:
    config = validate_config({"student": {"init": ["torch", "glorot_uniform", "he_normal"]}})
    assert config.sweep == ("student.init", ("torch", "glorot_uniform", "he_normal"))
    assert validate_config({"student": {"init": {"scheme": "normal", "std": [0.1, 1.0]}}}).sweep == (
        "student.init.std", (0.1, 1.0))
    first = validate_config({"student": {"init": {"scheme": "normal", "first": {"scheme": "truncated_normal",
                                                                               "std": [0.1, 0.2]}}}})
    assert first.sweep == ("student.init.first.std", (0.1, 0.2)) and first.student.init.first.std == 0.1
    with pytest.raises(ConfigError, match=r"^student.init: sweep values must be scalars"):
        validate_config({"student": {"init": [{"scheme": "normal"}, "torch"]}})


# --------------------------------------------------------------------------- runs

BASE: dict[str, Any] = {
    "seed": 3,
    "data": {"source": "sklearn:iris", "test_size": 30},
    "few_shot": {"per_class": 2},
    "teacher": {"restarts": 0},
    "student": {"hidden": [8]},
    "train": {"epochs": 2, "device": "cpu"},
    "protocol": {"episodes": 1},
}

SCHEMES: list[Any] = ["torch", "glorot_uniform", "he_normal", {"scheme": "normal", "std": 0.5},
                      {"scheme": "truncated_normal", "std": 0.5}, SEED_POST]


def _config(init: Any, **objective: Any):
    return validate_config({**BASE, "student": {"hidden": [8], "init": init}, "objective": objective})


def test_build_student_is_the_seeded_constructor_then_the_scheme() -> None:
    prepared = prepare(_config("he_normal"))
    model = build_student(prepared)
    torch.manual_seed(prepared.config.seed)  # the reference: torch's own calls, in module order
    ref = students.build("mlp", (4,), 3, hidden=[8])
    for layer in (m for m in ref.modules() if isinstance(m, nn.Linear)):
        nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(layer.bias)
    got, want = model.state_dict(), ref.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    torch.manual_seed(prepared.config.seed)
    plain = students.build("mlp", (4,), 3, hidden=[8]).state_dict()
    torch_model = build_student(prepare(_config("torch"))).state_dict()
    assert all(torch.equal(torch_model[k], plain[k]) for k in plain)  # torch: the constructor's, bit for bit


@pytest.mark.parametrize("init", SCHEMES, ids=lambda s: s if isinstance(s, str) else s.get("first", s)["scheme"])
def test_a_run_with_each_scheme_completes_and_student_and_baseline_start_alike(init: Any) -> None:
    # With kl_weight = 0 the student is the baseline: identical only if both start from the same weights.
    prepared = prepare(_config(init, kl_weight=0))
    first, again = build_student(prepared).state_dict(), build_student(prepared).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    _, results = run_protocol(_config(init, kl_weight=0))
    (r,) = results
    assert r.metrics["student"] == r.metrics["baseline"]
    sa, sb = r.student.state_dict(), r.baseline.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert np.isfinite(r.student_fit.history[-1]["train_loss"])
    _, distilled = run_protocol(_config(init, kl_weight=1.0))
    assert 0.0 <= distilled[0].metrics["student"]["accuracy"] <= 1.0


def test_schemes_start_from_different_weights() -> None:
    starts = [build_student(prepare(_config(init))).state_dict() for init in SCHEMES[:3]]
    key = next(iter(starts[0]))  # the first layer's weight
    assert not torch.equal(starts[0][key], starts[1][key]) and not torch.equal(starts[1][key], starts[2][key])
