"""What every reader returns before the intensity mode is chosen, and the step that applies that mode."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from dissect_monai.transforms.errors import ImageLoadError
from dissect_monai.transforms.intensity import apply_window, check_finite, check_not_constant, percentile_window

__all__ = ["RawImage", "INTENSITY_MODES", "map_intensity"]

INTENSITY_MODES = ("unit", "hu", "raw")


@dataclass
class RawImage:
    """A decoded image in physical/stored units, channel-first, with geometry and de-identified metadata.

    Attributes:
        values: float32 ``(C, H, W)`` for 2D images (rows first) or ``(C, X, Y, Z)`` for volumes
            (voxel order of the affine, as in NIfTI/ITK). Modality LUT already applied for DICOM.
        affine: 4x4 voxel-to-world matrix (RAS for volumes; pixel spacing on the diagonal for 2D).
        meta: metadata that is safe to log and collate (no patient identifiers).
        filename: what to name in errors.
        modality: DICOM Modality ("CT", "CR", ...) or "" when unknown.
        window: ``(center, width, VOILUTFunction)`` stored with the image, if any.
        voi_lut: callable mapping ``values`` through a stored VOI LUT to [0, 1], if the image has one.
        unit_scale: divide by this for "unit" (PNG/JPEG bit depth), instead of any window.
        invert: MONOCHROME1 (high value = dark), inverted for "unit".
    """

    values: np.ndarray
    affine: np.ndarray
    meta: dict
    filename: object
    modality: str = ""
    window: tuple[float, float, str] | None = None
    voi_lut: Callable[[np.ndarray], np.ndarray] | None = None
    unit_scale: float | None = None
    invert: bool = False


def map_intensity(
    raw: RawImage,
    mode: str,
    window: tuple[float, float] | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
    reject_constant: bool = True,
) -> tuple[np.ndarray, dict]:
    """Apply an intensity mode to a decoded image.

    Args:
        raw: the decoded image.
        mode: ``"unit"`` -> [0, 1] display intensities (window override, else stored VOI LUT, else stored
            window centre/width, else bit depth for PNG/JPEG, else a percentile window; MONOCHROME1 inverted);
            ``"hu"`` -> modality values of a CT (Hounsfield units), error for other modalities;
            ``"raw"`` -> modality/stored values unchanged (label maps, masks).
        window: ``(center, width)`` overriding any stored window (``"unit"`` only).
        percentiles: percentile window used when nothing else defines one.
        reject_constant: raise for constant images in "unit"/"hu" (nothing to learn, no window exists).

    Returns:
        ``(values, meta)``: float32 array shaped like ``raw.values`` and metadata entries describing the mapping.
    """
    if mode not in INTENSITY_MODES:
        raise ValueError(f"intensity must be one of {INTENSITY_MODES}, got {mode!r}")
    values = raw.values
    check_finite(values, raw.filename, "in the decoded pixel values")
    meta: dict = {"intensity": mode}
    if mode == "raw":
        return values, meta
    if reject_constant:
        check_not_constant(values, raw.filename)
    if mode == "hu":
        if raw.modality and raw.modality != "CT":
            raise ImageLoadError(raw.filename, f"intensity='hu' needs a CT image, this is Modality {raw.modality}")
        return values, meta
    if window is not None:
        out = apply_window(values, float(window[0]), float(window[1]), "LINEAR")
        meta.update(voi_source="override", window_center=float(window[0]), window_width=float(window[1]))
    elif raw.voi_lut is not None:
        out = raw.voi_lut(values)
        meta.update(voi_source="VOILUTSequence", window_center=float("nan"), window_width=float("nan"))
    elif raw.window is not None:
        center, width, function = raw.window
        out = apply_window(values, center, width, function)
        meta.update(voi_source="WindowCenterWidth", window_center=float(center), window_width=float(width))
    elif raw.unit_scale is not None:
        out = values / np.float32(raw.unit_scale)
        meta.update(voi_source="bit_depth", window_center=raw.unit_scale / 2.0, window_width=float(raw.unit_scale))
    else:
        center, width = percentile_window(values, percentiles)
        out = apply_window(values, center, width, "LINEAR_EXACT")
        meta.update(voi_source="percentile", window_center=center, window_width=width)
    if raw.invert:
        out = 1.0 - out
    meta["inverted"] = bool(raw.invert)
    return out.astype(np.float32, copy=False), meta
