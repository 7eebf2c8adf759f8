"""Safe parsing of Gaussian-process kernel expressions into scikit-learn kernels.

A GP teacher's kernel is written in the experiment config as a short string such
as ``"1.0 * Matern(length_scale=2.0, nu=1.5) + WhiteKernel(0.1)"``.
:func:`parse_kernel` turns that string into the equivalent
:mod:`sklearn.gaussian_process.kernels` object *without* ``eval``/``exec``/``compile``:
the text is parsed with :func:`ast.parse` (which only builds a syntax tree) and the
tree is walked by hand, accepting a small whitelist of node types and kernel names.
Anything else is a :class:`KernelSyntaxError` that names the offending token.

Grammar (``*`` binds tighter than ``+``; parentheses group)::

    expr     := term ("+" term)*
    term     := factor ("*" factor)*
    factor   := "(" expr ")" | kernel | number
    kernel   := NAME "(" [args] ")"          NAME in KERNELS
    args     := value ("," value)* ("," NAME "=" kwvalue)*  |  NAME "=" kwvalue ...
    value    := number | "[" number, ... "]" | "(" number, ... ")"
    kwvalue  := value | "fixed"              ("fixed" only for *_bounds parameters)
    number   := ["+" | "-"] INT | FLOAT      (scientific notation allowed: 1e-3)

Example:
    >>> from distill.teachers.kernels import parse_kernel
    >>> parse_kernel("1.0 * RBF(length_scale=2.0) + WhiteKernel(0.1)")
    1**2 * RBF(length_scale=2) + WhiteKernel(noise_level=0.1)
"""

from __future__ import annotations

import ast
import inspect
import math
import types
import warnings
from collections.abc import Mapping
from typing import Any, Union

import numpy as np
from sklearn.gaussian_process.kernels import (
    RBF,
    ConstantKernel,
    DotProduct,
    Kernel,
    Matern,
    RationalQuadratic,
    WhiteKernel,
)

__all__ = ["parse_kernel", "KernelSyntaxError", "KERNELS"]

#: Kernel names accepted in an expression, mapped to their scikit-learn class.
#: ``C`` is the usual short alias of :class:`~sklearn.gaussian_process.kernels.ConstantKernel`.
KERNELS: Mapping[str, type[Kernel]] = types.MappingProxyType(
    {
        "C": ConstantKernel,
        "ConstantKernel": ConstantKernel,
        "DotProduct": DotProduct,
        "Matern": Matern,
        "RBF": RBF,
        "RationalQuadratic": RationalQuadratic,
        "WhiteKernel": WhiteKernel,
    }
)

#: Longest expression accepted, in characters.
MAX_EXPRESSION_LENGTH = 2000
#: Deepest nesting of operators/parentheses accepted while walking the tree.
MAX_DEPTH = 100

_ALLOWED_NAMES = ", ".join(sorted(KERNELS))
_HINT = "write kernels as Name(args) combined with '+' and '*', e.g. '1.0 * RBF(1.0) + WhiteKernel(0.1)'"

# Kernels whose ``length_scale`` may be a list (one length scale per input feature).
_ANISOTROPIC = (RBF, Matern)
# Hyperparameters that must be strictly positive / non-negative.
_POSITIVE = frozenset({"length_scale", "nu", "alpha"})
_NON_NEGATIVE = frozenset({"noise_level", "sigma_0"})

_OPERATORS: dict[type[ast.AST], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
    ast.MatMult: "@",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.BitAnd: "&",
}
_UNARY: dict[type[ast.AST], str] = {ast.USub: "-", ast.UAdd: "+", ast.Invert: "~", ast.Not: "not"}
_NODE_WORDS: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscript",
    ast.Lambda: "lambda",
    ast.Name: "name",
    ast.List: "list",
    ast.Tuple: "tuple",
    ast.Dict: "dict",
    ast.Set: "set",
    ast.Compare: "comparison",
    ast.BoolOp: "boolean operator",
    ast.IfExp: "conditional expression",
    ast.JoinedStr: "f-string",
    ast.FormattedValue: "f-string",
    ast.ListComp: "comprehension",
    ast.SetComp: "comprehension",
    ast.DictComp: "comprehension",
    ast.GeneratorExp: "generator expression",
    ast.Starred: "star unpacking",
    ast.NamedExpr: "assignment expression",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Slice: "slice",
}

Number = Union[int, float]
_Value = Union[Kernel, int, float]


class KernelSyntaxError(ValueError):
    """A kernel expression is malformed or uses something outside the whitelist.

    The message is a single line that names the problem, the offending token and
    its 1-based character position when known, and how to fix it.

    Example:
        >>> try:
        ...     parse_kernel("Foo(1.0)")
        ... except KernelSyntaxError as err:
        ...     print(err)  # doctest: +ELLIPSIS
        unknown kernel 'Foo' at position 1; allowed: C, ConstantKernel, DotProduct, ...
    """

    def __init__(self, message: str, position: int | None = None) -> None:
        self.position = position
        super().__init__(" ".join(message.split()))


def parse_kernel(expr: str) -> Kernel:
    """Parse a kernel expression into a scikit-learn kernel, without evaluating code.

    Terms are whitelisted kernel calls (see :data:`KERNELS`) or plain numbers,
    joined by ``+`` and ``*`` with the usual precedence and grouped with
    parentheses. A number next to a kernel becomes a ``ConstantKernel`` exactly as
    in scikit-learn (``2.0 * RBF()`` is ``ConstantKernel(2.0) * RBF()``), a bare
    number is ``ConstantKernel(number)``, and numbers combined only with numbers
    are folded with ordinary arithmetic. Call arguments are numbers, lists/tuples
    of numbers (``length_scale=[1.0, 2.0]``, ``length_scale_bounds=(1e-5, 1e5)``)
    or ``"fixed"`` for a ``*_bounds`` keyword. Keyword names must be parameters of
    the kernel class.

    Args:
        expr: The kernel expression, at most :data:`MAX_EXPRESSION_LENGTH`
            characters. Newlines and tabs count as spaces.

    Returns:
        The scikit-learn kernel the expression describes.

    Raises:
        KernelSyntaxError: If the text is empty, too long, not valid syntax, or uses
            a name, operator, value or keyword outside the grammar, or if
            scikit-learn rejects the kernel's hyperparameters.

    Example:
        >>> parse_kernel("1.0 * Matern(length_scale=2.0, nu=1.5) + WhiteKernel(0.1)")
        1**2 * Matern(length_scale=2, nu=1.5) + WhiteKernel(noise_level=0.1)
        >>> parse_kernel('RBF(length_scale=[1.0, 2.0], length_scale_bounds="fixed")')
        RBF(length_scale=[1, 2])
    """
    if not isinstance(expr, str):
        raise KernelSyntaxError(
            f"kernel expression must be a string, got {type(expr).__name__}; "
            "write it as text, e.g. '1.0 * RBF(1.0)'"
        )
    if len(expr) > MAX_EXPRESSION_LENGTH:
        raise KernelSyntaxError(
            f"kernel expression is {len(expr)} characters long, more than the limit of "
            f"{MAX_EXPRESSION_LENGTH}; shorten it"
        )
    # Same length, so every position reported below is a position in ``expr``.
    text = expr.replace("\r", " ").replace("\n", " ").replace("\t", " ")
    stripped = text.lstrip()
    if not stripped.strip():
        raise KernelSyntaxError(f"kernel expression is empty; {_HINT}")
    nul = stripped.find("\x00")
    if nul >= 0:
        lead = len(text) - len(stripped)
        raise KernelSyntaxError(
            f"kernel expression contains a NUL character at position {lead + nul + 1}; remove it",
            lead + nul + 1,
        )
    return _Parser(text).parse()


class _Parser:
    """Walks the syntax tree of one expression and builds the kernel."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lead = len(text) - len(text.lstrip())
        self.source = text.strip()
        self.anisotropic: tuple[int, str, int] | None = None  # (n_features, kernel name, position)

    # -- positions and snippets ---------------------------------------------------------

    def _position(self, node: ast.AST) -> int:
        """1-based character position of ``node`` in the original expression."""
        col = getattr(node, "col_offset", 0) or 0
        chars = len(self.source.encode("utf-8")[:col].decode("utf-8", errors="ignore"))
        return self.lead + chars + 1

    def _snippet(self, node: ast.AST) -> str:
        segment = ast.get_source_segment(self.source, node) or type(node).__name__
        if len(segment) > 40:
            segment = segment[:37] + "..."
        return repr(segment)

    def _error(self, message: str, node: ast.AST | None = None) -> KernelSyntaxError:
        return KernelSyntaxError(message, self._position(node) if node is not None else None)

    def _not_allowed(self, node: ast.AST) -> KernelSyntaxError:
        if isinstance(node, ast.Name):
            if node.id in KERNELS:
                return self._error(
                    f"kernel {node.id!r} at position {self._position(node)} must be called; "
                    f"write {node.id}() or {node.id}(args)",
                    node,
                )
            return self._error(
                f"unknown name {node.id!r} at position {self._position(node)}; names are only "
                f"allowed as called kernels: {_ALLOWED_NAMES}",
                node,
            )
        if isinstance(node, ast.Constant):
            if isinstance(node.value, str):
                word = "string"
                way_out = 'strings are only valid as the keyword value "fixed" of a *_bounds parameter'
            else:
                word = f"{type(node.value).__name__} constant"
                way_out = "only int and float numbers are allowed"
            return self._error(
                f"{word} {self._snippet(node)} at position {self._position(node)} is not allowed "
                f"here; {way_out}",
                node,
            )
        word = _NODE_WORDS.get(type(node), type(node).__name__)
        return self._error(
            f"{word} {self._snippet(node)} at position {self._position(node)} is not allowed "
            f"in a kernel expression; {_HINT}",
            node,
        )

    # -- entry point ----------------------------------------------------------------------

    def parse(self) -> Kernel:
        try:
            tree = ast.parse(self.source, mode="eval")
        except SyntaxError as err:
            offset = err.offset if err.offset and (err.lineno or 1) == 1 else None
            if not offset and (err.lineno or 1) == 1:
                # CPython reports offset 0 when the text ends in the middle of an expression.
                offset = len(self.source)
            where = f" at position {self.lead + offset}" if offset else ""
            token = ""
            if offset and offset - 1 < len(self.source):
                token = f" near {self.source[offset - 1 : offset + 19]!r}"
            msg = err.msg or "invalid syntax"
            raise KernelSyntaxError(
                f"invalid kernel expression{where}{token}: {msg}; {_HINT}",
                self.lead + offset if offset else None,
            ) from None
        except (ValueError, RecursionError, MemoryError) as err:
            raise KernelSyntaxError(f"invalid kernel expression: {err}; {_HINT}") from None
        if not isinstance(tree, ast.Expression):  # pragma: no cover - mode="eval" guarantees it
            raise KernelSyntaxError(f"invalid kernel expression; {_HINT}")
        result = self._expr(tree.body, 0)
        kernel = result if isinstance(result, Kernel) else ConstantKernel(result)
        for name, value in kernel.get_params(deep=True).items():
            # A constant factor is a variance: scikit-learn optimises its log, so it must be > 0.
            if name.endswith("constant_value") and isinstance(value, (int, float)) and not value > 0:
                raise KernelSyntaxError(
                    f"constant factors in a kernel expression must be > 0, got {value}; {_HINT}"
                )
        return kernel

    # -- expressions ----------------------------------------------------------------------

    def _expr(self, node: ast.AST, depth: int) -> _Value:
        if depth > MAX_DEPTH:
            raise self._error(
                f"kernel expression is nested more than {MAX_DEPTH} levels deep at position "
                f"{self._position(node)}; simplify it",
                node,
            )
        if isinstance(node, ast.BinOp):
            return self._binop(node, depth)
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, (ast.Constant, ast.UnaryOp)):
            return self._number(node)
        raise self._not_allowed(node)

    def _operator_position(self, node: ast.BinOp, symbol: str) -> int:
        """Best-effort 1-based position of the operator between the two operands."""
        data = self.source.encode("utf-8")
        start = getattr(node.left, "end_col_offset", None) or 0
        stop = getattr(node.right, "col_offset", None) or len(data)
        found = data.find(symbol.encode(), start, stop)
        col = found if found >= 0 else node.col_offset
        return self.lead + len(data[:col].decode("utf-8", errors="ignore")) + 1

    def _binop(self, node: ast.BinOp, depth: int) -> _Value:
        op = type(node.op)
        if op not in (ast.Add, ast.Mult):
            symbol = _OPERATORS.get(op, op.__name__)
            position = self._operator_position(node, symbol)
            raise KernelSyntaxError(
                f"operator {symbol!r} at position {position} is not allowed in a kernel "
                "expression; combine kernels with '+' and '*' only",
                position,
            )
        left = self._expr(node.left, depth + 1)
        right = self._expr(node.right, depth + 1)
        if not isinstance(left, Kernel) and not isinstance(right, Kernel):
            value = left + right if op is ast.Add else left * right
            return self._finite(value, node)
        # Kernel.__add__/__mul__ (and __radd__/__rmul__) wrap numbers in ConstantKernel.
        return left + right if op is ast.Add else left * right

    def _number(self, node: ast.AST) -> Number:
        """A signed int/float literal; anything else is rejected."""
        sign = 1
        inner = node
        while isinstance(inner, ast.UnaryOp):
            if not isinstance(inner.op, (ast.USub, ast.UAdd)):
                symbol = _UNARY.get(type(inner.op), type(inner.op).__name__)
                raise self._error(
                    f"unary operator {symbol!r} at position {self._position(inner)} is not "
                    "allowed; only '-' and '+' in front of a number are",
                    inner,
                )
            if isinstance(inner.op, ast.USub):
                sign = -sign
            inner = inner.operand
        if isinstance(inner, ast.Constant) and isinstance(inner.value, (int, float)) and not isinstance(inner.value, bool):
            return self._finite(sign * inner.value, node)
        if inner is not node:
            raise self._error(
                f"unary '-'/'+' at position {self._position(node)} applies only to numbers, "
                f"not to {self._snippet(inner)}; {_HINT}",
                node,
            )
        raise self._not_allowed(node)

    def _finite(self, value: Number, node: ast.AST) -> Number:
        try:
            ok = math.isfinite(float(value))
        except OverflowError:
            ok = False
        if not ok:
            raise self._error(
                f"number {self._snippet(node)} at position {self._position(node)} is not a "
                "finite float; use a smaller value",
                node,
            )
        return value

    # -- kernel calls ---------------------------------------------------------------------

    def _call(self, node: ast.Call) -> Kernel:
        func = node.func
        if not isinstance(func, ast.Name):
            if isinstance(func, ast.Attribute):
                raise self._not_allowed(func)
            raise self._error(
                f"calling {self._snippet(func)} at position {self._position(node)} is not "
                f"allowed; only kernel names can be called ({_ALLOWED_NAMES})",
                node,
            )
        name = func.id
        cls = KERNELS.get(name)
        if cls is None:
            raise self._error(
                f"unknown kernel {name!r} at position {self._position(func)}; allowed: {_ALLOWED_NAMES}",
                func,
            )
        signature = inspect.signature(cls)
        params = [
            p.name
            for p in signature.parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.POSITIONAL_ONLY)
        ]
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise self._not_allowed(arg)
        keywords: dict[str, ast.AST] = {}
        for kw in node.keywords:
            if kw.arg is None:
                raise self._error(
                    f"'**' unpacking at position {self._position(kw)} is not allowed "
                    f"in {name}(...); write keywords as name=value",
                    kw,
                )
            if kw.arg not in params:
                raise self._error(
                    f"unknown keyword {kw.arg!r} for {name} at position {self._position(kw)}; "
                    f"valid keywords: {', '.join(params)}",
                    kw,
                )
            if kw.arg in keywords:
                raise self._error(
                    f"keyword {kw.arg!r} given twice to {name} at position {self._position(kw)}; "
                    "keep one",
                    kw,
                )
            keywords[kw.arg] = kw.value
        try:
            bound = signature.bind(*node.args, **keywords)
        except TypeError as err:
            raise self._error(
                f"bad arguments for {name} at position {self._position(node)}: {err}; "
                f"{name} takes {', '.join(params)}",
                node,
            ) from None
        positional = {id(arg) for arg in node.args}
        values = {
            param: self._argument(name, cls, param, arg, id(arg) in positional)
            for param, arg in bound.arguments.items()
        }
        return self._build(name, cls, values, node)

    def _argument(self, name: str, cls: type[Kernel], param: str, node: ast.AST, positional: bool) -> Any:
        where = f"{name}({param}=...) at position {self._position(node)}"
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value == "fixed" and param.endswith("_bounds"):
                if positional:
                    raise self._error(
                        f"string {self._snippet(node)} at position {self._position(node)} must be "
                        f'given by keyword; write {param}="fixed"',
                        node,
                    )
                return "fixed"
            if param.endswith("_bounds"):
                raise self._error(
                    f"string {self._snippet(node)} for {where} is not allowed; use \"fixed\" or "
                    "a (low, high) pair such as (1e-5, 1e5)",
                    node,
                )
            raise self._error(
                f"string {self._snippet(node)} for {where} is not allowed; {param} takes a number"
                + (" or a list of numbers" if self._anisotropic_ok(cls, param) else ""),
                node,
            )
        if param.endswith("_bounds"):
            if not isinstance(node, (ast.Tuple, ast.List)) or len(node.elts) != 2:
                raise self._error(
                    f"{where} must be \"fixed\" or a (low, high) pair of numbers, got "
                    f"{self._snippet(node)}",
                    node,
                )
            for elt in node.elts:
                if isinstance(elt, (ast.Tuple, ast.List)):
                    raise self._error(
                        f"per-feature bounds {self._snippet(node)} for {where} are not supported; "
                        "give one (low, high) pair or \"fixed\"",
                        node,
                    )
            low, high = (self._number(elt) for elt in node.elts)
            if not 0 < low <= high:
                raise self._error(
                    f"bounds {self._snippet(node)} for {where} must satisfy 0 < low <= high",
                    node,
                )
            return (low, high) if isinstance(node, ast.Tuple) else [low, high]
        if isinstance(node, (ast.Tuple, ast.List)):
            if not self._anisotropic_ok(cls, param):
                why = " for this kernel (only RBF and Matern are anisotropic)" if param == "length_scale" else ""
                raise self._error(
                    f"{self._snippet(node)} for {where} is not allowed; {param} takes a single number{why}",
                    node,
                )
            if not node.elts:
                raise self._error(f"empty list for {where}; give one length scale per feature", node)
            items = [self._check_sign(param, self._number(elt), elt, where) for elt in node.elts]
            n_features = len(items)
            if self.anisotropic is None:
                self.anisotropic = (n_features, name, self._position(node))
            elif self.anisotropic[0] != n_features:
                other_n, other_name, other_pos = self.anisotropic
                raise self._error(
                    f"{where} has {n_features} length scales but {other_name} at position "
                    f"{other_pos} has {other_n}; anisotropic kernels must agree on the number of features",
                    node,
                )
            return tuple(items) if isinstance(node, ast.Tuple) else items
        return self._check_sign(param, self._number(node), node, where)

    @staticmethod
    def _anisotropic_ok(cls: type[Kernel], param: str) -> bool:
        return param == "length_scale" and cls in _ANISOTROPIC

    def _check_sign(self, param: str, value: Number, node: ast.AST, where: str) -> Number:
        if param in _POSITIVE and not value > 0:
            raise self._error(f"{where} must be > 0, got {self._snippet(node)}", node)
        if param in _NON_NEGATIVE and not value >= 0:
            raise self._error(f"{where} must be >= 0, got {self._snippet(node)}", node)
        return value

    def _build(self, name: str, cls: type[Kernel], values: dict[str, Any], node: ast.Call) -> Kernel:
        """Construct the kernel and make scikit-learn validate it on a tiny input."""
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                kernel = cls(**values)
                kernel.hyperparameters  # noqa: B018 - builds and validates the Hyperparameter objects
                kernel.theta  # noqa: B018
                kernel.bounds  # noqa: B018
                scale = values.get("length_scale")
                n_features = len(scale) if isinstance(scale, (list, tuple)) else 1
                x = np.arange(2 * n_features, dtype=float).reshape(2, n_features) / max(n_features, 1)
                gram = np.asarray(kernel(x))
        except Exception as err:  # noqa: BLE001 - any sklearn rejection is a user error here
            if isinstance(err, OverflowError):
                first = "a value is too large to compute with"
            else:
                first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise self._error(
                f"scikit-learn rejected {self._snippet(node)} at position {self._position(node)}: "
                f"{first}; fix the arguments of {name}",
                node,
            ) from None
        if not np.all(np.isfinite(gram)):
            raise self._error(
                f"{self._snippet(node)} at position {self._position(node)} gives non-finite kernel "
                f"values; use smaller hyperparameters for {name}",
                node,
            )
        return kernel
