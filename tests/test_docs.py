"""Documentation that runs: every code block of README.md and docs/*.md, and every script in examples/.

* ```python blocks are executed in order, the blocks of one file sharing one namespace (like a notebook's
  cells), in a temporary working folder. A block may be left out only with ``<!-- not-run: reason -->`` on
  the line before it, and only a handful are.
* ```toml blocks parse and validate as experiments (``distill.config.validate_config``).
* ``python -m distill ...`` lines of ```bash / ```sh / ```console blocks parse with the CLI's own parser, and
  an ``experiments/*.toml`` they name exists and loads, with the line's ``--set`` overrides. A usage
  synopsis (``run EXPERIMENT.toml [--seed N]``) is checked with each placeholder replaced by an example
  value from ``PLACEHOLDERS`` and its optional groups included, so every flag it shows must exist.
* each ``examples/*.py`` runs in a fresh interpreter and exits 0, leaving nothing in its working folder.
* every page of docs/ is one the README links to, and every relative link of README.md and docs/ names a
  file that exists and, with ``#anchor``, a heading of that file.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import distill
from distill.cli import build_parser
from distill.config import validate_config

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: the pages the README's text moved to (issue 17): none may silently disappear
PAGES = {"api", "cli", "concepts", "configuration", "extending", "outputs", "performance", "results", "resume", "scale-out",
         "teachers", "tracking", "tuning"}
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

#: at most this many python blocks, over all documents, may be marked ``<!-- not-run: reason -->``
MAX_NOT_RUN = 3
#: example values for the placeholders of usage synopses; an upper-case word not listed here fails the test
PLACEHOLDERS = {
    "EXPERIMENT.toml": "experiment.toml",
    "RUN_DIR": "runs/example",
    "SOURCE": "runs/example",
    "DIR": "runs/example",
    "N": "3",
    "S": "60",
    "J": "2",
    "NAME": "study",
    "URL": "sqlite:///optuna.db",
    "URI": "sqlite:///mlflow.db",
}
_NOT_RUN = re.compile(r"^<!--\s*not-run:(.*?)-->\s*$")
_FENCE = re.compile(r"^(`{3,})([\w+-]*)")
_SHELL = ("bash", "sh", "shell", "console")


@dataclass(frozen=True)
class Block:
    """One fenced code block: its document, the line of its opening fence, language, text, not-run reason."""

    path: Path
    line: int
    language: str
    code: str
    not_run: str | None  # None: no marker; "": a marker without a reason

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, in order."""
    found: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, language, start = opening.group(1), opening.group(2).lower(), i
        i += 1
        body: list[str] = []
        while i < len(lines) and not lines[i].startswith(fence):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{path.relative_to(ROOT)}:{start + 1}: code block never closed")
        previous = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = _NOT_RUN.match(previous)
        found.append(Block(path, start + 1, language, "\n".join(body) + "\n",
                           marker.group(1).strip() if marker else None))
        i += 1
    return found


ALL_BLOCKS = [b for path in DOCUMENTS for b in blocks(path)]


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


# --------------------------------------------------------------------------- python


def test_the_documents_are_found_and_hold_python() -> None:
    assert (ROOT / "docs" / "api.md") in DOCUMENTS
    for path in (ROOT / "README.md", ROOT / "docs" / "api.md"):
        assert any(b.language == "python" and b.path == path and b.not_run is None for b in ALL_BLOCKS), path


def test_blocks_left_out_say_why_and_are_few() -> None:
    marked = [b for b in ALL_BLOCKS if b.not_run is not None]
    for block in marked:
        assert block.language == "python", f"{block}: not-run marks python blocks only (the others are checked)"
        assert len(block.not_run) >= 10, f"{block}: <!-- not-run: reason --> needs its reason"
    assert len(marked) <= MAX_NOT_RUN, [str(b) for b in marked]


#: documents with python to run (a page whose only python block needs an earlier tracked run has none)
PYTHON_DOCUMENTS = [p for p in DOCUMENTS if any(b.language == "python" and b.not_run is None for b in blocks(p))]


@pytest.mark.slow
@pytest.mark.parametrize("path", PYTHON_DOCUMENTS, ids=_ids(PYTHON_DOCUMENTS))
def test_python_blocks_run_in_order(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    ran = 0
    threads = torch.get_num_threads()
    try:
        for block in blocks(path):
            if block.language != "python" or block.not_run is not None:
                continue
            # the filename and the padding make a traceback point at the document's own line
            code = compile("\n" * block.line + block.code, str(path.relative_to(ROOT)), "exec")
            exec(code, namespace)  # noqa: S102 - our own documentation
            ran += 1
        assert torch.get_num_threads() == threads, "a block changed torch's threads and did not put them back"
    finally:  # a failing block must not leave the rest of the session on its thread setting
        torch.set_num_threads(threads)
    assert ran >= 2
    if path.name == "README.md":  # what the README says of its run: the run directory goes under runs/
        result = namespace["result"]
        assert isinstance(result, distill.RunResult) and result.run_dir.resolve().parent == (tmp_path / "runs").resolve()
        assert result.paired["student_minus_baseline"]["accuracy"].n == 5


def test_every_public_name_is_in_the_api_reference() -> None:
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    missing = [name for name in distill.__all__ if f"`{name}`" not in text]
    assert not missing, f"docs/api.md does not mention {missing}"


# --------------------------------------------------------------------------- toml


def test_toml_blocks_are_valid_experiments() -> None:
    toml_blocks = [b for b in ALL_BLOCKS if b.language == "toml"]
    assert toml_blocks, "no ```toml block to check"
    for block in toml_blocks:
        document = tomllib.loads(block.code)
        if "project" in document:  # a plugin package's pyproject.toml: its entry points name our groups
            groups = document["project"].get("entry-points", {})
            assert groups and set(groups) <= {"distill.teachers", "distill.students", "distill.losses.hard"}, block
            for entries in groups.values():
                assert all(re.fullmatch(r"[\w.]+:[\w.]+", value) for value in entries.values()), block
            continue
        if not any(isinstance(v, dict) for v in document.values()):  # a fragment: top-level keys only
            document = {"name": "docs_fragment", **document}
        config = validate_config(document)
        assert isinstance(config, distill.Config), block


# --------------------------------------------------------------------------- command lines


@dataclass(frozen=True)
class CommandLine:
    block: Block
    text: str
    args: list[str]
    synopsis: bool


def _commands(block: Block) -> list[str]:
    """The shell commands of a block: console lines after ``$``, every line of a script; ``\\`` joins lines."""
    text = block.code.replace("\\\n", " ")
    lines = text.splitlines()
    if block.language == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    commands = []
    for line in lines:
        commands += [c for c in re.split(r"\s(?:&&|\|\||;|\|)\s", line) if c.strip()]
    return commands


def _synopsis(command: str) -> str:
    """A usage line with its optional groups included and the first of each ``a|b|c`` choice."""
    command = command.replace("...", " ")
    command = re.sub(r"[\[\]]", " ", command)
    return re.sub(r"\b([\w:-]+)(?:\|[\w:-]+)+", r"\1", command)


def distill_command_lines() -> list[CommandLine]:
    found = []
    for block in ALL_BLOCKS:
        if block.language not in _SHELL:
            continue
        for command in _commands(block):
            synopsis = " [-" in command or "|" in command
            tokens = shlex.split(_synopsis(command) if synopsis else command, comments=True)
            while tokens and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[0]):  # VAR=value before the command
                tokens.pop(0)
            if len(tokens) >= 3 and re.fullmatch(r"python3?", tokens[0]) and tokens[1:3] == ["-m", "distill"]:
                found.append(CommandLine(block, command.strip(), tokens[3:], synopsis))
    return found


COMMAND_LINES = distill_command_lines()


def test_command_lines_are_found() -> None:
    verbs = {c.args[0] for c in COMMAND_LINES if c.args}
    assert {"run", "tune", "check", "teacher", "predict", "list"} <= verbs, verbs


@pytest.mark.parametrize("line", COMMAND_LINES, ids=[f"{c.block}:{c.text[:60]}" for c in COMMAND_LINES])
def test_command_lines_parse_and_name_experiments_that_load(line: CommandLine) -> None:
    args = []
    for token in line.args:
        if re.fullmatch(r"[A-Z][A-Z_]*(\.toml)?", token):
            assert token in PLACEHOLDERS, f"{line.block}: unknown placeholder {token!r} in: {line.text}"
            token = PLACEHOLDERS[token]
        args.append(token)
    try:
        parsed = build_parser().parse_args(args)
    except SystemExit as exc:  # argparse's error: exit 2 and one line on stderr
        pytest.fail(f"{line.block}: 'python -m distill {' '.join(args)}' does not parse (exit {exc.code})")
    named = [a for a in args if a.startswith("experiments/") and a.endswith(".toml")]
    for experiment in named:
        assert (ROOT / experiment).is_file(), f"{line.block}: {experiment} does not exist"
        overrides = [] if line.synopsis else list(getattr(parsed, "overrides", None) or [])
        assert isinstance(distill.load_config(ROOT / experiment, overrides), distill.Config)


def _verb_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every verb's own parser, ``teacher train`` included, from the CLI itself."""
    def sub(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        return dict(found[0].choices) if found else {}

    verbs = sub(build_parser())
    out = {name: p for name, p in verbs.items() if not sub(p)}
    for name, p in verbs.items():
        out |= {f"{name} {action}": q for action, q in sub(p).items()}
    return out


def test_the_cli_synopsis_lists_every_flag_of_every_verb() -> None:
    """docs/cli.md's synopsis block is where a user looks for a flag: each verb's lines there name every
    option its parser takes (by any of its spellings), so a new flag cannot be left out."""
    block = next(b for b in ALL_BLOCKS if b.path.name == "cli.md" and b.language == "bash")
    shown: dict[str, set[str]] = {}
    for line in block.code.splitlines():
        words = line.split("#", 1)[0].split()
        if words[:3] != ["python", "-m", "distill"] or len(words) < 4:
            continue
        verb = " ".join(words[3:5]) if words[3] == "teacher" else words[3]
        shown.setdefault(verb, set()).update(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", " ".join(words[4:])))
    parsers = _verb_parsers()
    assert set(shown) == set(parsers), (set(shown), set(parsers))
    for verb, parser in parsers.items():
        for action in parser._actions:
            if action.option_strings and "--help" not in action.option_strings:
                assert shown[verb] & set(action.option_strings), f"cli.md: {verb} lacks {action.option_strings}"


def test_a_bad_command_line_fails_the_check() -> None:
    """The check above can fail: an unknown flag, and a synopsis with an unlisted placeholder."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "experiments/breast_cancer_gp.toml", "--no-such-flag"])
    block = Block(ROOT / "README.md", 1, "bash", "python -m distill run THING [--seed N]\n", None)
    (line,) = [CommandLine(block, c, shlex.split(_synopsis(c))[3:], True) for c in _commands(block)]
    with pytest.raises(AssertionError, match="unknown placeholder 'THING'"):
        test_command_lines_parse_and_name_experiments_that_load(line)
    assert _synopsis("run X [--device cpu|cuda|auto] [-o a.csv [--force]]").split() == [
        "run", "X", "--device", "cpu", "-o", "a.csv", "--force"]


# --------------------------------------------------------------------------- examples


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("script", EXAMPLES, ids=_ids(EXAMPLES))
def test_example_runs_and_leaves_nothing_behind(script: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "an example prints its key numbers"
    assert not list(tmp_path.iterdir()), f"{script.name} left files in its working folder"


def test_the_examples_are_there() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"own_arrays_gp_teacher.py", "pretrained_module_teacher.py", "custom_student.py",
            "gridsearch_kl_weight.py"} <= names
    for script in EXAMPLES:
        assert "# %%" in script.read_text(encoding="utf-8"), f"{script.name}: notebook-style cells (# %%)"


# --------------------------------------------------------------------------- pages and links


def test_every_page_is_there_and_linked_from_the_readme() -> None:
    assert {p.stem for p in DOCUMENTS if p.parent.name == "docs"} == PAGES
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    unlinked = [page for page in sorted(PAGES) if f"(docs/{page}.md)" not in readme]
    assert not unlinked, f"README.md links to no docs/{unlinked[0]}.md"


_LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)\)")  # link text may hold [brackets] once


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file: one per heading (lower case, punctuation dropped, spaces to
    hyphens), and each ``<a id>``."""
    found: set[str] = set()
    inside_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            inside_code = not inside_code
        elif not inside_code and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
        found.update(re.findall(r'<a id="([^"]+)"', line))
    return found


def test_anchors_follow_githubs_rule() -> None:
    page = ROOT / "docs" / "tuning.md"
    assert "tuning-the-kl-weight-and-temperature--on-validation-rows-only" in anchors(page)
    assert "few_shotaugment" in anchors(ROOT / "docs" / "configuration.md")  # ### `[few_shot.augment]`


def test_relative_links_name_files_and_headings_that_exist() -> None:
    assert _LINK.findall("see [`[few_shot.augment]`](#few_shotaugment) and [a](b.md#c)") == ["#few_shotaugment",
                                                                                          "b.md#c"]
    broken = []
    for document in DOCUMENTS:
        text = re.sub(r"```.*?```", "", document.read_text(encoding="utf-8"), flags=re.S)
        for target in _LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue  # http://, mailto: ...
            name, _, anchor = target.partition("#")
            linked = (document.parent / name).resolve() if name else document
            if not linked.exists():
                broken.append(f"{document.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{document.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []


def test_what_a_run_or_a_search_leaves_in_the_working_folder_is_gitignored() -> None:
    """A newcomer's `git status` after the README's tour: the default stores and caches are ignored."""
    from fnmatch import fnmatch

    from distill.experiment.tune import DEFAULT_STORAGE

    patterns = [line.strip().rstrip("/") for line in (ROOT / ".gitignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for name in (DEFAULT_STORAGE, f"{DEFAULT_STORAGE}.lock", "mlflow.db", "mlruns", "runs", ".distill-cache"):
        assert any(fnmatch(name, pattern) for pattern in patterns), name
