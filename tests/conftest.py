"""Shared fixtures: where the real data lives, and skips with a clear reason when it does not; and a guard that fails
the run when a test writes into the checkout's ``bundles/``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("DISSECT_DATA_DIR", REPO_ROOT.parent / "shared" / "data")).resolve()
#: the files under the checkout's bundles/ when the session started (no test may add any)
_BUNDLE_FILES = pytest.StashKey[set]()


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Root of the real images (``../shared/data`` beside the repository, or ``$DISSECT_DATA_DIR``)."""
    if not (DATA_ROOT / "nih-cxr-pneumonia" / "labels.csv").is_file():
        pytest.fail(f"real data not found under {DATA_ROOT}: set DISSECT_DATA_DIR or place ../shared/data")
    return DATA_ROOT


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


def _bundle_files() -> set[Path]:
    return {p for p in (REPO_ROOT / "bundles").rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_BUNDLE_FILES] = _bundle_files()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a test wrote into the checkout's ``bundles/`` (runs, eval, models belong in tmp)."""
    written = sorted(str(p.relative_to(REPO_ROOT)) for p in _bundle_files() - session.config.stash[_BUNDLE_FILES])
    if written:
        session.config.get_terminal_writer().line(f"tests wrote into the checkout's bundles/: {written}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
