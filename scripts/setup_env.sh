#!/usr/bin/env bash
# Create the project's main virtual environment (.venv) from nothing and install the package with its
# extras. torch is pinned first so pip takes the CPU build from local disk instead of a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "torch==${TORCH_VERSION:-2.13.0}"
"$VENV/bin/pip" install -q -e ".[dicom,dev]"
"$VENV/bin/python" -c "import dissect_monai, monai, torch; print('dissect_monai', dissect_monai.__version__, 'monai', monai.__version__, 'torch', torch.__version__)"
