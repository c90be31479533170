"""DINO self-distillation loss (Caron et al., ICCV 2021) with centering and teacher-temperature warm-up."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dissect_monai.utils.distributed import all_reduce_sum

__all__ = ["DINOLoss"]


class DINOLoss(nn.Module):
    """Cross-entropy between the sharpened, centred teacher distribution and the student distribution.

    For every teacher (global) view ``t`` and every student view ``s`` with ``s != t``, the term is
    ``-sum_k softmax((teacher_t - center) / T_t)_k * log_softmax(student_s / T_s)_k`` averaged over the
    batch; the loss is the mean over those pairs. The centre is an EMA (``center_momentum``) of the
    teacher logits' batch mean, updated by :meth:`update_center` after each step; under ``torch.distributed`` the
    mean is over the teacher logits of every rank (all-reduced), so all ranks keep the same centre. The teacher
    temperature rises linearly from ``warmup_teacher_temp`` to ``teacher_temp`` over the first
    ``warmup_fraction`` of training (``progress`` in [0, 1]). All arithmetic is fp32.

    Args:
        out_dim: number of prototypes K (size of the heads' output).
        student_temp: student temperature (0.1).
        teacher_temp: final teacher temperature (0.07).
        warmup_teacher_temp: initial teacher temperature (0.04).
        warmup_fraction: fraction of training over which the teacher temperature warms up (0.3).
        center_momentum: EMA momentum of the centre (0.9).
    """

    def __init__(
        self,
        out_dim: int,
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        warmup_fraction: float = 0.3,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if not 0.0 <= warmup_fraction <= 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1], got {warmup_fraction}")
        if min(student_temp, teacher_temp, warmup_teacher_temp) <= 0:
            raise ValueError(f"temperatures must be positive, got student {student_temp}, teacher "
                             f"{warmup_teacher_temp} -> {teacher_temp}")
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_fraction = warmup_fraction
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_temperature(self, progress: float) -> float:
        """Teacher temperature at ``progress`` (fraction of training done, clipped to [0, 1])."""
        progress = min(max(float(progress), 0.0), 1.0)
        if self.warmup_fraction == 0.0 or progress >= self.warmup_fraction:
            return self.teacher_temp
        step = progress / self.warmup_fraction
        return self.warmup_teacher_temp + step * (self.teacher_temp - self.warmup_teacher_temp)

    def forward(
        self, student_logits: Sequence[torch.Tensor], teacher_logits: Sequence[torch.Tensor], progress: float
    ) -> torch.Tensor:
        """
        Args:
            student_logits: one ``(B, K)`` tensor per view; the first ``len(teacher_logits)`` are the
                global views in the same order as the teacher's.
            teacher_logits: one ``(B, K)`` tensor per global view (no gradient is taken through them).
            progress: fraction of training done, for the teacher temperature.

        Returns:
            the fp32 scalar loss.
        """
        if len(teacher_logits) < 1 or len(student_logits) < 2:
            raise ValueError("DINOLoss needs at least one teacher view and two student views, got "
                             f"{len(teacher_logits)} and {len(student_logits)}")
        temp = self.teacher_temperature(progress)
        targets = [F.softmax((t.detach().float() - self.center) / temp, dim=-1) for t in teacher_logits]
        log_probs = [F.log_softmax(s.float() / self.student_temp, dim=-1) for s in student_logits]
        total, pairs = 0.0, 0
        for ti, target in enumerate(targets):
            for si, log_prob in enumerate(log_probs):
                if si == ti:
                    continue
                total = total + torch.sum(-target * log_prob, dim=-1).mean()
                pairs += 1
        return total / pairs

    @torch.no_grad()
    def update_center(self, teacher_logits: Sequence[torch.Tensor]) -> None:
        """EMA update of the centre with the batch mean of the teacher logits (``(B, K)`` each), over all ranks."""
        logits = torch.cat([t.detach().float() for t in teacher_logits])
        total = all_reduce_sum(logits.sum(dim=0, keepdim=True))
        count = all_reduce_sum(torch.tensor(float(logits.shape[0]), device=logits.device))
        batch_center = total / count
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)
