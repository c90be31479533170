"""The pretraining report (dissect_monai.evaluation.pretraining) from a run's metrics.jsonl and run.json: a resumed
run's repeated iterations keep the last record, per-epoch tables, the recorded wall time, and the curves plot."""

from __future__ import annotations

import json

from dissect_monai.evaluation.pretraining import read_metrics, write_pretraining_report


def _iteration(i: int, loss: float) -> dict:
    return {"kind": "iteration", "iteration": i, "epoch": 1 + (i - 1) // 2, "loss": loss, "discrete_loss": loss / 2,
            "images_per_s": 10.0 * i, "codebook/c2_perplexity": 5.0 + i, "codebook/c2_usage": 0.1 * i}


def _run(tmp_path, name: str, records: list[dict], record: dict) -> None:
    logs = tmp_path / name / "logs"
    logs.mkdir(parents=True)
    (logs / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (tmp_path / name / "run.json").write_text(json.dumps(record))


def test_report_keeps_the_last_record_of_a_repeated_iteration_and_states_the_run(tmp_path):
    epoch = {"kind": "epoch", "iteration": 2, "epoch": 1, "epoch_time_s": 12.34, "loss": 0.9,
             "codebook/c2_perplexity": 6.5}
    records = [_iteration(1, 1.0), _iteration(2, 2.0), epoch, _iteration(2, 0.8), _iteration(3, 0.7)]  # resumed at 2
    _run(tmp_path, "dissect_64", records, {"epochs": 2, "image_size": 64, "returncode": 0, "wall_seconds": 99.5,
                                           "threads": 1, "command": "python -m monai.bundle run ..."})
    iterations, epochs = read_metrics(tmp_path / "dissect_64" / "logs" / "metrics.jsonl")
    assert [r["iteration"] for r in iterations] == [1, 2, 3] and iterations[1]["loss"] == 0.8 and len(epochs) == 1

    [summary] = write_pretraining_report([tmp_path / "dissect_64"], tmp_path / "out")
    assert (summary["epochs_done"], summary["epochs_planned"], summary["iterations_done"]) == (1, 2, 3)
    assert summary["finished"] and summary["wall_seconds"] == 99.5 and summary["median_images_per_s"] == 20.0
    assert summary["epochs"] == [{"epoch": 1, "iteration": 2, "epoch_time_s": 12.3, "loss": 0.9, "c2_perplexity": 6.5}]
    md = (tmp_path / "out" / "pretraining.md").read_text()
    assert "| dissect_64 | 64 | 1 / 2 | 3 | True | 12.3 | 12.3 | 99.5 | 1 | 20.0 | 0.9 |" in md
    assert "c2_perplexity" in md
    assert "_iterations" not in json.loads((tmp_path / "out" / "pretraining.json").read_text())[0]
    assert (tmp_path / "out" / "pretraining_curves.png").stat().st_size > 1000
