"""The two classification benchmarks of the protocol, decoded once into arrays (cached) for the frozen probes.

The splits are the classification bundle's: ``dataset_datalist(name, "train")`` / ``"val"`` and every test image
(``drop_duplicates=False``; Kermany keeps its official 624, the MedMNIST split), in CSV order, so a label-fraction
sample drawn here (:func:`dissect_monai.data.sample_label_fraction`, by patient) is the one the bundle trains on
with the same ``label_fraction`` and ``fraction_seed``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from monai.transforms import Compose, Resized

from dissect_monai.data import dataset_datalist, sample_label_fraction
from dissect_monai.engines.checkpoint import atomic_write
from dissect_monai.transforms import load_image_transforms

__all__ = ["BENCHMARKS", "BenchmarkData", "BenchmarkSpec", "load_benchmark"]

_LOADING = "load_image_transforms, (1, W, H)"  # part of the cache fingerprint: caches of other loading are redone


@dataclass(frozen=True)
class BenchmarkSpec:
    """A benchmark: the dataset, its display title, the per-group key (``view`` on NIH) and the classification
    bundle's extra config file that selects the dataset (merged after ``train.yaml``)."""

    name: str
    dataset: str
    title: str
    group: str | None
    bundle_configs: tuple[str, ...]
    label_key: str = "pneumonia"


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "nih": BenchmarkSpec("nih", "nih-cxr-pneumonia", "NIH pneumonia (adults, test 206)", "view", ()),
    "kermany": BenchmarkSpec("kermany", "kermany-pneumonia", "Kermany pneumonia (children, official test 624)", None,
                             ("kermany.yaml",)),
}


@dataclass(frozen=True)
class BenchmarkData:
    """Every image of a benchmark ``(N, 1, S, S)`` float16 in [0, 1] with its label, patient, split, view and file
    name (all ``(N,)``)."""

    images: np.ndarray
    label: np.ndarray
    patient_id: np.ndarray
    split: np.ndarray
    view: np.ndarray
    image: np.ndarray

    def indices(self, split: str) -> np.ndarray:
        """Indices of one split (``train`` / ``val`` / ``test``)."""
        return np.flatnonzero(self.split == split)

    def fraction_indices(self, fraction: float, seed: int) -> np.ndarray:
        """Train indices of the patient-level label-fraction sample the classification bundle draws."""
        train = self.indices("train")
        items = [{"index": int(i), "label": int(self.label[i]), "patient_id": str(self.patient_id[i])} for i in train]
        return np.array([it["index"] for it in sample_label_fraction(items, fraction, seed=seed)])

    def patients(self, indices: np.ndarray) -> int:
        return len(set(self.patient_id[indices].tolist()))


def load_benchmark(
    spec: BenchmarkSpec, image_size: int, cache_dir: str | os.PathLike, data_root: str | os.PathLike
) -> BenchmarkData:
    """Decode a benchmark with the bundles' loading (:func:`dissect_monai.transforms.load_image_transforms`:
    ``LoadImaged(reader=MedicalImageReader())``, intensity in [0, 1], MONAI's ``(1, W, H)`` axis order; area resize
    to ``image_size``), cached as ``<cache_dir>/<name>_<size>.npz`` (written atomically); the cache is used only for
    the same loading and datalist (image files, labels and splits), so another data root, an edited CSV or a cache
    written in the former ``(1, H, W)`` order is decoded again."""
    items = [it for split in ("train", "val") for it in dataset_datalist(spec.dataset, split, data_root)]
    items += dataset_datalist(spec.dataset, "test", data_root, drop_duplicates=False)
    listing = f"{_LOADING}\n" + "\n".join(f"{it['image']},{it[spec.label_key]},{it['split']},{it['patient_id']}"
                                          for it in items)
    fingerprint = hashlib.sha1(listing.encode("utf-8")).hexdigest()[:16]
    cache = Path(cache_dir) / f"{spec.name}_{image_size}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["fingerprint"]) == fingerprint:
                return BenchmarkData(**{f.name: z[f.name] for f in fields(BenchmarkData)})
    load = Compose([*load_image_transforms("image"),
                    Resized(keys="image", spatial_size=(image_size, image_size), mode="area")])
    data = BenchmarkData(
        images=np.stack([np.asarray(load({"image": it["image"]})["image"], dtype=np.float16) for it in items]),
        label=np.array([int(it[spec.label_key]) for it in items]),
        patient_id=np.array([str(it["patient_id"]) for it in items]),
        split=np.array([str(it["split"]) for it in items]),
        view=np.array([str(it.get("view", "")) for it in items]),
        image=np.array([Path(it["image"]).name for it in items]),
    )
    arrays = {f.name: getattr(data, f.name) for f in fields(BenchmarkData)}
    atomic_write(cache, lambda f: np.savez(f, fingerprint=fingerprint, **arrays))
    return data
