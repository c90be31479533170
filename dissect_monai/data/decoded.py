"""What each file-format decoder returns to :class:`dissect_monai.data.MedicalImageReader`, and the metadata keys
that carry the intensity hints (VOI window, VOI LUT, photometric interpretation, raster full scale) from the reader
to :class:`dissect_monai.transforms.MedicalIntensityd`."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from dissect_monai.data.errors import ImageLoadError

__all__ = ["DecodedImage", "INTENSITY_HINT_KEYS", "VOI_LUT_KEYS", "check_finite", "intensity_hints"]

#: keys present in every image's metadata (NaN / "" when the file has no such value), so batches collate
INTENSITY_HINT_KEYS = ("Modality", "PhotometricInterpretation", "WindowCenter", "WindowWidth", "VOILUTFunction",
                       "full_scale")
#: keys present only when a DICOM file stores a VOI LUT; :class:`~dissect_monai.transforms.MedicalIntensityd`
#: applies and removes them (a table does not collate across a batch)
VOI_LUT_KEYS = ("voi_lut", "voi_lut_first_mapped")


class DecodedImage(NamedTuple):
    """A decoded image in MONAI's axis order, before any intensity mapping.

    Attributes:
        array: float32, no channel axis: ``(W, H)`` for a 2D image (first axis = image column, as MONAI's
            ``PILReader`` and ``PydicomReader``), ``(X, Y, Z)`` for a volume in the voxel order of ``affine``; a 4D
            NIfTI is ``(X, Y, Z, T)`` with ``channel_dim=-1``. DICOM values have the Modality LUT applied.
        affine: 4x4 voxel-to-world matrix (RAS for volumes; pixel spacing on the diagonal for 2D images).
        meta: de-identified metadata, including the :data:`INTENSITY_HINT_KEYS`.
        channel_dim: ``None`` when ``array`` has no channel axis, else its index (``-1``).
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict
    channel_dim: int | None = None


def intensity_hints(
    modality: str = "",
    photometric: str = "",
    window: tuple[float, float, str] | None = None,
    voi_lut: tuple[np.ndarray, int] | None = None,
    full_scale: float | None = None,
) -> dict:
    """The intensity-hint metadata entries of one image.

    Args:
        modality: DICOM Modality ("CT", "CR", ...), "" when unknown.
        photometric: DICOM PhotometricInterpretation ("MONOCHROME1" is inverted for display), "" when unknown.
        window: stored ``(WindowCenter, WindowWidth, VOILUTFunction)``.
        voi_lut: stored VOI LUT as ``(table normalised to [0, 1], first mapped value)``.
        full_scale: value of white for rasters (255 for 8-bit, 65535 for 16-bit PNG).
    """
    center, width, function = window if window is not None else (float("nan"), float("nan"), "")
    hints = {
        "Modality": modality,
        "PhotometricInterpretation": photometric,
        "WindowCenter": float(center),
        "WindowWidth": float(width),
        "VOILUTFunction": function,
        "full_scale": float("nan") if full_scale is None else float(full_scale),
    }
    if voi_lut is not None:
        hints["voi_lut"], hints["voi_lut_first_mapped"] = np.asarray(voi_lut[0], dtype=np.float32), int(voi_lut[1])
    return hints


def check_finite(values: np.ndarray, filename, stage: str) -> None:
    """Raise :class:`ImageLoadError` when ``values`` hold NaN or Inf (``stage`` says where they appeared)."""
    if not np.isfinite(values).all():
        n_bad = int(values.size - np.isfinite(values).sum())
        raise ImageLoadError(filename, f"{n_bad} NaN/Inf values {stage}")
