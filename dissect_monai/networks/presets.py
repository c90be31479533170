"""The encoder each SSL method preset pretrains, built from the pretraining bundle's config + ``configs/methods``.

Every method preset (``configs/methods/<method>.yaml``) is merged on top of the pretraining bundle's
``train.yaml``; its ``network_def.embedder`` is the network the bundle saves as ``models/model.pt`` and its
``embedder.encoder`` is the encoder a transfer task evaluates (ResNet feature pyramid, MLVICX's pyramid with
context bottlenecks, a ViT, or a ViT seen as a token pyramid). Building them from the same configs as the
pretraining run is the one way the evaluation scripts and bundles get a method's encoder, so nothing a method
trains (e.g. MLVICX's bottlenecks) is silently dropped by loading it into another architecture.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from torch import nn

from dissect_monai.networks.encoders import load_pretrained_encoder
from dissect_monai.networks.vit import ViTEncoder, ViTTokenPyramid

__all__ = ["METHODS_DIR", "PRETRAIN_BUNDLE", "build_method_embedder", "method_encoder", "method_names"]

_REPO = Path(__file__).resolve().parents[2]
#: the pretraining bundle whose ``configs/train.yaml`` every preset is merged on
PRETRAIN_BUNDLE = _REPO / "bundles" / "dissect_cxr_pretrain"
#: folder of the method presets
METHODS_DIR = _REPO / "configs" / "methods"


def method_names(methods_dir: str | os.PathLike = METHODS_DIR) -> list[str]:
    """Names of the method presets in ``methods_dir`` (file stems), sorted."""
    return sorted(p.stem for p in Path(methods_dir).glob("*.yaml"))


def build_method_embedder(
    method: str,
    image_size: int,
    checkpoint: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    methods_dir: str | os.PathLike = METHODS_DIR,
    bundle_root: str | os.PathLike = PRETRAIN_BUNDLE,
) -> nn.Module:
    """The pretraining bundle's ``embedder`` for ``method`` at ``image_size`` (eval mode), image ``(B, 1, H, W)`` ->
    embedding ``(B, D)``; its encoder is ``.encoder``.

    Args:
        method: preset name, a file ``<methods_dir>/<method>.yaml``.
        image_size: side of the square input the method was pretrained at (ViTs fix their token grid by it).
        checkpoint: optional pretraining checkpoint (the bundle's ``models/model.pt`` or a training checkpoint)
            whose embedder weights (encoder, and DiSSECT's quantizer) are loaded with :func:`load_pretrained_encoder`
            (strict: a clear error naming the file when they do not fit the method's embedder).
        overrides: further config values by id, e.g. ``{"depth": 34}`` for a ResNet-34 run of a ResNet method.
        methods_dir: folder of the presets.
        bundle_root: the pretraining bundle (its ``configs/train.yaml`` is the base config).

    Raises:
        FileNotFoundError: no such preset (the message lists the known ones) or no such checkpoint.
        dissect_monai.networks.PretrainedWeightsError: the checkpoint is not this method's encoder.
    """
    preset = Path(methods_dir) / f"{method}.yaml"
    if not preset.is_file():
        raise FileNotFoundError(f"no method preset {preset}; known: {method_names(methods_dir)}")
    parser = ConfigParser()
    parser.read_config([str(Path(bundle_root) / "configs" / "train.yaml"), str(preset)])
    parser["image_size"] = int(image_size)
    parser["bundle_root"] = str(bundle_root)
    for key, value in (overrides or {}).items():
        parser[key] = value
    embedder = parser.get_parsed_content("network_def").embedder
    if checkpoint:
        load_pretrained_encoder(checkpoint, embedder)
    return embedder.eval()


def method_encoder(
    method: str,
    image_size: int,
    checkpoint: str | os.PathLike | None = None,
    pyramid: bool = True,
    overrides: Mapping[str, Any] | None = None,
    methods_dir: str | os.PathLike = METHODS_DIR,
) -> nn.Module:
    """The encoder ``method`` pretrains (optionally with its ``checkpoint`` weights), for transfer tasks.

    With ``pyramid=True`` the result maps ``(B, 1, H, W)`` to a list of channel-first stage maps (attribute
    ``out_channels``), as :class:`~dissect_monai.networks.segmentation.FeaturePyramidUNet` needs: a pyramid encoder
    as is, a plain :class:`ViTEncoder` as a :class:`ViTTokenPyramid` of its token maps at 1/3, 2/3 and full depth.
    Usable as a bundle ``_target_``, e.g. ``--network_def#encoder "{'_target_':
    'dissect_monai.networks.presets.method_encoder', 'method': 'mae', 'image_size': 64, 'checkpoint': ...}"``.
    """
    encoder = build_method_embedder(method, image_size, checkpoint, overrides, methods_dir).encoder
    if pyramid and isinstance(encoder, ViTEncoder):
        encoder = ViTTokenPyramid(encoder)
    return encoder.train()
