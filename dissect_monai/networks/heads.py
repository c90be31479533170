"""Heads of the SSL methods: projector / predictor / expander MLPs and DINO's prototype head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DINOHead", "MLPHead"]


class MLPHead(nn.Module):
    """``in_dim -> hidden_dims... -> out_dim`` MLP; every hidden layer is Linear + BatchNorm1d + ReLU.

    BYOL's projector is ``MLPHead(512, 4096, 256)`` and its predictor ``MLPHead(256, 4096, 256)``; VICReg's and
    MLVICX's expanders have several hidden layers; CoBooM's fuse MLP has no normalisation.

    Args:
        in_dim: input features.
        hidden_dims: width of each hidden layer (one int for a single hidden layer).
        out_dim: output features.
        last_bias: bias on the output layer.
        batch_norm: BatchNorm1d after each hidden Linear (which then has no bias); False: Linear (with bias) + ReLU.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: int | Sequence[int] = 4096,
        out_dim: int = 256,
        last_bias: bool = True,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        hidden = [hidden_dims] if isinstance(hidden_dims, int) else list(hidden_dims)
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h, bias=not batch_norm)]
            layers += [nn.BatchNorm1d(h)] if batch_norm else []
            layers += [nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Linear(width, out_dim, bias=last_bias))
        self.layers = nn.Sequential(*layers)
        self.in_dim = in_dim
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_dim) -> (B, out_dim)``."""
        return self.layers(x)


class DINOHead(nn.Module):
    """DINO projection head: MLP (GELU) to an L2-normalised bottleneck, then a weight-normalised linear layer
    (norm fixed to 1) to ``out_dim`` prototype logits.

    Args:
        in_dim: input size (the ViT width).
        out_dim: number of prototypes K.
        hidden_dim: MLP hidden width.
        bottleneck_dim: bottleneck size before the prototypes.
        num_layers: MLP layers (>= 1).
    """

    def __init__(
        self, in_dim: int, out_dim: int = 4096, hidden_dim: int = 1024, bottleneck_dim: int = 256, num_layers: int = 3
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(width, hidden_dim), nn.GELU()]
            width = hidden_dim
        layers.append(nn.Linear(width, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_dim)`` -> logits ``(B, out_dim)``."""
        x = F.normalize(self.mlp(x), dim=-1)
        return F.linear(x, F.normalize(self.prototypes, dim=-1))
