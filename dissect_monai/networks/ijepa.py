"""I-JEPA (Assran et al., CVPR 2023) on a :class:`ViTEncoder`: predict target-block features from a context block."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding
from torch import nn

from dissect_monai.losses.jepa import LatentPredictionLoss
from dissect_monai.networks.dissect import cosine_momentum
from dissect_monai.networks.embedder import EncoderEmbedder
from dissect_monai.networks.vit import ViTEncoder, gather_tokens, transformer_block
from dissect_monai.transforms.batched import BlockMaskGenerator

__all__ = ["IJEPA", "JEPAPredictor"]


class JEPAPredictor(nn.Module):
    """Narrow transformer that predicts target-token features from context tokens and target positions.

    Context tokens (encoder width) are projected to ``predictor_dim`` and get their positional embedding;
    each target position is a shared learnable mask token plus its positional embedding. After the
    blocks, the target tokens are projected back to the encoder width.

    Args:
        grid_size: patch grid.
        encoder_dim: token size D of the encoder.
        predictor_dim: token size of the predictor (narrower than D).
        depth: predictor blocks.
        num_heads: predictor attention heads.
    """

    def __init__(
        self, grid_size: Sequence[int], encoder_dim: int, predictor_dim: int = 96, depth: int = 3, num_heads: int = 4
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(encoder_dim, predictor_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, predictor_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.pos_embed = build_sincos_position_embedding(tuple(grid_size), predictor_dim, len(grid_size))
        self.blocks = nn.ModuleList(
            [transformer_block(predictor_dim, 4 * predictor_dim, num_heads) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(predictor_dim)
        self.project = nn.Linear(predictor_dim, encoder_dim)

    def forward(self, context: torch.Tensor, context_index: torch.Tensor, target_index: torch.Tensor) -> torch.Tensor:
        """
        Args:
            context: encoded context tokens ``(B, Kc, D)``.
            context_index: their grid positions ``(B, Kc)``.
            target_index: grid positions to predict ``(B, Kt)``.

        Returns:
            predicted target features ``(B, Kt, D)``.
        """
        b = context.shape[0]
        pos = self.pos_embed.expand(b, -1, -1)
        x = self.embed(context)
        x = x + gather_tokens(pos, context_index).to(x.dtype)
        queries = self.mask_token.to(x.dtype) + gather_tokens(pos, target_index).to(x.dtype)
        x = torch.cat([x, queries.expand(b, -1, -1)], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.project(self.norm(x[:, context.shape[1]:]))


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
        for po, pt in zip(self.encoder.parameters(), self.target_encoder.parameters()):
            pt.mul_(m).add_(po.detach(), alpha=1.0 - m)
        return m
