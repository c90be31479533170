"""The transfer bundles' ``multi_gpu_train.yaml`` under a real ``torchrun`` with two gloo ranks on CPU.

For the classification, lung segmentation and CT segmentation bundles, train.yaml + multi_gpu_train.yaml train on
real images (two iterations per rank, so DDP's gradient reduction is exercised across iterations) and validate at
the end. Each run must exit 0; rank 0 alone writes ``model.pt`` and TensorBoard events (each rank is given its own
output folders, and rank 1's must not exist); both ranks end with bit-identical weights and buffers, equal to the
saved ``model.pt``; every rank validated only its share of the val images, yet both report the metric of the whole
val set, the value a single process computes with those weights. The lung bundle also runs from the training
config MONAI Label's ``BundleTrainTask`` writes for torchrun. The same runs on monai 1.4.0 are marked slow.

Every output goes to pytest's temporary directory. Run: ``pytest tests/test_transfer_bundles_distributed.py``
(``-m slow`` for the monai 1.4.0 runs).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from monai.bundle import ConfigParser, ConfigWorkflow

from dissect_monai.data import csv_datalist, dataset_datalist
from dissect_monai.networks import DiSSECTEmbedder

from monai14 import PYTHON as MONAI14_PYTHON

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
# MONAI Label's environment (monai 1.4.0, ignite 0.4.11): ``bash scripts/setup_monailabel_env.sh``


@dataclass
class DistributedCase:
    """One bundle's tiny two-rank run.

    Attributes:
        bundle: bundle folder name under ``bundles/``.
        ckpt_dir: config id of the folder ``model.pt`` is written to.
        log_dir: config id of the TensorBoard folder.
        overrides: config ids -> values written to the override file (lists of items allowed).
        val_items_per_rank: how many val images each rank must have evaluated.
        iterations: training iterations each rank must have run.
        monailabel_train: train with train.yaml as MONAI Label's ``BundleTrainTask`` exports it for torchrun
            (``monailabel_train.json``: a ``CheckpointLoader`` of the bundle's model prepended to ``train#handlers``).
        dissect_checkpoint: write a (randomly initialised) DiSSECT pretraining ``model.pt`` and pass it as
            ``pretrained_checkpoint`` (the classifier's quantised descriptor is read from it).
    """

    bundle: str
    ckpt_dir: str
    log_dir: str
    overrides: dict = field(default_factory=dict)
    val_items_per_rank: tuple[int, int] = (1, 1)
    iterations: int = 2
    monailabel_train: bool = False
    dissect_checkpoint: bool = False


def _classification_case(data_root: Path) -> DistributedCase:
    train = dataset_datalist("nih-cxr-pneumonia", "train", data_root)[:8]
    val = dataset_datalist("nih-cxr-pneumonia", "val", data_root)
    positives, negatives = [x for x in val if x["pneumonia"] == 1], [x for x in val if x["pneumonia"] == 0]
    return DistributedCase(
        bundle="dissect_cxr_classification",
        ckpt_dir="output_dir",
        log_dir="log_dir",
        # fine-tune: the encoder's batch norms train, so their statistics are per-rank state to check; with the
        # quantised descriptor, whose projection gets no gradient (DDP must be told about unused parameters)
        overrides={"dataset_dir": str(data_root), "mode": "finetune", "use_descriptor": True,
                   "image_size": 32, "batch_size": 2, "epochs": 1, "num_threads": 1,
                   "train#datalist": train, "validate#datalist": positives[:3] + negatives[:2]},
        val_items_per_rank=(3, 2),
        dissect_checkpoint=True,
    )


def _lung_case(data_root: Path) -> DistributedCase:
    labels = data_root / "cxr-lung-seg" / "labels.csv"
    frontal = ("PA", "AP", "AP Supine")

    def items(split: str, n: int) -> list[dict]:
        return [x for x in csv_datalist(labels, mask_column="mask", splits=split) if x["view"] in frontal][:n]

    return DistributedCase(
        bundle="dissect_cxr_lung_segmentation",
        ckpt_dir="ckpt_dir",
        log_dir="output_dir",
        overrides={"dataset_dir": str(data_root / "cxr-lung-seg"), "image_size": 32, "batch_size": 2, "epochs": 1,
                   "train#datalist": items("train", 8), "validate#datalist": items("val", 3)},
        val_items_per_rank=(2, 1),
    )


def _ct_case(data_root: Path) -> DistributedCase:
    return DistributedCase(
        bundle="dissect_ct_segmentation",
        ckpt_dir="ckpt_dir",
        log_dir="output_dir",
        # one labelled volume: both ranks train on it (one batch of two patches per epoch) and both validate it
        overrides={"dataset_dir": str(data_root / "totalseg-ct"), "epochs": 2, "val_interval": 2,
                   "pixdim": [6.0, 6.0, 6.0], "patch_size": [32, 32, 32],
                   "train#random_transforms#0#num_samples": 2, "train#dataloader#batch_size": 1},
        val_items_per_rank=(1, 1),
    )


def _lung_monailabel_case(data_root: Path) -> DistributedCase:
    case = _lung_case(data_root)
    case.monailabel_train = True
    return case


CASES = {"classification": _classification_case, "lung": _lung_case, "lung_monailabel": _lung_monailabel_case,
         "ct": _ct_case}


def torchrun(args: list[str], cwd: Path, timeout: float = 300, python: Path | str = sys.executable) -> str:
    """``torchrun --standalone --nnodes=1 --nproc_per_node=2 <args>`` with ``python`` (gloo on CPU, 1 thread a rank).

    Fails the test on a non-zero exit, and on a hang: after ``timeout`` seconds the launcher and both ranks (its
    process group) are killed. Returns stdout + stderr.
    """
    cmd = [str(python), "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as proc:
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            pytest.fail(f"torchrun did not finish within {timeout} s (a rank waiting for another?):\n{output[-4000:]}")
    assert proc.returncode == 0, output[-6000:]
    return output


def run_two_ranks(case: DistributedCase, tmp_path: Path, python: Path | str = sys.executable) -> list[dict]:
    """Run ``case`` under ``torchrun --nproc_per_node=2`` (gloo); returns each rank's final state.

    An override file (merged after train.yaml and multi_gpu_train.yaml) holds ``case.overrides``, gives each rank
    its own ``ckpt_dir``/``log_dir`` (``<id>_rank<r>`` under ``tmp_path``) and makes ``finalize`` save, per rank,
    the unwrapped network's state dict, the evaluator's metrics and the number of val images that rank evaluated
    to ``tmp_path/rank<r>.pt``.
    """
    configs = BUNDLES / case.bundle / "configs"
    if case.dissect_checkpoint:
        torch.manual_seed(0)
        torch.save(DiSSECTEmbedder().state_dict(), tmp_path / "pretrained.pt")
        case.overrides["pretrained_checkpoint"] = str(tmp_path / "pretrained.pt")
    per_rank = {key: f"$os.path.join({str(tmp_path)!r}, '{key}_rank' + str(@rank))"
                for key in (case.ckpt_dir, case.log_dir)}
    state = ("{'network': @network.module.state_dict(), 'metrics': dict(@validate#evaluator.state.metrics), "
             "'val_items': len(@validate#evaluator.data_loader.sampler), "
             "'iterations': @train#trainer.state.iteration}")
    dump = {**case.overrides, **per_rank, "finalize": [
        f"$torch.save({state}, os.path.join({str(tmp_path)!r}, 'rank' + str(@rank) + '.pt'))",
        "$torch.distributed.destroy_process_group()",
    ]}
    override_file = tmp_path / "two_ranks.yaml"
    override_file.write_text(yaml.safe_dump(dump, sort_keys=False))
    train = monailabel_train_config(case, tmp_path) if case.monailabel_train else configs / "train.yaml"
    files = [str(train), str(configs / "multi_gpu_train.yaml"), str(override_file)]
    torchrun(["-m", "monai.bundle", "run", "--config_file", str(files), "--meta_file", str(configs / "metadata.json"),
              "--logging_file", str(configs / "logging.conf"), "--bundle_root", str(BUNDLES / case.bundle)],
             tmp_path, python=python)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def monailabel_train_config(case: DistributedCase, tmp_path: Path) -> Path:
    """train.yaml as MONAI Label 0.8.5's BundleTrainTask writes it before torchrun (``pretrained`` on): a
    ``CheckpointLoader`` of the bundle's ``models/model.pt`` (here: initial weights saved to ``tmp_path``) inserted
    first in ``train#handlers``, the config exported as ``monailabel_train.json``."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / case.bundle / "configs" / "train.yaml"))
    weights = tmp_path / "model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), weights)
    parser["train#handlers"].insert(0, {"_target_": "CheckpointLoader", "load_path": str(weights),
                                        "load_dict": {"model": "$@network"}, "strict": True})
    path = tmp_path / "monailabel_train.json"
    ConfigParser.export_config_file(parser.config, str(path), indent=2)
    return path


def single_process_metrics(case: DistributedCase, weights: dict, tmp_path: Path) -> dict:
    """The val metrics of ``weights`` computed by train.yaml's evaluator in this process, on all val images."""
    configs = BUNDLES / case.bundle / "configs"
    workflow = ConfigWorkflow(
        config_file=str(configs / "train.yaml"), meta_file=str(configs / "metadata.json"), logging_file=False,
        workflow_type="train", bundle_root=str(BUNDLES / case.bundle),
        **{**case.overrides, case.ckpt_dir: str(tmp_path / "single_ckpt"), case.log_dir: str(tmp_path / "single_log")},
    )
    workflow.initialize()
    workflow.parser.get_parsed_content("network_def").load_state_dict(weights)
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    return dict(evaluator.state.metrics)


RANK0_ONLY_SAVER = """
import sys
import torch
from monai.handlers import CheckpointSaver
from dissect_monai.utils import init_distributed
if init_distributed("gloo") == 0:
    CheckpointSaver(save_dir=sys.argv[1], save_dict={"model": torch.nn.Linear(2, 1)}, save_final=True)
torch.distributed.barrier()
torch.distributed.destroy_process_group()
"""


def test_a_checkpoint_saver_created_on_rank0_alone_does_not_wait_for_the_other_ranks(tmp_path):
    """Regression: ignite's Checkpoint joins a collective on its first distributed call; init_distributed makes
    every rank do that call, so the multi-GPU configs can leave the saver out on the other ranks (it hung)."""
    script = tmp_path / "rank0_only_saver.py"
    script.write_text(RANK0_ONLY_SAVER)
    torchrun([str(script), str(tmp_path / "ckpt")], tmp_path, timeout=90)


def check_two_rank_run(case: DistributedCase, tmp_path: Path, rank0: dict, rank1: dict) -> None:
    """Rank 0 alone wrote model.pt and TensorBoard events; both ranks hold model.pt's weights and the same metric."""
    model = tmp_path / f"{case.ckpt_dir}_rank0" / "model.pt"
    assert model.is_file()
    assert list((tmp_path / f"{case.log_dir}_rank0").glob("events.out.tfevents.*"))
    assert not (tmp_path / f"{case.ckpt_dir}_rank1").exists()
    assert not (tmp_path / f"{case.log_dir}_rank1").exists()

    # identical weights and buffers on both ranks (validation broadcasts rank 0's batch-norm statistics), and
    # model.pt holds them
    assert rank0["iterations"] == rank1["iterations"] == case.iterations
    saved = torch.load(model, weights_only=True)  # one object in save_dict: its state dict, not nested
    assert rank0["network"].keys() == rank1["network"].keys() == saved.keys()
    assert any(k.endswith("running_mean") for k in saved)
    for key, value in rank0["network"].items():
        assert torch.equal(value, rank1["network"][key]), key
        assert torch.equal(value, saved[key]), key

    # each rank evaluated its share; both report the one metric of the whole val set
    assert (rank0["val_items"], rank1["val_items"]) == case.val_items_per_rank
    assert rank0["metrics"] == rank1["metrics"] and len(rank0["metrics"]) == 1


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_train_validate_and_save_once_with_identical_weights(name, tmp_path, data_root):
    case = CASES[name](data_root)
    rank0, rank1 = run_two_ranks(case, tmp_path)
    check_two_rank_run(case, tmp_path, rank0, rank1)
    # the gathered metric is the one a single process computes on all val images with those weights
    expected = single_process_metrics(case, rank0["network"], tmp_path)
    assert expected.keys() == rank0["metrics"].keys()
    for key, value in expected.items():
        assert rank0["metrics"][key] == pytest.approx(value, abs=1e-4), key


@pytest.mark.monailabel
@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_on_monai_1_4(name, tmp_path, data_root):
    """The same runs on monai 1.4.0 + ignite 0.4.11 (MONAI Label's environment; skipped where it is absent)."""
    if not MONAI14_PYTHON.is_file():
        pytest.skip(f"monai 1.4.0 environment not found at {MONAI14_PYTHON}")
    version = subprocess.run([str(MONAI14_PYTHON), "-c", "import monai; print(monai.__version__)"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert version[-1] == "1.4.0", version
    case = CASES[name](data_root)
    rank0, rank1 = run_two_ranks(case, tmp_path, python=MONAI14_PYTHON)
    check_two_rank_run(case, tmp_path, rank0, rank1)
