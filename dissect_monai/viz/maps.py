"""Maps that show what a pretrained encoder represents: last-layer attention, cosine similarity to an anchor
patch, PCA of patch features, and for DiSSECT the code-index maps and each code's most typical patches.

Every function takes a pretraining bundle's embedder (``DiSSECTEmbedder`` or ``EncoderEmbedder``, i.e. the
network of ``models/model.pt``) in eval mode and images ``(B, C, H, W)``, and returns plain tensors / arrays
(no plotting here; see :mod:`dissect_monai.viz.panels`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dissect_monai.networks.vit import ViTEncoder, ViTTokenPyramid

__all__ = [
    "anchor_similarity",
    "code_index_maps",
    "code_palette",
    "grid_anchor",
    "last_layer_attention",
    "patch_feature_map",
    "pca_rgb",
    "typical_patches",
    "vit_of",
]


def vit_of(embedder: nn.Module) -> ViTEncoder | None:
    """The :class:`ViTEncoder` inside an embedder (directly or in a :class:`ViTTokenPyramid`), else None."""
    encoder = getattr(embedder, "encoder", embedder)
    if isinstance(encoder, ViTTokenPyramid):
        return encoder.encoder
    return encoder if isinstance(encoder, ViTEncoder) else None


@torch.no_grad()
def patch_feature_map(embedder: nn.Module, images: torch.Tensor, min_grid: int = 8) -> torch.Tensor:
    """Spatial features ``(B, D, h, w)`` (fp32) of ``images`` ``(B, C, H, W)``.

    ViT: the final (layer-normalised) patch tokens. Pyramid encoders (ResNet, ViT token pyramid): the
    deepest map whose grid is at least ``min_grid`` on its shorter side (e.g. ResNet C3 at 64 px, C4 at
    128 px), else the largest map, so methods are compared on a similar grid.
    """
    vit = vit_of(embedder)
    encoder = embedder.encoder
    if isinstance(encoder, ViTEncoder):
        return vit.tokens_to_map(vit.encode(images)[0]).float()
    maps = encoder(images)
    chosen = [m for m in maps if min(m.shape[2:]) >= min_grid]
    return (chosen[-1] if chosen else max(maps, key=lambda m: m.shape[-1])).float()


@torch.no_grad()
def last_layer_attention(embedder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Per-head attention of the last ViT block as maps ``(B, heads, h, w)`` (fp32, each map sums to 1).

    With a class token: the class token's attention to every patch (renormalised over patches). Without
    one (I-JEPA, DiSSECT-ViT): the attention every patch receives, averaged over all query patches.

    Raises:
        ValueError: if the embedder has no ViT.
    """
    vit = vit_of(embedder)
    if vit is None:
        raise ValueError(f"{type(embedder).__name__} has no ViT encoder: attention maps need a transformer")
    attention = vit.last_attention(images)
    p = vit.num_prefix_tokens
    received = attention[:, :, 0, p:] if p else attention.mean(dim=2)
    received = received / received.sum(dim=-1, keepdim=True)
    return received.reshape(*received.shape[:2], *vit.grid_size)


def anchor_similarity(features: torch.Tensor, anchor: tuple[int, int]) -> torch.Tensor:
    """Cosine similarity ``(B, h, w)`` of every position of ``features`` ``(B, D, h, w)`` to the position ``anchor``
    (index along the two spatial axes) of the same image."""
    h, w = features.shape[2:]
    r, c = anchor
    if not (0 <= r < h and 0 <= c < w):
        raise ValueError(f"anchor {anchor} outside the {h}x{w} feature grid")
    unit = F.normalize(features.float(), dim=1)
    return (unit * unit[:, :, r: r + 1, c: c + 1]).sum(dim=1)


def pca_rgb(features: torch.Tensor, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """First three principal components of the patch features as RGB, ``(B, h, w, 3)`` in [0, 1].

    The PCA is fitted on all positions of all images together (so colours compare across images), and
    each component is scaled between its ``low`` and ``high`` percentiles.
    """
    b, d, h, w = features.shape
    x = features.float().permute(0, 2, 3, 1).reshape(-1, d)
    x = x - x.mean(dim=0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    comps = (x @ v[:3].T).numpy()
    if comps.shape[1] < 3:
        comps = np.pad(comps, ((0, 0), (0, 3 - comps.shape[1])))
    lo, hi = np.percentile(comps, low, axis=0), np.percentile(comps, high, axis=0)
    rgb = np.clip((comps - lo) / np.maximum(hi - lo, 1e-8), 0.0, 1.0)
    return rgb.reshape(b, h, w, 3)


@torch.no_grad()
def code_index_maps(embedder: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """DiSSECT code index of every position, per quantised scale: ``{scale name: (B, h_i, w_i)}`` (int64).

    Raises:
        ValueError: if the embedder has no quantizer (BYOL and the other baselines).
    """
    if getattr(embedder, "quantizer", None) is None:
        raise ValueError(f"{type(embedder).__name__} has no quantizer: code maps exist only for DiSSECT")
    out = embedder.encode(images)
    return {name: out["codes_" + name] for name in embedder.scale_names}


def code_palette(num_codes: int, seed: int = 0) -> np.ndarray:
    """A fixed colour per code, ``(num_codes, 3)`` in [0, 1] (random hues, bright and saturated)."""
    rng = np.random.default_rng(seed)
    hue = rng.permutation(num_codes) / num_codes
    sat = 0.55 + 0.45 * rng.random(num_codes)
    val = 0.65 + 0.35 * rng.random(num_codes)
    i = np.floor(hue * 6).astype(int) % 6
    f = hue * 6 - np.floor(hue * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    table = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)]
    rgb = np.stack([np.choose(i, [row[k] for row in table]) for k in range(3)], axis=1)
    return rgb


@torch.no_grad()
def typical_patches(
    embedder: nn.Module,
    images: torch.Tensor,
    scale: int = 0,
    num_codes: int = 8,
    per_code: int = 6,
    context: float = 2.0,
    patch_px: int = 32,
) -> list[dict]:
    """Each frequent code's most typical image patches at one quantised scale of a DiSSECT embedder.

    The ``num_codes`` codes used most often over ``images`` are kept; for each, the ``per_code`` positions
    assigned to it with the highest cosine similarity to the code are cut from the image (a window of
    ``context`` cells around the cell, resized to ``patch_px``).

    Args:
        embedder: a ``DiSSECTEmbedder`` with a quantizer.
        images: ``(B, 1, H, W)``.
        scale: index into the embedder's quantised scales.
        num_codes: codes shown.
        per_code: patches per code.
        context: window size in cells.
        patch_px: edge of each returned patch.

    Returns:
        one dict per code, most used first: ``{"code", "count", "patches": (n, patch_px, patch_px) array,
        "similarity": (n,) array}``.
    """
    quantizer = getattr(embedder, "quantizer", None)
    if quantizer is None:
        raise ValueError(f"{type(embedder).__name__} has no quantizer: typical patches exist only for DiSSECT")
    maps = embedder.encoder(images)
    stage = embedder.scales[scale]
    z = quantizer.project([maps[stage]], projections=nn.ModuleList([quantizer.projections[scale]]))[0]
    b, d, h, w = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, d)
    sim = quantizer.codebooks[scale].similarity(flat)
    best, codes = sim.max(dim=1)
    counts = torch.bincount(codes, minlength=sim.shape[1])
    order = torch.argsort(counts, descending=True)[:num_codes]
    height, width = images.shape[2:]
    cell_h, cell_w = height / h, width / w
    out = []
    for code in order.tolist():
        if counts[code] == 0:
            break
        where = (codes == code).nonzero().flatten()
        top = where[torch.argsort(best[where], descending=True)[:per_code]]
        patches = []
        for idx in top.tolist():
            n, rem = divmod(idx, h * w)
            r, c = divmod(rem, w)
            cy, cx = (r + 0.5) * cell_h, (c + 0.5) * cell_w
            half_h, half_w = context * cell_h / 2, context * cell_w / 2
            y0, y1 = int(max(0, round(cy - half_h))), int(min(height, round(cy + half_h)))
            x0, x1 = int(max(0, round(cx - half_w))), int(min(width, round(cx + half_w)))
            crop = images[n: n + 1, :1, y0:y1, x0:x1].float()
            patches.append(F.interpolate(crop, size=(patch_px, patch_px), mode="bilinear", align_corners=False)[0, 0])
        out.append({
            "code": code,
            "count": int(counts[code]),
            "patches": torch.stack(patches).numpy(),
            "similarity": best[top].numpy(),
        })
    return out


def grid_anchor(grid: Sequence[int], fraction: tuple[float, float] = (0.3, 0.45)) -> tuple[int, int]:
    """Grid cell at a fractional position along (axis 0, axis 1) = (column, row) in MONAI's axis order; the default
    lies in the image's left lung field."""
    return min(int(fraction[0] * grid[0]), grid[0] - 1), min(int(fraction[1] * grid[1]), grid[1] - 1)
