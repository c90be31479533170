"""I-JEPA (Assran et al., CVPR 2023) on a :class:`ViTEncoder`: predict target-block features from a context block."""

from __future__ import annotations

import copy

import torch
from torch import nn

from dissect_monai.losses.jepa import LatentPredictionLoss
from dissect_monai.networks.embedder import EncoderEmbedder
from dissect_monai.networks.heads import JEPAPredictor
from dissect_monai.networks.ssl_utils import cosine_momentum, ema_update
from dissect_monai.networks.vit import ViTEncoder, gather_tokens
from dissect_monai.transforms.batched import BlockMaskGenerator

__all__ = ["IJEPA"]


class IJEPA(nn.Module):
    """I-JEPA: from a context block, a narrow predictor regresses the EMA target encoder's features of
    ``num_targets`` target blocks (L2 in latent space, layer-normalised targets, :class:`LatentPredictionLoss`).

    The context encoder sees only the context patches; the target encoder (EMA of the context encoder)
    sees the whole image. ``forward(view1, view2=None)`` treats the views as independent samples (as
    many images per step as a two-view method). The ViT has no class token; its embedding is the mean
    patch token.

    Args:
        encoder: the ViT (default ``ViTEncoder(class_token=False)``); 2D only.
        predictor_dim: predictor width (narrower than the encoder).
        predictor_depth: predictor blocks.
        predictor_heads: predictor heads.
        num_targets: target blocks per image (4).
        target_scale: target block area range (0.15-0.2).
        target_aspect: target block aspect range (0.75-1.5).
        context_scale: context block area range (0.85-1.0).
        base_momentum: target EMA momentum at the start (0.996), cosine schedule to ``final_momentum`` (1.0).
        final_momentum: momentum at the end.
    """

    def __init__(
        self,
        encoder: ViTEncoder | None = None,
        predictor_dim: int = 96,
        predictor_depth: int = 3,
        predictor_heads: int = 4,
        num_targets: int = 4,
        target_scale: tuple[float, float] = (0.15, 0.2),
        target_aspect: tuple[float, float] = (0.75, 1.5),
        context_scale: tuple[float, float] = (0.85, 1.0),
        base_momentum: float = 0.996,
        final_momentum: float = 1.0,
    ) -> None:
        super().__init__()
        self.embedder = EncoderEmbedder(encoder if encoder is not None else ViTEncoder(class_token=False))
        enc = self.encoder
        if enc.cls_token is not None:
            raise ValueError("I-JEPA uses a ViTEncoder without a class token (class_token=False)")
        self.masks = BlockMaskGenerator(enc.grid_size, num_targets, tuple(target_scale), tuple(target_aspect),
                                        tuple(context_scale))
        self.predictor = JEPAPredictor(enc.grid_size, enc.feature_dim, predictor_dim, predictor_depth, predictor_heads)
        self.target_encoder = copy.deepcopy(enc).requires_grad_(False)
        self.loss_function = LatentPredictionLoss(normalize_targets=True)
        self.base_momentum = base_momentum
        self.final_momentum = final_momentum

    @property
    def encoder(self) -> ViTEncoder:
        """The context encoder (what transfer uses)."""
        return self.embedder.encoder

    def forward(self, view1: torch.Tensor, view2: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """
        Args:
            view1: images ``(B, C, H, W)`` at the encoder's size.
            view2: optional second view, used as B more samples.

        Returns:
            ``{"loss", "latent_loss", "context_fraction"}`` (fp32 scalars).
        """
        images = view1 if view2 is None else torch.cat([view1, view2], dim=0)
        b = images.shape[0]
        context_index, target_indices = self.masks(b, images.device)
        with torch.no_grad():
            full, _ = self.target_encoder.encode(images)
            targets = [gather_tokens(full, t) for t in target_indices]
        context, _ = self.encoder.encode(images, keep_index=context_index)
        n_t = len(target_indices)
        predictions = self.predictor(
            context.repeat(n_t, 1, 1), context_index.repeat(n_t, 1), torch.cat(target_indices, dim=0)
        ).chunk(n_t)
        loss = self.loss_function(list(predictions), targets)
        fraction = torch.tensor(context_index.shape[1] / self.encoder.num_patches)
        return {"loss": loss, "latent_loss": loss.detach(), "context_fraction": fraction}

    @torch.no_grad()
    def update_target(self, progress: float) -> float:
        """EMA of the context encoder into the target encoder (cosine momentum at ``progress``); returns it."""
        m = cosine_momentum(progress, self.base_momentum, self.final_momentum)
        ema_update([(self.encoder, self.target_encoder)], m)
        return m
