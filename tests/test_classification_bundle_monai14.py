"""The classification bundle on monai 1.4.0 + pytorch-ignite 0.4.11 + pydicom 2 (MONAI Label's environment):
linear probe with the quantised descriptor on real NIH images, test evaluation per view, inference on the real
SIIM CR DICOM, verify_net_in_out and TorchScript export. Skipped when that environment is absent
(``bash scripts/setup_monailabel_env.sh``); slow (several bundle processes in a second interpreter)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from dissect_monai.networks.dissect import DiSSECTEmbedder

from monai14 import PYTHON, REPO, run_bundle

BUNDLE = REPO / "bundles" / "dissect_cxr_classification"
SIIM_DICOM = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
QUARTER = ("$dissect_monai.data.sample_label_fraction(dissect_monai.data.dataset_datalist(@dataset_name, '{split}', "
           "@dataset_dir), 0.25, seed=0)")

pytestmark = [pytest.mark.monailabel, pytest.mark.slow]


def test_bundle_trains_evaluates_infers_and_exports_on_monai_1_4(tmp_path, data_root):
    if not PYTHON.is_file():
        pytest.skip(f"monai 1.4.0 environment not found at {PYTHON}")
    version = subprocess.run([str(PYTHON), "-c", "import monai; print(monai.__version__)"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert version[0] == "1.4.0", version
    pretrained = tmp_path / "pretrain.pt"
    torch.save(DiSSECTEmbedder(use_quantizer=True).state_dict(), pretrained)
    common = {"dataset_dir": data_root, "output_dir": tmp_path / "models", "log_dir": tmp_path / "runs",
              "pretrained_checkpoint": pretrained, "use_descriptor": True, "num_threads": 1}
    run_bundle(BUNDLE, "run", ["train.yaml"], {**common, "epochs": 1, "label_fraction": 0.05,
                                               "validate#datalist": QUARTER.format(split="val")}, tmp_path)
    model = tmp_path / "models" / "model.pt"
    assert model.is_file()
    test_quarter = {"eval_dir": tmp_path / "eval", "validate#datalist": QUARTER.format(split="test")}
    run_bundle(BUNDLE, "run", ["train.yaml", "evaluate.yaml"], {**common, **test_quarter}, tmp_path)
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(report["auc_by_view"]) == {"AP", "PA"} and 0 <= report["auc"]["pneumonia"] <= 1

    run_bundle(BUNDLE, "run", ["inference.yaml"], {"dataset_dir": data_root / "dicom-samples",
                                                   "output_dir": tmp_path / "pred", "ckpt_path": model,
                                                   "use_descriptor": True}, tmp_path)
    result = json.loads((tmp_path / "pred" / (Path(SIIM_DICOM).stem + ".json")).read_text())
    assert result["source"] == SIIM_DICOM
    assert list(result["probabilities"]) == ["pneumonia"] and 0 <= result["probabilities"]["pneumonia"] <= 1

    # with the descriptor, the network's quantizer is the one stored in the bundle's checkpoint (ckpt_path)
    with_descriptor = {"use_descriptor": True, "ckpt_path": model}
    run_bundle(BUNDLE, "verify_net_in_out", ["inference.yaml"], with_descriptor, tmp_path)
    run_bundle(BUNDLE, "ckpt_export", ["inference.yaml"], {"filepath": tmp_path / "model.ts", "ckpt_file": model,
                                                           "precision": "fp32", **with_descriptor}, tmp_path)
    assert (tmp_path / "model.ts").stat().st_size > 1_000_000
