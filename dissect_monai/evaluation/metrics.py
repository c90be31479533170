"""Metrics of the evaluation protocol: ROC AUC (overall and per group) and the one mean +- sd over seeds / images."""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from monai.metrics import compute_roc_auc

__all__ = ["MeanStd", "format_mean_std", "mean_std", "roc_auc", "roc_auc_by_group"]


def roc_auc(y_true: Sequence[float] | np.ndarray, y_score: Sequence[float] | np.ndarray) -> float:
    """MONAI's binary ROC AUC of scores ``(N,)`` against 0/1 labels ``(N,)``; NaN when only one class is present.

    Raises:
        ValueError: when labels and scores differ in shape.
    """
    y_true = np.asarray(y_true).astype(int).ravel()
    y_score = np.asarray(y_score, dtype=float).ravel()
    if y_true.shape != y_score.shape:
        raise ValueError(f"labels {y_true.shape} and scores {y_score.shape} differ in shape.")
    if len(np.unique(y_true)) < 2:
        return float("nan")
    return float(compute_roc_auc(torch.as_tensor(y_score, dtype=torch.float64), torch.as_tensor(y_true)))


def roc_auc_by_group(
    y_true: Sequence[float] | np.ndarray, y_score: Sequence[float] | np.ndarray, groups: Sequence[Hashable]
) -> dict[str, float]:
    """ROC AUC within each group (e.g. view ``AP`` / ``PA``), keyed by ``str(group)``; NaN for one-class groups."""
    y_true, y_score, groups = np.asarray(y_true).ravel(), np.asarray(y_score).ravel(), np.asarray(groups).ravel()
    if not len(y_true) == len(y_score) == len(groups):
        raise ValueError(
            f"labels ({len(y_true)}), scores ({len(y_score)}) and groups ({len(groups)}) differ in length."
        )
    return {str(g): roc_auc(y_true[groups == g], y_score[groups == g]) for g in sorted(set(groups.tolist()), key=str)}


@dataclass(frozen=True)
class MeanStd:
    """Mean, sample standard deviation (``ddof=1``; 0 for one value) and count of the finite values summarised."""

    mean: float
    std: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def mean_std(values: Iterable[float | None]) -> MeanStd:
    """The project's one mean +- sd: over the finite values (``None`` / NaN / inf dropped), sample sd (``ddof=1``).

    Every table of the protocol (seeds of a cell, test images of a run) is summarised by this, so spreads compare.
    No finite value gives ``MeanStd(nan, nan, 0)``.
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return MeanStd(float("nan"), float("nan"), 0)
    return MeanStd(float(np.mean(finite)), float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0, len(finite))


def format_mean_std(stat: MeanStd | Mapping | None, digits: int = 3, expected_n: int | None = None) -> str:
    """``"0.850 ± 0.071"`` for a :class:`MeanStd` (or its dict); ``"—"`` without values; ``"0.850 (n=1)"`` for one
    value; `` (n=k)`` is appended when ``expected_n`` is given and the count differs from it (a partial cell)."""
    if isinstance(stat, Mapping):
        stat = MeanStd(**{k: stat[k] for k in ("mean", "std", "n")}) if stat.get("n") else None
    if stat is None or stat.n == 0:
        return "—"
    if stat.n == 1:
        return f"{stat.mean:.{digits}f} (n=1)"
    partial = f" (n={stat.n})" if expected_n is not None and stat.n != expected_n else ""
    return f"{stat.mean:.{digits}f} ± {stat.std:.{digits}f}{partial}"
