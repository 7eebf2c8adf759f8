"""benchmarks/external_datasets.py's pure logic on hand-made frames (no optional data package needed), and
benchmarks/suite.py's ``--external`` folder listing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from distill.data.sources import load_dataset
from distill.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[f"benchmarks_{name}"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


ext = _module("external_datasets")


def _raw() -> pd.DataFrame:
    """Six rows: an id, an int and a float feature (one NaN), a text category, a flag, a label to merge."""
    return pd.DataFrame({
        "id": [10, 11, 12, 13, 14, 15],
        "a": [1, 2, 3, 4, 5, 6],
        "b": [0.5, np.nan, 0.1, 1e-17, -2.25, 3.0],
        "colour": ["red", "blue", "red", "green", "blue", "red"],
        "flag": [True, False, True, True, False, False],
        "kind": ["x", "y", "z", "x", "z", "y"],
    })


SPEC = ext.ExternalDataset("tiny", "no-such-pkg", "distill_no_such_module_xyz", "hand-made", _raw, "kind",
                           drop=("id",), one_hot=("colour",), merge={"z": "y"})


def test_prepare_frame_drops_encodes_merges_and_drops_missing_rows() -> None:
    out = ext.prepare_frame(_raw(), SPEC, min_per_class=1)
    # By hand: "id" dropped; row 1 (b is NaN) dropped; colour -> sorted indicators blue, green, red;
    # flag -> 0/1; class z merged into y; the label last.
    expected = pd.DataFrame({
        "a": [1, 3, 4, 5, 6],
        "b": [0.5, 0.1, 1e-17, -2.25, 3.0],
        "colour=blue": [0, 0, 0, 1, 0],
        "colour=green": [0, 0, 1, 0, 0],
        "colour=red": [1, 1, 0, 0, 1],
        "flag": [1.0, 1.0, 1.0, 0.0, 0.0],
        "label": ["x", "y", "x", "y", "y"],
    })
    assert list(out.columns) == list(expected.columns)
    assert out["colour=red"].dtype == np.int64 and out["a"].dtype == np.int64
    for column in expected.columns[:-1]:
        got = out[column].to_numpy(dtype=np.float64)
        np.testing.assert_array_equal(got, expected[column].to_numpy(dtype=np.float64))
    assert out["label"].tolist() == expected["label"].tolist()


def test_the_written_csv_reads_back_exactly_through_distill(tmp_path: Path) -> None:
    out = ext.prepare_frame(_raw(), SPEC, min_per_class=1)
    path = tmp_path / "tiny.csv"
    ext.write_csv(out, path)
    dataset = load_dataset(f"csv:{path}")
    expected_x = np.array([[1, 0.5, 0, 0, 1, 1], [3, 0.1, 0, 0, 1, 1], [4, 1e-17, 0, 1, 0, 1],
                           [5, -2.25, 1, 0, 0, 0], [6, 3.0, 0, 0, 1, 0]], dtype=np.float64)
    np.testing.assert_array_equal(dataset.x, expected_x)  # exact: floats are written to round-trip
    assert dataset.feature_names == ["a", "b", "colour=blue", "colour=green", "colour=red", "flag"]
    assert [dataset.classes[i] for i in dataset.y] == ["x", "y", "x", "y", "y"]


def test_describe_counts_and_majority_share() -> None:
    out = ext.prepare_frame(_raw(), SPEC, min_per_class=1)
    row = ext.describe("tiny", out, SPEC)
    # 5 rows, 6 features, classes x (2) and y (3): majority share 3 / 5.
    assert (row["rows"], row["features"], row["classes"]) == (5, 6, 2)
    assert row["majority"] == pytest.approx(0.6, abs=1e-15)
    assert "| tiny | no-such-pkg==? | 5 | 6 | 2 | 0.600 | hand-made |" in ext.markdown_table([row])


def test_a_class_below_the_minimum_is_named() -> None:
    problem = r"dataset 'tiny': class\(es\) x \(2 rows\), y \(3 rows\) have fewer than 20 rows"
    with pytest.raises(UserError, match=problem):
        ext.prepare_frame(_raw(), SPEC)


def test_a_text_column_neither_dropped_nor_encoded_is_an_error() -> None:
    spec = ext.ExternalDataset("tiny", "p", "m", "c", _raw, "kind", drop=("id",))
    with pytest.raises(UserError, match="dataset 'tiny': column 'colour' is not numeric; drop it or one-hot encode it"):
        ext.prepare_frame(_raw(), spec, min_per_class=1)


def test_a_missing_package_is_one_line_naming_what_to_install(tmp_path: Path) -> None:
    assert ext.missing_packages([SPEC, SPEC]) == ["no-such-pkg"]
    with pytest.raises(UserError) as info:
        ext.export(tmp_path, catalogue=[SPEC])
    assert info.value.problems == ["missing package(s) no-such-pkg: pip install no-such-pkg "
                                   "(or pip install -r benchmarks/requirements-external.txt)"]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_an_unknown_dataset_name_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert ext.main(["--out", str(tmp_path), "--datasets", "penguin"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: unknown dataset(s) 'penguin'; known: {', '.join(ext.NAMES)}\n"


def test_the_distill_check_draws_ten_per_class(tmp_path: Path) -> None:
    # 3 classes of 20 rows: 60 rows, so 20 test rows (a third); 20 - 7 (test, stratified) >= 10 labelled.
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"f": rng.normal(size=60), "label": np.repeat(["a", "b", "c"], 20)})
    ext.write_csv(frame, tmp_path / "ok.csv")
    ext.check_with_distill(tmp_path / "ok.csv")
    small = pd.DataFrame({"f": rng.normal(size=45), "label": ["a"] * 20 + ["b"] * 20 + ["c"] * 5})
    ext.write_csv(small, tmp_path / "small.csv")
    with pytest.raises(UserError, match=r"small\.csv \(seed 0, 15 test rows\): few_shot\.per_class"):
        ext.check_with_distill(tmp_path / "small.csv")


def test_the_requirements_file_pins_what_the_script_names() -> None:
    lines = (ROOT / ext.REQUIREMENTS).read_text().splitlines()
    pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    assert pins == ext.PINS
    assert {spec.package for spec in ext.EXTERNAL} == set(ext.PINS)


def test_suite_external_lists_the_csvs_and_refuses_an_empty_folder(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    suite = _module("suite")
    for name in ("b.csv", "a.csv", "notes.md"):
        (tmp_path / name).write_text("f,label\n1,x\n")
    assert suite.external_sources(tmp_path) == [f"csv:{tmp_path / 'a.csv'}", f"csv:{tmp_path / 'b.csv'}"]
    assert suite.external_sources(None) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert suite.main(["--external", str(empty)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --external {empty}: no .csv files; write them with")
    assert suite.main(["--only-external"]) == 2
    assert capsys.readouterr().err == "error: --only-external needs --external DIR\n"
