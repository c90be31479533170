"""I-JEPA latent prediction loss (Assran et al., CVPR 2023): L2 between predicted and target token features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LatentPredictionLoss"]


class LatentPredictionLoss(nn.Module):
    """Mean squared (L2) distance in representation space between predicted and target tokens.

    Target tokens come from the EMA target encoder and carry no gradient; with ``normalize_targets``
    they are layer-normalised over the feature dimension first (as in I-JEPA). The loss is the mean over
    target blocks of the per-token mean squared error. Computed in fp32.

    Args:
        normalize_targets: layer-normalise each target token (no affine) before the distance.
    """

    def __init__(self, normalize_targets: bool = True) -> None:
        super().__init__()
        self.normalize_targets = normalize_targets

    def forward(self, predictions: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            predictions: one ``(B, M_i, D)`` tensor per target block, from the predictor.
            targets: the matching ``(B, M_i, D)`` target-encoder tokens.

        Returns:
            fp32 scalar loss.
        """
        if len(predictions) != len(targets) or len(predictions) == 0:
            raise ValueError(f"LatentPredictionLoss: {len(predictions)} predictions for {len(targets)} targets")
        total = 0.0
        for pred, target in zip(predictions, targets):
            if pred.shape != target.shape:
                raise ValueError(f"LatentPredictionLoss: prediction {tuple(pred.shape)} vs target "
                                 f"{tuple(target.shape)}")
            target = target.detach().float()
            if self.normalize_targets:
                target = F.layer_norm(target, (target.shape[-1],))
            total = total + F.mse_loss(pred.float(), target)
        return total / len(predictions)
