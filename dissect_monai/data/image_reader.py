"""A MONAI ``ImageReader`` for chest X-ray and CT inputs: PNG/JPEG/TIFF, NIfTI, DICOM files and DICOM series.

Use it through MONAI's loader, so MONAI Label and MONAI Deploy see the usual pipeline::

    LoadImaged(keys="image", reader=MedicalImageReader()), EnsureChannelFirstd(keys="image"),
    MedicalIntensityd(keys="image")   # dissect_monai.transforms: VOI window / LUT, MONOCHROME1; or mode="hu"

Arrays follow MONAI's axis order: a 2D image is ``(W, H)`` (first axis = image column, as ``PILReader`` and
``PydicomReader``), a volume ``(X, Y, Z)`` in the voxel order of its RAS affine (as ``NibabelReader`` and
``ITKReader``). Metadata: ``affine``, ``original_affine``, ``spatial_shape``, ``space`` (RAS), and for DICOM only the
de-identified tags of :data:`dissect_monai.data.dicom_reader.SAFE_TAGS` plus ``SOPInstanceUID`` (backslash-joined
in slice order for a series), never patient identifiers; the intensity hints of
:data:`dissect_monai.data.decoded.INTENSITY_HINT_KEYS` for :class:`~dissect_monai.transforms.MedicalIntensityd`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.data import ImageReader
from monai.utils import ensure_tuple

from dissect_monai.data.decoded import DecodedImage
from dissect_monai.data.dicom_reader import is_dicom_file, read_dicom
from dissect_monai.data.errors import ImageLoadError
from dissect_monai.data.file_readers import NIFTI_SUFFIXES, RASTER_SUFFIXES, read_nifti, read_raster

__all__ = ["MedicalImageReader", "DICOM_SUFFIXES"]

DICOM_SUFFIXES = (".dcm", ".dicom")
PathInput = str | os.PathLike


def _decode(paths: tuple[str, ...], series_uid: str | None) -> DecodedImage:
    """Dispatch on the input: several paths or a directory are one DICOM series; ``.nii(.gz)`` NIfTI; PNG/JPEG/TIFF
    Pillow; anything else is tried as DICOM (Part 10 preamble, ``.dcm`` or no suffix)."""
    if not paths:
        raise ImageLoadError("<empty list>", "no files given")
    if len(paths) > 1:
        return read_dicom(list(paths), series_uid=series_uid)
    path = Path(paths[0])
    name = path.name.lower()
    if path.is_dir():
        return read_dicom(path, series_uid=series_uid)
    if name.endswith(NIFTI_SUFFIXES):
        return read_nifti(path)
    if name.endswith(RASTER_SUFFIXES):
        return read_raster(path)
    if not path.exists():
        raise ImageLoadError(path, "file not found")
    if name.endswith(DICOM_SUFFIXES) or is_dicom_file(path) or "." not in name:
        return read_dicom(path, series_uid=series_uid)
    raise ImageLoadError(path, f"unsupported file type {path.suffix!r} (PNG/JPEG/TIFF, NIfTI or DICOM)")


class MedicalImageReader(ImageReader):
    """Read PNG/JPEG/TIFF, NIfTI, a DICOM file, a DICOM series directory, or a list of the files of one DICOM series.

    Unlike MONAI's readers, a list of several paths is one DICOM series (the items of
    :func:`dissect_monai.data.dicom_datalist`), not channels to stack.

    ``read`` only records the paths and never raises: ``LoadImage`` catches errors raised by ``read`` and retries
    its other readers, which would hide the file's problem behind "cannot find a suitable reader". Decoding and
    every check happen in ``get_data``, whose :class:`~dissect_monai.data.ImageLoadError` (naming the file and the
    problem) reaches the caller unchanged, so :class:`~dissect_monai.data.RobustDataset` can skip and count it.

    Args:
        series_uid: pick this SeriesInstanceUID when a directory or list mixes several series.
    """

    def __init__(self, series_uid: str | None = None) -> None:
        super().__init__()
        self.series_uid = series_uid

    def verify_suffix(self, filename: Sequence[PathInput] | PathInput) -> bool:
        """True for raster, NIfTI and DICOM files (by suffix or Part 10 preamble) and directories (DICOM series)."""
        suffixes = RASTER_SUFFIXES + NIFTI_SUFFIXES + DICOM_SUFFIXES
        for name in ensure_tuple(filename):
            path = Path(name)
            if not (path.is_dir() or path.name.lower().endswith(suffixes) or is_dicom_file(path)):
                return False
        return True

    def read(self, data: Sequence[PathInput] | PathInput, **kwargs) -> tuple[str, ...]:
        """The input as a tuple of path strings (decoded by :meth:`get_data`). ``kwargs`` are not used."""
        return tuple(str(p) for p in ensure_tuple(data))

    def get_data(self, img: tuple[str, ...]) -> tuple[np.ndarray, dict]:
        """Decode the input recorded by :meth:`read`.

        Returns:
            ``(array, meta)``: float32 array without a channel axis (``(W, H)`` or ``(X, Y, Z)``; a 4D NIfTI
            ``(X, Y, Z, T)`` with ``original_channel_dim=-1``) and its metadata (see the module docstring).

        Raises:
            ImageLoadError: naming the file and the problem, for any unusable input.
        """
        decoded = _decode(img, self.series_uid)
        affine = np.asarray(decoded.affine, dtype=np.float64)
        spatial = decoded.array.shape if decoded.channel_dim is None else decoded.array.shape[:-1]
        meta = {
            **decoded.meta,
            "affine": affine,
            "original_affine": affine.copy(),
            "spatial_shape": np.asarray(spatial),
            "space": "RAS",
            "original_channel_dim": float("nan") if decoded.channel_dim is None else decoded.channel_dim,
        }
        return np.asarray(decoded.array, dtype=np.float32), meta
