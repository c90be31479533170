"""The package as a wheel: it holds every module the bundles import, and a bundle trains in a fresh virtual
environment that has only that wheel and its dependencies (no editable checkout, run from a temporary copy of the
bundle), as a model-zoo or MONAI Deploy user would reproduce it."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from venvs import REPO, build_wheel, clean_env, wheel_venv

BUNDLE = REPO / "bundles" / "dissect_cxr_pretrain"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_wheel_holds_every_module_of_the_package(wheel):
    with zipfile.ZipFile(wheel) as zf:
        packaged = {n for n in zf.namelist() if n.startswith("dissect_monai/")}
    sources = {p.relative_to(REPO).as_posix() for p in (REPO / "dissect_monai").rglob("*.py")}
    assert sources and sources <= packaged, sorted(sources - packaged)
    assert not {n for n in zf.namelist() if n.startswith(("tests/", "bundles/", "scripts/"))}


def test_pretrain_bundle_trains_with_only_the_wheel_installed(wheel, tmp_path, data_root):
    python = wheel_venv(wheel)
    bundle = tmp_path / BUNDLE.name
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("models", "eval", "runs", "__pycache__"))
    env = clean_env(DISSECT_DATA_DIR=str(data_root))
    where = subprocess.run([str(python), "-c", "import dissect_monai, monai, torch; print(dissect_monai.__file__); "
                            "print(torch.__version__)"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert where.returncode == 0, where.stderr
    module, torch_version = where.stdout.split()
    assert Path(module).is_relative_to(python.parents[1]) and not Path(module).is_relative_to(REPO), module
    assert torch_version.startswith("2.13.0"), torch_version

    out = tmp_path / "out"
    cmd = [str(python), "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.yaml",
           "--epochs", "1", "--image_size", "32", "--batch_size", "4", "--num_threads", "1", "--progress_bar", "False",
           "--network_def#hidden_dim", "256", "--network_def#embedder#quantizer_args", "{'num_codes': 64}",
           "--train#datalist", "$dissect_monai.data.pretraining_pool(@dataset_dir)[:8]",
           "--output_dir", str(out / "models"), "--log_dir", str(out / "runs")]
    result = subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (out / "models" / "model.pt").is_file() and (out / "models" / "checkpoint.pt").is_file()
