"""Probes on frozen features: a standardised logistic regression with C picked on validation, and a cosine kNN."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from dissect_monai.evaluation.metrics import roc_auc

__all__ = ["DEFAULT_CS", "LogisticProbe", "fit_logistic_probe", "knn_accuracy"]

#: inverse regularisation strengths tried by :func:`fit_logistic_probe` (features are standardised first).
DEFAULT_CS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


@dataclass
class LogisticProbe:
    """A standardise + logistic-regression classifier fitted on frozen features, with the C picked on val."""

    model: Pipeline
    c: float
    val_auc: float
    val_aucs: dict[float, float]

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Probability of the positive class, ``(N,)``, for features ``x`` ``(N, D)``."""
        return self.model.predict_proba(x)[:, 1]


def fit_logistic_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    cs: Sequence[float] = DEFAULT_CS,
    max_iter: int = 2000,
) -> LogisticProbe:
    """Fit an L2 logistic regression on standardised features for each C in ``cs``; keep the best val ROC AUC.

    Args:
        train_x: ``(N, D)`` training features; train_y: ``(N,)`` 0/1 labels with both classes present.
        val_x: ``(M, D)`` validation features; val_y: ``(M,)`` 0/1 labels with both classes present.
        cs: inverse regularisation strengths to try (ties go to the smaller, i.e. stronger, regularisation).

    Raises:
        ValueError: when train or val labels contain a single class.
    """
    train_y, val_y = np.asarray(train_y).astype(int).ravel(), np.asarray(val_y).astype(int).ravel()
    for name, y in (("train", train_y), ("val", val_y)):
        if len(np.unique(y)) < 2:
            raise ValueError(f"{name} labels hold a single class ({np.unique(y).tolist()}); a probe needs both.")
    best: LogisticProbe | None = None
    val_aucs: dict[float, float] = {}
    for c in sorted(cs):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
        model.fit(train_x, train_y)
        auc = roc_auc(val_y, model.predict_proba(val_x)[:, 1])
        val_aucs[float(c)] = auc
        if best is None or auc > best.val_auc:
            best = LogisticProbe(model=model, c=float(c), val_auc=auc, val_aucs=val_aucs)
    assert best is not None
    return best


def knn_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, k: int = 20
) -> float:
    """Accuracy of a majority-vote kNN on cosine similarity (features L2-normalised), ``k`` neighbours.

    Ties in the vote go to the class of the nearest neighbour among the tied classes' members.
    ``k`` is capped at the number of training samples.
    """
    train_y, test_y = np.asarray(train_y).astype(int).ravel(), np.asarray(test_y).astype(int).ravel()
    k = min(k, len(train_x))
    a = torch.nn.functional.normalize(torch.as_tensor(train_x, dtype=torch.float32), dim=1)
    b = torch.nn.functional.normalize(torch.as_tensor(test_x, dtype=torch.float32), dim=1)
    idx = (b @ a.T).topk(k, dim=1).indices.numpy()  # (M, k), nearest first
    neighbours = train_y[idx]
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    votes = np.stack([(neighbours == c).sum(1) for c in range(n_classes)], axis=1)
    top = votes.max(1, keepdims=True)
    tied = votes == top
    # among tied classes, the one whose member appears first in the ranked neighbour list
    first_rank = np.where(neighbours[:, :, None] == np.arange(n_classes)[None, None], np.arange(k)[None, :, None], k)
    first_rank = first_rank.min(1)
    pred = np.where(tied, first_rank, k + 1).argmin(1)
    return float((pred == test_y).mean())
