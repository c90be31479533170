"""Build view/masking transforms from the YAML presets in ``configs/data`` (MONAI config syntax)."""

from __future__ import annotations

import os
from pathlib import Path

from monai.bundle import ConfigParser

__all__ = ["PRESET_DIR", "load_transform_preset"]

PRESET_DIR = Path(__file__).resolve().parents[2] / "configs" / "data"


def load_transform_preset(preset: str | os.PathLike, **overrides):
    """Instantiate the ``transform`` entry of a preset.

    Args:
        preset: a YAML/JSON path, or a preset name in ``configs/data`` (e.g. ``"byol_views_2d"``).
        overrides: values replacing top-level entries of the preset (e.g. ``spatial_size=[128, 128]``) or nested
            ones by MONAI id (``**{"transform#n_local": 0}``).

    Returns:
        The transform the preset describes (e.g. a :class:`dissect_monai.transforms.TwoViewsd`).
    """
    path = Path(preset)
    if not path.is_file():
        path = PRESET_DIR / f"{preset}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml")) if PRESET_DIR.is_dir() else []
        raise FileNotFoundError(f"no preset {preset!r}: not a file and not in {PRESET_DIR} (known: {known})")
    parser = ConfigParser()
    parser.read_config(str(path))
    for key, value in overrides.items():
        parser[key] = value
    return parser.get_parsed_content("transform")
