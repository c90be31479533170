"""VICReg loss (Bardes, Ponce & LeCun, ICLR 2022): invariance, variance and covariance terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dissect_monai.utils.distributed import gather_with_grad

__all__ = ["VICRegLoss"]


def _off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    """Flattened off-diagonal entries of a square ``(D, D)`` matrix, shape ``(D * (D - 1),)``."""
    n = matrix.shape[0]
    return matrix.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


class VICRegLoss(nn.Module):
    """Variance-Invariance-Covariance regularisation between two batches of embeddings.

    ``loss = invariance_weight * mse(z1, z2) + variance_weight * variance + covariance_weight * covariance``
    where ``variance`` is the mean hinge ``relu(gamma - sqrt(var + eps))`` over the dimensions of each
    branch (averaged over the two branches) and ``covariance`` is the sum of squared off-diagonal
    covariances divided by the dimension, summed over the two branches (as in the paper's pseudo-code).
    Computed in fp32 whatever the input dtype (bf16 autocast included). Under ``torch.distributed`` all three terms
    are computed on the embeddings of every rank (gathered with gradient, as the official code's
    ``FullGatherLayer``), so ``W`` ranks of ``B`` give the loss and, after DDP's gradient averaging, the gradients
    of one batch of ``W * B``.

    Args:
        invariance_weight: lambda of the paper (25).
        variance_weight: mu of the paper (25).
        covariance_weight: nu of the paper (1).
        gamma: target standard deviation of each dimension (1).
        eps: numerical floor inside the square root (1e-4).
    """

    def __init__(
        self,
        invariance_weight: float = 25.0,
        variance_weight: float = 25.0,
        covariance_weight: float = 1.0,
        gamma: float = 1.0,
        eps: float = 1e-4,
    ) -> None:
        super().__init__()
        self.invariance_weight = invariance_weight
        self.variance_weight = variance_weight
        self.covariance_weight = covariance_weight
        self.gamma = gamma
        self.eps = eps

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            z1: embeddings of the first view, ``(B, D)`` with ``B >= 2`` (over all ranks).
            z2: embeddings of the second view, ``(B, D)``.

        Returns:
            ``{"loss", "invariance", "variance", "covariance"}``, fp32 scalars; ``loss`` is the weighted sum.
        """
        if z1.ndim != 2 or z1.shape != z2.shape:
            raise ValueError(f"VICRegLoss expects two (B, D) tensors of the same shape, got {tuple(z1.shape)} "
                             f"and {tuple(z2.shape)}")
        z1, z2 = gather_with_grad(z1.float()), gather_with_grad(z2.float())
        if z1.shape[0] < 2:
            raise ValueError(f"VICRegLoss needs a batch of at least 2 to estimate variances, got {z1.shape[0]}")
        batch, dim = z1.shape
        invariance = F.mse_loss(z1, z2)
        z1 = z1 - z1.mean(dim=0)
        z2 = z2 - z2.mean(dim=0)
        std1 = torch.sqrt(z1.var(dim=0) + self.eps)
        std2 = torch.sqrt(z2.var(dim=0) + self.eps)
        variance = 0.5 * (F.relu(self.gamma - std1).mean() + F.relu(self.gamma - std2).mean())
        cov1 = (z1.T @ z1) / (batch - 1)
        cov2 = (z2.T @ z2) / (batch - 1)
        covariance = _off_diagonal(cov1).pow(2).sum() / dim + _off_diagonal(cov2).pow(2).sum() / dim
        loss = (
            self.invariance_weight * invariance
            + self.variance_weight * variance
            + self.covariance_weight * covariance
        )
        return {"loss": loss, "invariance": invariance, "variance": variance, "covariance": covariance}
