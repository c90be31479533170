"""Input quality gate: is an image's embedding like those of the images the model was trained on?

:class:`EmbeddingGate` holds the mean and a shrunk inverse covariance of in-distribution embeddings (frontal chest
radiographs of the training split) and a threshold at a quantile of their Mahalanobis distances; an embedding
farther than the threshold (a lateral view, a CT slice or localiser, a photograph) is out of distribution, and
the node then reports "not assessed" instead of a probability. The gate is fitted once per trained encoder
(``scripts/measure_quality_gate.py``) and saved with the bundle as a state dict (``models/quality_gate.pt``,
loaded with ``weights_only=True``).
"""

from __future__ import annotations

import os

import torch
from torch import nn

__all__ = ["EmbeddingGate"]


class EmbeddingGate(nn.Module):
    """Mahalanobis-distance out-of-distribution gate on embeddings ``(B, D)``.

    Args:
        dim: embedding dimension ``D``.

    Buffers: ``mean`` ``(D,)``, ``precision`` ``(D, D)`` (inverse of the shrunk covariance), ``threshold`` ``()``,
    ``quantile`` ``()`` (the fraction of the fit set within the threshold).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("precision", torch.eye(dim))
        self.register_buffer("threshold", torch.tensor(float("inf")))
        self.register_buffer("quantile", torch.tensor(1.0))

    @classmethod
    def fit(
        cls,
        embeddings: torch.Tensor,
        quantile: float = 0.99,
        shrinkage: float = 0.1,
        calibration: torch.Tensor | None = None,
    ) -> "EmbeddingGate":
        """A gate from in-distribution embeddings ``(N, D)``.

        Args:
            embeddings: in-distribution embeddings (e.g. the training split's), ``N >= 2``.
            quantile: fraction of the calibration embeddings whose distance is within the threshold (e.g. 0.99
                flags 1 % of in-distribution images).
            shrinkage: weight of the scaled identity in the covariance, ``(1 - s) * S + s * tr(S) / D * I``
                (keeps the inverse stable when ``N`` is not much larger than ``D``).
            calibration: other in-distribution embeddings ``(M, D)`` the threshold is taken from (default:
                ``embeddings`` themselves, whose distances are smaller than those of unseen images when ``N`` is
                not much larger than ``D``; a held-out part of the training split gives an honest false-alarm rate).

        Raises:
            ValueError: for fewer than two embeddings, a quantile outside (0, 1] or a shrinkage outside (0, 1].
        """
        x = torch.as_tensor(embeddings, dtype=torch.float64)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"need (N >= 2, D) embeddings to fit a gate, got shape {tuple(x.shape)}")
        if not 0.0 < quantile <= 1.0 or not 0.0 < shrinkage <= 1.0:
            raise ValueError(f"quantile and shrinkage must be in (0, 1], got {quantile} and {shrinkage}")
        gate = cls(x.shape[1])
        mean = x.mean(dim=0)
        centred = x - mean
        covariance = centred.T @ centred / (x.shape[0] - 1)
        scale = torch.trace(covariance) / x.shape[1]
        shrunk = (1.0 - shrinkage) * covariance + shrinkage * scale * torch.eye(x.shape[1], dtype=x.dtype)
        gate.mean.copy_(mean.float())
        gate.precision.copy_(torch.linalg.inv(shrunk).float())
        reference = x.float() if calibration is None else torch.as_tensor(calibration, dtype=torch.float32)
        gate.threshold.copy_(torch.quantile(gate(reference), quantile))
        gate.quantile.fill_(quantile)
        return gate

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EmbeddingGate":
        """A gate saved with ``torch.save(gate.state_dict(), path)``.

        Raises:
            ValueError: naming the file when it is not a gate's state dict.
        """
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not {"mean", "precision", "threshold", "quantile"} <= set(state):
            raise ValueError(f"{path}: not a quality gate state dict (mean, precision, threshold, quantile)")
        gate = cls(int(state["mean"].shape[0]))
        gate.load_state_dict(state)
        return gate

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distances ``(B,)`` of embeddings ``(B, D)`` to the in-distribution mean."""
        centred = embeddings.float() - self.mean
        return torch.sqrt(torch.clamp(((centred @ self.precision) * centred).sum(dim=1), min=0.0))

    def out_of_distribution(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B,)`` bool: whether each embedding is farther than the threshold."""
        return self(embeddings) > self.threshold
