"""Process-wide settings a library call may change, put back when it returns.

A run sets torch's CPU threads and NumPy's BLAS threads for tiny models, seeds the global random
generators, points MLflow at its tracking URI and experiment, bounds MLflow's HTTP requests through
environment variables, and quiets MLflow's and Optuna's loggers. From the command line none of this
matters (the process ends); from a notebook it would leak into the user's next cell. ``preserved()``
records all of it before a call and restores it after, however the call ends.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = ["preserved", "snapshot"]

_LOGGERS = ("mlflow", "optuna", "distill")


def _mlflow_globals() -> dict[str, Any]:
    """MLflow's module-level tracking URI and active experiment, when MLflow is imported (else nothing)."""
    if "mlflow" not in sys.modules:
        return {}
    from mlflow.tracking import fluent
    from mlflow.tracking._tracking_service import utils

    stack = getattr(fluent, "_active_run_stack", None)
    return {"uri": getattr(utils, "_tracking_uri", None), "experiment": getattr(fluent, "_active_experiment_id", None),
            "active_runs": [run.info.run_id for run in stack.get()] if stack is not None else []}


def _restore_mlflow(saved: dict[str, Any]) -> None:
    if "mlflow" not in sys.modules:
        return
    from mlflow.tracking import fluent
    from mlflow.tracking._tracking_service import utils

    if getattr(utils, "_tracking_uri", None) != saved.get("uri"):
        utils._tracking_uri = saved.get("uri")
        reset = getattr(utils, "reset", None)  # MLflow's tracer keeps the URI it was built with
        if callable(reset):
            reset()
    fluent._active_experiment_id = saved.get("experiment")


def _set_aside_active_runs() -> list[Any] | None:
    """MLflow's stack of active runs in this thread, emptied for the call (None: MLflow not imported)."""
    if "mlflow" not in sys.modules:
        return None
    from mlflow.tracking import fluent

    variable = getattr(fluent, "_active_run_stack", None)
    if variable is None:
        return None
    stack = list(variable.get())
    variable.set([])
    return stack


def _restore_active_runs(stack: list[Any] | None) -> None:
    if "mlflow" not in sys.modules:
        return
    from mlflow.tracking import fluent

    variable = getattr(fluent, "_active_run_stack", None)
    if variable is not None:
        variable.set(list(stack or []))


def snapshot() -> dict[str, Any]:
    """The settings ``preserved`` restores, as comparable values (for tests and for ``preserved``)."""
    import torch  # here, not at import: `import distill` (config, API types) does not load torch
    from threadpoolctl import threadpool_info

    return {
        "torch_threads": torch.get_num_threads(),
        "blas_threads": sorted((i.get("filepath", ""), i.get("num_threads")) for i in threadpool_info()),
        "environ": {k: v for k, v in os.environ.items() if k.startswith(("MLFLOW_", "OPTUNA_"))},
        "mlflow": _mlflow_globals(),
        "loggers": {name: logging.getLogger(name).level for name in _LOGGERS},
        # importing mlflow.pytorch runs logging.basicConfig(level=ERROR) (MLflow's lightning autolog module)
        "root_logger": (logging.getLogger().level, list(logging.getLogger().handlers)),
        "optuna_verbosity": _optuna_verbosity(),
        "grad_enabled": torch.is_grad_enabled(),
        "default_dtype": torch.get_default_dtype(),
    }


def _optuna_verbosity() -> int | None:
    if "optuna" not in sys.modules:
        return None
    import optuna

    return int(optuna.logging.get_verbosity())


@contextmanager
def preserved() -> Iterator[None]:
    """Run the body, then put back torch/BLAS threads, the global random generators' states, MLflow's
    tracking URI, active experiment and environment variables, and the loggers' levels."""
    import torch  # here, not at import: `import distill` (config, API types) does not load torch
    from threadpoolctl import threadpool_limits

    saved = snapshot()
    py_state = random.getstate()
    np_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    blas = threadpool_limits(limits=None)  # records every BLAS/OpenMP pool's limit as it is now
    root = logging.getLogger()
    stack = _set_aside_active_runs()  # a user's `with mlflow.start_run():` stays theirs; our runs are our own
    try:
        yield
    finally:
        _restore_active_runs(stack)
        root.setLevel(saved["root_logger"][0])
        root.handlers[:] = saved["root_logger"][1]
        blas.restore_original_limits()
        if torch.get_num_threads() != saved["torch_threads"]:
            torch.set_num_threads(saved["torch_threads"])
        torch.set_grad_enabled(saved["grad_enabled"])
        torch.set_default_dtype(saved["default_dtype"])
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        for key in [k for k in os.environ if k.startswith(("MLFLOW_", "OPTUNA_"))]:
            if key not in saved["environ"]:
                del os.environ[key]
        os.environ.update(saved["environ"])
        _restore_mlflow(saved["mlflow"])
        for name, level in saved["loggers"].items():
            logging.getLogger(name).setLevel(level)
        if saved["optuna_verbosity"] is not None or "optuna" in sys.modules:
            import optuna

            optuna.logging.set_verbosity(saved["optuna_verbosity"] if saved["optuna_verbosity"] is not None
                                         else optuna.logging.INFO)
