"""Decode DICOM instances and series (pydicom 2 or 3) into :class:`~dissect_monai.data.decoded.DecodedImage`.

Geometry conventions (MONAI's axis order, as ``PydicomReader(swap_ij=True)`` and ``ITKReader``):
- a single-frame instance is 2D: array ``(columns, rows)``, affine = diag(column spacing, row spacing, 1, 1)
  from ``PixelSpacing`` (else ``ImagerPixelSpacing``; 1 mm when absent or zero);
- a series, or a multi-frame instance with more than one frame, is a volume in DICOM voxel order
  ``(columns, rows, slices)`` with slices sorted along the slice normal and an LPS->RAS affine;
  multi-frame geometry comes from the functional groups when present.
Values have the Modality LUT applied (RescaleSlope/Intercept, per frame, or a Modality LUT Sequence); the VOI
window or LUT and the photometric interpretation go into the metadata for
:class:`dissect_monai.transforms.MedicalIntensityd`. Only de-identified metadata leaves this module (see
:data:`SAFE_TAGS`): never patient name, id, birth date.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from dissect_monai.data.decoded import DecodedImage, intensity_hints
from dissect_monai.data.errors import ImageLoadError

try:  # pydicom >= 3
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
except ImportError:  # pydicom 2.x
    from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut

__all__ = ["SAFE_TAGS", "read_dicom", "read_dicom_header", "is_dicom_file", "sop_instance_uid"]

SAFE_TAGS = (
    "Modality",
    "SOPClassUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "PhotometricInterpretation",
    "ViewPosition",
    "BodyPartExamined",
    "ImageType",
)
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when the file has the DICOM Part 10 preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom_header(path: str | os.PathLike, stop_before_pixels: bool = False) -> pydicom.Dataset:
    """``pydicom.dcmread`` with errors turned into :class:`ImageLoadError` naming the file."""
    if not os.path.isfile(path):
        raise ImageLoadError(path, "file not found")
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as e:
        raise ImageLoadError(path, f"not a DICOM file ({e})") from e
    except Exception as e:  # truncated headers raise many types (EOFError, struct.error, ValueError, ...)
        raise ImageLoadError(path, f"unreadable DICOM header ({type(e).__name__}: {e})") from e


def _first(value) -> float:
    """First item of a possibly multi-valued DICOM number."""
    if isinstance(value, (list, tuple)) or (hasattr(value, "__len__") and not isinstance(value, str)):
        value = value[0]
    return float(value)


def _frame_attr(ds: pydicom.Dataset, frame: int, sequence: str, attr: str):
    """An attribute from the per-frame, then shared functional groups (enhanced objects), then the top level."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        if groups in ds and len(ds[groups].value) > index:
            group = ds[groups].value[index]
            if sequence in group and len(group[sequence].value) and attr in group[sequence].value[0]:
                return group[sequence].value[0][attr].value
    return ds[attr].value if attr in ds else None


def _valid_spacing(value) -> tuple[float, float] | None:
    try:
        pair = (float(value[0]), float(value[1]))
    except (TypeError, ValueError, IndexError):
        return None
    return pair if all(np.isfinite(pair)) and min(pair) > 0 else None


def _pixel_spacing(ds: pydicom.Dataset, frame: int = 0) -> tuple[tuple[float, float], str]:
    """(row spacing, column spacing) in mm and which attribute gave it."""
    for sequence, attr in (("PixelMeasuresSequence", "PixelSpacing"), ("", "ImagerPixelSpacing"),
                           ("", "NominalScannedPixelSpacing")):
        value = _frame_attr(ds, frame, sequence, attr) if sequence else ds.get(attr)
        pair = _valid_spacing(value) if value is not None else None
        if pair is not None:
            return pair, attr
    return (1.0, 1.0), "none"


def _missing_pixel_data_reason(ds: pydicom.Dataset, filename) -> str:
    """Tell a truncated file (pydicom drops an incomplete last element silently) from one without pixel data."""
    if len(ds) == 0:
        return "truncated or empty DICOM file (no data elements after the file meta header)"
    try:
        with open(filename, "rb") as f:
            has_pixel_tag = b"\xe0\x7f\x10\x00" in f.read()
    except (OSError, TypeError):
        has_pixel_tag = False
    if has_pixel_tag:
        return "truncated file: the PixelData element is incomplete"
    return "no pixel data (no PixelData element)"


def _decode(ds: pydicom.Dataset, filename) -> np.ndarray:
    """Stored values as ``(frames, rows, columns)`` after checking pixel data and photometric interpretation."""
    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise ImageLoadError(filename, _missing_pixel_data_reason(ds, filename))
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageLoadError(
            filename, f"unsupported PhotometricInterpretation {photometric or '(missing)'}: need MONOCHROME1/2"
        )
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    syntax_name = getattr(syntax, "name", str(syntax))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stored = ds.pixel_array
    except Exception as e:  # pixel decoders raise many types for truncated/corrupt data
        raise ImageLoadError(filename, f"cannot decode pixel data ({syntax_name}): {type(e).__name__}: {e}") from e
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if stored.ndim == 2 and frames == 1:
        stored = stored[None]
    if stored.ndim != 3:
        raise ImageLoadError(filename, f"unexpected pixel array shape {stored.shape} for one sample per pixel")
    return stored


def _modality_values(ds: pydicom.Dataset, stored: np.ndarray, filename) -> np.ndarray:
    """Modality LUT (LUT sequence or RescaleSlope/Intercept, per frame for enhanced objects) -> float32."""
    if "ModalityLUTSequence" in ds:
        out = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    else:
        out = np.empty(stored.shape, dtype=np.float64)
        for f in range(stored.shape[0]):
            slope = _frame_attr(ds, f, "PixelValueTransformationSequence", "RescaleSlope")
            intercept = _frame_attr(ds, f, "PixelValueTransformationSequence", "RescaleIntercept")
            slope = 1.0 if slope is None else float(slope)
            intercept = 0.0 if intercept is None else float(intercept)
            out[f] = stored[f] * slope + intercept
    with np.errstate(over="ignore", invalid="ignore"):
        values = out.astype(np.float32)
    if not np.isfinite(values).all():
        raise ImageLoadError(
            filename,
            f"NaN/Inf after the Modality LUT (RescaleSlope={ds.get('RescaleSlope')}, "
            f"RescaleIntercept={ds.get('RescaleIntercept')})",
        )
    return values


def _window(ds: pydicom.Dataset, frame: int) -> tuple[float, float, str] | None:
    center = _frame_attr(ds, frame, "FrameVOILUTSequence", "WindowCenter")
    width = _frame_attr(ds, frame, "FrameVOILUTSequence", "WindowWidth")
    if center is None or width is None:
        return None
    try:
        center, width = _first(center), _first(width)
    except (TypeError, ValueError, IndexError):
        return None
    if not (np.isfinite(center) and np.isfinite(width)) or width < 1:
        return None
    function = _frame_attr(ds, frame, "FrameVOILUTSequence", "VOILUTFunction") or "LINEAR"
    return center, width, str(function).upper()


def _voi_lut(ds: pydicom.Dataset, filename) -> tuple[np.ndarray, int] | None:
    """The first stored VOI LUT as ``(table normalised by its output bit depth to [0, 1], first mapped value)``."""
    if "VOILUTSequence" not in ds or not len(ds.VOILUTSequence):
        return None
    item = ds.VOILUTSequence[0]
    try:
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        entries = entries or 65536  # PS3.3 C.11.2.1.1: 0 means 2**16 entries
        inputs = np.arange(first, first + entries, dtype=np.int64)
        table = np.asarray(apply_voi_lut(inputs, ds, index=0, prefer_lut=True), dtype=np.float32)
    except Exception as e:  # a malformed descriptor or table raises many types inside pydicom
        raise ImageLoadError(filename, f"unusable VOI LUT Sequence ({type(e).__name__}: {e})") from e
    return np.clip(table / np.float32(2**bits - 1), 0.0, 1.0), first


def _hints(ds: pydicom.Dataset, filename, modality: str) -> dict:
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    return intensity_hints(modality, photometric, _window(ds, 0), _voi_lut(ds, filename))


def sop_instance_uid(ds: pydicom.Dataset) -> str:
    """SOPInstanceUID, or the file meta's copy when the dataset's was blanked (as some anonymisers do)."""
    uid = str(ds.get("SOPInstanceUID", "") or "")
    return uid or str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPInstanceUID", "") or "")


def _safe_meta(ds: pydicom.Dataset) -> dict:
    meta = {}
    for tag in SAFE_TAGS:
        value = ds.get(tag)
        if tag == "SOPClassUID" and not value:
            value = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
        if value is None:
            meta[tag] = ""
        elif isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            meta[tag] = "\\".join(str(v) for v in value)
        else:
            meta[tag] = str(value)
    return meta


def _volume_affine(
    orientation, positions: np.ndarray | None, spacing: tuple[float, float], slice_gap: float
) -> np.ndarray:
    """RAS affine for voxel order (column, row, slice)."""
    lps = np.eye(4)
    row_cos = np.asarray(orientation[:3], dtype=float)
    col_cos = np.asarray(orientation[3:], dtype=float)
    normal = np.cross(row_cos, col_cos)
    lps[:3, 0] = row_cos * spacing[1]  # i runs along a row, i.e. across columns: column spacing
    lps[:3, 1] = col_cos * spacing[0]
    lps[:3, 2] = normal * slice_gap
    if positions is not None:
        lps[:3, 3] = positions[0]
    return _LPS_TO_RAS @ lps


def _slice_gap(projections: np.ndarray, filename, fallback: float) -> float:
    if len(projections) < 2:
        return fallback
    gaps = np.diff(projections)
    repeated = int(np.sum(gaps <= 1e-4))
    if repeated:
        raise ImageLoadError(filename, f"{repeated} slices share the same position (duplicate instances in the "
                                       "series?)")
    gap = float(np.median(gaps))
    if np.max(np.abs(gaps - gap)) > 0.01 * gap + 1e-3:
        warnings.warn(f"{filename}: slice spacing is not uniform ({gaps.min():.3f}-{gaps.max():.3f} mm); "
                      f"the affine uses the median {gap:.3f} mm", stacklevel=3)
    return gap


def _frame_positions(ds: pydicom.Dataset, orientation, frames: int) -> np.ndarray | None:
    """``(frames, 3)`` patient positions of a multi-frame instance: per-frame functional groups (enhanced
    objects) or ``GridFrameOffsetVector`` along the normal (RT Dose); None without per-frame geometry (cine)."""
    if orientation is None:
        return None
    if "PerFrameFunctionalGroupsSequence" in ds:
        positions = [_frame_attr(ds, f, "PlanePositionSequence", "ImagePositionPatient") for f in range(frames)]
        return None if any(p is None for p in positions) else np.asarray(positions, dtype=float)
    offsets = ds.get("GridFrameOffsetVector")
    if "ImagePositionPatient" in ds and offsets is not None and len(offsets) == frames:
        normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
        origin = np.asarray(ds.ImagePositionPatient, dtype=float)
        return origin + np.asarray(offsets, dtype=float)[:, None] * normal
    return None


def _single_instance(ds: pydicom.Dataset, filename) -> DecodedImage:
    stored = _decode(ds, filename)
    values = _modality_values(ds, stored, filename)
    spacing, spacing_source = _pixel_spacing(ds)
    meta = _safe_meta(ds)
    meta.update(SOPInstanceUID=sop_instance_uid(ds), spacing_source=spacing_source)
    meta.update(_hints(ds, filename, meta["Modality"]))
    if values.shape[0] == 1:  # (1, rows, columns) -> (columns, rows); axis 0 runs along a row: column spacing
        affine = np.diag([spacing[1], spacing[0], 1.0, 1.0])
        return DecodedImage(array=np.ascontiguousarray(values[0].T), affine=affine, meta=meta)
    orientation = _frame_attr(ds, 0, "PlaneOrientationSequence", "ImageOrientationPatient")
    fallback_gap = _frame_attr(ds, 0, "PixelMeasuresSequence", "SpacingBetweenSlices") or \
        _frame_attr(ds, 0, "PixelMeasuresSequence", "SliceThickness") or 1.0
    positions = _frame_positions(ds, orientation, values.shape[0])
    if positions is not None:
        normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
        order = np.argsort(positions @ normal, kind="stable")
        values, positions = values[order], positions[order]
        gap = _slice_gap(positions @ normal, filename, float(fallback_gap))
        affine = _volume_affine(orientation, positions, spacing, gap)
    else:  # frames without patient geometry (cine, US): keep acquisition order
        affine = _LPS_TO_RAS @ np.diag([spacing[1], spacing[0], float(fallback_gap), 1.0])
    values = np.ascontiguousarray(values.transpose(2, 1, 0))  # (frames, rows, columns) -> (columns, rows, frames)
    return DecodedImage(array=values, affine=affine, meta=meta)


def _series(paths: Sequence[str], filename, series_uid: str | None) -> DecodedImage:
    datasets = [read_dicom_header(p) for p in paths]
    if len(datasets) > 1:  # a folder may also hold DICOMDIR, SR, KO or PR objects: not slices
        datasets = [ds for ds in datasets if "Rows" in ds]
        if not datasets:
            raise ImageLoadError(filename, "no image instances (only non-image objects such as DICOMDIR or SR)")
    uids = sorted({str(ds.get("SeriesInstanceUID", "")) for ds in datasets})
    if series_uid is not None:
        datasets = [ds for ds in datasets if str(ds.get("SeriesInstanceUID", "")) == series_uid]
        if not datasets:
            raise ImageLoadError(filename, f"no instance of series {series_uid} (found {len(uids)} series)")
    elif len(uids) > 1:
        raise ImageLoadError(filename, f"{len(uids)} series mixed in one input; pass series_uid= or use "
                                       "dissect_monai.data.dicom_datalist to split them")
    if len(datasets) == 1:
        return _single_instance(datasets[0], filename)
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise ImageLoadError(filename, "a series of several multi-frame instances is not supported")
    missing = [i for i, ds in enumerate(datasets) if "ImagePositionPatient" not in ds or
               "ImageOrientationPatient" not in ds]
    if missing:
        raise ImageLoadError(filename, f"{len(missing)} instances lack ImagePositionPatient/ImageOrientationPatient;"
                                       " cannot stack them into a volume")
    orientation = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    shape = (datasets[0].get("Rows"), datasets[0].get("Columns"))
    for ds in datasets:
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, float), orientation, atol=1e-4):
            raise ImageLoadError(filename, "instances have different ImageOrientationPatient (not one volume)")
        if (ds.get("Rows"), ds.get("Columns")) != shape:
            raise ImageLoadError(filename, "instances have different Rows/Columns (not one volume)")
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.asarray([ds.ImagePositionPatient for ds in datasets], dtype=float)
    order = np.argsort(positions @ normal, kind="stable")
    datasets, positions = [datasets[i] for i in order], positions[order]
    spacing, spacing_source = _pixel_spacing(datasets[0])
    fallback = float(datasets[0].get("SpacingBetweenSlices") or datasets[0].get("SliceThickness") or 1.0)
    gap = _slice_gap(positions @ normal, filename, fallback)
    slices = [_modality_values(ds, _decode(ds, ds.filename), ds.filename)[0] for ds in datasets]
    values = np.stack(slices, axis=-1).transpose(1, 0, 2)  # (columns, rows, slices)
    middle = datasets[len(datasets) // 2]
    meta = _safe_meta(middle)
    meta.update(SOPInstanceUID="\\".join(sop_instance_uid(ds) for ds in datasets),
                spacing_source=spacing_source)
    meta.update(_hints(middle, filename, meta["Modality"]))
    return DecodedImage(array=np.ascontiguousarray(values), affine=_volume_affine(orientation, positions, spacing, gap),
                        meta=meta)


def read_dicom(
    source: str | os.PathLike | Sequence[str | os.PathLike], series_uid: str | None = None
) -> DecodedImage:
    """Read one DICOM file, a series directory, or a list of files of one series.

    Args:
        source: a file, a directory (its DICOM files, non-recursive), or a sequence of files.
        series_uid: pick this SeriesInstanceUID when the input mixes several series.

    Returns:
        modality values in MONAI's axis order (see the module docstring for shapes and affines).

    Raises:
        ImageLoadError: missing/unreadable/truncated files, no pixel data, unsupported photometric
            interpretation, NaN/Inf after the Modality LUT, inconsistent series geometry.
    """
    if isinstance(source, (list, tuple)):
        paths = [str(p) for p in source]
        if not paths:
            raise ImageLoadError("<empty list>", "no DICOM files given")
        return _series(paths, paths if len(paths) > 1 else paths[0], series_uid)
    path = Path(source)
    if path.is_dir():
        paths = sorted(str(p) for p in path.iterdir() if p.is_file() and is_dicom_file(p))
        if not paths:
            raise ImageLoadError(path, "directory holds no DICOM Part 10 files")
        return _series(paths, str(path), series_uid)
    ds = read_dicom_header(path)
    return _single_instance(ds, str(path))
