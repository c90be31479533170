"""VICReg (Bardes, Ponce & LeCun, ICLR 2022) as an SSL method module: one shared encoder, an expander, no target."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dissect_monai.losses.vicreg import VICRegLoss
from dissect_monai.networks.embedder import EncoderEmbedder
from dissect_monai.networks.encoders import ResNetFeaturePyramid
from dissect_monai.networks.heads import MLPHead
from dissect_monai.networks.ssl_utils import global_pool

__all__ = ["VICReg"]


class VICReg(nn.Module):
    """VICReg: both views through the same encoder and expander; variance-invariance-covariance loss.

    ``embedder`` (:class:`EncoderEmbedder`) is the network the bundle ships. The representation is the
    pooled deepest map of the encoder (``(B, encoder.feature_dim)``), the expander an :class:`MLPHead`
    (Linear-BN-ReLU hidden layers), the loss :class:`VICRegLoss` (25/25/1).

    Args:
        encoder: a feature-pyramid encoder (``forward(x) -> list of maps``, attribute ``feature_dim``);
            default ``ResNetFeaturePyramid(spatial_dims=2, in_channels=1, depth=18)``.
        expander_dims: widths of the expander's hidden layers and output (the last entry is the output).
        invariance_weight: VICReg lambda.
        variance_weight: VICReg mu.
        covariance_weight: VICReg nu.
    """

    def __init__(
        self,
        encoder: nn.Module | None = None,
        expander_dims: Sequence[int] = (4096, 4096, 4096),
        invariance_weight: float = 25.0,
        variance_weight: float = 25.0,
        covariance_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if len(expander_dims) < 1:
            raise ValueError("expander_dims needs at least the output width")
        self.embedder = EncoderEmbedder(encoder if encoder is not None else ResNetFeaturePyramid())
        self.expander = MLPHead(self.encoder.feature_dim, list(expander_dims[:-1]), expander_dims[-1])
        self.loss_function = VICRegLoss(invariance_weight, variance_weight, covariance_weight)

    @property
    def encoder(self) -> nn.Module:
        """The encoder being pretrained (what transfer uses)."""
        return self.embedder.encoder

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            view1: first views ``(B, C, *spatial)``.
            view2: second views, same shape.

        Returns:
            ``{"loss", "invariance", "variance", "covariance"}`` (fp32 scalars).
        """
        z1 = self.expander(global_pool(self.encoder(view1)[-1]))
        z2 = self.expander(global_pool(self.encoder(view2)[-1]))
        return self.loss_function(z1, z2)

    def update_target(self, progress: float) -> float:
        """VICReg has no target network: nothing to update; returns momentum 0.0 for the engine's log."""
        return 0.0
