"""MONAI dictionary transforms: intensity mapping after loading (VOI window / LUT, MONOCHROME1, HU) and SSL views."""

from dissect_monai.transforms.intensity import MedicalIntensity, MedicalIntensityd
from dissect_monai.transforms.loading import load_image_transforms
from dissect_monai.transforms.presets import load_transform_preset
from dissect_monai.transforms.views import MultiCropd, RandomView, RandPatchMaskd, TwoViewsd

__all__ = [
    "MedicalIntensity",
    "MedicalIntensityd",
    "MultiCropd",
    "RandPatchMaskd",
    "RandomView",
    "TwoViewsd",
    "load_image_transforms",
    "load_transform_preset",
]
