"""Datasets: loaders (sklearn, CSV, NPZ, IDX, arrays), few-shot splits, scaling and augmentation.

Everything is a pure function of the seed; scaling is fit on labelled rows only."""
