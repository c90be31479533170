"""Checks a bundle config runs as its first ``initialize`` step, before any path is built from ``bundle_root``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["BundleRootError", "check_bundle_root"]


class BundleRootError(ValueError):
    """``bundle_root`` does not point at the bundle whose configs are running; the message names the path."""


def check_bundle_root(bundle_root: str | os.PathLike, expected_name: str) -> Path:
    """Check that ``bundle_root`` is the folder of the bundle ``expected_name`` and return it resolved.

    A bundle is identified as in the model zoo, by its folder name (``monai.bundle download`` extracts bundle
    ``<name>`` into ``<bundle_dir>/<name>``; MONAI Label loads ``<app>/model/<name>``), and the folder must hold
    ``configs/metadata.json``. The configs default ``bundle_root`` to ``.``, so a run from inside the bundle folder
    needs no flag and a run from anywhere else needs ``--bundle_root``; without this check such a run resolves
    data, checkpoint and output paths against the current directory and fails far from the cause.

    Args:
        bundle_root: the config's ``bundle_root`` (relative paths are taken from the current directory).
        expected_name: the bundle's name, e.g. ``"dissect_cxr_pretrain"``.

    Raises:
        BundleRootError: ``bundle_root`` is not a bundle folder, or the folder of another bundle.
    """
    root = Path(bundle_root).expanduser().resolve()
    how = (
        f"run from inside the {expected_name} folder, or pass --bundle_root <path to {expected_name}> "
        f"(bundle_root={str(bundle_root)!r}, resolved to {root})"
    )
    metadata = root / "configs" / "metadata.json"
    if not metadata.is_file():
        raise BundleRootError(f"bundle_root is not a bundle folder: {metadata} not found; {how}")
    if root.name != expected_name:
        raise BundleRootError(f"bundle_root is the folder of bundle {root.name!r}, not {expected_name!r}; {how}")
    return root
