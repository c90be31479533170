"""The four bundles through ``python -m monai.bundle`` as a model-zoo user runs them: ``run training`` from inside
the bundle folder with no other flag, the same from the repository root with ``--bundle_root``, inference with
``run`` and the zoo's older ``evaluating``, and a missing or wrong ``--bundle_root`` stopping at once with a message
that names it.

Every run is tiny (a few real images or patches, one epoch) and writes only to pytest's temporary directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from dissect_monai.utils import BundleRootError, check_bundle_root

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
NAMES = ["dissect_cxr_pretrain", "dissect_cxr_classification", "dissect_cxr_lung_segmentation",
         "dissect_ct_segmentation"]
# the files (merged in order) a user passes to write outputs; the bundle's inference.yaml alone keeps `pred` in memory
INFER_CONFIGS = {
    "dissect_cxr_pretrain": ["inference.yaml"],
    "dissect_cxr_classification": ["inference.yaml", "inference_files.yaml"],
    "dissect_cxr_lung_segmentation": ["inference.yaml", "inference_files.yaml"],
    "dissect_ct_segmentation": ["inference.yaml", "inference_files.yaml"],
}
LUNG_VAL = ("$[x for x in csv_datalist(os.path.join(@dataset_dir, 'labels.csv'), mask_column='mask', splits='val')"
            " if x['view'] in @views][:2]")


def _train_overrides(name: str, out: Path) -> dict:
    """One epoch on a handful of real images (patches for CT), outputs in ``out``."""
    if name == "dissect_cxr_pretrain":
        return {"epochs": 1, "image_size": 32, "batch_size": 4, "num_threads": 1, "progress_bar": False,
                "network_def#hidden_dim": 256, "network_def#embedder#quantizer_args": {"num_codes": 64},
                "train#datalist": "$dissect_monai.data.pretraining_pool(@dataset_dir)[:8]",
                "output_dir": out / "models", "log_dir": out / "runs"}
    if name == "dissect_cxr_classification":
        return {"epochs": 1, "image_size": 32, "batch_size": 8, "num_threads": 1, "pretrained_checkpoint": "$None",
                "label_fraction": 0.02,
                "validate#datalist": "$dissect_monai.data.sample_label_fraction("
                                     "dissect_monai.data.dataset_datalist(@dataset_name, 'val', @dataset_dir), 0.1)",
                "output_dir": out / "models", "log_dir": out / "runs"}
    if name == "dissect_cxr_lung_segmentation":
        return {"epochs": 1, "image_size": 64, "batch_size": 4, "label_fraction": 0.03, "validate#datalist": LUNG_VAL,
                "ckpt_dir": out / "models", "output_dir": out / "eval"}
    return {"epochs": 1, "val_interval": 1, "train#random_transforms#0#num_samples": 2,
            "ckpt_dir": out / "models", "output_dir": out / "eval"}


def _env(data_root: Path | None) -> dict:
    """This checkout first on the path; the datasets' root as a user sets it (``$DISSECT_DATA_DIR``), since from
    inside a bundle folder the fallback ``../shared/data`` of the working directory does not exist."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if data_root is not None:
        env["DISSECT_DATA_DIR"] = str(data_root)
    return env


def _bundle_cli(run_id: str, configs: list[str], cwd: Path, overrides: dict,
                data_root: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run <run_id> --config_file <configs> --<key> <value> ...`` in ``cwd``."""
    files = configs[0] if len(configs) == 1 else str(configs)
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", files]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    return subprocess.run(cmd, cwd=cwd, env=_env(data_root), capture_output=True, text=True, timeout=900)


def _ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(autouse=True)
def _torch_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_check_bundle_root_accepts_the_bundle_folder_relative_or_absolute(monkeypatch):
    bundle = BUNDLES / "dissect_cxr_pretrain"
    assert check_bundle_root(bundle, "dissect_cxr_pretrain") == bundle.resolve()
    monkeypatch.chdir(bundle)
    assert check_bundle_root(".", "dissect_cxr_pretrain") == bundle.resolve()


def test_check_bundle_root_names_a_folder_that_is_no_bundle(tmp_path):
    with pytest.raises(BundleRootError, match="not a bundle folder") as info:
        check_bundle_root(tmp_path, "dissect_cxr_pretrain")
    assert str(tmp_path / "configs" / "metadata.json") in str(info.value)
    assert "--bundle_root <path to dissect_cxr_pretrain>" in str(info.value)


def test_check_bundle_root_names_the_other_bundle():
    with pytest.raises(BundleRootError, match="'dissect_cxr_classification', not 'dissect_cxr_pretrain'"):
        check_bundle_root(BUNDLES / "dissect_cxr_classification", "dissect_cxr_pretrain")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("config", ["train.yaml", "inference.yaml"])
def test_missing_bundle_root_from_the_repository_root_stops_with_its_name(name, config):
    before = set(REPO.iterdir())
    result = _bundle_cli("training" if config == "train.yaml" else "run",
                         [f"bundles/{name}/configs/{config}"], REPO, {})
    assert result.returncode != 0
    assert "BundleRootError: bundle_root is not a bundle folder" in result.stderr, result.stderr[-3000:]
    assert f"--bundle_root <path to {name}>" in result.stderr
    assert f"resolved to {REPO}" in result.stderr
    assert set(REPO.iterdir()) == before, "nothing may be written before the check"


def test_wrong_bundle_root_stops_with_both_names():
    configs = BUNDLES / "dissect_cxr_lung_segmentation" / "configs"
    result = _bundle_cli("training", [str(configs / "train.yaml")], REPO,
                         {"bundle_root": BUNDLES / "dissect_ct_segmentation"})
    assert result.returncode != 0
    assert ("bundle_root is the folder of bundle 'dissect_ct_segmentation', not 'dissect_cxr_lung_segmentation'"
            in result.stderr), result.stderr[-3000:]


@pytest.mark.parametrize("name", NAMES)
def test_run_training_inside_the_bundle_folder_needs_no_other_flag(name, tmp_path, data_root):
    result = _bundle_cli("training", ["configs/train.yaml"], BUNDLES / name, _train_overrides(name, tmp_path),
                         data_root)
    _ok(result)
    assert (tmp_path / "models" / "model.pt").is_file()
    assert "Setting logging properties based on config: configs/logging.conf" in result.stdout + result.stderr


@pytest.mark.parametrize("name", NAMES)
def test_run_training_from_the_repository_root_with_bundle_root(name, tmp_path, data_root):
    overrides = {"bundle_root": f"bundles/{name}", **_train_overrides(name, tmp_path)}
    _ok(_bundle_cli("training", [f"bundles/{name}/configs/train.yaml"], REPO, overrides))
    assert (tmp_path / "models" / "model.pt").is_file()


def _random_weights(name: str, out: Path, **override) -> Path:
    """A state dict of the inference config's own ``network_def`` (random weights: the run is what is tested)."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / name / "configs" / "inference.yaml"))
    parser.read_meta(str(BUNDLES / name / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(BUNDLES / name), **override})
    torch.manual_seed(0)
    path = out / "model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


def _one_input(name: str, data_root: Path, folder: Path) -> Path:
    folder.mkdir()
    if name == "dissect_ct_segmentation":
        source = data_root / "totalseg-ct" / "example_ct_sm.nii.gz"
    else:
        source = sorted((data_root / "cxr-lung-seg" / "images").glob("*.png"))[0]
    (folder / source.name).symlink_to(source)
    return folder


def _inference_output(name: str, out: Path) -> list[Path]:
    pattern = {"dissect_cxr_pretrain": "index.jsonl", "dissect_cxr_classification": "predictions.csv",
               "dissect_cxr_lung_segmentation": "*_seg.png", "dissect_ct_segmentation": "*_seg.nii.gz"}[name]
    return sorted(out.glob(pattern))


@pytest.mark.parametrize("name", NAMES)
def test_inference_answers_evaluating_inside_the_folder_and_run_from_the_root(name, tmp_path, data_root):
    inputs = _one_input(name, data_root, tmp_path / "inputs")
    common = {"ckpt_path": _random_weights(name, tmp_path), "dataset_dir": inputs}
    configs = INFER_CONFIGS[name]
    _ok(_bundle_cli("evaluating", [f"configs/{c}" for c in configs], BUNDLES / name,
                    {**common, "output_dir": tmp_path / "inside"}))
    assert len(_inference_output(name, tmp_path / "inside")) == 1
    _ok(_bundle_cli("run", [f"bundles/{name}/configs/{c}" for c in configs], REPO,
                    {**common, "output_dir": tmp_path / "root", "bundle_root": f"bundles/{name}"}))
    assert len(_inference_output(name, tmp_path / "root")) == 1
