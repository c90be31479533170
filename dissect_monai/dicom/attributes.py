"""Sanitising the attributes a derived SEG / SR copies from its source instances (patient, study, series).

Archives hold values that break strict writers: ``PatientBirthDate = '1961-07-04'``, times with colons, names
longer than 64 characters, ``PatientSex = 'male'``. A result must never fail on them, and no log line may show
them: :func:`sanitised_element` repairs what has one obvious reading (dates and times with separators, ages
without a unit, over-long strings truncated, sex words mapped to M / F / O) and empties the rest (every
patient / study attribute highdicom copies is type 2, so an empty value is valid); each change is logged with
the attribute's keyword only.
"""

from __future__ import annotations

import datetime
import logging
import re

from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.valuerep import validate_value

__all__ = ["SANITISED_VRS", "sanitised_element"]

logger = logging.getLogger(__name__)

#: Value representations whose values are checked (text and number strings; UIDs are checked at C-STORE).
SANITISED_VRS = frozenset({"AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM"})
_MAX_LENGTH = {"CS": 16, "LO": 64, "SH": 16, "ST": 1024, "LT": 10240, "DS": 16, "IS": 12, "AS": 4, "DT": 26}
_SEX = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "W": "F", "O": "O", "OTHER": "O"}
_DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d", "%d.%m.%Y", "%Y%m%d")
_TIME = re.compile(r"^(\d{2}):?(\d{2})(?::?(\d{2})(\.\d{1,6})?)?$")
_AGE = re.compile(r"^(\d{1,3})\s*([DWMY]?)$", re.IGNORECASE)


def _valid(vr: str, value: str) -> bool:
    try:
        validate_value(vr, value, 2)  # 2 = config.RAISE
    except (ValueError, TypeError):
        return False
    return True


def _repair(keyword: str, vr: str, text: str) -> str:
    """A valid value for ``text`` (one value of a possibly multi-valued element), or ``""`` when none is evident."""
    text = "".join(ch for ch in text if ch.isprintable() or ch in "\r\n\t\f\x1b").strip()
    if keyword == "PatientSex":
        return _SEX.get(text.upper(), "")
    if vr == "DA":
        for pattern in _DATE_FORMATS:
            try:
                return datetime.datetime.strptime(text, pattern).strftime("%Y%m%d")
            except ValueError:
                continue
        return ""
    if vr == "TM":
        match = _TIME.match(text)
        if not match:
            return ""
        hours, minutes, seconds, fraction = match.groups()
        return f"{hours}{minutes}{seconds or ''}{fraction or ''}" if int(hours) < 24 and int(minutes) < 60 else ""
    if vr == "AS":
        match = _AGE.match(text)
        return f"{int(match.group(1)):03d}{(match.group(2) or 'Y').upper()}" if match else ""
    if vr == "PN":
        groups = text.split("=")[:3]
        return "=".join("^".join(c[:64] for c in g.split("^")[:5])[:64] for g in groups)
    if vr == "CS":
        text = re.sub(r"[^A-Z0-9 _]", "_", text.upper())
    return text[: _MAX_LENGTH.get(vr, len(text))]


def sanitised_element(element: DataElement) -> DataElement:
    """``element`` when its value is valid DICOM, else a new element (same tag and VR) with a repaired or an
    empty value; ``element`` itself is never modified.

    Multi-valued elements are checked value by value. Elements of VRs outside :data:`SANITISED_VRS` (and
    sequences) are returned as they are.
    """
    vr = element.VR
    if vr not in SANITISED_VRS or element.value is None or element.value == "":
        return element
    multi = isinstance(element.value, (MultiValue, list, tuple))
    values = [str(v) for v in element.value] if multi else [str(element.value)]
    if all(_valid(vr, v) for v in values) and (element.keyword != "PatientSex" or values[0] in ("M", "F", "O")):
        return element
    repaired = [_repair(element.keyword, vr, v) for v in values]
    repaired = [v for v in repaired if v and _valid(vr, v)]
    outcome = "repaired" if repaired else "emptied"
    logger.warning("source attribute %s is not valid DICOM %s: %s in the result", element.keyword or element.tag, vr,
                   outcome)
    value = (repaired if multi else repaired[0]) if repaired else None
    return DataElement(element.tag, vr, value)
