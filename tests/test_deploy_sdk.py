"""The inference bundles under MONAI Deploy's own code: the App SDK (monai-deploy-app-sdk 4.0.0, in its own venv
with the project's wheel; it imports and runs on CPU) runs ``MonaiBundleInferenceOperator`` on each bundle inside a
Holoscan application, and the example app ``examples/deploy_ct_segmentation`` turns the real CT DICOM series into a
DICOM SEG.

The operator's rules (``monai/deploy/operators/monai_bundle_inference_operator.py`` of 4.0.0) that the bundles must
meet: it reads ``configs/metadata.json`` as ``_meta_`` and ``configs/inference.*`` without setting ``bundle_root``
(l. 139-181), keeps every pre/postprocessing transform whose class name contains neither ``LoadImage`` nor
``SaveImage`` (l. 309-323, 602-604), loads ``models/model.ts`` before ``models/model.pt`` (l. 91-94), feeds the image
in memory without a channel (an ``Image`` from DICOM is swapped from (D, H, W) to (W, H, D) with
``original_channel_dim = "no_channel"``, l. 1052-1079), and emits a segmentation as ``np.squeeze(pred, 0)``, 3-D ones
swapped back to (D, H, W), as uint8 (l. 976-984), probabilities as ``{"result", "probabilities"}`` (l. 989-993).
The bundles get random weights (exported to TorchScript by ``ckpt_export``): the run is what is tested.
"""

from __future__ import annotations

import pickle
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export
from PIL import Image
from venvs import REPO, build_wheel, clean_env, wheel_venv

from dissect_monai.dicom import assign_missing_uids

BUNDLES = REPO / "bundles"
SDK = ("monai-deploy-app-sdk==4.0.0", "highdicom>=0.22")
HARNESS = Path(__file__).resolve().parent / "deploy_sdk_harness.py"
APP = REPO / "examples" / "deploy_ct_segmentation" / "app.py"
# TorchScript export needs fp32 modules (no autocast wrapper)
EXPORT_OVERRIDES = {"dissect_cxr_classification": {"precision": "fp32"}, "dissect_cxr_pretrain": {"precision": "fp32"}}
# Not met yet: the operator drops only LoadImage* transforms, so the bundles' LoadMedicalImaged stays in
# `preprocessing` and receives the in-memory Image (a MetaTensor in MONAI's layout, no channel) instead of a path,
# and fails on it. Strict: these start failing (XPASS) once the bundles accept an in-memory image.
IN_MEMORY_GAP = pytest.mark.xfail(strict=True, raises=AssertionError,
                                  reason="LoadMedicalImaged reads only paths; Deploy feeds an in-memory Image")


@pytest.mark.parametrize("name", ["dissect_cxr_pretrain", "dissect_cxr_classification",
                                  "dissect_cxr_lung_segmentation", "dissect_ct_segmentation"])
def test_no_file_writer_survives_the_sdk_transform_filter(name, tmp_path, monkeypatch):
    """Deploy drops only transforms whose class name contains LoadImage or SaveImage (SDK 4.0.0 l. 309-323); any
    other writer left in ``postprocessing`` would write files inside a Deploy app. Parsed as the SDK parses a
    directory bundle: metadata as ``_meta_``, no ``bundle_root`` override, from another working directory."""
    monkeypatch.chdir(tmp_path)
    parser = ConfigParser()
    parser.read_meta(str(BUNDLES / name / "configs" / "metadata.json"))
    parser.read_config(str(BUNDLES / name / "configs" / "inference.yaml"))
    parser.parse()
    for section in ("preprocessing", "postprocessing"):
        if parser.get(section) is None:
            continue
        names = [type(t).__name__ for t in parser.get_parsed_content(section).transforms]
        kept = [n for n in names if not any(d in n for d in ("LoadImage", "SaveImage"))]
        writers = [n for n in kept if n.startswith("Save") or "Writer" in n]
        assert not writers, f"{name} {section} keeps file writers under Deploy: {writers}"
    assert not list(tmp_path.iterdir()), "parsing the inference config must not create files"


@pytest.fixture(scope="module")
def deploy_python(tmp_path_factory) -> Path:
    return wheel_venv(build_wheel(tmp_path_factory.mktemp("wheel")), name="deploy-sdk-venv", extra=SDK)


def _exported_bundle(name: str, root: Path) -> Path:
    """A copy of bundle ``name`` in ``root`` whose random-weight ``network_def`` is exported to ``models/model.ts``."""
    copy = root / name
    shutil.copytree(BUNDLES / name, copy, ignore=shutil.ignore_patterns("models", "eval", "runs", "__pycache__"))
    (copy / "models").mkdir()
    configs = copy / "configs"
    override = {"bundle_root": str(copy), **EXPORT_OVERRIDES.get(name, {})}
    parser = ConfigParser()
    parser.read_config(str(configs / "inference.yaml"))
    parser.read_meta(str(configs / "metadata.json"))
    parser.update(override)
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), copy / "models" / "model.pt")
    ckpt_export(net_id="network_def", filepath=str(copy / "models" / "model.ts"),
                ckpt_file=str(copy / "models" / "model.pt"), meta_file=str(configs / "metadata.json"),
                config_file=str(configs / "inference.yaml"), **override)
    return copy


def _run_operator(python: Path, bundle: Path, image: dict, tmp_path: Path):
    """``MonaiBundleInferenceOperator`` on one in-memory ``Image`` (``{"array", "metadata"}``) in the SDK's venv."""
    given, result = tmp_path / "input.pkl", tmp_path / "output.pkl"
    given.write_bytes(pickle.dumps(image))
    env = clean_env(HOLOSCAN_MODEL_PATH=str(tmp_path / "no-app-model"), HOLOSCAN_INPUT_PATH=str(tmp_path),
                    HOLOSCAN_OUTPUT_PATH=str(tmp_path / "app-output"))
    run = subprocess.run([str(python), str(HARNESS), str(bundle), str(given), str(result)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0 and result.is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    return pickle.loads(result.read_bytes())


def _radiograph(data_root: Path) -> np.ndarray:
    """A real lung-seg test radiograph cropped to 256 rows x 200 columns, in MONAI's axis order (W, H) = (200, 256)."""
    png = sorted((data_root / "cxr-lung-seg" / "images").glob("*.png"))[0]
    rows_first = np.asarray(Image.open(png).convert("L").crop((28, 0, 228, 256)), dtype=np.float32)
    return np.ascontiguousarray(rows_first.T)


def _in_memory(array: np.ndarray, affine: np.ndarray, output_type: str = "image") -> dict:
    """An ``Image`` as a non-DICOM upstream operator emits it: no channel, the metadata the bundle transforms read."""
    spacing = np.sqrt((affine[:-1, :-1] ** 2).sum(0))
    meta = {"original_channel_dim": "no_channel", "affine": affine, "original_affine": affine, "spacing": spacing,
            "spatial_shape": np.asarray(array.shape), "filename_or_obj": "in-memory"}
    return {"array": array, "metadata": meta, "output_type": output_type}


@IN_MEMORY_GAP
def test_lung_segmentation_gives_a_mask_of_the_input_size(deploy_python, data_root, tmp_path):
    bundle = _exported_bundle("dissect_cxr_lung_segmentation", tmp_path)
    image = _radiograph(data_root)
    out = _run_operator(deploy_python, bundle, _in_memory(image, np.eye(3)), tmp_path)
    assert out["array"].shape == image.shape and out["array"].dtype == np.uint8
    assert set(np.unique(out["array"])) <= {0, 1}


@IN_MEMORY_GAP
def test_ct_segmentation_gives_a_label_map_on_the_input_grid(deploy_python, data_root, tmp_path):
    bundle = _exported_bundle("dissect_ct_segmentation", tmp_path)
    volume = nib.load(data_root / "totalseg-ct" / "example_ct_sm.nii.gz")
    image = np.asarray(volume.dataobj, dtype=np.float32)
    out = _run_operator(deploy_python, bundle, _in_memory(image, volume.affine), tmp_path)
    assert out["array"].shape == image.shape[::-1] and out["array"].dtype == np.uint8  # (D, H, W), as the SDK emits
    assert set(np.unique(out["array"])) <= set(range(5))


@IN_MEMORY_GAP
def test_classification_gives_one_probability_per_class(deploy_python, data_root, tmp_path):
    bundle = _exported_bundle("dissect_cxr_classification", tmp_path)
    out = _run_operator(deploy_python, bundle, _in_memory(_radiograph(data_root), np.eye(3), "probabilities"),
                        tmp_path)
    assert out["result"] == ["pneumonia"]
    assert out["probabilities"].shape == (1,) and 0.0 <= float(out["probabilities"][0]) <= 1.0


@IN_MEMORY_GAP
def test_pretraining_embedder_gives_the_embedding(deploy_python, data_root, tmp_path):
    bundle = _exported_bundle("dissect_cxr_pretrain", tmp_path)
    out = _run_operator(deploy_python, bundle, _in_memory(_radiograph(data_root), np.eye(3), "tuples"), tmp_path)
    assert out.shape == (512,) and np.isfinite(out).all()


@IN_MEMORY_GAP
def test_example_app_writes_a_dicom_seg_for_the_ct_series(deploy_python, data_root, tmp_path):
    bundle = _exported_bundle("dissect_ct_segmentation", tmp_path / "bundles")
    # the series is anonymised (blank UIDs and SeriesNumber, which the SDK's loader reads): fill them as a PACS has
    study = tmp_path / "study"
    study.mkdir()
    series = data_root / "totalseg-ct" / "example_ct_dicom"
    sources = assign_missing_uids([pydicom.dcmread(p) for p in sorted(series.iterdir()) if p.is_file()],
                                  namespace=series.name)
    for i, ds in enumerate(sources):
        ds.SeriesNumber = ds.get("SeriesNumber") or 1
        ds.save_as(study / f"{i:03d}.dcm", enforce_file_format=True)
    out = tmp_path / "out"
    run = subprocess.run([str(deploy_python), str(APP), "-i", str(study), "-o", str(out),
                          "-m", str(bundle / "models" / "model.ts")], cwd=tmp_path, env=clean_env(),
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (seg_file,) = out.glob("*.dcm")
    seg = hd.seg.segread(seg_file)
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert {s.SegmentLabel for s in seg.SegmentSequence} <= {"spleen", "kidney_right", "kidney_left", "liver"}
    referenced = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {ds.SOPInstanceUID for ds in sources}
