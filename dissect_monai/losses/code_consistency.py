"""Code-assignment consistency between two views: the online view's soft code usage should match the target's."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CodeConsistencyLoss"]


class CodeConsistencyLoss(nn.Module):
    """``KL(h_target || p_online)`` between per-image code histograms, averaged over the batch, in fp32.

    ``p_online`` ``(B, K)`` is the mean over positions of the online view's soft assignments (softmax of
    code similarities) and ``h_target`` ``(B, K)`` the fraction of positions of the *other* view that the
    target network assigns to each code (no gradient). The views are different crops, so positions do
    not correspond; what must agree is which codes an image uses. Zero when the histograms are equal.

    Args:
        eps: floor of the probabilities inside the logarithms.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, online_soft: torch.Tensor, target_hard: torch.Tensor) -> torch.Tensor:
        """``online_soft``, ``target_hard``: ``(B, K)`` rows summing to 1; returns a fp32 scalar >= 0."""
        with torch.autocast(device_type=online_soft.device.type, enabled=False):
            p = online_soft.float().clamp_min(self.eps)
            h = target_hard.detach().float()
            return (h * (torch.log(h.clamp_min(self.eps)) - torch.log(p))).sum(dim=-1).mean()
