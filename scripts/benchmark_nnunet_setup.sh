#!/usr/bin/env bash
# The separate venv of nnU-Net v2 for scripts/benchmark_nnunet.py (a benchmark dependency,
# never a runtime one). Prints the python to give --nnunet-python.
#   NXP2SEG_NNUNET_VENV  where (default ~/.venvs/nxp2seg-nnunet)
#   NXP2SEG_TORCH        the torch requirement (default torch==2.13.0: on a CPU machine it must be
#                        on the same pip line, or nnunetv2 pulls a CUDA build of torch)
# torchvision, which nnunetv2 pulls in, is removed: the PyPI wheel is built for the CUDA torch and
# fails to import against the CPU one, and nothing the benchmark runs needs it.
set -euo pipefail
VENV="${NXP2SEG_NNUNET_VENV:-$HOME/.venvs/nxp2seg-nnunet}"
TORCH_SPEC="${NXP2SEG_TORCH:-torch==2.13.0}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC" "nnunetv2==2.8.1"
"$VENV/bin/python" -m pip uninstall --quiet -y torchvision 2>/dev/null || true
"$VENV/bin/python" -c "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer" >/dev/null
echo "$VENV/bin/python"
