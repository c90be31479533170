"""One entry point that loads PNG/JPEG, NIfTI, DICOM files and DICOM series as channel-first MetaTensors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Orientation, Transform
from monai.utils import ensure_tuple_rep

from dissect_monai.transforms.dicom_reader import is_dicom_file, read_dicom
from dissect_monai.transforms.errors import ImageLoadError
from dissect_monai.transforms.file_readers import NIFTI_SUFFIXES, RASTER_SUFFIXES, read_nifti, read_raster
from dissect_monai.transforms.raw_image import INTENSITY_MODES, RawImage, map_intensity

__all__ = ["read_any", "LoadMedicalImage", "LoadMedicalImaged"]

RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # explicit: monai 1.4 and 1.6 differ in Orientation's default
ImageSource = str | os.PathLike | Sequence[str | os.PathLike]


def read_any(source: ImageSource, series_uid: str | None = None) -> RawImage:
    """Dispatch on the input: a list of files or a directory is a DICOM series; ``.nii(.gz)`` NIfTI;
    PNG/JPEG/TIFF Pillow; anything else is tried as DICOM (Part 10 preamble or ``.dcm``)."""
    if isinstance(source, (list, tuple)):
        return read_dicom(source, series_uid=series_uid)
    path = Path(source)
    name = path.name.lower()
    if path.is_dir():
        return read_dicom(path, series_uid=series_uid)
    if name.endswith(NIFTI_SUFFIXES):
        return read_nifti(path)
    if name.endswith(RASTER_SUFFIXES):
        return read_raster(path)
    if not path.exists():
        raise ImageLoadError(path, "file not found")
    if name.endswith((".dcm", ".dicom")) or is_dicom_file(path) or "." not in name:
        return read_dicom(path, series_uid=series_uid)
    raise ImageLoadError(path, f"unsupported file type {path.suffix!r} (PNG/JPEG/TIFF, NIfTI or DICOM)")


class LoadMedicalImage(Transform):
    """Load one image as a channel-first float32 :class:`monai.data.MetaTensor`.

    Shapes: ``(1, H, W)`` for PNG/JPEG and single-frame DICOM (rows first, as displayed);
    ``(1, X, Y, Z)`` for NIfTI volumes and DICOM series / multi-frame instances (voxel order of the RAS
    affine, as NIfTI and MONAI's ITKReader; reorient with ``axcodes``). Metadata: ``affine``, ``pixdim``
    (spacing in mm where the file has it), ``spatial_shape``, ``filename_or_obj``, the intensity mapping used,
    and for DICOM the de-identified tags of :data:`dissect_monai.transforms.dicom_reader.SAFE_TAGS` plus
    ``SOPInstanceUID`` (backslash-joined in slice order for a series). Never patient identifiers.

    Args:
        intensity: ``"unit"`` ([0, 1]; windowed; MONOCHROME1 inverted), ``"hu"`` (CT modality values) or
            ``"raw"`` (stored/modality values, for label maps and masks). See :func:`map_intensity`.
        window: ``(center, width)`` overriding stored windows for ``"unit"`` (e.g. ``(40, 400)`` for CT soft tissue).
        percentiles: window used when an image defines none (DICOM without VOI, NIfTI).
        reject_constant: raise :class:`ImageLoadError` for constant images (``"unit"``/``"hu"`` only).
        axcodes: reorient volumes to these axis codes (e.g. ``"RAS"``); 2D images are left as they are.
        series_uid: choose one series when a directory holds several.
    """

    def __init__(
        self,
        intensity: str = "unit",
        window: tuple[float, float] | None = None,
        percentiles: tuple[float, float] = (0.5, 99.5),
        reject_constant: bool = True,
        axcodes: str | None = None,
        series_uid: str | None = None,
    ) -> None:
        if intensity not in INTENSITY_MODES:
            raise ValueError(f"intensity must be one of {INTENSITY_MODES}, got {intensity!r}")
        self.intensity = intensity
        self.window = tuple(window) if window is not None else None
        self.percentiles = tuple(percentiles)
        self.reject_constant = reject_constant
        self.orientation = Orientation(axcodes=axcodes, labels=RAS_LABELS) if axcodes else None
        self.series_uid = series_uid

    def __call__(self, source: ImageSource) -> MetaTensor:
        raw = read_any(source, series_uid=self.series_uid)
        values, intensity_meta = map_intensity(raw, self.intensity, self.window, self.percentiles,
                                               self.reject_constant)
        affine = torch.as_tensor(raw.affine, dtype=torch.float64)
        filename = str(source) if not isinstance(source, (list, tuple)) else str(Path(source[0]).parent)
        meta = {
            **raw.meta,
            **intensity_meta,
            "filename_or_obj": filename,
            "spatial_shape": np.asarray(values.shape[1:]),
            "original_channel_dim": 0,
            "space": "RAS",
            "original_affine": affine.clone(),
        }
        image = MetaTensor(torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)), affine=affine,
                           meta=meta)
        if self.orientation is not None and image.ndim == 4:
            image = self.orientation(image)
        return image


class LoadMedicalImaged(MapTransform):
    """Dictionary version of :class:`LoadMedicalImage`; ``intensity``, ``window`` and ``reject_constant`` may be
    given per key (e.g. ``keys=["image", "label"], intensity=["unit", "raw"]``).

    Input values: a path to PNG/JPEG, NIfTI, a DICOM file, a DICOM series directory, or a list of DICOM files
    of one series. Output: channel-first float32 MetaTensors (see :class:`LoadMedicalImage` for shapes).

    Raises:
        ImageLoadError: (a ``ValueError``) naming the file and the problem, for any unusable input.
    """

    def __init__(
        self,
        keys: KeysCollection,
        intensity: str | Sequence[str] = "unit",
        window: tuple[float, float] | Sequence[tuple[float, float] | None] | None = None,
        percentiles: tuple[float, float] = (0.5, 99.5),
        reject_constant: bool | Sequence[bool] = True,
        axcodes: str | None = None,
        series_uid: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        n = len(self.keys)
        intensities = ensure_tuple_rep(intensity, n)
        one_window = window is None or all(isinstance(v, (int, float)) for v in window)
        windows = (window,) * n if one_window else ensure_tuple_rep(window, n)
        rejects = ensure_tuple_rep(reject_constant, n)
        self.loaders = {
            key: LoadMedicalImage(i, w, percentiles, r, axcodes, series_uid)
            for key, i, w, r in zip(self.keys, intensities, windows, rejects)
        }

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loaders[key](d[key])
        return d
