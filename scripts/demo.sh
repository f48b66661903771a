#!/usr/bin/env bash
# Set up ./.venv (scripts/setup.sh) and run the main job on the built-in
# phantom cohort: python -m nxp2seg.demo (see README). Arguments are passed on,
# e.g. scripts/demo.sh out=/tmp/nxp2seg-demo
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m nxp2seg.demo "$@"
