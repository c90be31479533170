"""Coded concepts, algorithm identification, result placement and source views shared by the SEG and SR writers."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import highdicom as hd
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException
from pydicom.tag import Tag
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

import dissect_monai
from dissect_monai.dicom.attributes import sanitised_element

__all__ = ["AlgorithmInfo", "LOCAL_CODING_SCHEME", "ResultPlacement", "concept_for_name", "reference_view"]

logger = logging.getLogger(__name__)

#: Private coding scheme (DICOM PS3.16 allows "99"-prefixed local schemes) for names without a SNOMED CT code.
LOCAL_CODING_SCHEME = "99DISSECT"

#: Spellings our bundles use that differ from the SNOMED CT attribute names in pydicom's code dictionary.
_SNOMED_ALIASES = {"lungs": "Lung", "effusion": "PleuralEffusion"}

#: SNOMED CT concepts our bundles name that pydicom's code dictionary lacks: name -> (code value, meaning).
_EXTRA_SNOMED = {
    "pneumonia": ("233604007", "Pneumonia"),
    "left_lung": ("44029006", "Left lung"),
    "right_lung": ("3341006", "Right lung"),
}


@dataclass(frozen=True)
class AlgorithmInfo:
    """Identification of the algorithm that produced a SEG or SR (DICOM Algorithm Identification Sequence).

    Attributes:
        name: algorithm name, e.g. the bundle name ``"dissect_cxr_classification"``.
        version: algorithm version, e.g. the bundle version from ``configs/metadata.json``.
        manufacturer: written as Manufacturer of the derived series.
        model_name: written as ManufacturerModelName.
        software_version: written as SoftwareVersions (defaults to the ``dissect_monai`` version).
    """

    name: str
    version: str
    manufacturer: str = "dissect-monai"
    model_name: str = "dissect-monai inference node"
    software_version: str = dissect_monai.__version__

    def segmentation_identification(self) -> hd.AlgorithmIdentificationSequence:
        """Algorithm Identification Sequence for a SEG segment description (family: Artificial Intelligence)."""
        return hd.AlgorithmIdentificationSequence(
            name=self.name, family=codes.DCM.ArtificialIntelligence, version=self.version
        )

    def sr_identification(self) -> hd.sr.AlgorithmIdentification:
        """TID 4019 Algorithm Identification for an SR measurement group."""
        return hd.sr.AlgorithmIdentification(name=self.name, version=self.version)


@dataclass(frozen=True)
class ResultPlacement:
    """Where a derived SEG / SR goes: its series and instance, and the instances it replaces.

    Attributes:
        series_instance_uid: SeriesInstanceUID (a new UID when ``None``); the node passes the study's result
            series, see :mod:`dissect_monai.deploy.jobs` on versions.
        sop_instance_uid: SOPInstanceUID (a new UID when ``None``).
        instance_number: InstanceNumber (the node writes the result version).
        previous_versions: earlier versions (datasets with Study / Series / SOP Instance / SOP Class UIDs) an SR
            cites in its Predecessor Documents Sequence; a SEG has no such attribute and refuses them.
    """

    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    instance_number: int = 1
    previous_versions: tuple[Dataset, ...] = ()

    def uids(self) -> tuple[str, str]:
        """(SeriesInstanceUID, SOPInstanceUID), new UIDs for those not given."""
        return self.series_instance_uid or generate_uid(), self.sop_instance_uid or generate_uid()


def _camel_case(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^0-9A-Za-z]+", name) if part)


def concept_for_name(name: str, scheme: str = "SCT") -> hd.sr.CodedConcept:
    """Coded concept for a label or finding name.

    Looks the name up in pydicom's code dictionary of ``scheme`` (``"Pneumonia"``, ``"left lung"``, ``"liver"``
    all resolve to SNOMED CT) and falls back to a concept in the local coding scheme :data:`LOCAL_CODING_SCHEME`
    whose code value and meaning are the name itself (truncated to the 16 characters a DICOM code value allows).

    Args:
        name: label / finding name as written in the bundle's ``channel_def`` or label names.
        scheme: pydicom code dictionary to search first.
    """
    if not name or not name.strip():
        raise ValueError("a segment / finding name must be a non-empty string")
    normalised = re.sub(r"[^0-9a-z]+", "_", name.strip().lower())
    if scheme == "SCT" and normalised in _EXTRA_SNOMED:
        return hd.sr.CodedConcept(_EXTRA_SNOMED[normalised][0], "SCT", _EXTRA_SNOMED[normalised][1])
    key = _SNOMED_ALIASES.get(normalised, _camel_case(name))
    table = getattr(codes, scheme)
    if key in table.dir(key):
        code = getattr(table, key)
        return hd.sr.CodedConcept(code.value, code.scheme_designator, code.meaning)
    value = re.sub(r"[^0-9A-Za-z_]+", "_", name.strip()).upper()[:16]
    return hd.sr.CodedConcept(value, LOCAL_CODING_SCHEME, name.strip()[:64])


_PLANE_GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient")
#: Type 2 patient / study attributes highdicom reads from the source of every SEG and SR (it fails without them)
_TYPE2_READ_BY_HIGHDICOM = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                            "StudyID", "StudyDate", "StudyTime")


def reference_view(ds: Dataset) -> Dataset:
    """The attributes of a source instance that a derived SEG / SR copies and references, without pixel data.

    The view shares the data elements of ``ds`` (nothing is copied or modified) and repairs what real archives
    send but highdicom refuses:

    * an empty SOPClassUID (e.g. anonymised CT) is taken from the file meta MediaStorageSOPClassUID;
    * a projection image (no ImagePositionPatient / ImageOrientationPatient) loses PixelSpacing, which highdicom
      would write as a Pixel Measures item without SliceThickness that highdicom 0.28 itself cannot read back;
    * a Type 2 patient / study attribute that highdicom reads (:data:`_TYPE2_READ_BY_HIGHDICOM`) and the source
      lacks (anonymised files, converted PNGs) is added empty, as Type 2 allows;
    * top-level values that are not valid DICOM (``PatientBirthDate = '1961-07-04'``, ``PatientSex = 'male'``,
      over-long names) are repaired or emptied (:func:`dissect_monai.dicom.attributes.sanitised_element`), and
      an element whose value cannot even be decoded is left out; each with a warning naming the keyword only.

    Raises:
        ValueError: when the SOP class cannot be determined.
    """
    view = Dataset()
    projection = not all(k in ds for k in _PLANE_GEOMETRY)
    for tag in list(ds.keys()):
        try:
            element = ds[tag]
        except (BytesLengthException, ValueError, TypeError, OverflowError):  # e.g. a US value of 3 bytes
            logger.warning("source attribute %s cannot be decoded: left out of the result", Tag(tag))
            continue
        if element.keyword == "PixelData" or (projection and element.keyword == "PixelSpacing"):
            continue
        view.add(sanitised_element(element))
    for keyword in _TYPE2_READ_BY_HIGHDICOM:
        if keyword not in view:
            logger.warning("source attribute %s is missing: empty in the result", keyword)
            view.add(DataElement(Tag(keyword), dictionary_VR(keyword), None))
    if not str(view.get("SOPClassUID", "")).strip():
        meta_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "").strip()
        if not meta_class:
            raise ValueError(f"source instance {ds.get('SOPInstanceUID', '?')} has no SOP Class UID")
        view.add(DataElement(Tag("SOPClassUID"), "UI", meta_class))  # a new element: the source's stays empty
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta
    return view
