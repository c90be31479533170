"""UID and series helpers: safe file names from UIDs, series order, UID repair, deterministic result UIDs."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

__all__ = ["sanitise_uid", "sort_series", "assign_missing_uids", "result_uid"]

_UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def sanitise_uid(value: object, what: str = "UID") -> str:
    """Return ``value`` as a UID string usable as a file or directory name, or raise ``ValueError``.

    Only digits and single dots are accepted (DICOM PS3.5 9.1), at most 64 characters: a UID can never contain
    a path separator, ``..`` or shell metacharacters, so no path built from it can leave its directory.
    """
    text = str(value or "").strip().rstrip("\x00")
    if not text or len(text) > 64 or not _UID_PATTERN.match(text):
        raise ValueError(f"{what} is missing or not a valid DICOM UID: {text[:80]!r}")
    return text


def sort_series(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Instances of one series in spatial order (position along the slice normal), else by InstanceNumber."""
    items = list(datasets)
    if len(items) > 1 and all("ImagePositionPatient" in d and "ImageOrientationPatient" in d for d in items):
        orientation = np.asarray(items[0].ImageOrientationPatient, dtype=np.float64)
        normal = np.cross(orientation[:3], orientation[3:])
        return sorted(items, key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))))
    return sorted(items, key=lambda d: int(d.get("InstanceNumber", 0) or 0))


def assign_missing_uids(datasets: Sequence[Dataset], namespace: str) -> list[Dataset]:
    """Fill empty Study/Series/SOP Instance/SOP Class UIDs of one series in place (e.g. anonymised test data).

    SOP Instance / Class UIDs come from the file meta; Study and Series UIDs are derived deterministically from
    ``namespace`` and the FrameOfReferenceUID, so repeated calls give the same study. Existing UIDs are kept.

    Args:
        datasets: the instances of one series.
        namespace: any string identifying the source (e.g. the directory name).
    """
    frame_of_reference = str(datasets[0].get("FrameOfReferenceUID", "")) if datasets else ""
    study_uid = generate_uid(entropy_srcs=["dissect-monai", namespace, frame_of_reference, "study"])
    series_uid = generate_uid(entropy_srcs=["dissect-monai", namespace, frame_of_reference, "series"])
    for ds in datasets:
        meta = getattr(ds, "file_meta", Dataset())
        if not str(ds.get("SOPInstanceUID", "")).strip():
            ds.SOPInstanceUID = meta.get("MediaStorageSOPInstanceUID") or generate_uid()
        if not str(ds.get("SOPClassUID", "")).strip():
            if not meta.get("MediaStorageSOPClassUID"):
                raise ValueError(f"instance {ds.SOPInstanceUID} has no SOP Class UID in dataset or file meta")
            ds.SOPClassUID = meta.MediaStorageSOPClassUID
        if not str(ds.get("StudyInstanceUID", "")).strip():
            ds.StudyInstanceUID = study_uid
        if not str(ds.get("SeriesInstanceUID", "")).strip():
            ds.SeriesInstanceUID = series_uid
    return list(datasets)


def result_uid(*parts: object) -> str:
    """A UID derived from ``parts`` (e.g. study UID, pipeline, source, version): the same parts always give the
    same UID, so a result written again after a crash, or a new version in a known series, needs no stored UID."""
    return generate_uid(entropy_srcs=["dissect-monai result", *(str(p) for p in parts)])
