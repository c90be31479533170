"""The method comparison table (dissect_monai.evaluation.reports) assembled from the evaluation outputs."""

from __future__ import annotations

import json

from dissect_monai.evaluation.reports import write_method_comparison


def test_compare_report_reads_evaluation_outputs(tmp_path):
    auc = {"test_auc": {"mean": 0.7, "std": 0.01, "n": 5}}
    representations = {
        "byol": {"nih": {"fractions": {"0.01": auc, "1": {"test_auc": {"mean": 0.8, "std": 0.0, "n": 5}}},
                         "knn20_acc": 0.81, "view_probe_auc": 0.93}},
        "supervised": {"kermany": {"fractions": {"0.1": {"test_auc": {"mean": 0.9, "std": 0.02, "n": 5}}}}},
    }

    def seg_row(fraction: float, dice: float) -> dict:
        return {"test_dice": {"mean": dice}, "row": {"encoder": "byol", "mode": "frozen", "fraction": fraction}}

    lung = {"byol|frozen|0.1|0": seg_row(0.1, 0.8), "byol|frozen|0.1|1": seg_row(0.1, 0.9),
            "byol|frozen|1.0|0": seg_row(1.0, 0.1)}
    methods = {"byol": {"pretrained": True, "wall_seconds": 1234.0, "note": ""},
               "mae": {"pretrained": False, "wall_seconds": None, "note": "reduced budget: 1 epoch(s)"}}
    budget = {"image_size": 64, "epochs": 3, "batch_size": 64, "threads_per_run": 1, "views": "two views",
              "backbones": "ResNet-18", "supervised": "fine-tuned from scratch"}
    out = tmp_path / "results" / "comparison"
    result = write_method_comparison(methods, representations, lung, budget, out, seg_seeds=1)
    assert [r["name"] for r in result["rows"]] == ["random", "supervised", "byol", "mae"]
    md = out.with_suffix(".md").read_text()
    table = {line.split(" | ")[0].strip("| "): line for line in md.splitlines()
             if line.startswith("| ") and not line.startswith("| method")}
    byol = [c.strip() for c in table["byol"].strip("|").split("|")]
    assert byol[1] == "0.700 ± 0.010" and byol[4] == "0.800 ± 0.000" and byol[2] == "—"
    assert byol[9] == "0.810" and byol[10] == "0.930" and byol[11] == "0.850 ± 0.071 (n=2)"  # Dice: the 10 % seeds only
    assert byol[13] == "1234"
    assert "0.900 ± 0.020" in table["supervised"]
    assert "not pretrained yet" in table["mae"] and "reduced budget" in table["mae"]
    assert "3 epoch(s)" in md
    assert json.loads(out.with_suffix(".json").read_text())["rows"][2]["lung_dice_10"]["frozen"]["n"] == 2
    assert out.with_suffix(".png").stat().st_size > 1000
