"""Ignite handlers of the classification bundle: a test report (ROC AUC overall, per class and per group, with a
ROC plot). Per-image probabilities are written by MONAI's ``SaveClassificationd`` (``configs/inference_files.yaml``)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers.utils import from_engine
from monai.metrics import compute_roc_auc

from dissect_monai.utils.serialization import json_safe
from dissect_monai.viz.plots import roc_curves_plot

__all__ = ["ClassificationReport"]


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """MONAI's ROC AUC of scores ``(N,)`` against 0/1 labels ``(N,)`` (NaN when one class is present)."""
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(compute_roc_auc(torch.as_tensor(scores, dtype=torch.float64), torch.as_tensor(labels).long()))


def _batch_items(batch: Any) -> list[Mapping]:
    """The per-item dicts of an engine batch (decollated list, or a collated dict of lists/tensors)."""
    if isinstance(batch, Mapping):
        n = len(next(iter(batch.values())))
        return [{k: v[i] for k, v in batch.items()} for i in range(n)]
    return list(batch)


def _as_2d(values: list) -> np.ndarray:
    """Stack per-item predictions/labels (tensors ``(K,)`` or scalars) into ``(N, K)`` float64."""
    rows = [
        np.asarray(v.detach().float().cpu() if isinstance(v, torch.Tensor) else v, dtype=float).ravel()
        for v in values
    ]
    return np.stack(rows) if rows else np.zeros((0, 0))


class ClassificationReport:
    """Ignite handler: after an evaluation epoch, write ROC AUC overall, per class and per group + a ROC plot.

    Collects per item the post-processed ``pred`` (probabilities ``(K,)``), the ``label`` ``(K,)`` and,
    when ``group_key`` is in the batch items (e.g. ``"view"`` with values AP / PA), the group; at
    ``EPOCH_COMPLETED`` writes ``<output_dir>/<prefix>metrics.json``::

        {"n": N, "classes": [...], "auc": {"<class>": a, ...}, "auc_macro": m,
         "auc_by_<group_key>": {"AP": {"<class>": a, ..., "n": n}, ...}, "accuracy_at_0.5": {...}}

    and ``<output_dir>/<prefix>roc.png``. AUCs are NaN (``null`` in JSON) for classes with one label value.

    Args:
        output_dir: folder for the outputs (created).
        class_names: names of the K outputs, in order.
        group_key: batch item key for per-group AUCs; ``None`` to skip.
        output_transform: engine output -> ``(preds, labels)`` lists.
        prefix: file-name prefix.
    """

    def __init__(
        self,
        output_dir: str | Path,
        class_names: Sequence[str],
        group_key: str | None = "view",
        output_transform: Callable = from_engine(["pred", "label"]),
        prefix: str = "",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.group_key = group_key
        self.output_transform = output_transform
        self.prefix = prefix
        self.report: dict[str, Any] = {}
        self._preds: list = []
        self._labels: list = []
        self._groups: list = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._preds, self._labels, self._groups = [], [], []

    def _collect(self, engine: Engine) -> None:
        preds, labels = self.output_transform(engine.state.output)
        self._preds.extend(list(preds))
        self._labels.extend(list(labels))
        if self.group_key is not None:
            self._groups.extend(item.get(self.group_key) for item in _batch_items(engine.state.batch))

    def compute(self, preds: np.ndarray, labels: np.ndarray, groups: Sequence | None) -> dict[str, Any]:
        """The report dict for probabilities and labels ``(N, K)`` and optional groups ``(N,)``."""
        if preds.shape != labels.shape or preds.shape[1] != len(self.class_names):
            raise ValueError(
                f"predictions {preds.shape} and labels {labels.shape} must both be (N, {len(self.class_names)})."
            )
        aucs = {name: _auc(labels[:, k], preds[:, k]) for k, name in enumerate(self.class_names)}
        finite = [a for a in aucs.values() if not math.isnan(a)]
        report: dict[str, Any] = {
            "n": int(len(preds)),
            "classes": self.class_names,
            "auc": aucs,
            "auc_macro": float(np.mean(finite)) if finite else float("nan"),
            "accuracy_at_0.5": {
                name: float(((preds[:, k] >= 0.5) == (labels[:, k] >= 0.5)).mean())
                for k, name in enumerate(self.class_names)
            },
        }
        if groups is not None and any(g is not None for g in groups):
            groups_arr = np.asarray([str(g) for g in groups])
            by_group: dict[str, dict[str, float]] = {}
            for g in sorted(set(groups_arr.tolist())):
                sel = groups_arr == g
                by_group[g] = {name: _auc(labels[sel, k], preds[sel, k]) for k, name in enumerate(self.class_names)}
                by_group[g]["n"] = int(sel.sum())
            report[f"auc_by_{self.group_key}"] = by_group
        return report

    def _write(self, engine: Engine) -> None:
        preds, labels = _as_2d(self._preds), _as_2d(self._labels)
        self.report = self.compute(preds, labels, self._groups if self.group_key is not None else None)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / f"{self.prefix}metrics.json", "w", encoding="utf-8") as f:
            json.dump(json_safe(self.report), f, indent=2)
        roc_curves_plot(labels, preds, self.report["auc"], self.output_dir / f"{self.prefix}roc.png", title="test ROC")
