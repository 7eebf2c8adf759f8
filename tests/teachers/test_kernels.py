"""Tests for teachers.kernels: safe kernel-expression parsing (no eval)."""

from __future__ import annotations

import builtins
import os

import numpy as np
import pytest
from sklearn.gaussian_process.kernels import (
    RBF,
    ConstantKernel,
    DotProduct,
    Kernel,
    Matern,
    RationalQuadratic,
    WhiteKernel,
)

from distill.teachers.kernels import KERNELS, KernelSyntaxError, parse_kernel

X = np.array([[0.0, 1.0], [0.5, -0.3], [2.0, 0.7], [-1.2, 1.5]])
Y = np.array([[1.0, 0.0], [0.1, 0.2]])
PWNED = "/tmp/pwned_kernel"
# sklearn itself warns (sqrt/log of a negative constant) for negative ConstantKernel values.


def assert_same_kernel(got: Kernel, expected: Kernel, x: np.ndarray = X) -> None:
    assert isinstance(got, Kernel)
    assert type(got) is type(expected)
    assert repr(got) == repr(expected)
    got_params, expected_params = got.get_params(), expected.get_params()
    assert sorted(got_params) == sorted(expected_params)
    for key, value in expected_params.items():
        if isinstance(value, Kernel):
            assert repr(got_params[key]) == repr(value), key
        else:
            assert got_params[key] == value, key
    np.testing.assert_allclose(got(x), expected(x), rtol=1e-12, atol=0)
    np.testing.assert_allclose(got(x, Y), expected(x, Y), rtol=1e-12, atol=0)
    np.testing.assert_allclose(got.diag(x), expected.diag(x), rtol=1e-12, atol=0)
    np.testing.assert_allclose(got.theta, expected.theta)
    np.testing.assert_allclose(got.bounds, expected.bounds)


def test_whitelist() -> None:
    assert dict(KERNELS) == {
        "C": ConstantKernel,
        "ConstantKernel": ConstantKernel,
        "DotProduct": DotProduct,
        "Matern": Matern,
        "RBF": RBF,
        "RationalQuadratic": RationalQuadratic,
        "WhiteKernel": WhiteKernel,
    }
    with pytest.raises(TypeError):
        KERNELS["Evil"] = object  # type: ignore[index]
    assert issubclass(KernelSyntaxError, ValueError)


def test_constant_times_rbf() -> None:
    got = parse_kernel("1.0 * RBF(1.0)")
    expected = ConstantKernel(1.0) * RBF(1.0)
    assert_same_kernel(got, expected)
    assert repr(got) == "1**2 * RBF(length_scale=1)"
    assert got.get_params()["k1__constant_value"] == 1.0
    assert got.get_params()["k2__length_scale"] == 1.0
    # Hand-computed entry: exp(-|x0 - x1|^2 / 2) with |x0 - x1|^2 = 0.25 + 1.69.
    np.testing.assert_allclose(got(X)[0, 1], np.exp(-0.5 * 1.94))


def test_matern_plus_white() -> None:
    got = parse_kernel("1.0 * Matern(length_scale=2.0, nu=1.5) + WhiteKernel(0.1)")
    expected = 1.0 * Matern(length_scale=2.0, nu=1.5) + WhiteKernel(0.1)
    assert_same_kernel(got, expected)
    params = got.get_params()
    assert params["k1__k2__nu"] == 1.5
    assert params["k1__k2__length_scale"] == 2.0
    assert params["k2__noise_level"] == 0.1
    np.testing.assert_allclose(np.diag(got(X)), np.full(len(X), 1.1))


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("RationalQuadratic(length_scale=0.5, alpha=2.0)", RationalQuadratic(length_scale=0.5, alpha=2.0)),
        ("RationalQuadratic(0.5, 2.0)", RationalQuadratic(0.5, 2.0)),
        ("DotProduct(sigma_0=0.3)", DotProduct(sigma_0=0.3)),
        ("DotProduct() + WhiteKernel()", DotProduct() + WhiteKernel()),
        ("ConstantKernel(2.0) * RBF(0.7)", ConstantKernel(2.0) * RBF(0.7)),
        ("C(2.0) * RBF(0.7)", ConstantKernel(2.0) * RBF(0.7)),
        ("C(constant_value=3.0, constant_value_bounds=(0.1, 10.0))", ConstantKernel(3.0, (0.1, 10.0))),
        ("((RBF(1.0) + (Matern(0.5, nu=0.5))) * (2.0))", (RBF(1.0) + Matern(0.5, nu=0.5)) * 2.0),
        ("RBF(1) + WhiteKernel(0.1) * 2.0", RBF(1) + WhiteKernel(0.1) * 2.0),
        ("2.0 * RBF(1) + 3 * Matern(nu=2.5)", 2.0 * RBF(1) + 3 * Matern(nu=2.5)),
        ("RBF(1) * (WhiteKernel(0.1) + 2.0)", RBF(1) * (WhiteKernel(0.1) + 2.0)),
        ("RBF(length_scale=[1.0, 2.0])", RBF(length_scale=[1.0, 2.0])),
        ("Matern([0.5, 3.0], nu=0.5) + RBF([1, 2])", Matern([0.5, 3.0], nu=0.5) + RBF([1, 2])),
        ('RBF(1.5, length_scale_bounds="fixed")', RBF(1.5, length_scale_bounds="fixed")),
        ("RBF(length_scale_bounds='fixed')", RBF(length_scale_bounds="fixed")),
        ("RBF(2.0, length_scale_bounds=(1e-5, 1e5))", RBF(2.0, length_scale_bounds=(1e-5, 1e5))),
        ("WhiteKernel(noise_level=1e-3, noise_level_bounds=[1e-8, 1E2])", WhiteKernel(1e-3, [1e-8, 1e2])),
        ("2.5e-1 * RBF(3E0)", 0.25 * RBF(3.0)),
        ("2.0", ConstantKernel(2.0)),
        ("  7  ", ConstantKernel(7)),
        ("(1.5)", ConstantKernel(1.5)),
        ("2 * 3 * RBF()", 6 * RBF()),
        ("1 + 2", ConstantKernel(3)),
        ("RBF()", RBF()),
        ("RBF(1.0)\n  + WhiteKernel(0.1)", RBF(1.0) + WhiteKernel(0.1)),
    ],
)
def test_matches_sklearn(expr: str, expected: Kernel) -> None:
    assert_same_kernel(parse_kernel(expr), expected)


def test_precedence_mult_binds_tighter() -> None:
    got = parse_kernel("RBF(1) + WhiteKernel(0.1) * 2.0")
    assert repr(got) == "RBF(length_scale=1) + WhiteKernel(noise_level=0.1) * 1.41**2"
    assert got.get_params()["k2__k2__constant_value"] == 2.0
    # On the diagonal RBF gives 1 and the scaled white noise 0.2.
    np.testing.assert_allclose(np.diag(got(X)), np.full(len(X), 1.2))
    grouped = parse_kernel("(RBF(1) + WhiteKernel(0.1)) * 2.0")
    np.testing.assert_allclose(np.diag(grouped(X)), np.full(len(X), 2.2))


def test_fixed_bounds_have_no_free_hyperparameter() -> None:
    kernel = parse_kernel('RBF(1.5, length_scale_bounds="fixed") + WhiteKernel(0.1)')
    assert kernel.k1.hyperparameter_length_scale.fixed
    assert kernel.theta.shape == (1,)
    np.testing.assert_allclose(kernel.theta, [np.log(0.1)])


def test_anisotropic_length_scale() -> None:
    kernel = parse_kernel("RBF(length_scale=[1.0, 2.0])")
    assert kernel.anisotropic
    assert kernel.get_params()["length_scale"] == [1.0, 2.0]
    # d^2 between X[0] and X[1]: (0.5/1)^2 + (1.3/2)^2 = 0.25 + 0.4225
    np.testing.assert_allclose(kernel(X)[0, 1], np.exp(-0.5 * 0.6725))


def test_result_is_a_fresh_sklearn_kernel_that_can_fit() -> None:
    from sklearn.gaussian_process import GaussianProcessRegressor

    kernel = parse_kernel("1.0 * RBF(1.0) + WhiteKernel(1e-2, noise_level_bounds=(1e-4, 1.0))")
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(20, 1))
    y = np.sin(x).ravel() + rng.normal(scale=0.05, size=20)
    gpr = GaussianProcessRegressor(kernel=kernel, random_state=0).fit(x, y)
    assert gpr.score(x, y) > 0.95
    assert gpr.kernel_.k2.noise_level < 0.1


@pytest.mark.parametrize(
    ("expr", "must_contain"),
    [
        ("__import__('os').system('touch /tmp/pwned_kernel')", ["attribute access", "__import__('os').system"]),
        ("os.system('x')", ["attribute access", "'os.system'"]),
        ("RBF(1.0).__class__", ["attribute access", "RBF(1.0).__class__"]),
        ("Foo(1.0)", ["unknown kernel 'Foo'", "position 1", "ConstantKernel, DotProduct, Matern, RBF, RationalQuadratic, WhiteKernel"]),
        ("RBF(1.0) ** 2", ["'**'", "position 10", "'+' and '*'"]),
        ("RBF(1.0) - WhiteKernel()", ["'-'", "position 10"]),
        ("RBF(1.0) / 2", ["'/'"]),
        ("RBF(1.0) @ RBF(2.0)", ["'@'"]),
        ("lambda: 1", ["lambda"]),
        ("RBF(length=1.0)", ["unknown keyword 'length'", "RBF", "length_scale, length_scale_bounds"]),
        ("Matern(nu=1.5, smoothness=2)", ["unknown keyword 'smoothness'", "length_scale, length_scale_bounds, nu"]),
        ("RBF(1.0", ["position 4", "never closed"]),
        ("RBF(1.0) +", ["invalid kernel expression", "position"]),
        ("", ["empty"]),
        ("   \n ", ["empty"]),
        ("[RBF(1)]", ["list", "[RBF(1)]"]),
        ("(RBF(1), RBF(2))", ["tuple"]),
        ("RBF(1.0)(2)", ["calling 'RBF(1.0)'"]),
        ('"a" * RBF(1)', ["string", '"a"']),
        ('exec("1")', ["unknown kernel 'exec'"]),
        ('eval("1")', ["unknown kernel 'eval'"]),
        ('open("/etc/passwd")', ["unknown kernel 'open'"]),
        ("RBF", ["'RBF'", "must be called"]),
        ("x", ["unknown name 'x'"]),
        ("RBF(x)", ["unknown name 'x'"]),
        ("-RBF(1.0)", ["only to numbers", "RBF(1.0)"]),
        ("~1", ["'~'"]),
        ("not 1", ["'not'"]),
        ("True * RBF()", ["bool", "True"]),
        ("None", ["NoneType", "None"]),
        ("1j * RBF()", ["complex"]),
        ("RBF(1)[0]", ["subscript"]),
        ("RBF(1) if 1 else RBF(2)", ["conditional expression"]),
        ("RBF(1) < RBF(2)", ["comparison"]),
        ("RBF(1) and RBF(2)", ["boolean operator"]),
        ("f'{RBF(1)}'", ["f-string"]),
        ("{1: RBF()}", ["dict"]),
        ("[k for k in RBF()]", ["comprehension"]),
        ("RBF(*[1.0])", ["star unpacking"]),
        ("RBF(**{'length_scale': 1.0})", ["'**' unpacking"]),
        ("RBF(1.0, 2.0, 3.0)", ["too many positional arguments", "length_scale, length_scale_bounds"]),
        ("RBF(1.0, length_scale=2.0)", ["multiple values", "length_scale"]),
        ("RBF(length_scale=1, length_scale=2)", ["'length_scale' given twice"]),
        ("RBF('1.0')", ["string", "'1.0'"]),
        ("RBF(1.0, 'fixed')", ["by keyword", 'length_scale_bounds="fixed"']),
        ("Matern(nu='1.5')", ["string", "nu"]),
        ("Matern(nu='fixed')", ["string", "nu"]),
        ("Matern(nu=0)", ["must be > 0", "nu"]),
        ("RBF(-1.0)", ["must be > 0", "length_scale"]),
        ("WhiteKernel(-0.1)", ["must be >= 0", "noise_level"]),
        ("RBF(length_scale_bounds='free')", ["'free'", '"fixed"']),
        ("RBF(length_scale_bounds=(1.0, 0.1))", ["0 < low <= high"]),
        ("RBF(length_scale_bounds=(0, 1))", ["0 < low <= high"]),
        ("RBF(length_scale_bounds=(1e-5, 1e5, 1))", ["(low, high) pair"]),
        ("RBF(length_scale_bounds=1.0)", ["(low, high) pair"]),
        ("RBF(length_scale_bounds=[[1, 2], [3, 4]])", ["per-feature bounds"]),
        ("RationalQuadratic(length_scale=[1.0, 2.0])", ["only RBF and Matern are anisotropic"]),
        ("DotProduct(sigma_0=[1.0, 2.0])", ["sigma_0 takes a single number"]),
        ("RBF([])", ["empty list"]),
        ("RBF([1.0, 'a'])", ["string", "'a'"]),
        ("RBF([1.0, 2.0]) + Matern([1.0, 2.0, 3.0])", ["3 length scales", "has 2"]),
        ("1e999 * RBF()", ["'1e999'", "not a finite"]),
        ("DotProduct(sigma_0=1e200)", ["scikit-learn rejected", "DotProduct"]),
        ("RBF(1.0) + x.y", ["attribute access", "'x.y'"]),
        ("a\x00b", ["NUL", "position 2"]),
        ("RBF(1.0) " + "+ RBF(1.0) " * 250, ["limit of 2000"]),
        ("+".join(["RBF()"] * 150), ["nested more than 100 levels"]),
        ("(" * 300 + "1" + ")" * 300, ["too many nested parentheses"]),
    ],
)
def test_rejected(expr: str, must_contain: list[str]) -> None:
    with pytest.raises(KernelSyntaxError) as info:
        parse_kernel(expr)
    message = str(info.value)
    assert "\n" not in message
    for fragment in must_contain:
        assert fragment in message, (fragment, message)


def test_import_payload_is_never_executed() -> None:
    if os.path.exists(PWNED):
        os.remove(PWNED)
    with pytest.raises(KernelSyntaxError):
        parse_kernel("__import__('os').system('touch /tmp/pwned_kernel')")
    with pytest.raises(KernelSyntaxError):
        parse_kernel("RBF(1.0) + __import__('os').system('touch /tmp/pwned_kernel')")
    with pytest.raises(KernelSyntaxError):
        parse_kernel("RBF(length_scale=__import__('os').system('touch /tmp/pwned_kernel'))")
    assert not os.path.exists(PWNED)


def test_error_position_attribute() -> None:
    with pytest.raises(KernelSyntaxError) as info:
        parse_kernel("RBF(1.0) + Foo(2)")
    assert info.value.position == 12
    assert "unknown kernel 'Foo' at position 12" in str(info.value)


def test_non_string_is_rejected() -> None:
    with pytest.raises(KernelSyntaxError, match="must be a string, got int"):
        parse_kernel(1)  # type: ignore[arg-type]


def test_does_not_use_eval_or_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("eval/exec must not be called")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    kernel = parse_kernel("1.0 * Matern(length_scale=[1.0, 2.0], nu=2.5) + WhiteKernel(0.1)")
    expected = ConstantKernel(1.0) * Matern(length_scale=[1.0, 2.0], nu=2.5) + WhiteKernel(0.1)
    monkeypatch.undo()
    assert_same_kernel(kernel, expected)


@pytest.mark.parametrize("expr", ["-1 * RBF(1.0)", "RBF(1.0) * -0.5", "-3", "0 * RBF(1.0)", "C(-2.0) * RBF()"])
def test_rejects_non_positive_constant_factors(expr: str) -> None:
    # A constant factor is a variance: sklearn would optimise log(-1) = NaN and fail late.
    with pytest.raises(KernelSyntaxError, match="must be > 0"):
        parse_kernel(expr)
