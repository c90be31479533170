"""The classification bundle's Ignite handlers: the test report (AUC overall, per class, per view) and the
per-image probability files."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from dissect_monai.engines.classification_handlers import ClassificationReport, ProbabilityWriter


def test_classification_report_overall_per_class_and_per_view(tmp_path):
    report = ClassificationReport(tmp_path, ["pneumonia", "effusion"], group_key="view")
    preds = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.1, 0.2]])
    labels = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
    out = report.compute(preds, labels, ["AP", "AP", "PA", "PA"])
    assert out["auc"] == {"pneumonia": 1.0, "effusion": 1.0}
    assert out["auc_by_view"]["AP"]["n"] == 2 and out["auc_by_view"]["AP"]["pneumonia"] == 1.0
    assert math.isnan(out["auc_by_view"]["PA"]["effusion"])  # no positive PA effusion
    with pytest.raises(ValueError, match="must both be"):
        report.compute(preds[:, :1], labels, None)


def test_probability_writer_writes_every_item_of_a_batch(tmp_path):
    """Regression: each item of a multi-image batch gets its own file (not only the first item's values)."""
    writer = ProbabilityWriter(tmp_path, ["pneumonia"])
    images = [MetaTensor(torch.zeros(1, 4, 4), meta={"filename_or_obj": f"/data/dir/case {i}.png"}) for i in (1, 2)]
    engine = SimpleNamespace(state=SimpleNamespace(
        output=[{"pred": torch.tensor([0.25])}, {"pred": torch.tensor([0.75])}],
        batch=[{"image": images[0]}, {"image": images[1]}],
    ))
    writer(engine)
    first = json.loads((tmp_path / "case_1.json").read_text())
    second = json.loads((tmp_path / "case_2.json").read_text())
    assert first == {"source": "case 1.png", "probabilities": {"pneumonia": 0.25}}
    assert second["probabilities"] == {"pneumonia": 0.75}
    assert [r["source"] for r in writer.results] == ["case 1.png", "case 2.png"]
