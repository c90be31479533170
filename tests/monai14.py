"""MONAI Label's environment (monai 1.4.0, pytorch-ignite 0.4.11, pydicom 2; ``scripts/setup_monailabel_env.sh``) for
tests that run the project in it: its interpreter and a runner of ``python -m monai.bundle`` commands there."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: the environment's interpreter (``$MONAILABEL_VENV`` or the repository's ``.venv-monailabel``)
PYTHON = Path(os.environ.get("MONAILABEL_VENV", REPO / ".venv-monailabel")) / "bin" / "python"


def run_bundle(bundle: Path, command: str, configs: list[str], overrides: dict, cwd: Path) -> str:
    """``python -m monai.bundle <command>`` on ``bundle``'s ``configs`` (merged in order) with ``--key value``
    ``overrides``, in the monai 1.4 interpreter with 1 thread; asserts exit 0 and returns the output."""
    files = [str(bundle / "configs" / c) for c in configs]
    cmd = [str(PYTHON), "-m", "monai.bundle", command, *(["network_def"] if command != "run" else []),
           "--config_file", files[0] if len(files) == 1 else str(files),
           "--meta_file", str(bundle / "configs" / "metadata.json")]
    if command == "run":
        cmd += ["--logging_file", str(bundle / "configs" / "logging.conf")]
    cmd += ["--bundle_root", str(bundle)]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr
