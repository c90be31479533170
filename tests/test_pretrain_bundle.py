"""The dissect_cxr_pretrain bundle: standard checks, training + inference on real images, crash-resume, torchrun.

Runs are tiny (16 real NIH radiographs at 32 px, narrow heads); every output goes to pytest's temporary
directory, never into the repository. The two multi-process tests (SIGKILL + resume: three bundle processes;
torchrun with two ranks) are marked slow: ``pytest tests/test_pretrain_bundle.py -m slow``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_checks import BundleUnderTest

from dissect_monai.engines import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "dissect_cxr_pretrain"
CONFIGS = BUNDLE / "configs"
# small but real: the first N images of the pretraining pool are NIH radiographs
SMALL = {
    "image_size": 32,
    "batch_size": 4,
    "num_threads": 1,
    "progress_bar": False,
    "log_interval": 2,
    "network_def#hidden_dim": 256,
    "network_def#embedder#quantizer_args": {"num_codes": 64},
}


def _datalist(n: int) -> str:
    return f"$dissect_monai.data.pretraining_pool(@dataset_dir)[:{n}]"


def _cli(config_files: list[str], overrides: dict) -> list[str]:
    files = config_files[0] if len(config_files) == 1 else str(config_files)
    cmd = [
        "-m", "monai.bundle", "run",
        "--config_file", files,
        "--meta_file", str(CONFIGS / "metadata.json"),
        "--logging_file", str(CONFIGS / "logging.conf"),
        "--bundle_root", str(BUNDLE),
    ]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    return cmd


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def bundle() -> BundleUnderTest:
    return BundleUnderTest(BUNDLE)


def test_standard_bundle_checks(bundle, tmp_path, data_root):
    bundle.check_metadata()
    bundle.check_net_in_out("inference.yaml")
    ts_file = bundle.check_ckpt_export("inference.yaml", tmp_path)
    assert ts_file.parent == tmp_path
    outputs = {"output_dir": str(tmp_path / "out"), "log_dir": str(tmp_path / "logs"), "dataset_dir": str(data_root)}
    bundle.check_properties("train", "train.yaml", **outputs, **{"train#datalist": _datalist(8), **SMALL})
    bundle.check_properties("infer", "inference.yaml", output_dir=str(tmp_path / "emb"))


def test_bundle_trains_on_real_images_then_embeds_png_and_dicom(bundle, tmp_path, data_root):
    out = tmp_path / "models"
    workflow = bundle.check_properties(
        "train",
        "train.yaml",
        dataset_dir=str(data_root),
        output_dir=str(out),
        log_dir=str(tmp_path / "logs"),
        epochs=2,
        **{"train#datalist": _datalist(16), **SMALL},
    )
    workflow.run()
    workflow.finalize()
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert checkpoint["iteration"] == 2 * 4 and checkpoint["epoch_length"] == 4
    assert {"network", "optimizer", "lr_scheduler"} <= set(checkpoint)
    records = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(epochs) == 2
    for key in ("continuous_loss", "discrete_loss", "commitment_loss", "lr", "momentum", "codebook/c3_perplexity"):
        assert key in epochs[-1] and np.isfinite(epochs[-1][key]), key

    # inference: a real PNG radiograph and a real CR DICOM through the trained embedder
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    png = sorted((data_root / "nih-cxr-pneumonia").rglob("*.png"))[0]
    (inputs / png.name).symlink_to(png)
    dcm = sorted((data_root / "dicom-samples").glob("1.2.*.dcm"))[0]
    (inputs / "cr.dcm").symlink_to(dcm)
    infer = bundle.check_properties(
        "infer",
        "inference.yaml",
        dataset_dir=str(inputs),
        output_dir=str(tmp_path / "emb"),
        ckpt_path=str(out / "model.pt"),
        image_size=32,
        **{"network_def#quantizer_args": {"num_codes": 64}},
    )
    infer.run()
    infer.finalize()
    index = [json.loads(line) for line in (tmp_path / "emb" / "index.jsonl").read_text().splitlines()]
    assert sorted(Path(r["source"]).name for r in index) == sorted([png.name, "cr.dcm"])
    for record in index:
        arrays = np.load(tmp_path / "emb" / record["output"])
        assert arrays["embedding"].shape == (512,) and np.isfinite(arrays["embedding"]).all()
        assert arrays["codes_c2"].shape == (8, 8) and arrays["codes_c4"].shape == (2, 2)
        assert 0 <= arrays["codes_c3"].min() and arrays["codes_c3"].max() < 64


def test_bundle_skips_a_corrupt_image_and_trains_on_the_rest(bundle, tmp_path, data_root):
    """One truncated PNG in the pool is reported and skipped at cache time; training runs on the other images."""
    pngs = sorted((data_root / "nih-cxr-pneumonia" / "images").glob("*.png"))[:8]
    broken = tmp_path / "broken.png"
    broken.write_bytes(pngs[0].read_bytes()[:200])
    datalist = [{"image": str(broken)}] + [{"image": str(p)} for p in pngs]
    workflow = bundle.check_properties(
        "train",
        "train.yaml",
        dataset_dir=str(data_root),
        output_dir=str(tmp_path / "models"),
        log_dir=str(tmp_path / "logs"),
        epochs=1,
        **{"train#datalist": datalist, **SMALL},
    )
    dataset = workflow.parser.get_parsed_content("train#dataset")
    assert len(dataset) == len(pngs) and list(dataset.bad_items) == [0]
    assert "broken.png" in str(dataset.bad_items[0])
    workflow.run()
    workflow.finalize()
    assert load_checkpoint(tmp_path / "models" / "checkpoint.pt")["iteration"] == len(pngs) // SMALL["batch_size"]


def _wait_for_checkpoint(proc: subprocess.Popen, path: Path, timeout: float = 300) -> int:
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"training ended (exit {proc.returncode}) before a checkpoint could be interrupted")
        if path.is_file():
            return load_checkpoint(path)["iteration"]
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint at {path} after {timeout} s")


@pytest.mark.slow
def test_sigkill_mid_training_resumes_to_identical_weights(tmp_path, data_root):
    """An uninterrupted run and a run killed (SIGKILL) after its first checkpoint then restarted end identical."""
    common = {"dataset_dir": data_root, "epochs": 5, "train#datalist": _datalist(16), **SMALL}
    config = [str(CONFIGS / "train.yaml")]

    reference = tmp_path / "reference"
    subprocess.run(
        [sys.executable, *_cli(config, {**common, "output_dir": reference, "log_dir": reference / "logs"})],
        check=True, env=_env(), cwd=tmp_path, capture_output=True,
    )

    run = tmp_path / "run"
    cmd = [sys.executable, *_cli(config, {**common, "output_dir": run, "log_dir": run / "logs"})]
    proc = subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_checkpoint(proc, run / "checkpoint.pt")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    interrupted_at = load_checkpoint(run / "checkpoint.pt")["iteration"]
    assert 0 < interrupted_at < 5 * 4, "the kill must land mid-training"

    resumed = subprocess.run(cmd, check=True, env=_env(), cwd=tmp_path, capture_output=True, text=True)
    assert f"at iteration {interrupted_at} (epoch {interrupted_at // 4})" in resumed.stdout + resumed.stderr

    final, expected = load_checkpoint(run / "checkpoint.pt"), load_checkpoint(reference / "checkpoint.pt")
    assert final["iteration"] == expected["iteration"] == 20
    for name, tensor in expected["network"].items():  # online, target, codebooks and their EMA statistics
        assert torch.equal(final["network"][name], tensor), name
    assert final["lr_scheduler"] == expected["lr_scheduler"]
    for index, state in expected["optimizer"]["state"].items():
        assert torch.equal(final["optimizer"]["state"][index]["exp_avg"], state["exp_avg"])
    exported = torch.load(run / "model.pt", weights_only=True)
    assert all(torch.equal(v, expected["network"][f"embedder.{k}"]) for k, v in exported.items())


@pytest.mark.slow
def test_torchrun_two_ranks_keep_identical_weights_and_codebooks(tmp_path, data_root):
    dump = tmp_path / "dump.yaml"
    rank_file = f"'{tmp_path}/rank' + str(torch.distributed.get_rank()) + '.pt'"
    dump.write_text(
        "finalize:\n"
        f"  - \"$torch.save(@network.module.state_dict(), {rank_file})\"\n"
        "  - \"$torch.distributed.destroy_process_group()\"\n"
    )
    config = [str(CONFIGS / "train.yaml"), str(CONFIGS / "multi_gpu_train.yaml"), str(dump)]
    overrides = {
        "dataset_dir": data_root, "epochs": 2, "train#datalist": _datalist(16), "output_dir": tmp_path / "out",
        "log_dir": tmp_path / "logs", **SMALL,
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           *_cli(config, overrides)]
    result = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    # BatchNorm running statistics are per rank by DDP's design (rank 0's are broadcast before every forward
    # and are the ones saved); everything else - online and target weights, codebooks and their EMA
    # counts/sums - must be bit-identical on both ranks
    per_rank = (".running_mean", ".running_var", ".num_batches_tracked")
    shared = [name for name in rank0 if not name.endswith(per_rank)]
    assert len(shared) > 100
    for name in shared:
        assert torch.equal(rank0[name], rank1[name]), name
    codebooks = [k for k in rank0 if k.endswith(".codebook")]
    assert len(codebooks) == 3 and all(bool(rank0[k[: -len("codebook")] + "initialized"]) for k in codebooks)
    # 16 images, 2 ranks x batch 4 -> 2 iterations per epoch; rank 0 alone wrote the checkpoint
    assert load_checkpoint(tmp_path / "out" / "checkpoint.pt")["iteration"] == 4
