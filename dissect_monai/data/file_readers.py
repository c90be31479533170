"""Decode PNG/JPEG/TIFF (Pillow) and NIfTI (nibabel) into :class:`~dissect_monai.data.decoded.DecodedImage`."""

from __future__ import annotations

import os
import warnings

import nibabel as nib
import numpy as np
from PIL import Image, UnidentifiedImageError

from dissect_monai.data.decoded import DecodedImage, check_finite, intensity_hints
from dissect_monai.data.errors import ImageLoadError

__all__ = ["RASTER_SUFFIXES", "NIFTI_SUFFIXES", "read_raster", "read_nifti"]

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def read_raster(path: str | os.PathLike) -> DecodedImage:
    """Read a PNG/JPEG/TIFF as grayscale ``(W, H)`` (first axis = column, as MONAI's ``PILReader``), identity affine.

    RGB(A) and palette images are converted to luminance (identical channels, as in Kermany's JPEGs,
    come out unchanged); 16-bit images keep their depth and ``full_scale`` is 65535 (255 for 8-bit);
    32-bit integer/float images (TIFF) keep their values and have no full scale (a percentile window is used).

    Raises:
        ImageLoadError: missing, unidentifiable or truncated files.
    """
    if not os.path.isfile(path):
        raise ImageLoadError(path, "file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                mode = img.mode
                if mode.startswith("I;16"):
                    array, scale = np.asarray(img, dtype=np.float32), 65535.0
                elif mode in ("I", "F"):  # 32-bit integer/float: no fixed range, "unit" uses a percentile window
                    array, scale = np.asarray(img, dtype=np.float32), None
                else:
                    array, scale = np.asarray(img.convert("L"), dtype=np.float32), 255.0
    except UnidentifiedImageError as e:
        raise ImageLoadError(path, "not a readable image (unknown or corrupt format)") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(path, f"cannot decode image ({type(e).__name__}: {e})") from e
    check_finite(array, path, "in the decoded pixel values")
    meta = {"source_format": "raster", "source_mode": mode, **intensity_hints(full_scale=scale)}
    return DecodedImage(array=np.ascontiguousarray(array.T), affine=np.eye(4), meta=meta)


def read_nifti(path: str | os.PathLike) -> DecodedImage:
    """Read a NIfTI file with its affine: 2D ``(X, Y)``, 3D ``(X, Y, Z)``, 4D ``(X, Y, Z, T)`` (channel last).

    Values are the scaled data (``scl_slope``/``scl_inter`` applied), voxel order and affine as stored
    (nibabel's RAS world), so orientation and spacing are kept.

    Raises:
        ImageLoadError: missing, unreadable or truncated files, unsupported dimensionality.
    """
    if not os.path.isfile(path):
        raise ImageLoadError(path, "file not found")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as e:  # nibabel/gzip/zlib raise many types for truncated or corrupt files
        raise ImageLoadError(path, f"cannot read NIfTI ({type(e).__name__}: {e})") from e
    data = np.squeeze(data, axis=tuple(range(3, data.ndim))) if data.ndim > 3 and data.shape[3:] == (1,) * (
        data.ndim - 3) else data
    if data.ndim not in (2, 3, 4):
        raise ImageLoadError(path, f"unsupported NIfTI shape {data.shape} (need 2D, 3D or 4D)")
    check_finite(data, path, "in the decoded pixel values")
    meta = {"source_format": "nifti", **intensity_hints()}
    return DecodedImage(array=np.ascontiguousarray(data), affine=np.asarray(img.affine, dtype=np.float64),
                        meta=meta, channel_dim=-1 if data.ndim == 4 else None)
