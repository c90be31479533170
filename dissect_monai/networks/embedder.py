"""The inference network the pretraining bundle ships for the baseline methods: image -> embedding."""

from __future__ import annotations

import torch
from torch import nn

from dissect_monai.networks.ssl_utils import global_pool

__all__ = ["EncoderEmbedder"]


class EncoderEmbedder(nn.Module):
    """Wraps the evaluated encoder of an SSL method as ``image -> (B, D)`` (the bundle's ``models/model.pt``).

    For a pyramid encoder (``forward(x) -> list`` of maps, e.g. ``ResNetFeaturePyramid``) the embedding is
    the average-pooled deepest map; for an encoder that returns a vector (``ViTEncoder``) it is that
    vector. The state dict keys start with ``encoder.``, as
    :func:`~dissect_monai.networks.load_pretrained_encoder` expects.

    Args:
        encoder: the encoder the SSL method trains (shared, not copied).
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.embedding_dim: int = int(encoder.feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` -> ``(B, embedding_dim)``."""
        out = self.encoder(x)
        if isinstance(out, (list, tuple)):
            return global_pool(out[-1])
        return out
