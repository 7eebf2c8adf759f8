"""Metrics: the torchmetrics path, the batched path for stacked members, calibration and statistics.

Pure functions of logits, labels and episode results; nothing here trains."""
