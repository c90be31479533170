"""BYOL's regression loss: ``2 - 2 cos(prediction, target)``, computed in fp32, target without gradient."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BYOLLoss"]


class BYOLLoss(nn.Module):
    """Mean over the batch of ``2 - 2 cos(p, z)`` = squared distance of the L2-normalised vectors.

    The target ``z`` is detached (the target network receives no gradient). Whatever the input dtype
    (bf16 autocast included), normalisation and the loss are computed in fp32. BYOL symmetrises it over
    the two views: ``(loss(p1, z2) + loss(p2, z1)) / 2``.
    """

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``prediction``, ``target``: ``(B, D)``; returns a fp32 scalar in ``[0, 4]``."""
        with torch.autocast(device_type=prediction.device.type, enabled=False):
            p = F.normalize(prediction.float(), dim=-1)
            z = F.normalize(target.detach().float(), dim=-1)
            return (2.0 - 2.0 * (p * z).sum(dim=-1)).mean()
