"""The run ids and the bundle_root check on monai 1.4.0 (MONAI Label's environment): ``run training`` from inside the
lung bundle's folder with no other flag, and a run from the repository root without ``--bundle_root`` stopping at
once with its message. Skipped when that environment is absent (``bash scripts/setup_monailabel_env.sh``)."""

from __future__ import annotations

import os
import subprocess

import pytest

from monai14 import PYTHON, REPO

BUNDLE = REPO / "bundles" / "dissect_cxr_lung_segmentation"
LUNG_VAL = ("$[x for x in csv_datalist(os.path.join(@dataset_dir, 'labels.csv'), mask_column='mask', splits='val')"
            " if x['view'] in @views][:2]")

pytestmark = pytest.mark.monailabel


def _run(args: list[str], cwd, data_root=None) -> subprocess.CompletedProcess:
    if not PYTHON.is_file():
        pytest.skip(f"monai 1.4.0 environment not found at {PYTHON}")
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")
    if data_root is not None:  # from inside a bundle folder the fallback ../shared/data does not exist
        env["DISSECT_DATA_DIR"] = str(data_root)
    return subprocess.run([str(PYTHON), "-m", "monai.bundle", "run", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


def test_run_training_inside_the_bundle_folder_on_monai_1_4(tmp_path, data_root):
    result = _run(["training", "--config_file", "configs/train.yaml", "--epochs", "1", "--batch_size", "4",
                   "--image_size", "64", "--label_fraction", "0.03", "--validate#datalist", LUNG_VAL,
                   "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval")], BUNDLE, data_root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "models" / "model.pt").is_file()


def test_missing_bundle_root_stops_with_its_name_on_monai_1_4():
    result = _run(["training", "--config_file", "bundles/dissect_cxr_lung_segmentation/configs/train.yaml"], REPO)
    assert result.returncode != 0
    assert "BundleRootError: bundle_root is not a bundle folder" in result.stderr, result.stderr[-3000:]
    assert "--bundle_root <path to dissect_cxr_lung_segmentation>" in result.stderr
