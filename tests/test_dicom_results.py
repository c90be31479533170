"""Results that never fail on demographics, failure reasons that keep the root cause but no attribute value,
the not-assessed / failure SR, and the import direction of the dicom package; on the real SIIM chest CR."""

from __future__ import annotations

import ast
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from dissect_monai.deploy.jobs import failure_reason
from dissect_monai.dicom import (
    AlgorithmInfo,
    ResultPlacement,
    build_classification_sr,
    build_segmentation,
    build_unassessed_sr,
    read_classification_sr,
    read_unassessed_sr,
)
from dissect_monai.transforms import load_image_transforms

SIIM_CR = "dicom-samples/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
ALGORITHM = AlgorithmInfo(name="dissect_test_bundle", version="0.0.1")
PACKAGE = Path(__file__).resolve().parents[1] / "dissect_monai"


@pytest.fixture(autouse=True)
def _quiet_highdicom():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def _with_raw_value(path: Path, keyword: str, vr: str, value: bytes) -> pydicom.Dataset:
    """The CR with ``keyword`` holding ``value`` as bytes on disk would (pydicom never validates it)."""
    ds = pydicom.dcmread(path)
    if len(value) % 2:
        value += b" "
    tag = Tag(keyword)
    ds._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


# keyword, VR, malformed value as received, the value the results carry ("" = emptied)
MALFORMED = [
    ("PatientBirthDate", "DA", b"1961-07-04", "19610704"),
    ("PatientBirthDate", "DA", b"04.07.1961", "19610704"),
    ("PatientBirthDate", "DA", b"unknown", ""),
    ("StudyDate", "DA", b"2020/01/31", "20200131"),
    ("StudyTime", "TM", b"12:30:05", "123005"),
    ("StudyTime", "TM", b"noon", ""),
    ("PatientName", "PN", b"A" * 70 + b"^B", "A" * 64),  # 64 characters per component group
    ("PatientAge", "AS", b"45", "045Y"),
    ("PatientAge", "AS", b"forty", ""),
    ("PatientID", "LO", b"X" * 70, "X" * 64),
    ("AccessionNumber", "SH", b"Y" * 30, "Y" * 16),
    ("PatientSex", "CS", b"male", "M"),
    ("PatientSex", "CS", b"unbekannt", ""),
    ("PatientWeight", "DS", b"70kg", ""),
]


@pytest.mark.parametrize("keyword, vr, raw, expected", MALFORMED)
@pytest.mark.parametrize("output", ["sr", "seg"])
def test_results_never_fail_on_demographics(keyword, vr, raw, expected, output, data_root, caplog):
    source = _with_raw_value(data_root / SIIM_CR, keyword, vr, raw)
    with caplog.at_level(logging.WARNING):
        if output == "sr":
            result = build_classification_sr([source], {"pneumonia": 0.25}, ALGORITHM)
        else:
            mask = np.zeros((int(source.Rows), int(source.Columns)), np.uint8)
            mask[100:300, 200:400] = 1
            result = build_segmentation([source], mask, {1: "lung"}, ALGORITHM)
    buffer = io.BytesIO()
    result.save_as(buffer, enforce_file_format=True)
    written = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    if output == "sr":
        assert read_classification_sr(written) == {"pneumonia": 0.25}
    assert str(written.get(keyword, "") or "") == expected
    assert keyword in caplog.text  # a warning names the attribute ...
    assert raw.decode().strip() not in caplog.text  # ... never its value
    assert source[keyword].value == raw.decode().strip()  # the source is not modified


#: the Type 2 patient and study attributes highdicom reads from the source of every SEG and SR
TYPE2_READ_BY_HIGHDICOM = ["PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                           "StudyDate", "StudyTime"]


@pytest.mark.parametrize("keyword", TYPE2_READ_BY_HIGHDICOM)
@pytest.mark.parametrize("output", ["sr", "seg"])
def test_results_never_fail_on_a_missing_type2_attribute(keyword, output, data_root, caplog):
    """Real files (anonymised ones, converted PNGs) lack Type 2 attributes; the result carries them empty."""
    source = pydicom.dcmread(data_root / SIIM_CR)
    if keyword in source:
        del source[keyword]
    with caplog.at_level(logging.WARNING):
        if output == "sr":
            result = build_classification_sr([source], {"pneumonia": 0.25}, ALGORITHM)
        else:
            result = build_segmentation([source], np.ones((int(source.Rows), int(source.Columns)), np.uint8),
                                        {1: "lung"}, ALGORITHM)
    buffer = io.BytesIO()
    result.save_as(buffer, enforce_file_format=True)
    written = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    assert keyword in written and not written[keyword].value  # present, empty (Type 2)
    assert f"source attribute {keyword} is missing" in caplog.text
    assert keyword not in source  # the source is not modified


def test_undecodable_element_left_out(data_root, caplog):
    source = pydicom.dcmread(data_root / SIIM_CR)
    tag = Tag("PixelRepresentation")
    source._dict[tag] = RawDataElement(tag, "US", 3, b"\x01\x00\x02", 0, False, True)  # 3 bytes for a US value
    with caplog.at_level(logging.WARNING):
        sr = build_classification_sr([source], {"pneumonia": 0.5}, ALGORITHM)
    assert read_classification_sr(sr) == {"pneumonia": 0.5}
    assert "(0028,0103) cannot be decoded" in caplog.text


def test_valid_demographics_untouched(data_root, caplog):
    source = pydicom.dcmread(data_root / SIIM_CR)
    source.PatientAge = "062Y"
    with caplog.at_level(logging.WARNING, logger="dissect_monai.dicom"):
        sr = build_classification_sr([source], {"pneumonia": 0.5}, ALGORITHM)
    assert not caplog.text
    assert (sr.PatientID, sr.PatientName, sr.StudyDate) == (source.PatientID, source.PatientName, source.StudyDate)


def test_failure_reason_keeps_root_cause_without_attribute_values(data_root, tmp_path):
    source = pydicom.dcmread(data_root / SIIM_CR)
    source.PatientName, source.PatientBirthDate = "Doe^Jane", "19610704"
    del source.PixelData  # the loader's own error names the file and the problem
    broken = tmp_path / "broken.dcm"
    source.save_as(broken, enforce_file_format=True)
    from monai.transforms import Compose

    with pytest.raises(RuntimeError, match="applying transform") as caught:
        Compose(load_image_transforms("image"))({"image": str(broken)})
    try:
        raise RuntimeError(f"bundle failed for Doe^Jane born 19610704 at {broken}") from caught.value
    except RuntimeError as err:
        reason = failure_reason(err, [source])
    first, cause = reason.splitlines()[:2]
    assert first == "category: internal"
    assert cause.startswith("cause: ImageLoadError: ") and "broken.dcm" in cause and "pixel data" in cause.lower()
    assert "object at 0x" not in reason and "applying transform LoadImaged" in reason
    assert "Doe" not in reason and "Jane" not in reason and "19610704" not in reason and "<redacted>" in reason


def test_unassessed_sr_round_trip(data_root, tmp_path):
    source = pydicom.dcmread(data_root / SIIM_CR)
    reason = "Not assessed: the image does not look like a frontal chest radiograph."
    sr = build_unassessed_sr([source], ["pneumonia", "no finding"], reason, ALGORITHM,
                             placement=ResultPlacement(instance_number=3))
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    written = pydicom.dcmread(tmp_path / "sr.dcm")
    assert read_unassessed_sr(written) == {"pneumonia": reason, "no finding": reason}
    with pytest.raises(ValueError, match="no probability measurements"):
        read_classification_sr(written)
    assert written.InstanceNumber == 3 and written.StudyInstanceUID == source.StudyInstanceUID
    with pytest.raises(ValueError, match="1 to 1024 characters"):
        build_unassessed_sr([source], ["pneumonia"], " ", ALGORITHM)


def test_sr_version_cites_its_predecessor(data_root):
    source = pydicom.dcmread(data_root / SIIM_CR)
    first = build_classification_sr([source], {"pneumonia": 0.2}, ALGORITHM)
    placement = ResultPlacement(first.SeriesInstanceUID, None, 2, (first,))
    second = build_classification_sr([source], {"pneumonia": 0.3}, ALGORITHM, placement=placement)
    (cited,) = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert cited.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert second.SeriesInstanceUID == first.SeriesInstanceUID and second.InstanceNumber == 2
    mask = np.ones((int(source.Rows), int(source.Columns)), np.uint8)
    with pytest.raises(ValueError, match="a SEG cannot cite previous versions"):
        build_segmentation([source], mask, {1: "lung"}, ALGORITHM, placement=placement)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", ["dicom", "transforms", "data"])
def test_no_import_of_deploy(package):
    """dicom/ is usable from transforms and deploy; neither it nor transforms / data import deploy (pynetdicom)."""
    offending = {
        str(path.relative_to(PACKAGE)): sorted(m for m in _imports(path) if m.startswith("dissect_monai.deploy"))
        for path in (PACKAGE / package).rglob("*.py")
    }
    assert not {k: v for k, v in offending.items() if v}
