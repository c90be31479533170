#!/usr/bin/env bash
# Create MONAI Label's own virtual environment (default .venv-monailabel/ at the repository root, git-ignored)
# with the tested offline recipe (monailabel 0.8.5 on monai 1.4.0, torch 2.14.1 + torchvision 0.29.1,
# pydicom < 3; see the project's MONAI Label notes), then install this package into it WITHOUT touching
# those pins: the package goes in with --no-deps, and only the core requirements that are still missing are
# added, constrained to the versions already installed. Idempotent: a finished environment is left as it is.
# About 8 GB and 2-3 minutes on the first run.
#   usage: bash scripts/setup_monailabel_env.sh            (MONAILABEL_VENV=/path to put it elsewhere)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${MONAILABEL_VENV:-.venv-monailabel}
MARKER="$VENV/.dissect-monailabel-ready"
PINS=(monailabel==0.8.5 monai==1.4.0 torch==2.14.1 torchvision==0.29.1 "pydicom<3")

if [ -f "$MARKER" ] && "$VENV/bin/python" scripts/check_monailabel_env.py >/dev/null 2>&1; then
    echo "MONAI Label environment ready: $VENV"
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q "${PINS[@]}"

# this package, editable, without letting pip re-resolve the recipe's pins
"$VENV/bin/pip" install -q --no-deps -e .
CONSTRAINTS="$VENV/recipe-constraints.txt"
"$VENV/bin/pip" freeze --exclude-editable > "$CONSTRAINTS"
mapfile -t MISSING < <("$VENV/bin/python" scripts/check_monailabel_env.py --missing-requirements setup.cfg | grep .)
if [ "${#MISSING[@]}" -gt 0 ]; then
    echo "adding missing core requirements: ${MISSING[*]}"
    "$VENV/bin/pip" install -q -c "$CONSTRAINTS" "${MISSING[@]}"
fi
# report-only: some pip releases cannot parse itk's abi3 wheel tag in `pip check`
if ! "$VENV/bin/pip" check > "$VENV/pip-check.log" 2>&1; then
    echo "warning: pip check reported problems: $(tail -n 1 "$VENV/pip-check.log")" >&2
fi
"$VENV/bin/python" scripts/check_monailabel_env.py
touch "$MARKER"
echo "MONAI Label environment ready: $VENV"
