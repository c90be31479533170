"""Batched, on-device random geometry, filters and patch masks for self-supervised pretraining (2D and 3D).

Every function works on a whole batch ``(B, C, *spatial)`` (or a batch size) with per-sample parameters, on the
batch's device, in a few tensor operations: the view recipe (:class:`dissect_monai.transforms.RandTwoViewsd`)
resamples and filters with :func:`resample_affine`, :func:`gaussian_blur` and :func:`adjust_gamma`; DINO cuts its
local crops with :func:`random_resized_crops`; MAE masks with :func:`random_patch_mask`; I-JEPA draws its context
and target blocks with :class:`BlockMaskGenerator`.

Coordinates are normalised per axis to ``[-1, 1]`` over the image (pixel edges, ``align_corners=False``) and
listed in spatial-axis order (axis 0 of a 2D image in MONAI's ``(W, H)`` order is its width).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "BlockMaskGenerator",
    "adjust_gamma",
    "gaussian_blur",
    "random_patch_mask",
    "random_resized_crops",
    "resample_affine",
    "supersampling_factor",
]


def supersampling_factor(in_size: Sequence[int], out_size: Sequence[int], max_fraction: float = 1.0) -> int:
    """Sub-samples per output pixel and axis that keep a resampling of up to ``max_fraction`` of an ``in_size``
    image to ``out_size`` free of aliasing (the largest downscale factor, rounded up; 1 when upscaling)."""
    downscale = max(max_fraction * i / o for i, o in zip(in_size, out_size))
    return max(1, math.ceil(downscale - 1e-6))


def _affine_grid(matrix: torch.Tensor, offset: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``F.affine_grid`` (``align_corners=False``) built by broadcasting, one axis at a time (several times faster
    on CPU). Returns ``(B, *size, N)`` sampling positions, last spatial axis first, as ``grid_sample`` reads them."""
    n = len(size)
    grid = offset.flip(1).view(-1, *([1] * n), n)
    for axis, s in enumerate(size):
        u = (torch.arange(s, device=matrix.device, dtype=torch.float32) * 2 + 1) / s - 1  # pixel centres
        u = u.view([1] + [s if a == axis else 1 for a in range(n)] + [1])
        grid = grid + u * matrix[:, :, axis].flip(1).view(-1, *([1] * n), n)
    return grid


def resample_affine(
    images: torch.Tensor,
    matrix: torch.Tensor,
    offset: torch.Tensor,
    spatial_size: Sequence[int],
    supersample: int = 1,
) -> torch.Tensor:
    """Resample each image of a batch through its own affine map (crop, scale, flip, rotation in one pass).

    The output pixel at normalised position ``u`` takes the bilinear value of the input at ``matrix @ u + offset``
    (zeros outside the image). ``supersample > 1`` averages ``supersample ** N`` evenly spaced samples per output
    pixel: an area-like filter against aliasing when the map shrinks the image.

    Args:
        images: ``(B, C, *spatial)``, N = 2 or 3 spatial axes.
        matrix: ``(B, N, N)``, spatial-axis order.
        offset: ``(B, N)``, spatial-axis order.
        spatial_size: output spatial size (N values).
        supersample: sub-samples per output pixel and axis.

    Returns:
        ``(B, C, *spatial_size)`` float32.
    """
    b, c, *spatial = images.shape
    n = len(spatial)
    if n not in (2, 3) or matrix.shape != (b, n, n) or offset.shape != (b, n) or len(spatial_size) != n:
        raise ValueError(f"resample_affine needs images (B, C, *spatial) with 2 or 3 spatial axes, matrix (B, N, N), "
                         f"offset (B, N) and N output sizes; got images {tuple(images.shape)}, matrix "
                         f"{tuple(matrix.shape)}, offset {tuple(offset.shape)}, spatial_size {tuple(spatial_size)}")
    size = [int(s) * supersample for s in spatial_size]
    grid = _affine_grid(matrix.to(images.device, torch.float32), offset.to(images.device, torch.float32), size)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if supersample > 1:
        out = (F.avg_pool2d if n == 2 else F.avg_pool3d)(out, supersample)
    return out


def random_resized_crops(
    images: torch.Tensor,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One random resized crop per image of a 2D batch, like torchvision's ``RandomResizedCrop``.

    Args:
        images: ``(B, C, H, W)``.
        size: output edge.
        scale: range of the crop's area as a fraction of the image.
        ratio: range of the crop's aspect ratio (width / height), sampled log-uniformly.
        generator: random source (default torch's global one, on the images' device).

    Returns:
        ``(B, C, size, size)`` in the dtype of ``images``.
    """
    if images.ndim != 4:
        raise ValueError(f"random_resized_crops expects (B, C, H, W), got {tuple(images.shape)}")
    b, device = images.shape[0], images.device
    draws = torch.rand(4, b, device=device, generator=generator)
    area = scale[0] + (scale[1] - scale[0]) * draws[0]
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * draws[1])
    fraction = torch.stack([torch.sqrt(area / aspect), torch.sqrt(area * aspect)], dim=1).clamp(max=1.0)  # (h, w)
    offset = (draws[2:].T * 2 - 1) * (1 - fraction)
    longest_side = min(1.0, math.sqrt(scale[1] * max(ratio[1], 1 / ratio[0])))
    sub = supersampling_factor(images.shape[2:], (size, size), longest_side)
    return resample_affine(images, torch.diag_embed(fraction), offset, (size, size), sub).to(images.dtype)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, radius: int | None = None) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample, per-axis sigma (edges replicated).

    Args:
        images: ``(B, C, *spatial)``, N = 2 or 3 spatial axes.
        sigma: ``(B, N)`` in pixels, spatial-axis order.
        radius: kernel half-width; default ``ceil(4 * sigma.max())``. Fix it (from the largest sigma a caller
            draws) to make each sample's result independent of the rest of the batch.

    Returns:
        ``(B, C, *spatial)`` float32.
    """
    b, c, *spatial = images.shape
    n = len(spatial)
    if sigma.shape != (b, n):
        raise ValueError(f"sigma must be (B, N) = {(b, n)}, got {tuple(sigma.shape)}")
    sigma = sigma.to(images.device, torch.float32)
    radius = int(math.ceil(4 * float(sigma.max()))) if radius is None else int(radius)
    taps = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float32)
    x = F.pad(images.float().reshape(1, b * c, *spatial), [radius] * (2 * n), mode="replicate")
    conv = F.conv2d if n == 2 else F.conv3d
    for axis in range(n):
        kernel = torch.exp(-0.5 * (taps / sigma[:, axis, None]) ** 2)
        kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)
        shape = [b * c, 1] + [2 * radius + 1 if a == axis else 1 for a in range(n)]
        x = conv(x, kernel.reshape(shape), groups=b * c)
    return x.reshape(b, c, *spatial)


def adjust_gamma(images: torch.Tensor, gamma: torch.Tensor, epsilon: float = 1e-7) -> torch.Tensor:
    """Per-sample gamma within each image's own range, as MONAI's ``AdjustContrast``:
    ``((x - min) / (max - min + epsilon)) ** gamma * (max - min) + min``.

    Args:
        images: ``(B, C, *spatial)``.
        gamma: ``(B,)``.

    Returns:
        ``(B, C, *spatial)`` float32.
    """
    x = images.float()
    flat = x.flatten(1)
    shape = (-1,) + (1,) * (x.ndim - 1)
    low, high = flat.amin(dim=1).view(shape), flat.amax(dim=1).view(shape)
    span = high - low
    return ((x - low) / (span + epsilon)) ** gamma.to(x.device, torch.float32).view(shape) * span + low


def random_patch_mask(
    batch: int,
    num_patches: int,
    mask_ratio: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample uniform random masking of patch tokens (MAE's shuffle-and-keep).

    Args:
        batch: B.
        num_patches: N.
        mask_ratio: fraction of patches hidden from the encoder, in (0, 1); at least one patch stays visible
            and at least one is masked.
        device: where the indices live.
        generator: random source (default torch's global one).

    Returns:
        ``keep_index`` ``(B, K)`` (visible patches, K = N - round(N * mask_ratio)), ``mask`` ``(B, N)`` float
        with 1 for masked patches, and ``restore_index`` ``(B, N)``: position of each patch in the
        ``[visible, masked]`` ordering, to put decoder tokens back in grid order.
    """
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    n_masked = min(max(int(round(num_patches * mask_ratio)), 1), num_patches - 1)
    n_keep = num_patches - n_masked
    shuffle = torch.rand(batch, num_patches, device=device, generator=generator).argsort(dim=1)
    restore_index = shuffle.argsort(dim=1)
    keep_index = shuffle[:, :n_keep]
    mask = torch.ones(batch, num_patches, device=device)
    mask[:, :n_keep] = 0
    mask = torch.gather(mask, 1, restore_index)
    return keep_index, mask, restore_index


class BlockMaskGenerator:
    """Context and target blocks on a 2D patch grid, as in I-JEPA, drawn for a whole batch at once on its device.

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
        min_context: fewest context patches accepted; samples left with fewer are redrawn (up to 20 times).
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

    def _block_size(
        self, scale: tuple[float, float], aspect: tuple[float, float], device: torch.device | str,
        generator: torch.Generator | None,
    ) -> tuple[int, int]:
        gh, gw = self.grid_size
        u_area, u_aspect = torch.rand(2, device=device, generator=generator).tolist()
        area = gh * gw * (scale[0] + (scale[1] - scale[0]) * u_area)
        ratio = math.exp(math.log(aspect[0]) + (math.log(aspect[1]) - math.log(aspect[0])) * u_aspect)
        h = int(round(math.sqrt(area * ratio)))
        w = int(round(math.sqrt(area / ratio)))
        return min(max(h, 1), gh), min(max(w, 1), gw)

    def _blocks(
        self, batch: int, size: tuple[int, int], device: torch.device | str, generator: torch.Generator | None
    ) -> torch.Tensor:
        """One block of ``size`` per sample at a random position, as flat bool masks ``(batch, H * W)``."""
        (gh, gw), (h, w) = self.grid_size, size
        top = torch.randint(0, gh - h + 1, (batch, 1), device=device, generator=generator)
        left = torch.randint(0, gw - w + 1, (batch, 1), device=device, generator=generator)
        rows, cols = torch.arange(gh, device=device), torch.arange(gw, device=device)
        in_rows = (rows >= top) & (rows < top + h)
        in_cols = (cols >= left) & (cols < left + w)
        return (in_rows[:, :, None] & in_cols[:, None, :]).flatten(1)

    def _draw(
        self, batch: int, sizes: tuple[tuple[int, int], tuple[int, int]], device: torch.device | str,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        targets = torch.stack([self._blocks(batch, sizes[0], device, generator) for _ in range(self.num_targets)])
        context = self._blocks(batch, sizes[1], device, generator) & ~targets.any(dim=0)
        return targets, context

    def __call__(
        self, batch: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Draw masks for ``batch`` samples on ``device`` (from ``generator``, default torch's global one).

        Returns:
            ``context_index`` ``(B, Kc)`` and a list of ``num_targets`` tensors ``(B, Kt)`` of flat patch indices
            (row-major grid order, the token order of :class:`ViTEncoder`); context and targets never overlap.
        """
        target_size = self._block_size(self.target_scale, self.target_aspect, device, generator)
        sizes = (target_size, self._block_size(self.context_scale, (1.0, 1.0), device, generator))
        targets, context = self._draw(batch, sizes, device, generator)
        for _attempt in range(19):
            short = context.sum(dim=1) < self.min_context
            if not bool(short.any()):
                break
            targets[:, short], context[short] = self._draw(int(short.sum()), sizes, device, generator)
        if bool((context.sum(dim=1) < self.min_context).any()):
            raise RuntimeError(f"BlockMaskGenerator: no context of >= {self.min_context} patches left beside "
                               f"{self.num_targets} targets of {target_size} on grid {self.grid_size}")
        keep = int(context.sum(dim=1).min())
        scores = torch.rand(context.shape, device=device, generator=generator).masked_fill(~context, -1.0)
        context_index = scores.topk(keep, dim=1).indices.sort(dim=1).values
        return context_index, [t.nonzero()[:, 1].view(batch, -1) for t in targets]
