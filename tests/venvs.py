"""Fresh virtual environments that hold the project only as its built wheel (no editable checkout, no source tree on
``sys.path``), for tests that run the bundles as a model-zoo or MONAI Deploy user would.

The wheel is built from a copy of the package sources (so nothing is written into the repository). A venv is kept
under ``~/.cache/dissect-monai/`` (``$DISSECT_VENV_CACHE`` to move it), keyed by a hash of what pip resolves into it
(the wheel's ``Requires-Dist``, the extra packages, the Python version): the dependencies install once, and the wheel
itself is reinstalled (``--no-deps``) whenever its hash changes. torch is pinned first, so pip takes the local CPU
build instead of a multi-GB CUDA build.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("DISSECT_VENV_CACHE", Path.home() / ".cache" / "dissect-monai"))
TORCH = "torch==2.13.0"
#: the package sources a wheel is built from (everything setup.cfg reads)
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "dissect_monai")

__all__ = ["build_wheel", "wheel_venv", "clean_env"]


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        output = result.stdout[-3000:] + result.stderr[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{output}")
    return result


def build_wheel(out_dir: Path) -> Path:
    """``python -m build --wheel`` on a copy of the package sources in ``out_dir``; returns the wheel's path."""
    src = out_dir / "src"
    src.mkdir(parents=True)
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(path, src / name)
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out_dir / "dist"), str(src)], timeout=900)
    (wheel,) = (out_dir / "dist").glob("dissect_monai-*.whl")
    return wheel


def _requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        (meta,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        lines = zf.read(meta).decode().splitlines()
    return sorted(line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wheel_venv(wheel: Path, name: str = "wheel-venv", extra: tuple[str, ...] = ()) -> Path:
    """A venv with ``torch==2.13.0``, the wheel with its dependencies, and ``extra`` requirements; returns its
    interpreter. Created once per dependency set; the wheel is reinstalled when it changed."""
    key_text = "\n".join([sys.version, TORCH, *_requires(wheel), *extra])
    venv = CACHE / name / hashlib.sha256(key_text.encode()).hexdigest()[:16]
    python = venv / "bin" / "python"
    ready = venv / ".dependencies-installed"
    if not ready.is_file():
        shutil.rmtree(venv, ignore_errors=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        _run([sys.executable, "-m", "venv", str(venv)], timeout=600)
        _run([str(python), "-m", "pip", "install", "-q", TORCH], timeout=3600)
        _run([str(python), "-m", "pip", "install", "-q", TORCH, str(wheel), *extra], timeout=3600)
        ready.write_text(key_text)
    installed = venv / ".wheel-sha256"
    digest = _sha256(wheel)
    if not installed.is_file() or installed.read_text() != digest:
        _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)], timeout=600)
        installed.write_text(digest)
    return python


def clean_env(**extra: str) -> dict:
    """The current environment without anything that would put the source tree or another venv on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env
