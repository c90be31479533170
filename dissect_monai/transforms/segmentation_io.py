"""Save predicted label maps (segmentation bundles' inference): NIfTI/PNG files, and DICOM SEG for DICOM input.

:class:`SaveLabelMapd` writes the label map in its own (original, after ``Invertd``) geometry with nibabel /
Pillow, without MONAI's writer-side resampling (which fails on 2D label maps produced by an engine in monai
1.6.1).

For :class:`SaveDicomSegd`, the SEG itself is built by :func:`dissect_monai.dicom.segmentation_from_prediction`
(highdicom), the same builder the PACS node uses; the transform finds the source instances from the prediction's
metadata (``filename_or_obj`` and ``SOPInstanceUID`` kept by :class:`dissect_monai.data.MedicalImageReader`) and
writes one SEG per image. Predictions on non-DICOM
inputs (PNG, NIfTI) are passed through untouched, so the same inference config serves every input type.
highdicom is imported only when a SEG is written, so the transform also loads where highdicom is absent
(MONAI Label's environment, whose studies are NIfTI/PNG).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, SaveImaged
from PIL import Image

from dissect_monai.data.dicom_reader import is_dicom_file, sop_instance_uid

__all__ = ["SaveDicomSegd", "SaveLabelMapd", "segment_names_from_channel_def", "source_instances"]

logger = logging.getLogger(__name__)
_REFERENCED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def segment_names_from_channel_def(channel_def: Mapping[str | int, str]) -> dict[int, str]:
    """``{"0": "background", "1": "lung"}`` (metadata ``channel_def``) -> ``{1: "lung"}`` (labels >= 1)."""
    names = {int(k): str(v) for k, v in channel_def.items() if int(k) > 0}
    if not names:
        raise ValueError(f"channel_def {dict(channel_def)} names no foreground label")
    return names


def source_instances(filename: str | Path, sop_instance_uids: str) -> list[pydicom.Dataset]:
    """The DICOM instances a prediction was made from.

    Args:
        filename: ``filename_or_obj`` of the loaded image: one DICOM file, the directory of a series, or the first
            file of a series loaded from its list of files (the series is then looked up beside it).
        sop_instance_uids: the ``SOPInstanceUID`` meta entry (backslash-joined for a series, in slice order).

    Returns:
        the instances (with pixel data), in the order of ``sop_instance_uids``.

    Raises:
        FileNotFoundError: a referenced instance is not found under ``filename``.
    """
    path = Path(filename)
    wanted = [uid for uid in str(sop_instance_uids).split("\\") if uid]
    if path.is_file() and len(wanted) <= 1:
        return [pydicom.dcmread(path)]
    folder = path if path.is_dir() else path.parent
    found: dict[str, pydicom.Dataset] = {}
    for item in sorted(folder.iterdir()):
        if item.is_file() and (is_dicom_file(item) or item.suffix.lower() == ".dcm"):
            ds = pydicom.dcmread(item)
            uid = sop_instance_uid(ds)
            if uid in wanted:
                found[uid] = ds
    missing = [uid for uid in wanted if uid not in found]
    if missing:
        raise FileNotFoundError(f"{path}: {len(missing)} of the {len(wanted)} source instances are missing")
    return [found[uid] for uid in wanted]


class SaveDicomSegd(MapTransform):
    """Save ``d[key]`` (integer label map in the source's original geometry, e.g. after ``Invertd`` +
    ``AsDiscreted(argmax=True)``) as a BINARY DICOM SEG with one segment per label, when the image was DICOM.

    Input: ``(1, W, H)`` for a single CR/DX/DICOM image (MONAI's axis order, as loaded), ``(1, X, Y, Z)`` with its RAS
    affine for a CT/MR series. The SEG goes to ``output_dir/<SEG SOPInstanceUID>.dcm`` and its path to
    ``d[f"{key}_dicom_seg"]``. Non-DICOM sources are skipped (the key is not set).

    Args:
        keys: label-map keys (usually ``"pred"``).
        output_dir: directory for the SEG files (created when needed).
        channel_def: label names as in the bundle metadata (``{"0": "background", "1": "lung"}``).
        algorithm_name: written in the Algorithm Identification of every segment (the bundle name).
        algorithm_version: the bundle version.
        ref_key: key of the loaded image whose metadata is used when the label map carries none.
        series_number: SeriesNumber of the SEG series.
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | Path,
        channel_def: Mapping[str | int, str],
        algorithm_name: str,
        algorithm_version: str,
        ref_key: str = "image",
        series_number: int = 9901,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.segment_names = segment_names_from_channel_def(channel_def)
        self.algorithm_name = algorithm_name
        self.algorithm_version = algorithm_version
        self.ref_key = ref_key
        self.series_number = series_number

    def _meta(self, d: Mapping[Hashable, object], key: Hashable) -> dict:
        for item in (d.get(key), d.get(self.ref_key)):
            if isinstance(item, MetaTensor) and item.meta.get("SOPInstanceUID"):
                return dict(item.meta)
        return {}

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            meta = self._meta(d, key)
            if not meta:
                continue
            from dissect_monai.dicom import (
                AlgorithmInfo,
                assign_missing_uids,
                sanitise_uid,
                segmentation_from_prediction,
            )

            pred = d[key]
            labels = np.asarray(pred.detach().cpu() if isinstance(pred, MetaTensor) else pred)
            affine = np.asarray(pred.affine) if isinstance(pred, MetaTensor) else None
            sources = source_instances(meta["filename_or_obj"], meta["SOPInstanceUID"])
            if any(not str(ds.get(t, "")).strip() for ds in sources for t in _REFERENCED_UIDS):
                # anonymised sources with blanked UIDs: the SEG references UIDs derived from the series folder
                # (deterministic, the same as the PACS node assigns), since it must reference something
                logger.warning("source instances lack Study/Series/SOP Instance UIDs; deriving them for the SEG")
                origin = Path(str(meta["filename_or_obj"]))  # a file, a series folder, or a series' first file
                folder = origin.parent if origin.is_file() and len(sources) > 1 else origin
                assign_missing_uids(sources, namespace=folder.name)
            seg = segmentation_from_prediction(
                labels,
                sources,
                self.segment_names,
                AlgorithmInfo(name=self.algorithm_name, version=self.algorithm_version),
                affine=affine,
                space=str(meta.get("space", "RAS")),
                series_number=self.series_number,
            )
            self.output_dir.mkdir(parents=True, exist_ok=True)
            out = self.output_dir / f"{sanitise_uid(seg.SOPInstanceUID)}.dcm"
            seg.save_as(out)
            logger.info("wrote DICOM SEG %s (%d frames, %d segments)", out, int(seg.NumberOfFrames),
                        len(self.segment_names))
            d[f"{key}_dicom_seg"] = str(out)
        return d


def _output_stem(filename: str | Path) -> str:
    """File name of ``filename`` without image suffixes (``a.nii.gz`` -> ``a``; a series directory -> its name)."""
    name = Path(str(filename)).name
    for suffix in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


class SaveLabelMapd(SaveImaged):
    """Write an integer label map ``d[key]`` (``(1, W, H)`` or ``(1, X, Y, Z)`` MetaTensor, or ``(W, H)`` with its
    channel squeezed) as it is, no resampling.

    Writes ``output_dir/<input stem><postfix>.nii.gz`` (uint8, the MetaTensor's RAS affine, which NIfTI also uses)
    and, for 2D label maps, ``...<postfix>.png`` (the input's rows and columns, values multiplied by ``png_scale``:
    255 makes a binary mask visible). The paths go to ``d[f"{key}_saved"]``. It is a ``SaveImaged`` so that MONAI
    Label, which removes ``SaveImaged`` from a bundle's post-processing and returns the result itself, leaves it out
    too.

    Args:
        keys: label-map keys.
        output_dir: output folder (created when needed).
        output_postfix: appended to the input's file stem.
        png_scale: factor applied to label values in the PNG.
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | Path,
        output_postfix: str = "_seg",
        png_scale: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.output_postfix = output_postfix
        self.png_scale = png_scale

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            if not isinstance(pred, MetaTensor):
                raise TypeError(f"SaveLabelMapd needs a MetaTensor with an affine for {key!r}, got {type(pred)}")
            labels = np.asarray(pred.detach().cpu())
            if labels.ndim == 2:
                labels = labels[None]
            if labels.ndim not in (3, 4) or labels.shape[0] != 1:
                raise ValueError(f"{key!r}: expected a (1, W, H), (W, H) or (1, X, Y, Z) label map, got {labels.shape}")
            labels = np.rint(labels[0]).astype(np.uint8)
            stem = _output_stem(pred.meta.get("filename_or_obj", key)) + self.output_postfix
            self.output_dir.mkdir(parents=True, exist_ok=True)
            affine = np.asarray(pred.affine, dtype=np.float64)
            saved = [self.output_dir / f"{stem}.nii.gz"]
            nib.save(nib.Nifti1Image(labels, affine), saved[0])
            if labels.ndim == 2:
                saved.append(self.output_dir / f"{stem}.png")
                png = (labels.T.astype(np.int32) * self.png_scale).clip(0, 255).astype(np.uint8)  # (W, H) -> rows
                Image.fromarray(png).save(saved[1])
            d[f"{key}_saved"] = [str(p) for p in saved]
        return d
