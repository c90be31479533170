"""Classification on top of a (pretrained) feature-pyramid encoder: linear probe or fine-tune."""

from __future__ import annotations

from typing import Optional

import torch
from monai.data import MetaTensor
from torch import nn

from dissect_monai.networks.encoders import load_pretrained_encoder
from dissect_monai.networks.ssl_utils import global_pool
from dissect_monai.utils.precision import resolve_precision

__all__ = ["EncoderClassifier"]


class EncoderClassifier(nn.Module):
    """Image -> class logits from the pooled deepest encoder map, optionally with a multi-scale descriptor.

    The feature of an image is the global average pool of the encoder's deepest map (``feature_dim``
    values), concatenated with ``descriptor(maps)`` when a descriptor is given (a module taking the list of
    stage maps and returning ``(B, descriptor.out_dim)``, e.g. DiSSECT's
    :class:`~dissect_monai.networks.dissect.QuantisedDescriptor`).
    A dropout and one linear layer map the feature to ``num_classes`` logits (sigmoid per class outside).

    With ``freeze_encoder=True`` (linear probe) the encoder and descriptor get no gradients and stay in
    eval mode (batch-norm statistics frozen) even while the classifier is trained.

    Args:
        encoder: module mapping ``(B, C, H, W)`` to a list of stage maps, the last ``(B, feature_dim, h, w)``;
            it must expose ``feature_dim`` (e.g. :class:`dissect_monai.networks.ResNetFeaturePyramid`).
        num_classes: number of outputs (1 for binary pneumonia, 14 for the NIH findings).
        descriptor: optional module ``list[Tensor] -> (B, out_dim)`` with attribute ``out_dim``.
        freeze_encoder: linear-probe mode (see above).
        dropout: dropout probability before the linear layer.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (:func:`dissect_monai.utils.resolve_precision`): the
            eager forward runs encoder and descriptor under bf16 autocast + channels_last when the policy
            says so; features and logits are fp32 either way. TorchScript exports always run fp32.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        descriptor: Optional[nn.Module] = None,
        freeze_encoder: bool = False,
        dropout: float = 0.0,
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        if not hasattr(encoder, "feature_dim"):
            raise ValueError(f"encoder {type(encoder).__name__} has no 'feature_dim' attribute.")
        if descriptor is not None and not hasattr(descriptor, "out_dim"):
            raise ValueError(f"descriptor {type(descriptor).__name__} has no 'out_dim' attribute.")
        resolve_precision(precision)  # fail early on an unknown mode
        self.precision = precision
        self.encoder = encoder
        self.descriptor = descriptor
        self.freeze_encoder = freeze_encoder
        self.num_classes = num_classes
        self.feature_dim: int = int(encoder.feature_dim) + (int(descriptor.out_dim) if descriptor is not None else 0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.feature_dim, num_classes)
        if freeze_encoder:
            for module in self.frozen_modules():
                module.requires_grad_(False)
                module.eval()

    def frozen_modules(self) -> list[nn.Module]:
        """The modules kept fixed in linear-probe mode (encoder and descriptor)."""
        return [m for m in (self.encoder, self.descriptor) if m is not None]

    def train(self, mode: bool = True) -> "EncoderClassifier":
        """Set train/eval mode; a frozen encoder (and descriptor) always stays in eval mode."""
        super().train(mode)
        if self.freeze_encoder:
            for module in self.frozen_modules():
                module.eval()
        return self

    def load_pretrained(self, checkpoint: str) -> "EncoderClassifier":
        """Load the encoder from a pretraining checkpoint; returns ``self``.

        A :class:`~dissect_monai.networks.dissect.QuantisedDescriptor` brings its pretrained quantizer already
        (:meth:`~dissect_monai.networks.dissect.QuantisedDescriptor.from_checkpoint`).

        ``checkpoint``: the pretraining bundle's ``models/model.pt`` or a pretraining training checkpoint.

        Raises:
            FileNotFoundError: the file does not exist (the message names it and how to get one).
            dissect_monai.networks.PretrainedWeightsError: the file's weights do not fit this encoder or
                descriptor (the message names the file and the architecture).
        """
        try:
            load_pretrained_encoder(checkpoint, self.encoder)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"pretrained checkpoint not found: {checkpoint} (train the dissect_cxr_pretrain bundle to create its "
                "models/model.pt, point pretrained_checkpoint at a pretraining checkpoint, or set it to null "
                "for a randomly initialised encoder)"
            ) from exc
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Representation ``(B, feature_dim)`` fp32 of ``x`` ``(B, C, *spatial)``: pooled deepest map [+ descriptor].

        A collated :class:`monai.data.MetaTensor` is used as a plain tensor: the per-image meta data of a batch
        cannot follow the slicing inside the descriptor (and is not needed for class scores).
        """
        if not torch.jit.is_scripting() and isinstance(x, MetaTensor):
            x = x.as_tensor()
        if not torch.jit.is_scripting() and self.precision != "fp32":
            policy = resolve_precision(self.precision, x.device)
            if policy.bf16:
                with policy.autocast():
                    return self._features(policy.format_input(x)).float()
        return self._features(x)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.encoder(x)
        feat = global_pool(maps[-1])
        if self.descriptor is not None:
            feat = torch.cat([feat.float(), self.descriptor(maps).float()], dim=1)
        return feat.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of images ``x`` ``(B, C, *spatial)``."""
        return self.head(self.dropout(self.features(x)))

    def parameter_groups(self, lr: float, encoder_lr: float) -> list[dict]:
        """Optimizer parameter groups: the head at ``lr``, the encoder (and descriptor) at ``encoder_lr``.

        Frozen parameters are left out, so in linear-probe mode only the head is returned.
        """
        head_params = [p for p in self.head.parameters() if p.requires_grad]
        backbone = [p for m in self.frozen_modules() for p in m.parameters() if p.requires_grad]
        groups = [{"params": head_params, "lr": lr}]
        if backbone:
            groups.append({"params": backbone, "lr": encoder_lr})
        return groups
