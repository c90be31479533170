"""Keep patient data out of what the node writes besides DICOM: reason files and log lines."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import pydicom

__all__ = ["IDENTIFYING_KEYWORDS", "identifying_values", "redact"]

#: attributes whose values identify a patient or the people around the study (PS3.15 E.1-1 subset)
IDENTIFYING_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "OtherPatientIDs", "OtherPatientNames",
    "PatientBirthName", "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "PhysiciansOfRecord",
    "InstitutionName", "InstitutionAddress", "AccessionNumber", "StudyID",
)


def identifying_values(files: Iterable[Path]) -> set[str]:
    """The identifying attribute values (and their ``^`` / ``\\`` separated parts) of the given instances' headers.

    Parts shorter than 3 characters are left out (they would redact ordinary words); unreadable files are skipped.
    """
    values: set[str] = set()
    for path in files:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(IDENTIFYING_KEYWORDS))
        except (OSError, ValueError, TypeError, AttributeError, pydicom.errors.InvalidDicomError):
            continue
        for keyword in IDENTIFYING_KEYWORDS:
            raw = header.get(keyword)
            if raw is None:
                continue
            text = "\\".join(str(v) for v in raw) if isinstance(raw, pydicom.multival.MultiValue) else str(raw)
            for part in [text, *re.split(r"[\^\\=]", text)]:
                part = part.strip()
                if len(part) >= 3:
                    values.add(part)
    return values


def redact(text: str, values: Iterable[str]) -> str:
    """``text`` with every occurrence of the given values (case-insensitive) replaced by ``<redacted>``."""
    for value in sorted(set(values), key=len, reverse=True):
        text = re.sub(re.escape(value), "<redacted>", text, flags=re.IGNORECASE)
    return text
