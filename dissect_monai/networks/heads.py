"""Projector / predictor MLPs of joint-embedding SSL (BYOL layout: Linear-BN-ReLU blocks, plain last Linear)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLPHead"]


class MLPHead(nn.Module):
    """``in_dim -> hidden_dims... -> out_dim`` MLP; every hidden layer is Linear (no bias) + BatchNorm1d + ReLU.

    BYOL's projector is ``MLPHead(512, 4096, 256)`` and its predictor ``MLPHead(256, 4096, 256)``.

    Args:
        in_dim: input features.
        hidden_dims: width of each hidden layer (one int for a single hidden layer).
        out_dim: output features.
        last_bias: bias on the output layer.
    """

    def __init__(
        self, in_dim: int, hidden_dims: int | Sequence[int] = 4096, out_dim: int = 256, last_bias: bool = True
    ) -> None:
        super().__init__()
        hidden = [hidden_dims] if isinstance(hidden_dims, int) else list(hidden_dims)
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h, bias=False), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Linear(width, out_dim, bias=last_bias))
        self.layers = nn.Sequential(*layers)
        self.in_dim = in_dim
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_dim) -> (B, out_dim)``."""
        return self.layers(x)
