#!/usr/bin/env bash
# Set up ./.venv (scripts/setup.sh) and run the whole test suite (the 20 slowest tests listed).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec .venv/bin/python -m pytest -q --durations=20 "$@"
