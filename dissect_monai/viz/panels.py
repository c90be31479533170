"""PNG panels of the maps of :mod:`dissect_monai.viz.maps` (matplotlib, Agg backend, no display needed).

Images and maps come in MONAI's axis order (first spatial axis = image column, as loaded by
:class:`dissect_monai.data.MedicalImageReader`) and are shown with rows down, as the image is displayed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["code_map_panel", "comparison_panel", "method_panel", "save", "typical_patches_panel"]


def _display(array: np.ndarray) -> np.ndarray:
    """``(W, H[, 3])`` in MONAI's axis order -> ``(H, W[, 3])`` for ``imshow``."""
    return np.swapaxes(array, 0, 1)


def _show(ax, image: np.ndarray, title: str | None = None, **kwargs) -> None:
    ax.imshow(_display(image), **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def _upsample(grid_map: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour upsampling of a ``(w, h[, 3])`` map to the image size (cells stay visible)."""
    rows = np.arange(size[0]) * grid_map.shape[0] // size[0]
    cols = np.arange(size[1]) * grid_map.shape[1] // size[1]
    return grid_map[rows][:, cols]


def _show_similarity(ax, similarity: np.ndarray, size: Sequence[int], title: str | None = None) -> None:
    """A cosine-similarity map stretched over its own range (printed under it), so structure shows even
    when all values are close (e.g. a ViT whose tokens share a large common component)."""
    low, high = float(similarity.min()), float(similarity.max())
    _show(ax, _upsample(similarity, size), title, cmap="magma", vmin=low, vmax=max(high, low + 1e-6))
    ax.set_xlabel(f"cos {low:.2f} .. {high:.2f}", fontsize=6, labelpad=1)


def _mark(ax, anchor: tuple[int, int], grid: Sequence[int], size: Sequence[int]) -> None:
    cx = (anchor[0] + 0.5) * size[0] / grid[0]
    cy = (anchor[1] + 0.5) * size[1] / grid[1]
    ax.plot([cx], [cy], marker="+", color="red", markersize=8, markeredgewidth=1.5)


def method_panel(
    title: str,
    images: np.ndarray,
    similarity: np.ndarray,
    pca: np.ndarray,
    anchor: tuple[int, int],
    attention: np.ndarray | None = None,
    max_heads: int = 6,
) -> plt.Figure:
    """One method: a row per image with the image (anchor marked), the cosine similarity to the anchor
    patch, the PCA colours and (ViT) the last layer's per-head attention.

    Args:
        title: figure title (method, checkpoint, budget).
        images: ``(B, W, H)`` in [0, 1].
        similarity: ``(B, w, h)`` cosine similarity in [-1, 1] (each map shown over its own range, printed).
        pca: ``(B, w, h, 3)`` in [0, 1].
        anchor: index of the anchor cell on the feature grid (axis 0, axis 1).
        attention: ``(B, heads, w', h')`` or None.
        max_heads: heads shown.
    """
    b = images.shape[0]
    heads = 0 if attention is None else min(attention.shape[1], max_heads)
    cols = 3 + heads
    fig, axes = plt.subplots(b, cols, figsize=(1.6 * cols, 1.6 * b + 0.5), squeeze=False)
    size = images.shape[1:]
    for i in range(b):
        _show(axes[i, 0], images[i], "image (+ anchor)" if i == 0 else None, cmap="gray", vmin=0, vmax=1)
        _mark(axes[i, 0], anchor, similarity.shape[1:], size)
        _show_similarity(axes[i, 1], similarity[i], size, "cosine to anchor" if i == 0 else None)
        _mark(axes[i, 1], anchor, similarity.shape[1:], size)
        _show(axes[i, 2], _upsample(pca[i], size), "PCA (3 comps)" if i == 0 else None)
        for k in range(heads):
            a = attention[i, k]
            _show(axes[i, 3 + k], images[i], f"attn head {k}" if i == 0 else None, cmap="gray", vmin=0, vmax=1)
            axes[i, 3 + k].imshow(_display(_upsample(a / max(a.max(), 1e-12), size)), cmap="inferno", alpha=0.6,
                                  vmin=0, vmax=1)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return fig


def comparison_panel(
    title: str, images: np.ndarray, rows: Mapping[str, np.ndarray], kind: str, anchor: tuple[int, int] | None = None
) -> plt.Figure:
    """Methods side by side: a row per method, a column per image, one kind of map.

    Args:
        title: figure title.
        images: ``(B, W, H)`` in [0, 1] (first row).
        rows: method label -> maps: ``(B, w, h)`` for ``kind`` "similarity" / "attention", ``(B, w, h, 3)`` for "pca".
        kind: ``"similarity"``, ``"pca"`` or ``"attention"``.
        anchor: anchor cell (similarity), marked on the images.
    """
    if kind not in ("similarity", "pca", "attention"):
        raise ValueError(f"kind must be similarity, pca or attention, got {kind!r}")
    b = images.shape[0]
    n = len(rows) + 1
    fig, axes = plt.subplots(n, b, figsize=(1.6 * b + 1.2, 1.6 * n + 0.4), squeeze=False)
    size = images.shape[1:]
    for j in range(b):
        _show(axes[0, j], images[j], cmap="gray", vmin=0, vmax=1)
        if anchor is not None:
            grid = next(iter(rows.values())).shape[1:3]
            _mark(axes[0, j], anchor, grid, size)
    axes[0, 0].set_ylabel("image", fontsize=7)
    for i, (label, maps) in enumerate(rows.items(), start=1):
        for j in range(b):
            m = maps[j]
            if kind == "similarity":
                _show_similarity(axes[i, j], m, size)
            elif kind == "pca":
                _show(axes[i, j], _upsample(m, size))
            else:
                _show(axes[i, j], images[j], cmap="gray", vmin=0, vmax=1)
                axes[i, j].imshow(_display(_upsample(m / max(m.max(), 1e-12), size)), cmap="inferno", alpha=0.6,
                                  vmin=0, vmax=1)
        axes[i, 0].set_ylabel(label, fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return fig


def code_map_panel(
    title: str, images: np.ndarray, code_maps: Mapping[str, np.ndarray], palette: Mapping[str, np.ndarray]
) -> plt.Figure:
    """DiSSECT: the image and its code-index map at each quantised scale (each code its own colour)."""
    b = images.shape[0]
    cols = 1 + len(code_maps)
    fig, axes = plt.subplots(b, cols, figsize=(1.7 * cols, 1.7 * b + 0.4), squeeze=False)
    size = images.shape[1:]
    for i in range(b):
        _show(axes[i, 0], images[i], "image" if i == 0 else None, cmap="gray", vmin=0, vmax=1)
        for k, (name, codes) in enumerate(code_maps.items(), start=1):
            used = len(np.unique(codes[i]))
            _show(axes[i, k], _upsample(palette[name][codes[i]], size),
                  f"codes {name}: {used} used" if i == 0 else f"{used} used")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return fig


def typical_patches_panel(title: str, codes: Sequence[dict], palette: np.ndarray) -> plt.Figure:
    """A row per code (colour swatch = its colour in the code map, usage count) with its most typical patches."""
    rows = max(len(codes), 1)
    per = max((len(c["patches"]) for c in codes), default=1)
    fig, axes = plt.subplots(rows, per + 1, figsize=(1.1 * (per + 1), 1.1 * rows + 0.4), squeeze=False)
    for i, entry in enumerate(codes):
        _show(axes[i, 0], np.ones((8, 8, 3)) * palette[entry["code"]], f"code {entry['code']}\nn={entry['count']}")
        for j in range(per):
            if j < len(entry["patches"]):
                _show(axes[i, j + 1], entry["patches"][j], f"cos {entry['similarity'][j]:.2f}", cmap="gray",
                      vmin=0, vmax=1)
            else:
                axes[i, j + 1].axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return fig


def save(fig: plt.Figure, path: str | Path, dpi: int = 90) -> Path:
    """Write ``fig`` as PNG (parents created) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
