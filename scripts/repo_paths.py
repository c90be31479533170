"""Places in the checkout that the launchers share.

The launchers run as ``python scripts/NAME.py``, so this folder is first on ``sys.path`` and they import these
names from here instead of each working them out again.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "CLASSIFICATION_BUNDLE",
    "CT_BUNDLE",
    "LUNG_BUNDLE",
    "METHODS_DIR",
    "PRETRAIN_BUNDLE",
    "REPO",
    "RESULTS",
    "RUNS",
    "TEST_HARNESS",
]

REPO = Path(__file__).resolve().parents[1]
PRETRAIN_BUNDLE = REPO / "bundles" / "dissect_cxr_pretrain"
CLASSIFICATION_BUNDLE = REPO / "bundles" / "dissect_cxr_classification"
LUNG_BUNDLE = REPO / "bundles" / "dissect_cxr_lung_segmentation"
CT_BUNDLE = REPO / "bundles" / "dissect_ct_segmentation"
METHODS_DIR = REPO / "configs" / "methods"
RESULTS = REPO / "results"
RUNS = REPO / "runs"
#: ``tests/`` holds the Orthanc harness and the untrained bundle copies the PACS benchmarks share with the tests
TEST_HARNESS = REPO / "tests"
