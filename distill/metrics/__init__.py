"""Metrics: classification metrics for one model or many stacked ones, calibration, and statistics over episodes.

Pure functions of logits, labels and episode results; nothing here trains."""
