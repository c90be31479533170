"""Pieces every self-supervised method shares: target-momentum schedule, EMA update of a target network, pooling."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["cosine_momentum", "ema_update", "global_pool", "pooled_codes"]


def cosine_momentum(progress: float, base: float = 0.996, final: float = 1.0) -> float:
    """BYOL's target momentum ``final - (final - base) * (cos(pi * progress) + 1) / 2``, progress clipped to [0, 1]."""
    progress = min(max(float(progress), 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


@torch.no_grad()
def ema_update(pairs: Iterable[tuple[nn.Module, nn.Module]], momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * online`` for every parameter of each ``(online, target)``.

    Args:
        pairs: online modules and their target copies (same architecture, parameters in the same order).
        momentum: in [0, 1]; 1 keeps the targets unchanged.

    Raises:
        ValueError: an online module and its target do not have the same parameter shapes.
    """
    for online, target in pairs:
        online_params, target_params = list(online.parameters()), list(target.parameters())
        if [p.shape for p in online_params] != [p.shape for p in target_params]:
            raise ValueError(
                f"EMA target {type(target).__name__} does not have the parameters of {type(online).__name__}"
            )
        for po, pt in zip(online_params, target_params):
            pt.mul_(momentum).add_(po.detach(), alpha=1.0 - momentum)


def global_pool(feature_map: torch.Tensor) -> torch.Tensor:
    """Mean over all spatial positions: ``(B, C, *S) -> (B, C)``, in the map's own memory order.

    A channels-last map (the encoder's under bf16, the quantizer's always) is averaged as its
    ``(B, positions, C)`` rows, others as ``(B, C, positions)``: neither the map nor its gradient is copied
    into the other layout. TorchScript-able.
    """
    if feature_map.stride(1) == 1:
        return torch.movedim(feature_map, 1, -1).reshape(feature_map.shape[0], -1, feature_map.shape[1]).mean(dim=1)
    return feature_map.flatten(2).mean(dim=2)


def pooled_codes(quantised: list[torch.Tensor]) -> torch.Tensor:
    """DiSSECT's pooled-code descriptor: each quantised map ``(B, D_i, *S_i)`` averaged over positions, concatenated,
    ``(B, sum(D_i))``. TorchScript-able."""
    return torch.cat([global_pool(q) for q in quantised], dim=1)
