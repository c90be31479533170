"""Segmentation transfer runs: one lung run through the bundle on real images, a finished run reused only for the
checkpoint contents it was trained from, and the report stating the budget and averaging seeds with the one
mean +- sd."""

from __future__ import annotations

import json

import pytest
import torch

from dissect_monai.evaluation import LungRow, StepBudget, discard_stale_run, file_fingerprint, train_and_test_lung
from dissect_monai.evaluation.reports import write_segmentation_report


def test_a_run_of_another_checkpoint_under_the_same_row_name_is_discarded(tmp_path):
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"1 epoch")
    row = LungRow("mlvicx", "frozen", str(checkpoint), "mlvicx")
    run = tmp_path / "mlvicx_frozen_0.1_0"
    run.mkdir()
    (run / "result.json").write_text(json.dumps({"row": {"checkpoint_fingerprint": file_fingerprint(checkpoint)}}))
    assert not discard_stale_run(run, row) and run.is_dir()
    checkpoint.write_bytes(b"3 epochs")  # the same path, retrained: the old result must not be reused
    assert discard_stale_run(run, row) and not run.exists()
    assert not discard_stale_run(run, row)  # nothing left to discard
    random = tmp_path / "random_init_fine-tuned_0.1_0"
    random.mkdir()
    (random / "result.json").write_text(json.dumps({"row": {"checkpoint_fingerprint": None}}))
    assert not discard_stale_run(random, LungRow("random init", "fine-tuned", None, None))


def test_report_states_the_budget_and_averages_seeds(tmp_path):
    config = {"steps": 60, "batch_size": 16, "image_size": 64, "val_every_steps": 10}

    def run(seed: int, dice: float) -> dict:
        return {"row": {"encoder": "mae", "mode": "frozen", "fraction": 0.1, "checkpoint": "m.pt"}, "config": config,
                "seed": seed, "n_train_images": 14, "steps": 60, "train_seconds": 10.0, "best_val_dice": 0.8,
                "test_dice": {"mean": dice, "std": 0.05, "n": 39}, "test_hd95": {"mean": 20.0, "std": 1.0, "n": 39}}

    write_segmentation_report({"lung": {"a": run(0, 0.80), "b": run(1, 0.90)}, "ct": None}, tmp_path / "seg")
    md = (tmp_path / "seg.md").read_text()
    assert "64 px" in md and "batch 16, 60 optimiser steps" in md and "{cfg" not in md
    assert "| 10% | mae | frozen | 2 | 14 | 60 | 0.850 ± 0.071 |" in md
    assert json.loads((tmp_path / "seg.json").read_text())["lung"]["a"]["seed"] == 0


@pytest.mark.timeout(300)
def test_a_lung_run_trains_and_tests_through_the_bundle_and_is_reused(repo_root, data_root, tmp_path):
    torch.set_num_threads(1)
    run = tmp_path / "random_init_fine-tuned_0.1_0"
    row = LungRow("random init", "fine-tuned", None, None)
    bundle = repo_root / "bundles" / "dissect_cxr_lung_segmentation"
    overrides = {"num_threads": 1, "dataset_dir": str(data_root / "cxr-lung-seg")}
    presets = {"methods_dir": repo_root / "configs" / "methods",
               "pretrain_bundle": repo_root / "bundles" / "dissect_cxr_pretrain"}
    result = train_and_test_lung(bundle, run, row, 0.1, 0, StepBudget(1, 8, 1), 32, overrides, **presets)
    assert result["n_train_images"] == 14 and (result["epochs"], result["steps"]) == (1, 2)  # 14 images, batch 8
    assert result["test_dice"]["n"] == len(result["per_image_dice"]) and 0 <= result["test_dice"]["mean"] <= 1
    assert result["row"]["checkpoint_fingerprint"] is None and result["config"]["steps"] == 1
    mtime = (run / "result.json").stat().st_mtime_ns
    assert train_and_test_lung(bundle, run, row, 0.1, 0, StepBudget(1, 8, 1), 32, **presets) == result
    assert (run / "result.json").stat().st_mtime_ns == mtime
