"""A small Vision Transformer built from MONAI blocks, for the ViT-based SSL methods (MAE, I-JEPA, DINO, DiSSECT-ViT).

MONAI's ``monai.networks.nets.ViT`` has no way to encode only a subset of patch tokens (MAE, I-JEPA) and
returns a classification tuple; this encoder composes the same MONAI blocks (``PatchEmbeddingBlock``,
``TransformerBlock``) with a class token, token subsets and access to intermediate token maps and to the
last layer's attention. Works on monai 1.4 and later.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import PatchEmbeddingBlock, TransformerBlock
from monai.utils import ensure_tuple_rep
from torch import nn

__all__ = ["ViTEncoder", "ViTTokenPyramid", "gather_tokens", "patchify", "transformer_block"]


def transformer_block(
    hidden_size: int, mlp_dim: int, num_heads: int, dropout_rate: float = 0.0, qkv_bias: bool = True
) -> TransformerBlock:
    """A MONAI self-attention ``TransformerBlock`` without its unused cross-attention parts.

    MONAI creates ``norm_cross_attn`` (and in 1.4 also ``cross_attn``) even when cross-attention is off; they
    never receive gradients (DDP would need ``find_unused_parameters``) and make state dicts differ between
    monai 1.4 and 1.6. They are removed here, so the same checkpoint loads under both.
    """
    block = TransformerBlock(hidden_size, mlp_dim, num_heads, dropout_rate=dropout_rate, qkv_bias=qkv_bias)
    for name in ("norm_cross_attn", "cross_attn"):
        if hasattr(block, name):
            delattr(block, name)
    return block


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Select tokens per sample: ``tokens`` ``(B, N, D)``, ``index`` ``(B, M)`` (long) -> ``(B, M, D)``."""
    return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def patchify(images: torch.Tensor, patch_size: int | Sequence[int]) -> torch.Tensor:
    """Cut images into non-overlapping patches in the token order of :class:`ViTEncoder`.

    Args:
        images: ``(B, C, H, W)`` or ``(B, C, H, W, D)``, spatial sizes divisible by ``patch_size``.
        patch_size: patch edge (int or one per spatial dimension).

    Returns:
        ``(B, N, C * prod(patch_size))`` with patches in row-major grid order (the order of the conv patch
        embedding flattened by ``flatten(2)``), and each patch's pixels ordered channel, then spatial.
    """
    spatial_dims = images.ndim - 2
    patch = ensure_tuple_rep(patch_size, spatial_dims)
    shape = images.shape[2:]
    if any(s % p for s, p in zip(shape, patch)):
        raise ValueError(f"patchify: spatial size {tuple(shape)} is not divisible by patch size {patch}")
    b, c = images.shape[:2]
    grid = [s // p for s, p in zip(shape, patch)]
    view_shape = [b, c]
    for g, p in zip(grid, patch):
        view_shape += [g, p]
    x = images.reshape(view_shape)
    grid_axes = [2 + 2 * i for i in range(spatial_dims)]
    patch_axes = [3 + 2 * i for i in range(spatial_dims)]
    x = x.permute(0, *grid_axes, 1, *patch_axes)
    n_patches = 1
    for g in grid:
        n_patches *= g
    return x.reshape(b, n_patches, -1)


class ViTEncoder(nn.Module):
    """Vision Transformer encoder with a class token (2D or 3D), made of MONAI blocks.

    Args:
        in_channels: image channels.
        img_size: input spatial size (int or one per dimension); inputs must have exactly this size.
        patch_size: patch edge (int or one per dimension).
        hidden_size: token dimension D.
        mlp_dim: hidden size of each block's MLP.
        num_layers: number of transformer blocks.
        num_heads: attention heads per block.
        spatial_dims: 2 or 3.
        pos_embed_type: ``"sincos"`` (fixed, default) or ``"learnable"``.
        qkv_bias: bias in the attention's qkv projection.
        dropout_rate: dropout in the blocks.
        class_token: prepend a learnable class token; the embedding (:meth:`forward`) is then the final
            class token, otherwise the mean of the final patch tokens (I-JEPA, DiSSECT-ViT).

    Attributes:
        grid_size: patch grid, e.g. ``(8, 8)`` for 64 px with patch 8.
        num_patches: number of patch tokens N.
        feature_dim: D (size of :meth:`forward`'s embedding).
        num_prefix_tokens: 1 with a class token (then index 0 of every token sequence is it), else 0.
    """

    def __init__(
        self,
        in_channels: int = 1,
        img_size: int | Sequence[int] = 64,
        patch_size: int | Sequence[int] = 8,
        hidden_size: int = 192,
        mlp_dim: int = 768,
        num_layers: int = 6,
        num_heads: int = 6,
        spatial_dims: int = 2,
        pos_embed_type: str = "sincos",
        qkv_bias: bool = True,
        dropout_rate: float = 0.0,
        class_token: bool = True,
    ) -> None:
        super().__init__()
        self.img_size = ensure_tuple_rep(img_size, spatial_dims)
        self.patch_size = ensure_tuple_rep(patch_size, spatial_dims)
        if any(s % p for s, p in zip(self.img_size, self.patch_size)):
            raise ValueError(f"img_size {self.img_size} must be divisible by patch_size {self.patch_size}")
        self.grid_size = tuple(s // p for s, p in zip(self.img_size, self.patch_size))
        self.num_patches = 1
        for g in self.grid_size:
            self.num_patches *= g
        self.in_channels = in_channels
        self.spatial_dims = spatial_dims
        self.feature_dim = hidden_size
        self.num_heads = num_heads
        self.patch_embedding = PatchEmbeddingBlock(
            in_channels=in_channels,
            img_size=self.img_size,
            patch_size=self.patch_size,
            hidden_size=hidden_size,
            num_heads=num_heads,
            proj_type="conv",
            pos_embed_type=pos_embed_type,
            dropout_rate=dropout_rate,
            spatial_dims=spatial_dims,
        )
        self.num_prefix_tokens = 1 if class_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size)) if class_token else None
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList(
            [
                transformer_block(hidden_size, mlp_dim, num_heads, dropout_rate=dropout_rate, qkv_bias=qkv_bias)
                for _ in range(num_layers)
            ]
        )
        self.norm = nn.LayerNorm(hidden_size)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens with position embeddings: ``(B, C, *spatial)`` -> ``(B, N, D)``.

        At ``img_size`` this is MONAI's ``PatchEmbeddingBlock``; another size (divisible by the patch size,
        e.g. DINO's local crops) gets the position embeddings interpolated to its grid.
        """
        shape = tuple(x.shape[2:])
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels or any(
            s % p for s, p in zip(shape, self.patch_size)
        ):
            raise ValueError(f"ViTEncoder expects input (B, {self.in_channels}, *spatial) with spatial sizes divisible "
                             f"by the patch size {self.patch_size} (trained at {self.img_size}), got {tuple(x.shape)}")
        if shape == self.img_size:
            return self.patch_embedding(x)
        grid = tuple(s // p for s, p in zip(shape, self.patch_size))
        tokens = self.patch_embedding.patch_embeddings(x).flatten(2).transpose(1, 2)
        pos = self.patch_embedding.position_embeddings.transpose(1, 2).reshape(1, -1, *self.grid_size)
        mode = "bicubic" if self.spatial_dims == 2 else "trilinear"
        pos = F.interpolate(pos.float(), size=grid, mode=mode, align_corners=False).flatten(2).transpose(1, 2)
        return self.patch_embedding.dropout(tokens + pos.to(tokens.dtype))

    def encode(
        self,
        x: torch.Tensor,
        keep_index: torch.Tensor | None = None,
        return_depths: Sequence[int] = (),
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the encoder, optionally on a subset of patch tokens.

        Args:
            x: images ``(B, C, *img_size)``.
            keep_index: ``(B, M)`` long indices of the patch tokens to encode (all N if None).
            return_depths: 1-based block numbers whose raw outputs are also returned.

        Returns:
            the final layer-normalised tokens ``(B, num_prefix_tokens + M, D)`` and the list of raw block outputs at
            ``return_depths`` (same layout), in the order given.
        """
        bad = [d for d in return_depths if not 1 <= d <= self.num_layers]
        if bad:
            raise ValueError(f"return_depths {bad} outside 1..{self.num_layers}")
        tokens = self.embed_patches(x)
        if keep_index is not None:
            tokens = gather_tokens(tokens, keep_index)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        hidden: dict[int, torch.Tensor] = {}
        for depth, block in enumerate(self.blocks, start=1):
            tokens = block(tokens)
            if depth in return_depths:
                hidden[depth] = tokens
        return self.norm(tokens), [hidden[d] for d in return_depths]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image embedding ``(B, C, *img_size)`` -> ``(B, D)``: final class token, or mean patch token without one."""
        tokens = self.encode(x)[0]
        return tokens[:, 0] if self.cls_token is not None else tokens.mean(dim=1)

    def tokens_to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """All tokens ``(B, num_prefix_tokens + N, D)`` -> channel-first patch map ``(B, D, *grid_size)``."""
        patch_tokens = tokens[:, self.num_prefix_tokens:]
        b, n, d = patch_tokens.shape
        if n != self.num_patches:
            raise ValueError(f"tokens_to_map needs all {self.num_patches} patch tokens, got {n}")
        return patch_tokens.transpose(1, 2).reshape(b, d, *self.grid_size)

    @torch.no_grad()
    def last_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Last block's attention, ``(B, heads, T, T)``, T = num_prefix_tokens + N (row = query, class token first)."""
        attn = self.blocks[-1].attn
        previous = attn.save_attn
        attn.save_attn = True
        try:
            self.encode(x)
            weights = attn.att_mat
        finally:
            attn.save_attn = previous
        return weights.float()


class ViTTokenPyramid(nn.Module):
    """A :class:`ViTEncoder` seen as a feature pyramid: patch-token maps at chosen depths.

    Same contract as ``ResNetFeaturePyramid`` (``forward(x) -> list`` of channel-first maps, attributes
    ``out_channels``, ``feature_dim``, ``spatial_dims``; ``stage_names`` ``block<depth>``), so methods written for
    pyramids (DiSSECT) run on a ViT.

    Args:
        encoder: the ViT.
        depths: 1-based block numbers to expose (default: 1/3, 2/3 and full depth).
    """

    def __init__(self, encoder: ViTEncoder, depths: Sequence[int] | None = None) -> None:
        super().__init__()
        n = encoder.num_layers
        self.depths = tuple(depths) if depths is not None else (max(1, n // 3), max(1, 2 * n // 3), n)
        bad = [d for d in self.depths if not 1 <= d <= n]
        if bad:
            raise ValueError(f"depths {bad} outside 1..{n}")
        self.encoder = encoder
        self.stage_names = tuple(f"block{d}" for d in self.depths)
        self.out_channels = tuple(encoder.feature_dim for _ in self.depths)
        self.feature_dim = encoder.feature_dim
        self.spatial_dims = encoder.spatial_dims

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C, *img_size)`` -> one ``(B, D, *grid_size)`` patch-token map per depth.

        Maps are the blocks' raw outputs, except at full depth where they are the final layer-normalised tokens.
        """
        final, hidden = self.encoder.encode(x, return_depths=self.depths)
        n = self.encoder.num_layers
        return [self.encoder.tokens_to_map(final if d == n else h) for d, h in zip(self.depths, hidden)]
