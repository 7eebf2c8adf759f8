"""Datasets, few-shot draws and scaling (distill.data)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distill.data.scaling import Scaler, fit_scaler
from distill.data.sources import Dataset, canonical_label, list_datasets, load_dataset
from distill.data.split import draw_stratified, split_dataset
from distill.errors import DataError

# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def iris() -> Dataset:
    return load_dataset("sklearn:iris")


@pytest.fixture(scope="module")
def breast_cancer() -> Dataset:
    return load_dataset("sklearn:breast_cancer")


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("sklearn:digits")


def synthetic(counts: list[int], seed: int = 0) -> Dataset:
    """A dataset with ``counts[c]`` rows of class ``c`` (rows grouped by class)."""
    y = np.concatenate([np.full(n, c, dtype=np.int64) for c, n in enumerate(counts)])
    x = np.random.default_rng(seed).normal(size=(y.size, 3))
    return Dataset(
        name="synthetic",
        x=x,
        y=y,
        classes=[f"c{c}" for c in range(len(counts))],
        feature_names=["f0", "f1", "f2"],
    )


def class_counts(y: np.ndarray, rows: np.ndarray, k: int) -> list[int]:
    return np.bincount(y[rows], minlength=k).tolist()


def assert_partition(split, n: int) -> None:
    parts = [split.test, split.labelled, split.validation, split.pool]
    for i in range(len(parts)):
        assert np.unique(parts[i]).size == parts[i].size, "duplicate rows inside one part"
        for j in range(i + 1, len(parts)):
            assert np.intersect1d(parts[i], parts[j]).size == 0, (i, j)
    union = np.concatenate(parts)
    assert union.size == n
    np.testing.assert_array_equal(np.sort(union), np.arange(n))


# --------------------------------------------------------------------------- loading


def test_sklearn_datasets_load_with_expected_shapes(iris, breast_cancer, digits):
    assert iris.x.shape == (150, 4) and iris.num_classes == 3
    assert iris.classes == ["setosa", "versicolor", "virginica"]
    assert breast_cancer.x.shape == (569, 30) and breast_cancer.num_classes == 2
    assert np.bincount(breast_cancer.y).tolist() == [212, 357]
    assert digits.x.shape == (1797, 64) and digits.num_classes == 10
    for ds in (iris, breast_cancer, digits):
        assert ds.x.dtype == np.float64 and ds.y.dtype == np.int64
    for ds in (iris, breast_cancer):
        assert ds.in_shape == (ds.x.shape[1],) and ds.image_shape is None
    # digits are 8x8 images: rows stay flat in x, the student sees (1, 8, 8)
    assert digits.image_shape == (1, 8, 8) and digits.in_shape == (1, 8, 8)
    from sklearn.datasets import load_digits

    np.testing.assert_array_equal(digits.x.reshape(-1, 8, 8), load_digits().images)


def test_unknown_sklearn_dataset_lists_registered():
    with pytest.raises(DataError) as info:
        load_dataset("sklearn:nope")
    msg = str(info.value)
    assert "sklearn:nope" in msg
    for name in ("sklearn:breast_cancer", "sklearn:digits", "sklearn:iris", "sklearn:wine"):
        assert name in msg
    assert "csv:PATH" in list_datasets()


# --------------------------------------------------------------------------- few-shot draws


@pytest.mark.parametrize(
    "name, test_size, kwargs",
    [
        ("iris", 30, dict(per_class=5, labelled=None, validation=2)),
        ("iris", 0.2, dict(per_class=None, labelled=12, validation=6)),
        ("breast_cancer", 100, dict(per_class=None, labelled=5, validation=0)),
        ("breast_cancer", 0.25, dict(per_class=10, labelled=None, validation=3)),
        ("digits", 300, dict(per_class=5, labelled=None, validation=1)),
        ("digits", 0.1, dict(per_class=None, labelled=40, validation=20)),
    ],
)
def test_split_parts_are_disjoint_and_cover_all_rows(request, name, test_size, kwargs):
    ds = request.getfixturevalue(name)
    split = split_dataset(ds, test_size=test_size, seed=7, **kwargs)
    assert_partition(split, ds.x.shape[0])
    for part in (split.test, split.labelled, split.validation, split.pool):
        np.testing.assert_array_equal(part, np.sort(part))


@pytest.mark.parametrize("name, k", [("iris", 3), ("breast_cancer", 4), ("digits", 5)])
def test_per_class_gives_exactly_k_rows_of_each_class(request, name, k):
    ds = request.getfixturevalue(name)
    split = split_dataset(ds, test_size=0.2, labelled=None, per_class=k, validation=2, seed=1)
    assert class_counts(ds.y, split.labelled, ds.num_classes) == [k] * ds.num_classes
    # Validation counts in the same unit: 2 per class.
    assert class_counts(ds.y, split.validation, ds.num_classes) == [2] * ds.num_classes


def test_labelled_total_contains_every_class(digits):
    split = split_dataset(digits, test_size=300, labelled=23, per_class=None, validation=0, seed=4)
    assert split.labelled.size == 23
    counts = class_counts(digits.y, split.labelled, 10)
    assert min(counts) >= 1 and sum(counts) == 23


def test_labelled_total_iris_hand_computed(iris):
    # 30 test rows: 1 per class + 27 proportional -> 10/10/10; 40 rows per class remain.
    # labelled=10: 1 each + 7 * (1/3 each) = floor 2 -> 3/3/3, one left over goes to the
    # lowest class index on the tie -> 4/3/3.
    split = split_dataset(iris, test_size=30, labelled=10, per_class=None, validation=0, seed=0)
    assert class_counts(iris.y, split.test, 3) == [10, 10, 10]
    assert class_counts(iris.y, split.labelled, 3) == [4, 3, 3]


def test_draw_stratified_total_follows_class_frequencies_hand_computed():
    # counts 60/30/10, N=10: one per class (1/1/1), the other 7 split as 7*0.6=4.2,
    # 7*0.3=2.1, 7*0.1=0.7 -> floors 4/2/0 -> 5/3/1 (9 rows), and the last row goes to the
    # largest remainder (0.7, class 2) -> 5/3/2.
    ds = synthetic([60, 30, 10])
    rows = draw_stratified(
        ds.y, np.arange(100), 10, "total", np.random.default_rng(0), 3, "few_shot.labelled"
    )
    assert rows.size == 10 and np.unique(rows).size == 10
    assert class_counts(ds.y, rows, 3) == [5, 3, 2]


def test_split_total_hand_computed_on_synthetic():
    # test_size=10 on 60/30/10: 5/3/2 (as above); 55/27/8 remain. labelled=10: 1 each, then
    # 7*55/90=4.28, 7*27/90=2.1, 7*8/90=0.62 -> floors 4/2/0 -> 5/3/1, remainder to class 2.
    ds = synthetic([60, 30, 10])
    split = split_dataset(ds, test_size=10, labelled=10, per_class=None, validation=0, seed=3)
    assert class_counts(ds.y, split.test, 3) == [5, 3, 2]
    assert class_counts(ds.y, split.labelled, 3) == [5, 3, 2]
    assert class_counts(ds.y, split.pool, 3) == [50, 24, 6]
    assert_partition(split, 100)


def test_draw_stratified_hands_a_short_class_share_to_others():
    # counts 1/1/100, N=50: 1 each + 47 proportional -> 0.46/0.46/46.08 -> 1/1/47 (49), the
    # leftover row goes to class 0 (remainder 0.46, lowest index) but it has only 1 row, so
    # class 2 (most rows left) takes it: 1/1/48.
    ds = synthetic([1, 1, 100])
    rows = draw_stratified(ds.y, np.arange(102), 50, "total", np.random.default_rng(0), 3, "x")
    assert class_counts(ds.y, rows, 3) == [1, 1, 48]


def test_draw_stratified_per_class_and_from_candidates_only():
    ds = synthetic([60, 30, 10])
    candidates = np.arange(0, 100, 2)  # even rows only: 30/15/5
    rows = draw_stratified(
        ds.y, candidates, 4, "per_class", np.random.default_rng(1), 3, "few_shot.per_class"
    )
    assert class_counts(ds.y, rows, 3) == [4, 4, 4]
    assert np.isin(rows, candidates).all()


def test_fewer_labelled_rows_than_classes(digits):
    rows = draw_stratified(
        digits.y, np.arange(1797), 2, "total", np.random.default_rng(0), 10, "few_shot.labelled"
    )
    assert rows.size == 2 and np.unique(rows).size == 2
    split = split_dataset(digits, test_size=300, labelled=5, per_class=None, validation=0, seed=0)
    assert split.labelled.size == 5
    assert_partition(split, 1797)


def test_breast_cancer_test_split_hand_computed(breast_cancer):
    # 212/357 rows, 100 test rows: 1 each + 98 proportional: 36.51 / 61.49 -> 37/62 (99);
    # the leftover row goes to the larger remainder (class 0) -> 38/62.
    split = split_dataset(
        breast_cancer, test_size=100, labelled=5, per_class=None, validation=0, seed=0
    )
    assert class_counts(breast_cancer.y, split.test, 2) == [38, 62]
    assert split.labelled.size == 5
    assert sorted(set(breast_cancer.y[split.labelled].tolist())) == [0, 1]


@pytest.mark.parametrize(
    "name, test_size, expected_n",
    [
        ("iris", 30, 30),
        ("iris", 0.1, 15),  # 15.0 exactly
        ("breast_cancer", 0.25, 143),  # ceil(142.25)
        ("breast_cancer", 57, 57),
        ("digits", 0.1, 180),  # ceil(179.7)
        ("digits", 0.3, 540),  # ceil(539.1)
    ],
)
def test_test_split_size_and_stratification(request, name, test_size, expected_n):
    ds = request.getfixturevalue(name)
    split = split_dataset(ds, test_size=test_size, labelled=None, per_class=2, validation=0, seed=5)
    assert split.test.size == expected_n
    n = ds.x.shape[0]
    totals = np.bincount(ds.y, minlength=ds.num_classes)
    got = np.bincount(ds.y[split.test], minlength=ds.num_classes)
    expected = totals / n * expected_n
    assert np.all(np.abs(got - expected) <= 1.0), (got.tolist(), expected.tolist())


def test_test_size_float_uses_ceil():
    ds = synthetic([7, 6])  # 13 rows; 0.5 * 13 = 6.5 -> 7
    split = split_dataset(ds, test_size=0.5, labelled=2, per_class=None, validation=0, seed=0)
    assert split.test.size == math.ceil(0.5 * 13) == 7


def test_same_seed_same_draw_other_seed_different(digits):
    kwargs = dict(test_size=300, labelled=None, per_class=5, validation=2)
    a = split_dataset(digits, seed=11, **kwargs)
    b = split_dataset(digits, seed=11, **kwargs)
    c = split_dataset(digits, seed=12, **kwargs)
    for part in ("test", "labelled", "validation", "pool"):
        np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
    assert not np.array_equal(a.test, c.test)
    assert not np.array_equal(a.labelled, c.labelled)
    assert not np.array_equal(a.validation, c.validation)


def test_validation_total_unit(iris):
    # labelled=6 in total -> validation=6 in total: 1 each + 3 proportional -> 2/2/2.
    split = split_dataset(iris, test_size=30, labelled=6, per_class=None, validation=6, seed=2)
    assert split.validation.size == 6
    assert class_counts(iris.y, split.validation, 3) == [2, 2, 2]
    assert split.pool.size == 150 - 30 - 6 - 6


def test_no_validation_gives_empty_int_array(iris):
    split = split_dataset(iris, test_size=30, labelled=None, per_class=3, validation=0, seed=0)
    assert split.validation.size == 0
    assert split.validation.dtype == np.int64


# --------------------------------------------------------------------------- draw errors


def test_per_class_larger_than_smallest_class():
    ds = synthetic([60, 30, 10])
    with pytest.raises(DataError) as info:
        split_dataset(ds, test_size=10, labelled=None, per_class=9, validation=0, seed=0)
    msg = str(info.value)
    assert msg.startswith("few_shot.per_class")
    assert "class 2 has 8 row(s) left but 9 per class" in msg


def test_labelled_more_than_available(iris):
    with pytest.raises(DataError) as info:
        split_dataset(iris, test_size=30, labelled=121, per_class=None, validation=0, seed=0)
    assert str(info.value) == "few_shot.labelled: 121 rows asked but only 120 are left"


@pytest.mark.parametrize("test_size", [150, 151, 0.9999])
def test_test_size_at_least_rows(iris, test_size):
    with pytest.raises(DataError) as info:
        split_dataset(iris, test_size=test_size, labelled=None, per_class=1, validation=0, seed=0)
    assert str(info.value).startswith("data.test_size")
    assert "only 150 rows" in str(info.value)


def test_validation_too_large(iris):
    with pytest.raises(DataError) as info:
        split_dataset(iris, test_size=30, labelled=None, per_class=5, validation=36, seed=0)
    assert str(info.value).startswith("few_shot.validation")
    assert "35 row(s) left but 36 per class" in str(info.value)
    with pytest.raises(DataError) as info:
        split_dataset(iris, test_size=30, labelled=10, per_class=None, validation=111, seed=0)
    assert str(info.value) == "few_shot.validation: 111 rows asked but only 110 are left"


def test_single_class_labelled_draw(iris):
    with pytest.raises(DataError) as info:
        split_dataset(iris, test_size=30, labelled=1, per_class=None, validation=0, seed=0)
    msg = str(info.value)
    assert msg.startswith("few_shot.labelled") and "single class" in msg
    assert "at least 3 labelled rows" in msg


# --------------------------------------------------------------------------- CSV files


def write(tmp_path, text: str, name: str = "data.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(source: str, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(source, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and len(info.value.problems) == 1
    return msg


def test_csv_numeric_labels(tmp_path):
    path = write(tmp_path, "a,b,label\n1,2,3\n4,5,7\n6,7,3\n8,9,7\n")
    ds = load_dataset(f"csv:{path}")
    assert ds.classes == ["3", "7"]
    np.testing.assert_array_equal(ds.y, [0, 1, 0, 1])
    np.testing.assert_array_equal(ds.x, [[1, 2], [4, 5], [6, 7], [8, 9]])
    assert ds.x.dtype == np.float64 and ds.y.dtype == np.int64
    assert ds.feature_names == ["a", "b"]
    assert ds.name == f"csv:{path}"


def test_csv_string_labels_sorted(tmp_path):
    path = write(tmp_path, "x,label\n0.5,pear\n1.5,apple\n2.5,fig\n3.5,apple\n4.5,pear\n")
    ds = load_dataset(f"csv:{path}")
    assert ds.classes == ["apple", "fig", "pear"]
    np.testing.assert_array_equal(ds.y, [2, 0, 1, 0, 2])
    assert ds.num_classes == 3


def test_csv_custom_label_column(tmp_path):
    path = write(tmp_path, "target,f1,f2\nno,1,1\nyes,2,2\nno,3,3\n")
    ds = load_dataset(f"csv:{path}", label="target")
    assert ds.classes == ["no", "yes"]
    np.testing.assert_array_equal(ds.y, [0, 1, 0])
    assert ds.feature_names == ["f1", "f2"]
    np.testing.assert_array_equal(ds.x[:, 0], [1, 2, 3])


def test_csv_missing_file(tmp_path):
    path = tmp_path / "absent.csv"
    msg = load_error(f"csv:{path}")
    assert str(path) in msg and "not found" in msg


def test_csv_empty_file(tmp_path):
    path = write(tmp_path, "")
    assert "empty" in load_error(f"csv:{path}")


def test_csv_header_only(tmp_path):
    path = write(tmp_path, "a,b,label\n")
    assert "no rows" in load_error(f"csv:{path}")


def test_csv_missing_label_column(tmp_path):
    path = write(tmp_path, "a,b,class\n1,2,0\n3,4,1\n")
    msg = load_error(f"csv:{path}")
    assert "'label'" in msg and "a, b, class" in msg
    msg = load_error(f"csv:{path}", label="kind")
    assert "'kind'" in msg


def test_csv_non_numeric_feature(tmp_path):
    path = write(tmp_path, "a,colour,label\n1,red,0\n2,blue,1\n")
    msg = load_error(f"csv:{path}")
    assert "'colour'" in msg and "not numeric" in msg


@pytest.mark.parametrize("value", ["", "nan", "inf", "-inf"])
def test_csv_nan_or_inf_features(tmp_path, value):
    path = write(tmp_path, f"a,b,label\n1,2,0\n3,{value},1\n")
    msg = load_error(f"csv:{path}")
    assert "NaN or infinite" in msg and "column 'b'" in msg and "row 1" in msg


def test_csv_single_class(tmp_path):
    path = write(tmp_path, "a,label\n1,x\n2,x\n3,x\n")
    msg = load_error(f"csv:{path}")
    assert "single class" in msg and "(x)" in msg


# --------------------------------------------------------------------------- scaling


X = np.array([[1.0, 5.0, 2.0], [3.0, 5.0, -2.0], [2.0, 5.0, 6.0], [6.0, 5.0, 0.0]])


def test_minmax_scaler_hand_values():
    s = fit_scaler("minmax", X)
    np.testing.assert_allclose(s.shift, [1.0, 5.0, -2.0])
    np.testing.assert_allclose(s.scale, [5.0, 1.0, 8.0])  # constant column -> 1
    np.testing.assert_allclose(
        s.transform(X), [[0.0, 0.0, 0.5], [0.4, 0.0, 0.0], [0.2, 0.0, 1.0], [1.0, 0.0, 0.25]]
    )


def test_standard_scaler_matches_numpy():
    s = fit_scaler("standard", X)
    mean = X.mean(axis=0)
    std = X.std(axis=0)  # population std, as scikit-learn
    np.testing.assert_allclose(s.shift, mean)
    np.testing.assert_allclose(s.scale, [std[0], 1.0, std[2]])
    z = s.transform(X)
    np.testing.assert_allclose(z[:, [0, 2]].mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z[:, [0, 2]].std(axis=0), 1.0)
    np.testing.assert_allclose(z[:, 1], 0.0)
    # Hand values for column 0: mean 3, variance (4+0+1+9)/4 = 3.5.
    assert s.shift[0] == pytest.approx(3.0)
    assert s.scale[0] == pytest.approx(math.sqrt(3.5))


def test_none_scaler_is_identity():
    s = fit_scaler("none", X)
    np.testing.assert_array_equal(s.shift, np.zeros(3))
    np.testing.assert_array_equal(s.scale, np.ones(3))
    np.testing.assert_array_equal(s.transform(X), X)


def test_scaler_fit_on_labelled_rows_only(breast_cancer):
    split = split_dataset(
        breast_cancer, test_size=100, labelled=None, per_class=5, validation=0, seed=0
    )
    xl = breast_cancer.x[split.labelled]
    s = fit_scaler("minmax", xl)
    np.testing.assert_array_equal(s.shift, xl.min(axis=0))
    z = s.transform(xl)
    assert z.min() >= 0.0 and z.max() <= 1.0
    # Each non-constant column reaches both ends on the labelled rows ...
    assert np.allclose(z.min(axis=0), 0.0) and np.allclose(z.max(axis=0), 1.0)
    # ... while the other rows, which the scaler never saw, fall outside [0, 1].
    zall = s.transform(breast_cancer.x)
    assert zall.min() < 0.0 or zall.max() > 1.0
    assert not np.allclose(s.shift, breast_cancer.x.min(axis=0))


@pytest.mark.parametrize("kind", ["minmax", "standard", "none"])
def test_scaler_state_round_trip(kind):
    s = fit_scaler(kind, X)
    state = s.state()
    assert state["kind"] == kind
    assert isinstance(state["shift"], list) and isinstance(state["scale"], list)
    t = Scaler.from_state(state)
    assert t.kind == kind
    np.testing.assert_array_equal(t.shift, s.shift)
    np.testing.assert_array_equal(t.scale, s.scale)
    np.testing.assert_array_equal(t.transform(X), s.transform(X))


@pytest.mark.parametrize("text, expected", [
    ("1", "1"), ("1.0", "1"), ("1e0", "1"), ("1.5e1", "15"), ("-0.50", "-0.5"), ("0.0", "0"), ("-0", "0"),
    (" 2 ", "2"), ("1e20", "100000000000000000000"), ("100000000000000000001", "100000000000000000001"),
    ("1e40", "1E+40"),  # more than 40 digits: Decimal's own spelling
    ("abc", "abc"), ("inf", "inf"), ("nan", "nan"), ("1_0", "1_0"),  # not finite numerals: the text itself
])
def test_canonical_label_hand_computed(text, expected):
    assert canonical_label(text) == expected

