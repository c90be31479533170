"""DICOM SEG / Comprehensive 3D SR writers: round trips through files read back with highdicom, on real DICOM."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from dissect_monai.dicom.codes import AlgorithmInfo, reference_view
from dissect_monai.dicom.uids import assign_missing_uids, sanitise_uid, sort_series
from dissect_monai.dicom.seg import build_segmentation, label_map_to_frames
from dissect_monai.dicom.sr import build_classification_sr, read_classification_sr

ALGORITHM = AlgorithmInfo(name="dissect_test_bundle", version="0.0.1")
SIIM_CR = "dicom-samples/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
# TotalSegmentator label values of three organs in example_seg_dicom.nii.gz
CT_ORGANS = {1: "spleen", 5: "liver", 6: "stomach"}


@pytest.fixture(autouse=True)
def _quiet_highdicom():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


@pytest.fixture(scope="module")
def siim_cr(data_root: Path) -> pydicom.Dataset:
    return pydicom.dcmread(data_root / SIIM_CR)


@pytest.fixture(scope="module")
def chest_cr() -> pydicom.Dataset:
    path = get_testdata_file("RG1_UNCR.dcm")
    if path is None:
        pytest.fail("pydicom-data's chest CR RG1_UNCR.dcm is not installed (pip install pydicom-data)")
    return pydicom.dcmread(path)


@pytest.fixture(scope="module")
def ct_series(data_root: Path) -> list[pydicom.Dataset]:
    folder = data_root / "totalseg-ct" / "example_ct_dicom"
    return sort_series(assign_missing_uids([pydicom.dcmread(p) for p in sorted(folder.iterdir())], folder.name))


@pytest.fixture(scope="module")
def ct_labels(data_root: Path) -> nib.Nifti1Image:
    return nib.load(data_root / "totalseg-ct" / "example_seg_dicom.nii.gz")


def _write_and_read(ds: pydicom.Dataset, path: Path) -> pydicom.Dataset:
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def _intensity_mask(image: pydicom.Dataset) -> np.ndarray:
    """Two-label mask from the real image's intensities: 1 = bright half, 2 = brightest decile in the top third."""
    pixels = image.pixel_array.astype(np.float32)
    mask = (pixels > np.median(pixels)).astype(np.uint8)
    top = pixels.shape[0] // 3
    mask[:top][pixels[:top] > np.percentile(pixels, 90)] = 2
    return mask


@pytest.mark.parametrize("which", ["siim", "pydicom_data"])
def test_seg_round_trip_single_radiograph(which, siim_cr, chest_cr, tmp_path):
    source = siim_cr if which == "siim" else chest_cr
    mask = _intensity_mask(source)
    assert {0, 1, 2} <= set(np.unique(mask))
    seg = build_segmentation([source], mask, {1: "lung", 2: "left lung"}, ALGORITHM)
    read = hd.seg.Segmentation.from_dataset(_write_and_read(seg, tmp_path / "seg.dcm"))
    pixels = read.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=True)
    np.testing.assert_array_equal(pixels[0], mask)
    assert read.SegmentationType == "BINARY" and read.Modality == "SEG"
    assert read.StudyInstanceUID == source.StudyInstanceUID
    assert read.SeriesInstanceUID not in (source.SeriesInstanceUID, "")
    assert read.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert read.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == (
        source.SOPInstanceUID
    )
    labels = [d.SegmentLabel for d in read.SegmentSequence]
    assert labels == ["lung", "left lung"]
    lung = read.SegmentSequence[0]
    assert lung.SegmentedPropertyTypeCodeSequence[0].CodeValue == "39607008"  # SNOMED CT Lung
    assert lung.SegmentAlgorithmType == "AUTOMATIC"
    assert lung.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == ALGORITHM.name
    assert lung.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == ALGORITHM.version
    assert read.PatientID == source.PatientID
    assert "PixelSpacing" in source  # the source dataset is not modified by the writer


def test_seg_round_trip_ct_series_from_real_label_map(ct_series, ct_labels, tmp_path):
    volume = np.asarray(ct_labels.dataobj)
    organs_only = np.where(np.isin(volume, list(CT_ORGANS)), volume, 0)
    frames = label_map_to_frames(organs_only[None], ct_series, ct_labels.affine, space="RAS")
    assert frames.shape == (20, 512, 512)
    for label in CT_ORGANS:
        assert (frames == label).sum() == (volume == label).sum()  # the grids coincide: nothing lost
    hounsfield = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in ct_series])
    assert 40 < hounsfield[frames == 5].mean() < 200  # liver voxels land on (contrast-enhanced) soft tissue
    wrong_space = label_map_to_frames(organs_only, ct_series, ct_labels.affine, space="LPS")
    assert not np.array_equal(wrong_space, frames)

    seg = build_segmentation(ct_series, frames, CT_ORGANS, ALGORITHM)
    read = hd.seg.Segmentation.from_dataset(_write_and_read(seg, tmp_path / "seg.dcm"))
    uids = [d.SOPInstanceUID for d in ct_series]
    pixels = read.get_pixels_by_source_instance(uids, combine_segments=True, relabel=True)
    by_number = np.zeros(256, np.uint8)
    by_number[1: len(CT_ORGANS) + 1] = sorted(CT_ORGANS)
    np.testing.assert_array_equal(by_number[pixels], frames)
    assert read.StudyInstanceUID == ct_series[0].StudyInstanceUID
    assert read.FrameOfReferenceUID == ct_series[0].FrameOfReferenceUID
    referenced = {i.ReferencedSOPInstanceUID for i in read.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(uids)
    assert [d.SegmentLabel for d in read.SegmentSequence] == ["spleen", "liver", "stomach"]


def test_label_map_to_frames_errors(siim_cr, ct_series):
    with pytest.raises(ValueError, match="does not match the image"):
        label_map_to_frames(np.zeros((512, 1024), np.uint8), [siim_cr])
    with pytest.raises(ValueError, match="affine"):
        label_map_to_frames(np.zeros((512, 512, 20), np.uint8), ct_series)
    with pytest.raises(ValueError, match="integer labels"):
        label_map_to_frames(np.full((1024, 1024), 0.5), [siim_cr])


def test_label_map_to_frames_takes_a_radiograph_mask_in_monai_axis_order(siim_cr):
    """A 2D label map is (Columns, Rows), as the bundles' loader gives it; the SEG frame is (Rows, Columns)."""
    cr = copy.deepcopy(siim_cr)  # the fixture is shared by the module
    cr.Columns = 800  # a non-square radiograph: 1024 rows x 800 columns
    labels = np.zeros((800, 1024), np.uint8)
    labels[700, 10] = 1  # column 700, row 10
    frames = label_map_to_frames(labels[None], [cr])
    assert frames.shape == (1, 1024, 800)
    assert frames[0, 10, 700] == 1 and frames.sum() == 1
    with pytest.raises(ValueError, match=r"\(Columns, Rows\) \(800, 1024\)"):
        label_map_to_frames(labels.T, [cr])


def test_build_segmentation_errors(siim_cr):
    mask = np.zeros((1024, 1024), np.uint8)
    mask[10:20, 10:20] = 3
    with pytest.raises(ValueError, match=r"labels \[3\] with no segment name"):
        build_segmentation([siim_cr], mask, {1: "lung"}, ALGORITHM)
    with pytest.raises(ValueError, match="do not match 2 source images"):
        build_segmentation([siim_cr, siim_cr], mask, {3: "lung"}, ALGORITHM)
    with pytest.raises(ValueError, match="must be >= 1"):
        build_segmentation([siim_cr], mask, {0: "background", 3: "lung"}, ALGORITHM)


@pytest.mark.parametrize("which", ["siim", "pydicom_data"])
def test_sr_round_trip_probabilities(which, siim_cr, chest_cr, tmp_path):
    source = siim_cr if which == "siim" else chest_cr
    probabilities = {"pneumonia": 0.7312345678901234, "effusion": 0.0421, "unlisted finding": 0.5}
    sr = build_classification_sr([source], probabilities, ALGORITHM, thresholds={
        "pneumonia": 0.5, "effusion": 0.5, "unlisted finding": 0.6})
    written = _write_and_read(sr, tmp_path / "sr.dcm")
    assert read_classification_sr(written) == probabilities
    parsed = hd.sr.Comprehensive3DSR.from_dataset(written)
    assert parsed.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34" and parsed.Modality == "SR"
    assert parsed.StudyInstanceUID == source.StudyInstanceUID
    assert parsed.SeriesInstanceUID != source.SeriesInstanceUID
    evidence = parsed.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == source.SeriesInstanceUID
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    verdicts = {}
    for group in parsed.content.get_image_measurement_groups():
        (evaluation,) = group.get_qualitative_evaluations()
        verdicts[str(group.tracking_identifier)] = evaluation.value.meaning
        items = {i.ConceptNameCodeSequence[0].CodeValue: i.get("TextValue") for i in group[0].ContentSequence}
        assert (items["111001"], items["111003"]) == (ALGORITHM.name, ALGORITHM.version)  # Algorithm Name/Version
    assert verdicts == {"pneumonia": "Present", "effusion": "Absent", "unlisted finding": "Absent"}
    pneumonia = parsed.content.get_image_measurement_groups(tracking_uid=None)[0]
    assert pneumonia.finding_type.value == "233604007"  # SNOMED CT Pneumonia


def test_sr_rejects_bad_probabilities(siim_cr, ct_series):
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        build_classification_sr([siim_cr], {"pneumonia": 1.2}, ALGORITHM)
    with pytest.raises(ValueError, match="no finding probabilities"):
        build_classification_sr([siim_cr], {}, ALGORITHM)
    with pytest.raises(ValueError, match="2 studies"):
        build_classification_sr([siim_cr, ct_series[0]], {"pneumonia": 0.2}, ALGORITHM)


def test_reference_view_repairs_without_modifying(data_root):
    path = sorted((data_root / "totalseg-ct" / "example_ct_dicom").iterdir())[0]
    raw = pydicom.dcmread(path)
    assert raw.SOPClassUID == ""  # anonymised: the class is only in the file meta
    view = reference_view(raw)
    assert view.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and "PixelData" not in view
    assert raw.SOPClassUID == "" and "PixelData" in raw


@pytest.mark.parametrize("bad", ["", "../1.2", "1.2/3", "1..2", "1.2.3\\x", "a.b", "1" * 65])
def test_sanitise_uid_rejects_unsafe(bad):
    with pytest.raises(ValueError, match="not a valid DICOM UID"):
        sanitise_uid(bad)


def test_sanitise_uid_accepts_real_uids(siim_cr):
    assert sanitise_uid(siim_cr.SOPInstanceUID + "\x00") == siim_cr.SOPInstanceUID
