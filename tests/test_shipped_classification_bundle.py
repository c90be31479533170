"""What a newcomer gets from a fresh clone: the classification bundle's inference command, exactly as its README
gives it, on a folder of real Kermany test chest X-rays (JPEG, and a few of them as DICOM CR), with the shipped
release weights (Kermany pneumonia, fine-tuned on all labels) and no training step.

The probabilities in ``predictions.csv`` must separate the pneumonia images from the normal ones (ROC AUC over the
folder), and a DICOM CR holding an image's pixels must get that image's probability. Skipped while the bundle ships
no weights (``models/model.pt``, release 1.0).
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dissect_monai.evaluation.metrics import roc_auc
from newcomer import cr_from_image, readme_command

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "dissect_cxr_classification"
N_PER_CLASS = 20
N_AS_DICOM = 4
#: lowest ROC AUC accepted on the folder (the release goal on the whole official test split is 0.96)
AUC_FLOOR = 0.85

pytestmark = pytest.mark.skipif(not (BUNDLE / "models" / "model.pt").is_file(),
                                reason="the classification bundle ships no weights yet (models/model.pt, release 1.0)")


def test_readme_inference_command_separates_pneumonia_on_jpeg_and_dicom(data_root: Path, tmp_path: Path) -> None:
    root = data_root / "kermany-pneumonia"
    with open(root / "labels.csv", newline="") as f:
        test = [r for r in csv.DictReader(f) if r["split"] == "test"]
    rng = random.Random(0)
    chosen = [r for label in ("0", "1") for r in rng.sample([r for r in test if r["pneumonia"] == label], N_PER_CLASS)]
    images = tmp_path / "images"
    images.mkdir()
    truth, twins = {}, {}  # file name -> label; DICOM name -> its JPEG's name
    for i, row in enumerate(chosen):
        name = Path(row["image"]).name
        shutil.copy(root / row["image"], images / name)
        truth[name] = int(row["pneumonia"])
        if i % (2 * N_PER_CLASS // N_AS_DICOM) == 0:
            cr_from_image(root / row["image"], images / f"{Path(name).stem}_cr.dcm")
            twins[f"{Path(name).stem}_cr.dcm"] = name
    clone = tmp_path / BUNDLE.name  # the bundle as a fresh clone has it, weights included
    shutil.copytree(BUNDLE, clone, ignore=shutil.ignore_patterns("eval", "runs", "__pycache__"))
    predictions = tmp_path / "pred"
    replace = {"python": sys.executable, "/path/to/images": str(images), "/tmp/pred": str(predictions)}
    command = [replace.get(arg, arg) for arg in readme_command(BUNDLE, "inference:")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    with open(predictions / "predictions.csv", newline="") as f:
        probability = {Path(row[0]).name: float(row[1]) for row in csv.reader(f)}
    assert set(probability) == set(truth) | set(twins), sorted(set(probability) ^ (set(truth) | set(twins)))
    for dicom, jpeg in twins.items():
        assert probability[dicom] == pytest.approx(probability[jpeg], abs=1e-3), f"{dicom} vs {jpeg}"
    auc = roc_auc(np.array([truth[n] for n in truth]), np.array([probability[n] for n in truth]))
    assert auc > AUC_FLOOR, f"ROC AUC {auc:.3f} on {len(truth)} Kermany test images <= {AUC_FLOOR}"
