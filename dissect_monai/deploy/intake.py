"""What the node checks before it acknowledges a C-STORE: cheap header checks that catch instances no job could
ever process, so the sender hears "refused" instead of "done" (reasons name the problem, never a value of the
patient's data).

Statuses (PS3.4 C.4.2.1.4 / GG.4): ``0xA900`` the data set does not match its SOP class (missing or inconsistent
pixel module, UIDs that differ from the request), ``0xC000`` cannot understand (undecodable, or a SOP class /
photometric interpretation no pipeline reads), ``0xA700`` out of resources (decoded size over the limit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import sop_class as sop_class_uids

from dissect_monai.deploy.config import IntakeConfig

__all__ = [
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_DATASET_MISMATCH",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_SUCCESS",
    "Refusal",
    "accepted_sop_classes",
    "check_instance",
    "decoded_pixel_bytes",
]

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True)
class Refusal:
    """Why an instance is not acknowledged: the DIMSE status, a metrics label and a log reason (no patient data)."""

    status: int
    label: str
    reason: str


def accepted_sop_classes(intake: IntakeConfig) -> frozenset[str]:
    """The configured input SOP classes as UIDs (config entries are UIDs or keywords such as ``CTImageStorage``).

    Raises:
        ValueError: for an entry that is neither a storage SOP class UID nor a keyword of one.
    """
    uids = set()
    for item in intake.sop_classes:
        uid = UID(str(getattr(sop_class_uids, item, item)))
        if not uid.is_valid or "Storage" not in uid.name:
            raise ValueError(f"intake.sop_classes: {item!r} is not a storage SOP class keyword or UID")
        uids.add(str(uid))
    return frozenset(uids)


def decoded_pixel_bytes(ds: Dataset) -> int:
    """Bytes of the decoded pixel data the header announces: Rows x Columns x samples x frames x bits / 8."""
    frames = int(ds.get("NumberOfFrames") or 1)
    samples = int(ds.get("SamplesPerPixel") or 1)
    bits = int(ds.get("BitsAllocated") or 0)
    return math.ceil(int(ds.Rows) * int(ds.Columns) * samples * frames * bits / 8)


def check_instance(
    ds: Dataset, transfer_syntax: str, request_uids: tuple[str, str], intake: IntakeConfig, sop_classes: frozenset[str]
) -> Refusal | None:
    """Header checks of one received instance; ``None`` when it may be spooled and acknowledged.

    Args:
        ds: the received data set (pixel data is inspected as bytes, never decoded).
        transfer_syntax: the presentation context's transfer syntax UID.
        request_uids: the C-STORE request's Affected SOP Class UID and Affected SOP Instance UID.
        intake: the node's intake limits.
        sop_classes: accepted input SOP class UIDs (:func:`accepted_sop_classes`).
    """
    sop_class = str(ds.get("SOPClassUID", ""))
    if (sop_class, str(ds.get("SOPInstanceUID", ""))) != tuple(str(u) for u in request_uids):
        return Refusal(STATUS_DATASET_MISMATCH, "uid_mismatch",
                       "SOP Class / Instance UID of the data set differ from the C-STORE request")
    if sop_class not in sop_classes:
        return Refusal(STATUS_CANNOT_UNDERSTAND, "sop_class",
                       f"SOP class {UID(sop_class).name} is not an input of any pipeline (intake.sop_classes)")
    if not ds.get("PixelData"):
        return Refusal(STATUS_DATASET_MISMATCH, "no_pixel_data", f"{UID(sop_class).name} without pixel data")
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "PhotometricInterpretation"):
        if ds.get(keyword) in (None, "", 0):
            return Refusal(STATUS_DATASET_MISMATCH, "pixel_module", f"{keyword} is missing or zero")
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    if photometric not in {p.upper() for p in intake.photometric_interpretations}:
        return Refusal(STATUS_CANNOT_UNDERSTAND, "photometric",
                       f"PhotometricInterpretation {photometric[:16]} is not read by the pipelines")
    if int(ds.get("SamplesPerPixel") or 1) != 1 or int(ds.BitsAllocated) not in (8, 16, 32):
        return Refusal(STATUS_DATASET_MISMATCH, "pixel_module",
                       f"a {photometric} image needs 1 sample of 8, 16 or 32 bits, header says "
                       f"{ds.get('SamplesPerPixel')} x {ds.BitsAllocated}")
    if not 0 < int(ds.BitsStored) <= int(ds.BitsAllocated):
        return Refusal(STATUS_DATASET_MISMATCH, "pixel_module",
                       f"BitsStored {ds.BitsStored} does not fit BitsAllocated {ds.BitsAllocated}")
    decoded = decoded_pixel_bytes(ds)
    if decoded > intake.max_instance_bytes:
        return Refusal(STATUS_OUT_OF_RESOURCES, "too_large",
                       f"decoded pixel data {decoded} bytes exceeds intake.max_instance_bytes "
                       f"{intake.max_instance_bytes}")
    if not UID(transfer_syntax).is_compressed:
        actual = len(ds.PixelData)
        if actual not in (decoded, decoded + decoded % 2):
            return Refusal(STATUS_DATASET_MISMATCH, "pixel_length",
                           f"PixelData is {actual} bytes, Rows x Columns x samples x bits x frames needs {decoded}")
    return None
