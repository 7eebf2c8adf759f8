"""Image and array data sources: ``idx:DIR`` (MNIST-style IDX files) and ``npz:PATH``."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from distill.data.sources import list_datasets, load_dataset, load_idx, load_npz, read_idx
from distill.errors import DataError

# --------------------------------------------------------------------------- IDX helpers

TYPE_CODES = {"u1": 0x08, "i1": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}


def idx_bytes(array: np.ndarray, dtype: str = "u1") -> bytes:
    """An IDX file's bytes: ``00 00 TYPE NDIM``, big-endian uint32 sizes, big-endian data."""
    header = bytes([0, 0, TYPE_CODES[dtype], array.ndim])
    header += b"".join(struct.pack(">I", s) for s in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.dtype(dtype)).tobytes()


def write_idx(path: Path, array: np.ndarray, dtype: str = "u1", *, gz: bool = False) -> Path:
    data = idx_bytes(array, dtype)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)
    return path


def make_mnist(folder: Path, *, gz: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """7 train and 5 t10k random 28x28 uint8 images with digit labels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for part, n in (("train", 7), ("t10k", 5)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        labels[:2] = [0, 9]  # two classes at least, and the top digit
        write_idx(folder / f"{part}-images-idx3-ubyte", images, gz=gz)
        write_idx(folder / f"{part}-labels-idx1-ubyte", labels, gz=gz)
        out[f"{part}_images"], out[f"{part}_labels"] = images, labels
    return out


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    written = make_mnist(tmp_path / "mnist", gz=gz)
    data = load_idx(tmp_path / "mnist")
    expected_x = np.concatenate(
        [written["train_images"].reshape(7, -1), written["t10k_images"].reshape(5, -1)]
    ).astype(np.float64)
    assert data.x.dtype == np.float64 and data.x.shape == (12, 784)
    np.testing.assert_array_equal(data.x, expected_x)
    assert data.x.max() > 1.0  # raw pixels, not rescaled
    np.testing.assert_array_equal(
        data.y, np.concatenate([written["train_labels"], written["t10k_labels"]])
    )
    assert data.y.dtype == np.int64
    assert data.image_shape == (1, 28, 28)
    assert data.in_shape == (1, 28, 28)
    assert data.classes == [str(d) for d in range(10)]
    assert data.name == f"idx:{tmp_path / 'mnist'}"


def test_idx_train_only(tmp_path: Path) -> None:
    written = make_mnist(tmp_path)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).unlink()
    data = load_idx(tmp_path)
    np.testing.assert_array_equal(data.x, written["train_images"].reshape(7, -1))
    np.testing.assert_array_equal(data.y, written["train_labels"])


def test_idx_classes_txt(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    assert load_idx(tmp_path).classes == names


def test_idx_classes_txt_too_few_names(tmp_path: Path) -> None:
    make_mnist(tmp_path)  # labels go up to 9
    (tmp_path / "classes.txt").write_text("a\nb\nc\n", encoding="utf-8")
    with pytest.raises(DataError, match="classes.txt"):
        load_idx(tmp_path)


def test_idx_float32_file(tmp_path: Path) -> None:
    images = np.random.default_rng(1).random((4, 3, 5)).astype(np.float32)
    labels = np.array([0, 1, 1, 0], dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte", images, ">f4")
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    assert read_idx(tmp_path / "train-images-idx3-ubyte").dtype == np.dtype(">f4")
    data = load_idx(tmp_path)
    np.testing.assert_array_equal(data.x, images.reshape(4, -1).astype(np.float64))
    assert data.image_shape == (1, 3, 5)


@pytest.mark.parametrize("dtype", ["i1", ">i2", ">i4", ">f8"])
def test_read_idx_other_types(tmp_path: Path, dtype: str) -> None:
    values = np.arange(-3, 9).reshape(3, 4)
    path = write_idx(tmp_path / "a-idx2", values, dtype)
    np.testing.assert_array_equal(read_idx(path), values)


def test_idx_folder_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found") as err:
        load_idx(tmp_path / "nowhere")
    assert "nowhere" in str(err.value)


def test_idx_no_files_lists_expected_names(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_idx(tmp_path)
    message = str(err.value)
    assert "\n" not in message
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert name in message


def test_idx_half_pair(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte") as err:
        load_idx(tmp_path)
    assert "t10k-images-idx3-ubyte" in str(err.value)


@pytest.mark.parametrize(
    "header", [b"\x08\x03\x00\x00", b"\x00\x00\x07\x03", b"PK\x03\x04", b"\x00"]
)
def test_idx_bad_magic(tmp_path: Path, header: bytes) -> None:
    make_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(header + path.read_bytes()[4:])
    with pytest.raises(DataError, match="magic number") as err:
        load_idx(tmp_path)
    assert str(path) in str(err.value)


def test_idx_count_mismatch(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4, dtype=np.uint8))
    with pytest.raises(DataError) as err:
        load_idx(tmp_path)
    message = str(err.value)
    assert "t10k-labels-idx1-ubyte" in message and "4 label" in message and "5 image" in message


@pytest.mark.parametrize("cut", [100, 790, 5000], ids=["in-data", "last-image", "much"])
def test_idx_truncated_data(tmp_path: Path, cut: int) -> None:
    make_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(DataError, match="truncated") as err:
        load_idx(tmp_path)
    assert str(path) in str(err.value)


def test_idx_truncated_header(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:6])
    with pytest.raises(DataError, match="truncated") as err:
        load_idx(tmp_path)
    assert str(path) in str(err.value)


def test_idx_truncated_gzip(tmp_path: Path) -> None:
    make_mnist(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError) as err:
        load_idx(tmp_path)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_idx_through_load_dataset(tmp_path: Path) -> None:
    make_mnist(tmp_path / "digits", gz=True)
    data = load_dataset(f"idx:{tmp_path / 'digits'}")
    assert data.x.shape == (12, 784) and data.image_shape == (1, 28, 28)
    assert data.num_classes == 10


# --------------------------------------------------------------------------- NPZ


def test_npz_table(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    y = np.array([3, 7, 3, 7, 11, 3])
    np.savez(tmp_path / "t.npz", x=x, y=y)
    data = load_npz(tmp_path / "t.npz")
    assert data.x.dtype == np.float64 and data.x.shape == (6, 3)
    np.testing.assert_array_equal(data.x, x.astype(np.float64))
    assert data.image_shape is None and data.in_shape == (3,)
    assert data.classes == ["3", "7", "11"]  # numeric order, not string order
    np.testing.assert_array_equal(data.y, [0, 1, 0, 1, 2, 0])


def test_npz_gray_images(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, size=(5, 4, 6), dtype=np.uint8)
    np.savez_compressed(tmp_path / "g.npz", x=x, y=np.array([0, 1, 0, 1, 1]))
    data = load_npz(tmp_path / "g.npz")
    assert data.image_shape == (1, 4, 6) and data.in_shape == (1, 4, 6)
    np.testing.assert_array_equal(data.x, x.reshape(5, 24).astype(np.float64))


def test_npz_colour_images(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((4, 3, 2, 5))
    np.savez(tmp_path / "c.npz", x=x, y=np.array([1, 0, 1, 0]))
    data = load_npz(tmp_path / "c.npz")
    assert data.image_shape == (3, 2, 5)
    np.testing.assert_array_equal(data.x, x.reshape(4, 30))
    np.testing.assert_array_equal(data.x.reshape(4, 3, 2, 5), x)


def test_npz_string_labels_sorted(tmp_path: Path) -> None:
    y = np.array(["dog", "cat", "emu", "cat"])
    np.savez(tmp_path / "s.npz", x=np.zeros((4, 2)), y=y)
    data = load_npz(tmp_path / "s.npz")
    assert data.classes == ["cat", "dog", "emu"]
    np.testing.assert_array_equal(data.y, [1, 0, 2, 0])


def test_npz_classes_array(tmp_path: Path) -> None:
    y = np.array([2, 0, 2, 1])
    np.savez(tmp_path / "k.npz", x=np.ones((4, 2)), y=y, classes=np.array(["zero", "one", "two", "three"]))
    data = load_npz(tmp_path / "k.npz")
    assert data.classes == ["zero", "one", "two", "three"]
    np.testing.assert_array_equal(data.y, y)


def test_npz_classes_array_too_short(tmp_path: Path) -> None:
    np.savez(tmp_path / "k.npz", x=np.ones((3, 2)), y=np.array([0, 1, 2]), classes=np.array(["a", "b"]))
    with pytest.raises(DataError, match="classes") as err:
        load_npz(tmp_path / "k.npz")
    assert "k.npz" in str(err.value)


def test_npz_missing_y(tmp_path: Path) -> None:
    np.savez(tmp_path / "m.npz", x=np.zeros((3, 2)), labels=np.arange(3))
    with pytest.raises(DataError) as err:
        load_npz(tmp_path / "m.npz")
    message = str(err.value)
    assert "'y'" in message and "'x'" in message and "'labels'" in message and "m.npz" in message


def test_npz_missing_x(tmp_path: Path) -> None:
    np.savez(tmp_path / "m.npz", y=np.arange(3))
    with pytest.raises(DataError, match="no array 'x'"):
        load_npz(tmp_path / "m.npz")


def test_npz_length_mismatch(tmp_path: Path) -> None:
    np.savez(tmp_path / "l.npz", x=np.zeros((4, 2)), y=np.array([0, 1, 0]))
    with pytest.raises(DataError, match="4 row.*3 label") as err:
        load_npz(tmp_path / "l.npz")
    assert "l.npz" in str(err.value)


def test_npz_empty(tmp_path: Path) -> None:
    np.savez(tmp_path / "e.npz", x=np.zeros((0, 2)), y=np.zeros(0, dtype=int))
    with pytest.raises(DataError, match="empty"):
        load_npz(tmp_path / "e.npz")


def test_npz_non_numeric_x(tmp_path: Path) -> None:
    np.savez(tmp_path / "n.npz", x=np.array([["a", "b"], ["c", "d"]]), y=np.array([0, 1]))
    with pytest.raises(DataError, match="numeric"):
        load_npz(tmp_path / "n.npz")


def test_npz_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found") as err:
        load_npz(tmp_path / "absent.npz")
    assert "absent.npz" in str(err.value)


@pytest.mark.parametrize("content", ["npy", "text"])
def test_npz_not_an_archive(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.npz"
    if content == "npy":
        with path.open("wb") as handle:
            np.save(handle, np.zeros(3))
    else:
        path.write_text("x,y\n1,2\n")
    with pytest.raises(DataError, match="not an .npz") as err:
        load_npz(path)
    assert "bad.npz" in str(err.value)


class _Payload:
    """Unpickling this runs ``os.mkdir(target)``: a stand-in for arbitrary code."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def _pickled_npz(path: Path, target: Path, where: str) -> None:
    bomb = np.empty(2, dtype=object)
    bomb[0], bomb[1] = _Payload(str(target)), "x"
    arrays = {"x": np.zeros((2, 2)), "y": np.array([0, 1])}
    arrays[where] = bomb
    np.savez(path, allow_pickle=True, **arrays)


@pytest.mark.parametrize("where", ["x", "y", "classes"])
def test_npz_pickled_array_refused(tmp_path: Path, where: str) -> None:
    # The payload is real: numpy with allow_pickle=True would run it.
    witness = tmp_path / "witness"
    _pickled_npz(tmp_path / "probe.npz", witness, where)
    with np.load(tmp_path / "probe.npz", allow_pickle=True) as archive:
        archive[where]
    assert witness.exists()

    target = tmp_path / "pwned"
    _pickled_npz(tmp_path / "evil.npz", target, where)
    with pytest.raises(DataError, match="pickle") as err:
        load_npz(tmp_path / "evil.npz")
    assert not target.exists()
    assert "evil.npz" in str(err.value) and f"'{where}'" in str(err.value)
    with pytest.raises(DataError):
        load_dataset(f"npz:{tmp_path / 'evil.npz'}")
    assert not target.exists()


def test_npz_through_load_dataset(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((6, 2, 3))
    np.savez(tmp_path / "d.npz", x=x, y=np.array(["b", "a", "b", "a", "b", "a"]))
    data = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert data.image_shape == (1, 2, 3) and data.classes == ["a", "b"]
    assert data.name == f"npz:{tmp_path / 'd.npz'}"


def test_npz_nan_rejected_by_check(tmp_path: Path) -> None:
    x = np.zeros((4, 3))
    x[2, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.array([0, 1, 0, 1]))
    load_npz(tmp_path / "nan.npz")  # the loader itself keeps the value; the check rejects it
    with pytest.raises(DataError, match="NaN"):
        load_dataset(f"npz:{tmp_path / 'nan.npz'}")


def test_npz_single_class_rejected_by_check(tmp_path: Path) -> None:
    np.savez(tmp_path / "one.npz", x=np.zeros((3, 2)), y=np.array([4, 4, 4]))
    with pytest.raises(DataError, match="single class"):
        load_dataset(f"npz:{tmp_path / 'one.npz'}")


def test_list_datasets_names_the_schemes() -> None:
    names = list_datasets()
    assert "npz:PATH" in names and "idx:DIR" in names and "csv:PATH" in names
