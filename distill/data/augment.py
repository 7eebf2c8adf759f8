"""Augmentation of labelled rows for tiny training sets."""

from __future__ import annotations

import numpy as np


def augment_rows(
    x: np.ndarray,
    count: int,
    *,
    jitter: float,
    mixup: float,
    mixup_alpha: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """``count`` new points made from the rows of ``x`` (the scaled labelled rows) only.

    A share ``mixup`` of them are mixup points ``lam * x_i + (1 - lam) * x_j`` between two
    random rows with ``lam ~ Beta(mixup_alpha, mixup_alpha)`` (Zhang et al. 2018); the rest are
    random rows plus Gaussian jitter of standard deviation ``jitter`` (in scaled feature units).
    The teacher labels them; they carry no hard label. Nothing but ``x`` is looked at.
    """
    n = x.shape[0]
    n_mix = int(round(count * mixup)) if n >= 2 else 0
    n_jit = count - n_mix
    base = x[rng.integers(0, n, size=n_jit)]
    jittered = base + rng.normal(0.0, jitter, size=base.shape) if jitter > 0 else base.copy()
    i = rng.integers(0, n, size=n_mix)
    j = (i + rng.integers(1, n, size=n_mix)) % n if n >= 2 else i  # a different row
    lam = rng.beta(mixup_alpha, mixup_alpha, size=(n_mix,) + (1,) * (x.ndim - 1))
    mixed = lam * x[i] + (1.0 - lam) * x[j]
    return np.concatenate([jittered, mixed]).astype(np.float64)
