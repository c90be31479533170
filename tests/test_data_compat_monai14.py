"""The data layer on the old stack (monai 1.4.0 + pydicom 2.x) of MONAI Label's environment, run in a subprocess.

Skipped when that environment is absent (create it with ``bash scripts/setup_monailabel_env.sh``).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from monai14 import PYTHON

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.monailabel

SCRIPT = r"""
import json, sys, tempfile, warnings
from pathlib import Path
import numpy as np, pydicom, monai, torch
from monai.transforms import Compose, EnsureTyped, Resized
from dissect_monai.data import RobustCacheDataset, dataset_datalist, dicom_datalist, pretraining_pool
from dissect_monai.transforms import ImageLoadError, LoadMedicalImage, LoadMedicalImaged, RandTwoViewsd

args = json.loads(sys.argv[1])
data = Path(args["data_root"])
out = {"monai": monai.__version__, "pydicom": pydicom.__version__}
siim = LoadMedicalImage()(data / args["siim"])
fake = LoadMedicalImage()(data / "dicom-samples/Fake_MONOHR1.dcm")
out["mono1_inverted"] = bool(torch.allclose(fake, 1 - siim, atol=1e-5))
rg1 = LoadMedicalImage()(args["rg1"])
x = rg1[0].numpy(); h, w = x.shape; rows = slice(int(0.4 * h), int(0.6 * h))
out["rg1_bright_centre"] = bool(x[rows, int(0.45 * w):int(0.55 * w)].mean() > x[rows, int(0.2 * w):int(0.3 * w)].mean())
out["rg1_window"] = rg1.meta["voi_source"]
ct = LoadMedicalImage(intensity="hu", axcodes="RAS")(data / "totalseg-ct/example_ct_dicom")
seg = LoadMedicalImage(intensity="raw", axcodes="RAS")(data / "totalseg-ct/example_seg_dicom.nii.gz")
out["series_shape"] = list(ct.shape)
out["series_matches_seg"] = bool(ct.shape == seg.shape
                                 and np.allclose(ct.affine.numpy(), seg.affine.numpy(), atol=1e-3))
out["multiframe_shape"] = list(LoadMedicalImage(intensity="hu")(args["ect"]).shape)
tmp = Path(tempfile.mkdtemp())
ds = pydicom.dcmread(args["ct_small"]); del ds.PixelData; ds.save_as(str(tmp / "nopix.dcm"))
ds = pydicom.dcmread(args["ct_small"]); ds.RescaleSlope = "1e38"; ds.save_as(str(tmp / "inf.dcm"))
raw = (data / args["siim"]).read_bytes(); (tmp / "cut.dcm").write_bytes(raw[: len(raw) // 2])
errors = []
for name in ("nopix.dcm", "inf.dcm", "cut.dcm"):
    try:
        LoadMedicalImage()(tmp / name)
    except ImageLoadError as e:
        errors.append(e.problem)
out["errors"] = errors
items = dataset_datalist("nih-cxr-pneumonia", "train", data)[:6] + [{"image": str(tmp / "cut.dcm")}]
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    cached = RobustCacheDataset(items, Compose([LoadMedicalImaged("image"), Resized("image", (96, 96)),
                                               EnsureTyped("image", track_meta=False)]), progress=False)
out["cached_items"] = len(cached)
views = RandTwoViewsd("image", (64, 64))({"image": torch.stack([cached[i]["image"] for i in range(2)])})
out["view_shape"] = list(views["image_2"].shape)
out["pool"] = len(pretraining_pool(data))
out["dicom_tree"] = [[it["Modality"], it["n_instances"]] for it in dicom_datalist(data / "totalseg-ct")]
print("RESULT " + json.dumps(out))
"""


@pytest.mark.skipif(not PYTHON.is_file(), reason=f"MONAI Label environment not found at {PYTHON.parent.parent}")
def test_data_layer_on_monai_14_and_pydicom_2(data_root):
    args = {
        "data_root": str(data_root),
        "siim": "dicom-samples/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
        "rg1": get_testdata_file("RG1_UNCI.dcm"),  # located with the main environment's pydicom-data
        "ect": get_testdata_file("eCT_Supplemental.dcm"),
        "ct_small": get_testdata_file("CT_small.dcm"),
    }
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([str(PYTHON), "-c", SCRIPT, json.dumps(args)], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    assert out["monai"].startswith("1.4") and out["pydicom"].startswith("2."), out
    assert out["mono1_inverted"] and out["rg1_bright_centre"] and out["rg1_window"] == "WindowCenterWidth"
    assert out["series_shape"] == [1, 512, 512, 20] and out["series_matches_seg"]
    assert out["multiframe_shape"] == [1, 512, 512, 2]
    assert [e.split(" ")[0] for e in out["errors"]] == ["no", "NaN/Inf", "truncated"], out["errors"]
    assert out["cached_items"] == 6 and out["view_shape"] == [2, 1, 64, 64]
    assert 6200 <= out["pool"] <= 6450
    assert out["dicom_tree"] == [["CT", 20]]
