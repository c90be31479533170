"""Patient-level splits and label-fraction sampling (seeded, so every run of the protocol sees the same subsets)."""

from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Sequence

import numpy as np

__all__ = ["LABEL_FRACTIONS", "group_by_patient", "split_by_patient", "sample_label_fraction"]

LABEL_FRACTIONS = (0.01, 0.05, 0.10, 1.0)


def group_by_patient(datalist: Sequence[dict], patient_key: str = "patient_id") -> dict[str, list[int]]:
    """Indices of ``datalist`` per patient, in first-seen order."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(datalist):
        if patient_key not in item:
            raise KeyError(f"datalist item {i} has no {patient_key!r} (needed for patient-level sampling)")
        groups[str(item[patient_key])].append(i)
    return dict(groups)


def _shuffled_patients(groups: Mapping[str, list[int]], seed: int) -> list[str]:
    patients = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(patients))
    return [patients[i] for i in order]


def split_by_patient(
    datalist: Sequence[dict],
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    patient_key: str = "patient_id",
) -> list[dict]:
    """Assign a ``"split"`` to every item so that no patient appears in two splits.

    Patients are shuffled with ``seed`` and filled into the splits in order until each split holds about
    its fraction of the images.

    Args:
        datalist: items with ``patient_key``.
        fractions: split name -> fraction of images (normalised to sum 1); default train/val/test 0.8/0.1/0.1.
        seed: shuffling seed.
        patient_key: the patient id key.

    Returns:
        Copies of the items with ``"split"`` set, in the input order.
    """
    fractions = dict(fractions or {"train": 0.8, "val": 0.1, "test": 0.1})
    total_fraction = sum(fractions.values())
    if total_fraction <= 0 or any(f < 0 for f in fractions.values()):
        raise ValueError(f"fractions must be non-negative and not all zero, got {fractions}")
    groups = group_by_patient(datalist, patient_key)
    names = list(fractions)
    bounds = np.cumsum([fractions[n] / total_fraction for n in names])
    out = [dict(item) for item in datalist]
    seen, n_total = 0, len(datalist)
    for patient in _shuffled_patients(groups, seed):
        members = groups[patient]
        centre = (seen + len(members) / 2.0) / max(n_total, 1)
        name = names[min(int(np.searchsorted(bounds, centre, side="right")), len(names) - 1)]
        for i in members:
            out[i]["split"] = name
        seen += len(members)
    return out


def sample_label_fraction(
    datalist: Sequence[dict],
    fraction: float,
    seed: int = 0,
    label_key: str = "label",
    patient_key: str = "patient_id",
) -> list[dict]:
    """A patient-level subset holding about ``fraction`` of the images, with every class present.

    Patients are shuffled with ``seed`` and taken whole until the subset reaches ``round(fraction * N)``
    images (at least one per class); then, for any class still missing, the next shuffled patient with an
    image of that class is added. ``fraction == 1`` returns every item.

    Args:
        datalist: labelled items (``label_key`` an int class; for binary labels this guarantees at least one
            positive and one negative).
        fraction: in (0, 1], e.g. one of :data:`LABEL_FRACTIONS`.
        seed: sampling seed (the protocol uses 5 seeds per fraction).
        label_key: the class key.
        patient_key: the patient id key.

    Returns:
        The sampled items (same dicts), in the input order.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    classes = sorted({item[label_key] for item in datalist})
    if len(classes) < 2:
        raise ValueError(f"need at least two classes in {label_key!r} to sample, found {classes}")
    if fraction == 1:
        return list(datalist)
    groups = group_by_patient(datalist, patient_key)
    order = _shuffled_patients(groups, seed)
    target = max(len(classes), int(round(fraction * len(datalist))))
    chosen, n_chosen, position = [], 0, 0
    while n_chosen < target and position < len(order):
        chosen.append(order[position])
        n_chosen += len(groups[order[position]])
        position += 1
    present = {datalist[i][label_key] for p in chosen for i in groups[p]}
    for cls in classes:
        if cls in present:
            continue
        for patient in order[position:]:
            if patient not in chosen and any(datalist[i][label_key] == cls for i in groups[patient]):
                chosen.append(patient)
                present.update(datalist[i][label_key] for i in groups[patient])
                break
    keep = sorted(i for p in chosen for i in groups[p])
    return [datalist[i] for i in keep]
