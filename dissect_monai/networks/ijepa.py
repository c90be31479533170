"""I-JEPA (Assran et al., CVPR 2023) on a :class:`ViTEncoder`: predict target-block features from a context block."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn

from dissect_monai.losses.jepa import LatentPredictionLoss
from dissect_monai.networks.embedder import EncoderEmbedder
from dissect_monai.networks.heads import JEPAPredictor
from dissect_monai.networks.ssl_utils import cosine_momentum, ema_update
from dissect_monai.networks.vit import ViTEncoder, gather_tokens

__all__ = ["BlockMaskGenerator", "IJEPA"]


class BlockMaskGenerator:
    """Context and target blocks on a 2D patch grid, as in I-JEPA.

    Per batch, one target block size (scale and aspect ratio) and one context block size are drawn; per
    sample, ``num_targets`` target blocks and one context block are placed at random positions, and the
    context loses every patch covered by a target. To stack samples, every sample keeps the same number of
    context patches (the batch minimum, random patches dropped from the larger ones).

    Args:
        grid_size: patch grid ``(H, W)``.
        num_targets: target blocks per sample (4).
        target_scale: range of a target block's area as a fraction of the grid (0.15-0.2).
        target_aspect: range of a target block's aspect ratio h/w (0.75-1.5).
        context_scale: range of the context block's area (0.85-1.0).
        min_context: fewest context patches accepted; a draw leaving fewer is redrawn (up to 20 times).
    """

    def __init__(
        self,
        grid_size: Sequence[int],
        num_targets: int = 4,
        target_scale: tuple[float, float] = (0.15, 0.2),
        target_aspect: tuple[float, float] = (0.75, 1.5),
        context_scale: tuple[float, float] = (0.85, 1.0),
        min_context: int = 4,
    ) -> None:
        if len(grid_size) != 2:
            raise ValueError(f"BlockMaskGenerator works on a 2D patch grid, got grid_size {tuple(grid_size)}")
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        if num_targets < 1:
            raise ValueError(f"num_targets must be >= 1, got {num_targets}")
        self.num_targets = num_targets
        self.target_scale = target_scale
        self.target_aspect = target_aspect
        self.context_scale = context_scale
        self.min_context = min_context

    def _block_size(self, scale: tuple[float, float], aspect: tuple[float, float]) -> tuple[int, int]:
        gh, gw = self.grid_size
        area = gh * gw * float(torch.empty(1).uniform_(*scale))
        log_aspect = torch.empty(1).uniform_(math.log(aspect[0]), math.log(aspect[1]))
        ratio = float(torch.exp(log_aspect))
        h = int(round(math.sqrt(area * ratio)))
        w = int(round(math.sqrt(area / ratio)))
        return min(max(h, 1), gh), min(max(w, 1), gw)

    def _place(self, size: tuple[int, int]) -> torch.Tensor:
        """A random block of ``size`` on the grid as a flat bool mask ``(H * W,)``."""
        gh, gw = self.grid_size
        top = int(torch.randint(0, gh - size[0] + 1, (1,)))
        left = int(torch.randint(0, gw - size[1] + 1, (1,)))
        mask = torch.zeros(gh, gw, dtype=torch.bool)
        mask[top: top + size[0], left: left + size[1]] = True
        return mask.flatten()

    def __call__(self, batch: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Draw masks for ``batch`` samples.

        Returns:
            ``context_index`` ``(B, Kc)`` and a list of ``num_targets`` tensors ``(B, Kt)`` of flat patch indices
            (row-major grid order, the token order of :class:`ViTEncoder`); context and targets never overlap.
        """
        target_size = self._block_size(self.target_scale, self.target_aspect)
        context_size = self._block_size(self.context_scale, (1.0, 1.0))
        targets: list[list[torch.Tensor]] = [[] for _ in range(self.num_targets)]
        contexts: list[torch.Tensor] = []
        for _ in range(batch):
            for _attempt in range(20):
                blocks = [self._place(target_size) for _ in range(self.num_targets)]
                context = self._place(context_size)
                for block in blocks:
                    context &= ~block
                if int(context.sum()) >= self.min_context:
                    break
            else:
                raise RuntimeError(f"BlockMaskGenerator: no context of >= {self.min_context} patches left beside "
                                   f"{self.num_targets} targets of {target_size} on grid {self.grid_size}")
            for t, block in enumerate(blocks):
                targets[t].append(block.nonzero().flatten())
            contexts.append(context.nonzero().flatten())
        keep = min(len(c) for c in contexts)
        context_index = torch.stack([c[torch.randperm(len(c))[:keep].sort().values] for c in contexts])
        return context_index, [torch.stack(t) for t in targets]


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
        context_index, target_indices = self.masks(b)
        context_index = context_index.to(images.device)
        target_indices = [t.to(images.device) for t in target_indices]
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
