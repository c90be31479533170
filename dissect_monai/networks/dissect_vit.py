"""DiSSECT on a Vision Transformer: the multi-scale quantizer on patch-token maps at three depths."""

from __future__ import annotations

from collections.abc import Sequence

from dissect_monai.networks.dissect import DiSSECT
from dissect_monai.networks.vit import ViTEncoder, ViTTokenPyramid

__all__ = ["DiSSECTViT"]


class DiSSECTViT(DiSSECT):
    """:class:`DiSSECT` whose online encoder is a :class:`ViTTokenPyramid`.

    The token maps after blocks ``depths`` (default 1/3, 2/3 and full depth) are the quantised scales;
    the continuous feature is the mean patch token of the last of them. Everything else (heads, losses,
    EMA target, codebooks, the shipped ``embedder``) is DiSSECT's.

    Args:
        encoder: the ViT (default ``ViTEncoder(class_token=False)``: 64 px, patch 8, width 192, 6 blocks).
        depths: 1-based block numbers whose token maps are exposed (default 1/3, 2/3, full depth).
        scales: indices into ``depths`` to quantise (default all three).
        kwargs: the other arguments of :class:`DiSSECT` (``num_codes``, ``code_dims``, ``hidden_dim``, ...).
    """

    def __init__(
        self,
        encoder: ViTEncoder | None = None,
        depths: Sequence[int] | None = None,
        scales: Sequence[int] = (0, 1, 2),
        **kwargs,
    ) -> None:
        vit = encoder if encoder is not None else ViTEncoder(class_token=False)
        super().__init__(
            spatial_dims=vit.spatial_dims,
            in_channels=vit.in_channels,
            scales=scales,
            encoder=ViTTokenPyramid(vit, depths),
            **kwargs,
        )
