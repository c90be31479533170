"""DINO (Caron et al., ICCV 2021) on a :class:`ViTEncoder`: self-distillation with multi-crop and centring."""

from __future__ import annotations

import copy

import torch
from torch import nn

from dissect_monai.losses.dino import DINOLoss
from dissect_monai.networks.embedder import EncoderEmbedder
from dissect_monai.networks.heads import DINOHead
from dissect_monai.networks.ssl_utils import cosine_momentum, ema_update
from dissect_monai.networks.vit import ViTEncoder
from dissect_monai.transforms.batched import random_resized_crops

__all__ = ["DINO"]


class DINO(nn.Module):
    """DINO: a student ViT + head matches the centred, sharpened output of an EMA teacher over views.

    ``forward(view1, view2)`` takes the two global views (the engine's two views); ``num_local_crops``
    local crops of ``local_size`` px are cut from the global views on the fly (random resized crops,
    ``local_scale`` of the area; alternating between view 1 and view 2) and go through the student only
    (the ViT interpolates its position embeddings to their grid). The teacher sees the global views.
    :class:`DINOLoss` centres the teacher output (EMA of batch means) and warms its temperature up from
    0.04 to 0.07 over the first ``warmup_fraction`` of training (``progress`` from :meth:`update_target`).

    Args:
        encoder: the ViT (default ``ViTEncoder()`` with a class token); its class token is the embedding.
        out_dim: prototypes K (65536 in the paper; smaller here).
        hidden_dim: head MLP width.
        bottleneck_dim: head bottleneck.
        num_local_crops: local crops per image.
        local_size: local crop edge in px (divisible by the patch size).
        local_scale: area range of the local crops.
        student_temp / teacher_temp / warmup_teacher_temp / warmup_fraction / center_momentum: see :class:`DINOLoss`.
        base_momentum: teacher EMA momentum at the start (0.996), cosine schedule to ``final_momentum`` (1.0).
        final_momentum: teacher momentum at the end.
    """

    def __init__(
        self,
        encoder: ViTEncoder | None = None,
        out_dim: int = 4096,
        hidden_dim: int = 1024,
        bottleneck_dim: int = 256,
        num_local_crops: int = 4,
        local_size: int = 32,
        local_scale: tuple[float, float] = (0.05, 0.4),
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        warmup_fraction: float = 0.3,
        center_momentum: float = 0.9,
        base_momentum: float = 0.996,
        final_momentum: float = 1.0,
    ) -> None:
        super().__init__()
        self.embedder = EncoderEmbedder(encoder if encoder is not None else ViTEncoder())
        if self.encoder.cls_token is None:
            raise ValueError("DINO needs a ViTEncoder with a class token (class_token=True)")
        self.head = DINOHead(self.encoder.feature_dim, out_dim, hidden_dim, bottleneck_dim)
        self.teacher_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.loss_function = DINOLoss(
            out_dim, student_temp, teacher_temp, warmup_teacher_temp, warmup_fraction, center_momentum
        )
        self.num_local_crops = num_local_crops
        self.local_size = local_size
        self.local_scale = tuple(local_scale)
        self.base_momentum = base_momentum
        self.final_momentum = final_momentum
        self.register_buffer("progress", torch.zeros(()))

    @property
    def encoder(self) -> ViTEncoder:
        """The student ViT (what transfer uses)."""
        return self.embedder.encoder

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            view1: first global views ``(B, C, H, W)``.
            view2: second global views, same shape.

        Returns:
            ``{"loss", "dino_loss", "teacher_temperature"}`` (fp32 scalars).
        """
        if view1.shape != view2.shape:
            raise ValueError(
                f"the two views must have the same shape, got {tuple(view1.shape)} and {tuple(view2.shape)}"
            )
        b = view1.shape[0]
        global_views = torch.cat([view1, view2])
        student = list(self.head(self.encoder(global_views)).chunk(2))
        if self.num_local_crops > 0:
            sources = [view1, view2]
            local = torch.cat([
                random_resized_crops(sources[i % 2], self.local_size, self.local_scale)
                for i in range(self.num_local_crops)
            ])
            student += list(self.head(self.encoder(local)).split(b))
        with torch.no_grad():
            teacher = list(self.teacher_head(self.teacher_encoder(global_views)).chunk(2))
        progress = float(self.progress)
        loss = self.loss_function(student, teacher, progress)
        if self.training:
            self.loss_function.update_center(teacher)
        temperature = torch.tensor(self.loss_function.teacher_temperature(progress))
        return {"loss": loss, "dino_loss": loss.detach(), "teacher_temperature": temperature}

    @torch.no_grad()
    def update_target(self, progress: float) -> float:
        """EMA of student into teacher (cosine momentum at ``progress``); stores ``progress`` for the temperature."""
        self.progress.fill_(float(progress))
        m = cosine_momentum(progress, self.base_momentum, self.final_momentum)
        ema_update([(self.encoder, self.teacher_encoder), (self.head, self.teacher_head)], m)
        return m
