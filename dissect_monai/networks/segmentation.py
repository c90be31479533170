"""U-Net-style segmentation network on a (pretrained) feature-pyramid encoder, 2D and 3D.

The encoder is :class:`dissect_monai.networks.ResNetFeaturePyramid`: its five stage maps
[stem (1/2), layer1 (1/4), layer2 (1/8), layer3 (1/16), layer4 (1/32)] are the skips of a decoder that
upsamples the deepest map stage by stage back to the input size. Optional extra skips (for example the
DiSSECT quantiser's code maps) are concatenated to the stage maps of the same index.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

from dissect_monai.networks.dissect import load_pretrained_quantizer
from dissect_monai.networks.encoders import ResNetFeaturePyramid, load_pretrained_encoder
from dissect_monai.networks.quantizer import MultiScaleQuantizer
from dissect_monai.utils.precision import resolve_precision

__all__ = ["DEFAULT_DECODER_CHANNELS", "FeaturePyramidUNet", "DecoderBlock", "QuantizedSkips"]

#: decoder channels per stage, coarsest first, for encoders of up to five stage maps
DEFAULT_DECODER_CHANNELS: tuple[int, ...] = (256, 128, 64, 32, 16)


class DecoderBlock(nn.Module):
    """Upsample to the skip's size, concatenate the skip, then two conv-norm-act units.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the incoming (coarser) map.
        skip_channels: channels of the skip (0: no skip, only upsampling to ``size``).
        out_channels: channels produced.
        norm: MONAI norm name (``"batch"``, ``"instance"``...).
        act: MONAI activation name.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        norm: str | tuple = "batch",
        act: str | tuple = "relu",
    ) -> None:
        super().__init__()
        self.mode = "bilinear" if spatial_dims == 2 else "trilinear"
        self.convs = nn.Sequential(
            Convolution(spatial_dims, in_channels + skip_channels, out_channels, kernel_size=3, norm=norm, act=act),
            Convolution(spatial_dims, out_channels, out_channels, kernel_size=3, norm=norm, act=act),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size: list[int]) -> torch.Tensor:
        """``x`` (B, C_in, *coarse), ``skip`` (B, C_skip, *size) or None -> (B, C_out, *size)."""
        x = F.interpolate(x, size=size, mode=self.mode, align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)


class QuantizedSkips(nn.Module):
    """Quantised code maps of some encoder stages, as extra decoder skips (``FeaturePyramidUNet(extra_skips=...)``).

    Each chosen stage map is projected and replaced by its nearest code (straight-through, so the projection and the
    encoder still get gradients); the codebooks are used as pretrained and never EMA-updated here. Build it from a
    DiSSECT checkpoint with :meth:`from_checkpoint`, which reads the quantizer's sizes and stages from the checkpoint.

    Args:
        quantizer: a :class:`dissect_monai.networks.quantizer.MultiScaleQuantizer` whose scales are ``stages``.
        stages: indices of the encoder stage maps it quantises, in the quantizer's order.
        n_stages: number of encoder stage maps.
    """

    def __init__(self, quantizer: MultiScaleQuantizer, stages: Sequence[int], n_stages: int = 5) -> None:
        super().__init__()
        code_dims = tuple(int(d) for d in quantizer.code_dims)
        if len(code_dims) != len(stages) or any(not 0 <= s < n_stages for s in stages):
            raise ValueError(f"stages {tuple(stages)} must be {len(code_dims)} indices in 0..{n_stages - 1}")
        self.quantizer = quantizer
        self.stages = [int(s) for s in stages]
        channels = [0] * n_stages
        for stage, dim in zip(self.stages, code_dims):
            channels[stage] = dim
        self.out_channels: tuple[int, ...] = tuple(channels)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, n_stages: int = 5) -> QuantizedSkips:
        """The skips of the quantizer in a DiSSECT checkpoint (the pretraining bundle's ``models/model.pt`` or a
        training checkpoint), with its weights; see :func:`dissect_monai.networks.dissect.load_pretrained_quantizer`."""
        quantizer, stages = load_pretrained_quantizer(checkpoint)
        return cls(quantizer, stages, n_stages)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """Stage maps ``(B, C_i, *S_i)`` -> ``(B, code_dim, *S_i)`` fp32 code maps at ``stages``, None elsewhere."""
        projected = self.quantizer.project([feats[s] for s in self.stages])
        quantised, _, _ = self.quantizer.quantize(projected, update=False)
        out: list[torch.Tensor | None] = [None] * len(feats)
        for stage, q in zip(self.stages, quantised):
            out[stage] = q
        return out


class FeaturePyramidUNet(nn.Module):
    """Segmentation net: feature-pyramid encoder + U-Net decoder on its stage maps.

    Input ``(B, in_channels, *spatial)`` (any spatial size: the decoder resizes to each skip's size, so no
    divisibility constraint), output logits ``(B, out_channels, *spatial)`` as one tensor (float32).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: classes including background.
        depth: ResNet depth of the default encoder (ignored when ``encoder`` is given).
        encoder: a module with ``forward(x) -> list[Tensor]`` (5 stage maps, coarsest last) and
            ``out_channels: tuple[int, ...]``; default ``ResNetFeaturePyramid(spatial_dims, in_channels, depth)``.
        encoder_checkpoint: optional pretraining checkpoint loaded into the encoder with
            :func:`dissect_monai.networks.load_pretrained_encoder` (None or "": random init).
        freeze_encoder: keep the encoder's weights and normalisation statistics fixed (no gradients,
            eval-mode norm layers whatever the net's mode).
        decoder_channels: channels of the decoder stages, coarsest first; one entry per encoder stage map (the
            last stage works at the input resolution). Default: the first ``len(encoder.out_channels)`` of
            ``DEFAULT_DECODER_CHANNELS`` (all five for a ResNet pyramid, three for a three-depth ViT token pyramid).
        extra_skips: optional module mapping the stage maps to a list of extra skip maps (None where a stage
            has none), with ``out_channels`` (0 where none); e.g. quantised code maps. Its output at stage
            ``i`` must have the spatial size of stage map ``i``.
        norm: MONAI norm of the decoder.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (:func:`dissect_monai.utils.resolve_precision`: bf16
            autocast + channels-last where the device runs it fast); the output is float32 either way.
            TorchScript exports always run fp32.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        depth: int = 18,
        encoder: nn.Module | None = None,
        encoder_checkpoint: str | Path | None = None,
        freeze_encoder: bool = False,
        decoder_channels: Sequence[int] | None = None,
        extra_skips: nn.Module | None = None,
        norm: str | tuple = "batch",
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if encoder is None:
            encoder = ResNetFeaturePyramid(spatial_dims=spatial_dims, in_channels=in_channels, depth=depth)
        if encoder_checkpoint:
            load_pretrained_encoder(encoder_checkpoint, encoder)
        self.encoder = encoder
        enc_channels = tuple(int(c) for c in encoder.out_channels)
        if decoder_channels is None:
            decoder_channels = DEFAULT_DECODER_CHANNELS[: len(enc_channels)]
        if len(decoder_channels) != len(enc_channels):
            raise ValueError(
                f"decoder_channels needs {len(enc_channels)} entries (one per encoder stage), got {decoder_channels}"
            )
        extra_channels = (0,) * len(enc_channels)
        if extra_skips is not None:
            extra_channels = tuple(int(c) for c in extra_skips.out_channels)
            if len(extra_channels) != len(enc_channels):
                raise ValueError(f"extra_skips.out_channels needs {len(enc_channels)} entries, got {extra_channels}")
        self.extra_skips = extra_skips
        self.spatial_dims = spatial_dims
        self.freeze_encoder = freeze_encoder
        resolve_precision(precision)  # fail early on an unknown mode
        self.precision = precision
        # stage maps coarsest first: the deepest one is the decoder input, the others are skips
        skip_channels = [enc_channels[i] + extra_channels[i] for i in range(len(enc_channels) - 1)][::-1]
        blocks = []
        prev = enc_channels[-1] + extra_channels[-1]
        for skip, out in zip(skip_channels + [0], decoder_channels):
            blocks.append(DecoderBlock(spatial_dims, prev, skip, out, norm=norm))
            prev = out
        self.decoder = nn.ModuleList(blocks)
        self.head = Convolution(spatial_dims, prev, out_channels, kernel_size=1, conv_only=True)
        if freeze_encoder:
            for p in self.encoder.parameters():
                p.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> FeaturePyramidUNet:
        """Set the training mode; a frozen encoder stays in eval mode (fixed normalisation statistics)."""
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def _segment(self, x: torch.Tensor) -> torch.Tensor:
        feats: list[torch.Tensor] = self.encoder(x)
        if self.extra_skips is not None:
            extras: list[torch.Tensor | None] = self.extra_skips(feats)
            merged: list[torch.Tensor] = []
            for i, f in enumerate(feats):
                e = extras[i]
                merged.append(f if e is None else torch.cat([f, e.to(f.dtype)], dim=1))
            feats = merged
        y = feats[-1]
        n_skips = len(feats) - 1
        for i, block in enumerate(self.decoder):
            if i < n_skips:
                skip = feats[n_skips - 1 - i]
                y = block(y, skip, skip.shape[2:])
            else:
                y = block(y, None, x.shape[2:])
        return self.head(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, in_channels, *spatial) -> logits (B, out_channels, *spatial), float32."""
        if not torch.jit.is_scripting() and self.precision != "fp32":
            policy = resolve_precision(self.precision, x.device)
            if policy.bf16:
                with policy.autocast():
                    y = self._segment(policy.format_input(x))
                return y.float().contiguous()
        return self._segment(x)
