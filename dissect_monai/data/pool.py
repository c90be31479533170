"""The pretraining pool of the evaluation protocol (DESIGN.md): unlabelled chest X-rays, never a test image."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from dissect_monai.data.datalists import dataset_datalist

__all__ = ["POOL_SOURCES", "pretraining_pool", "pool_summary"]

# dataset -> splits taken into the pool (None: the whole unlabelled dataset)
POOL_SOURCES: dict[str, tuple[str, ...] | None] = {
    "nih-cxr-pneumonia": ("train", "val"),
    "kermany-pneumonia": ("train", "val"),
    "cxr-lung-seg": ("train",),
    "hannover-cxr": None,
}


def pretraining_pool(data_root: str | os.PathLike | None = None) -> list[dict]:
    """NIH train+val, Kermany train+val, lung-seg train and Hannover, as one unlabelled datalist.

    Exclusions that keep the protocol honest:
    - Kermany's byte-identical copies (``duplicate_of``) are dropped, and so is any train/val image that a
      Kermany test image copies;
    - Hannover images that are also in ``cxr-lung-seg`` (same file name, the same radiograph re-rendered) are
      dropped: those in lung-seg val/test would leak evaluation images, those in lung-seg train would be
      counted twice.

    Args:
        data_root: folder holding the datasets (default ``$DISSECT_DATA_DIR`` or ``../shared/data``).

    Returns:
        Items ``{"image": abs path, "dataset": name, "patient_id": "<dataset>:<id>"}``, about 6,300 images.
    """
    pool: list[dict] = []
    kermany_test = dataset_datalist("kermany-pneumonia", "test", data_root)
    kermany_test_content = {Path(it["image"]).name for it in kermany_test} | {
        it["duplicate_of"] for it in kermany_test if it["duplicate_of"]}
    lung_seg_names = {Path(it["image"]).name for it in dataset_datalist("cxr-lung-seg", None, data_root)}
    for name, splits in POOL_SOURCES.items():
        items = dataset_datalist(name, splits, data_root, drop_duplicates=True)
        if name == "kermany-pneumonia":
            items = [it for it in items if Path(it["image"]).name not in kermany_test_content]
        if name == "hannover-cxr":
            items = [it for it in items if Path(it["image"]).name not in lung_seg_names]
        pool.extend({"image": it["image"], "dataset": name, "patient_id": f"{name}:{it['patient_id']}"}
                    for it in items)
    return pool


def pool_summary(pool: list[dict]) -> dict[str, int]:
    """Number of images per source dataset, plus ``"total"``."""
    counts = dict(Counter(item["dataset"] for item in pool))
    counts["total"] = len(pool)
    return counts
