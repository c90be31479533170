"""The two segmentation bundles: standard bundle checks, short training + evaluation on real images, inference
back to the input's original geometry, and DICOM SEG output read back with highdicom.

Everything is written to pytest's tmp_path (``ckpt_dir``, ``output_dir``, ``ckpt_path`` overrides): the bundles in
the repository are never written to.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from bundle_checks import BundleUnderTest
from monai.bundle import ConfigWorkflow
from PIL import Image
from pydicom.data import get_testdata_file

from dissect_monai.data.dicom_reader import sop_instance_uid
from dissect_monai.dicom import assign_missing_uids, label_map_to_frames
from dissect_monai.transforms import load_image_transforms

REPO = Path(__file__).resolve().parents[1]
LUNG = REPO / "bundles" / "dissect_cxr_lung_segmentation"
CT = REPO / "bundles" / "dissect_ct_segmentation"
#: the lung runs of these mechanics tests train and test at this size, whatever the bundle's default (256 once the
#: release weights ship)
LUNG_TEST_SIZE = 64


@pytest.fixture(autouse=True)
def _torch_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _load(path, mode: str = "unit"):
    d = {"image": str(path)}
    for t in load_image_transforms("image", mode=mode):
        d = t(d)
    return d["image"]


def _workflow(bundle: Path, configs: list[str], workflow_type: str, **override) -> ConfigWorkflow:
    wf = ConfigWorkflow(
        config_file=[str(bundle / "configs" / c) for c in configs],
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(bundle),
        **override,
    )
    wf.initialize()
    assert wf.check_properties() == []
    return wf


def _lung_items(data_root: Path, split: str, n: int) -> list[dict]:
    with open(data_root / "cxr-lung-seg" / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split and r["view"] in ("PA", "AP", "AP Supine")]
    root = data_root / "cxr-lung-seg"
    return [{"image": str(root / r["image"]), "label": str(root / r["mask"]), "view": r["view"]} for r in rows[:n]]


@pytest.mark.parametrize("bundle", [LUNG, CT], ids=["lung", "ct"])
def test_standard_bundle_checks(bundle, tmp_path):
    checks = BundleUnderTest(bundle)
    checks.check_metadata()
    checks.check_net_in_out("inference.yaml")
    checks.check_ckpt_export("inference.yaml", tmp_path / "export")
    checks.check_properties("train", "train.yaml", ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path))
    checks.check_properties("infer", "inference.yaml", dataset_dir=str(tmp_path), output_dir=str(tmp_path))
    # MONAI Label's BundleTrainTask needs a top-level `network`; its infer task instantiates `network_def`
    train = ConfigWorkflow(config_file=str(bundle / "configs" / "train.yaml"), workflow_type="train")
    train_keys = set(train.parser.config)
    assert {"network", "network_def", "train", "validate"} <= train_keys


@pytest.fixture(scope="module")
def lung_model(tmp_path_factory, data_root) -> Path:
    """A lung model trained for two epochs on 16 real frontal train images (not a quality claim: a working file)."""
    out = tmp_path_factory.mktemp("lung_train")
    wf = _workflow(
        LUNG, ["train.yaml"], "train",
        ckpt_dir=str(out / "models"), output_dir=str(out / "eval"), epochs=2, batch_size=8, image_size=LUNG_TEST_SIZE,
        **{"train#dataset#data": _lung_items(data_root, "train", 16),
           "validate#dataset#data": _lung_items(data_root, "val", 4)},
    )
    wf.run()
    wf.finalize()
    model = out / "models" / "model.pt"
    assert model.is_file()
    return model


def test_lung_train_then_evaluate_on_real_test_images(lung_model, data_root, tmp_path):
    wf = _workflow(
        LUNG, ["train.yaml", "evaluate.yaml"], "train",
        ckpt_dir=str(lung_model.parent), output_dir=str(tmp_path), image_size=LUNG_TEST_SIZE,
        **{"validate#dataset#data": _lung_items(data_root, "test", 3)},
    )
    wf.run()
    wf.finalize()
    with open(tmp_path / "test_mean_dice_raw.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(0.0 <= float(r["mean"]) <= 1.0 for r in rows)
    assert (tmp_path / "test_hd95_raw.csv").is_file()
    metrics = dict(csv.reader(open(tmp_path / "metrics.csv"), delimiter=","))
    assert 0.0 <= float(metrics["test_mean_dice"]) <= 1.0


def _infer(bundle: Path, model: Path, inputs: list[dict], out: Path) -> None:
    wf = _workflow(
        bundle, ["inference.yaml", "inference_files.yaml"], "infer",
        ckpt_path=str(model), output_dir=str(out), dataset_dir=str(out), datalist=inputs,
    )
    wf.run()
    wf.finalize()


def _only(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {folder}, found {found}"
    return found[0]


@pytest.mark.parametrize(
    "source",
    ["RG1_UNCI.dcm", "dicom-samples/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"],
    ids=["non-square-cr-1955x1841", "siim-cr-0.168mm"],
)
def test_lung_inference_keeps_dicom_geometry_and_writes_seg(lung_model, data_root, tmp_path, source):
    path = Path(get_testdata_file(source)) if "/" not in source else data_root / source
    image = _load(path)
    _infer(LUNG, lung_model, [{"image": str(path)}], tmp_path)

    nifti = nib.load(_only(tmp_path, "*_seg.nii.gz"))
    mask = np.asarray(nifti.dataobj)
    assert mask.shape == tuple(image.shape[1:])  # same size as the input, (Columns, Rows) as MONAI's axis order
    np.testing.assert_allclose(nib.affines.voxel_sizes(nifti.affine)[:2], image.pixdim[:2], rtol=1e-5)
    assert set(np.unique(mask)) <= {0, 1}
    png = np.asarray(Image.open(_only(tmp_path, "*_seg.png")))
    np.testing.assert_array_equal(png, mask.T * 255)  # the PNG has the input's rows and columns

    seg = hd.seg.segread(_only(tmp_path, "1.*.dcm"))
    source_ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert seg.StudyInstanceUID == source_ds.StudyInstanceUID
    assert seg.SegmentSequence[0].SegmentLabel == "lung"
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    assert referenced == source_ds.SOPInstanceUID
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source_ds.SOPInstanceUID], segment_numbers=[1], assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(frames[0, :, :, 0], mask.T)


def test_lung_inference_on_png_keeps_size(lung_model, data_root, tmp_path):
    item = _lung_items(data_root, "test", 1)[0]
    _infer(LUNG, lung_model, [{"image": item["image"]}], tmp_path)
    png = np.asarray(Image.open(_only(tmp_path, "*_seg.png")))
    assert png.shape == np.asarray(Image.open(item["image"]).convert("L")).shape
    assert not list(tmp_path.glob("1.*.dcm")), "no DICOM SEG for a PNG input"


@pytest.fixture(scope="module")
def ct_model(tmp_path_factory) -> Path:
    """A CT model trained for one epoch (8 patches of the real TotalSegmentator CT): a working file, no quality."""
    out = tmp_path_factory.mktemp("ct_train")
    wf = _workflow(CT, ["train.yaml"], "train", ckpt_dir=str(out / "models"), output_dir=str(out / "eval"),
                   epochs=1, val_interval=1)
    wf.run()
    wf.finalize()
    model = out / "models" / "model.pt"
    assert model.is_file()
    return model


@pytest.mark.parametrize("given_as", ["directory", "files"])
def test_ct_inference_on_dicom_series_writes_one_segment_per_organ(ct_model, data_root, tmp_path, given_as):
    """The series as a directory (the PACS node) or as the list of its files (``dicom_datalist``, the bundle's own
    datalist): the same SEG, whose source instances are found beside the first file."""
    series = data_root / "totalseg-ct" / "example_ct_dicom"
    files = sorted(p for p in series.iterdir() if p.is_file())
    source = str(series) if given_as == "directory" else [str(f) for f in files]
    _infer(CT, ct_model, [{"image": source}], tmp_path)

    nifti = nib.load(_only(tmp_path, "*_seg.nii.gz"))
    image = _load(series, "hu")
    assert nifti.shape == tuple(image.shape[1:]) == (512, 512, 20)  # inverted to the original grid
    np.testing.assert_allclose(nifti.affine, image.affine.numpy(), atol=1e-4)

    seg = hd.seg.segread(_only(tmp_path, "1.*.dcm"))
    names = [s.SegmentLabel for s in seg.SegmentSequence]
    assert names == ["spleen", "kidney_right", "kidney_left", "liver"]
    # the series is anonymised (blank Study/Series/SOP Instance UIDs): the SEG references the UIDs derived from it
    sources = assign_missing_uids([pydicom.dcmread(p) for p in files], namespace=series.name)
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    referenced = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {sop_instance_uid(ds) for ds in sources}
    expected = label_map_to_frames(np.asarray(nifti.dataobj), sources, affine=nifti.affine, space="RAS")
    uids = [str(ds.SOPInstanceUID) for ds in sources]
    for number in range(1, 5):
        if not (expected == number).any():
            continue
        got = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids, segment_numbers=[number], skip_overlap_checks=True,
            assert_missing_frames_are_empty=True,
        )
        np.testing.assert_array_equal(got[..., 0], (expected == number).astype(got.dtype))


def test_ct_train_then_evaluate_on_held_out_dicom_series(ct_model, tmp_path):
    wf = _workflow(CT, ["train.yaml", "evaluate.yaml"], "train", ckpt_dir=str(ct_model.parent),
                   output_dir=str(tmp_path))
    wf.run()
    wf.finalize()
    with open(tmp_path / "test_mean_dice_raw.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    # the DICOM series has spleen and liver but no kidneys: kidney Dice is NaN, spleen and liver are numbers
    assert np.isfinite(float(rows[0]["class0"])) and np.isfinite(float(rows[0]["class3"]))
    assert np.isnan(float(rows[0]["class1"])) and np.isnan(float(rows[0]["class2"]))


def test_ct_label_map_remapped_to_organ_channels(data_root):
    parser = ConfigWorkflow(config_file=str(CT / "configs" / "train.yaml"), workflow_type="train").parser
    parser["dataset_dir"] = str(data_root / "totalseg-ct")
    transforms = parser.get_parsed_content("train#deterministic_transforms")[:4]  # loading + MapLabelValued
    d = {"image": str(data_root / "totalseg-ct" / "example_ct_sm.nii.gz"),
         "label": str(data_root / "totalseg-ct" / "example_seg.nii.gz")}
    raw = np.asarray(nib.load(d["label"]).dataobj)
    for t in transforms:
        d = t(d)
    label = d["label"][0].numpy()
    for channel, value in enumerate([1, 2, 3, 5], start=1):
        np.testing.assert_array_equal(label == channel, raw == value)
    assert set(np.unique(label)) == {0, 1, 2, 3, 4}


def test_bundle_dirs_have_docs_and_license():
    for bundle in (LUNG, CT):
        assert (bundle / "LICENSE").is_file() and (bundle / "docs" / "README.md").is_file()


def test_lung_bundle_run_returns_a_non_square_mask_in_the_input_orientation(data_root, tmp_path):
    """``python -m monai.bundle run`` of the lung inference config with its file writers (random weights: shape and
    orientation, not quality) on a real image cropped to 256 rows x 200 columns: the mask comes back with the input's
    rows and columns, in the PNG and (as MONAI's (W, H) axis order) in the NIfTI."""
    item = _lung_items(data_root, "test", 1)[0]
    studies = tmp_path / "studies"
    studies.mkdir()
    Image.open(item["image"]).convert("L").crop((28, 0, 228, 256)).save(studies / "crop.png")
    parser = ConfigWorkflow(config_file=str(LUNG / "configs" / "inference.yaml"), workflow_type="infer",
                            bundle_root=str(LUNG)).parser
    torch.manual_seed(0)
    model = tmp_path / "model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), model)
    out = tmp_path / "out"
    configs = str([str(LUNG / "configs" / "inference.yaml"), str(LUNG / "configs" / "inference_files.yaml")])
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs,
           "--meta_file", str(LUNG / "configs" / "metadata.json"), "--bundle_root", str(LUNG),
           "--dataset_dir", str(studies), "--output_dir", str(out), "--ckpt_path", str(model)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    png = np.asarray(Image.open(_only(out, "crop_seg.png")))
    assert png.shape == (256, 200)  # rows, columns of the input
    nifti = np.asarray(nib.load(_only(out, "crop_seg.nii.gz")).dataobj)
    assert nifti.shape == (200, 256)  # MONAI's (W, H)
    np.testing.assert_array_equal(png, nifti.T * 255)
