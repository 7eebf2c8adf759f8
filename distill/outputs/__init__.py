"""What a run leaves behind: the run directory, report and plots, checkpoints, serving, tracking.

Writes and reads files and MLflow records; decides nothing about training."""
