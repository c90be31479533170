"""PACS deployment: the DICOM inference node (``python -m dissect_monai.deploy``); its SEG / SR writers are
:mod:`dissect_monai.dicom`."""

from dissect_monai.deploy.bundle_runner import BundleError, BundleRunner
from dissect_monai.deploy.config import NodeConfig, PipelineConfig, load_node_config
from dissect_monai.deploy.node import InferenceNode

__all__ = [
    "BundleError",
    "BundleRunner",
    "InferenceNode",
    "NodeConfig",
    "PipelineConfig",
    "load_node_config",
]
