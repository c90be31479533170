"""Loading (PNG/JPEG, NIfTI, DICOM files and series) and SSL view generation, as MONAI dictionary transforms."""

from dissect_monai.transforms.errors import ImageLoadError
from dissect_monai.transforms.io import LoadMedicalImage, LoadMedicalImaged, read_any

__all__ = ["ImageLoadError", "LoadMedicalImage", "LoadMedicalImaged", "read_any"]
