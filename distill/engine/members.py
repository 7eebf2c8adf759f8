"""The models one fit trains: a single module, or many students of one architecture stacked into one.

Few-shot work is many tiny fits whose cost is Python and kernel-launch overhead, so the engine
trains M students of the same architecture as one: their parameters live in one flat leaf tensor
``[M, P]`` and one ``torch.func.vmap`` over ``functional_call`` runs all M forwards in a single pass
(Adam, SGD and weight decay are elementwise, so every member follows exactly its own trajectory).
``SingleMember`` is the same interface around one ordinary module, without the vmap, for one fit.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.dropout import _DropoutNd

from distill.losses.penalties import penalised_weights, penalty_mask, weight_penalty

__all__ = ["Members", "SingleMember", "StackedMembers", "stack_problem", "mode_free"]


def stack_problem(models: Sequence[nn.Module]) -> str | None:
    """Why these modules cannot train as one stacked model (None when they can).

    Stacking needs one architecture (same class, parameter names and shapes) and no layer whose
    output depends on the train/eval mode or on a random stream (dropout, batch norm), since
    vmapped members could not reproduce their separate fits' random numbers.
    """
    first = models[0]
    shapes = [(name, tuple(p.shape)) for name, p in first.named_parameters()]
    for m in models[1:]:
        if type(m) is not type(first) or [(n, tuple(p.shape)) for n, p in m.named_parameters()] != shapes:
            return "the students differ in architecture"
    for module in first.modules():
        if isinstance(module, _DropoutNd) and module.p > 0:
            return "the student uses dropout"
        if isinstance(module, _NormBase):
            return "the student uses batch or instance normalisation"
    if any(True for _ in first.buffers()):
        return "the student has buffers"
    if any(not p.requires_grad for p in first.parameters()):
        return "the student has frozen parameters"
    return None


def mode_free(model: nn.Module) -> bool:
    """True when the model's outputs cannot depend on train/eval mode: only distill's own students
    and torch.nn layers, none of them dropout or normalisation (a custom layer may read ``self.training``)."""
    for module in model.modules():
        origin = type(module).__module__
        if not origin.startswith(("torch.nn.modules.", "distill.students.")):
            return False
        if isinstance(module, (_DropoutNd, _NormBase)):
            return False
    return True


class Members(ABC):
    """M models trained together: forward on ``[M, B, ...]``, weights as one ``[M, P]`` tensor.

    An interface with two implementations, ``SingleMember`` and ``StackedMembers``."""

    count: int

    @abstractmethod
    def parameters(self) -> list[Tensor]:
        """The leaves the optimizer updates."""

    def zero_grad(self) -> None:
        """Clear the gradients before a step."""
        for p in self.parameters():
            p.grad = None

    def finish(self) -> None:  # noqa: B027 - a hook with a default: one module needs nothing handed back
        """Hand the modules back as ordinary modules after the fit."""

    @abstractmethod
    def compile(self) -> None:
        """``torch.compile`` the forward pass (the first steps pay for the compilation)."""

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """Train-mode outputs ``[M, B, K]`` for inputs ``[M, B, ...]``."""

    @abstractmethod
    def evaluate(self, x: Tensor) -> Tensor:
        """Eval-mode outputs ``[M, N, K]`` without autograd."""

    @abstractmethod
    def flat(self) -> Tensor:
        """A fresh detached ``[M, P]`` copy of every member's weights (for best / last-good states)."""

    @abstractmethod
    def load(self, weights: Tensor) -> None:
        """Write ``[M, P]`` weights back into the members' modules."""

    def restore(self, weights: Tensor) -> None:
        """Continue training from ``[M, P]`` weights (a resumed fit)."""
        self.load(weights)

    @abstractmethod
    def penalty(self, l1: float, l2: float) -> Tensor:
        """``l1 * sum|w| + l2 * sum w^2`` over weight matrices and kernels, per member ``[M]``."""

    @abstractmethod
    def clip_grad(self, max_norm: float) -> None:
        """Scale each member's gradient so that its own norm is at most ``max_norm``."""


def _outputs(out: Tensor) -> Tensor:
    """``[N]`` outputs as ``[N, 1]``: one logit per row."""
    return out.unsqueeze(-1) if out.ndim == 1 else out


class SingleMember(Members):
    """One ordinary module: plain calls, no vmap (the cheapest path for a single fit)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.count = 1
        self._params: list[Tensor] = [p for p in model.parameters() if p.requires_grad]
        self._state = model.state_dict(keep_vars=True)  # the live tensors, read in place every epoch
        # Switching to eval mode walks every submodule; skip it when no layer behaves differently.
        self._mode_free = mode_free(model)
        self._weights: Tensor | None = None
        self._grad: Tensor | None = None
        self._forward: Callable[[Tensor], Tensor] = model
        if [id(t) for t in self._state.values()] == [id(p) for p in self._params]:
            self._flatten()

    def _flatten(self) -> None:
        """Make every parameter (and its gradient) a view into one flat tensor: the optimizer, the
        gradient reset and the best-state copies then touch one tensor instead of one per layer."""
        with torch.no_grad():
            weights = torch.cat([p.detach().reshape(-1) for p in self._params])
        grad = torch.zeros_like(weights)
        offset = 0
        for p in self._params:
            size = p.numel()
            p.data = weights[offset : offset + size].view_as(p)
            p.grad = grad[offset : offset + size].view_as(p)  # backward accumulates in place into it
            offset += size
        weights.grad = grad
        self._weights, self._grad = weights, grad

    def parameters(self) -> list[Tensor]:
        return [self._weights] if self._weights is not None else self._params

    def zero_grad(self) -> None:
        if self._grad is not None:
            self._grad.zero_()
        else:
            super().zero_grad()

    def finish(self) -> None:
        if self._weights is None:
            return
        for p in self._params:
            p.data = p.data.clone()
            p.grad = None
        self._weights = self._grad = None

    def forward(self, x: Tensor) -> Tensor:
        return _outputs(self._forward(x[0])).unsqueeze(0)

    def compile(self) -> None:
        self._forward = torch.compile(self.model)

    def embed(self, x: Tensor) -> Tensor:
        return self.model.embed(x[0])  # type: ignore[operator]

    @torch.inference_mode()
    def evaluate(self, x: Tensor, batch_size: int = 8192) -> Tensor:
        if self._mode_free:
            return self._outputs(x, batch_size)
        was_training = self.model.training
        self.model.eval()
        try:
            return self._outputs(x, batch_size)
        finally:
            self.model.train(was_training)

    def _outputs(self, x: Tensor, batch_size: int) -> Tensor:
        outs = [_outputs(self.model(x[0, i : i + batch_size])) for i in range(0, x.shape[1], batch_size)]
        return (outs[0] if len(outs) == 1 else torch.cat(outs)).unsqueeze(0)

    def flat(self) -> Tensor:
        if self._weights is not None:
            return self._weights.clone().unsqueeze(0)
        with torch.no_grad():
            return torch.cat([p.detach().reshape(-1) for p in self._state.values()]).unsqueeze(0)

    def load(self, weights: Tensor) -> None:
        if self._weights is not None:
            self._weights.copy_(weights[0])
            return
        offset, out = 0, {}
        for name, value in self._state.items():
            out[name] = weights[0, offset : offset + value.numel()].view_as(value)
            offset += value.numel()
        self.model.load_state_dict(out)

    def penalty(self, l1: float, l2: float) -> Tensor:
        return weight_penalty(penalised_weights(self.model), l1, l2)

    def clip_grad(self, max_norm: float) -> None:
        if self._grad is not None:
            _clip_rows(self._grad.unsqueeze(0), max_norm)
        else:
            nn.utils.clip_grad_norm_(self._params, max_norm)


class StackedMembers(Members):
    """M modules of one architecture as one flat leaf ``[M, P]`` run through ``vmap(functional_call)``."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        from torch.func import functional_call, vmap

        problem = stack_problem(models)
        if problem is not None:
            raise ValueError(f"cannot stack these students: {problem}")
        self.models = list(models)
        self.count = len(models)
        first = models[0]
        self.names = [name for name, _ in first.named_parameters()]
        self.shapes = [tuple(p.shape) for _, p in first.named_parameters()]
        sizes = [math.prod(s) for s in self.shapes]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.sizes = sizes
        with torch.no_grad():
            rows = [torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in models]
            self.weights = torch.stack(rows).requires_grad_(True)  # [M, P], the one leaf
        # Weight matrices and kernels (not biases) for L1 / L2, as a 0/1 mask over P.
        self.weight_mask = penalty_mask(self.shapes, dtype=self.weights.dtype, device=self.weights.device)
        self._skeleton = copy.deepcopy(first)
        skeleton = self._skeleton

        def one(params: dict[str, Tensor], x: Tensor) -> Tensor:
            return _outputs(functional_call(skeleton, params, (x,)))

        self._vmapped = vmap(one, in_dims=(0, 0))
        self._train_forward = self._vmapped

    def _views(self, weights: Tensor) -> dict[str, Tensor]:
        m = weights.shape[0]
        return {
            name: weights[:, offset : offset + size].view(m, *shape)
            for name, offset, size, shape in zip(self.names, self.offsets, self.sizes, self.shapes, strict=True)
        }

    def parameters(self) -> list[Tensor]:
        return [self.weights]

    def forward(self, x: Tensor) -> Tensor:
        self._skeleton.train()
        return self._train_forward(self._views(self.weights), x)

    def compile(self) -> None:
        self._train_forward = torch.compile(self._vmapped)

    @torch.no_grad()
    def evaluate(self, x: Tensor, batch_size: int = 8192) -> Tensor:
        self._skeleton.eval()
        views = self._views(self.weights.detach())
        outs = [self._vmapped(views, x[:, i : i + batch_size]) for i in range(0, x.shape[1], batch_size)]
        return torch.cat(outs, dim=1)

    def flat(self) -> Tensor:
        return self.weights.detach().clone()

    def restore(self, weights: Tensor) -> None:
        with torch.no_grad():
            self.weights.copy_(weights)

    def load(self, weights: Tensor) -> None:
        for i, model in enumerate(self.models):
            with torch.no_grad():
                for p, offset, size in zip(model.parameters(), self.offsets, self.sizes, strict=True):
                    p.copy_(weights[i, offset : offset + size].view_as(p))

    def penalty(self, l1: float, l2: float) -> Tensor:
        return weight_penalty(self.weights, l1, l2, self.weight_mask)

    def clip_grad(self, max_norm: float) -> None:
        if self.weights.grad is not None:
            _clip_rows(self.weights.grad, max_norm)


def _clip_rows(grad: Tensor, max_norm: float) -> None:
    """``clip_grad_norm_`` for each row of ``[M, P]`` gradients: scale a row whose norm exceeds ``max_norm``."""
    norms = torch.linalg.vector_norm(grad, dim=1, keepdim=True)
    grad.mul_(torch.clamp(max_norm / (norms + 1e-6), max=1.0))
