"""MONAI datalists (lists of dicts) from CSV files, folder trees and DICOM trees, and the project's datasets.

Every item has an absolute ``"image"`` (a path, or for a DICOM volume the list of its files) and a
``"patient_id"``; labelled datasets add ``"label"`` (an int class, or for segmentation the mask path).
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from dissect_monai.data.dicom_reader import is_dicom_file, read_dicom_header
from dissect_monai.data.errors import ImageLoadError
from dissect_monai.data.file_readers import NIFTI_SUFFIXES, RASTER_SUFFIXES

__all__ = [
    "DATASETS",
    "DATA_DIR_VARIABLE",
    "default_data_root",
    "csv_datalist",
    "dataset_datalist",
    "folder_datalist",
    "dicom_datalist",
]

# name -> (label column or None, mask column or None, split column or None)
DATASETS: dict[str, dict] = {
    "nih-cxr-pneumonia": {"label": "pneumonia", "mask": None, "split": "split"},
    "kermany-pneumonia": {"label": "pneumonia", "mask": None, "split": "split"},
    "cxr-lung-seg": {"label": None, "mask": "mask", "split": "split"},
    "hannover-cxr": {"label": None, "mask": None, "split": None},
}
VOLUME_MODALITIES = ("CT", "MR", "PT", "NM")


DATA_DIR_VARIABLE = "DISSECT_DATA_DIR"


def default_data_root() -> Path:
    """The folder holding the datasets: ``$DISSECT_DATA_DIR``, else ``../shared/data`` relative to the current
    directory (the project's layout, run from the repository root). The one source of the data root for the
    package, the scripts and the bundles' ``dataset_dir`` defaults.

    Raises:
        FileNotFoundError: neither exists; the message names the variable to set.
    """
    env = os.environ.get(DATA_DIR_VARIABLE)
    root = Path(env) if env else Path("..", "shared", "data")
    if not root.is_dir():
        origin = f"${DATA_DIR_VARIABLE}" if env else f"${DATA_DIR_VARIABLE} is not set and the fallback"
        raise FileNotFoundError(f"data root not found: {origin} {root} is not a directory; set {DATA_DIR_VARIABLE} "
                                "to the folder holding the datasets (or pass dataset_dir / --dataset_dir)")
    return root.resolve()


def _parse_column(values: list[str]) -> list:
    """Ints if every non-empty value is an int, floats (NaN for empty) if every one is a number, else strings."""
    present = [v for v in values if v != ""]
    for kind in (int, float):
        try:
            parsed = [kind(v) for v in present]
        except ValueError:
            continue
        if kind is int and len(present) < len(values):
            continue  # an int column with blanks becomes float with NaN
        it = iter(parsed)
        return [next(it) if v != "" else math.nan for v in values]
    return values


def csv_datalist(
    csv_path: str | os.PathLike,
    image_column: str = "image",
    root: str | os.PathLike | None = None,
    label_column: str | None = None,
    mask_column: str | None = None,
    patient_column: str = "patient_id",
    split_column: str | None = "split",
    splits: Sequence[str] | str | None = None,
) -> list[dict]:
    """Datalist from a CSV with one row per image.

    Args:
        csv_path: the CSV file.
        image_column: column with the image path, relative to ``root``.
        root: base folder of relative paths (default: the CSV's folder).
        label_column: column copied to ``"label"`` (class index), if any.
        mask_column: column with a mask path copied to ``"label"`` as an absolute path (segmentation), if any.
        patient_column: column with the patient id, copied to ``"patient_id"`` as a string.
        split_column: column with the split name; ``splits`` filters on it.
        splits: keep only these splits (``None``: all rows).

    Returns:
        One dict per row: every CSV column (numbers parsed per column, except path/patient/split columns),
        ``"image"`` absolute,
        ``"patient_id"``, and ``"label"`` when a label or mask column is given.
    """
    csv_path = Path(csv_path)
    root = Path(root) if root is not None else csv_path.parent
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return []
    required = [c for c in (image_column, label_column, mask_column, patient_column) if c]
    if split_column and splits is not None:
        required.append(split_column)
    missing = [c for c in required if c not in rows[0]]
    if missing:
        raise ValueError(f"{csv_path}: missing columns {missing} (has {list(rows[0])})")
    text_columns = {image_column, mask_column, patient_column, split_column}  # ids: "007" must stay "007"
    columns = {name: [r[name] for r in rows] if name in text_columns else _parse_column([r[name] for r in rows])
               for name in rows[0]}
    items = [{name: columns[name][i] for name in columns} for i in range(len(rows))]
    if isinstance(splits, str):
        splits = (splits,)
    out = []
    for item in items:
        if splits is not None and split_column and item[split_column] not in splits:
            continue
        item["image"] = str((root / str(item[image_column])).resolve())
        item["patient_id"] = str(item[patient_column])
        if mask_column:
            item["label"] = str((root / str(item[mask_column])).resolve())
        elif label_column:
            item["label"] = item[label_column]
        out.append(item)
    return out


def dataset_datalist(
    name: str,
    splits: Sequence[str] | str | None = None,
    data_root: str | os.PathLike | None = None,
    drop_duplicates: bool = False,
) -> list[dict]:
    """Datalist of one of the project's datasets (:data:`DATASETS`) read in place from ``data_root``.

    Args:
        name: ``"nih-cxr-pneumonia"``, ``"kermany-pneumonia"``, ``"cxr-lung-seg"`` or ``"hannover-cxr"``.
        splits: e.g. ``("train", "val")``; ``None`` for all (Hannover has no splits).
        data_root: folder holding the datasets (default :func:`default_data_root`).
        drop_duplicates: drop Kermany's byte-identical copies (``duplicate_of`` set), keeping the original.
            Off by default: the official Kermany test split must keep its 624 images to compare with published
            results; the pretraining pool drops them.

    Returns:
        Items with ``"image"``, ``"patient_id"``, ``"dataset"``, ``"label"`` (pneumonia 0/1 or mask path)
        where the dataset is labelled, plus the CSV's columns.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    spec = DATASETS[name]
    if splits is not None and spec["split"] is None:
        raise ValueError(f"{name} has no splits; pass splits=None")
    folder = Path(data_root or default_data_root()) / name
    items = csv_datalist(folder / "labels.csv", label_column=spec["label"], mask_column=spec["mask"],
                         split_column=spec["split"], splits=splits)
    if drop_duplicates and name == "kermany-pneumonia":
        items = [it for it in items if not it.get("duplicate_of")]
    for it in items:
        it["dataset"] = name
    return items


def folder_datalist(
    root: str | os.PathLike,
    suffixes: Sequence[str] = RASTER_SUFFIXES + NIFTI_SUFFIXES,
    label_from_parent: bool = False,
) -> list[dict]:
    """Datalist of every PNG/JPEG/TIFF/NIfTI file under ``root`` (recursive, sorted).

    Args:
        root: the folder tree.
        suffixes: file name endings to include (case-insensitive).
        label_from_parent: class = name of the file's parent folder (``root/<class>/.../x.png``):
            ``"label"`` is its index among the sorted class names and ``"class_name"`` the name.

    Returns:
        Items with ``"image"`` (absolute), ``"patient_id"`` (the file name without suffix: folders carry no
        patient information) and, with ``label_from_parent``, ``"label"`` and ``"class_name"``.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    suffixes = tuple(s.lower() for s in suffixes)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes))
    items = []
    for path in files:
        stem = path.name
        for s in suffixes:
            if stem.lower().endswith(s):
                stem = stem[: -len(s)]
                break
        items.append({"image": str(path), "patient_id": stem})
    if label_from_parent:
        classes = sorted({Path(it["image"]).relative_to(root).parts[0] for it in items
                          if len(Path(it["image"]).relative_to(root).parts) > 1})
        index = {c: i for i, c in enumerate(classes)}
        labelled = []
        for it in items:
            parts = Path(it["image"]).relative_to(root).parts
            if len(parts) < 2:
                warnings.warn(f"{it['image']}: not inside a class folder, left out", stacklevel=2)
                continue
            labelled.append({**it, "label": index[parts[0]], "class_name": parts[0]})
        items = labelled
    return items


def _pseudonym(patient_id: str, salt: str) -> str:
    """A one-way pseudonym for a DICOM PatientID (never log or store the identifier itself)."""
    return hashlib.sha256(f"{salt}{patient_id}".encode("utf-8")).hexdigest()[:16]


def dicom_datalist(root: str | os.PathLike, recursive: bool = True, salt: str = "") -> list[dict]:
    """Datalist from a folder of DICOM files, grouped into studies and series by UID.

    A series of a volumetric modality (CT, MR, PT, NM) whose instances all carry a position becomes one
    item whose ``"image"`` is the list of its files (load it with
    ``LoadImaged(reader=MedicalImageReader())``); other instances
    (CR, DX, MG, single slices, multi-frame objects) are one item each. Non-DICOM files and non-image objects
    (SR, KO, PR: no ``Rows``) are ignored; unreadable or empty DICOM files are skipped with one warning naming
    them. Paths are never built from tag values.

    Args:
        root: the folder.
        recursive: also look in sub-folders.
        salt: secret prefix of the patient pseudonym (short numeric PatientIDs are guessable from an unsalted hash).

    Returns:
        Items with ``"image"``, ``"patient_id"`` (a SHA-256 pseudonym of PatientID), ``"StudyInstanceUID"``,
        ``"SeriesInstanceUID"``, ``"Modality"``, ``"n_instances"``; sorted by study, series, instance.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    candidates = sorted(p for p in (root.rglob("*") if recursive else root.iterdir()) if p.is_file())
    series: dict[tuple[str, str], list[tuple[str, object]]] = defaultdict(list)
    bad = []
    for path in candidates:
        if not is_dicom_file(path):
            continue
        try:
            ds = read_dicom_header(path, stop_before_pixels=True)
        except ImageLoadError as e:
            bad.append(str(e))
            continue
        if len(ds) == 0:
            bad.append(f"{path}: truncated or empty DICOM file (no data elements after the file meta header)")
            continue
        if "Rows" not in ds:
            continue  # not an image (SR, KO, PR, ...)
        series[(str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", "")))].append((str(path), ds))
    if bad:
        warnings.warn(f"dicom_datalist skipped {len(bad)} unreadable DICOM files under {root}: " + "; ".join(bad),
                      stacklevel=2)
    items = []
    for (study_uid, series_uid), members in sorted(series.items()):
        first = members[0][1]
        modality = str(first.get("Modality", ""))
        base = {"patient_id": _pseudonym(str(first.get("PatientID", "")), salt), "StudyInstanceUID": study_uid,
                "SeriesInstanceUID": series_uid, "Modality": modality}
        single_frame = all(int(ds.get("NumberOfFrames", 1) or 1) == 1 for _, ds in members)
        positioned = all("ImagePositionPatient" in ds and "ImageOrientationPatient" in ds for _, ds in members)
        members.sort(key=lambda m: (int(m[1].get("InstanceNumber", 0) or 0), m[0]))
        if modality in VOLUME_MODALITIES and len(members) > 1 and single_frame and positioned:
            items.append({**base, "image": [p for p, _ in members], "n_instances": len(members)})
        else:
            items.extend({**base, "image": p, "n_instances": 1} for p, _ in members)
    return items
