"""Experiments: prepare once, teach, build students, run episodes, tune, train teachers.

Turns a Config into fits on the engine and results for ``distill.outputs``."""
