"""Heads of the SSL methods: projector / predictor / expander MLPs, the discrete descriptor with its fusions
(DiSSECT, CoBooM's DiversiFuse), DINO's prototype head, the MAE decoder and the I-JEPA predictor."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding
from torch import nn

from dissect_monai.networks.ssl_utils import global_pool, pooled_codes
from dissect_monai.networks.vit import ViTEncoder, gather_tokens, transformer_block

__all__ = ["FUSIONS", "DINOHead", "DiscreteDescriptor", "JEPAPredictor", "MAEDecoder", "MLPHead"]

#: ways to combine the discrete descriptor with the continuous feature before the discrete head.
FUSIONS: tuple[str, ...] = ("none", "concat", "cross_attention")


class MLPHead(nn.Module):
    """``in_dim -> hidden_dims... -> out_dim`` MLP; every hidden layer is Linear + BatchNorm1d + ReLU.

    BYOL's projector is ``MLPHead(512, 4096, 256)`` and its predictor ``MLPHead(256, 4096, 256)``; VICReg's and
    MLVICX's expanders have several hidden layers; CoBooM's fuse MLP has no normalisation.

    Args:
        in_dim: input features.
        hidden_dims: width of each hidden layer (one int for a single hidden layer).
        out_dim: output features.
        last_bias: bias on the output layer.
        batch_norm: BatchNorm1d after each hidden Linear (which then has no bias); False: Linear (with bias) + ReLU.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: int | Sequence[int] = 4096,
        out_dim: int = 256,
        last_bias: bool = True,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        hidden = [hidden_dims] if isinstance(hidden_dims, int) else list(hidden_dims)
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h, bias=not batch_norm)]
            layers += [nn.BatchNorm1d(h)] if batch_norm else []
            layers += [nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Linear(width, out_dim, bias=last_bias))
        self.layers = nn.Sequential(*layers)
        self.in_dim = in_dim
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_dim) -> (B, out_dim)``."""
        return self.layers(x)


class DINOHead(nn.Module):
    """DINO projection head: MLP (GELU) to an L2-normalised bottleneck, then a weight-normalised linear layer
    (norm fixed to 1) to ``out_dim`` prototype logits.

    Args:
        in_dim: input size (the ViT width).
        out_dim: number of prototypes K.
        hidden_dim: MLP hidden width.
        bottleneck_dim: bottleneck size before the prototypes.
        num_layers: MLP layers (>= 1).
    """

    def __init__(
        self, in_dim: int, out_dim: int = 4096, hidden_dim: int = 1024, bottleneck_dim: int = 256, num_layers: int = 3
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(width, hidden_dim), nn.GELU()]
            width = hidden_dim
        layers.append(nn.Linear(width, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_dim)`` -> logits ``(B, out_dim)``."""
        x = F.normalize(self.mlp(x), dim=-1)
        return F.linear(x, F.normalize(self.prototypes, dim=-1))


class MAEDecoder(nn.Module):
    """MAE's light decoder: visible tokens plus a shared mask token at every hidden position -> pixels per patch.

    The encoded visible tokens (and any prefix token) are projected to ``decoder_dim``, the mask token fills the
    hidden positions, the sequence is put back in grid order and gets fixed sin-cos positions; after the blocks a
    linear layer predicts the ``in_channels * prod(patch_size)`` pixels of every patch.

    Args:
        encoder: the :class:`ViTEncoder` whose tokens are decoded (grid, width, prefix tokens, patch size).
        decoder_dim: token size of the decoder (narrower than the encoder).
        depth: decoder blocks.
        num_heads: decoder attention heads.
    """

    def __init__(self, encoder: ViTEncoder, decoder_dim: int = 128, depth: int = 2, num_heads: int = 4) -> None:
        super().__init__()
        patch_pixels = encoder.in_channels
        for p in encoder.patch_size:
            patch_pixels *= p
        self.num_patches = encoder.num_patches
        self.num_prefix_tokens = encoder.num_prefix_tokens
        self.embed = nn.Linear(encoder.feature_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.pos_embed = build_sincos_position_embedding(encoder.grid_size, decoder_dim, encoder.spatial_dims)
        self.blocks = nn.ModuleList([transformer_block(decoder_dim, 4 * decoder_dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(decoder_dim)
        self.predict = nn.Linear(decoder_dim, patch_pixels)

    def forward(self, latent: torch.Tensor, restore_index: torch.Tensor) -> torch.Tensor:
        """
        Args:
            latent: encoded tokens ``(B, prefix + K, D)``: prefix tokens, then the K visible patches.
            restore_index: ``(B, N)`` position of each grid patch in the ``[visible, masked]`` order.

        Returns:
            predicted patches ``(B, N, P)`` in grid order.
        """
        b = latent.shape[0]
        tokens = self.embed(latent)
        prefix, visible = tokens[:, : self.num_prefix_tokens], tokens[:, self.num_prefix_tokens:]
        n_masked = self.num_patches - visible.shape[1]
        full = torch.cat([visible, self.mask_token.to(visible.dtype).expand(b, n_masked, -1)], dim=1)
        full = gather_tokens(full, restore_index) + self.pos_embed.to(full.dtype)
        x = torch.cat([prefix, full], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.predict(self.norm(x))[:, self.num_prefix_tokens:]


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


class DiscreteDescriptor(nn.Module):
    """One vector per image from the quantised maps, optionally fused with the continuous deepest map.

    ``fusion``: ``"none"`` -> :func:`pooled_codes` (the average-pooled quantised maps), ``(B, sum(code_dims))``;
    ``"concat"`` -> that plus the pooled continuous map, ``(B, sum(code_dims) + feature_dim)``;
    ``"cross_attention"`` -> multi-head attention with queries = quantised positions of every scale and
    keys/values = positions of the continuous map (tokens are spatial positions), residual + LayerNorm,
    averaged over queries, ``(B, fusion_dim)``.
    """

    def __init__(
        self,
        code_dims: Sequence[int],
        feature_dim: int,
        fusion: str = "none",
        fusion_dim: int = 256,
        fusion_heads: int = 8,
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}.")
        self.fusion = fusion
        if fusion == "cross_attention":
            self.query_proj = nn.ModuleList([nn.Linear(d, fusion_dim) for d in code_dims])
            self.key_proj = nn.Linear(feature_dim, fusion_dim)
            self.attention = nn.MultiheadAttention(fusion_dim, fusion_heads, batch_first=True)
            self.norm = nn.LayerNorm(fusion_dim)
            self.out_dim = fusion_dim
        else:
            self.out_dim = sum(code_dims) + (feature_dim if fusion == "concat" else 0)

    def forward(self, quantised: Sequence[torch.Tensor], continuous: torch.Tensor) -> torch.Tensor:
        """``quantised``: ``(B, D_i, *S_i)`` per scale; ``continuous``: ``(B, feature_dim, *S)``.

        Returns:
            ``(B, out_dim)``.
        """
        if self.fusion == "cross_attention":
            queries = torch.cat(
                [proj(q.flatten(2).transpose(1, 2)) for proj, q in zip(self.query_proj, quantised)], dim=1
            )  # (B, sum N_i, F): one token per spatial position
            keys = self.key_proj(continuous.flatten(2).transpose(1, 2))  # (B, M, F)
            attended, _ = self.attention(queries, keys, keys, need_weights=False)
            return self.norm(queries + attended).mean(dim=1)
        pooled = pooled_codes(list(quantised))
        if self.fusion == "concat":
            return torch.cat([pooled, global_pool(continuous)], dim=1)
        return pooled
