"""The package's shape: the import graph follows the layer order, has no cycles, and no module
reaches into another's private names.

Read from the source with ``ast`` (every import, including those inside functions), so a lazy
import cannot hide an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "distill"

#: lowest first; a module may import its own layer or a lower one, never a higher one
LAYERS: list[tuple[str, list[str]]] = [
    ("foundation", ["distill.version", "distill.errors", "distill.registry", "distill.safeload",
                    "distill.interrupts", "distill.process_state", "distill.progress", "distill.seeding",
                    "distill.mlflow_env"]),
    ("components", ["distill.data", "distill.metrics", "distill.losses", "distill.students"]),
    ("teachers", ["distill.teachers"]),
    ("config", ["distill.config"]),
    ("engine", ["distill.engine"]),
    ("outputs", ["distill.outputs"]),
    ("experiment", ["distill.experiment"]),
    ("api", ["distill.api", "distill.estimator", "distill.catalog"]),
    ("entry points", ["distill", "distill.cli", "distill.__main__"]),
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _resolve(target: str) -> str:
    """The longest known module that ``target`` names or lies in (``distill.data.sources.Dataset`` ->
    ``distill.data.sources``)."""
    while target not in MODULES and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def _imports(name: str) -> list[tuple[str, list[str], int]]:
    """``(module imported, names taken from it, line)`` for every distill import in module ``name``."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(_resolve(a.name), [], node.lineno) for a in node.names if a.name.split(".")[0] == "distill"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "distill":
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in MODULES:
                    found.append((submodule, [], node.lineno))
                else:
                    found.append((_resolve(node.module), [alias.name], node.lineno))
    return found


def _layer(name: str) -> int:
    best, rank = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    return rank


def test_every_module_has_a_layer() -> None:
    assert [name for name in MODULES if _layer(name) < 0] == []


def test_no_module_imports_a_higher_layer() -> None:
    upward = []
    for name in MODULES:
        for target, _, line in _imports(name):
            if target != name and _layer(target) > _layer(name):
                upward.append(f"{name}:{line} ({LAYERS[_layer(name)][0]}) imports {target} ({LAYERS[_layer(target)][0]})")
    assert upward == []


def test_the_import_graph_has_no_cycles() -> None:
    graph = {name: {t for t, _, _ in _imports(name) if t != name} for name in MODULES}
    # a package's __init__ that imports its own submodules (a registry loading its built-ins) is the
    # one allowed back edge: the submodules import the registry from the package, which is already loading
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith(node + "."):
                continue  # package -> its own submodule
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert cycles == [], "\n".join(cycles)


def test_no_private_name_is_imported_from_another_module() -> None:
    reached = [
        f"{name}:{line} takes {target}.{taken}"
        for name in MODULES
        for target, names, line in _imports(name)
        for taken in names
        if taken.startswith("_") and target != name and not taken.startswith("__")
    ]
    assert reached == []


def _exported(name: str) -> list[str]:
    tree = ast.parse(MODULES[name].read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            value = ast.literal_eval(node.value)
            return list(value)
    return []


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n != "distill"))
def test_every_exported_name_is_used_outside_its_definition(name: str) -> None:
    """A name a module exports is used by another module of the package, by the public API, or by the
    module itself beyond its definition (a registry's built-ins): exports only tests use are dead code."""
    import distill

    public = set(distill.__all__)
    text = {other: path.read_text() for other, path in MODULES.items()}
    unused = []
    for exported in _exported(name):
        if exported in public:
            continue
        elsewhere = any(exported in body for other, body in text.items() if other != name)
        own = text[name].count(exported) - text[name].count(f'"{exported}"')
        if not elsewhere and own <= 1:
            unused.append(exported)
    assert unused == []


def test_every_function_of_the_engine_is_under_60_lines() -> None:
    """The fit loop stays readable: each phase (set-up, step, end of epoch, finish) and every helper of
    the engine fits on a screen (issue 17)."""
    long = []
    for name, path in MODULES.items():
        if not name.startswith("distill.engine"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                if node.end_lineno is not None and node.end_lineno - first + 1 >= 60:
                    long.append(f"{name}.{node.name}: {node.end_lineno - first + 1} lines")
    assert long == []
