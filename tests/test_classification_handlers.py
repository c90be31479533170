"""The classification bundle's Ignite handler: the test report (AUC overall, per class, per view)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dissect_monai.engines.classification_handlers import ClassificationReport


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
