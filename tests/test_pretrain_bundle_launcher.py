"""scripts/run_pretraining.py bookkeeping, with stand-in commands instead of real trainings."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _launcher():
    spec = importlib.util.spec_from_file_location("run_pretraining", REPO / "scripts" / "run_pretraining.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parallel_runs_record_their_own_wall_time_and_skip_when_finished(tmp_path, monkeypatch):
    launcher = _launcher()
    durations = {"dissect_64": 4.0, "byol_64": 0.5}  # the first run listed is the slow one

    def fake_command(name, out_dir, args):
        return [sys.executable, "-c", f"import time; time.sleep({durations[name]}); open('{out_dir}/model.pt', 'w')"]

    monkeypatch.setattr(launcher, "command", fake_command)
    argv = ["--epochs", "1", "--parallel", "--runs_dir", str(tmp_path), "--runs", "dissect_64", "byol_64"]
    assert launcher.main(argv) == 0
    slow = json.loads((tmp_path / "dissect_64" / "run.json").read_text())
    fast = json.loads((tmp_path / "byol_64" / "run.json").read_text())
    assert slow["returncode"] == fast["returncode"] == 0
    assert fast["wall_time_s"] < 2.5 < slow["wall_time_s"]  # before the fix the fast run waited for the slow one

    durations["byol_64"] = 30.0  # a finished run is not started again
    assert launcher.main(argv) == 0
    assert json.loads((tmp_path / "byol_64" / "run.json").read_text())["wall_time_s"] == fast["wall_time_s"]
