"""The encoder each SSL method preset pretrains, built from the pretraining bundle's config + ``configs/methods``.

Every method preset (``configs/methods/<method>.yaml``) is merged on top of the pretraining bundle's
``train.yaml``; its ``network_def.embedder`` is the network the bundle saves as ``models/model.pt`` and its
``embedder.encoder`` is the encoder a transfer task evaluates (ResNet feature pyramid, MLVICX's pyramid with
context bottlenecks, a ViT, or a ViT seen as a token pyramid). Building them from the same configs as the
pretraining run is the one way the evaluation scripts and bundles get a method's encoder, so nothing a method
trains (e.g. MLVICX's bottlenecks) is silently dropped by loading it into another architecture.

The presets folder and the pretraining bundle are arguments (the scripts and tests pass the repository's
``configs/methods`` and ``bundles/dissect_cxr_pretrain``): the installed package never looks for them beside its
own source files, which a non-editable install does not have.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from torch import nn

from dissect_monai.networks.dissect import load_pretrained_quantizer
from dissect_monai.networks.encoders import PretrainedWeightsError, load_pretrained_encoder
from dissect_monai.networks.vit import ViTEncoder, ViTTokenPyramid

__all__ = ["build_method_embedder", "method_encoder", "method_names"]


def method_names(methods_dir: str | os.PathLike) -> list[str]:
    """The SSL methods: names of the presets ``<methods_dir>/<method>.yaml`` (the repository's ``configs/methods``),
    sorted. The one list of methods; scripts and tests take it from here.

    Raises:
        FileNotFoundError: ``methods_dir`` is not a folder of presets.
    """
    names = sorted(p.stem for p in Path(methods_dir).glob("*.yaml"))
    if not names:
        raise FileNotFoundError(f"no method presets (*.yaml) in {methods_dir}")
    return names


def _method_config(
    method: str, image_size: int, methods_dir: str | os.PathLike, bundle_root: str | os.PathLike,
    overrides: Mapping[str, Any] | None,
) -> ConfigParser:
    preset = Path(methods_dir) / f"{method}.yaml"
    if not preset.is_file():
        raise FileNotFoundError(f"no method preset {preset}; known: {method_names(methods_dir)}")
    parser = ConfigParser()
    parser.read_config([str(Path(bundle_root) / "configs" / "train.yaml"), str(preset)])
    parser["image_size"] = int(image_size)
    parser["bundle_root"] = str(bundle_root)
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser


def build_method_embedder(
    method: str,
    image_size: int,
    methods_dir: str | os.PathLike,
    bundle_root: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> nn.Module:
    """The pretraining bundle's ``embedder`` for ``method`` at ``image_size`` (eval mode), image ``(B, 1, H, W)`` ->
    embedding ``(B, D)``; its encoder is ``.encoder``.

    Args:
        method: preset name, a file ``<methods_dir>/<method>.yaml``.
        image_size: side of the square input the method was pretrained at (ViTs fix their token grid by it).
        methods_dir: folder of the presets (the repository's ``configs/methods``).
        bundle_root: the pretraining bundle (``bundles/dissect_cxr_pretrain``; its ``configs/train.yaml`` is the
            base config).
        checkpoint: optional pretraining checkpoint (the bundle's ``models/model.pt`` or a training checkpoint)
            whose embedder weights (encoder, and DiSSECT's quantizer) are loaded with :func:`load_pretrained_encoder`
            (strict: a clear error naming the file when they do not fit the method's embedder). A DiSSECT
            quantizer is built as the checkpoint's (sizes and scales read from it, not from the preset).
        overrides: further config values by id, e.g. ``{"depth": 34}`` for a ResNet-34 run of a ResNet method.

    Raises:
        FileNotFoundError: no such preset (the message lists the known ones) or no such checkpoint.
        dissect_monai.networks.PretrainedWeightsError: the checkpoint is not this method's encoder.
    """
    parser = _method_config(method, image_size, methods_dir, bundle_root, overrides)
    embedder = parser.get_parsed_content("network_def").embedder
    if checkpoint and getattr(embedder, "quantizer", None) is not None:
        try:
            quantizer, scales = load_pretrained_quantizer(checkpoint)
        except PretrainedWeightsError:
            pass  # no quantizer in the file: load_pretrained_encoder below names what is missing
        else:
            stored = {"network_def#embedder#scales": scales, "network_def#embedder#quantizer_args": {
                "num_codes": list(quantizer.num_codes), "code_dims": list(quantizer.code_dims)}}
            parser = _method_config(method, image_size, methods_dir, bundle_root, {**(overrides or {}), **stored})
            embedder = parser.get_parsed_content("network_def").embedder
    if checkpoint:
        load_pretrained_encoder(checkpoint, embedder)
    return embedder.eval()


def method_encoder(
    method: str,
    image_size: int,
    methods_dir: str | os.PathLike,
    bundle_root: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    pyramid: bool = True,
    overrides: Mapping[str, Any] | None = None,
) -> nn.Module:
    """The encoder ``method`` pretrains (optionally with its ``checkpoint`` weights), for transfer tasks.

    With ``pyramid=True`` the result maps ``(B, 1, H, W)`` to a list of channel-first stage maps (attribute
    ``out_channels``), as :class:`~dissect_monai.networks.segmentation.FeaturePyramidUNet` needs: a pyramid encoder
    as is, a plain :class:`ViTEncoder` as a :class:`ViTTokenPyramid` of its token maps at 1/3, 2/3 and full depth.
    Usable as a bundle ``_target_``, e.g. ``--network_def#encoder "{'_target_':
    'dissect_monai.networks.presets.method_encoder', 'method': 'mae', 'image_size': 64, 'methods_dir':
    'configs/methods', 'bundle_root': 'bundles/dissect_cxr_pretrain', 'checkpoint': ...}"``.
    Arguments as :func:`build_method_embedder`.
    """
    encoder = build_method_embedder(method, image_size, methods_dir, bundle_root, checkpoint, overrides).encoder
    if pyramid and isinstance(encoder, ViTEncoder):
        encoder = ViTTokenPyramid(encoder)
    return encoder.train()
