"""Write the reference parts of docs/ from the code, so they cannot drift from it.

* docs/configuration.md, between ``<!-- generated:config:begin -->`` and ``<!-- generated:config:end -->``:
  every experiment-file key with its type, default, allowed values and limits, read from the pydantic
  models of ``distill/config.py`` (and the built-in students' constructor signatures), and its meaning
  from ``tools/config_keys.py``.
* docs/outputs.md, between ``<!-- generated:summary:begin -->`` and ``<!-- generated:summary:end -->``:
  the ``summary.json`` schema, read from ``distill/outputs/summary_schema.py``.

Run from the repository root::

    python tools/generate_docs.py           # rewrite the generated sections
    python tools/generate_docs.py --check   # exit 1 naming each stale file; writes nothing

tests/test_generated_docs.py fails when the committed files differ from what this writes.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from config_keys import DESCRIPTIONS  # noqa: E402

from distill.config import Config, sweepable_keys  # noqa: E402
from distill.outputs.summary_schema import CompletedSummary, InterruptedSummary  # noqa: E402
from distill.students import STUDENTS  # noqa: E402

COMMAND = "python tools/generate_docs.py"
#: the built-in students whose own arguments the reference lists (plugins document their own)
BUILTIN_STUDENTS = ("mlp", "cnn")
#: constructor arguments every student takes from the data, not from the config
DATA_ARGUMENTS = ("in_features", "in_shape", "num_outputs")


@dataclass(frozen=True)
class Section:
    """A generated block of one documentation file."""

    path: Path
    name: str
    render: Callable[[], str]


# --------------------------------------------------------------------------- markdown helpers


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def code(text: str) -> str:
    """Inline code, with a literal backtick handled."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def number(value: float) -> str:
    """A limit as people read it: thousands separated, whole floats without their ``.0``."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        value = int(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    return f"{value:g}"


def toml_literal(value: Any) -> str:
    """``value`` as a TOML inline literal (what a user would write in the file)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, BaseModel):
        short = getattr(value, "name", None)  # a candidate teacher: its shorthand name
        if isinstance(short, str):
            return toml_literal(short)
        return toml_literal(value.model_dump(mode="json", exclude_none=True))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = (f"{k if re.fullmatch(r'[A-Za-z0-9_-]+', k) else json.dumps(k)} = {toml_literal(v)}"
                 for k, v in value.items())
        return "{ " + ", ".join(items) + " }"
    raise TypeError(f"no TOML literal for {value!r}")


# --------------------------------------------------------------------------- types


def _arguments(annotation: Any) -> tuple[Any, ...]:
    return typing.get_args(annotation)


def _strip(annotation: Any) -> Any:
    """``Annotated[int, Strict()]`` -> ``int``."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = _arguments(annotation)[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _takes_shorthand(model: type[BaseModel]) -> bool:
    """Whether a table model also accepts another form (a ``mode="before"`` model validator: a name)."""
    validators = model.__pydantic_decorators__.model_validators.values()
    return any(v.info.mode == "before" for v in validators)


def _union_members(annotation: Any) -> list[Any]:
    annotation = _strip(annotation)
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return [_strip(a) for a in _arguments(annotation)]
    return [annotation]


def config_type(annotation: Any) -> str:
    """A config key's type in words: ``integer``, ``number or "auto"``, ``list of numbers``, ..."""
    members = [m for m in _union_members(annotation) if m is not type(None)]
    if {int, float} <= set(members):
        members = ["number" if m is int else m for m in members if m is not float]
    words: list[str] = []
    for member in members:
        word = _config_word(member)
        if word not in words:
            words.append(word)
    return " or ".join(words)


def _config_word(member: Any) -> str:
    if member == "number":
        return "number"
    origin = typing.get_origin(member)
    if origin is Literal:
        values = _arguments(member)
        return " or ".join(json.dumps(v) for v in values) if len(values) == 1 else "string"
    if origin is list:
        inner = config_type(_arguments(member)[0])
        if typing.get_origin(_strip(_arguments(member)[0])) is Literal:
            return "list of strings"
        if inner.startswith("table"):
            return "list of " + ("names or tables" if "string" in inner else "tables")
        return f"list of {inner}s" if " " not in inner else f"list of ({inner})"
    if origin is dict:
        return "table"
    if _is_model(member):
        return "table or string" if _takes_shorthand(member) else "table"
    return {str: "string", int: "integer", float: "float", bool: "boolean"}.get(member, str(member))


def literal_values(annotation: Any) -> list[Any]:
    """The allowed values of a Literal (also inside Optional, Union or a list), in order."""
    found: list[Any] = []
    for member in _union_members(annotation):
        if typing.get_origin(member) is list:
            found += literal_values(_arguments(member)[0])
        elif typing.get_origin(member) is Literal:
            found += [v for v in _arguments(member) if v not in found]
    return found


_BOUNDS: list[tuple[type, str, str]] = [
    (annotated_types.Ge, "ge", "≥"), (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "≤"), (annotated_types.Lt, "lt", "<"),
]


def limits(field: FieldInfo) -> list[str]:
    """The field's numeric bounds: ``≥ 1``, ``≤ 1,000,000``."""
    found = []
    for item in field.metadata:
        for kind, attribute, sign in _BOUNDS:
            if isinstance(item, kind):
                found.append(f"{sign} {number(getattr(item, attribute))}")
    return found


# --------------------------------------------------------------------------- config reference


@dataclass(frozen=True)
class KeyDoc:
    """One row of the configuration reference."""

    key: str
    type: str
    default: str
    allowed: str
    description: str


def describe(key: str, field: FieldInfo | None = None) -> str:
    """A key's meaning: the model's own ``description``, else ``tools/config_keys.py``'s."""
    if field is not None and field.description:
        return field.description
    return DESCRIPTIONS.get(key, "")


def key_doc(key: str, field: FieldInfo, value: Any) -> KeyDoc:
    """The row of one config key: its type, its default (``value``, from a default Config), and its limits."""
    annotation = field.annotation
    allowed = [code(json.dumps(v)) for v in literal_values(annotation)]
    allowed_text = " · ".join(allowed)
    if typing.get_origin(_strip(annotation)) is list and allowed:
        allowed_text = "each of " + allowed_text
    allowed_text = ", ".join(p for p in [allowed_text, *limits(field)] if p)
    model = next((m for m in _union_members(annotation) if _is_model(m)), None)
    default = "unset" if value is None else code(toml_literal(value))
    description = describe(key, field)
    if model is not None and value is not None:
        default = f"[`[{key}]`](#{anchor(key)})"
        description = description or f"the keys of [`[{key}]`](#{anchor(key)})"
    return KeyDoc(key, config_type(annotation), default, allowed_text, description)


def anchor(key: str) -> str:
    """The GitHub anchor of a section heading ``### `[key]` ``."""
    return re.sub(r"[^a-z0-9_-]", "", key.lower().replace(" ", "-"))


@dataclass(frozen=True)
class Table:
    """A table of the config: its dotted name, what the model's docstring says of it, its keys."""

    name: str
    intro: str
    rows: list[KeyDoc]


def docstring(model: type[BaseModel], first_paragraph: bool = False) -> str:
    """A model's docstring as one Markdown line (reST's double backticks made single)."""
    doc = inspect.getdoc(model) or ""
    if first_paragraph:
        doc = doc.split("\n\n")[0]
    return " ".join(doc.split()).replace("``", "`")


def config_tables(model: type[BaseModel], instance: BaseModel, prefix: str = "") -> Iterator[Table]:
    """The tables of ``model`` depth first: its own scalar keys, then each nested table."""
    rows: list[KeyDoc] = []
    nested: list[tuple[str, type[BaseModel], BaseModel]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        value = getattr(instance, name)
        members = _union_members(field.annotation)
        inner = next((m for m in members if _is_model(m)), None)
        item = _arguments(members[0])[0] if typing.get_origin(members[0]) is list else None
        if inner is not None and not prefix and not _takes_shorthand(inner):
            nested.append((key, inner, value))  # a section of the file: [data], [train], ...
            continue
        rows.append(key_doc(key, field, value))
        if inner is not None:
            nested.append((key, inner, value if value is not None else inner.model_validate({})))
        elif item is not None and _is_model(item):
            nested.append((f"{key}[]", item, item.model_validate({})))
    if rows:
        yield Table(prefix.rstrip(".") or "top level", docstring(model, first_paragraph=True) if prefix else "", rows)
    for key, inner, value in nested:
        yield from config_tables(inner, value, f"{key}.")


def student_rows() -> list[list[str]]:
    """``[student]`` keys the built-in students take: read from their constructors."""
    rows = []
    for arch in BUILTIN_STUDENTS:
        cls = STUDENTS.get(arch)
        hints = typing.get_type_hints(cls.__init__)
        for name, parameter in inspect.signature(cls).parameters.items():
            if name in DATA_ARGUMENTS:
                continue
            annotation = hints.get(name, Any)
            default = parameter.default
            default_text = code(toml_literal(list(default) if isinstance(default, tuple) else default))
            values = " · ".join(code(json.dumps(v)) for v in literal_values(annotation))
            rows.append([code(f"student.{name}"), code(arch), _python_type(annotation), default_text, values,
                         DESCRIPTIONS.get(f"{arch}.{name}", "")])
    return rows


def _python_type(annotation: Any) -> str:
    """A constructor argument's type in words (``Sequence[int]`` -> list of integers)."""
    members = [m for m in _union_members(annotation) if m is not type(None)]
    words = []
    for member in members:
        origin = typing.get_origin(member)
        if origin is Literal:
            words.append("string")
        elif origin is not None and isinstance(origin, type) and issubclass(origin, Sequence):
            words.append(f"list of {_python_type(_arguments(member)[0])}s")
        else:
            words.append({int: "integer", float: "number", str: "string", bool: "boolean"}.get(member, str(member)))
    return " or ".join(dict.fromkeys(words))


def config_keys() -> list[str]:
    """Every documented key: the models' and the built-in students' (``mlp.hidden``, ...)."""
    keys = [row.key for t in config_tables(Config, Config()) for row in t.rows]
    for arch in BUILTIN_STUDENTS:
        keys += [f"{arch}.{name}" for name in inspect.signature(STUDENTS.get(arch)).parameters
                 if name not in DATA_ARGUMENTS]
    return keys


def config_reference() -> str:
    """The generated part of docs/configuration.md."""
    parts = [f"<!-- generated by {COMMAND} from distill/config.py and tools/config_keys.py: edit those -->"]
    header = ["key", "type", "default", "allowed", "meaning"]
    for t in config_tables(Config, Config()):
        title = ("Top level" if t.name == "top level" else
                 f"Each table of `{t.name[:-2]}`" if t.name.endswith("[]") else f"`[{t.name}]`")
        parts.append(f"### {title}")
        if t.intro:
            parts.append(t.intro)
        rows = [[code(r.key), r.type, r.default, r.allowed, r.description] for r in t.rows]
        parts.append(table(header, rows))
    parts.append("### Arguments of the built-in students")
    parts.append("Every other key of `[student]` goes to the architecture's constructor. The built-in ones take:")
    parts.append(table(["key", "student", "type", "default", "allowed", "meaning"], student_rows()))
    parts.append("### Keys a sweep may take")
    parts.append("A list in place of one of these keys sweeps it, one key per experiment, and `tune.space` may "
                 "search them: " + ", ".join(code(k) for k in sweepable_keys()) + " (and the keys of "
                 "`student.init.first`). A student's own arguments take one value per experiment (some of them "
                 "are lists already); `tune.space` may search the scalar ones, e.g. `student.dropout`.")
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- summary.json schema


def summary_models() -> list[type[BaseModel]]:
    """The summary's models, each once, in the order a reader meets them."""
    found: list[type[BaseModel]] = []

    def visit(model: type[BaseModel]) -> None:
        if model in found:
            return
        found.append(model)
        for field in model.model_fields.values():
            for inner in _models_in(field.annotation):
                visit(inner)

    for root in (CompletedSummary, InterruptedSummary):
        visit(root)
    return found


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    annotation = _strip(annotation)
    if _is_model(annotation):
        yield annotation
    for argument in _arguments(annotation):
        yield from _models_in(argument)


_JSON_SCALARS: dict[Any, tuple[str, str]] = {
    str: ("string", "strings"), int: ("integer", "integers"), float: ("number", "numbers"),
    bool: ("boolean", "booleans"),
}


def json_type(annotation: Any, nullable: bool = True, plural: bool = False) -> str:
    """A summary value's JSON type, with links to the objects' tables (``nullable``: say ``or null``)."""
    members = _union_members(annotation)
    words = []
    for member in (m for m in members if m is not type(None)):
        origin = typing.get_origin(member)
        if _is_model(member):
            words.append(f"[{member.__name__}](#{member.__name__.lower()})")
        elif origin is Literal:
            words.append(" or ".join(code(json.dumps(v)) for v in _arguments(member)))
        elif origin is list:
            words.append(f"list of {json_type(_arguments(member)[0], plural=True)}")
        elif origin is dict:
            words.append(f"object of {json_type(_arguments(member)[1], plural=True)}")
        else:
            words.append(_JSON_SCALARS.get(member, ("any", "any"))[plural])
    text = " or ".join(dict.fromkeys(words))
    return f"{text} or `null`" if nullable and type(None) in members and text != "any" else text


def summary_field_type(field: FieldInfo) -> str:
    """A field's type cell: a field that may be left out (its default ``None``) is *optional*, not null."""
    if field.is_required():
        return json_type(field.annotation)
    return json_type(field.annotation, nullable=field.default is not None) + ", optional"


def summary_reference() -> str:
    """The generated part of docs/outputs.md: one table per object of summary.json."""
    parts = [f"<!-- generated by {COMMAND} from distill/outputs/summary_schema.py: edit that -->"]
    for model in summary_models():
        parts.append(f"#### `{model.__name__}`")
        parts.append(docstring(model))
        rows = []
        for name, field in model.model_fields.items():
            rows.append([code(name), summary_field_type(field), field.description or ""])
        parts.append(table(["key", "type", "meaning"], rows))
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- files


SECTIONS = [
    Section(ROOT / "docs" / "configuration.md", "config", config_reference),
    Section(ROOT / "docs" / "outputs.md", "summary", summary_reference),
]


def with_section(text: str, name: str, body: str) -> str:
    """``text`` with the block between its ``generated:name`` markers replaced by ``body``."""
    begin, end = f"<!-- generated:{name}:begin -->", f"<!-- generated:{name}:end -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"no {begin} ... {end} block to fill")
    return pattern.sub(lambda _: f"{begin}\n{body}\n{end}", text, count=1)


def expected(path: Path) -> str:
    """What ``path`` should hold: its text with every generated section regenerated."""
    text = path.read_text(encoding="utf-8")
    for section in SECTIONS:
        if section.path == path:
            text = with_section(text, section.name, section.render())
    return text


def stale_files() -> list[Path]:
    """The documentation files whose generated sections are out of date."""
    paths = dict.fromkeys(s.path for s in SECTIONS)
    return [p for p in paths if p.read_text(encoding="utf-8") != expected(p)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is out of date; write nothing")
    args = parser.parse_args(argv)
    stale = stale_files()
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run {COMMAND}", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(expected(path), encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
