"""The registry ``objective.hard`` selects from: names of hard-loss factories, torch-free.

Config validation and ``distill list`` read the names here without importing torch; the built-in
losses (``distill.losses.hard``) are imported when one of their names is first used. More names come
from :func:`register_loss` in code and from installed packages' entry points in group
``distill.losses.hard``.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable

from distill.registry import Registry

if TYPE_CHECKING:
    from torch import nn

__all__ = ["HARD_LOSSES", "BUILTIN_LOSSES", "LossFactory", "register_loss", "list_losses"]

#: ``(num_classes, *, weight=None, pos_weight=None, reduction="mean", **params) -> nn.Module``
LossFactory = Callable[..., "nn.Module"]

#: the built-in hard losses and the module that registers each (imported when a name is first used)
BUILTIN_LOSSES = {name: "distill.losses.hard" for name in ("bce", "ce", "focal", "label_smoothing", "sce")}


def _factory_problem(obj: Any) -> str | None:
    """Why ``obj`` cannot be a hard-loss factory (None: it takes the built-in factories' arguments).

    A factory is called as ``factory(num_classes, weight=..., pos_weight=..., reduction=..., **hard_params)``
    and returns an ``nn.Module`` whose ``forward(logits [N, K], targets [N])`` gives ``[N]`` with
    ``reduction="none"``. Checked from the signature alone: nothing is called.
    """
    from torch import nn

    if inspect.isclass(obj) and not issubclass(obj, nn.Module):
        return f"names the class {obj.__qualname__}, which is neither an nn.Module subclass nor a loss factory"
    if not callable(obj):
        return f"names a {type(obj).__name__} value, not a loss factory"
    try:
        inspect.signature(obj).bind(2, weight=None, pos_weight=None, reduction="none")
    except TypeError as exc:
        return (f"does not take the hard-loss factory arguments (num_classes, *, weight=None, pos_weight=None, "
                f"reduction='mean', **params): {exc}")
    except ValueError:  # no signature to read (a builtin): it will be called and its result checked
        return None
    return None


#: Hard-loss factories for ``objective.hard``, by name.
HARD_LOSSES: Registry[LossFactory] = Registry("hard loss", group="distill.losses.hard", accepts=_factory_problem,
                                              builtin=BUILTIN_LOSSES, reserved=("auto",))


def register_loss(name: str, factory: LossFactory | None = None) -> Any:
    """Register a hard-loss factory under ``name`` for ``objective.hard`` (twice is an error).

    The factory takes ``(num_classes, *, weight=None, pos_weight=None, reduction="mean", **params)``
    (``params``: ``objective.hard_params``) and returns an ``nn.Module`` called as
    ``loss(logits [N, K], targets [N])``. A decorator when ``factory`` is omitted.
    """
    return HARD_LOSSES.register_checked(name, factory, _factory_problem, "register_loss")


def list_losses() -> list[str]:
    """The registered hard-loss names (built-in, registered in code, installed entry points), sorted."""
    return HARD_LOSSES.names()
