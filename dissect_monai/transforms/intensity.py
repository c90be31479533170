"""Intensity mapping after ``LoadImaged`` + ``EnsureChannelFirstd``: DICOM VOI window or LUT, MONOCHROME1, bit depth,
percentile window (display intensities in [0, 1]), or CT numbers in HU.

The window and photometric interpretation come from the metadata written by
:class:`dissect_monai.data.MedicalImageReader` (:data:`dissect_monai.data.decoded.INTENSITY_HINT_KEYS`); an image
without them (another reader, MONAI Deploy's in-memory input) gets the percentile window.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import ensure_tuple_rep

from dissect_monai.data.decoded import VOI_LUT_KEYS
from dissect_monai.data.errors import ImageLoadError

__all__ = ["INTENSITY_MODES", "MedicalIntensity", "MedicalIntensityd", "apply_window", "percentile_window",
           "check_not_constant"]

INTENSITY_MODES = ("unit", "hu")


def apply_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Map values through a DICOM VOI window to [0, 1] (PS3.3 C.11.2.1.2).

    Args:
        values: any-shape array of modality values (e.g. HU).
        center: window centre.
        width: window width (> 0; >= 1 for ``LINEAR``).
        function: ``VOILUTFunction``: ``LINEAR`` (default), ``LINEAR_EXACT`` or ``SIGMOID``.

    Returns:
        float32 array of the same shape in [0, 1].
    """
    values = values.astype(np.float32, copy=False)
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    elif function == "LINEAR_EXACT":
        out = (values - (center - width / 2.0)) / width
    else:
        if width < 1:
            raise ValueError(f"LINEAR window width must be >= 1, got {width}")
        out = (values - (center - 0.5)) / (width - 1.0) + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def percentile_window(values: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> tuple[float, float]:
    """Window (centre, width) spanning the given percentiles, widened to min/max when they coincide.

    Args:
        values: any-shape array (not constant; see :func:`check_not_constant`).
        percentiles: lower and upper percentile in [0, 100].

    Returns:
        ``(center, width)`` for :func:`apply_window` with ``LINEAR_EXACT``.
    """
    flat = values.reshape(-1)
    if flat.size > 2_000_000:  # a strided sample is enough for a robust window and keeps 3D volumes fast
        flat = flat[:: flat.size // 1_000_000]
    lo, hi = (float(v) for v in np.percentile(flat, percentiles))
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    return (lo + hi) / 2.0, hi - lo


def check_not_constant(values: np.ndarray, filename) -> None:
    """Raise :class:`ImageLoadError` when every value is equal (nothing to learn from, and no window exists)."""
    if values.size == 0:
        raise ImageLoadError(filename, "empty image (zero pixels)")
    first = values.reshape(-1)[0]
    if np.all(values == first):
        raise ImageLoadError(filename, f"constant image (every pixel = {float(first):g})")


def _number(meta: Mapping, key: str) -> float:
    try:
        return float(meta.get(key, math.nan))
    except (TypeError, ValueError):
        return math.nan


class MedicalIntensity(Transform):
    """Map a channel-first image (``(C, W, H)`` or ``(C, X, Y, Z)``, modality values) to display intensities or HU.

    ``mode="unit"`` -> [0, 1]: the ``window`` override, else the stored VOI LUT, else the stored window
    centre/width (with its ``VOILUTFunction``), else the raster bit depth (``full_scale``), else a percentile window;
    MONOCHROME1 is then inverted so that high = bright. ``mode="hu"`` -> the CT numbers unchanged, an error for
    an image whose Modality is not CT. Both reject constant images. The metadata records what was applied
    (``intensity``, ``voi_source``, ``window_center``, ``window_width``, ``inverted``); the VOI LUT table is
    removed from it once applied.

    Args:
        mode: ``"unit"`` or ``"hu"``.
        window: ``(center, width)`` overriding stored windows for ``"unit"`` (e.g. ``(40, 400)`` for CT soft tissue).
        percentiles: window used when an image defines none.
        reject_constant: raise :class:`ImageLoadError` for constant images.

    Raises:
        ImageLoadError: naming the file and the problem (constant image; ``"hu"`` on a non-CT image).
    """

    def __init__(
        self,
        mode: str = "unit",
        window: Sequence[float] | None = None,
        percentiles: Sequence[float] = (0.5, 99.5),
        reject_constant: bool = True,
    ) -> None:
        if mode not in INTENSITY_MODES:
            raise ValueError(f"mode must be one of {INTENSITY_MODES}, got {mode!r}")
        if window is not None and len(window) != 2:
            raise ValueError(f"window must be (center, width), got {window!r}")
        self.mode = mode
        self.window = (float(window[0]), float(window[1])) if window is not None else None
        self.percentiles = (float(percentiles[0]), float(percentiles[1]))
        self.reject_constant = reject_constant

    def _unit(self, values: np.ndarray, meta: dict) -> tuple[np.ndarray, dict]:
        center, width = _number(meta, "WindowCenter"), _number(meta, "WindowWidth")
        full_scale = _number(meta, "full_scale")
        if self.window is not None:
            out = apply_window(values, *self.window, "LINEAR")
            applied = {"voi_source": "override", "window_center": self.window[0], "window_width": self.window[1]}
        elif "voi_lut" in meta:
            table = np.asarray(meta["voi_lut"], dtype=np.float32)
            first = int(meta["voi_lut_first_mapped"])
            index = np.clip(np.rint(values).astype(np.int64) - first, 0, len(table) - 1)
            out = table[index]
            applied = {"voi_source": "VOILUTSequence", "window_center": math.nan, "window_width": math.nan}
        elif math.isfinite(center) and math.isfinite(width):
            out = apply_window(values, center, width, str(meta.get("VOILUTFunction") or "LINEAR"))
            applied = {"voi_source": "WindowCenterWidth", "window_center": center, "window_width": width}
        elif math.isfinite(full_scale):
            out = values / np.float32(full_scale)
            applied = {"voi_source": "bit_depth", "window_center": full_scale / 2.0, "window_width": full_scale}
        else:
            center, width = percentile_window(values, self.percentiles)
            out = apply_window(values, center, width, "LINEAR_EXACT")
            applied = {"voi_source": "percentile", "window_center": center, "window_width": width}
        inverted = str(meta.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1"
        if inverted:
            out = 1.0 - out
        return out.astype(np.float32, copy=False), {**applied, "inverted": inverted}

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        meta = dict(img.meta) if isinstance(img, MetaTensor) else {}
        filename = meta.get("filename_or_obj", "<in-memory image>")
        values = img.detach().cpu().numpy().astype(np.float32, copy=False)
        if self.reject_constant:
            check_not_constant(values, filename)
        if self.mode == "hu":
            modality = str(meta.get("Modality", "") or "")
            if modality and modality != "CT":
                raise ImageLoadError(filename, f"mode='hu' needs a CT image, this is Modality {modality}")
            out, applied = values, {}
        else:
            out, applied = self._unit(values, meta)
        result = torch.as_tensor(out, dtype=torch.float32)
        if not isinstance(img, MetaTensor):
            return result
        meta = {k: v for k, v in meta.items() if k not in VOI_LUT_KEYS}
        meta.update(intensity=self.mode, **applied)
        return MetaTensor(result, meta=meta, applied_operations=list(img.applied_operations))


class MedicalIntensityd(MapTransform):
    """Dictionary version of :class:`MedicalIntensity`; ``mode`` and ``window`` may be given per key.

    Args:
        keys: image keys (not label maps: they keep the values the reader gives).
        mode: ``"unit"`` or ``"hu"``, one for all keys or one per key.
        window: one ``(center, width)`` for all keys, or a list with one (or ``None``) per key.
        percentiles: window used when an image defines none.
        reject_constant: raise for constant images.
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mode: str | Sequence[str] = "unit",
        window: Sequence[float] | Sequence[Sequence[float] | None] | None = None,
        percentiles: Sequence[float] = (0.5, 99.5),
        reject_constant: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        n = len(self.keys)
        modes = ensure_tuple_rep(mode, n)
        one_window = window is None or all(isinstance(v, (int, float)) for v in window)
        windows = (window,) * n if one_window else ensure_tuple_rep(window, n)
        self.transforms = {key: MedicalIntensity(m, w, percentiles, reject_constant)
                           for key, m, w in zip(self.keys, modes, windows)}

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transforms[key](d[key])
        return d
