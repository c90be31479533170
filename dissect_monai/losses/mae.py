"""MAE reconstruction loss (He et al., CVPR 2022): per-patch normalised pixels, masked patches only."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MaskedPatchLoss"]


class MaskedPatchLoss(nn.Module):
    """Mean squared error between predicted and target patches, averaged over the masked patches only.

    With ``norm_pix=True`` each target patch is normalised by its own mean and standard deviation
    (``(x - mean) / sqrt(var + eps)``), the MAE paper's default. Computed in fp32.

    Args:
        norm_pix: normalise each target patch by its own statistics.
        eps: variance floor of the normalisation (1e-6).
    """

    def __init__(self, norm_pix: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm_pix = norm_pix
        self.eps = eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            pred: predicted patches ``(B, N, P)`` (P = channels x pixels per patch).
            target: image patches ``(B, N, P)``.
            mask: ``(B, N)``, 1 where the patch was masked (hidden from the encoder), 0 where visible.

        Returns:
            fp32 scalar: mean over masked patches of the per-patch mean squared error.
        """
        if pred.shape != target.shape or mask.shape != pred.shape[:2]:
            raise ValueError(f"MaskedPatchLoss: pred {tuple(pred.shape)}, target {tuple(target.shape)} and mask "
                             f"{tuple(mask.shape)} do not match (expected (B, N, P), (B, N, P), (B, N))")
        target = target.float()
        if self.norm_pix:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / torch.sqrt(var + self.eps)
        per_patch = (pred.float() - target).pow(2).mean(dim=-1)
        mask = mask.float()
        n_masked = mask.sum()
        if n_masked == 0:
            raise ValueError("MaskedPatchLoss: the mask hides no patch, nothing to reconstruct")
        return (per_patch * mask).sum() / n_masked
