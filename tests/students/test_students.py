"""Student conformance over the registry, the MLP's arguments, and users' own classes by import path."""

from __future__ import annotations

import math
import sys
import textwrap

import pytest
import torch
from torch import nn

from distill import students
from distill.registry import UnsafeImportError
from distill.students import STUDENTS, StudentArgumentError, build, list_students, num_outputs_for, register_student
from distill.students.mlp import ACTIVATIONS, MLP

IN_FEATURES = 6
# Students that need images get an image shape; every other student is built on a table (IN_FEATURES,).
IMAGE_SHAPES: dict[str, tuple[int, ...]] = {"cnn": (1, 8, 8)}


# --------------------------------------------------------------------------- conformance


@pytest.mark.parametrize("num_classes", [2, 3, 10])
@pytest.mark.parametrize("name", list_students())
def test_forward_shape_and_backward(name: str, num_classes: int) -> None:
    torch.manual_seed(0)
    in_shape = IMAGE_SHAPES.get(name, (IN_FEATURES,))
    model = students.build(name, in_shape, num_classes)
    assert isinstance(model, nn.Module)
    x = torch.randn(5, math.prod(in_shape))  # rows reach students flat
    out = model(x)
    expected = 1 if num_classes == 2 else num_classes
    assert out.shape == (5, expected)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    params = list(model.named_parameters())
    assert params
    for pname, p in params:
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for _, p in params)


def test_list_students_has_mlp() -> None:
    assert "mlp" in list_students()


def test_list_students_has_cnn_and_only_image_students_get_image_shapes() -> None:
    assert "cnn" in list_students()
    assert "mlp" not in IMAGE_SHAPES
    assert set(IMAGE_SHAPES) <= set(list_students())


# --------------------------------------------------------------------------- MLP


def test_seed_post_mlp_has_431_parameters() -> None:
    model = build("mlp", (30,), 2, hidden=[10, 10], activation="sigmoid")
    assert sum(p.numel() for p in model.parameters()) == 30 * 10 + 10 + 10 * 10 + 10 + 10 * 1 + 1 == 431
    assert [type(m) for m in model.net] == [nn.Linear, nn.Sigmoid, nn.Linear, nn.Sigmoid, nn.Linear]


def test_mlp_empty_hidden_is_logistic_regression_and_int_hidden_is_one_layer() -> None:
    assert [type(m) for m in build("mlp", (4,), 3, hidden=[]).net] == [nn.Linear]
    model = build("mlp", (4,), 3, hidden=7)
    assert [m.out_features for m in model.net if isinstance(m, nn.Linear)] == [7, 3]


def test_mlp_flattens_inputs() -> None:
    model = build("mlp", (2, 3), 3, hidden=[4])
    assert model.net[0].in_features == 6
    assert model(torch.randn(5, 2, 3)).shape == (5, 3)


@pytest.mark.parametrize(
    "name, cls", [("relu", nn.ReLU), ("gelu", nn.GELU), ("tanh", nn.Tanh), ("sigmoid", nn.Sigmoid)]
)
def test_activation_names_map_to_modules(name: str, cls: type[nn.Module]) -> None:
    assert ACTIVATIONS[name] is cls
    model = build("mlp", (4,), 3, hidden=[5, 5], activation=name)
    assert [type(m) for m in model.net] == [nn.Linear, cls, nn.Linear, cls, nn.Linear]
    x = torch.linspace(-2, 2, 20).reshape(5, 4)
    h = model.net[0](x)
    torch.testing.assert_close(model.net[1](h), cls()(h))


def test_all_activations_are_tested() -> None:
    assert set(ACTIVATIONS) == {"relu", "gelu", "tanh", "sigmoid"}


def test_dropout_layers() -> None:
    model = build("mlp", (4,), 3, hidden=[5, 5], dropout=0.25)
    drops = [m for m in model.net if isinstance(m, nn.Dropout)]
    assert len(drops) == 2 and all(d.p == 0.25 for d in drops)
    assert not any(isinstance(m, nn.Dropout) for m in build("mlp", (4,), 3, hidden=[5]).net)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"hidden": [0]}, "student.hidden"),
        ({"hidden": "a"}, "student.hidden"),
        ({"hidden": [4, -1]}, "student.hidden"),
        ({"hidden": [2.5]}, "student.hidden"),
        ({"hidden": [True]}, "student.hidden"),
        ({"activation": "swish"}, "student.activation"),
        ({"dropout": 1.0}, "student.dropout"),
        ({"dropout": -0.1}, "student.dropout"),
        ({"dropout": "0.1"}, "student.dropout"),
        ({"dropout": True}, "student.dropout"),
    ],
)
def test_bad_mlp_arguments_name_their_key(kwargs: dict, key: str) -> None:
    with pytest.raises(StudentArgumentError, match=key.replace(".", r"\.")) as info:
        build("mlp", (4,), 3, **kwargs)
    assert info.value.key == key
    assert repr(next(iter(kwargs.values()))) in str(info.value)


def test_unknown_kwarg_names_it_and_lists_accepted() -> None:
    with pytest.raises(StudentArgumentError) as info:
        build("mlp", (4,), 3, widths=[3])
    message = str(info.value)
    assert info.value.key == "student.widths"
    assert "student.widths" in message
    accepted = message.split("accepted:")[1]
    for name in ("student.hidden", "student.activation", "student.dropout"):
        assert name in accepted


def test_unknown_arch_lists_registered() -> None:
    with pytest.raises(ValueError, match="mpl") as info:
        build("mpl", (4,), 3)
    assert "mlp" in str(info.value).split("registered:")[1]


def test_duplicate_registration_raises() -> None:
    before = dict(STUDENTS._entries)
    with pytest.raises(ValueError, match="already registered"):
        register_student("mlp")(MLP)
    assert STUDENTS._entries == before


@pytest.mark.parametrize(
    "num_classes, hard, expected", [(2, "auto", 1), (2, "bce", 1), (2, "ce", 2), (3, "auto", 3), (10, "ce", 10)]
)
def test_num_outputs_for(num_classes: int, hard: str, expected: int) -> None:
    assert num_outputs_for(num_classes, hard) == expected


def test_explicit_num_outputs() -> None:
    assert build("mlp", (4,), 2, num_outputs=2, hidden=[3])(torch.randn(3, 4)).shape == (3, 2)


# --------------------------------------------------------------------------- user classes by import path

TINYNET = textwrap.dedent(
    """
    import torch
    from torch import nn


    class TinyNet(nn.Module):
        def __init__(self, in_features, num_outputs, scale=1.0):
            super().__init__()
            self.scale = scale
            self.linear = nn.Linear(in_features, num_outputs)

        def forward(self, x):
            return self.scale * self.linear(x.flatten(1))


    class ShapeNet(nn.Module):
        def __init__(self, in_shape, num_outputs, **kwargs):
            super().__init__()
            self.in_shape = in_shape
            self.kwargs = kwargs
            self.linear = nn.Linear(in_shape[-1], num_outputs)

        def forward(self, x):
            return self.linear(x)


    class NoOutputs(nn.Module):
        def __init__(self, in_features):
            super().__init__()


    def not_a_module(in_features, num_outputs):
        return 42


    NOT_CALLABLE = 3
    """
)


@pytest.fixture
def tinynet_module(tmp_path, monkeypatch):
    name = "tinynet_mod_students_test"
    (tmp_path / f"{name}.py").write_text(TINYNET)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    yield name
    sys.modules.pop(name, None)


def test_user_class_by_import_path(tinynet_module: str) -> None:
    model = build(f"{tinynet_module}:TinyNet", (3, 2), 3, scale=2.0)
    assert type(model).__name__ == "TinyNet"
    assert model.scale == 2.0
    assert (model.linear.in_features, model.linear.out_features) == (6, 3)
    x = torch.randn(4, 3, 2)
    torch.testing.assert_close(model(x), 2.0 * model.linear(x.flatten(1)))
    binary = build(f"{tinynet_module}:TinyNet", (6,), 2)
    assert binary(torch.randn(4, 6)).shape == (4, 1)


def test_user_class_with_in_shape_and_var_kwargs(tinynet_module: str) -> None:
    model = build(f"{tinynet_module}:ShapeNet", (5,), 4, anything=1)
    assert model.in_shape == (5,) and model.kwargs == {"anything": 1}


def test_user_class_errors(tinynet_module: str) -> None:
    with pytest.raises(StudentArgumentError, match="student.scal") as info:
        build(f"{tinynet_module}:TinyNet", (6,), 3, scal=2.0)
    assert "student.scale" in str(info.value)
    with pytest.raises(StudentArgumentError, match="num_outputs"):
        build(f"{tinynet_module}:NoOutputs", (6,), 3)
    # A function (even one that returns a module) is refused before it is called: import paths name classes.
    with pytest.raises(UnsafeImportError, match="is a function, not an nn.Module subclass; refused"):
        build(f"{tinynet_module}:not_a_module", (6,), 3)
    with pytest.raises(UnsafeImportError, match="not an nn.Module subclass"):
        build(f"{tinynet_module}:NOT_CALLABLE", (6,), 3)
    with pytest.raises(ValueError, match="Missing"):
        build(f"{tinynet_module}:Missing", (6,), 3)
    with pytest.raises(ValueError, match="no_such_module_xyz"):
        build("no_such_module_xyz:Net", (6,), 3)
