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
from monai.data import PILReader
from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged, Orientationd, Resized
from dissect_monai.data import (ImageLoadError, MedicalImageReader, RobustCacheDataset, dataset_datalist,
                                dicom_datalist, pretraining_pool)
from dissect_monai.transforms import RandTwoViewsd, load_image_transforms


def load(path, mode="unit", label=None):
    d = {"image": str(path), **({"label": str(label)} if label else {})}
    for t in load_image_transforms("image", mode=mode, label_keys=["label"] if label else []):
        d = t(d)
    return d

args = json.loads(sys.argv[1])
data = Path(args["data_root"])
out = {"monai": monai.__version__, "pydicom": pydicom.__version__}
siim = load(data / args["siim"])["image"]
fake = load(data / "dicom-samples/Fake_MONOHR1.dcm")["image"]
out["mono1_inverted"] = bool(torch.allclose(fake, 1 - siim, atol=1e-5))
png = data / args["png"]
ours = load(png)["image"]
pil = LoadImaged("image", reader=PILReader(), ensure_channel_first=True)({"image": str(png)})["image"]
out["png_axes_as_pil_reader"] = bool(ours.shape == pil.shape and torch.allclose(ours * 255, pil.float()))
rg1 = load(args["rg1"])["image"]
x = rg1[0].numpy().T; h, w = x.shape; rows = slice(int(0.4 * h), int(0.6 * h))
out["rg1_bright_centre"] = bool(x[rows, int(0.45 * w):int(0.55 * w)].mean() > x[rows, int(0.2 * w):int(0.3 * w)].mean())
out["rg1_window"] = rg1.meta["voi_source"]
ras = Orientationd(["image", "label"], axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))
both = ras(load(data / "totalseg-ct/example_ct_dicom", "hu", data / "totalseg-ct/example_seg_dicom.nii.gz"))
ct, seg = both["image"], both["label"]
out["series_shape"] = list(ct.shape)
out["series_matches_seg"] = bool(ct.shape == seg.shape
                                 and np.allclose(ct.affine.numpy(), seg.affine.numpy(), atol=1e-3))
out["multiframe_shape"] = list(load(args["ect"], "hu")["image"].shape)
tmp = Path(tempfile.mkdtemp())
ds = pydicom.dcmread(args["ct_small"]); del ds.PixelData; ds.save_as(str(tmp / "nopix.dcm"))
ds = pydicom.dcmread(args["ct_small"]); ds.RescaleSlope = "1e38"; ds.save_as(str(tmp / "inf.dcm"))
raw = (data / args["siim"]).read_bytes(); (tmp / "cut.dcm").write_bytes(raw[: len(raw) // 2])
errors = []
for name in ("nopix.dcm", "inf.dcm", "cut.dcm"):
    try:
        load(tmp / name)
    except ImageLoadError as e:
        errors.append(e.problem)
out["errors"] = errors
items = dataset_datalist("nih-cxr-pneumonia", "train", data)[:6] + [{"image": str(tmp / "cut.dcm")}]
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    cached = RobustCacheDataset(items, Compose([*load_image_transforms("image"), Resized("image", (96, 96)),
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
        "png": "cxr-lung-seg/images/00870a9c.png",
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
    assert out["png_axes_as_pil_reader"], "2D arrays must follow MONAI's axis order on monai 1.4 too"
    assert out["mono1_inverted"] and out["rg1_bright_centre"] and out["rg1_window"] == "WindowCenterWidth"
    assert out["series_shape"] == [1, 512, 512, 20] and out["series_matches_seg"]
    assert out["multiframe_shape"] == [1, 512, 512, 2]
    assert [e.split(" ")[0] for e in out["errors"]] == ["no", "NaN/Inf", "truncated"], out["errors"]
    assert out["cached_items"] == 6 and out["view_shape"] == [2, 1, 64, 64]
    assert 6200 <= out["pool"] <= 6450
    assert out["dicom_tree"] == [["CT", 20]]
