"""Loading (PNG/JPEG, NIfTI, DICOM files and series) and SSL views and masks, as MONAI dictionary transforms and
batched tensor operations."""

from dissect_monai.transforms.errors import ImageLoadError
from dissect_monai.transforms.io import LoadMedicalImage, LoadMedicalImaged, read_any
from dissect_monai.transforms.views import RandTwoViewsd, ViewParameters, apply_view

__all__ = [
    "ImageLoadError",
    "LoadMedicalImage",
    "LoadMedicalImaged",
    "RandTwoViewsd",
    "ViewParameters",
    "apply_view",
    "read_any",
]
