"""dissect-monai: discrete self-supervision for medical image encoders, as MONAI bundles."""

__version__ = "0.1.0"
