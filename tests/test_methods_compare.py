"""scripts/compare_methods.py assembles the comparison table from the evaluation scripts' JSON outputs."""

from __future__ import annotations

import importlib.util
import json


def test_compare_report_reads_evaluation_outputs(repo_root, tmp_path):
    spec = importlib.util.spec_from_file_location("compare_methods", repo_root / "scripts" / "compare_methods.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    results = tmp_path / "results" / "compare"
    results.mkdir(parents=True)
    auc = {"test_auc": {"mean": 0.7, "std": 0.01, "n": 5}}
    (results / "representations.json").write_text(json.dumps({"summary": {
        "byol": {"nih": {"fractions": {"0.01": auc, "1": {"test_auc": {"mean": 0.8, "std": 0.0, "n": 5}}},
                         "knn20_acc": 0.81, "view_probe_auc": 0.93}},
        "supervised": {"kermany": {"fractions": {"0.1": {"test_auc": {"mean": 0.9, "std": 0.02, "n": 5}}}}},
    }}))

    def seg_row(fraction: float, dice: float) -> dict:
        return {"test_dice": {"mean": dice}, "row": {"encoder": "byol", "mode": "frozen", "fraction": fraction}}

    lung = {"byol|frozen|0.1|0": seg_row(0.1, 0.8), "byol|frozen|0.1|1": seg_row(0.1, 0.9),
            "byol|frozen|1.0|0": seg_row(1.0, 0.1)}
    (results / "segmentation.json").write_text(json.dumps({"lung": lung}))
    run = tmp_path / "runs" / "byol_64px_3ep"
    run.mkdir(parents=True)
    (run / "model.pt").write_bytes(b"")
    (run / "run.json").write_text(json.dumps({"returncode": 0, "wall_seconds": 1234.0}))

    code = compare.main(["--stages", "report", "--methods", "byol", "mae", "--epochs", "3",
                         "--work-dir", str(tmp_path / "runs"), "--results-dir", str(results)])
    assert code == 0
    table = {line.split(" | ")[0].strip("| "): line for line in (tmp_path / "results" / "comparison.md").read_text()
             .splitlines() if line.startswith("| ") and not line.startswith("| method")}
    byol = [c.strip() for c in table["byol"].strip("|").split("|")]
    assert byol[1] == "0.700 ± 0.010" and byol[4] == "0.800 ± 0.000" and byol[2] == "—"
    assert byol[9] == "0.810" and byol[10] == "0.930" and byol[11] == "0.850 ± 0.071 (n=2)"  # Dice: the 10 % seeds only
    assert byol[13] == "1234"
    assert "0.900 ± 0.020" in table["supervised"]
    assert "not pretrained yet" in table["mae"]
    assert "3 epoch(s)" in (tmp_path / "results" / "comparison.md").read_text()
    assert (tmp_path / "results" / "comparison.png").stat().st_size > 0
