"""The segmentation bundles in MONAI Label's stock ``monaibundle`` app (MONAI Label 0.8.5 on monai 1.4.0).

A real ``monailabel`` server runs on 127.0.0.1 (free port) from MONAI Label's own environment
(``scripts/setup_monailabel_env.sh``), offline (``--conf zoo_source github --conf sam2 false``), with the bundle
copied unchanged into the app's ``model/`` folder and a studies folder of real lung-seg test images copied to tmp.
The bundle serves its shipped release weights (``models/model.pt``), so /infer must return lung masks: Dice against
the ground truth above :data:`DICE_FLOOR`. /train then runs one epoch to DONE on the app's copy.
The CT bundle is served beside it (random weights: only loading and the geometry of its answer are checked).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from io import BytesIO
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from PIL import Image

pytestmark = pytest.mark.monailabel

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "dissect_cxr_lung_segmentation"
CT_BUNDLE = REPO / "bundles" / "dissect_ct_segmentation"
VENV = Path(os.environ.get("MONAILABEL_VENV", REPO / ".venv-monailabel"))
MARKER = VENV / ".dissect-monailabel-ready"
SHIPPED_WEIGHTS = BUNDLE / "models" / "model.pt"
MODEL = BUNDLE.name
CT_MODEL = CT_BUNDLE.name
FRONTAL = ("PA", "AP", "AP Supine")
#: lowest per-image Dice accepted from /infer. Measured with the shipped release weights (1.0.0, 256 px, MONAI Label
#: 0.8.5 on monai 1.4.0): 0.929, 0.962, 0.931, 0.943 on the 4 test images and 0.926 on the 256 x 200 crop.
DICE_FLOOR = 0.90
N_TEST_IMAGES = 4


def _python() -> Path:
    if not (VENV / "bin" / "python").is_file() or not MARKER.is_file():
        pytest.skip(f"MONAI Label environment not found at {VENV}: run `bash scripts/setup_monailabel_env.sh` first")
    return VENV / "bin" / "python"


def _rows(data_root: Path, split: str) -> list[dict]:
    with open(data_root / "cxr-lung-seg" / "labels.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["split"] == split and r["view"] in FRONTAL]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, data: bytes | None = None, method: str = "GET", timeout: float = 300) -> bytes:
    headers = {"Content-Type": "application/json"} if data is not None else {}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as response:
        return response.read()


@pytest.fixture(scope="module")
def server(tmp_path_factory, data_root):
    """A monailabel server with the stock monaibundle app, the bundle unchanged, and real lung images as studies."""
    python = _python()
    work = tmp_path_factory.mktemp("monailabel")
    sample_app = VENV / "monailabel" / "sample-apps" / "monaibundle"  # what `monailabel apps --download` copies
    assert sample_app.is_dir(), f"monaibundle sample app not found: {sample_app}"
    app = work / "app"
    shutil.copytree(sample_app, app)
    bundle = app / "model" / MODEL
    assert SHIPPED_WEIGHTS.is_file(), f"the release weights are missing: {SHIPPED_WEIGHTS}"
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("eval", "runs", "__pycache__"))
    ct_bundle = app / "model" / CT_MODEL
    shutil.copytree(CT_BUNDLE, ct_bundle, ignore=shutil.ignore_patterns("models", "eval", "__pycache__"))
    (ct_bundle / "models").mkdir()
    ct_net = ConfigWorkflow(config_file=str(CT_BUNDLE / "configs" / "inference.yaml"), workflow_type="infer",
                            bundle_root=str(CT_BUNDLE)).parser.get_parsed_content("network_def")
    torch.save(ct_net.state_dict(), ct_bundle / "models" / "model.pt")

    studies = work / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    root = data_root / "cxr-lung-seg"
    test_rows = _rows(data_root, "test")[:N_TEST_IMAGES]
    for r in test_rows:
        shutil.copy(root / r["image"], studies / Path(r["image"]).name)
    # one non-square study (a real test image and its mask cropped to 256 x 200) to catch axis swaps
    crop = {"image": "crop_" + Path(test_rows[0]["image"]).name, "mask": work / "crop_mask.png", "view": "crop"}
    Image.open(root / test_rows[0]["image"]).crop((28, 0, 228, 256)).save(studies / crop["image"])
    Image.open(root / test_rows[0]["mask"]).crop((28, 0, 228, 256)).save(crop["mask"])
    test_rows = test_rows + [crop]
    shutil.copy(data_root / "totalseg-ct" / "example_ct_sm.nii.gz", studies / "ct_sm.nii.gz")
    for r in _rows(data_root, "train")[:2]:  # two labelled images for /train (val_split 0.5)
        shutil.copy(root / r["image"], studies / Path(r["image"]).name)
        shutil.copy(root / r["mask"], studies / "labels" / "final" / Path(r["mask"]).name)

    port = _free_port()
    log = open(work / "server.log", "w")
    # the server imports the checkout under test, not the dissect_monai its environment has installed
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(work)}
    proc = subprocess.Popen(
        [str(python), "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
         "--conf", "models", f"{MODEL},{CT_MODEL}", "--conf", "zoo_source", "github", "--conf", "sam2", "false",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=work, stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    info = None
    while time.time() < deadline and proc.poll() is None:
        try:
            info = json.loads(_request(f"{url}/info/", timeout=5))
            break
        except OSError:
            time.sleep(2)
    if info is None:
        proc.terminate()
        proc.wait(30)
        log.close()
        pytest.fail(f"monailabel server did not start; log:\n{(work / 'server.log').read_text()[-4000:]}")
    yield {"url": url, "info": info, "bundle": bundle, "rows": test_rows, "root": root, "work": work,
           "ct": data_root / "totalseg-ct" / "example_ct_sm.nii.gz"}
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def test_bundle_is_served_as_2d_lung_segmentation(server):
    model = server["info"]["models"][MODEL]
    assert model["type"] == "segmentation"
    assert model["dimension"] == 2
    assert model["labels"] == {"lung": 1}
    assert MODEL in server["info"]["trainers"]


def test_infer_returns_lung_masks_matching_ground_truth(server):
    for r in server["rows"]:
        image_id = Path(r["image"]).stem
        body = _request(f"{server['url']}/infer/{MODEL}?image={image_id}&output=image", method="POST")
        mask = np.asarray(Image.open(BytesIO(body)))
        truth = np.asarray(Image.open(server["root"] / r["mask"])) > 0  # an absolute mask path stays as it is
        assert mask.shape == truth.shape, f"{image_id}: mask {mask.shape} vs image {truth.shape}"
        assert set(np.unique(mask)) <= {0, 1}
        dice = _dice(mask > 0, truth)
        print(f"{image_id} ({r['view']}): Dice {dice:.3f}", file=sys.stderr)
        assert dice > DICE_FLOOR, f"{image_id}: Dice {dice:.3f} <= {DICE_FLOOR}"


def test_train_runs_to_done_and_replaces_served_weights(server):
    weights = server["bundle"] / "models" / "model.pt"
    before = weights.stat().st_mtime_ns
    request = {"max_epochs": 1, "val_split": 0.5, "multi_gpu": False, "device": "cpu"}
    _request(f"{server['url']}/train/{MODEL}", data=json.dumps(request).encode(), method="POST")
    deadline = time.time() + 600
    status = None
    while time.time() < deadline:
        time.sleep(5)
        status = json.loads(_request(f"{server['url']}/train/?check_if_running=false", timeout=30))
        if status.get("status") not in ("RUNNING", "SUBMITTED"):
            break
    assert status is not None and status.get("status") == "DONE", (status or {}).get("details", [])[-20:]
    assert weights.stat().st_mtime_ns > before, "training did not write models/model.pt"
    image_id = Path(server["rows"][0]["image"]).stem
    body = _request(f"{server['url']}/infer/{MODEL}?image={image_id}&output=image", method="POST")
    assert np.asarray(Image.open(BytesIO(body))).shape == (256, 256)


def test_ct_bundle_answers_infer_on_the_ct_grid(server):
    model = server["info"]["models"][CT_MODEL]
    assert model["type"] == "segmentation" and model["dimension"] == 3
    assert model["labels"] == {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 4}
    body = _request(f"{server['url']}/infer/{CT_MODEL}?image=ct_sm&output=image", method="POST")
    out = server["work"] / "ct_label.nii.gz"
    out.write_bytes(body)
    label, source = nib.load(out), nib.load(server["ct"])
    assert label.shape == source.shape == (122, 101, 30)
    np.testing.assert_allclose(label.affine, source.affine, atol=1e-3)
    assert set(np.unique(np.asarray(label.dataobj))) <= {0, 1, 2, 3, 4}
