"""The LeNet-5 style CNN student: shapes, the LeNet layout, training, arguments and errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distill.students import StudentArgumentError, build
from distill.students.cnn import CNN
from distill.students.mlp import ACTIVATIONS

DIGITS = (1, 8, 8)
MNIST = (1, 28, 28)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_shapes(model: CNN, x: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """(layer type, output shape without the batch) for each module of ``model.features``."""
    shapes = []
    for layer in model.features:
        x = layer(x)
        shapes.append((type(layer).__name__, tuple(x.shape[1:])))
    return shapes


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("four_d", [False, True], ids=["flat", "4d"])
@pytest.mark.parametrize("num_classes, outputs", [(2, 1), (10, 10)])
@pytest.mark.parametrize("in_shape", [DIGITS, MNIST], ids=["8x8", "28x28"])
def test_forward_shapes(in_shape: tuple[int, ...], num_classes: int, outputs: int, four_d: bool) -> None:
    torch.manual_seed(0)
    model = build("cnn", in_shape, num_classes)
    assert isinstance(model, CNN)
    x = torch.randn(7, *in_shape) if four_d else torch.randn(7, math.prod(in_shape))
    out = model(x)
    assert out.shape == (7, outputs)
    assert torch.isfinite(out).all()


def test_flat_and_4d_inputs_give_the_same_logits() -> None:
    torch.manual_seed(0)
    model = build("cnn", MNIST, 10)
    x = torch.randn(3, *MNIST)
    torch.testing.assert_close(model(x), model(x.flatten(1)))


def test_default_layout_on_8x8_pools_down_to_2x2() -> None:
    model = build("cnn", DIGITS, 10)
    assert model.feature_shapes == [(6, 4, 4), (16, 2, 2)]
    assert model.flat_features == 64
    assert conv_shapes(model, torch.zeros(1, *DIGITS)) == [
        ("Conv2d", (6, 8, 8)), ("ReLU", (6, 8, 8)), ("MaxPool2d", (6, 4, 4)),
        ("Conv2d", (16, 4, 4)), ("ReLU", (16, 4, 4)), ("MaxPool2d", (16, 2, 2)),
    ]  # fmt: skip
    assert [m.out_features for m in model.classifier if isinstance(m, nn.Linear)] == [120, 84, 10]
    assert model.classifier[1].in_features == 64


def test_default_same_padding_on_28x28_gives_16x7x7_features() -> None:
    model = build("cnn", MNIST, 10)
    assert model.feature_shapes == [(6, 14, 14), (16, 7, 7)]
    assert model.flat_features == 16 * 7 * 7
    assert [m.padding for m in model.features if isinstance(m, nn.Conv2d)] == [(2, 2), (2, 2)]


def test_pooling_stops_below_the_pool_size() -> None:
    model = build("cnn", DIGITS, 10, channels=[4, 8, 8, 8], kernel_sizes=3)
    # 8 -> 4 -> 2 -> 1, then a 1x1 map is not pooled again
    assert model.feature_shapes == [(4, 4, 4), (8, 2, 2), (8, 1, 1), (8, 1, 1)]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 3
    assert model(torch.randn(2, 64)).shape == (2, 10)
    model = build("cnn", DIGITS, 10, pool=3)
    assert model.feature_shapes == [(6, 2, 2), (16, 2, 2)]
    assert model(torch.randn(2, 64)).shape == (2, 10)


def test_pool_one_turns_pooling_off() -> None:
    model = build("cnn", DIGITS, 3, pool=1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.features)
    assert model.flat_features == 16 * 8 * 8


def test_multichannel_and_non_square_images() -> None:
    model = build("cnn", (3, 8, 12), 4, channels=[5], kernel_sizes=[3], hidden=[])
    assert model.feature_shapes == [(5, 4, 6)]
    assert [type(m) for m in model.classifier] == [nn.Flatten, nn.Linear]
    assert model(torch.randn(2, 3 * 8 * 12)).shape == (2, 4)
    assert model(torch.randn(2, 3, 8, 12)).shape == (2, 4)


def test_wrong_input_size_is_a_clear_error() -> None:
    model = build("cnn", DIGITS, 10)
    with pytest.raises(ValueError, match=r"\[N, 64\] or \[N, 1, 8, 8\], got \[2, 65\]"):
        model(torch.randn(2, 65))


# --------------------------------------------------------------------------- LeNet-5


LENET_PARAMS = (1 * 6 * 25 + 6) + (6 * 16 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)


def test_lenet_padding_reproduces_lenet5_on_28x28() -> None:
    assert LENET_PARAMS == 61706
    model = build("cnn", MNIST, 10, padding="lenet")
    assert n_params(model) == LENET_PARAMS
    assert [m.padding for m in model.features if isinstance(m, nn.Conv2d)] == [(2, 2), (0, 0)]
    assert conv_shapes(model, torch.zeros(1, *MNIST)) == [
        ("Conv2d", (6, 28, 28)), ("ReLU", (6, 28, 28)), ("MaxPool2d", (6, 14, 14)),
        ("Conv2d", (16, 10, 10)), ("ReLU", (16, 10, 10)), ("MaxPool2d", (16, 5, 5)),
    ]  # fmt: skip
    assert model.feature_shapes == [(6, 14, 14), (16, 5, 5)]
    assert model.flat_features == 400
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(400, 120), (120, 84), (84, 10)]
    assert model(torch.randn(4, 784)).shape == (4, 10)


def test_valid_padding_on_32x32_is_the_classic_lenet5() -> None:
    model = build("cnn", (1, 32, 32), 10, padding="valid", activation="tanh")
    assert n_params(model) == LENET_PARAMS
    assert model.feature_shapes == [(6, 14, 14), (16, 5, 5)]
    assert sum(isinstance(m, nn.Tanh) for m in model.modules()) == 4


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("in_shape", [DIGITS, MNIST], ids=["8x8", "28x28"])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_a_few_adam_steps_decrease_the_loss(name: str, in_shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    x = torch.rand(32, math.prod(in_shape))  # flat rows, as the data pipeline gives them
    y = torch.randint(0, 10, (32,))
    model = build(name, in_shape, 10)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.9 * losses[0], losses


def test_binary_cnn_trains_with_bce() -> None:
    torch.manual_seed(0)
    x = torch.rand(32, 64)
    y = torch.randint(0, 2, (32,)).float()
    model = build("cnn", DIGITS, 2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("padding", ["same", "valid", "lenet"])
def test_backward_gives_finite_grads_everywhere(activation: str, padding: str) -> None:
    torch.manual_seed(0)
    model = build("cnn", MNIST, 10, activation=activation, padding=padding, dropout=0.1)
    model(torch.randn(4, 784)).square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_is_used_after_every_conv_and_hidden_layer(name: str) -> None:
    model = build("cnn", DIGITS, 10, activation=name)
    cls = ACTIVATIONS[name]
    assert [type(m) for m in model.features] == [nn.Conv2d, cls, nn.MaxPool2d] * 2
    assert [type(m) for m in model.classifier] == [nn.Flatten, nn.Linear, cls, nn.Linear, cls, nn.Linear]


def test_dropout_follows_each_hidden_activation() -> None:
    model = build("cnn", DIGITS, 10, dropout=0.3)
    drops = [m for m in model.classifier if isinstance(m, nn.Dropout)]
    assert len(drops) == 2 and all(d.p == 0.3 for d in drops)
    assert not any(isinstance(m, nn.Dropout) for m in build("cnn", DIGITS, 10).modules())
    torch.manual_seed(0)
    x = torch.randn(4, 64)
    model.eval()
    torch.testing.assert_close(model(x), model(x))


def test_kernel_sizes_int_applies_to_every_block_and_hidden_may_be_empty() -> None:
    model = build("cnn", MNIST, 3, channels=[4, 8, 8], kernel_sizes=3, hidden=[])
    assert [m.kernel_size for m in model.features if isinstance(m, nn.Conv2d)] == [(3, 3)] * 3
    assert [m.out_channels for m in model.features if isinstance(m, nn.Conv2d)] == [4, 8, 8]
    assert sum(isinstance(m, nn.Linear) for m in model.classifier) == 1


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"channels": [0, 16]}, "student.channels"),
        ({"channels": "a"}, "student.channels"),
        ({"channels": []}, "student.channels"),
        ({"channels": [6, 2.5]}, "student.channels"),
        ({"channels": [True, 16]}, "student.channels"),
        ({"kernel_sizes": [5]}, "student.kernel_sizes"),
        ({"kernel_sizes": [5, 5, 5]}, "student.kernel_sizes"),
        ({"kernel_sizes": [5, 0]}, "student.kernel_sizes"),
        ({"kernel_sizes": [5, -3]}, "student.kernel_sizes"),
        ({"kernel_sizes": "5"}, "student.kernel_sizes"),
        ({"hidden": [120, 0]}, "student.hidden"),
        ({"activation": "swish"}, "student.activation"),
        ({"dropout": 1.0}, "student.dropout"),
        ({"dropout": -0.1}, "student.dropout"),
        ({"dropout": True}, "student.dropout"),
        ({"pool": 0}, "student.pool"),
        ({"pool": 2.0}, "student.pool"),
        ({"padding": "full"}, "student.padding"),
    ],
)
def test_bad_arguments_name_their_key(kwargs: dict, key: str) -> None:
    with pytest.raises(StudentArgumentError, match=key.replace(".", r"\.")) as info:
        build("cnn", DIGITS, 10, **kwargs)
    assert info.value.key == key
    assert repr(next(iter(kwargs.values()))) in str(info.value)


def test_kernel_larger_than_the_map_it_meets_names_kernel_sizes() -> None:
    # valid: 8x8 -> conv5 -> 4x4 -> pool -> 2x2, where the second 5x5 kernel does not fit
    with pytest.raises(StudentArgumentError) as info:
        build("cnn", DIGITS, 10, padding="valid")
    assert info.value.key == "student.kernel_sizes"
    assert "student.kernel_sizes[1] = 5" in str(info.value) and "2x2 feature map" in str(info.value)
    assert "student.padding = 'same'" in str(info.value)
    with pytest.raises(StudentArgumentError, match=r"kernel_sizes\[0\] = 9 is larger than the 8x8 input") as info:
        build("cnn", DIGITS, 10, channels=[6], kernel_sizes=[9], padding="valid")
    assert info.value.key == "student.kernel_sizes"
    # same padding makes room for any odd kernel
    assert build("cnn", DIGITS, 10, channels=[6], kernel_sizes=[9])(torch.randn(2, 64)).shape == (2, 10)


@pytest.mark.parametrize("in_shape", [(30,), (8, 8), (1, 8, 8, 1)])
def test_table_inputs_are_refused(in_shape: tuple[int, ...]) -> None:
    with pytest.raises(StudentArgumentError) as info:
        build("cnn", in_shape, 2)
    assert info.value.key == "student.arch"
    assert str(info.value) == (
        f"student 'cnn' needs image inputs (C, H, W); data.source gives rows of shape {in_shape!r}"
    )


def test_table_message_matches_the_brief() -> None:
    with pytest.raises(
        StudentArgumentError,
        match=r"^student 'cnn' needs image inputs \(C, H, W\); data.source gives rows of shape \(30,\)$",
    ):
        build("cnn", (30,), 2)
    with pytest.raises(StudentArgumentError, match="needs image inputs") as info:
        CNN((1, 0, 8), 10)
    assert info.value.key == "student.arch"


def test_unknown_kwarg_lists_cnn_keys() -> None:
    with pytest.raises(StudentArgumentError) as info:
        build("cnn", DIGITS, 10, channel=[6])
    assert info.value.key == "student.channel"
    accepted = str(info.value).split("accepted:")[1]
    for key in ("channels", "kernel_sizes", "hidden", "activation", "pool", "dropout", "padding"):
        assert f"student.{key}" in accepted


# --------------------------------------------------------------------------- determinism


def test_init_is_deterministic_under_manual_seed() -> None:
    def state(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return build("cnn", MNIST, 10, padding="lenet").state_dict()

    a, b, c = state(0), state(0), state(1)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    x = torch.randn(3, 784)
    torch.manual_seed(0)
    first = build("cnn", MNIST, 10)
    torch.manual_seed(0)
    second = build("cnn", MNIST, 10)
    torch.testing.assert_close(first(x), second(x), rtol=0, atol=0)
