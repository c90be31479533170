"""PACS deployment: DICOM SEG / SR writers and the DICOM inference node (``python -m dissect_monai.deploy``)."""

from dissect_monai.deploy.bundle_runner import BundleError, BundleRunner
from dissect_monai.deploy.config import NodeConfig, PipelineConfig, load_node_config
from dissect_monai.deploy.dicom_codes import AlgorithmInfo, concept_for_name, reference_view
from dissect_monai.deploy.dicom_io import assign_missing_uids, sanitise_uid, sort_series
from dissect_monai.deploy.seg_writer import build_segmentation, has_plane_geometry, label_map_to_frames
from dissect_monai.deploy.node import InferenceNode
from dissect_monai.deploy.sr_writer import build_classification_sr, read_classification_sr

__all__ = [
    "AlgorithmInfo",
    "BundleError",
    "BundleRunner",
    "InferenceNode",
    "NodeConfig",
    "PipelineConfig",
    "load_node_config",
    "assign_missing_uids",
    "build_classification_sr",
    "build_segmentation",
    "concept_for_name",
    "has_plane_geometry",
    "label_map_to_frames",
    "read_classification_sr",
    "reference_view",
    "sanitise_uid",
    "sort_series",
]
