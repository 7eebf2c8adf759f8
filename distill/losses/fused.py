"""The distillation objective precomputed for the step loop, for one student or many at once.

``distill.losses.objective.distillation_loss`` is the reference definition; this is the same loss with
everything that does not change between steps computed once per fit: the teacher's tempered
probabilities and entropy per row, the hard targets as (masked) one-hot rows. A step then gathers
one packed row per sample and does a handful of tensor ops. Outputs carry a leading member axis
``[M, B, K]`` and every member has its own ``kl_weight`` and temperature, so a stack of students
(episodes, a sweep over the KL weight, a baseline with ``kl_weight = 0``) is one call.

With the built-in hard term (``hard=None``) a step's loss is one ``torch.autograd.Function``: its
forward computes the loss per member and, in the same pass, the closed-form gradient with respect
to the outputs; its backward only scales that gradient by ``grad_output``. For the tiny students
this is made for, a step is dominated by per-op dispatch and autograd bookkeeping, and this
records one graph node instead of about twenty. The gradients (``u = z / T``, ``q`` the student's
tempered distribution, ``p`` the teacher's, ``a = coef / (B T)`` with ``coef = w T^2``):

* hard term, divided by the member's labelled-row count ``c``: ``(sigmoid(s) w - y w) / c``
  (binary, ``w`` the row's label weight) or ``(softmax(z) w - onehot) / c`` (multiclass);
* forward KL: ``a (q - p)`` (``q = sigmoid(u)``, ``p`` the class-1 probability, when binary);
* reverse KL, multiclass: ``a q (log q - log p - KL_row)``; binary (one logit, ``d`` the
  teacher's tempered class-1 logit): ``a q_1 q_0 (u - d)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.losses.objective import validation_loss

__all__ = ["MemberObjective"]


class _StepLoss(torch.autograd.Function):
    """The loss per member ``[M]``; the gradient w.r.t. ``z`` is computed in forward, in closed form.

    Forward shares its softmax / sigmoid with the gradient and keeps one tensor, the gradient, for
    backward: measured faster than saving ``z`` and the rows and recomputing in backward.
    """

    @staticmethod
    def forward(ctx, z: Tensor, objective: MemberObjective, rows: Tensor) -> Tensor:
        loss, grad = objective._loss_and_grad(z, rows, ctx.needs_input_grad[0])
        ctx.grad = grad  # an intermediate (not an input or output): no saved-tensor bookkeeping needed
        return loss

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None, None]:
        if torch.is_grad_enabled():  # create_graph=True: the saved gradient is a constant, so refuse
            raise RuntimeError("MemberObjective's loss supports one backward pass, not double backward")
        grad = ctx.grad
        return grad * grad_output.view(grad.shape[0], 1, 1), None, None


class MemberObjective:
    """``hard + kl_weight * T^2 * KL_T`` per member (Hinton, Vinyals and Dean 2015), from packed per-row constants.

    The definition is ``distill.losses.objective.distillation_loss`` (with ``hard_loss``'s BCE / CE
    as the hard term, or a configured one passed as ``hard``); tests/test_member_objective.py checks
    value and gradient against it in float64.

    Args:
        targets: ``[M, n]`` hard labels (anything where unlabelled).
        labelled: ``[M, n]`` bool.
        teacher_logits: ``[M, n, C]`` (``[M, n, 1]`` / ``[M, n, 2]`` for a binary student) or None.
        kl_weights, temperatures: one per member.
        direction: ``forward`` (KL(teacher || student)) or ``reverse``.
        num_outputs: the student's outputs per row (1: binary, one logit).
        dtype: of the packed constants (and so of the loss); float64 for exact checks.
    """

    def __init__(
        self,
        targets: Tensor,
        labelled: Tensor,
        teacher_logits: Tensor | None,
        kl_weights: Sequence[float],
        temperatures: Sequence[float],
        direction: str,
        num_outputs: int,
        *,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if direction not in ("forward", "reverse"):
            raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")
        m, n = targets.shape[0], targets.shape[1]
        device = targets.device
        self.binary = num_outputs == 1
        self.direction = direction
        self.members = m
        weight = labelled.to(dtype)
        y = torch.where(labelled, targets.long(), torch.zeros_like(targets, dtype=torch.long))
        self.use_teacher = teacher_logits is not None and any(float(w) > 0 for w in kl_weights)
        self._temperatures = [float(t) for t in temperatures]
        coef = [float(w) * t**2 for w, t in zip(kl_weights, self._temperatures, strict=True)]
        self.coef = torch.tensor(coef, dtype=dtype, device=device)
        # Members with kl_weight 0 (the baseline) skip the KL term by selection, never by a product
        # with 0: at an extreme temperature their KL may be inf or NaN, and 0 * inf is NaN.
        distils = [float(w) > 0 for w in kl_weights]
        self._skips_kl = self.use_teacher and not all(distils)
        shape = (m, 1) if self.binary else (m, 1, 1)
        self._distils = torch.tensor(distils, dtype=torch.bool, device=device).view(shape)
        temps = torch.tensor(self._temperatures, dtype=dtype, device=device)
        self.same_temperature = len(set(self._temperatures)) == 1
        self.temperature: Tensor | float = self._temperatures[0] if self.same_temperature else temps.view(m, 1, 1)
        # Column layout per row (private). Binary: w, y w [, p_0, p_1, sum p log p | log p_0, log p_1, d].
        # Multiclass: onehot * w (K), w [, p (K), sum p log p | log p (K)].
        columns: list[Tensor] = []
        if self.binary:
            # BCE with logits is softplus(z) - y z on a labelled row: columns w, y * w.
            columns += [weight.unsqueeze(-1), (y.to(dtype) * weight).unsqueeze(-1)]
        else:
            columns += [F.one_hot(y, num_outputs).to(dtype) * weight.unsqueeze(-1), weight.unsqueeze(-1)]
        self._teacher_start = sum(c.shape[-1] for c in columns)
        if self.use_teacher:
            assert teacher_logits is not None
            t = teacher_logits.to(device=device, dtype=dtype)
            if self.binary:
                a = t[..., 1] - t[..., 0] if t.shape[-1] == 2 else t[..., 0]
                a = a / temps.view(m, 1)
                log_p = torch.stack((F.logsigmoid(-a), F.logsigmoid(a)), dim=-1)
            else:
                log_p = F.log_softmax(t / temps.view(m, 1, 1), dim=-1)
            p = log_p.exp()
            if direction == "forward":
                # KL(p || q) = sum p log p - sum p log q: the first sum is fixed per row.
                neg_entropy = torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(-1, keepdim=True)
                columns += [p, neg_entropy]
            else:
                columns.append(log_p)
                if self.binary:  # the tempered class-1 logit, for the closed-form gradient
                    columns.append(a.unsqueeze(-1))
        self.packed = torch.cat(columns, dim=-1).contiguous()  # [M, n, columns]
        self._n = n
        self._offsets = (torch.arange(m, device=device) * n).unsqueeze(1)  # [M, 1]: member m's rows in packed
        self._scales: dict[tuple[int, torch.dtype], tuple[Tensor, Tensor]] = {}
        #: the hard and weighted-KL terms of the last call (see ``parts``)
        self.last_parts: tuple[Tensor, Tensor] | None = None

    # ``coef`` may be replaced (e.g. by a float64 copy): the cached gradient scales follow it.
    @property
    def coef(self) -> Tensor:
        return self._coef

    @coef.setter
    def coef(self, value: Tensor) -> None:
        self._coef = value
        self._scales = {}

    def _constants(self, batch: int) -> tuple[Tensor, Tensor]:
        """``coef`` and ``coef / (B T)`` (d(coef * mean KL)/du) per member, ``[M, 1]`` (binary) or ``[M, 1, 1]``."""
        key = (batch, self._coef.dtype)
        cached = self._scales.get(key)
        if cached is None:
            shape = (-1, 1) if self.binary else (-1, 1, 1)
            temps = torch.tensor(self._temperatures, dtype=torch.float64, device=self._coef.device)
            scale = (self._coef.double() / (batch * temps)).to(self._coef.dtype)
            cached = self._scales[key] = (self._coef.view(shape), scale.view(shape))
        return cached

    def rows(self, idx: Tensor) -> Tensor:
        """The packed constants of the batch rows ``idx`` ``[M, B]``."""
        packed = self.packed
        if self.members == 1:
            return packed.index_select(1, idx.reshape(-1))
        m, b = idx.shape
        flat = packed.reshape(m * self._n, packed.shape[-1]).index_select(0, (idx + self._offsets).reshape(-1))
        return flat.view(m, b, packed.shape[-1])

    def hard(self, z: Tensor, rows: Tensor) -> Tensor:
        """Hard loss per member, averaged over the batch's labelled rows (0 with none)."""
        if self.binary:
            w, yw = rows[..., 0], rows[..., 1]
            s = z[..., 0]
            total = (F.softplus(s) * w - yw * s).sum(-1)
            count = w.sum(-1)
        else:
            k = z.shape[-1]
            onehot = rows[..., :k]
            total = -(onehot * F.log_softmax(z, dim=-1)).sum((-1, -2))
            count = rows[..., k].sum(-1)
        return total / count.clamp(min=1.0)

    def kl(self, z: Tensor, rows: Tensor) -> Tensor:
        """Mean over the batch of KL_T per member (not multiplied by T^2)."""
        t = self.temperature
        c0 = self._teacher_start
        if self.binary:
            s = z[..., 0] / (t if isinstance(t, float) else t[..., 0])
            if self.direction == "forward":
                p0, neg_entropy = rows[..., c0], rows[..., c0 + 2]
                # sum_c p_c log q_c with log q_0 = log q_1 - s: log q_1 - p_0 s
                per_row = neg_entropy - F.logsigmoid(s) + p0 * s
            else:
                log_q = torch.stack((F.logsigmoid(-s), F.logsigmoid(s)), dim=-1)
                per_row = (log_q.exp() * (log_q - rows[..., c0 : c0 + 2])).sum(-1)
        else:
            k = z.shape[-1]
            log_q = F.log_softmax(z / t, dim=-1)
            teacher = rows[..., c0 : c0 + k]
            if self.direction == "forward":
                per_row = rows[..., c0 + k] - (teacher * log_q).sum(-1)
            else:
                per_row = (log_q.exp() * (log_q - teacher)).sum(-1)
        return per_row.mean(-1)

    def _loss_and_grad(self, z: Tensor, rows: Tensor, need_grad: bool) -> tuple[Tensor, Tensor | None]:
        """The loss ``[M]`` and, if asked, its gradient w.r.t. ``z``, without recording a graph.

        The loss is computed with the same ops, in the same order, as ``hard`` + ``coef * kl``: the
        values are bit for bit those of the autograd path. (``addcmul`` appears only where the
        product is exact: a 0/1 label weight times a value.) Reductions keep a trailing axis so the
        per-member divisors broadcast without extra reshapes.
        """
        m, b = z.shape[0], z.shape[1]
        t = self.temperature
        unit = isinstance(t, float) and t == 1.0
        grad: Tensor | None = None
        if self.binary:
            s = z.squeeze(-1)
            cols = rows.unbind(-1)
            w, yw = cols[0], cols[1]
            count = w.sum(-1, keepdim=True).clamp_(min=1.0)  # [M, 1]
            loss = torch.addcmul(F.softplus(s) * w, yw, s, value=-1.0).sum(-1, keepdim=True).div_(count)
            if need_grad:
                sig = torch.sigmoid(s)
                minus_hard = torch.addcmul(yw, sig, w, value=-1.0)  # -(sigmoid(s) w - y w)
            if self.use_teacher:
                coef, scale = self._constants(b)
                u = s if unit else s / (t if isinstance(t, float) else t[..., 0])
                if self.direction == "forward":
                    p0, p1, neg_entropy = cols[2], cols[3], cols[4]
                    per_row = neg_entropy - F.logsigmoid(u) + p0 * u
                    if need_grad:
                        grad = ((sig if unit else torch.sigmoid(u)) - p1).mul_(scale)
                else:
                    log_q = torch.stack((F.logsigmoid(-u), F.logsigmoid(u)), dim=-1)
                    q = log_q.exp()
                    per_row = (q * (log_q - rows[..., 2:4])).sum(-1)
                    if need_grad:
                        q0, q1 = q.unbind(-1)
                        grad = (q0 * q1).mul_(u - cols[4]).mul_(scale)
                loss = self._with_kl(loss, coef * per_row.sum(-1, keepdim=True).div_(b))  # = mean, bit for bit
                grad = self._kl_grad(grad)
            if need_grad:
                grad = minus_hard.div_(count).neg_() if grad is None else grad.addcdiv_(minus_hard, count, value=-1.0)
                grad = grad.unsqueeze(-1)
            return loss.view(m), grad
        k = z.shape[-1]
        if self.use_teacher:
            onehot, w, teacher, extra = rows.split((k, 1, k, rows.shape[-1] - 2 * k - 1), dim=-1)
        else:
            onehot, w = rows.split((k, 1), dim=-1)
        count = w.sum(-2, keepdim=True).clamp_(min=1.0)  # [M, 1, 1]
        log_sm = F.log_softmax(z, dim=-1)
        loss = (onehot * log_sm).sum((-1, -2), keepdim=True).div_(count).neg_()
        if need_grad:
            sm = log_sm.exp()
            minus_hard = torch.addcmul(onehot, sm, w, value=-1.0)  # -(softmax(z) w - onehot)
        if self.use_teacher:
            coef, scale = self._constants(b)
            log_q = log_sm if unit else F.log_softmax(z / t, dim=-1)
            if self.direction == "forward":
                per_row = extra - (teacher * log_q).sum(-1, keepdim=True)
                if need_grad:
                    grad = ((sm if unit else log_q.exp()) - teacher).mul_(scale)
            else:
                q = log_q.exp()
                log_ratio = log_q - teacher
                per_row = (q * log_ratio).sum(-1, keepdim=True)
                if need_grad:
                    grad = (log_ratio - per_row).mul_(q).mul_(scale)
            loss = self._with_kl(loss, coef * per_row.sum(-2, keepdim=True).div_(b))
            grad = self._kl_grad(grad)
        if need_grad:
            grad = minus_hard.div_(count).neg_() if grad is None else grad.addcdiv_(minus_hard, count, value=-1.0)
        return loss.view(m), grad

    def __call__(self, z: Tensor, idx: Tensor, hard: Tensor | None = None) -> Tensor:
        """Loss per member ``[M]`` for outputs ``z`` ``[M, B, K]`` of the rows ``idx`` ``[M, B]``.

        ``hard`` replaces the built-in BCE / CE term (a configured criterion, single member only).
        """
        rows = self.rows(idx)
        self.last_parts = None
        if hard is None:
            if z.requires_grad and torch.is_grad_enabled():
                return _StepLoss.apply(z, self, rows)
            return self._loss_and_grad(z, rows, False)[0]
        loss = hard
        if self.use_teacher:
            kl_term = self.coef * self.kl(z, rows)
            self.last_parts = (hard, kl_term)
            loss = torch.where(self._distils.view(-1), loss + kl_term, loss) if self._skips_kl else loss + kl_term
        return loss

    def _with_kl(self, loss: Tensor, kl_term: Tensor) -> Tensor:
        """``loss + kl_term`` for the members that distil; the hard loss alone, exactly, for the rest."""
        self.last_parts = (loss, kl_term)
        if not self._skips_kl:
            return loss + kl_term
        return torch.where(self._distils, loss + kl_term, loss)

    def parts(self, loss: Tensor) -> Tensor:
        """The last call's hard term and weighted KL term ``kl_weight * T^2 * KL_T`` per member, ``[2, M]``
        (``loss``, that call's result, when it had no KL term): logged apart, so that a student's hard loss
        compares with the baseline's. No host sync."""
        parts, self.last_parts = self.last_parts, None
        if parts is None:
            return torch.stack((loss, torch.zeros_like(loss)))
        hard, kl_term = (part.detach().reshape(self.members) for part in parts)  # a criterion's term has a graph
        if self._skips_kl:
            kl_term = torch.where(self._distils.view(-1), kl_term, torch.zeros_like(kl_term))
        return torch.stack((hard, kl_term)).to(loss.dtype)

    def _kl_grad(self, grad: Tensor | None) -> Tensor | None:
        """The KL term's gradient, exactly 0 for the members that do not distil."""
        if grad is None or not self._skips_kl:
            return grad
        return torch.where(self._distils, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))

    @staticmethod
    def evaluation_loss(z: Tensor, y: Tensor) -> Tensor:
        """The validation loss per member ``[M]`` of outputs ``z`` ``[M, N, K]`` on labels ``y`` ``[M, N]``:
        ``distill.losses.objective.validation_loss``, the one definition (the engine's name for it)."""
        return validation_loss(z, y)
