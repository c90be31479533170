"""The bundles' loading section as a Python list, for scripts and tests that build a pipeline in code."""

from __future__ import annotations

from collections.abc import Sequence

from monai.transforms import EnsureChannelFirstd, LoadImaged, MapTransform
from monai.utils import ensure_tuple

from dissect_monai.data import MedicalImageReader
from dissect_monai.transforms.intensity import MedicalIntensityd

__all__ = ["load_image_transforms"]


def load_image_transforms(
    keys: str | Sequence[str] = "image",
    mode: str = "unit",
    label_keys: str | Sequence[str] = (),
    **intensity_kwargs,
) -> list[MapTransform]:
    """``LoadImaged(reader=MedicalImageReader())`` and ``EnsureChannelFirstd`` on image and label keys, then
    :class:`MedicalIntensityd` on the image keys only (label maps keep the values they were stored with).

    Args:
        keys: image keys.
        mode: ``"unit"`` ([0, 1], VOI window / LUT, MONOCHROME1 inverted) or ``"hu"`` (CT numbers).
        label_keys: label-map keys, loaded but not intensity-mapped.
        intensity_kwargs: further :class:`MedicalIntensityd` arguments (``window``, ``percentiles``,
            ``reject_constant``, ``allow_missing_keys``).

    Returns:
        the three transforms, channel-first MetaTensors in MONAI's axis order (``(1, W, H)``, ``(1, X, Y, Z)``).
    """
    images, labels = list(ensure_tuple(keys)), list(ensure_tuple(label_keys))
    missing = bool(intensity_kwargs.get("allow_missing_keys", False))
    return [
        LoadImaged(images + labels, reader=MedicalImageReader(), allow_missing_keys=missing),
        EnsureChannelFirstd(images + labels, allow_missing_keys=missing),
        MedicalIntensityd(images, mode=mode, **intensity_kwargs),
    ]
