"""Progress bars that work in a terminal and in Jupyter.

``tqdm.auto`` picks the notebook widget in Jupyter, but without ``ipywidgets`` (not a dependency)
it warns and draws nothing useful. Here the widget is used only when ``ipywidgets`` is importable;
otherwise the plain text bar, which a notebook's output cell shows as well.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

__all__ = ["progress_bar"]


def _bar_class() -> Any:
    if "ipykernel" in sys.modules and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm as notebook

        return notebook
    from tqdm.std import tqdm as text

    return text


def progress_bar(*args: Any, **kwargs: Any) -> Any:
    """``tqdm(*args, **kwargs)``: the notebook widget in Jupyter with ipywidgets, else the text bar."""
    return _bar_class()(*args, **kwargs)
