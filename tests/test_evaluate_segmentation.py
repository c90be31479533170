"""Segmentation transfer runs: a finished run is reused only for the checkpoint contents it was trained from, and
the report states the budget and averages seeds with the one mean +- sd."""

from __future__ import annotations

import json

from dissect_monai.evaluation import LungRow, discard_stale_run, file_fingerprint
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
