"""The pretraining bundle on monai 1.4.0 + pytorch-ignite 0.4.11 + pydicom 2 (MONAI Label's environment): it
trains on real NIH images, its checkpoint has the same keys as on the current monai, and inference embeds a
real CR DICOM. Skipped when that environment is absent (``bash scripts/setup_monailabel_env.sh``); slow
(two bundle processes in a second interpreter)."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from dissect_monai.engines import load_checkpoint
from dissect_monai.networks.dissect import DiSSECTEmbedder

from monai14 import PYTHON, REPO, run_bundle

BUNDLE = REPO / "bundles" / "dissect_cxr_pretrain"

pytestmark = [pytest.mark.monailabel, pytest.mark.slow]


def test_bundle_trains_and_embeds_on_monai_1_4(tmp_path, data_root):
    if not PYTHON.is_file():
        pytest.skip(f"monai 1.4.0 environment not found at {PYTHON}")
    version = subprocess.run([str(PYTHON), "-c", "import monai, ignite; print(monai.__version__, ignite.__version__)"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert version[0] == "1.4.0", version
    out = tmp_path / "models"
    run_bundle(BUNDLE, "run", ["train.yaml"], {
        "dataset_dir": data_root, "output_dir": out, "log_dir": tmp_path / "logs", "epochs": 1, "batch_size": 4,
        "image_size": 32, "num_threads": 1, "progress_bar": True, "network_def#hidden_dim": 256,
        "train#datalist": "$dissect_monai.data.pretraining_pool(@dataset_dir)[:8]",
    }, tmp_path)
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert checkpoint["iteration"] == 2
    exported = torch.load(out / "model.pt", weights_only=True)
    assert sorted(exported) == sorted(DiSSECTEmbedder().state_dict())  # same keys as on the current monai

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "cr.dcm").symlink_to(sorted((data_root / "dicom-samples").glob("1.2.*.dcm"))[0])
    run_bundle(BUNDLE, "run", ["inference.yaml"], {"dataset_dir": inputs, "output_dir": tmp_path / "emb",
                                                   "ckpt_path": out / "model.pt", "image_size": 32}, tmp_path)
    (record,) = [json.loads(line) for line in (tmp_path / "emb" / "index.jsonl").read_text().splitlines()]
    arrays = np.load(tmp_path / "emb" / record["output"])
    assert arrays["embedding"].shape == (512,) and np.isfinite(arrays["embedding"]).all()
    assert arrays["codes_c2"].shape == (8, 8)
