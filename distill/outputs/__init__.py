"""What a run leaves behind: the run directory, report and plots, resume checkpoints, predictions, MLflow
tracking and the ``summary.json`` schema.

Writes and reads files and MLflow records; decides nothing about training."""
