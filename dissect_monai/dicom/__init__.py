"""DICOM results: SEG and Comprehensive 3D SR (TID 1500) writers, their codes, UID and attribute helpers.

Used by bundle inference (:class:`dissect_monai.transforms.SaveDicomSegd`) and by the PACS node
(:mod:`dissect_monai.deploy`); it imports neither (highdicom and pydicom only).
"""

from dissect_monai.dicom.attributes import sanitised_element
from dissect_monai.dicom.codes import AlgorithmInfo, ResultPlacement, concept_for_name, reference_view
from dissect_monai.dicom.seg import (
    build_segmentation,
    has_plane_geometry,
    label_map_from_prediction,
    label_map_to_frames,
    segmentation_from_prediction,
)
from dissect_monai.dicom.sr import (
    build_classification_sr,
    build_unassessed_sr,
    read_classification_sr,
    read_unassessed_sr,
)
from dissect_monai.dicom.uids import assign_missing_uids, result_uid, sanitise_uid, sort_series

__all__ = [
    "AlgorithmInfo",
    "ResultPlacement",
    "assign_missing_uids",
    "build_classification_sr",
    "build_segmentation",
    "build_unassessed_sr",
    "concept_for_name",
    "has_plane_geometry",
    "label_map_from_prediction",
    "label_map_to_frames",
    "read_classification_sr",
    "read_unassessed_sr",
    "reference_view",
    "result_uid",
    "sanitise_uid",
    "sanitised_element",
    "segmentation_from_prediction",
    "sort_series",
]
