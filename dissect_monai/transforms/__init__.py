"""Loading (PNG/JPEG, NIfTI, DICOM files and series) and SSL view generation, as MONAI dictionary transforms."""

from dissect_monai.transforms.errors import ImageLoadError
from dissect_monai.transforms.io import LoadMedicalImage, LoadMedicalImaged, read_any
from dissect_monai.transforms.presets import load_transform_preset
from dissect_monai.transforms.views import MultiCropd, RandomView, RandPatchMaskd, TwoViewsd

__all__ = [
    "ImageLoadError",
    "LoadMedicalImage",
    "LoadMedicalImaged",
    "MultiCropd",
    "RandPatchMaskd",
    "RandomView",
    "TwoViewsd",
    "load_transform_preset",
    "read_any",
]
