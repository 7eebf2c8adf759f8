"""Loading datasets: sklearn bundles, CSV, NPZ, IDX, frames and arrays, checked once into float64 and int64.

A dataset is loaded once into float64 features and int64 labels ``0..K-1``; every draw
(test split, labelled rows, validation rows) is a pure function of the seed, and scaling is
fit on the labelled rows only, so nothing about unlabelled or test rows leaks into it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable

import numpy as np

from distill.errors import DataError
from distill.registry import Registry

__all__ = [
    "Dataset",
    "DATASETS",
    "load_dataset",
    "list_datasets",
    "check_float32",
    "label_classes",
    "canonical_label",
    "dataset_from_frame",
    "dataset_from_arrays",
]


@dataclass(frozen=True)
class Dataset:
    """Features ``x`` [N, D] float64, labels ``y`` [N] int64 in ``0..K-1``, class names in order."""

    name: str
    x: np.ndarray
    y: np.ndarray
    classes: list[str]
    feature_names: list[str] = field(default_factory=list)
    #: ``(channels, height, width)`` when the rows are images (kept flat in ``x``); None for tables.
    image_shape: tuple[int, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_shape(self) -> tuple[int, ...]:
        """What a student sees per row: the image shape for images, else ``(features,)``."""
        return tuple(self.image_shape) if self.image_shape is not None else tuple(self.x.shape[1:])


DATASETS: Registry[Callable[[], Dataset]] = Registry("dataset")

#: The most bytes one array of a data file may take in memory: an ``npz`` member decompressed,
#: an ``idx`` file's data (gunzipped), and the float64 features made from either. Sizes come from
#: the file's own headers (the zip directory, the ``.npy`` and IDX headers) and are checked against
#: what the file really holds before anything is allocated: a zip bomb or a forged shape is refused.
MAX_DATA_BYTES = 2**31


def _sklearn_loader(name: str) -> Callable[[], Dataset]:
    def load() -> Dataset:
        from sklearn import datasets as skd

        bunch = getattr(skd, f"load_{name}")()
        classes = [str(c) for c in getattr(bunch, "target_names", np.unique(bunch.target))]
        images = getattr(bunch, "images", None)  # digits: 8x8 images, kept flat with their shape
        return Dataset(
            name=f"sklearn:{name}",
            x=np.asarray(bunch.data, dtype=np.float64),
            y=np.asarray(bunch.target, dtype=np.int64),
            classes=classes,
            feature_names=[str(f) for f in getattr(bunch, "feature_names", [])],
            image_shape=(1, *images.shape[1:]) if images is not None else None,
        )

    load.__doc__ = f"scikit-learn's bundled {name} data set (no download)."
    return load


for _name in ("breast_cancer", "digits", "iris", "wine"):
    DATASETS.register(f"sklearn:{_name}", _sklearn_loader(_name))


def list_datasets() -> list[str]:
    """Registered dataset names plus the file schemes a source may use."""
    return DATASETS.names() + ["csv:PATH", "npz:PATH", "idx:DIR"]


def load_dataset(source: str, label: str = "label") -> Dataset:
    """Load ``sklearn:NAME``, ``csv:PATH``, ``npz:PATH`` or ``idx:DIR`` and check it.

    The check: finite features, at least two classes, some rows.
    """
    scheme, _, rest = source.partition(":")
    if scheme == "memory":
        raise DataError(f"data.source '{source}' names data that was in memory when the run was made; pass the data "
                        "again: distill.run(config, data=(X, y)) or data=DataFrame")
    if scheme == "csv":
        dataset = load_csv(Path(rest), label)
    elif scheme == "npz":
        dataset = load_npz(Path(rest))
    elif scheme == "idx":
        dataset = load_idx(Path(rest))
    else:
        try:
            loader = DATASETS.get(source)
        except KeyError as exc:
            raise DataError(f"data.source: {exc.args[0]}") from None
        dataset = loader()
    names = {"csv": f"data.label '{label}'", "npz": "label array 'y'", "idx": "the labels"}
    label_name = names.get(scheme, "the target")
    check_dataset(dataset, where=f"data.source '{source}'", label=label_name)
    return dataset


def read_csv_frame(path: Path, text_columns: tuple[str, ...] = ()) -> Any:
    """A CSV file as a DataFrame; a missing, empty or unparsable file is a one-line DataError.

    ``text_columns`` are read as the file's text, not parsed as numbers (labels: see ``label_classes``).
    """
    import pandas as pd

    if path.is_dir():
        raise DataError(f"data file '{path}' is a folder, not a CSV file")
    if not path.is_file():
        raise DataError(f"data file '{path}' not found")
    try:
        return pd.read_csv(path, dtype={c: str for c in text_columns} or None)
    except pd.errors.EmptyDataError:
        raise DataError(f"data file '{path}' is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"data file '{path}' cannot be read as CSV: {reason}") from None


def load_csv(path: Path, label: str) -> Dataset:
    """A CSV with a header row: the ``label`` column holds classes, every other column a number."""
    frame = read_csv_frame(path, (label,))
    return dataset_from_frame(frame, label, name=f"csv:{path}", where=f"data file '{path}'", line_offset=2)


def dataset_from_frame(frame: Any, label: str, *, name: str, where: str, line_offset: int = 0) -> Dataset:
    """A table (a DataFrame) with a ``label`` column of classes and numeric feature columns as a Dataset.

    A CSV file and a DataFrame go through this one function, so the same table gives the same numbers
    either way. Labels are read as text (``label_classes``): ``1`` and ``1.0`` are one class.
    ``line_offset`` turns a row index into the file's line number in messages (2 for a CSV with a header).
    """
    import pandas as pd

    if frame.shape[0] == 0:
        raise DataError(f"{where} has a header but no rows" if line_offset else f"{where} has no rows")
    if label not in frame.columns:
        shown = ", ".join(map(str, frame.columns[:10])) + (", ..." if frame.shape[1] > 10 else "")
        raise DataError(f"{where} has no label column '{label}' (data.label); columns: {shown}")
    frame = frame.copy(deep=False)
    labels = frame.pop(label)
    if labels.isna().any():
        row = int(np.flatnonzero(labels.isna().to_numpy())[0]) + line_offset
        at = f"line {row}" if line_offset else f"row {row}"
        raise DataError(f"{where}: label column '{label}' is empty at {at}")
    if frame.shape[1] == 0:
        raise DataError(f"{where} has no feature columns besides '{label}'")
    bad = [str(c) for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if bad:
        raise DataError(f"{where}: feature column(s) {', '.join(repr(b) for b in bad[:5])} are not numeric")
    y, classes = label_classes(labels.astype(str).to_numpy(), f"{where}: label column '{label}'")
    return Dataset(
        name=name,
        x=frame.to_numpy(dtype=np.float64),
        y=y,
        classes=classes,
        feature_names=[str(c) for c in frame.columns],
    )


def dataset_from_arrays(x: Any, y: Any, *, name: str = "memory:arrays") -> Dataset:
    """``(X, y)`` in memory as a Dataset: ``X`` ``[N, D]`` (or ``[N, H, W]`` / ``[N, C, H, W]`` images,
    kept flat) numbers or a DataFrame of numeric columns; ``y`` ``[N]`` class labels of any type, read
    as text like a CSV's label column (so arrays and the same table in a CSV give the same classes)."""
    where = "data (X, y)"
    names: list[str] = []
    if hasattr(x, "columns") and hasattr(x, "to_numpy"):  # a DataFrame of features
        names = [str(c) for c in x.columns]
    try:
        features = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: X must be numbers: {str(exc).splitlines()[0]}") from None
    labels = np.asarray(y)
    if features.ndim < 2:
        raise DataError(f"{where}: X must have one row per example ([N, D]), got shape {features.shape}")
    if labels.ndim != 1:
        labels = labels.reshape(-1) if labels.ndim == 2 and 1 in labels.shape else labels
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise DataError(f"{where}: y must be one label per row of X ({features.shape[0]}), got shape {labels.shape}")
    if labels.dtype.kind == "O" and any(v is None or (isinstance(v, float) and np.isnan(v)) for v in labels):
        raise DataError(f"{where}: y holds a missing label (None or NaN)")
    if labels.dtype.kind == "f" and not np.isfinite(labels).all():
        raise DataError(f"{where}: y holds NaN or infinity; a label must be a finite number or a name")
    if features.shape[0] == 0:
        raise DataError(f"{where} has no rows")
    image = _image_shape(features.shape)
    if features.ndim > 4:
        raise DataError(f"{where}: X has {features.ndim} dimensions; tables are [N, D], images [N, H, W] or [N, C, H, W]")
    flat = features.reshape(features.shape[0], -1)
    text = np.array([str(v) for v in labels.tolist()], dtype=str) if labels.dtype.kind != "U" else labels
    codes, classes = label_classes(text, f"{where}: y")
    return Dataset(name=name, x=flat, y=codes, classes=classes,
                   feature_names=names or [f"x{i}" for i in range(flat.shape[1])], image_shape=image)


def _exact_number(text: str) -> Decimal | None:
    """The exact value of a decimal numeral (``"1"``, ``"1.0"``, ``"1e20"``, ``"-0.5"``), None for other text.

    Exact: ``"100000000000000000001"`` and ``"1e20"`` differ, as do ``"0.5"`` and ``"0.50000001"``;
    trailing zeros do not count (``"1"``, ``"1.0"`` and ``"1e0"`` are one value). Infinity and NaN are
    not finite numbers: the caller decides what they are.
    """
    if "_" in text:  # Decimal reads "1_0" as 10; a label file does not mean that
        return None
    try:
        value = Decimal(text.strip())
    except (InvalidOperation, ValueError):
        return None
    sign, digits, exponent = value.as_tuple()
    if isinstance(exponent, str):  # "n", "N", "F": NaN or infinity
        return value
    if not any(digits):
        return Decimal(0)
    kept = list(digits)
    while kept[-1] == 0:
        kept.pop()
        exponent += 1
    return Decimal((sign, tuple(kept), exponent))


def _number_name(value: Decimal) -> str:
    """``"3"``, ``"-12"``, ``"100000000000000000001"``; ``"0.5"``, ``"1E+40"`` for the rest."""
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and 0 <= exponent and len(value.as_tuple().digits) + exponent <= 40:
        return str(int(value))
    return str(value)


def canonical_label(text: str) -> str:
    """A label as :func:`label_classes` names a numeric class (``1``, ``1.0`` and ``1e0`` are ``"1"``);
    any other text as it is. Two labels name one class exactly when their canonical forms are equal."""
    value = _exact_number(text)
    return _number_name(value) if value is not None and value.is_finite() else text


def label_classes(text: np.ndarray, where: str) -> tuple[np.ndarray, list[str]]:
    """Labels (as the file's text) to ``0..K-1`` and class names; distinct labels stay distinct classes.

    When every label is a finite number, classes are the numbers' exact values in numeric order (so
    ``1`` and ``1.0`` are one class, ``1e20`` and ``100000000000000000001`` two: no float rounding,
    no int64 overflow); otherwise they are the distinct texts in sorted order. Infinity or NaN among
    numbers is an error naming the value.
    """
    distinct, inverse = np.unique(np.asarray(text, dtype=str), return_inverse=True)
    numbers = [_exact_number(str(t)) for t in distinct]
    exact = [n for n in numbers if n is not None]
    if len(exact) == len(numbers):
        bad = next((str(t) for t, n in zip(distinct, exact, strict=True) if not n.is_finite()), None)
        if bad is not None:
            raise DataError(f"{where} holds {bad!r}: a label must be a finite number or a name")
        values = sorted(set(exact))
        index = {v: i for i, v in enumerate(values)}
        order = np.array([index[n] for n in exact], dtype=np.int64)
        return order[inverse.reshape(-1)], [_number_name(v) for v in values]
    return inverse.reshape(-1).astype(np.int64), [str(t) for t in distinct]


def _image_shape(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """``[N, D]`` is a table (None); ``[N, H, W]`` one channel; ``[N, C, H, W]`` C channels."""
    if len(shape) == 3:
        return (1, int(shape[1]), int(shape[2]))
    if len(shape) == 4:
        return tuple(int(s) for s in shape[1:])
    return None


def _npz_labels(
    path: Path, y: np.ndarray, names: np.ndarray | None
) -> tuple[np.ndarray, list[str]]:
    """Labels to ``0..K-1`` and class names: sorted values, or the order of a ``classes`` array."""
    where = f"data file '{path}'"
    if y.dtype.kind == "S":
        try:  # strictly: replacing bad bytes would merge distinct labels (b"\xff", b"\xfe") into one class
            y = np.char.decode(y, "utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{where}: label array 'y' holds bytes that are not UTF-8 text") from None
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise DataError(f"{where}: label array 'y' holds NaN or infinite values")
        if not np.all(np.mod(y, 1) == 0):
            raise DataError(f"{where}: label array 'y' holds fractional numbers; labels must be integers or strings")
    if y.dtype.kind not in "biufU":
        raise DataError(f"{where}: label array 'y' has dtype {y.dtype}; labels must be integers or strings")
    if names is None:
        # Classes by exact value: no cast that could merge two labels (float to int64 overflows past 2**63).
        classes_raw, inverse = np.unique(y, return_inverse=True)
        if y.dtype.kind == "f":  # integral floats: "3" below 2**63, the float's repr ("1e+20") past it
            named = [str(int(c)) if abs(c) < 2**63 else repr(float(c)) for c in classes_raw]
        else:
            named = [str(c) for c in classes_raw]
        return inverse.reshape(-1).astype(np.int64), named
    if names.dtype.kind == "S":
        names = np.char.decode(names, "utf-8", errors="replace")
    if names.ndim != 1 or names.size == 0 or names.dtype.kind not in "iuU":
        raise DataError(f"{where}: array 'classes' must be a non-empty 1-D array of class names")
    classes = [str(c) for c in names]
    if len(set(classes)) != len(classes):
        dup = next(c for c in classes if classes.count(c) > 1)
        raise DataError(f"{where}: array 'classes' names '{dup}' twice")
    if y.dtype.kind == "U":
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted({str(v) for v in np.unique(y)} - index.keys())
        if unknown:
            raise DataError(
                f"{where}: label(s) {', '.join(repr(u) for u in unknown[:5])} in 'y' are not in array 'classes'"
            )
        return np.array([index[str(v)] for v in y], dtype=np.int64), classes
    bad = (y < 0) | (y >= len(classes))  # in y's own dtype: a cast first could wrap a huge label into range
    if bad.any():
        raise DataError(
            f"{where}: label {int(y[bad][0])} in 'y' has no name; with an array 'classes' of"
            f" {len(classes)} name(s) the labels must be 0..{len(classes) - 1}"
        )
    return y.astype(np.int64), classes


def _too_big(where: str, what: str, size: int) -> DataError:
    return DataError(
        f"{where}: {what} takes {size:,} bytes, more than the limit of {MAX_DATA_BYTES:,}"
        " (distill.data.sources.MAX_DATA_BYTES); use a smaller data set"
    )


def _check_npz_sizes(path: Path) -> None:
    """Every ``.npy`` member of the archive: its decompressed size (from the zip directory) within
    ``MAX_DATA_BYTES``, and the shape its header claims exactly the bytes it holds, so that numpy,
    which allocates the claimed shape before reading, allocates no more than the file contains."""
    import zipfile

    from numpy.lib import format as npy

    where = f"data file '{path}'"
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[: -len(".npy")]
            if info.file_size > MAX_DATA_BYTES:
                raise _too_big(where, f"array '{name}' (decompressed)", info.file_size)
            with archive.open(info) as handle:
                version = npy.read_magic(handle)
                if version == (1, 0):
                    shape, _, dtype = npy.read_array_header_1_0(handle)
                elif version == (2, 0):
                    shape, _, dtype = npy.read_array_header_2_0(handle)
                else:  # 3.0: a utf-8 header, read by numpy's own (private) reader where it has one
                    reader = getattr(npy, "_read_array_header", None)
                    if reader is None:
                        raise ValueError(f"array '{name}' uses .npy format {version}, which this numpy cannot read")
                    shape, _, dtype = reader(handle, version)
                header = handle.tell()
            if dtype.hasobject:
                continue  # refused as pickled data when read
            count = math.prod(int(s) for s in shape)
            claimed = count * dtype.itemsize
            if claimed != info.file_size - header:
                raise DataError(
                    f"{where}: array '{name}' claims shape {tuple(shape)} of {dtype} ({claimed:,} bytes) but holds"
                    f" {info.file_size - header:,} bytes of data; the file is damaged or forged"
                )
            if count * 8 > MAX_DATA_BYTES:
                raise _too_big(where, f"array '{name}' {tuple(shape)} as float64", count * 8)


def load_npz(path: Path) -> Dataset:
    """A NumPy ``.npz`` archive with arrays ``x`` (features or images) and ``y`` (labels).

    ``x`` [N, D] is a table, [N, H, W] a one-channel image, [N, C, H, W] an image with C
    channels (kept flat). Integer or string labels map to ``0..K-1`` in sorted order; an
    optional string array ``classes`` names integer labels ``0..K-1`` instead. Pickled
    (object) arrays are refused: the file is read with ``allow_pickle=False``.
    """
    import zipfile

    where = f"data file '{path}'"
    if not path.is_file():
        raise DataError(f"{where} not found")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{where} is not an .npz archive (a zip of arrays saved by numpy.savez)")
    arrays: dict[str, np.ndarray] = {}
    try:
        _check_npz_sizes(path)
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise DataError(f"{where} is not an .npz archive")
            present = list(archive.files)
            for name in ("x", "y"):
                if name not in present:
                    shown = ", ".join(repr(p) for p in present) or "none"
                    raise DataError(f"{where} has no array '{name}'; arrays present: {shown}")
            for name in ("x", "y", "classes"):
                if name in present:
                    try:
                        arrays[name] = archive[name]
                    except ValueError as exc:
                        if "pickle" in str(exc).lower():
                            raise DataError(
                                f"{where}: array '{name}' holds Python objects (pickled data);"
                                " refusing to unpickle it, save plain numeric or string arrays"
                            ) from None
                        raise
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{where} cannot be read as .npz: {reason}") from None
    x, y = arrays["x"], arrays["y"]
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where}: array 'x' has dtype {x.dtype}; features must be numeric")
    if x.ndim not in (2, 3, 4):
        raise DataError(
            f"{where}: array 'x' has shape {x.shape}; expected [N, D] (table),"
            " [N, H, W] or [N, C, H, W] (images)"
        )
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where}: array 'y' has shape {y.shape}; expected one label per row [N]")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{where}: array 'x' has {x.shape[0]} row(s) but 'y' has {y.shape[0]} label(s)")
    if x.shape[0] == 0 or x.size == 0:
        raise DataError(f"{where} is empty: array 'x' has shape {x.shape}")
    labels, classes = _npz_labels(path, y, arrays.get("classes"))
    return Dataset(
        name=f"npz:{path}",
        x=np.asarray(x, dtype=np.float64).reshape(x.shape[0], -1),
        y=labels,
        classes=classes,
        image_shape=_image_shape(x.shape),
    )


#: IDX type codes (the third magic byte) and their big-endian dtypes.
_IDX_TYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_IDX_PARTS = ("train", "t10k")


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (optionally gzipped): magic ``00 00 TYPE NDIM``, big-endian sizes, data."""
    import gzip
    import zlib

    where = f"data file '{path}'"
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as handle:
            raw = handle.read(4)
            if len(raw) == 4 and raw[0] == 0 and raw[1] == 0 and raw[2] in _IDX_TYPES:
                raw += handle.read(4 * raw[3])
                # Read no more than the header claims (and one byte to see trailing data): a gzip
                # bomb or a forged shape is refused below before it costs memory.
                dims = (len(raw) - 4) // 4
                claimed = math.prod(int(s) for s in np.frombuffer(raw, dtype=">u4", count=dims, offset=4))
                need = claimed * np.dtype(_IDX_TYPES[raw[2]]).itemsize
                if max(need, claimed * 8) > MAX_DATA_BYTES:
                    raise _too_big(where, f"the data its header {tuple(np.frombuffer(raw, '>u4', dims, 4).tolist())}"
                                   " claims (as float64)", max(need, claimed * 8))
                raw += handle.read(need + 1)
    except (OSError, EOFError, zlib.error) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{where} cannot be read: {reason}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        shown = raw[:4].hex(" ") if raw else "nothing"
        raise DataError(
            f"{where} is not an IDX file: bad magic number ({shown}); expected 00 00, a type code"
            " (08, 09, 0b, 0c, 0d or 0e) and a dimension count"
        )
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{where} is truncated: its header needs {header} bytes, the file has {len(raw)}")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    need = math.prod(shape) * dtype.itemsize
    have = len(raw) - header
    if have < need:
        raise DataError(
            f"{where} is truncated: its header {shape} needs {need} data bytes, the file has {have}"
        )
    if have > need:
        raise DataError(f"{where} has byte(s) after the data its header {shape} describes")
    return np.frombuffer(raw, dtype=dtype, count=need // dtype.itemsize, offset=header).reshape(shape)


def load_idx(folder: Path) -> Dataset:
    """MNIST-style IDX files in ``folder``: ``train-*`` then ``t10k-*``, each optionally ``.gz``.

    Pixels stay raw (0..255 for MNIST) as float64; scaling is the config's job. Class names
    are the label numbers, or the lines of a ``classes.txt`` in the folder.
    """
    where = f"data folder '{folder}'"
    if not folder.is_dir():
        raise DataError(f"{where} not found")
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    image_shape: tuple[int, ...] | None = None
    first: Path | None = None
    for part in _IDX_PARTS:
        images = _find_idx(folder, f"{part}-images-idx3-ubyte")
        labels = _find_idx(folder, f"{part}-labels-idx1-ubyte")
        if images is None and labels is None:
            continue
        if images is None or labels is None:
            have = images if images is not None else labels
            missing = f"{part}-labels-idx1-ubyte" if labels is None else f"{part}-images-idx3-ubyte"
            raise DataError(f"data file '{have}' has no partner: '{missing}[.gz]' is missing in {where}")
        pixels = read_idx(images)
        if pixels.ndim not in (3, 4):
            raise DataError(
                f"data file '{images}' has shape {pixels.shape}; expected images [N, H, W] or [N, C, H, W]"
            )
        shape = _image_shape(pixels.shape)
        if image_shape is not None and shape != image_shape:
            raise DataError(
                f"data file '{images}' holds images of shape {shape} but '{first}' holds {image_shape}"
            )
        targets = read_idx(labels)
        if targets.ndim != 1:
            raise DataError(f"data file '{labels}' has shape {targets.shape}; expected labels [N]")
        if targets.shape[0] != pixels.shape[0]:
            raise DataError(
                f"data file '{labels}' has {targets.shape[0]} label(s) but '{images}'"
                f" has {pixels.shape[0]} image(s)"
            )
        if targets.dtype.kind == "f" and not (
            np.isfinite(targets).all() and np.all(np.mod(targets, 1) == 0) and np.all(np.abs(targets) <= 2**53)
        ):  # past 2**53 a float is no exact integer class, and past 2**63 the int64 cast would wrap
            raise DataError(f"data file '{labels}' holds non-integer labels (fractions, NaN, inf or beyond 2**53)")
        if targets.size and targets.min() < 0:
            raise DataError(f"data file '{labels}' holds a negative label ({int(targets.min())})")
        image_shape, first = shape, images
        xs.append(pixels.reshape(pixels.shape[0], -1).astype(np.float64))
        ys.append(targets.astype(np.int64))
    if not xs:
        expected = ", ".join(
            f"{p}-{kind}[.gz]" for p in _IDX_PARTS for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
        )
        raise DataError(f"{where} has no IDX image/label files; expected {expected}")
    y = np.concatenate(ys)
    needed = int(y.max()) + 1 if y.size else 0
    names_file = folder / "classes.txt"
    if needed > max(10, y.size) and not names_file.is_file():
        raise DataError(
            f"{where}: label {needed - 1} is larger than the {y.size} row(s); IDX labels are class numbers"
            f" 0..K-1 and every class needs rows, so a label cannot exceed the row count"
        )
    if names_file.is_file():
        try:
            text = names_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"data file '{names_file}' cannot be read: {type(exc).__name__}") from None
        classes = [line.strip() for line in text.splitlines() if line.strip()]
        if len(classes) < needed:
            raise DataError(
                f"data file '{names_file}' names {len(classes)} class(es) but the labels go up to"
                f" {needed - 1}; give one name per line for labels 0..{needed - 1}"
            )
        if len(set(classes)) != len(classes):
            dup = next(c for c in classes if classes.count(c) > 1)
            raise DataError(f"data file '{names_file}' names '{dup}' twice")
    else:
        classes = [str(i) for i in range(max(10, needed))]
    return Dataset(
        name=f"idx:{folder}",
        x=np.concatenate(xs),
        y=y,
        classes=classes,
        image_shape=image_shape,
    )


#: float32, the student's dtype: a feature beyond it becomes inf in the student.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_dataset(dataset: Dataset, where: str, label: str = "the label") -> None:
    """Reject data no experiment can use: no rows; NaN/inf features, or features beyond float32 (the
    student's dtype); fewer than two classes, or mostly classes of one row each (an id or a continuous
    target, not classes)."""
    x = dataset.x
    if x.shape[0] == 0:
        raise DataError(f"{where} has no rows")
    finite = np.isfinite(x)
    if not finite.all():
        row, col = (int(i) for i in np.argwhere(~finite)[0])
        name = dataset.feature_names[col] if col < len(dataset.feature_names) else str(col)
        count = int((~finite).sum())
        raise DataError(
            f"{where} has {count} NaN or infinite feature value(s); first at row {row}, column '{name}'"
        )
    check_float32(x, dataset.feature_names, where)
    present = np.unique(dataset.y)
    n = int(dataset.y.size)
    if present.size < 2:
        raise DataError(
            f"{where}: {label} has a single class ({dataset.classes[int(present[0])] if present.size else 'none'}) "
            f"in all {n} rows; classification needs at least two"
        )
    singletons = int((np.unique(dataset.y, return_counts=True)[1] == 1).sum())
    if present.size > 2 and 2 * singletons > present.size:
        raise DataError(
            f"{where}: {label} has {present.size} distinct values in {n} rows, {singletons} of them in one row"
            " only: it looks like a continuous target or an id, not a class label; name the column of class labels"
        )


def check_float32(x: np.ndarray, feature_names: list[str], where: str, what: str = "feature value") -> None:
    """Finite float64 values beyond float32's range (``|x| > 3.4e38``) would be inf in the student: name the first."""
    big = np.abs(x) > FLOAT32_MAX
    if big.any():
        row, col = (int(i) for i in np.argwhere(big)[0])
        name = feature_names[col] if col < len(feature_names) else str(col)
        raise DataError(
            f"{where} has {int(big.sum())} {what}(s) beyond float32's range (|x| > 3.4e38, the student's dtype);"
            f" first at row {row}, column '{name}': {x[row, col]:g}"
        )


