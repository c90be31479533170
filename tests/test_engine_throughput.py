"""Throughput helpers: the pretraining bundle run end to end for exactly the iterations asked (not timed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dissect_monai.engines import throughput as tp

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "dissect_cxr_pretrain"


def test_bundle_end_to_end_runs_the_bundle_for_the_requested_iterations(data_root, monkeypatch):
    monkeypatch.setenv("DISSECT_DATA_DIR", str(data_root))
    result = tp.bundle_end_to_end(BUNDLE, iterations=2, warmup=1, batch_size=2,
                                  overrides={"image_size": 32, "quantizer": True, "num_threads": 1})
    assert result["iterations"] == 2 and result["num_workers"] >= 0
    assert len(result["images"]) == 6 and all(Path(f).is_file() for f in result["images"])
    assert result["pairs_per_second"] == pytest.approx(2 / result["seconds_per_iteration"])
    with pytest.raises(ValueError, match="warmup >= 1"):
        tp.bundle_end_to_end(BUNDLE, iterations=1, warmup=0, batch_size=2)
