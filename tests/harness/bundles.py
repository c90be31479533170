"""Untrained copies of the project's bundles: their real inference configs with randomly initialised weights."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from dissect_monai.deploy.bundle_runner import BundleError

__all__ = ["untrained_copy"]

_CONFIG_NAMES = ("configs/inference.yaml", "configs/inference.yml", "configs/inference.json")


def untrained_copy(bundle_dir: str | os.PathLike, target_root: str | os.PathLike, seed: int = 0) -> Path:
    """Copy a bundle without its weights to ``target_root/<bundle name>`` and save a randomly initialised state
    dict of its own ``network_def`` as ``models/model.pt``.

    For exercising a bundle's real inference config (transforms, network class, inferer, postprocessing) and
    timing it before trained weights exist; predictions of such a copy mean nothing.
    """
    source = Path(bundle_dir)
    copy = Path(target_root) / source.name
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("models", "eval", "runs"), dirs_exist_ok=True)
    (copy / "models").mkdir(exist_ok=True)
    config_path = next((copy / c for c in _CONFIG_NAMES if (copy / c).is_file()), None)
    if config_path is None:
        raise BundleError(f"bundle {source}: no inference config ({', '.join(_CONFIG_NAMES)})")
    parser = ConfigParser()
    parser.read_meta(str(copy / "configs" / "metadata.json"))
    parser.read_config(str(config_path))
    parser["bundle_root"] = str(copy)
    torch.manual_seed(seed)
    torch.save(parser.get_parsed_content("network_def").state_dict(), copy / "models" / "model.pt")
    return copy
