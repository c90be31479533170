"""Evaluation of classifiers and frozen representations: ROC AUC (overall / per group), logistic-regression
probe with C chosen on validation, kNN accuracy, and Ignite handlers writing reports and probabilities."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers.utils import from_engine
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from dissect_monai.utils.precision import PrecisionPolicy, resolve_precision

__all__ = [
    "DEFAULT_CS",
    "ClassificationReport",
    "FinetuneResult",
    "LogisticProbe",
    "ProbabilityWriter",
    "extract_features",
    "finetune_classifier",
    "fit_logistic_probe",
    "json_safe",
    "knn_accuracy",
    "plot_roc_curves",
    "roc_auc",
    "roc_auc_by_group",
]

#: inverse regularisation strengths tried by :func:`fit_logistic_probe` (features are standardised first).
DEFAULT_CS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def roc_auc(y_true: Sequence[float] | np.ndarray, y_score: Sequence[float] | np.ndarray) -> float:
    """Binary ROC AUC of scores ``(N,)`` against 0/1 labels ``(N,)``; NaN when only one class is present."""
    y_true = np.asarray(y_true).astype(int).ravel()
    y_score = np.asarray(y_score, dtype=float).ravel()
    if y_true.shape != y_score.shape:
        raise ValueError(f"labels {y_true.shape} and scores {y_score.shape} differ in shape.")
    if len(np.unique(y_true)) < 2:
        return float("nan")
    return float(roc_auc_score(y_true, y_score))


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


@dataclass
class FinetuneResult:
    """Outcome of :func:`finetune_classifier`: best validation AUC, the step it was reached at, the history."""

    best_val_auc: float
    best_step: int
    history: list[tuple[int, float]]


def _random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image of ``x`` ``(B, C, H, W)`` by up to ``max_shift`` pixels (reflect padding)."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, [max_shift] * 4, mode="reflect")
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


def finetune_classifier(
    model: torch.nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    encoder_lr: float | None = None,
    weight_decay: float = 1e-4,
    evaluations: int = 5,
    max_shift: int = 4,
    seed: int = 0,
    precision: str | PrecisionPolicy = "auto",
) -> FinetuneResult:
    """Train ``model`` (e.g. :class:`~dissect_monai.networks.classification.EncoderClassifier`) on in-memory images.

    AdamW with a cosine learning-rate decay, binary cross-entropy per class, random shifts of up to
    ``max_shift`` pixels as augmentation, under the precision policy. The validation ROC AUC (macro over
    classes) is measured ``evaluations`` times, evenly spaced (always at the last step); the weights of
    the best one are loaded back into ``model`` (selection on validation only).

    Args:
        model: maps ``(B, C, H, W)`` to logits ``(B, K)``; with a ``parameter_groups(lr, encoder_lr)`` method
            the encoder gets ``encoder_lr`` (default ``lr``).
        train_x: ``(N, C, H, W)`` float images; train_y: ``(N, K)`` 0/1 targets.
        val_x: ``(M, C, H, W)``; val_y: ``(M, K)``.
        steps: optimizer steps (batches of ``batch_size`` drawn by reshuffling epochs).
    """
    policy = resolve_precision(precision, train_x.device)
    generator = torch.Generator().manual_seed(seed)
    params = (
        model.parameter_groups(lr, lr if encoder_lr is None else encoder_lr)
        if hasattr(model, "parameter_groups")
        else [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]
    )
    optimizer = torch.optim.AdamW(params, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    train_y, val_y = train_y.float().reshape(len(train_y), -1), val_y.float().reshape(len(val_y), -1)
    eval_steps = {max(1, round(steps * (i + 1) / evaluations)) for i in range(evaluations)}
    order: list[int] = []
    best = FinetuneResult(best_val_auc=float("-inf"), best_step=0, history=[])
    best_state = None
    for step in range(1, steps + 1):
        if len(order) < batch_size:
            order += torch.randperm(len(train_x), generator=generator).tolist()
        idx, order = order[:batch_size], order[batch_size:]
        model.train()
        x = policy.format_input(_random_shift(train_x[idx], max_shift, generator))
        with policy.autocast():
            logits = model(x)
        loss = loss_fn(logits.float(), train_y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step in eval_steps:
            model.eval()
            probs = torch.sigmoid(torch.as_tensor(extract_features(model, val_x, precision=policy))).numpy()
            aucs = [roc_auc(val_y[:, k].numpy(), probs[:, k]) for k in range(val_y.shape[1])]
            finite = [a for a in aucs if not math.isnan(a)]
            auc = float(np.mean(finite)) if finite else float("nan")
            best.history.append((step, auc))
            if best_state is None or auc > best.best_val_auc:
                best.best_val_auc, best.best_step = auc, step
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return best


def plot_roc_curves(
    y_true: np.ndarray, y_score: np.ndarray, class_names: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Save ROC curves (one per class with both classes present) of labels/scores ``(N, K)`` to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y_true, y_score = np.asarray(y_true).reshape(len(y_true), -1), np.asarray(y_score).reshape(len(y_score), -1)
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    for k, name in enumerate(class_names):
        auc = roc_auc(y_true[:, k], y_score[:, k])
        if math.isnan(auc):
            continue
        fpr, tpr, _ = roc_curve(y_true[:, k].astype(int), y_score[:, k])
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title or "ROC", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
        aucs = {name: roc_auc(labels[:, k], preds[:, k]) for k, name in enumerate(self.class_names)}
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
                by_group[g] = {name: roc_auc(labels[sel, k], preds[sel, k]) for k, name in enumerate(self.class_names)}
                by_group[g]["n"] = int(sel.sum())
            report[f"auc_by_{self.group_key}"] = by_group
        return report

    def _write(self, engine: Engine) -> None:
        preds, labels = _as_2d(self._preds), _as_2d(self._labels)
        self.report = self.compute(preds, labels, self._groups if self.group_key is not None else None)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / f"{self.prefix}metrics.json", "w", encoding="utf-8") as f:
            json.dump(json_safe(self.report), f, indent=2)
        plot_roc_curves(labels, preds, self.class_names, self.output_dir / f"{self.prefix}roc.png", title="test ROC")


class ProbabilityWriter:
    """Ignite handler: write each item's class probabilities, by class name, as JSON.

    For every item of a batch, ``<output_dir>/<input file stem>.json`` gets
    ``{"source": <input file name>, "probabilities": {"<class>": p, ...}}``, where the input file comes
    from the image's ``filename_or_obj`` meta data; file stems are sanitised (only ``[A-Za-z0-9._-]``).
    All results of the run are also kept in ``self.results``.

    Args:
        output_dir: folder for the JSON files (created).
        class_names: names of the K outputs, in order (e.g. the metadata's ``channel_def``).
        image_key: batch item key of the input image (its meta gives the file name).
        output_transform: engine output -> list of per-item probability tensors ``(K,)``.
    """

    def __init__(
        self,
        output_dir: str | Path,
        class_names: Sequence[str],
        image_key: str = "image",
        output_transform: Callable = from_engine(["pred"]),
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.image_key = image_key
        self.output_transform = output_transform
        self.results: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        preds = self.output_transform(engine.state.output)
        items = _batch_items(engine.state.batch)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for pred, item in zip(preds, items):
            probs = np.asarray(pred.detach().float().cpu() if isinstance(pred, torch.Tensor) else pred).ravel()
            if probs.size != len(self.class_names):
                raise ValueError(
                    f"prediction has {probs.size} values but {len(self.class_names)} class names were given."
                )
            source = _source_name(item.get(self.image_key))
            result = {"source": source, "probabilities": dict(zip(self.class_names, map(float, probs)))}
            self.results.append(result)
            stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(source).stem if source else f"item{len(self.results)}")
            with open(self.output_dir / f"{stem}.json", "w", encoding="utf-8") as f:
                json.dump(result, f, indent=2)


def _source_name(image: Any) -> str:
    """File name (no directories) of an image's ``filename_or_obj`` meta data, or ``""``."""
    meta = getattr(image, "meta", None) or {}
    name = meta.get("filename_or_obj", "")
    return Path(str(name)).name if name else ""


def json_safe(obj: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, recursively, for strict JSON."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
