"""DICOM SEG (BINARY) from a label map predicted on a CR/DX image or a CT/MR series.

:func:`segmentation_from_prediction` is the one place a SEG is assembled from a bundle's prediction (used by
:class:`dissect_monai.transforms.SaveDicomSegd` in bundle inference and by the node's study jobs). Its steps,
usable separately:

* :func:`label_map_from_prediction` turns a segmentation output (one-hot / probabilities or labels) into a label map;
* :func:`label_map_to_frames` puts a label map predicted by a bundle (MONAI channel-first layout with an affine,
  e.g. after ``Invertd``) onto the pixel grid of the source DICOM instances, one frame per instance;
* :func:`build_segmentation` turns those frames into a highdicom ``Segmentation`` (BINARY, one segment per
  label, same study, new series, referencing every source instance, algorithm identification per segment).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
import torch
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dissect_monai.dicom.codes import AlgorithmInfo, ResultPlacement, concept_for_name, reference_view

__all__ = [
    "build_segmentation",
    "has_plane_geometry",
    "label_map_from_prediction",
    "label_map_to_frames",
    "segmentation_from_prediction",
]

AI_SERIES_DESCRIPTION = "AI segmentation - not for clinical use"


def has_plane_geometry(ds: Dataset) -> bool:
    """Whether ``ds`` carries ImagePositionPatient / ImageOrientationPatient / PixelSpacing (CT, MR; not CR/DX)."""
    return all(k in ds for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"))


def _pixel_centres_lps(ds: Dataset) -> np.ndarray:
    """Patient (LPS, mm) coordinates of every pixel centre of a single-frame instance, shape (Rows, Columns, 3)."""
    position = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
    orientation = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    rows = np.arange(int(ds.Rows), dtype=np.float64)[:, None, None]
    columns = np.arange(int(ds.Columns), dtype=np.float64)[None, :, None]
    return position + columns * column_spacing * orientation[:3] + rows * row_spacing * orientation[3:]


def label_map_from_prediction(pred: torch.Tensor | np.ndarray, spatial_ndim: int) -> np.ndarray:
    """``(1, *spatial)`` integer label map from a segmentation output.

    Args:
        pred: ``(C, *spatial)`` (argmax over C > 1 channels; C = 1 is already a label map) or ``(*spatial)``
            (a label map whose channel was squeezed, e.g. for MONAI Label).
        spatial_ndim: 2 for a radiograph, 3 for a volume.

    Raises:
        ValueError: when ``pred`` has neither ``spatial_ndim`` nor ``spatial_ndim + 1`` dimensions.
    """
    array = torch.as_tensor(np.asarray(pred) if not isinstance(pred, torch.Tensor) else pred).detach().float()
    if array.ndim == spatial_ndim:
        array = array[None]
    elif array.ndim != spatial_ndim + 1:
        raise ValueError(f"segmentation output of shape {tuple(array.shape)} is not {spatial_ndim}-D")
    if array.shape[0] > 1:
        array = array.argmax(dim=0, keepdim=True)
    return np.rint(array.cpu().numpy()).astype(np.int64)


def label_map_to_frames(
    label_map: np.ndarray,
    source_images: Sequence[Dataset],
    affine: np.ndarray | None = None,
    space: str = "RAS",
) -> np.ndarray:
    """Resample a predicted label map onto the pixel grids of the source instances (nearest neighbour).

    Args:
        label_map: integer labels in MONAI's axis order, spatial shape ``(W, H)`` (Columns, Rows) for a projection
            radiograph or ``(X, Y, Z)`` for a volume, optionally with a leading channel of size 1.
        source_images: the instances the prediction was made from; one output frame per instance, same order.
        affine: 4x4 voxel-index -> patient-coordinate matrix of ``label_map`` (a MetaTensor's ``affine``).
            Required for sources with plane geometry (CT/MR); ignored for a single CR/DX image, whose label map
            must be ``(Columns, Rows)``.
        space: coordinate system of ``affine``, ``"RAS"`` (MONAI's default) or ``"LPS"``.

    Returns:
        ``(len(source_images), Rows, Columns)`` uint8 frames; voxels outside the label map are 0.
    """
    labels = np.asarray(label_map)
    if labels.ndim in (3, 4) and labels.shape[0] == 1 and labels.ndim - 1 in (2, 3):
        labels = labels[0]
    if labels.ndim not in (2, 3):
        raise ValueError(f"label map must be 2-D or 3-D (after a channel of 1), got shape {labels.shape}")
    if np.any(labels < 0) or np.any(labels > 255) or not np.allclose(labels, np.round(labels)):
        raise ValueError("label map must hold integer labels in [0, 255]")
    labels = np.round(labels).astype(np.uint8)
    if not source_images:
        raise ValueError("no source images given")
    if not has_plane_geometry(source_images[0]):
        if len(source_images) != 1 or labels.ndim != 2:
            raise ValueError(
                "sources without ImagePositionPatient/ImageOrientationPatient/PixelSpacing must be a single image "
                f"with a 2-D label map; got {len(source_images)} images and label map shape {labels.shape}"
            )
        expected = (int(source_images[0].Columns), int(source_images[0].Rows))
        if labels.shape != expected:
            raise ValueError(f"label map shape {labels.shape} does not match the image (Columns, Rows) {expected}")
        return np.ascontiguousarray(labels.T)[None]
    if affine is None:
        raise ValueError("an affine is needed to map a label map onto CT/MR instances")
    if space.upper() not in ("RAS", "LPS"):
        raise ValueError(f"space must be 'RAS' or 'LPS', got {space!r}")
    to_index = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    volume = labels if labels.ndim == 3 else labels[..., None]
    flip = np.array([-1.0, -1.0, 1.0]) if space.upper() == "RAS" else np.ones(3)
    frames = []
    for ds in source_images:
        points = _pixel_centres_lps(ds) * flip
        index = np.rint(points @ to_index[:3, :3].T + to_index[:3, 3]).astype(np.int64)
        inside = np.all((index >= 0) & (index < np.array(volume.shape)), axis=-1)
        frame = np.zeros(inside.shape, dtype=np.uint8)
        i, j, k = (index[..., a][inside] for a in range(3))
        frame[inside] = volume[i, j, k]
        frames.append(frame)
    return np.stack(frames)


def build_segmentation(
    source_images: Sequence[Dataset],
    label_frames: np.ndarray,
    segment_names: Mapping[int, str],
    algorithm: AlgorithmInfo,
    series_number: int = 9901,
    series_description: str = AI_SERIES_DESCRIPTION,
    segment_codes: Mapping[int, tuple[hd.sr.CodedConcept, hd.sr.CodedConcept]] | None = None,
    placement: ResultPlacement | None = None,
) -> hd.seg.Segmentation:
    """Build a BINARY DICOM SEG in the study of ``source_images``, one segment per label.

    Args:
        source_images: single-frame instances of one series (one CR/DX image, or the slices of a CT/MR series).
        label_frames: integer label frames ``(N, Rows, Columns)`` with frame ``i`` on ``source_images[i]``
            (a single ``(Rows, Columns)`` frame is accepted for one image); see :func:`label_map_to_frames`.
        segment_names: label value (>= 1) -> segment label, e.g. ``{1: "lung"}``. Labels in the frames that are
            not listed are an error; listed labels absent from the frames still get a (empty) segment.
        algorithm: algorithm identification written in every segment description.
        series_number: SeriesNumber of the new series.
        series_description: SeriesDescription of the new series.
        segment_codes: optional label -> (segmented property category, segmented property type); by default
            category is SNOMED CT "Anatomical Structure" and type is looked up by name (:func:`concept_for_name`).
        placement: series, instance UID and number (new UIDs, instance 1 by default).

    Returns:
        the SEG dataset (a ``pydicom.Dataset`` subclass).
    """
    if not source_images:
        raise ValueError("no source images given")
    placement = placement or ResultPlacement()
    if placement.previous_versions:
        raise ValueError("a SEG cannot cite previous versions (no Predecessor Documents Sequence in its IOD)")
    frames = np.asarray(label_frames)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.ndim != 3 or frames.shape[0] != len(source_images):
        raise ValueError(
            f"label frames of shape {frames.shape} do not match {len(source_images)} source images "
            "(expected (N, Rows, Columns))"
        )
    for i, ds in enumerate(source_images):
        if frames.shape[1:] != (int(ds.Rows), int(ds.Columns)):
            raise ValueError(
                f"frame {i} has shape {frames.shape[1:]} but source instance {i} is {(int(ds.Rows), int(ds.Columns))}"
            )
    studies = {str(ds.StudyInstanceUID) for ds in source_images}
    if len(studies) != 1:
        raise ValueError(f"source images come from {len(studies)} studies; a SEG references one")
    labels = sorted(int(k) for k in segment_names)
    if not labels or labels[0] < 1:
        raise ValueError(f"segment labels must be >= 1, got {labels}")
    present = {int(v) for v in np.unique(frames)} - {0}
    unknown = present - set(labels)
    if unknown:
        raise ValueError(f"label frames contain labels {sorted(unknown)} with no segment name")
    binary = np.stack([frames == label for label in labels], axis=-1).astype(np.uint8)
    descriptions = []
    for number, label in enumerate(labels, start=1):
        name = segment_names[label]
        category, property_type = (segment_codes or {}).get(
            label, (codes.SCT.AnatomicalStructure, concept_for_name(name))
        )
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=category,
                segmented_property_type=property_type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm.segmentation_identification(),
            )
        )
    series_uid, sop_uid = placement.uids()
    seg = hd.seg.Segmentation(
        source_images=[reference_view(ds) for ds in source_images],
        pixel_array=binary,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=placement.instance_number,
        manufacturer=algorithm.manufacturer,
        manufacturer_model_name=algorithm.model_name,
        software_versions=algorithm.software_version,
        device_serial_number="0",
        content_label="AI_SEG",
        content_description=f"{algorithm.name} {algorithm.version}"[:64],
        omit_empty_frames=True,
    )
    seg.SeriesDescription = series_description
    return seg


def segmentation_from_prediction(
    pred: torch.Tensor | np.ndarray,
    source_images: Sequence[Dataset],
    segment_names: Mapping[int, str],
    algorithm: AlgorithmInfo,
    affine: np.ndarray | None = None,
    space: str = "RAS",
    **seg_options,
) -> hd.seg.Segmentation:
    """The DICOM SEG of a bundle's segmentation output on its source instances.

    Args:
        pred: the post-processed prediction in the source's original geometry (after ``Invertd``):
            ``(C, H, W)`` / ``(H, W)`` for one radiograph, ``(C, X, Y, Z)`` / ``(X, Y, Z)`` for a series;
            ``C > 1`` channels are reduced by argmax (see :func:`label_map_from_prediction`).
        source_images: the instances the prediction was made from (one radiograph, or a series' slices).
        segment_names: label (>= 1) -> segment name.
        algorithm: algorithm identification.
        affine: ``pred``'s voxel -> patient matrix (needed for CT / MR sources, see :func:`label_map_to_frames`).
        space: coordinate system of ``affine`` (``"RAS"`` or ``"LPS"``).
        seg_options: passed to :func:`build_segmentation` (series number and description, placement, ...).

    Raises:
        ValueError: when the prediction does not fit the sources or names a label without a segment.
    """
    if not source_images:
        raise ValueError("no source images given")
    single_frame = len(source_images) == 1 and int(source_images[0].get("NumberOfFrames", 1) or 1) == 1
    labels = label_map_from_prediction(pred, 2 if single_frame else 3)
    frames = label_map_to_frames(labels, source_images, affine=affine, space=space)
    return build_segmentation(source_images, frames, segment_names, algorithm, **seg_options)
