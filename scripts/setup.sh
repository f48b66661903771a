#!/usr/bin/env bash
# Create ./.venv and install nxp2seg with its dev extra. Idempotent: reinstalls
# only when pyproject.toml changed. On CPU-only machines torch is pinned to
# 2.13.0 on the same pip command line (a bare "torch" would pull CUDA wheels);
# set NXP2SEG_TORCH="torch" (or another spec) to choose your own build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
TORCH_SPEC="${NXP2SEG_TORCH:-torch==2.13.0}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=".venv/.nxp2seg-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $TORCH_SPEC"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install --quiet "$TORCH_SPEC" -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import nxp2seg, torch, monai, pytorch_lightning" >/dev/null
  echo "$want" > "$stamp"
fi
