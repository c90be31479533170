"""MONAI dictionary transforms: intensity mapping after loading (VOI window / LUT, MONOCHROME1, HU), the SSL view
recipe (``RandTwoViewsd``; batched crops, filters and masks in ``batched``) and the label-map / DICOM SEG writers
(``segmentation_io``)."""

from dissect_monai.transforms.intensity import MedicalIntensity, MedicalIntensityd
from dissect_monai.transforms.loading import load_image_transforms
from dissect_monai.transforms.views import RandTwoViewsd, ViewParameters, apply_view

__all__ = [
    "MedicalIntensity",
    "MedicalIntensityd",
    "RandTwoViewsd",
    "ViewParameters",
    "apply_view",
    "load_image_transforms",
]
