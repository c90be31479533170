"""Recorded bundle runs (dissect_monai.evaluation.launch): each parallel run records its own wall time, a finished
run is skipped, an interrupted one is started again with its wall time summed; stand-in commands instead of real
trainings. The bundle command is one MONAI ``run`` of the pretraining bundle."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading

import pytest

from dissect_monai.evaluation.launch import bundle_command, run_finished, run_recorded


def _sleep_then(seconds: float, out_dir, code: int = 0) -> list[str]:
    return [sys.executable, "-c", f"import time, sys; time.sleep({seconds}); open(r'{out_dir}/model.pt', 'w'); "
                                  f"sys.exit({code})"]


def test_parallel_runs_record_their_own_wall_time_and_skip_when_finished(tmp_path):
    slow, fast = tmp_path / "dissect_64", tmp_path / "byol_64"  # the first run listed is the slow one
    runs = [(slow, _sleep_then(4.0, slow), {"method": "dissect"}), (fast, _sleep_then(0.5, fast), {"method": "byol"})]
    assert set(run_recorded(runs, parallel=True, poll_seconds=0.1).values()) == {0}
    slow_record, fast_record = (json.loads((d / "run.json").read_text()) for d in (slow, fast))
    assert slow_record["returncode"] == fast_record["returncode"] == 0 and slow_record["method"] == "dissect"
    assert fast_record["wall_seconds"] < 2.5 < slow_record["wall_seconds"]  # the fast run did not wait for the slow
    assert run_finished(fast)

    runs[1] = (fast, _sleep_then(30.0, fast), {"method": "byol"})  # a finished run is not started again
    assert run_recorded(runs, parallel=True)[str(fast)] is None
    assert json.loads((fast / "run.json").read_text())["wall_seconds"] == fast_record["wall_seconds"]


def test_a_failed_run_is_started_again_and_its_wall_time_summed(tmp_path):
    run = tmp_path / "mae_64"
    assert run_recorded([(run, _sleep_then(0.3, run, code=3), {})]) == {str(run): 3}
    first = json.loads((run / "run.json").read_text())
    assert first["returncode"] == 3 and not run_finished(run)
    assert run_recorded([(run, _sleep_then(0.3, run), {})]) == {str(run): 0}
    second = json.loads((run / "run.json").read_text())
    assert second["resumed"] and second["wall_seconds"] > first["wall_seconds"] + 0.2


@pytest.mark.parametrize("parallel", [False, True])
def test_an_interrupted_launcher_stops_its_runs_and_records_them(parallel, tmp_path):
    runs = [(tmp_path / name, _sleep_then(60.0, tmp_path / name), {}) for name in ("dissect_64", "byol_64")]
    ctrl_c = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT))  # a real SIGINT, as from the terminal
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # also where a background shell ignores it
    try:
        ctrl_c.start()
        with pytest.raises(KeyboardInterrupt):
            run_recorded(runs[: 1 + parallel], parallel=parallel, poll_seconds=0.1)
        ctrl_c.join()
    finally:
        signal.signal(signal.SIGINT, previous)
    for run_dir, _, _ in runs[: 1 + parallel]:
        record = json.loads((run_dir / "run.json").read_text())
        assert record["returncode"] == -signal.SIGTERM and 1.5 < record["wall_seconds"] < 30
        assert not run_finished(run_dir)


def test_bundle_command_merges_configs_and_passes_overrides(tmp_path):
    command = bundle_command(tmp_path, [tmp_path / "train.yaml", tmp_path / "mae.yaml"], epochs=3, progress_bar=False)
    assert command[1:4] == ["-m", "monai.bundle", "run"]
    assert json.loads(command[command.index("--config_file") + 1]) == [str(tmp_path / "train.yaml"),
                                                                       str(tmp_path / "mae.yaml")]
    assert command[-4:] == ["--epochs", "3", "--progress_bar", "False"]
    assert command[command.index("--bundle_root") + 1] == str(tmp_path)
