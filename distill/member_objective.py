"""The distillation objective precomputed for the step loop, for one student or many at once.

``distill.objective.distillation_loss`` is the reference definition; this is the same loss with
everything that does not change between steps computed once per fit: the teacher's tempered
probabilities and entropy per row, the hard targets as (masked) one-hot rows. A step then gathers
one packed row per sample and does a handful of tensor ops. Outputs carry a leading member axis
``[M, B, K]`` and every member has its own ``kl_weight`` and temperature, so a stack of students
(episodes, a sweep over the KL weight, a baseline with ``kl_weight = 0``) is one call.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MemberObjective"]


class MemberObjective:
    """``hard + kl_weight * T^2 * KL_T`` per member, from packed per-row constants.

    Args:
        targets: ``[M, n]`` hard labels (anything where unlabelled).
        labelled: ``[M, n]`` bool.
        teacher_logits: ``[M, n, C]`` (``[M, n, 1]`` / ``[M, n, 2]`` for a binary student) or None.
        kl_weights, temperatures: one per member.
        direction: ``forward`` (KL(teacher || student)) or ``reverse``.
        num_outputs: the student's outputs per row (1: binary, one logit).
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
    ) -> None:
        if direction not in ("forward", "reverse"):
            raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")
        m = targets.shape[0]
        device = targets.device
        self.binary = num_outputs == 1
        self.direction = direction
        self.members = m
        weight = labelled.to(torch.float32)
        y = torch.where(labelled, targets.long(), torch.zeros_like(targets, dtype=torch.long))
        self.use_teacher = teacher_logits is not None and any(float(w) > 0 for w in kl_weights)
        coef = [float(w) * float(t) ** 2 for w, t in zip(kl_weights, temperatures, strict=True)]
        self.coef = torch.tensor(coef, dtype=torch.float32, device=device)
        temps = torch.tensor([float(t) for t in temperatures], dtype=torch.float32, device=device)
        self.same_temperature = len({float(t) for t in temperatures}) == 1
        self.temperature: Tensor | float = float(temperatures[0]) if self.same_temperature else temps.view(m, 1, 1)
        columns: list[Tensor] = []
        if self.binary:
            # BCE with logits is softplus(z) - y z on a labelled row: columns w, y * w.
            columns += [weight.unsqueeze(-1), (y.to(torch.float32) * weight).unsqueeze(-1)]
        else:
            columns.append(F.one_hot(y, num_outputs).to(torch.float32) * weight.unsqueeze(-1))
        self.teacher_columns = 0
        if self.use_teacher:
            assert teacher_logits is not None
            t = teacher_logits.to(device=device, dtype=torch.float32)
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
                self.teacher_columns = p.shape[-1] + 1
            else:
                columns.append(log_p)
                self.teacher_columns = p.shape[-1]
        self.packed = torch.cat(columns, dim=-1).contiguous()  # [M, n, columns]
        self._members = torch.arange(m, device=device).unsqueeze(1)

    def rows(self, idx: Tensor) -> Tensor:
        """The packed constants of the batch rows ``idx`` ``[M, B]``."""
        if self.members == 1:
            return self.packed[0].index_select(0, idx[0]).unsqueeze(0)
        return self.packed[self._members, idx]

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
            count = onehot.sum((-1, -2))
        return total / count.clamp(min=1.0)

    def kl(self, z: Tensor, rows: Tensor) -> Tensor:
        """Mean over the batch of KL_T per member (not multiplied by T^2)."""
        t = self.temperature
        c = self.teacher_columns
        teacher = rows[..., rows.shape[-1] - c :]
        if self.binary:
            s = z[..., 0] / (t if isinstance(t, float) else t[..., 0])
            if self.direction == "forward":
                p0, neg_entropy = teacher[..., 0], teacher[..., 2]
                # sum_c p_c log q_c with log q_0 = log q_1 - s: log q_1 - p_0 s
                per_row = neg_entropy - F.logsigmoid(s) + p0 * s
            else:
                log_q = torch.stack((F.logsigmoid(-s), F.logsigmoid(s)), dim=-1)
                per_row = (log_q.exp() * (log_q - teacher)).sum(-1)
        else:
            log_q = F.log_softmax(z / t, dim=-1)
            if self.direction == "forward":
                k = z.shape[-1]
                per_row = teacher[..., k] - (teacher[..., :k] * log_q).sum(-1)
            else:
                per_row = (log_q.exp() * (log_q - teacher)).sum(-1)
        return per_row.mean(-1)

    def __call__(self, z: Tensor, idx: Tensor, hard: Tensor | None = None) -> Tensor:
        """Loss per member ``[M]`` for outputs ``z`` ``[M, B, K]`` of the rows ``idx`` ``[M, B]``.

        ``hard`` replaces the built-in BCE / CE term (a configured criterion, single member only).
        """
        rows = self.rows(idx)
        loss = self.hard(z, rows) if hard is None else hard
        if self.use_teacher:
            loss = loss + self.coef * self.kl(z, rows)
        return loss

    @staticmethod
    def evaluation_loss(z: Tensor, y: Tensor) -> Tensor:
        """Hard loss per member on fully labelled rows: BCE / CE averaged over ``[M, N]``."""
        if z.shape[-1] == 1:
            return F.binary_cross_entropy_with_logits(z[..., 0], y.to(z.dtype), reduction="none").mean(-1)
        m, n, k = z.shape
        return F.cross_entropy(z.reshape(m * n, k), y.reshape(m * n).long(), reduction="none").view(m, n).mean(-1)
