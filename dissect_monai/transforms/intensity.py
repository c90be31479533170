"""Intensity mapping shared by the loaders: windows to [0, 1] and the checks that make an image usable."""

from __future__ import annotations

import numpy as np

from dissect_monai.transforms.errors import ImageLoadError

__all__ = ["apply_window", "percentile_window", "check_finite", "check_not_constant"]


def apply_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Map values through a DICOM VOI window to [0, 1] (PS3.3 C.11.2.1.2).

    Args:
        values: any-shape array of modality values (e.g. HU).
        center: window centre.
        width: window width (> 0; >= 1 for ``LINEAR``).
        function: ``VOILUTFunction``: ``LINEAR`` (default), ``LINEAR_EXACT`` or ``SIGMOID``.

    Returns:
        float32 array of the same shape in [0, 1].
    """
    values = values.astype(np.float32, copy=False)
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    elif function == "LINEAR_EXACT":
        out = (values - (center - width / 2.0)) / width
    else:
        if width < 1:
            raise ValueError(f"LINEAR window width must be >= 1, got {width}")
        out = (values - (center - 0.5)) / (width - 1.0) + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def percentile_window(values: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> tuple[float, float]:
    """Window (centre, width) spanning the given percentiles, widened to min/max when they coincide.

    Args:
        values: any-shape array (not constant; see :func:`check_not_constant`).
        percentiles: lower and upper percentile in [0, 100].

    Returns:
        ``(center, width)`` for :func:`apply_window` with ``LINEAR_EXACT``.
    """
    flat = values.reshape(-1)
    if flat.size > 2_000_000:  # a strided sample is enough for a robust window and keeps 3D volumes fast
        flat = flat[:: flat.size // 1_000_000]
    lo, hi = (float(v) for v in np.percentile(flat, percentiles))
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    return (lo + hi) / 2.0, hi - lo


def check_finite(values: np.ndarray, filename, stage: str) -> None:
    """Raise :class:`ImageLoadError` when ``values`` hold NaN or Inf (``stage`` says where they appeared)."""
    if not np.isfinite(values).all():
        n_bad = int(values.size - np.isfinite(values).sum())
        raise ImageLoadError(filename, f"{n_bad} NaN/Inf values {stage}")


def check_not_constant(values: np.ndarray, filename) -> None:
    """Raise :class:`ImageLoadError` when every value is equal (nothing to learn from, and no window exists)."""
    if values.size == 0:
        raise ImageLoadError(filename, "empty image (zero pixels)")
    first = values.reshape(-1)[0]
    if np.all(values == first):
        raise ImageLoadError(filename, f"constant image (every pixel = {float(first):g})")
