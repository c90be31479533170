"""Result plots: ROC curves of a classifier and label-efficiency curves (test metric against labelled fraction)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from dissect_monai.viz.panels import save  # noqa: E402

#: loss terms drawn when a run logs them (the SSL methods' terms)
PRETRAINING_LOSS_TERMS = ("loss", "continuous_loss", "discrete_loss", "commitment_loss", "consistency_loss")

__all__ = ["label_efficiency_plot", "pretraining_curves_plot", "roc_curves_plot"]


def roc_curves_plot(
    y_true: np.ndarray, y_score: np.ndarray, aucs: Mapping[str, float], path: str | Path, title: str = ""
) -> Path:
    """Save ROC curves of labels / scores ``(N, K)`` to a PNG, one curve per class of ``aucs`` (name -> AUC, in
    column order); classes whose AUC is NaN (one label value) are left out."""
    y_true, y_score = np.asarray(y_true).reshape(len(y_true), -1), np.asarray(y_score).reshape(len(y_score), -1)
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    for k, (name, auc) in enumerate(aucs.items()):
        if math.isnan(auc):
            continue
        fpr, tpr, _ = roc_curve(y_true[:, k].astype(int), y_score[:, k])
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title or "ROC", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right", fontsize=7)
    return save(fig, path, dpi=120)


def label_efficiency_plot(
    panels: Mapping[str, Mapping[str, Sequence[tuple[float, float, float]]]],
    path: str | Path,
    ylabel: str = "test ROC AUC",
    references: Mapping[str, tuple[str, float]] | None = None,
    dashed: Sequence[str] = (),
) -> Path:
    """One panel per benchmark: a line per row through ``(fraction, mean, std)`` points (fractions in (0, 1], drawn
    in % on a log axis, std as error bars), one colour per row across panels.

    Args:
        panels: ``{panel title: {row label: [(fraction, mean, std), ...]}}``.
        path: the PNG to write.
        ylabel: the metric's name.
        references: ``{panel title: (label, value)}``: a dotted horizontal line (e.g. a published figure).
        dashed: row labels drawn dashed (reference rows).
    """
    if not panels:
        raise ValueError(f"no panels to draw into {path}")
    rows = list(dict.fromkeys(label for curves in panels.values() for label in curves))
    colours = {label: plt.cm.tab20(i % 20) for i, label in enumerate(rows)}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.4), squeeze=False)
    fractions = sorted({f for curves in panels.values() for points in curves.values() for f, _, _ in points})
    for ax, (title, curves) in zip(axes[0], panels.items()):
        for label, points in curves.items():
            if not points:
                continue
            f, m, s = zip(*sorted(points))
            ax.errorbar([x * 100 for x in f], m, yerr=s, marker="o", capsize=3, label=label, color=colours[label],
                        linestyle="--" if label in dashed else "-")
        if references and title in references:
            name, value = references[title]
            ax.axhline(value, color="k", ls=":", lw=1, label=name)
        ax.set(xscale="log", xlabel="labelled train fraction (%)", ylabel=ylabel, title=title)
        if fractions:
            ax.set_xticks([f * 100 for f in fractions], [f"{f * 100:g}" for f in fractions])
        ax.grid(alpha=0.3)
    handles = {lab: h for ax in axes[0] for h, lab in zip(*ax.get_legend_handles_labels())}
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    return save(fig, path, dpi=120)


def pretraining_curves_plot(summaries: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Loss terms per iteration of every run, and codebook perplexity / usage per scale of the runs that have a
    quantizer (the ``_iterations`` of :func:`dissect_monai.evaluation.pretraining.summarise_run`)."""
    dissect = [s for s in summaries if any(k.startswith("codebook/") for it in s["_iterations"][:1] for k in it)]
    scales = sorted({k[len("codebook/"):-len("_perplexity")] for s in dissect for k in s["_iterations"][0]
                     if k.startswith("codebook/") and k.endswith("_perplexity")})
    ncols = 3 if scales else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 4), squeeze=False)
    ax = axes[0][0]
    for s in summaries:
        its = s["_iterations"]
        for term in PRETRAINING_LOSS_TERMS:
            if its and term in its[0]:
                style = "-" if term == "loss" else "--"
                ax.plot([r["iteration"] for r in its], [r[term] for r in its], style, label=f"{s['run']} {term}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title("SSL loss terms")
    ax.legend(fontsize=7)
    for col, stat in enumerate(("perplexity", "usage"), start=1):
        if col >= ncols:
            break
        ax = axes[0][col]
        for s in dissect:
            its = s["_iterations"]
            for scale in scales:
                key = f"codebook/{scale}_{stat}"
                ax.plot([r["iteration"] for r in its], [r[key] for r in its], label=f"{s['run']} {scale}")
        ax.set_xlabel("iteration")
        ax.set_title(f"codebook {stat} per scale (last batch)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path, dpi=120)
