"""DiSSECT: BYOL-style self-supervision with a multi-scale vector-quantised discrete path (BYOL when VQ is off)."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dissect_monai.losses.byol import BYOLLoss
from dissect_monai.losses.code_consistency import CodeConsistencyLoss
from dissect_monai.networks.encoders import PretrainedWeightsError, ResNetFeaturePyramid, state_dicts_in
from dissect_monai.networks.heads import DiscreteDescriptor, MLPHead
from dissect_monai.networks.quantizer import MultiScaleQuantizer
from dissect_monai.networks.ssl_utils import cosine_momentum, ema_update, global_pool, pooled_codes

__all__ = ["STAGE_NAMES", "DiSSECTEmbedder", "DiSSECT", "QuantisedDescriptor", "load_pretrained_quantizer"]

#: names of the five maps of :class:`ResNetFeaturePyramid` (index 1 = C2 at 1/4 ... index 4 = C5 at 1/32).
STAGE_NAMES: tuple[str, ...] = ("stem", "c2", "c3", "c4", "c5")


class DiSSECTEmbedder(nn.Module):
    """The network the pretraining bundle ships: encoder (+ multi-scale quantizer), image -> embedding.

    Its state dict is the bundle's ``models/model.pt``; :func:`~dissect_monai.networks.load_pretrained_encoder`
    reads the encoder from it (prefix ``encoder.``) and :func:`load_pretrained_quantizer` rebuilds the quantizer
    from it (sizes from the weights' shapes, the quantised encoder maps from the ``scale_index`` buffer), so the
    quantizer's settings have one source: the checkpoint. TorchScript-able (``forward`` and ``encode``); run the
    scripted module without autocast (the eager module keeps code search in fp32 under autocast).

    Args:
        encoder: a pyramid encoder (``forward(x) -> list`` of channel-first maps, ``out_channels``,
            ``feature_dim``, optional ``spatial_dims`` and ``stage_names``); default ``ResNetFeaturePyramid()``
            (ResNet-18, 2D, 1 channel). A ViT is one through :class:`~dissect_monai.networks.vit.ViTTokenPyramid`.
        use_quantizer: build the multi-scale quantizer (False for BYOL).
        scales: indices into the encoder's maps to quantise (default C2, C3, C4 = 1, 2, 3 of a ResNet pyramid).
        quantizer_args: further arguments of :class:`MultiScaleQuantizer` (``num_codes``, ``code_dims``,
            ``commitment_weight``, ``decay``, ``eps``, ``dead_code_threshold``); its defaults otherwise.
    """

    def __init__(
        self,
        encoder: nn.Module | None = None,
        use_quantizer: bool = True,
        scales: Sequence[int] = (1, 2, 3),
        quantizer_args: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder if encoder is not None else ResNetFeaturePyramid()
        stages = tuple(getattr(self.encoder, "stage_names", STAGE_NAMES))
        self.scales: list[int] = [int(s) for s in scales] if use_quantizer else []
        if use_quantizer and (not self.scales or any(not 0 <= s < len(stages) for s in self.scales)):
            raise ValueError(f"scales must be indices in 0..{len(stages) - 1} of {stages}, got {tuple(scales)}.")
        if quantizer_args and not use_quantizer:
            raise ValueError(f"quantizer_args {dict(quantizer_args)} given with use_quantizer=False.")
        self.scale_names: list[str] = [stages[s] for s in self.scales]
        if use_quantizer:  # the quantised encoder maps travel with the checkpoint (see load_pretrained_quantizer)
            self.register_buffer("scale_index", torch.tensor(self.scales, dtype=torch.long))
        self.quantizer: MultiScaleQuantizer | None = (
            MultiScaleQuantizer(
                in_channels=[self.encoder.out_channels[s] for s in self.scales],
                spatial_dims=int(getattr(self.encoder, "spatial_dims", 2)),
                names=self.scale_names,
                **dict(quantizer_args or {}),
            )
            if use_quantizer
            else None
        )
        self.embedding_dim: int = self.encoder.feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding ``(B, embedding_dim)``: the average-pooled deepest map of an image ``(B, C, *spatial)``."""
        return global_pool(self.encoder(x)[-1])

    @torch.jit.export
    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"embedding": (B, D)}`` plus ``{"codes_<scale>": (B, *S_i)}`` int64 code indices per quantised scale."""
        maps = self.encoder(x)
        out = {"embedding": global_pool(maps[-1])}
        quantizer = self.quantizer
        if quantizer is not None:
            indices = quantizer.code_indices([maps[s] for s in self.scales])
            for name, idx in zip(self.scale_names, indices):
                out["codes_" + name] = idx
        return out


def load_pretrained_quantizer(path: str | os.PathLike) -> tuple[MultiScaleQuantizer, list[int]]:
    """The multi-scale quantizer of a DiSSECT checkpoint, with its weights, and the encoder maps it quantises.

    Sizes (``in_channels``, ``code_dims``, ``num_codes``, ``spatial_dims``) come from the shapes of the stored
    weights and the scales from the ``scale_index`` buffer, so a checkpoint of any quantizer setting loads
    without repeating it. Accepted files: the pretraining bundle's ``models/model.pt``
    (:class:`DiSSECTEmbedder`), a pretraining training checkpoint (``embedder.`` keys, nested under any key),
    or a transfer network holding a :class:`QuantisedDescriptor` (``descriptor.`` keys).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        PretrainedWeightsError: the file holds no DiSSECT quantizer (e.g. a BYOL or baseline checkpoint).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained checkpoint not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle of arbitrary objects, not a torch file
        raise PretrainedWeightsError(f"cannot read pretrained checkpoint {path}: {exc}") from exc
    for _, sd in state_dicts_in(loaded):
        prefixes = sorted((k[: -len("scale_index")] for k in sd if k.endswith("scale_index")), key=len)
        for prefix in prefixes:
            scales = [int(s) for s in sd[prefix + "scale_index"].tolist()]
            q = prefix + "quantizer."
            weights = [sd.get(f"{q}projections.{i}.weight") for i in range(len(scales))]
            codebooks = [sd.get(f"{q}codebooks.{i}.codebook") for i in range(len(scales))]
            if not scales or any(w is None for w in weights) or any(c is None for c in codebooks):
                continue
            quantizer = MultiScaleQuantizer(
                in_channels=[int(w.shape[1]) for w in weights],
                num_codes=[int(c.shape[0]) for c in codebooks],
                code_dims=[int(c.shape[1]) for c in codebooks],
                spatial_dims=weights[0].ndim - 2,
            )
            quantizer.load_state_dict({k[len(q):]: v for k, v in sd.items() if k.startswith(q)}, strict=True)
            return quantizer, scales
    raise PretrainedWeightsError(
        f"{path} holds no DiSSECT MultiScaleQuantizer (no 'scale_index' with 'quantizer.' weights beside it): not a "
        "DiSSECT checkpoint with use_quantizer=True (BYOL and the baselines have no codebooks)"
    )


class QuantisedDescriptor(nn.Module):
    """The transfer side of DiSSECT's discrete path: :func:`pooled_codes` of a pretrained quantizer's nearest codes.

    Each chosen encoder map goes through the quantizer's 1x1 projection, every position takes its nearest code
    (cosine, fp32, no codebook update) and :func:`pooled_codes` averages and concatenates them, the values of
    DiSSECT's ``fusion="none"`` :class:`DiscreteDescriptor` in eval mode. TorchScript-able.

    Args:
        quantizer: the pretrained :class:`MultiScaleQuantizer`.
        scales: indices of the encoder maps it quantises, in the quantizer's order.

    Attributes:
        out_dim: ``sum(quantizer.code_dims)``.
    """

    def __init__(self, quantizer: MultiScaleQuantizer, scales: Sequence[int]) -> None:
        super().__init__()
        if len(scales) != len(quantizer.code_dims):
            raise ValueError(f"{len(scales)} scales given for a quantizer of {len(quantizer.code_dims)} scales.")
        self.quantizer = quantizer
        self.scales: list[int] = [int(s) for s in scales]
        self.register_buffer("scale_index", torch.tensor(self.scales, dtype=torch.long))
        self.out_dim: int = int(sum(quantizer.code_dims))

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike | None) -> QuantisedDescriptor:
        """The descriptor of the quantizer stored in ``checkpoint`` (see :func:`load_pretrained_quantizer`).

        Raises:
            ValueError: no checkpoint given (the descriptor exists only as a pretrained one).
        """
        if not checkpoint:
            raise ValueError("a QuantisedDescriptor is read from a DiSSECT checkpoint, but no checkpoint was given "
                             "(set pretrained_checkpoint, or use_descriptor=False)")
        return cls(*load_pretrained_quantizer(checkpoint))

    @property
    def architecture(self) -> str:
        """Short description used in error messages."""
        q = self.quantizer
        return f"MultiScaleQuantizer(scales {self.scales}, codes {q.num_codes}, dims {q.code_dims})"

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Stage maps (as returned by the encoder) -> ``(B, out_dim)`` fp32 descriptor."""
        indices = self.quantizer.code_indices([maps[s] for s in self.scales])
        codes: list[torch.Tensor] = []
        i = 0
        for codebook in self.quantizer.codebooks:
            codes.append(torch.movedim(codebook.lookup(indices[i]), -1, 1))  # (B, D, *S), channels-last strides
            i += 1
        return pooled_codes(codes)


class DiSSECT(nn.Module):
    """DiSSECT self-supervised model on a :class:`DiSSECTEmbedder`; an embedder without quantizer gives BYOL.

    Both views go through the online and the EMA target networks as one concatenated batch.
    Terms (each a fp32 scalar in the output of :meth:`forward`):

    - ``continuous_loss``: BYOL ``2 - 2 cos`` between the online prediction of one view and the target
      projection of the other (symmetrised), on the pooled deepest encoder map;
    - ``discrete_loss`` (quantizer on): the same objective on the :class:`DiscreteDescriptor` of the
      straight-through quantised maps of all ``scales`` (own projector / predictor); the target uses its
      EMA copy of the 1x1 projections and the shared codebooks (no codebook update);
    - ``commitment_loss``: the quantizer's ``beta * ||z - sg(e)||^2`` summed over scales;
    - ``consistency_loss`` (``consistency_weight > 0``): :class:`CodeConsistencyLoss` between the online
      soft code histogram of each view and the target's hard histogram of the other view, mean over scales.

    ``loss = continuous_loss + discrete_weight * discrete_loss + commitment_loss
    + consistency_weight * consistency_loss``; ``discrete_only=True`` drops the continuous term and its heads.

    Args:
        embedder: the online encoder and quantizer, the network the bundle ships (default
            ``DiSSECTEmbedder()``: ResNet-18, quantised C2..C4).
        projection_dim: output size of projectors and predictors (256).
        hidden_dim: hidden width of the continuous projector and predictor (4096).
        discrete_hidden_dim: hidden width of the discrete projector and predictor (``None``: ``hidden_dim``).
        discrete_weight: weight of the discrete BYOL term.
        discrete_only: no continuous BYOL term (ablation "discrete path only"); needs the deepest encoder map
            among the quantised scales or a ``fusion``, so that every encoder stage is trained.
        consistency_weight: weight of the code-assignment consistency term (0 = off).
        consistency_temperature: softmax temperature of the online soft assignments.
        fusion: ``"none"``, ``"concat"`` or ``"cross_attention"`` (see :class:`DiscreteDescriptor`).
        fusion_dim: width of the cross-attention fusion.
        fusion_heads: heads of the cross-attention fusion.
        base_momentum: target EMA momentum at the start (0.996), rising to ``final_momentum`` (1.0) on a
            cosine schedule.
        final_momentum: momentum at the end of training.
    """

    def __init__(
        self,
        embedder: DiSSECTEmbedder | None = None,
        projection_dim: int = 256,
        hidden_dim: int = 4096,
        discrete_hidden_dim: int | None = None,
        discrete_weight: float = 1.0,
        discrete_only: bool = False,
        consistency_weight: float = 0.0,
        consistency_temperature: float = 0.1,
        fusion: str = "none",
        fusion_dim: int = 256,
        fusion_heads: int = 8,
        base_momentum: float = 0.996,
        final_momentum: float = 1.0,
    ) -> None:
        super().__init__()
        self.embedder = embedder if embedder is not None else DiSSECTEmbedder()
        use_quantizer = self.embedder.quantizer is not None
        deepest = len(self.embedder.encoder.out_channels) - 1
        if discrete_only and not use_quantizer:
            raise ValueError("discrete_only=True needs an embedder with a quantizer (otherwise there is no loss).")
        if discrete_only and fusion == "none" and deepest not in self.embedder.scales:
            raise ValueError(
                f"discrete_only=True with fusion='none' needs the deepest map (scale {deepest}) among the embedder's "
                "scales: otherwise the last encoder stage, whose pooled output is the embedding, would receive no "
                "gradient."
            )
        if (consistency_weight > 0 or fusion != "none") and not use_quantizer:
            raise ValueError("consistency_weight and fusion act on the discrete path: they need a quantizer.")
        feature_dim = self.embedder.embedding_dim
        self.discrete_only = discrete_only
        self.discrete_weight = discrete_weight
        self.consistency_weight = consistency_weight
        self.consistency_temperature = consistency_temperature
        self.base_momentum = base_momentum
        self.final_momentum = final_momentum
        self.byol_loss = BYOLLoss()
        self.consistency_loss = CodeConsistencyLoss()

        self.target_encoder = copy.deepcopy(self.embedder.encoder)
        self._pairs: list[tuple[str, str]] = [("embedder.encoder", "target_encoder")]
        if not discrete_only:
            self.projector = MLPHead(feature_dim, hidden_dim, projection_dim)
            self.predictor = MLPHead(projection_dim, hidden_dim, projection_dim)
            self.target_projector = copy.deepcopy(self.projector)
            self._pairs.append(("projector", "target_projector"))
        quantizer = self.embedder.quantizer
        if quantizer is not None:
            self.descriptor = DiscreteDescriptor(quantizer.code_dims, feature_dim, fusion, fusion_dim, fusion_heads)
            discrete_hidden = hidden_dim if discrete_hidden_dim is None else discrete_hidden_dim
            self.discrete_projector = MLPHead(self.descriptor.out_dim, discrete_hidden, projection_dim)
            self.discrete_predictor = MLPHead(projection_dim, discrete_hidden, projection_dim)
            self.target_projections = copy.deepcopy(quantizer.projections)
            self.target_descriptor = copy.deepcopy(self.descriptor)
            self.target_discrete_projector = copy.deepcopy(self.discrete_projector)
            self._pairs += [
                ("embedder.quantizer.projections", "target_projections"),
                ("descriptor", "target_descriptor"),
                ("discrete_projector", "target_discrete_projector"),
            ]
        for _, target in self._pairs:
            self.get_submodule(target).requires_grad_(False)

    @property
    def encoder(self) -> nn.Module:
        """The online encoder (what transfer uses)."""
        return self.embedder.encoder

    @property
    def quantizer(self) -> MultiScaleQuantizer | None:
        """The multi-scale quantizer, or None for BYOL."""
        return self.embedder.quantizer

    def online_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser trains (everything except the EMA target copies)."""
        return [p for p in self.parameters() if p.requires_grad]

    def _symmetric(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """BYOL loss between view 1's prediction and view 2's target and vice versa; inputs ``(2B, D)``."""
        p1, p2 = prediction.chunk(2)
        z1, z2 = target.chunk(2)
        return 0.5 * (self.byol_loss(p1, z2) + self.byol_loss(p2, z1))

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training objective for two augmented views ``(B, C, *spatial)`` of the same images.

        Returns:
            ``{"loss": total, "continuous_loss": ..., "discrete_loss": ..., "commitment_loss": ...,
            "consistency_loss": ...}`` (the terms that are switched on), fp32 scalars.
        """
        if view1.shape != view2.shape:
            raise ValueError(
                f"the two views must have the same shape, got {tuple(view1.shape)} and {tuple(view2.shape)}."
            )
        x = torch.cat([view1, view2])
        maps = self.embedder.encoder(x)
        with torch.no_grad():
            target_maps = self.target_encoder(x)
        out: dict[str, torch.Tensor] = {}
        loss = x.new_zeros((), dtype=torch.float32)
        if not self.discrete_only:
            prediction = self.predictor(self.projector(global_pool(maps[-1])))
            with torch.no_grad():
                target = self.target_projector(global_pool(target_maps[-1]))
            out["continuous_loss"] = self._symmetric(prediction, target)
            loss = loss + out["continuous_loss"]
        quantizer = self.embedder.quantizer
        if quantizer is not None:
            scales = self.embedder.scales
            projected = quantizer.project([maps[s] for s in scales])
            quantised, commitment, _ = quantizer.quantize(projected, update=self.training)
            prediction = self.discrete_predictor(self.discrete_projector(self.descriptor(quantised, maps[-1])))
            with torch.no_grad():
                target_projected = quantizer.project([target_maps[s] for s in scales], self.target_projections)
                target_quantised, _, target_codes = quantizer.quantize(target_projected, update=False)
                target = self.target_discrete_projector(self.target_descriptor(target_quantised, target_maps[-1]))
            out["discrete_loss"] = self._symmetric(prediction, target)
            out["commitment_loss"] = commitment
            loss = loss + self.discrete_weight * out["discrete_loss"] + commitment
            if self.consistency_weight > 0:
                out["consistency_loss"] = self._code_consistency(quantizer, projected, target_codes)
                loss = loss + self.consistency_weight * out["consistency_loss"]
        out["loss"] = loss
        return out

    def _code_consistency(
        self, quantizer: MultiScaleQuantizer, projected: list[torch.Tensor], target_codes: list[torch.Tensor]
    ) -> torch.Tensor:
        """Mean over scales of the symmetrised consistency between online soft and target hard code histograms."""
        soft = quantizer.soft_code_histograms(projected, self.consistency_temperature)
        total = soft[0].new_zeros(())
        for s, codes, k in zip(soft, target_codes, quantizer.num_codes):
            hard = F.one_hot(codes.flatten(1), k).float().mean(dim=1)  # (2B, K): fraction of positions per code
            s1, s2 = s.chunk(2)
            h1, h2 = hard.chunk(2)
            total = total + 0.5 * (self.consistency_loss(s1, h2) + self.consistency_loss(s2, h1))
        return total / len(soft)

    @torch.no_grad()
    def update_target(self, progress: float) -> float:
        """EMA of the online parameters into the target copies with the cosine momentum at ``progress`` in [0, 1].

        Call after each optimiser step. Returns the momentum used.
        """
        m = cosine_momentum(progress, self.base_momentum, self.final_momentum)
        ema_update([(self.get_submodule(online), self.get_submodule(target)) for online, target in self._pairs], m)
        return m

    def codebook_statistics(self) -> dict[str, float]:
        """Per quantised scale ``<scale>_perplexity``, ``<scale>_usage`` and ``<scale>_dead_codes`` (empty for BYOL)."""
        quantizer = self.embedder.quantizer
        return {} if quantizer is None else quantizer.statistics()
