"""Self-supervised view generation, 2D and 3D: random resized crops with intensity augmentation, two asymmetric
views (BYOL), multi-crop (global + local, DINO) and patch masks (MAE random, I-JEPA blocks).

Inputs are channel-first images in [0, 1] (``(C, W, H)`` or ``(C, X, Y, Z)``, e.g. from ``load_image_transforms``);
views are plain float32 ``torch.Tensor`` network inputs (their geometry no longer matches the source affine, so
no metadata is carried).
"""

from __future__ import annotations

import math
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.networks.layers import GaussianFilter
from monai.transforms import MapTransform, Randomizable, Transform
from monai.utils import convert_to_tensor, ensure_tuple, ensure_tuple_rep

__all__ = ["RandomView", "TwoViewsd", "MultiCropd", "RandPatchMaskd"]


def _as_float_tensor(img) -> torch.Tensor:
    return convert_to_tensor(img, track_meta=False, dtype=torch.float32)


class RandomView(Randomizable, Transform):
    """One random view of a channel-first image: random resized crop -> flips -> brightness/contrast jitter ->
    gamma -> Gaussian blur -> solarisation -> Gaussian noise, clamped to [0, 1].

    Args:
        spatial_size: output spatial size, e.g. ``(64, 64)`` or ``(64, 64, 64)``.
        scale: range of the crop's area/volume as a fraction of the image.
        ratio: range of the crop's aspect ratio (per axis pair, log-uniform).
        flip_prob: probability of flipping each axis in ``flip_axes``.
        flip_axes: spatial axes that may flip; default left-right: axis 1 of a 2D ``(H, W)`` image, axis 0 of a
            RAS volume.
        jitter_prob: probability of the brightness/contrast jitter.
        brightness: additive shift drawn from ``[-brightness, brightness]``.
        contrast: contrast factor drawn from ``[1 - contrast, 1 + contrast]`` (around the image mean).
        gamma_prob: probability of a gamma change.
        gamma: gamma range.
        blur_prob: probability of a Gaussian blur.
        blur_sigma: sigma range in output pixels.
        solarize_prob: probability of solarisation (values >= 0.5 become ``1 - v``).
        noise_prob: probability of additive Gaussian noise.
        noise_std: noise standard deviation drawn from ``[0, noise_std]``.
    """

    def __init__(
        self,
        spatial_size: Sequence[int],
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_prob: float = 0.5,
        flip_axes: Sequence[int] | None = None,
        jitter_prob: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        gamma_prob: float = 0.5,
        gamma: tuple[float, float] = (0.7, 1.5),
        blur_prob: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        solarize_prob: float = 0.0,
        noise_prob: float = 0.0,
        noise_std: float = 0.05,
    ) -> None:
        self.spatial_size = tuple(int(s) for s in spatial_size)
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.flip_prob = flip_prob
        self.flip_axes = tuple(flip_axes) if flip_axes is not None else ((1,) if len(self.spatial_size) == 2 else (0,))
        self.jitter_prob, self.brightness, self.contrast = jitter_prob, brightness, contrast
        self.gamma_prob, self.gamma = gamma_prob, tuple(gamma)
        self.blur_prob, self.blur_sigma = blur_prob, tuple(blur_sigma)
        self.solarize_prob = solarize_prob
        self.noise_prob, self.noise_std = noise_prob, noise_std

    def randomize(self, data=None) -> None:  # every draw happens in __call__, in a fixed order
        pass

    def crop_box(self, shape: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Random (start, size) of a crop covering a fraction in ``scale`` of ``shape``, its aspect ratios (relative
        to the image's own, so anisotropic volumes crop proportionally) in ``ratio``."""
        dims = len(shape)
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            side = self.R.uniform(*self.scale) ** (1.0 / dims)  # per-axis fraction of an undistorted crop
            logs = self.R.uniform(log_ratio[0] / 2, log_ratio[1] / 2, size=dims)
            logs -= logs.mean()  # product of the per-axis factors stays 1: the fraction is kept
            size = [int(round(n * side * math.exp(a))) for n, a in zip(shape, logs)]
            if all(0 < s <= n for s, n in zip(size, shape)):
                start = [int(self.R.randint(0, n - s + 1)) for s, n in zip(size, shape)]
                return tuple(start), tuple(size)
        return (0,) * dims, tuple(int(n) for n in shape)  # fall back to the whole image

    def __call__(self, img) -> torch.Tensor:
        """``img``: ``(C, *spatial)`` in [0, 1] -> ``(C, *spatial_size)`` float32 tensor in [0, 1]."""
        x = _as_float_tensor(img)
        dims = x.ndim - 1
        if dims != len(self.spatial_size):
            raise ValueError(f"image has {dims} spatial dims, spatial_size {self.spatial_size} has "
                             f"{len(self.spatial_size)}")
        start, size = self.crop_box(x.shape[1:])
        x = x[(slice(None),) + tuple(slice(s, s + n) for s, n in zip(start, size))]
        mode = "bilinear" if dims == 2 else "trilinear"
        x = F.interpolate(x[None], size=self.spatial_size, mode=mode, align_corners=False,
                          antialias=dims == 2)[0]
        flips = [1 + a for a in self.flip_axes if self.R.rand() < self.flip_prob]
        if flips:
            x = torch.flip(x, dims=flips)
        if self.R.rand() < self.jitter_prob:
            c = self.R.uniform(1 - self.contrast, 1 + self.contrast)
            b = self.R.uniform(-self.brightness, self.brightness)
            mean = x.mean()
            x = ((x - mean) * c + mean + b).clamp(0.0, 1.0)
        if self.R.rand() < self.gamma_prob:
            x = x.clamp(0.0, 1.0) ** self.R.uniform(*self.gamma)
        if self.R.rand() < self.blur_prob:
            sigma = float(self.R.uniform(*self.blur_sigma))
            x = GaussianFilter(dims, sigma)(x[None])[0]
        if self.R.rand() < self.solarize_prob:
            x = torch.where(x >= 0.5, 1.0 - x, x)
        if self.R.rand() < self.noise_prob:
            std = float(self.R.uniform(0.0, self.noise_std))
            noise = torch.from_numpy(self.R.standard_normal(size=tuple(x.shape)).astype(np.float32))
            x = x + std * noise
        return x.clamp(0.0, 1.0).contiguous()


class TwoViewsd(Randomizable, MapTransform):
    """Two asymmetric views of each key (BYOL): the first view replaces the key, the second is written to
    ``f"{key}{suffix}"`` (default ``"image"`` -> ``"image"``, ``"image_2"``).

    The BYOL asymmetry is the default: view 1 always blurred and never solarised, view 2 rarely blurred
    (p=0.1), solarised with p=0.2 and noisy with p=0.2. Any :class:`RandomView` argument can be set per view.

    Args:
        keys: image keys.
        spatial_size: view size, e.g. ``(64, 64)`` or ``(64, 64, 64)``.
        view_1: :class:`RandomView` arguments of the first view (override the BYOL defaults).
        view_2: the same for the second view.
        suffix: suffix of the second view's key.
        allow_missing_keys: skip absent keys.
    """

    VIEW_1_DEFAULTS = {"blur_prob": 1.0, "solarize_prob": 0.0, "noise_prob": 0.0}
    VIEW_2_DEFAULTS = {"blur_prob": 0.1, "solarize_prob": 0.2, "noise_prob": 0.2}

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int],
        view_1: Mapping | None = None,
        view_2: Mapping | None = None,
        suffix: str = "_2",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.views = (
            RandomView(spatial_size, **{**self.VIEW_1_DEFAULTS, **dict(view_1 or {})}),
            RandomView(spatial_size, **{**self.VIEW_2_DEFAULTS, **dict(view_2 or {})}),
        )
        self.suffix = suffix

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> TwoViewsd:
        super().set_random_state(seed, state)
        for view in self.views:
            view.set_random_state(state=self.R)
        return self

    def randomize(self, data=None) -> None:
        pass

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            d[key] = self.views[0](image)
            d[f"{key}{self.suffix}"] = self.views[1](image)
        return d


class MultiCropd(Randomizable, MapTransform):
    """Multi-crop views (DINO / SwAV): ``n_global`` large crops and ``n_local`` small crops of each key, stacked as
    ``f"{key}_global"`` ``(n_global, C, *global_size)`` and ``f"{key}_local"`` ``(n_local, C, *local_size)``.

    Args:
        keys: image keys.
        global_size: spatial size of the global crops.
        local_size: spatial size of the local crops.
        n_global: number of global crops (2 in DINO).
        n_local: number of local crops (0 disables them).
        global_scale: area fraction range of global crops.
        local_scale: area fraction range of local crops.
        view: further :class:`RandomView` arguments shared by all crops (flip, jitter, blur, ...).
        global_views: per global crop, arguments overriding ``view`` (DINO: the first always blurred, the
            second rarely blurred and sometimes solarised); ``None`` = all global crops alike.
        local_view: arguments overriding ``view`` for the local crops (DINO: blur p=0.5).
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        global_size: Sequence[int],
        local_size: Sequence[int],
        n_global: int = 2,
        n_local: int = 6,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        view: Mapping | None = None,
        global_views: Sequence[Mapping] | None = None,
        local_view: Mapping | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if n_global < 1 or n_local < 0:
            raise ValueError(f"need n_global >= 1 and n_local >= 0, got {n_global}, {n_local}")
        if global_views is not None and len(global_views) != n_global:
            raise ValueError(f"global_views has {len(global_views)} entries for n_global={n_global}")
        view = dict(view or {})
        per_global = global_views if global_views is not None else [{}] * n_global
        self.global_views = [RandomView(global_size, scale=global_scale, **{**view, **dict(g)}) for g in per_global]
        self.local_view = RandomView(local_size, scale=local_scale, **{**view, **dict(local_view or {})})
        self.n_local = n_local

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> MultiCropd:
        super().set_random_state(seed, state)
        for view in (*self.global_views, self.local_view):
            view.set_random_state(state=self.R)
        return self

    def randomize(self, data=None) -> None:
        pass

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            d[f"{key}_global"] = torch.stack([view(image) for view in self.global_views])
            if self.n_local:
                d[f"{key}_local"] = torch.stack([self.local_view(image) for _ in range(self.n_local)])
        return d


class RandPatchMaskd(Randomizable, MapTransform):
    """Masks over the patch grid of an image, for masked image modelling (2D and 3D).

    The grid has ``spatial_shape // patch_size`` cells. ``mode="random"`` (MAE) writes ``mask_key``: a bool grid
    with exactly ``round(mask_ratio * cells)`` True (= hidden) cells. ``mode="blocks"`` (I-JEPA) writes
    ``f"{mask_key}_targets"`` ``(n_targets, *grid)`` (blocks to predict, each covering ``target_scale`` of the grid
    with aspect ratio in ``target_aspect``) and ``f"{mask_key}_context"`` ``grid`` (a block covering
    ``context_scale`` of the grid, minus every target cell; True = visible context).

    Args:
        keys: image keys (the grid is computed from the first present key).
        patch_size: patch edge in pixels (int or per axis).
        mode: ``"random"`` or ``"blocks"``.
        mask_ratio: fraction of hidden cells for ``"random"``.
        n_targets: number of target blocks for ``"blocks"``.
        target_scale: fraction of the grid per target block.
        target_aspect: aspect ratio range of target blocks.
        context_scale: fraction of the grid of the context block.
        mask_key: key (prefix) of the written masks.
        zero_masked: also set the hidden pixels of the image to 0 (``"random"`` only; for CNN-style masking).
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        patch_size: int | Sequence[int] = 16,
        mode: str = "random",
        mask_ratio: float = 0.75,
        n_targets: int = 4,
        target_scale: tuple[float, float] = (0.15, 0.2),
        target_aspect: tuple[float, float] = (0.75, 1.5),
        context_scale: tuple[float, float] = (0.85, 1.0),
        mask_key: str = "mask",
        zero_masked: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if mode not in ("random", "blocks"):
            raise ValueError(f"mode must be 'random' or 'blocks', got {mode!r}")
        if not 0 <= mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.patch_size = ensure_tuple(patch_size)
        self.mode, self.mask_ratio = mode, mask_ratio
        self.n_targets, self.target_scale, self.target_aspect = n_targets, target_scale, target_aspect
        self.context_scale = context_scale
        self.mask_key, self.zero_masked = mask_key, zero_masked

    def randomize(self, data=None) -> None:
        pass

    def _grid(self, spatial: Sequence[int]) -> tuple[int, ...]:
        patch = self._patch_per_axis(len(spatial))
        grid = tuple(int(s) // int(p) for s, p in zip(spatial, patch))
        if len(patch) != len(spatial) or min(grid) < 1:
            raise ValueError(f"patch_size {self.patch_size} does not tile spatial shape {tuple(spatial)}")
        return grid

    def _block(self, grid: Sequence[int], scale: tuple[float, float], aspect: tuple[float, float]) -> np.ndarray:
        side = self.R.uniform(*scale) ** (1.0 / len(grid))
        logs = self.R.uniform(math.log(aspect[0]) / 2, math.log(aspect[1]) / 2, size=len(grid))
        logs -= logs.mean()
        size = [min(g, max(1, int(round(g * side * math.exp(a))))) for g, a in zip(grid, logs)]
        start = [int(self.R.randint(0, g - s + 1)) for g, s in zip(grid, size)]
        block = np.zeros(grid, dtype=bool)
        block[tuple(slice(b, b + s) for b, s in zip(start, size))] = True
        return block

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        grid = self._grid(tuple(d[keys[0]].shape[1:]))
        if self.mode == "random":
            n_cells = int(np.prod(grid))
            hidden = np.zeros(n_cells, dtype=bool)
            hidden[self.R.permutation(n_cells)[: int(round(self.mask_ratio * n_cells))]] = True
            mask = torch.from_numpy(hidden.reshape(grid))
            d[self.mask_key] = mask
            if self.zero_masked:
                for key in keys:
                    image = _as_float_tensor(d[key])
                    pixel_mask = mask
                    for axis, p in enumerate(self._patch_per_axis(len(grid))):
                        pixel_mask = pixel_mask.repeat_interleave(p, dim=axis)
                    pad = [(0, s - m) for s, m in zip(image.shape[1:], pixel_mask.shape)]
                    pixel_mask = np.pad(pixel_mask.numpy(), pad, constant_values=False)
                    d[key] = image.masked_fill(torch.from_numpy(pixel_mask)[None], 0.0)
            return d
        targets = np.stack([self._block(grid, self.target_scale, self.target_aspect) for _ in range(self.n_targets)])
        context = np.zeros(grid, dtype=bool)
        for _ in range(10):  # I-JEPA needs a non-empty context: redraw it when the targets swallow it
            context = self._block(grid, self.context_scale, (1.0, 1.0)) & ~targets.any(axis=0)
            if context.any():
                break
        if not context.any():
            context = ~targets.any(axis=0)
        d[f"{self.mask_key}_targets"] = torch.from_numpy(targets)
        d[f"{self.mask_key}_context"] = torch.from_numpy(context)
        return d

    def _patch_per_axis(self, dims: int) -> tuple[int, ...]:
        return ensure_tuple_rep(self.patch_size[0], dims) if len(self.patch_size) == 1 else tuple(self.patch_size)
