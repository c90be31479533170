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
