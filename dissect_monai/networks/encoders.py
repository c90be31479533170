"""Feature-pyramid encoders around MONAI's ResNet, and loading of pretrained encoder weights."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from monai.networks.nets.resnet import ResNet, ResNetBlock, ResNetBottleneck, get_inplanes
from torch import nn

from dissect_monai.networks.ssl_utils import global_pool

__all__ = [
    "RESNET_LAYERS", "ResNetFeaturePyramid", "load_pretrained_encoder", "PretrainedWeightsError", "state_dicts_in"
]

#: blocks per stage and block type for each supported depth (He et al. 2016 / MONAI ``resnetXX``).
RESNET_LAYERS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
}


class ResNetFeaturePyramid(ResNet):
    """MONAI ResNet (2D or 3D) returning the map of every stage instead of class scores.

    The stem is the usual stride-2 convolution followed by a stride-2 max-pool, so for an input of
    spatial size ``S`` the five maps have sizes ``S/2, S/4, S/8, S/16, S/32``. Parameter names are those
    of :class:`monai.networks.nets.ResNet` (``conv1``, ``bn1``, ``layer1`` ... ``layer4``), so MONAI
    ResNet state dicts load into it (without ``fc``).

    Args:
        spatial_dims: 2 for images ``(B, C, H, W)``, 3 for volumes ``(B, C, H, W, D)``.
        in_channels: channels of the input image (1 for radiographs and CT).
        depth: 10, 18, 34 (basic blocks) or 50 (bottleneck blocks).
        conv1_t_size: kernel size of the stem convolution.
        conv1_t_stride: stride of the stem convolution.
        no_max_pool: drop the stem max-pool (then the maps are ``S/2, S/2, S/4, S/8, S/16``).
        widen_factor: channel multiplier of every stage.
        norm: normalisation layer name/args, as MONAI's ``get_norm_layer``.
        act: activation name/args, as MONAI's ``get_act_layer``.

    Attributes:
        out_channels: channels of the five maps, e.g. ``(64, 64, 128, 256, 512)`` for depth 18.
        feature_dim: channels of the deepest map (size of the pooled global feature).
        strides: down-sampling factor of each map relative to the input.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        depth: int = 18,
        conv1_t_size: int = 7,
        conv1_t_stride: int = 2,
        no_max_pool: bool = False,
        widen_factor: float = 1.0,
        norm: str | tuple = "batch",
        act: str | tuple = ("relu", {"inplace": True}),
    ) -> None:
        if depth not in RESNET_LAYERS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_LAYERS)}, got {depth}.")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        block_name, layers = RESNET_LAYERS[depth]
        super().__init__(
            block=block_name,
            layers=list(layers),
            block_inplanes=get_inplanes(),
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=conv1_t_size,
            conv1_t_stride=conv1_t_stride,
            no_max_pool=no_max_pool,
            widen_factor=widen_factor,
            feed_forward=False,
            act=act,
            norm=norm,
        )
        expansion = (ResNetBottleneck if block_name == "bottleneck" else ResNetBlock).expansion
        planes = [int(p * widen_factor) for p in get_inplanes()]
        self.out_channels: tuple[int, ...] = (planes[0],) + tuple(p * expansion for p in planes)
        self.feature_dim: int = self.out_channels[-1]
        stem = int(conv1_t_stride)
        pool = 1 if no_max_pool else 2
        self.strides: tuple[int, ...] = (stem, stem * pool, stem * pool * 2, stem * pool * 4, stem * pool * 8)
        self.spatial_dims: int = spatial_dims
        self.in_channels: int = in_channels
        self.depth: int = depth

    @property
    def architecture(self) -> str:
        """A short description used in error messages, e.g. ``ResNet-18 (2D, 1 input channel)``."""
        return f"ResNet-{self.depth} ({self.spatial_dims}D, {self.in_channels} input channel(s))"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        """Stage maps of ``x``.

        Args:
            x: ``(B, in_channels, *spatial)``.

        Returns:
            five tensors ``(B, out_channels[i], *spatial / strides[i])``: stem, layer1 .. layer4.
        """
        x = self.act(self.bn1(self.conv1(x)))
        stem = x
        if not self.no_max_pool:
            x = self.maxpool(x)
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [stem, c2, c3, c4, c5]

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Global average pooled deepest map, ``(B, feature_dim)``, of an input ``(B, in_channels, *spatial)``."""
        return global_pool(self.forward(x)[-1])


class PretrainedWeightsError(ValueError):
    """A checkpoint could not be loaded into an encoder; the message names the file and the problem."""


def state_dicts_in(obj: object, where: str = "") -> list[tuple[str, Mapping[str, torch.Tensor]]]:
    """All tensor mappings inside a loaded checkpoint (the object itself and nested dicts), with their key path."""
    found: list[tuple[str, Mapping[str, torch.Tensor]]] = []
    if isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors:
            found.append((where, tensors))
        for key, value in obj.items():
            if isinstance(value, Mapping):
                found.extend(state_dicts_in(value, f"{where}[{key!r}]"))
    return found


def _candidate_prefixes(keys: list[str], wanted: list[str]) -> set[str]:
    """Prefixes ``p`` such that ``p + k`` is a checkpoint key for some encoder key ``k``."""
    prefixes = set()
    for key in keys:
        for w in wanted:
            if key.endswith(w) and (len(key) == len(w) or key[-len(w) - 1] == "."):
                prefixes.add(key[: len(key) - len(w)])
    return prefixes


_TARGET_WORDS = ("target", "momentum", "teacher", "ema")


def load_pretrained_encoder(
    path: str | os.PathLike,
    encoder: nn.Module,
    prefix: str | None = None,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """Load encoder weights from a pretraining checkpoint into ``encoder`` (in place) and return it.

    Accepted files (always read with ``torch.load(weights_only=True)``): a plain encoder state dict;
    the pretraining bundle's ``models/model.pt`` (embedder state dict, encoder under ``encoder.``); a
    training checkpoint holding the SSL model's state dict under any key (e.g. ``{"model": {...}}``),
    where the online encoder (``encoder.``) is preferred over target / momentum / teacher copies; a
    ``module.`` prefix from DistributedDataParallel is handled the same way.

    Args:
        path: checkpoint file.
        encoder: the module to fill, e.g. :class:`ResNetFeaturePyramid`.
        prefix: key prefix of the encoder inside the checkpoint (e.g. ``"encoder."``); found
            automatically when ``None``.
        map_location: device for the loaded tensors.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        PretrainedWeightsError: the file holds no weights matching the encoder's architecture (missing keys,
            other shapes, or extra keys inside the encoder's submodules, as from a deeper network); the
            message names the file, the architecture and the offending keys and shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained encoder checkpoint not found: {path}")
    try:
        loaded = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt file, pickle of arbitrary objects, not a torch file
        raise PretrainedWeightsError(f"cannot read pretrained encoder checkpoint {path}: {exc}") from exc
    arch = getattr(encoder, "architecture", type(encoder).__name__)
    expected = encoder.state_dict()
    wanted = list(expected)
    candidates = state_dicts_in(loaded)
    if not candidates:
        raise PretrainedWeightsError(f"{path} holds no tensors (type {type(loaded).__name__}); expected a state dict")

    best: tuple[tuple[int, int, int], str, str, Mapping[str, torch.Tensor]] | None = None
    for where, sd in candidates:
        prefixes = {prefix} if prefix is not None else _candidate_prefixes(list(sd), wanted)
        for p in prefixes:
            matched = sum(1 for k in wanted if p + k in sd)
            is_target = any(w in p.lower() for w in _TARGET_WORDS)
            score = (matched, 0 if is_target else 1, -len(p))
            if best is None or score > best[0]:
                best = (score, where, p, sd)
    if best is None or best[0][0] == 0:
        some = ", ".join(list(candidates[0][1])[:5])
        raise PretrainedWeightsError(
            f"{path} does not contain weights for {arch}"
            + (f" under prefix {prefix!r}" if prefix is not None else "")
            + f": no encoder key found (first checkpoint keys: {some})"
        )
    _, where, p, sd = best
    missing = [k for k in wanted if p + k not in sd]
    mismatched = [
        f"{k}: checkpoint {tuple(sd[p + k].shape)} vs encoder {tuple(expected[k].shape)}"
        for k in wanted
        if p + k in sd and sd[p + k].shape != expected[k].shape
    ]
    # keys the encoder lacks under its prefix: a deeper network's extra blocks, or modules another architecture
    # adds to its encoder (e.g. MLVICX's context bottlenecks). Without a prefix, the checkpoint's top level may hold
    # other networks too, so only keys under the encoder's own submodules count.
    children = {name + "." for name, _ in encoder.named_children()}
    unexpected = [
        k[len(p):] for k in sd
        if k.startswith(p) and k[len(p):] not in expected and (p or any(k.startswith(c) for c in children))
    ]
    if missing or mismatched or unexpected:
        location = f"{where} " if where else ""
        details = []
        if missing:
            details.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:5])})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:5])})")
        if mismatched:
            details.append(f"{len(mismatched)} shape mismatches ({'; '.join(mismatched[:5])})")
        raise PretrainedWeightsError(
            f"{path} {location}(prefix {p!r}) does not match the encoder architecture {arch}: " + "; ".join(details)
        )
    encoder.load_state_dict({k: sd[p + k] for k in wanted}, strict=True)
    return encoder
