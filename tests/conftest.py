"""Shared fixtures: where the real data lives, and skips with a clear reason when it does not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("DISSECT_DATA_DIR", REPO_ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Root of the real images (``../shared/data`` beside the repository, or ``$DISSECT_DATA_DIR``)."""
    if not (DATA_ROOT / "nih-cxr-pneumonia" / "labels.csv").is_file():
        pytest.fail(f"real data not found under {DATA_ROOT}: set DISSECT_DATA_DIR or place ../shared/data")
    return DATA_ROOT


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
