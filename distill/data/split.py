"""Few-shot draws: the test split, the labelled rows and the validation rows, each a pure function of the seed."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from distill.data.sources import Dataset
from distill.errors import DataError


def _allocate(total: int, counts: np.ndarray) -> np.ndarray:
    """Split ``total`` draws over classes: one per class first, the rest proportional to size."""
    num = counts.size
    take = np.zeros(num, dtype=np.int64)
    if total >= num:
        take[:] = 1
        rest = total - num
        share = counts / counts.sum() * rest
        take += np.floor(share).astype(np.int64)
        left = total - take.sum()
        order = np.lexsort((np.arange(num), -(share - np.floor(share))))
        for c in order[:left]:
            take[c] += 1
    return take


def draw_stratified(
    y: np.ndarray,
    candidates: np.ndarray,
    amount: int,
    unit: Literal["total", "per_class"],
    rng: np.random.Generator,
    num_classes: int,
    what: str,
) -> np.ndarray:
    """Draw rows from ``candidates`` (indices into ``y``): ``amount`` per class, or in total.

    In total, every class gets one row when ``amount >= num_classes`` and the rest follow the
    class frequencies; with fewer rows than classes the draw is uniform. Returns sorted indices.
    """
    pools = [np.sort(candidates[y[candidates] == c]) for c in range(num_classes)]
    sizes = np.array([p.size for p in pools])
    if unit == "per_class":
        short = [c for c in range(num_classes) if sizes[c] < amount]
        if short:
            c = short[0]
            raise DataError(
                f"{what}: class {c} has {sizes[c]} row(s) left but {amount} per class were asked"
                f" ({len(short)} class(es) short); lower the count or use more data"
            )
        take = np.full(num_classes, amount, dtype=np.int64)
    else:
        if amount > candidates.size:
            raise DataError(f"{what}: {amount} rows asked but only {candidates.size} are left")
        if amount < num_classes:
            return np.sort(rng.choice(candidates, size=amount, replace=False))
        take = np.minimum(_allocate(amount, sizes), sizes)
        # Classes with too few rows hand their share to the others, largest first.
        deficit = amount - int(take.sum())
        for c in np.argsort(-(sizes - take), kind="stable"):
            if deficit == 0:
                break
            extra = min(deficit, int(sizes[c] - take[c]))
            take[c] += extra
            deficit -= extra
        if (take == 0).any():
            c = int(np.flatnonzero(take == 0)[0])
            raise DataError(f"{what}: class {c} has no rows left to draw from")
    picked = [rng.choice(pools[c], size=int(take[c]), replace=False) for c in range(num_classes)]
    return np.sort(np.concatenate(picked))


def draw_test_rows(y: np.ndarray, num_classes: int, test_size: int | float, rng: np.random.Generator,
                   test_from: np.ndarray | None = None) -> np.ndarray:
    """The stratified test split of the rows labelled ``y`` (``data.test_size``: a count, or a share of the
    rows rounded up), drawn from ``test_from`` (the rows a trained teacher never saw) or from every row.
    Both ``run`` (``split_dataset``) and ``teacher train`` hold out their test rows with it."""
    n = y.shape[0]
    # ceil, less a hair so that 0.07 * 100 = 7.000000000000001 gives 7 rows, not 8
    n_test = int(test_size) if isinstance(test_size, int) else int(math.ceil(test_size * n - 1e-9))
    if n_test >= n:
        raise DataError(f"data.test_size: {n_test} test rows asked but the data has only {n} rows")
    all_rows = np.arange(n)
    candidates = all_rows if test_from is None else np.intersect1d(all_rows, np.asarray(test_from, dtype=np.int64))
    if test_from is not None and n_test > candidates.size:
        raise DataError(
            f"data.test_size: {n_test} test rows asked but the teacher held out only {candidates.size}; "
            "lower data.test_size or train the teacher with a larger one"
        )
    return draw_stratified(y, candidates, n_test, "total", rng, num_classes, "data.test_size")


@dataclass(frozen=True)
class Split:
    """Row indices into the dataset: disjoint test, labelled, validation and unlabelled pool."""

    test: np.ndarray
    labelled: np.ndarray
    validation: np.ndarray
    pool: np.ndarray


def split_dataset(
    dataset: Dataset,
    *,
    test_size: int | float,
    labelled: int | None,
    per_class: int | None,
    validation: int,
    seed: int,
    test_from: np.ndarray | None = None,
) -> Split:
    """Test split (stratified), then labelled and validation draws from the rest; pure in ``seed``.

    ``test_from`` restricts the test draw to those rows (the rows a trained teacher never saw).
    """
    y = dataset.y
    k = dataset.num_classes
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    test = draw_test_rows(y, k, test_size, rng, test_from)
    rest = np.setdiff1d(np.arange(y.shape[0]), test, assume_unique=True)
    unit: Literal["total", "per_class"] = "per_class" if per_class is not None else "total"
    amount = per_class if per_class is not None else labelled
    assert amount is not None
    key = "few_shot.per_class" if per_class is not None else "few_shot.labelled"
    train = draw_stratified(y, rest, amount, unit, rng, k, key)
    rest = np.setdiff1d(rest, train, assume_unique=True)
    if validation > 0:
        val = draw_stratified(y, rest, validation, unit, rng, k, "few_shot.validation")
        rest = np.setdiff1d(rest, val, assume_unique=True)
    else:
        val = np.empty(0, dtype=np.int64)
    if np.unique(y[train]).size < 2:
        raise DataError(
            f"{key}: the labelled rows hold a single class; ask for at least {k} labelled rows"
            " so that every class appears"
        )
    return Split(test=test, labelled=train, validation=val, pool=rest)


