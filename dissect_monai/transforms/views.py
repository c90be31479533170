"""The self-supervised view recipe: two asymmetric random views of every image of a batch (2D and 3D).

The pretraining bundle caches each decoded image at 1.5x the training size; after collation,
:class:`RandTwoViewsd` cuts two views from every cached image of the batch, on the training device, with per-sample
random parameters: random crop (each side 40-100 % of the image) resized to ``spatial_size`` with an area-like
filter, left-right flip, small rotation, gamma, intensity scale and shift, Gaussian blur (always on view 1,
rarely on view 2) and Gaussian noise (view 2 only). The whole batch takes one resampling and a few filters, so the
views cost a small fraction of a training step (``scripts/benchmark_data.py``).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable
from monai.utils import TransformBackends, convert_to_tensor

from dissect_monai.transforms.batched import adjust_gamma, gaussian_blur, resample_affine, supersampling_factor

__all__ = ["RandTwoViewsd", "ViewParameters", "apply_view"]


@dataclass
class ViewParameters:
    """Random parameters of one view for each sample of a batch (B samples, N spatial axes; CPU tensors).

    Attributes:
        matrix: ``(B, N, N)`` and ``offset`` ``(B, N)``: the affine map from output to input coordinates
            (crop, flip, rotation; see :func:`dissect_monai.transforms.batched.resample_affine`).
        gamma: ``(B,)`` gamma exponents, applied where ``gamma_on`` ``(B,)`` is True.
        intensity_scale: ``(B,)`` factors (1 = off); ``intensity_shift`` ``(B,)`` offsets (0 = off).
        blur_sigma: ``(B, N)`` blur sigmas in output pixels, applied where ``blur_on`` ``(B,)`` is True.
        noise_std: ``(B,)`` noise standard deviations (0 = off).
        noise_seed: seed of the noise generator of the batch.
    """

    matrix: torch.Tensor
    offset: torch.Tensor
    gamma: torch.Tensor
    gamma_on: torch.Tensor
    intensity_scale: torch.Tensor
    intensity_shift: torch.Tensor
    blur_sigma: torch.Tensor
    blur_on: torch.Tensor
    noise_std: torch.Tensor
    noise_seed: int

    def select(self, index: slice | torch.Tensor) -> ViewParameters:
        """The parameters of the samples at ``index`` (same noise seed)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return ViewParameters(**{k: v if k == "noise_seed" else v[index] for k, v in values.items()})


def apply_view(
    images: torch.Tensor,
    params: ViewParameters,
    spatial_size: Sequence[int],
    supersample: int = 1,
    blur_radius: int | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One view of every image of a batch, in the recipe's order: resample (crop, resize, flip, rotation) ->
    gamma -> intensity scale -> intensity shift -> blur -> noise.

    Args:
        images: ``(B, C, *spatial)``.
        params: the batch's :class:`ViewParameters`.
        spatial_size: view size.
        supersample: sub-samples per output pixel and axis of the resampling.
        blur_radius: Gaussian kernel half-width (see :func:`dissect_monai.transforms.batched.gaussian_blur`).
        noise: standard normal noise ``(B, C, *spatial_size)``, scaled by ``params.noise_std``; required when any
            ``noise_std`` is positive.

    Returns:
        ``(B, C, *spatial_size)`` float32, contiguous.
    """
    device = images.device
    x = resample_affine(images, params.matrix, params.offset, spatial_size, supersample)
    shape = (-1,) + (1,) * (x.ndim - 1)
    gamma_on = params.gamma_on.to(device)
    if bool(gamma_on.any()):
        x[gamma_on] = adjust_gamma(x[gamma_on], params.gamma.to(device)[gamma_on])
    x = x * params.intensity_scale.to(device).view(shape) + params.intensity_shift.to(device).view(shape)
    blur_on = params.blur_on.to(device)
    if bool(blur_on.any()):
        x[blur_on] = gaussian_blur(x[blur_on], params.blur_sigma.to(device)[blur_on], blur_radius)
    if bool((params.noise_std > 0).any()):
        if noise is None or noise.shape != x.shape:
            raise ValueError(f"apply_view needs noise of shape {tuple(x.shape)} for these parameters, got "
                             f"{None if noise is None else tuple(noise.shape)}")
        x = x + params.noise_std.to(device).view(shape) * noise.to(device)
    return x.contiguous()


def _per_view(value: float | Sequence[float], name: str) -> tuple[float, float]:
    pair = (float(value), float(value)) if np.isscalar(value) else tuple(float(v) for v in value)
    if len(pair) != 2 or not all(0.0 <= p <= 1.0 for p in pair):
        raise ValueError(f"{name} must be a probability or a pair (view 1, view 2) of probabilities, got {value}")
    return pair  # type: ignore[return-value]


def _range(value: Sequence[float], name: str, low: float, high: float = math.inf) -> tuple[float, float]:
    pair = tuple(float(v) for v in value)
    if len(pair) != 2 or not low < pair[0] <= pair[1] <= high:
        raise ValueError(f"{name} must be (min, max) with {low} < min <= max <= {high}, got {tuple(value)}")
    return pair  # type: ignore[return-value]


class RandTwoViewsd(Randomizable, MapTransform):
    """Two asymmetric random views (BYOL-style) of each image of a collated batch, generated batched on the batch's
    device with per-sample random parameters: the first view replaces ``key``, the second is ``f"{key}{suffix}"``.

    Per view and sample, in this order: a random crop whose every side is a fraction in ``crop_scale`` of the
    image's, placed uniformly, resized to ``spatial_size`` (bilinear, supersampled against aliasing), flipped
    along each of ``flip_axes`` with ``flip_prob`` and rotated in the plane of spatial axes 0 and 1 by an angle
    in ``[-rotate_range, rotate_range]`` radians with ``rotate_prob`` (in normalised coordinates, exact for square
    images; outside the image is 0) -- all in one resampling; then gamma in ``gamma`` (MONAI's
    ``AdjustContrast``) with ``gamma_prob``; ``x * (1 + f)``, ``f`` in ``[-scale, scale]`` with ``scale_prob``;
    ``x + o``, ``o`` in ``[-shift, shift]`` with ``shift_prob``; Gaussian blur, sigma per axis in ``blur_sigma``
    output pixels, with ``blur_prob``; Gaussian noise of std in ``[0, noise_std]`` with ``noise_prob``.
    Every probability is one value for both views or a pair (view 1, view 2).

    All parameters are drawn from this transform's random state (``set_random_state``), so a seed fixes the
    views exactly; :func:`apply_view` applies given parameters (one sample's result does not depend on the rest
    of the batch).

    Args:
        keys: keys of the batched images ``(B, C, *spatial)``, N = 2 or 3 spatial axes.
        spatial_size: view size (N values).
        crop_scale: range of each crop side as a fraction of the image side.
        flip_prob: probability of flipping each axis of ``flip_axes``.
        flip_axes: spatial axes that may flip (default 0: left-right of a 2D image in MONAI's ``(W, H)`` order, or
            of a RAS volume).
        rotate_prob: probability of a rotation.
        rotate_range: largest rotation angle in radians.
        gamma_prob: probability of a gamma change.
        gamma: gamma range.
        scale_prob: probability of an intensity scaling.
        scale: largest relative intensity scaling.
        shift_prob: probability of an intensity shift.
        shift: largest intensity shift.
        blur_prob: probability of a Gaussian blur (default: view 1 always, view 2 with 0.1).
        blur_sigma: sigma range in output pixels.
        noise_prob: probability of Gaussian noise (default: view 2 only, 0.2).
        noise_std: largest noise standard deviation.
        suffix: suffix of the second view's key.
        allow_missing_keys: skip absent keys.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int],
        crop_scale: Sequence[float] = (0.4, 1.0),
        flip_prob: float | Sequence[float] = 0.5,
        flip_axes: Sequence[int] = (0,),
        rotate_prob: float | Sequence[float] = 0.5,
        rotate_range: float = 0.17,
        gamma_prob: float | Sequence[float] = 0.8,
        gamma: Sequence[float] = (0.7, 1.5),
        scale_prob: float | Sequence[float] = 0.8,
        scale: float = 0.3,
        shift_prob: float | Sequence[float] = 0.8,
        shift: float = 0.1,
        blur_prob: float | Sequence[float] = (1.0, 0.1),
        blur_sigma: Sequence[float] = (0.1, 1.5),
        noise_prob: float | Sequence[float] = (0.0, 0.2),
        noise_std: float = 0.03,
        suffix: str = "_2",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.spatial_size = tuple(int(s) for s in spatial_size)
        dims = len(self.spatial_size)
        if dims not in (2, 3) or min(self.spatial_size) < 1:
            raise ValueError(f"spatial_size must be 2 or 3 positive sizes, got {tuple(spatial_size)}")
        self.flip_axes = tuple(int(a) for a in flip_axes)
        if not all(0 <= a < dims for a in self.flip_axes):
            raise ValueError(f"flip_axes {self.flip_axes} must be spatial axes of a {dims}D view")
        self.crop_scale = _range(crop_scale, "crop_scale", 0.0, 1.0)
        self.gamma = _range(gamma, "gamma", 0.0)
        self.blur_sigma = _range(blur_sigma, "blur_sigma", 0.0)
        self.flip_prob, self.rotate_prob = _per_view(flip_prob, "flip_prob"), _per_view(rotate_prob, "rotate_prob")
        self.gamma_prob, self.scale_prob = _per_view(gamma_prob, "gamma_prob"), _per_view(scale_prob, "scale_prob")
        self.shift_prob, self.blur_prob = _per_view(shift_prob, "shift_prob"), _per_view(blur_prob, "blur_prob")
        self.noise_prob = _per_view(noise_prob, "noise_prob")
        self.rotate_range, self.scale, self.shift, self.noise_std = rotate_range, scale, shift, noise_std
        self.blur_radius = int(math.ceil(4 * self.blur_sigma[1]))
        self.suffix = suffix
        self.params: tuple[ViewParameters, ViewParameters] | None = None

    def _draw(self, batch_size: int, view: int) -> ViewParameters:
        b, n, r = batch_size, len(self.spatial_size), self.R
        side = r.uniform(*self.crop_scale, size=(b, n))
        offset = r.uniform(-1.0, 1.0, size=(b, n)) * (1.0 - side)
        flips = r.rand(b, n) < self.flip_prob[view]
        sign = np.where(flips & np.isin(np.arange(n), self.flip_axes), -1.0, 1.0)
        angle = r.uniform(-self.rotate_range, self.rotate_range, size=b) * (r.rand(b) < self.rotate_prob[view])
        rotation = np.tile(np.eye(n), (b, 1, 1))
        rotation[:, 0, 0], rotation[:, 0, 1] = np.cos(angle), -np.sin(angle)
        rotation[:, 1, 0], rotation[:, 1, 1] = np.sin(angle), np.cos(angle)
        matrix = side[:, :, None] * rotation * sign[:, None, :]  # diag(side) @ rotation @ diag(sign)
        gamma = r.uniform(*self.gamma, size=b)
        gamma_on = r.rand(b) < self.gamma_prob[view]
        scale = 1.0 + r.uniform(-self.scale, self.scale, size=b) * (r.rand(b) < self.scale_prob[view])
        shift = r.uniform(-self.shift, self.shift, size=b) * (r.rand(b) < self.shift_prob[view])
        sigma = r.uniform(*self.blur_sigma, size=(b, n))
        blur_on = r.rand(b) < self.blur_prob[view]
        noise_std = r.uniform(0.0, self.noise_std, size=b) * (r.rand(b) < self.noise_prob[view])
        noise_seed = int(r.randint(0, 2**31 - 1))

        def f32(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a, dtype=torch.float32)

        return ViewParameters(
            matrix=f32(matrix), offset=f32(offset), gamma=f32(gamma), gamma_on=torch.as_tensor(gamma_on),
            intensity_scale=f32(scale), intensity_shift=f32(shift), blur_sigma=f32(sigma),
            blur_on=torch.as_tensor(blur_on), noise_std=f32(noise_std), noise_seed=noise_seed,
        )

    def randomize(self, data: int) -> None:
        """Draw both views' parameters for a batch of ``data`` samples into ``self.params``."""
        self.params = (self._draw(int(data), 0), self._draw(int(data), 1))

    def _noise(self, params: ViewParameters, shape: Sequence[int], device: torch.device) -> torch.Tensor | None:
        if not bool((params.noise_std > 0).any()):
            return None
        generator = torch.Generator(device=device).manual_seed(params.noise_seed)
        return torch.randn(tuple(shape), generator=generator, device=device)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            images = convert_to_tensor(d[key], track_meta=False)
            if images.ndim != len(self.spatial_size) + 2:
                raise ValueError(
                    f"RandTwoViewsd works on collated batches (B, C, *spatial) with {len(self.spatial_size)} spatial "
                    f"axes; {key!r} has shape {tuple(images.shape)} (apply it after the DataLoader, e.g. as "
                    "SSLIteration's batch_transform)"
                )
            self.randomize(images.shape[0])
            supersample = supersampling_factor(images.shape[2:], self.spatial_size, self.crop_scale[1])
            out_shape = (*images.shape[:2], *self.spatial_size)
            d[key], d[f"{key}{self.suffix}"] = (
                apply_view(images, p, self.spatial_size, supersample, self.blur_radius,
                           self._noise(p, out_shape, images.device))
                for p in self.params
            )
        return d
