"""scripts/evaluate_segmentation.py reuses a finished run only for the checkpoint it was trained from."""

from __future__ import annotations

import importlib.util
import json


def _script(repo_root):
    spec = importlib.util.spec_from_file_location("evaluate_segmentation", repo_root / "scripts" /
                                                  "evaluate_segmentation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_run_of_another_checkpoint_under_the_same_row_name_is_discarded(repo_root, tmp_path):
    script = _script(repo_root)
    run = tmp_path / "mlvicx_frozen_0.1_0"
    run.mkdir()
    (run / "result.json").write_text(json.dumps({"row": {"encoder": "mlvicx", "checkpoint": "/runs/1ep/model.pt"}}))
    assert not script.discard_stale_run(run, "/runs/1ep/model.pt") and run.is_dir()
    assert script.discard_stale_run(run, "/runs/3ep/model.pt") and not run.exists()
    assert not script.discard_stale_run(run, "/runs/3ep/model.pt")  # nothing left to discard


def test_report_states_the_budget_and_averages_seeds(repo_root, tmp_path):
    script = _script(repo_root)
    config = {"steps": 60, "batch_size": 16, "image_size": 64, "val_every_steps": 10}

    def run(seed: int, dice: float) -> dict:
        return {"row": {"encoder": "mae", "mode": "frozen", "fraction": 0.1, "checkpoint": "m.pt"}, "config": config,
                "seed": seed, "n_train_images": 14, "steps": 60, "train_seconds": 10.0, "best_val_dice": 0.8,
                "test_dice": {"mean": dice, "std": 0.05}, "test_hd95": {"mean": 20.0}}

    script.write_report({"lung": {"a": run(0, 0.80), "b": run(1, 0.90)}, "ct": None}, tmp_path / "seg")
    md = (tmp_path / "seg.md").read_text()
    assert "64 px" in md and "batch 16, 60 optimiser steps" in md and "{cfg" not in md
    assert "| 10% | mae | frozen | 2 | 14 | 60 | 0.850 ± 0.071 |" in md
