"""The suite's own pytest configuration deletes what passing tests wrote to ``tmp_path``.

With the release weights a default run writes about 7 GB into its basetemp (bundle copies with ``model.pt``,
training checkpoints); pytest's default keeps the last three runs, and a CI run on a machine with 12 GB free
stopped on ``No space left on device``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

_INNER_TESTS = '''
def test_writes(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"0" * 1_000_000)

def test_session_dir(tmp_path_factory):
    (tmp_path_factory.mktemp("cache") / "cache.bin").write_bytes(b"0" * 1_000_000)
'''

_FAILING_TEST = '''
def test_fails(tmp_path):
    (tmp_path / "kept.txt").write_text("inspect me")
    assert False
'''


def _run_inner_session(tmp_path: Path, source: str) -> tuple[int, list[Path]]:
    """Run pytest with the repository's ``setup.cfg`` on ``source``; return its exit code and the files left."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_inner.py").write_text(source)
    temproot = tmp_path / "temproot"
    temproot.mkdir()
    env = {**os.environ, "PYTEST_DEBUG_TEMPROOT": str(temproot)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(REPO_ROOT / "setup.cfg"), "--rootdir", str(project),
         "-p", "no:cacheprovider", "-o", "addopts=", str(project / "test_inner.py")],
        cwd=project, env=env, capture_output=True, text=True, timeout=120,
    )
    left = [p for p in temproot.rglob("*") if p.is_file()]
    return result.returncode, left


def test_a_passing_session_leaves_nothing_in_its_basetemp(tmp_path: Path) -> None:
    code, left = _run_inner_session(tmp_path, _INNER_TESTS)
    assert code == 0
    assert left == [], f"passing tests left {left}"


def test_a_failing_test_keeps_its_tmp_path_for_inspection(tmp_path: Path) -> None:
    code, left = _run_inner_session(tmp_path, _INNER_TESTS + _FAILING_TEST)
    assert code == 1
    names = {p.name for p in left}
    assert "kept.txt" in names and "checkpoint.pt" not in names, left
