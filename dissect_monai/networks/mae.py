"""Masked autoencoder (He et al., CVPR 2022) on a :class:`ViTEncoder`, as an SSL method module."""

from __future__ import annotations

import torch
from torch import nn

from dissect_monai.losses.mae import MaskedPatchLoss
from dissect_monai.networks.embedder import EncoderEmbedder
from dissect_monai.networks.heads import MAEDecoder
from dissect_monai.networks.vit import ViTEncoder, patchify
from dissect_monai.transforms.batched import random_patch_mask

__all__ = ["MAE"]


class MAE(nn.Module):
    """Masked autoencoder: encode the visible 25 % of patches, reconstruct the rest with a light decoder.

    ``forward(view1, view2=None)`` treats the views as independent samples (both are reconstructed, so a
    step sees as many images as a two-view method's step). The loss is :class:`MaskedPatchLoss` on the
    masked patches, with per-patch normalised pixel targets. ``embedder`` (:class:`EncoderEmbedder`) is
    the network the bundle ships.

    Args:
        encoder: the ViT to pretrain (default: :class:`ViTEncoder` with its defaults).
        mask_ratio: fraction of masked patches (0.75).
        decoder_dim: token size of the decoder (narrower than the encoder).
        decoder_depth: decoder blocks.
        decoder_heads: decoder attention heads.
        norm_pix: per-patch normalised pixel targets.
    """

    def __init__(
        self,
        encoder: ViTEncoder | None = None,
        mask_ratio: float = 0.75,
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        norm_pix: bool = True,
    ) -> None:
        super().__init__()
        self.embedder = EncoderEmbedder(encoder if encoder is not None else ViTEncoder())
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.mask_ratio = mask_ratio
        self.decoder = MAEDecoder(self.encoder, decoder_dim, decoder_depth, decoder_heads)
        self.loss_function = MaskedPatchLoss(norm_pix=norm_pix)

    @property
    def encoder(self) -> ViTEncoder:
        """The ViT being pretrained (what transfer uses)."""
        return self.embedder.encoder

    def reconstruct(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask, encode and decode: ``(B, C, *img_size)`` -> predicted patches ``(B, N, P)`` and mask ``(B, N)``."""
        enc = self.encoder
        b = images.shape[0]
        keep_index, mask, restore_index = random_patch_mask(b, enc.num_patches, self.mask_ratio, images.device)
        latent, _ = enc.encode(images, keep_index=keep_index)
        return self.decoder(latent, restore_index), mask

    def forward(self, view1: torch.Tensor, view2: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """
        Args:
            view1: images ``(B, C, *img_size)``.
            view2: optional second view, ``(B, C, *img_size)``, used as B more samples.

        Returns:
            ``{"loss": reconstruction loss (fp32), "reconstruction": the same, "masked_fraction"}``.
        """
        images = view1 if view2 is None else torch.cat([view1, view2], dim=0)
        pred, mask = self.reconstruct(images)
        target = patchify(images, self.encoder.patch_size)
        loss = self.loss_function(pred, target, mask)
        return {"loss": loss, "reconstruction": loss.detach(), "masked_fraction": mask.mean().detach()}

    def update_target(self, progress: float) -> float:
        """MAE has no target network: nothing to update; returns momentum 0.0 for the engine's log."""
        return 0.0
