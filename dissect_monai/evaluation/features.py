"""Frozen features of an encoder for probes: batched, under the precision policy, returned as fp32 numpy."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from dissect_monai.utils.precision import PrecisionPolicy, resolve_precision

__all__ = ["extract_features"]


@torch.no_grad()
def extract_features(
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    batch_size: int = 256,
    precision: str | PrecisionPolicy = "auto",
) -> np.ndarray:
    """Frozen features of ``images`` ``(N, C, H, W)`` as a float32 array ``(N, D)``.

    ``feature_fn`` maps a batch ``(B, C, H, W)`` to ``(B, D)`` (e.g. ``EncoderClassifier.features`` of a
    model in eval mode); it runs under the precision policy (bf16 autocast + channels_last where fast)
    and its output is cast back to fp32.
    """
    policy = resolve_precision(precision, images.device)
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = policy.format_input(images[start:start + batch_size])
        with policy.autocast():
            chunks.append(feature_fn(batch).float().cpu())
    return torch.cat(chunks).numpy()
