"""The experiment config: loading, validation messages, overrides, TOML round trip."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

from distill.config import Config, apply_overrides, config_dict, load_config, parse_overrides, to_toml, validate_config
from distill.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.toml"))


def write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path, overrides: list[str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return info.value.problems


# --------------------------------------------------------------------------- shipped files


def test_there_are_experiment_files():
    assert len(EXPERIMENTS) >= 1


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_file_loads_and_round_trips(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    assert cfg.name == raw.get("name", path.stem)
    resolved = config_dict(cfg)
    text = to_toml(resolved)
    back = tomllib.loads(text)
    assert back == resolved
    assert validate_config(back) == cfg
    # The file's own values survive resolution.
    def assert_kept(given, got, where):
        if isinstance(given, dict):  # tables may gain defaults (tune.space ranges gain log = false)
            for key, value in given.items():
                assert_kept(value, got[key], f"{where}.{key}")
        else:
            assert got == given, where

    for section, table in raw.items():
        if isinstance(table, dict):
            assert_kept(table, resolved[section], section)


def test_round_trip_file_loads_again(tmp_path):
    cfg = load_config(EXPERIMENTS[0], ["student.hidden=[3, 4]", "train.grad_clip=1.5"])
    path = write(tmp_path, to_toml(config_dict(cfg)), "resolved.toml")
    assert load_config(path) == cfg


# --------------------------------------------------------------------------- every problem at once


BAD = """
name = "bad"

[objective]
kl_weight = -1
temperature = 0
bogus = 3

[data]
scale = "bogus"

[train]
epochs = 0

[nonsense]
x = 1
"""


def test_every_problem_reported_at_once(tmp_path):
    lines = problems(write(tmp_path, BAD))
    assert len(lines) == 6, lines
    assert "objective.kl_weight must be >= 0, got -1" in lines
    assert "objective.temperature must be > 0, got 0" in lines
    assert "train.epochs must be >= 1, got 0" in lines
    (scale,) = [line for line in lines if line.startswith("data.scale")]
    assert "'bogus'" in scale and "minmax" in scale and "standard" in scale
    (bogus,) = [line for line in lines if "objective.bogus" in line]
    assert bogus.startswith("unknown key 'objective.bogus'")
    for key in ("objective.direction", "objective.hard", "objective.kl_weight", "objective.temperature"):
        assert key in bogus
    (section,) = [line for line in lines if "'nonsense'" in line]
    assert section.startswith("unknown key 'nonsense'")
    assert "few_shot" in section and "objective" in section
    assert all("\n" not in line for line in lines)


def test_unknown_nested_key_lists_keys_of_its_own_table(tmp_path):
    path = write(tmp_path, "[train.early_stopping]\npatience = 2\nbogus = 1\n")
    (line,) = problems(path)
    assert line.startswith("unknown key 'train.early_stopping.bogus'")
    assert "train.early_stopping.patience" in line and "train.early_stopping.monitor" in line
    assert "train.epochs" not in line


def test_name_defaults_to_file_stem(tmp_path):
    cfg = load_config(write(tmp_path, "seed = 1\n", "my exp.toml"))
    assert cfg.name == "my_exp"


# --------------------------------------------------------------------------- overrides


def test_parse_overrides_types():
    tree = parse_overrides(
        ["student.hidden=[32,16]", "data.source=sklearn:iris", "seed=3", "train.replacement=true",
         "objective.kl_weight=0.5", "name = spaced "]
    )
    assert tree == {
        "student": {"hidden": [32, 16]},
        "data": {"source": "sklearn:iris"},
        "seed": 3,
        "train": {"replacement": True},
        "objective": {"kl_weight": 0.5},
        "name": "spaced",
    }
    assert isinstance(tree["seed"], int) and not isinstance(tree["seed"], bool)
    assert tree["train"]["replacement"] is True


def test_apply_overrides_merges_tables_key_by_key_and_leaves_the_input_alone():
    raw = {"name": "x", "train": {"epochs": 10, "lr": 0.1}, "student": {"hidden": [8]}}
    before = copy.deepcopy(raw)
    merged = apply_overrides(raw, ["train.epochs=5", "student.hidden=[32,16]", "seed=3"])
    assert merged == {"name": "x", "train": {"epochs": 5, "lr": 0.1}, "student": {"hidden": [32, 16]}, "seed": 3}
    assert raw == before  # the caller's tree is not changed
    assert apply_overrides(raw, []) == before


def test_load_config_applies_overrides():
    cfg = load_config(
        EXPERIMENTS[0],
        ["student.hidden=[32,16]", "data.source=sklearn:iris", "seed=3", "train.replacement=true"],
    )
    assert cfg.student.kwargs["hidden"] == [32, 16]
    assert cfg.data.source == "sklearn:iris"
    assert cfg.seed == 3
    assert cfg.train.replacement is True
    # Untouched keys keep the file's values.
    base = load_config(EXPERIMENTS[0])
    assert cfg.objective == base.objective
    assert cfg.teacher == base.teacher


def test_override_of_unknown_key_names_it():
    lines = problems(EXPERIMENTS[0], ["train.nope=1"])
    assert len(lines) == 1 and lines[0].startswith("unknown key 'train.nope'")


def test_override_with_bad_value_names_key():
    lines = problems(EXPERIMENTS[0], ["objective.kl_weight=-2"])
    assert lines == ["objective.kl_weight must be >= 0, got -2"]


@pytest.mark.parametrize("item", ["seed", "=3", "a..b=1", "1x=2"])
def test_malformed_set_item(item):
    with pytest.raises(ConfigError) as info:
        parse_overrides([item])
    assert info.value.problems == [f"--set expects key=value with a dotted key, got {item!r}"]


def test_malformed_items_reported_together():
    with pytest.raises(ConfigError) as info:
        parse_overrides(["seed", "ok=1", "other"])
    assert len(info.value.problems) == 2


# --------------------------------------------------------------------------- few_shot


def test_labelled_and_per_class_both_set(tmp_path):
    lines = problems(write(tmp_path, "[few_shot]\nlabelled = 10\nper_class = 2\n"))
    assert lines == ["set one of few_shot.labelled or few_shot.per_class, not both"]


def test_neither_labelled_nor_per_class_defaults_to_five_per_class(tmp_path):
    cfg = load_config(write(tmp_path, "[few_shot]\nvalidation = 1\n"))
    assert cfg.few_shot.per_class == 5
    assert cfg.few_shot.labelled is None
    assert cfg.few_shot.unit == "per_class"
    cfg = load_config(write(tmp_path, "[few_shot]\nlabelled = 8\n", "b.toml"))
    assert cfg.few_shot.per_class is None and cfg.few_shot.unit == "total"


@pytest.mark.parametrize(
    "text, key",
    [
        ("[few_shot]\nper_class = 0\n", "few_shot.per_class"),
        ("[few_shot]\nvalidation = -1\n", "few_shot.validation"),
        ("[data]\ntest_size = 0\n", "data.test_size"),
        ("[data]\ntest_size = 1.0\n", "data.test_size"),
        ("[data]\nsource = \"iris\"\n", "data.source"),
        ("[train]\ndevice = \"gpu\"\n", "train.device"),
        ("seed = -1\n", "seed"),
        ("name = \"bad name!\"\n", "name"),
    ],
)
def test_single_bad_value_names_key(tmp_path, text, key):
    lines = problems(write(tmp_path, text))
    assert len(lines) >= 1
    assert all(line.startswith(key) for line in lines), lines


# --------------------------------------------------------------------------- teacher


def test_malformed_kernel_names_key(tmp_path):
    path = write(tmp_path, "[teacher]\nkernel = \"__import__('os')\"\n")
    (line,) = problems(path)
    assert line.startswith("teacher.kernel")
    assert "__import__" in line


def test_sklearn_teacher_needs_estimator(tmp_path):
    (line,) = problems(write(tmp_path, "[teacher]\nkind = \"sklearn\"\n"))
    assert "teacher.estimator" in line and "teacher.kind" in line
    cfg = load_config(
        write(
            tmp_path,
            "[teacher]\nkind = \"sklearn\"\nestimator = \"sklearn.ensemble:RandomForestClassifier\"\n"
            "params = { n_estimators = 10 }\n",
            "ok.toml",
        )
    )
    assert cfg.teacher.params == {"n_estimators": 10}


# --------------------------------------------------------------------------- files


def test_missing_experiment_file(tmp_path):
    path = tmp_path / "absent.toml"
    (line,) = problems(path)
    assert str(path) in line and "not found" in line


def test_invalid_toml_names_file(tmp_path):
    path = write(tmp_path, "[data\nsource = 1\n", "broken.toml")
    (line,) = problems(path)
    assert str(path) in line and "invalid TOML" in line


@pytest.mark.parametrize("key", ["train.lr", "data.test_size", "objective.kl_weight", "few_shot.augment.jitter"])
def test_a_value_no_member_of_a_number_union_takes_is_one_line(key: str) -> None:
    """Not one line per union member (``must be a valid integer`` and ``must be a valid number``)."""
    with pytest.raises(ConfigError) as caught:
        load_config(ROOT / "experiments/breast_cancer_gp.toml", [f'{key}="abc"'])
    problems = [p for p in caught.value.problems if p.startswith(key)]
    assert len(problems) == 1, caught.value.problems
    assert problems[0].endswith("got 'abc'")


def test_every_problem_is_reported_at_once_unknown_keys_included() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(ROOT / "experiments/breast_cancer_gp.toml",
                    ['train.lr="abc"', "bogus.key=1", "objective.kl_weight=-1", 'train.epochs="x"'])
    assert caught.value.problems == [
        "objective.kl_weight must be >= 0, got -1",
        "train.epochs must be a valid integer, got 'x'",
        "train.lr must be a number, got 'abc'",
        "unknown key 'bogus'; known keys here: data, few_shot, name, objective, outputs, protocol, seed, student, "
        "teacher, tracking, train, tune",
    ]
