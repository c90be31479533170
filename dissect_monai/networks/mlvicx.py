"""MLVICX (Singh, Gorade & Mishra, IEEE JBHI 2024): VICReg on a global and a multi-level embedding.

Unlike the official code, the context bottlenecks stay inside the encoder that is evaluated and
transferred (:class:`ContextResNetFeaturePyramid`), and every 1x1 level projection is created in
``__init__`` so the optimizer sees and trains it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv, Pool
from torch import nn

from dissect_monai.losses.vicreg import VICRegLoss
from dissect_monai.networks.embedder import EncoderEmbedder
from dissect_monai.networks.encoders import ResNetFeaturePyramid
from dissect_monai.networks.heads import MLPHead
from dissect_monai.networks.ssl_utils import global_pool

__all__ = ["ContextBottleneck", "ContextResNetFeaturePyramid", "MLVICX"]


class ContextBottleneck(nn.Module):
    """CBAM-like context block: channel attention (shared MLP on avg- and max-pooled features, reduction r)
    then spatial attention (a ``k x k`` conv on the channel-wise mean and max maps), both sigmoid gates.

    Args:
        channels: C of the input map ``(B, C, *spatial)``.
        reduction: channel reduction of the attention MLP (2 in MLVICX).
        spatial_kernel: kernel of the spatial attention conv (7).
        spatial_dims: 2 or 3.
    """

    def __init__(self, channels: int, reduction: int = 2, spatial_kernel: int = 7, spatial_dims: int = 2) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        hidden = max(channels // reduction, 1)
        self.channel_mlp = nn.Sequential(
            conv(channels, hidden, kernel_size=1, bias=False),
            nn.ReLU(inplace=True),
            conv(hidden, channels, kernel_size=1, bias=False),
        )
        self.avg_pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.max_pool = Pool[Pool.ADAPTIVEMAX, spatial_dims](1)
        self.spatial_conv = conv(2, 1, kernel_size=spatial_kernel, padding=spatial_kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` -> same shape, gated by channel then spatial attention."""
        channel_gate = torch.sigmoid(self.channel_mlp(self.avg_pool(x)) + self.channel_mlp(self.max_pool(x)))
        x = x * channel_gate
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial_conv(pooled))


class ContextResNetFeaturePyramid(ResNetFeaturePyramid):
    """:class:`ResNetFeaturePyramid` with a :class:`ContextBottleneck` after each of the five stages.

    Each bottleneck's output is both the stage's returned map and the input of the next stage, so the
    blocks are part of the encoder that is evaluated and transferred. Arguments as
    :class:`ResNetFeaturePyramid`, plus ``context_reduction`` and ``context_kernel``.
    """

    def __init__(self, *args, context_reduction: int = 2, context_kernel: int = 7, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.context = nn.ModuleList(
            [ContextBottleneck(c, context_reduction, context_kernel, self.spatial_dims) for c in self.out_channels]
        )

    @property
    def architecture(self) -> str:
        return f"context-{super().architecture}"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Five context-gated stage maps ``(B, out_channels[i], *spatial / strides[i])``: stem, layer1 .. layer4."""
        x = self.context[0](self.act(self.bn1(self.conv1(x))))
        maps = [x]
        if not self.no_max_pool:
            x = self.maxpool(x)
        for stage, context in zip((self.layer1, self.layer2, self.layer3, self.layer4), self.context[1:]):
            x = context(stage(x))
            maps.append(x)
        return maps


class MLVICX(nn.Module):
    """VICReg on the global embedding plus ``multilevel_weight`` x VICReg on the multi-level embedding.

    Multi-level embedding: each of the five maps is resized (bilinear) to ``level_size``, projected by its
    own 1x1 convolution to ``level_channels``, the five are summed, average-pooled to ``pooled_size`` and
    flattened (``level_channels * pooled_size**2``), then expanded by an :class:`MLPHead`.

    Args:
        encoder: encoder returning five maps (default :class:`ContextResNetFeaturePyramid` ResNet-18, 2D, 1 channel).
        global_expander_dims: hidden widths and output of the global expander (paper: 4096, 4096, 4096).
        multilevel_expander_dims: same for the multi-level expander.
        level_size: common size the five maps are resized to (paper: 64 at 224 px input).
        level_channels: channels after each level's 1x1 projection (512).
        pooled_size: grid of the pooled multi-level map (4).
        multilevel_weight: lambda (1).
        invariance_weight / variance_weight / covariance_weight: VICReg coefficients (25 / 25 / 1).
    """

    def __init__(
        self,
        encoder: nn.Module | None = None,
        global_expander_dims: Sequence[int] = (4096, 4096, 4096),
        multilevel_expander_dims: Sequence[int] = (4096, 4096, 4096),
        level_size: int = 64,
        level_channels: int = 512,
        pooled_size: int = 4,
        multilevel_weight: float = 1.0,
        invariance_weight: float = 25.0,
        variance_weight: float = 25.0,
        covariance_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.embedder = EncoderEmbedder(encoder if encoder is not None else ContextResNetFeaturePyramid())
        spatial_dims = getattr(self.encoder, "spatial_dims", 2)
        conv = Conv[Conv.CONV, spatial_dims]
        self.level_projections = nn.ModuleList(
            [conv(c, level_channels, kernel_size=1) for c in self.encoder.out_channels]
        )
        self.level_size = level_size
        self.pooled_size = pooled_size
        self.multilevel_weight = multilevel_weight
        self.global_expander = MLPHead(
            self.encoder.feature_dim, list(global_expander_dims[:-1]), global_expander_dims[-1]
        )
        self.multilevel_expander = MLPHead(
            level_channels * pooled_size**spatial_dims,
            list(multilevel_expander_dims[:-1]),
            multilevel_expander_dims[-1],
        )
        self.loss_function = VICRegLoss(invariance_weight, variance_weight, covariance_weight)
        self._spatial_dims = spatial_dims

    @property
    def encoder(self) -> nn.Module:
        """The encoder being pretrained (what transfer uses)."""
        return self.embedder.encoder

    def multilevel_embedding(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Five maps -> ``(B, level_channels * pooled_size ** spatial_dims)``."""
        size = (self.level_size,) * self._spatial_dims
        mode = "bilinear" if self._spatial_dims == 2 else "trilinear"
        fused = sum(
            proj(F.interpolate(m, size=size, mode=mode, align_corners=False))
            for proj, m in zip(self.level_projections, maps)
        )
        pooled = F.adaptive_avg_pool2d(fused, self.pooled_size) if self._spatial_dims == 2 else \
            F.adaptive_avg_pool3d(fused, self.pooled_size)
        return pooled.flatten(1)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            view1: first views ``(B, C, *spatial)``.
            view2: second views, same shape.

        Returns:
            ``loss`` = global VICReg + multilevel_weight x multi-level VICReg, and each VICReg term prefixed
            ``global_`` / ``multilevel_`` (fp32 scalars).
        """
        maps1, maps2 = self.encoder(view1), self.encoder(view2)
        global_terms = self.loss_function(
            self.global_expander(global_pool(maps1[-1])), self.global_expander(global_pool(maps2[-1]))
        )
        multi_terms = self.loss_function(
            self.multilevel_expander(self.multilevel_embedding(maps1)),
            self.multilevel_expander(self.multilevel_embedding(maps2)),
        )
        out = {"loss": global_terms["loss"] + self.multilevel_weight * multi_terms["loss"]}
        out.update({f"global_{k}": v for k, v in global_terms.items()})
        out.update({f"multilevel_{k}": v for k, v in multi_terms.items()})
        return out

    def update_target(self, progress: float) -> float:
        """MLVICX has no target network: nothing to update; returns momentum 0.0 for the engine's log."""
        return 0.0
