"""CoBooM (Singh & Mishra, MICCAI 2024): BYOL plus a codebook on the target map fused by cross-attention.

Differences from the official code, each fixing one of its bugs (see the project's method notes):
the DiversiFuse tokens are the spatial positions of the maps (``(B, C, H, W) -> (B, H*W, C)``, not a
reshape that mixes channels and positions); the codebook's EMA counts are one-hot counts (the shared
:class:`~dissect_monai.networks.quantizer.MultiScaleQuantizer`); the commitment loss has a real gradient
path, through the trainable 1x1 projection in front of the codebook.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from dissect_monai.losses.byol import BYOLLoss
from dissect_monai.networks.embedder import EncoderEmbedder
from dissect_monai.networks.encoders import ResNetFeaturePyramid
from dissect_monai.networks.heads import DiscreteDescriptor, MLPHead
from dissect_monai.networks.quantizer import MultiScaleQuantizer
from dissect_monai.networks.ssl_utils import cosine_momentum, ema_update, global_pool

__all__ = ["CoBooM"]


def _trained_target_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean(2 - 2 cos(prediction, target))`` in fp32 with gradients into *both* inputs ``(B, D)``.

    Unlike :class:`BYOLLoss` the target is not detached: CoBooM trains the codebook-guided target
    (DiversiFuse and its MLP) through this term, as the official code does.
    """
    with torch.autocast(device_type=prediction.device.type, enabled=False):
        return (2.0 - 2.0 * F.cosine_similarity(prediction.float(), target.float(), dim=-1)).mean()


class CoBooM(nn.Module):
    """BYOL with a codebook-guided extra target.

    - online: encoder -> pooled deepest map -> projector -> predictor ``q``;
    - target (EMA of encoder and projector): projection ``z`` and its deepest map ``f`` (no gradient);
    - the codebook (one scale of :class:`MultiScaleQuantizer`: a trainable 1x1 projection, L2-normalised
      nearest code, EMA codebook) quantises ``f``; DiversiFuse is the cross-attention
      :class:`DiscreteDescriptor` (``fusion_heads`` heads, queries from the quantised positions,
      keys/values from the continuous positions of ``f``), pooled over positions, then an MLP
      (``fusion_dim -> fuse_hidden -> projection_dim``) gives the codebook-guided target ``c``.

    ``loss = byol_weight * mean(L(q1, z2), L(q2, z1), L(q2, c1), L(q1, c2)) + commitment`` with
    ``L = 2 - 2 cos``; the first two are BYOL's (target detached), the fused ones train DiversiFuse too.
    The commitment loss trains the codebook's 1x1 projection (the encoder's target map has no gradient).

    Args:
        encoder: pyramid encoder (default ``ResNetFeaturePyramid()``, ResNet-18 2D, 1 channel).
        projection_dim: output of projector, predictor and fuse MLP (256).
        hidden_dim: hidden width of projector and predictor (4096).
        num_codes: codebook size (1024).
        code_dim: code dimension (512).
        commitment_weight: beta (0.25).
        codebook_decay: EMA decay of the codebook (0.99).
        fusion_dim: DiversiFuse token width (512).
        fusion_heads: DiversiFuse heads (8).
        fuse_hidden: hidden width of the fuse MLP (1024).
        byol_weight: multiplier of the mean of the four BYOL terms (10 in the 2024 code).
        base_momentum: target EMA momentum at the start (0.996), cosine schedule to ``final_momentum``.
        final_momentum: momentum at the end (1.0).
    """

    def __init__(
        self,
        encoder: nn.Module | None = None,
        projection_dim: int = 256,
        hidden_dim: int = 4096,
        num_codes: int = 1024,
        code_dim: int = 512,
        commitment_weight: float = 0.25,
        codebook_decay: float = 0.99,
        fusion_dim: int = 512,
        fusion_heads: int = 8,
        fuse_hidden: int = 1024,
        byol_weight: float = 10.0,
        base_momentum: float = 0.996,
        final_momentum: float = 1.0,
    ) -> None:
        super().__init__()
        self.embedder = EncoderEmbedder(encoder if encoder is not None else ResNetFeaturePyramid())
        feature_dim = self.encoder.feature_dim
        spatial_dims = getattr(self.encoder, "spatial_dims", 2)
        self.projector = MLPHead(feature_dim, hidden_dim, projection_dim)
        self.predictor = MLPHead(projection_dim, hidden_dim, projection_dim)
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.quantizer = MultiScaleQuantizer(
            in_channels=(feature_dim,),
            num_codes=num_codes,
            code_dims=code_dim,
            spatial_dims=spatial_dims,
            commitment_weight=commitment_weight,
            decay=codebook_decay,
            names=("target",),
        )
        self.diversifuse = DiscreteDescriptor((code_dim,), feature_dim, "cross_attention", fusion_dim, fusion_heads)
        self.fuse_mlp = MLPHead(fusion_dim, fuse_hidden, projection_dim, batch_norm=False)
        self.byol_loss = BYOLLoss()
        self.byol_weight = byol_weight
        self.base_momentum = base_momentum
        self.final_momentum = final_momentum

    @property
    def encoder(self) -> nn.Module:
        """The online encoder (what transfer uses)."""
        return self.embedder.encoder

    def codebook_target(self, target_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codebook-guided target of a target-network map ``(B, C, *S)``: ``(B, projection_dim)`` and commitment.

        The codebook is EMA-updated in training mode.
        """
        quantised, commitment, _ = self.quantizer([target_map])
        fused = self.diversifuse(quantised, target_map)
        return self.fuse_mlp(fused), commitment

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            view1: first views ``(B, C, *spatial)``.
            view2: second views, same shape.

        Returns:
            ``loss``, ``byol_loss`` (the two plain terms, mean), ``codebook_loss`` (the two fused terms, mean)
            and ``commitment_loss``; fp32 scalars.
        """
        if view1.shape != view2.shape:
            raise ValueError(
                f"the two views must have the same shape, got {tuple(view1.shape)} and {tuple(view2.shape)}"
            )
        x = torch.cat([view1, view2])
        prediction = self.predictor(self.projector(global_pool(self.encoder(x)[-1])))
        with torch.no_grad():
            target_map = self.target_encoder(x)[-1]
            target = self.target_projector(global_pool(target_map))
        fused, commitment = self.codebook_target(target_map)
        q1, q2 = prediction.chunk(2)
        z1, z2 = target.chunk(2)
        c1, c2 = fused.chunk(2)
        byol = 0.5 * (self.byol_loss(q1, z2) + self.byol_loss(q2, z1))
        codebook = 0.5 * (_trained_target_loss(q2, c1) + _trained_target_loss(q1, c2))
        loss = self.byol_weight * 0.5 * (byol + codebook) + commitment
        return {"loss": loss, "byol_loss": byol, "codebook_loss": codebook, "commitment_loss": commitment}

    @torch.no_grad()
    def update_target(self, progress: float) -> float:
        """EMA of encoder and projector into their target copies (cosine momentum at ``progress``); returns it."""
        m = cosine_momentum(progress, self.base_momentum, self.final_momentum)
        ema_update([(self.encoder, self.target_encoder), (self.projector, self.target_projector)], m)
        return m

    def codebook_statistics(self) -> dict[str, float]:
        """``target_perplexity``, ``target_usage``, ``target_dead_codes`` of the last training batch."""
        return self.quantizer.statistics()
